"""The tokenizer: KL autoencoder (raw latents) + latent normaliser (final latents).

Modelled on EDM2's encoder split: the VAE maps pixels in [-1, 1] to a posterior over *raw*
latents and raw latents back to pixels; the :class:`LatentNormalizer` maps raw latents to the
*normalised* latents the diffusion model sees (spec 2.6). Both live in one module so that the
statistics are saved and loaded with the VAE they describe.

Usage::

    tok = Tokenizer.from_preset("f8d4", weights="sd-vae-ft-mse/")     # local file or folder only
    out = tok(x)                        # x float [-1, 1] [B, 3, H, W] -> TokenizerOutput(posterior, z, recon)
    z_n = tok.normalizer.normalize(out.z, update=False)
    tok.save_pretrained("e2e-vae/")     # diffusers folder + latent_stats.json
    tok = Tokenizer.from_pretrained("e2e-vae/")

Weight files (spec 11.27): :meth:`Tokenizer.load_vae_weights` accepts a diffusers folder, a
diffusers-layout ``.safetensors`` / ``.bin`` file or an LDM / official REPA-E layout
``.pt`` / ``.ckpt`` / ``.safetensors`` (optionally nested under ``vae`` / ``state_dict`` /
``model`` and prefixed ``first_stage_model.``), and always loads strictly.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import check_state_dict
from repae.interop.vae import WEIGHTS_NAME, missing_vae_weights, read_vae_file, to_diffusers
from repae.tokenizer.normalizer import LatentNormalizer
from repae.tokenizer.vae import DiagonalGaussian, VAEConfig, build_vae, get_vae_config
from repae.utils.io import atomic_path, save_safetensors, write_json

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
STATS_NAME = "latent_stats.json"

@dataclass
class TokenizerOutput:
    """Result of :meth:`Tokenizer.forward`."""

    posterior: DiagonalGaussian  # q(z | x), moments [B, 2C, h, w]
    z: torch.Tensor  # raw latent sample [B, C, h, w]
    recon: torch.Tensor  # decode(z) [B, 3, H, W], unbounded (nominally [-1, 1])


@dataclass(frozen=True)
class LoadReport:
    """What :meth:`Tokenizer.load_vae_weights` loaded."""

    path: str
    layout: str  # "diffusers" | "ldm"
    num_loaded: int  # tensors loaded (== number of VAE parameters/buffers)
    num_dropped: int  # non-VAE entries ignored (e.g. LDM ``loss.*``)

    def __str__(self) -> str:
        extra = f", ignored {self.num_dropped} non-VAE loss.* tensors" if self.num_dropped else ""
        return f"loaded {self.num_loaded} VAE tensors ({self.layout} layout) from {self.path}{extra}"


class Tokenizer(nn.Module):
    """KL autoencoder + latent normaliser (spec 2.6, 3).

    Args:
        config: VAE geometry (see :data:`repae.tokenizer.vae.VAE_PRESETS`).
        momentum: normaliser running-statistics momentum (REPA-E ``--bn-momentum`` 0.1).
        eps: normaliser eps (1e-4, spec 2.6).
        preset: preset name, recorded in saved folders (informational).
    """

    def __init__(self, config: VAEConfig, *, momentum: float = 0.1, eps: float = 1e-4, preset: str | None = None):
        super().__init__()
        self._config = config
        self.preset = preset
        self.vae = build_vae(config)
        self.normalizer = LatentNormalizer(config.latent_channels, momentum=momentum, eps=eps)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        weights: str | os.PathLike | None = None,
        stats: str | os.PathLike | None = None,
        momentum: float = 0.1,
        eps: float = 1e-4,
    ) -> Tokenizer:
        """Build a preset; optionally load VAE ``weights`` (strict) and latent ``stats`` from local files."""
        tok = cls(get_vae_config(name), momentum=momentum, eps=eps, preset=name)
        if weights is not None:
            log.info("%s", tok.load_vae_weights(weights))
        if stats is not None:
            from repae.tokenizer.stats import load_stats

            tok.normalizer.set_statistics(*load_stats(stats))
        return tok

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, require_stats: bool = True) -> Tokenizer:
        """Load a folder written by :meth:`save_pretrained` (or any diffusers AutoencoderKL folder).

        ``latent_stats.json`` restores the normaliser bit-exactly; without it a MissingWeightsError is
        raised unless ``require_stats=False`` (then mean 0 / std 1).
        """
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise missing_vae_weights(f"{d} (no {CONFIG_NAME}; expected a folder written by save_pretrained)")
        config = VAEConfig.from_diffusers_config(json.loads((d / CONFIG_NAME).read_text()))
        stats_file = d / STATS_NAME
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None
        if stats is None and require_stats:
            raise MissingWeightsError(
                f"latent statistics not found at {stats_file}",
                "run 'repae latent-stats' and pass stats=..., or load with require_stats=False",
            )
        stats = stats or {}
        tok = cls(config, momentum=float(stats.get("momentum", 0.1)), eps=float(stats.get("eps", 1e-4)),
                  preset=stats.get("preset"))
        tok.load_vae_weights(d)
        if stats:
            mean = torch.tensor(stats["mean"], dtype=torch.float32)
            with torch.no_grad():
                tok.normalizer.running_mean.copy_(mean)
                if "var" in stats:  # exact: var is what the buffer holds (std = sqrt(var) is lossy)
                    tok.normalizer.running_var.copy_(torch.tensor(stats["var"], dtype=torch.float32))
                else:
                    tok.normalizer.set_statistics(mean, torch.tensor(stats["std"], dtype=torch.float32))
                tok.normalizer.num_batches_tracked.fill_(int(stats.get("num_batches_tracked", 0)))
        return tok

    def load_vae_weights(self, path: str | os.PathLike) -> LoadReport:
        """Strictly load VAE weights from a diffusers folder / file or an LDM checkpoint (spec 11.27).

        Raises MissingWeightsError for a missing path and ConfigError (KeyLayoutError) with the
        missing/unexpected key counts for a checkpoint of another layout or preset.
        """
        layout, num, dropped = self.load_vae_state(read_vae_file(path), what=f"VAE weights {path}")
        return LoadReport(path=str(path), layout=layout, num_loaded=num, num_dropped=dropped)

    def load_vae_state(self, obj, *, what: str = "VAE weights",
                       hint: str = "; is this checkpoint for a different VAE preset?") -> tuple[str, int, int]:
        """Strictly load a VAE checkpoint held in memory (any layout and nesting, e.g. the ``vae`` entry of a
        REPA-E checkpoint); returns ``(layout, tensors loaded, non-VAE tensors ignored)``.

        Raises KeyLayoutError (a ConfigError) naming the missing / unexpected / misshapen keys.
        """
        sd, layout, dropped = to_diffusers(obj, self._config)
        check_state_dict(sd, self.vae.state_dict(), what=what, hint=hint)
        result = self.vae.load_state_dict(sd, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        return layout, len(sd), dropped

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a diffusers folder (config.json + diffusion_pytorch_model.safetensors) + latent_stats.json.

        The folder loads with ``diffusers.AutoencoderKL.from_pretrained`` (statistics also go into
        the diffusers ``latents_mean`` / ``latents_std`` config fields) and with
        :meth:`from_pretrained` (bit-exact, normaliser included). Every file is written atomically.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        mean, std = self.normalizer.statistics()
        cfg = json.loads(self.vae.to_json_string())
        cfg["latents_mean"], cfg["latents_std"] = mean.tolist(), std.tolist()
        save_safetensors(d / WEIGHTS_NAME, self.vae.state_dict(), metadata={"format": "pt"})
        with atomic_path(d / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        write_json(d / STATS_NAME, self.stats_dict())
        return d

    def stats_dict(self) -> dict:
        """The ``latent_stats.json`` content: mean, std (= sqrt(var), no eps), exact var, settings."""
        mean, std = self.normalizer.statistics()
        return {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "var": self.normalizer.running_var.detach().cpu().tolist(),
            "momentum": self.normalizer.momentum,
            "eps": self.normalizer.eps,
            "num_batches_tracked": int(self.normalizer.num_batches_tracked),
            "preset": self.preset,
        }

    # ------------------------------------------------------------------------------- properties
    @property
    def config(self) -> VAEConfig:
        return self._config

    @property
    def decoder_last_layer(self) -> torch.Tensor:
        """The decoder's final conv weight (``W`` of the taming/LDM adaptive GAN weight, eq. 7)."""
        return self.vae.decoder.conv_out.weight

    @property
    def latent_channels(self) -> int:
        return self._config.latent_channels

    @property
    def downsample_factor(self) -> int:
        return self._config.downsample_factor

    def latent_shape(self, resolution: int | tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an image of ``resolution`` (int or (H, W))."""
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        f = self.downsample_factor
        if h % f or w % f or h <= 0 or w <= 0:
            raise ConfigError(
                f"resolution {h}x{w} is not a positive multiple of the VAE downsample factor {f}; "
                f"use e.g. {max(f, (h // f) * f)}"
            )
        return self.latent_channels, h // f, w // f

    # ---------------------------------------------------------------------------------- forward
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Pixels float [-1, 1] [B, 3, H, W] -> posterior over raw latents (moments in float32)."""
        if not torch.is_floating_point(x):
            raise TypeError(f"Tokenizer.encode expects float pixels in [-1, 1], got {x.dtype}; use uint8_to_unit")
        moments = self.vae.encode(x).latent_dist.parameters  # [B, 2C, h, w] (after quant_conv)
        return DiagonalGaussian(moments.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, C, h, w] -> pixels [B, 3, H, W], unbounded (no output activation, spec 3.1)."""
        return self.vae.decode(z).sample  # [B, 3, H, W]

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> pixels: denormalise (no eps, spec 6.3) then decode."""
        return self.decode(self.normalizer.denormalize(z))

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> TokenizerOutput:
        """Encode, sample the posterior (never the mode, spec 11.6), decode the sample."""
        posterior = self.encode(x)
        z = posterior.sample(generator)  # [B, C, h, w]
        return TokenizerOutput(posterior=posterior, z=z, recon=self.decode(z))
