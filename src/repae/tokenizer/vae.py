"""The KL autoencoder ("VAE") of REPA-E and its diagonal-Gaussian posterior.

Architecture: the LDM / Stable-Diffusion ``AutoencoderKL`` design (REPA-E spec section 3.1) in the
two published geometries ``f8d4`` (section 3.2, SD-VAE compatible) and ``f16d32`` (section 3.3,
IN-VAE / VA-VAE), plus two tiny geometries for CPU tests and the embedded 32x32 default data.

Why diffusers: :class:`diffusers.AutoencoderKL` represents both presets exactly (GroupNorm 32 /
eps 1e-6, swish, single-head attention with scale C^-1/2 over h*w positions, LDM's (0, 1, 0, 1)
zero-pad before the stride-2 downsampling conv, nearest x2 upsampling, quant/post-quant 1x1 convs,
no output activation). Its parameter count matches the official f8d4 (83.65 M) and its
``save_pretrained`` folder layout is the de-facto exchange format for VAE weights (e.g.
``stabilityai/sd-vae-ft-mse``). Writing our own copy would only add a second layout to convert.
The official (LDM) key layout is converted in :mod:`repae.interop.vae`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from repae.errors import ConfigError

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # spec 3.4: logvar clamp

# diffusers block names (one table each way; no if/elif over names)
_DOWN_BLOCK = {False: "DownEncoderBlock2D", True: "AttnDownEncoderBlock2D"}
_UP_BLOCK = {False: "UpDecoderBlock2D", True: "AttnUpDecoderBlock2D"}
_DOWN_HAS_ATTN = {v: k for k, v in _DOWN_BLOCK.items()}


@dataclass(frozen=True)
class VAEConfig:
    """Geometry of a KL autoencoder (spec 3.1-3.3).

    Attributes:
        block_out_channels: width of each resolution level, highest resolution first
            (LDM ``ch * ch_mult``). ``len - 1`` downsamplings, so the factor is ``2 ** (len - 1)``.
        attention_levels: level indices (0 = highest resolution) that carry an attention block
            after every ResNet block, in the encoder and in the mirrored decoder level
            (LDM ``attn_resolutions``). Mid-block attention is always present.
        latent_channels: z channels C (= LDM ``embed_dim`` = ``z_channels``).
        layers_per_block: ResNet blocks per encoder level (decoder levels have one more).
        norm_num_groups: GroupNorm groups (eps is fixed at 1e-6 by the design).
        in_channels: image channels.
        sample_size: nominal training resolution (diffusers uses it only for tiled decoding).
    """

    block_out_channels: tuple[int, ...]
    attention_levels: tuple[int, ...] = ()
    latent_channels: int = 4
    layers_per_block: int = 2
    norm_num_groups: int = 32
    in_channels: int = 3
    sample_size: int = 256
    description: str = field(default="", compare=False)

    def __post_init__(self):
        n = len(self.block_out_channels)
        if n < 1:
            raise ConfigError("VAEConfig.block_out_channels must list at least one level width")
        bad = [i for i in self.attention_levels if not 0 <= i < n]
        if bad:
            raise ConfigError(f"VAEConfig.attention_levels {bad} out of range; use level indices in [0, {n})")
        bad_g = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad_g:
            raise ConfigError(
                f"VAE widths {bad_g} are not divisible by norm_num_groups={self.norm_num_groups}; change one of them"
            )

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction factor f (image H / latent h)."""
        return 2 ** (self.num_levels - 1)

    def to_diffusers_kwargs(self) -> dict:
        """Constructor arguments of :class:`diffusers.AutoencoderKL` for this geometry.

        diffusers lists decoder blocks from the LOWEST resolution up, so decoder block ``j``
        mirrors encoder level ``num_levels - 1 - j``.
        """
        attn = set(self.attention_levels)
        n = self.num_levels
        return dict(
            in_channels=self.in_channels,
            out_channels=self.in_channels,
            down_block_types=tuple(_DOWN_BLOCK[i in attn] for i in range(n)),
            up_block_types=tuple(_UP_BLOCK[(n - 1 - j) in attn] for j in range(n)),
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            act_fn="silu",
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.sample_size,
            use_quant_conv=True,
            use_post_quant_conv=True,
            mid_block_add_attention=True,
        )

    @classmethod
    def from_diffusers_config(cls, cfg) -> VAEConfig:
        """Inverse of :meth:`to_diffusers_kwargs` for a diffusers ``config.json`` dict.

        Raises ConfigError for diffusers options this project does not model (no quant convs,
        no mid attention, a non-swish activation, asymmetric encoder/decoder attention).
        """
        down = list(cfg["down_block_types"])
        unknown = [b for b in down if b not in _DOWN_HAS_ATTN]
        if unknown:
            raise ConfigError(f"unsupported diffusers encoder block types {unknown}; expected {sorted(_DOWN_HAS_ATTN)} "
                              "(use Tokenizer.from_pretrained(folder) for other designs: it builds diffusers' class)")
        for key, want in (("use_quant_conv", True), ("use_post_quant_conv", True), ("mid_block_add_attention", True),
                          ("act_fn", "silu")):
            if cfg.get(key, want) != want:
                raise ConfigError(f"diffusers config has {key}={cfg.get(key)!r}; the LDM design needs {want!r} (use "
                                  "Tokenizer.from_pretrained(folder) for other designs: it builds diffusers' class)")
        c = cls(
            block_out_channels=tuple(int(x) for x in cfg["block_out_channels"]),
            attention_levels=tuple(i for i, b in enumerate(down) if _DOWN_HAS_ATTN[b]),
            latent_channels=int(cfg.get("latent_channels", 4)),
            layers_per_block=int(cfg.get("layers_per_block", 1)),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)),
            in_channels=int(cfg.get("in_channels", 3)),
            sample_size=int(_first(cfg.get("sample_size", 256))),
        )
        if tuple(cfg["up_block_types"]) != c.to_diffusers_kwargs()["up_block_types"]:
            raise ConfigError(
                f"diffusers decoder blocks {cfg['up_block_types']} do not mirror the encoder {down}; this class models "
                "only the symmetric LDM design: use Tokenizer.from_pretrained(folder), which builds diffusers' class"
            )
        return c


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


# name -> geometry. Parameter counts (measured, see tests/test_tokenizer.py):
#   f8d4 83.65 M (SD kl-f8), f16d32 69.84 M, tiny-f4d4 0.95 M, tiny-f8d4 1.08 M.
VAE_PRESETS: dict[str, VAEConfig] = {
    "f8d4": VAEConfig(
        block_out_channels=(128, 256, 512, 512), attention_levels=(), latent_channels=4,
        description="SD-VAE kl-f8 geometry (spec 3.2): 256px -> [4, 32, 32]",
    ),
    "f16d32": VAEConfig(
        block_out_channels=(128, 128, 256, 256, 512), attention_levels=(4,), latent_channels=32,
        description="IN-VAE / VA-VAE geometry (spec 3.3): 256px -> [32, 16, 16], attention at 16x16",
    ),
    "tiny-f4d4": VAEConfig(
        block_out_channels=(32, 64, 64), attention_levels=(), latent_channels=4, layers_per_block=1,
        norm_num_groups=8, sample_size=32,
        description="CPU/embedded default: 32px -> [4, 8, 8]",
    ),
    "tiny-f8d4": VAEConfig(
        block_out_channels=(32, 32, 64, 64), attention_levels=(3,), latent_channels=4, layers_per_block=1,
        norm_num_groups=8, sample_size=32,
        description="tiny f8 variant with level attention (exercises the f16d32 code path): 32px -> [4, 4, 4]",
    ),
}


def get_vae_config(name: str):
    """Look up a preset: an LDM geometry (:data:`VAE_PRESETS`, a :class:`VAEConfig`) or a published
    diffusers VAE (:data:`repae.tokenizer.families.DIFFUSERS_VAE_PRESETS`, a ``DiffusersVAESpec``);
    unknown names raise ConfigError listing the choices."""
    from repae.tokenizer.families import DIFFUSERS_VAE_PRESETS

    found = VAE_PRESETS.get(name) or DIFFUSERS_VAE_PRESETS.get(name)
    if found is None:
        raise ConfigError(f"unknown VAE preset {name!r}; choose one of: {', '.join(preset_names())}")
    return found


def preset_names() -> list[str]:
    """Every tokenizer preset name: the LDM geometries, then the published diffusers VAEs."""
    from repae.tokenizer.families import DIFFUSERS_VAE_PRESETS

    return [*VAE_PRESETS, *DIFFUSERS_VAE_PRESETS]


def build_vae(config):
    """Randomly initialised diffusers VAE of the given architecture (a :class:`VAEConfig`, a
    ``DiffusersVAESpec`` or a preset name), its decoder upsampling folded into transposed convolutions
    (:mod:`repae.tokenizer.upsample`; ``set_folded_upsampling(vae, False)`` restores diffusers' forward for
    bitwise comparisons). A :class:`VAEConfig` gives an :class:`diffusers.AutoencoderKL`; a spec its own
    class, through ``Class.from_config``."""
    from repae.tokenizer.upsample import set_folded_upsampling

    if isinstance(config, str):
        config = get_vae_config(config)
    if isinstance(config, VAEConfig):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(**config.to_diffusers_kwargs())
    else:
        vae = config.build()
    set_folded_upsampling(vae)  # the decoder's nearest-x2 + conv3x3 as one transposed conv (exact, 4/9 FLOPs)
    return vae


class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z | x) of the KL autoencoder (spec 3.4).

    Built from the encoder ``moments`` [B, 2C, h, w]: first C channels are the mean, last C the
    log-variance, clamped to [-30, 20].
    """

    def __init__(self, moments: torch.Tensor):
        if moments.dim() != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments must be [B, 2C, h, w], got {tuple(moments.shape)}")
        self.moments = moments
        mean, logvar = moments.chunk(2, dim=1)  # [B, C, h, w] each
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)  # [B, C, h, w]
        self.std = torch.exp(0.5 * self.logvar)  # [B, C, h, w]
        self.var = torch.exp(self.logvar)  # [B, C, h, w]

    @classmethod
    def from_mean_std(cls, mean: torch.Tensor, std: torch.Tensor) -> DiagonalGaussian:
        """Rebuild a posterior from cached (mean, std) latents (spec 7.2 stores std, not logvar)."""
        return cls(torch.cat([mean, 2.0 * torch.log(std)], dim=1))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample mean + std * eps, eps ~ N(0, I) (spec 3.4)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps  # [B, C, h, w]

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample: 0.5 * sum_{c,h,w}(mean^2 + var - 1 - logvar) -> [B]."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))

    def mean_std(self) -> torch.Tensor:
        """Concatenated (mean, std) [B, 2C, h, w], the cached-latent format of spec 7.2."""
        return torch.cat([self.mean, self.std], dim=1)
