"""DiT: the diffusion transformer of Peebles & Xie (2023), a DDPM model with a learned variance.

DiT and SiT share one backbone (REPA-E spec 2.10): patch embedding + fixed 2-D sin-cos positions,
adaLN-Zero blocks, and an adaLN final layer, with the same initialisation (spec 2.7, which is
DiT's own). What differs is the *objective*, not the network:

* the time input is the **discrete DDPM timestep** ``t in {0, ..., 999}`` (t = 0 least noisy),
  fed to the same sinusoidal embedder unscaled (DiT sec. 3.2, "timesteps" as integers);
* the output has ``2C`` channels (``learn_sigma``): the first ``C`` predict the noise ``eps``, the
  last ``C`` the interpolation weight ``v`` of the log-variance between ``beta_t`` and the
  posterior variance (Nichol & Dhariwal 2021, eq. 15; DiT sec. 3.1 "we learn the covariance").

Training and sampling live elsewhere: :class:`repae.diffusion.gaussian.DDPMObjective` (1000-step
linear betas, eps-MSE + the VLB term for the variance) and :mod:`repae.sampling.ddpm` (respaced
ancestral DDPM and DDIM, with CFG).

One forward, exactly like :class:`~repae.models.sit.SiT` (same :class:`SiTOutput`), so REPA and
REPA-E work unchanged on DiT's hidden states::

    model = build_dit("DiT-XL/2", input_size=32, in_channels=4, z_dims=(768,))
    out = model(x_t, t, y, hidden_at=8)      # prediction [B, 8, 32, 32] = (eps, v), hidden [B, 256, 1152]
    zs_tilde = model.project(out.hidden)     # [[B, 256, 768]]

Parameter names follow the official DiT checkpoints (``DiT-XL-2-256x256.pt``): ``x_embedder.proj``,
``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``, ``pos_embed``, ``blocks.i.*``,
``final_layer.*`` (``final_layer.linear`` has ``p*p*2C`` outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from repae.errors import ConfigError
from repae.models.layers import FinalLayer
from repae.models.sit import TRANSFORMER_SIZES, SiT, SiTConfig, preset_config

__all__ = ["DiTConfig", "DiT", "DIT_PRESETS", "build_dit", "dit_config"]


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig(SiTConfig):
    """Architecture of a DiT (DiT Table 1): a :class:`SiTConfig` plus the learned-variance switch."""

    learn_sigma: bool = True  # 2C output channels (eps, variance interpolation v); DiT default

    @property
    def out_channels(self) -> int:
        """``2C`` with a learned variance, else ``C``."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line naming the fix) for configs that cannot work."""
        if self.input_size % self.patch_size != 0:
            raise ConfigError(
                f"latent size {self.input_size} is not divisible by DiT patch size {self.patch_size}; "
                f"pick a DiT '/p' preset whose p divides the latent size"
            )
        if self.head_depth:
            raise ConfigError("the DiT^DH head (model.dh_depth) is an option of the flow generators SiT and "
                              "LightningDiT, not of DiT (DDPM); set model.dh_depth=0 or pick one of those")
        super().validate()


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class DiT(SiT):
    """Diffusion Transformer (Peebles & Xie 2023): SiT's backbone with a ``2C``-channel head.

    ``forward(x_t, t, y, *, hidden_at=None, stop_at_hidden=False) -> SiTOutput`` exactly as
    :meth:`SiT.forward`, except that ``t`` ``[B]`` holds DDPM timesteps (float or int, values in
    ``[0, num_timesteps)``; respaced samplers pass the *original* timestep) and ``prediction`` is
    ``[B, out_channels, h, w]`` with ``out_channels = 2C`` when ``learn_sigma``.
    """

    #: Which objective trains this network: "ddpm" (:mod:`repae.diffusion.gaussian`).
    objective_kind = "ddpm"

    def __init__(self, config: DiTConfig):
        if not isinstance(config, DiTConfig):
            raise ConfigError("DiT needs a DiTConfig; build it with build_dit(name, ...) or dit_config(...)")
        super().__init__(config)
        # SiT's head predicts C channels; DiT's predicts out_channels (2C with a learned variance).
        # Replacing the module keeps its position in the state dict; zero-init as spec 2.7 step 7.
        D, p = config.hidden_size, config.patch_size
        self.final_layer = FinalLayer(hidden_size=D, patch_size=p, out_channels=config.out_channels)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> DiT:
        """Same as :func:`build_dit`."""
        return build_dit(name, **kwargs)

    @property
    def out_channels(self) -> int:
        """Channels of ``prediction``: ``2C`` (eps and variance values) or ``C``."""
        return self.config.out_channels

    def unpatchify(self, x: Tensor) -> Tensor:
        """``[B, T, p*p*C_out] -> [B, C_out, h, w]``; within a token the channel varies fastest (spec 2.4)."""
        p, C = self.config.patch_size, self.config.out_channels
        g = self.config.input_size // p
        x = x.reshape(x.shape[0], g, g, p, p, C)  # [B, h/p, w/p, p, p, C_out]
        x = x.permute(0, 5, 1, 3, 2, 4)  # [B, C_out, h/p, p, w/p, p]
        return x.reshape(x.shape[0], C, g * p, g * p)  # [B, C_out, h, w]


# ----------------------------------------------------------------------------------------------
# Presets (DiT Table 1: S/B/L/XL x patch 2/4/8; "T" = tiny CPU presets for tests)
# ----------------------------------------------------------------------------------------------

_SIZES = TRANSFORMER_SIZES  # DiT Table 1 sizes, identical to SiT's
_PATCHES: dict[str, tuple[int, ...]] = {"T": (1, 2), "XS": (1, 2), "S": (2, 4, 8), "B": (2, 4, 8), "L": (2, 4, 8), "XL": (2, 4, 8)}

#: ``"DiT-XL/2" -> {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2}`` etc.
DIT_PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{p}": {**arch, "patch_size": p} for size, arch in _SIZES.items() for p in _PATCHES[size]
}


def dit_config(name: str, *, input_size: int, in_channels: int, **kwargs: Any) -> DiTConfig:
    """The validated :class:`DiTConfig` of preset ``name`` (keyword arguments: see :func:`build_dit`)."""
    return preset_config(DiTConfig, DIT_PRESETS, "DiT", name, input_size=input_size, in_channels=in_channels,
                         **kwargs)


def build_dit(name: str, **kwargs) -> DiT:
    """Build preset ``name`` (a key of :data:`DIT_PRESETS`) for a latent of side ``input_size``.

    Keyword arguments are those of :func:`repae.models.sit.build_sit` plus ``learn_sigma`` (True:
    ``2C`` outputs as in DiT; False: ``C`` outputs, eps only, trained with the plain eps-MSE).

    Raises:
        ConfigError: unknown name, ``encoder_depth`` outside ``1..depth``, or ``input_size`` not
            divisible by the patch size.
    """
    return DiT(dit_config(name, **kwargs))
