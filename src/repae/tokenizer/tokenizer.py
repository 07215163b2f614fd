"""The tokenizer: KL autoencoder (raw latents) + latent normaliser (final latents).

The autoencoder is an LDM-design ``AutoencoderKL`` (the presets f8d4, f16d32, tiny-*) or any supported
diffusers VAE (:mod:`repae.tokenizer.families`: ``AutoencoderKL`` in any configuration, FLUX.2's
``AutoencoderKLFlux2``, ``AutoencoderKLQwenImage``), always diffusers' own class.

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
    tok = Tokenizer.from_pretrained("FLUX.1-dev/vae/")   # any supported diffusers VAE folder (_class_name)
    tok = Tokenizer.from_pretrained("REPA-E/e2e-flux-vae")  # a hub id, from the local Hugging Face cache only

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
from repae.tokenizer.families import AutoencoderKLFamily, DiffusersVAESpec, arch_from_diffusers_config
from repae.tokenizer.normalizer import LatentNormalizer
from repae.tokenizer.vae import DiagonalGaussian, VAEConfig, build_vae, get_vae_config
from repae.utils.io import atomic_path, save_safetensors, write_json

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
STATS_NAME = "latent_stats.json"
_LDM_FAMILY = AutoencoderKLFamily()  # an LDM-design VAE runs exactly as diffusers' AutoencoderKL

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
        config: VAE architecture: an LDM geometry (:class:`~repae.tokenizer.vae.VAEConfig`, see
            :data:`repae.tokenizer.vae.VAE_PRESETS`) or any supported diffusers VAE
            (:class:`~repae.tokenizer.families.DiffusersVAESpec`: ``AutoencoderKL`` in any configuration,
            ``AutoencoderKLFlux2``, ``AutoencoderKLQwenImage``; docs/tokenizers.md).
        momentum: normaliser running-statistics momentum (REPA-E ``--bn-momentum`` 0.1).
        eps: normaliser eps (1e-4, spec 2.6; None: 1e-4, or FLUX.2's ``batch_norm_eps``).
        preset: preset name, recorded in saved folders (informational; ``auto`` for a folder's architecture).

    Attributes:
        stats_source: where the normaliser's statistics came from when loaded by :meth:`from_pretrained`
            (``latent_stats.json``, a config field, FLUX.2's BatchNorm), else None.
    """

    def __init__(self, config: VAEConfig | DiffusersVAESpec, *, momentum: float = 0.1, eps: float | None = None,
                 preset: str | None = None):
        super().__init__()
        self._config = config
        self._family = config.family if isinstance(config, DiffusersVAESpec) else _LDM_FAMILY
        if eps is None:
            eps = self._family.normalizer_eps(config.config) if isinstance(config, DiffusersVAESpec) else 1e-4
        self.preset = preset
        self.stats_source: str | None = None
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
        eps: float | None = None,
    ) -> Tokenizer:
        """Build a preset (an LDM geometry or a published diffusers VAE: flux1, sd35, flux2, qwenimage); optionally
        load VAE ``weights`` (strict) and latent ``stats`` from local files."""
        tok = cls(get_vae_config(name), momentum=momentum, eps=eps, preset=name)
        if weights is not None:
            log.info("%s", tok.load_vae_weights(weights))
        if stats is not None:
            from repae.tokenizer.stats import load_stats

            tok.normalizer.set_statistics(*load_stats(stats))
        return tok

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, require_stats: bool = True) -> Tokenizer:
        """Load a folder written by :meth:`save_pretrained`, or any supported diffusers VAE folder.

        The class comes from ``config.json``'s ``_class_name`` (``AutoencoderKL`` in any configuration,
        ``AutoencoderKLFlux2``, ``AutoencoderKLQwenImage``). ``latent_stats.json`` restores the normaliser
        bit-exactly. Without it, an LDM-design ``AutoencoderKL`` (SD-VAE, the repae presets) raises a
        MissingWeightsError unless ``require_stats=False`` (then mean 0 / std 1), as before; the other
        architectures take the statistics their folder carries (latents_mean/std, shift_factor/scaling_factor,
        FLUX.2's BatchNorm running statistics) and log which.
        """
        from repae.tokenizer.registry import resolve_tokenizer_weights

        d = Path(resolve_tokenizer_weights(directory))  # shipped names and cached hub ids too
        if not (d / CONFIG_NAME).is_file() and (d / "vae" / CONFIG_NAME).is_file():
            d = d / "vae"  # a whole diffusers pipeline folder
        if not d.exists():
            raise missing_vae_weights(directory)
        if not (d / CONFIG_NAME).is_file():
            raise missing_vae_weights(f"{d} (no {CONFIG_NAME}; expected a folder written by save_pretrained)")
        from repae.tokenizer.rae import is_rae_folder

        if is_rae_folder(d):  # its encoder architecture comes from the encoder registry, a layer above this one
            raise ConfigError(f"{d} is an RAE folder: load it with repae.encoders.rae.load_rae_tokenizer({str(d)!r})")
        config = arch_from_diffusers_config(json.loads((d / CONFIG_NAME).read_text()), where=str(d / CONFIG_NAME))
        if isinstance(config, DiffusersVAESpec):
            return cls._from_diffusers_folder(d, config, require_stats=require_stats)
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
            tok._restore_stats(stats)
            tok.stats_source = str(stats_file)
        return tok

    @classmethod
    def _from_diffusers_folder(cls, d: Path, config: DiffusersVAESpec, *, require_stats: bool) -> Tokenizer:
        stats_file = d / STATS_NAME
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        eps = float(stats["eps"]) if "eps" in stats else None  # None: the family's (FLUX.2: its BatchNorm's eps)
        tok = cls(config, momentum=float(stats.get("momentum", 0.1)), eps=eps, preset=stats.get("preset") or "auto")
        tok.load_vae_weights(d)
        if stats:
            tok._restore_stats(stats)
            tok.stats_source = str(stats_file)
            return tok
        found = tok._family.folder_statistics(tok.vae)
        if found is None:
            msg = (f"{d} carries no latent statistics ({config.class_name}: no {STATS_NAME}, no statistics fields, or "
                   "a BatchNorm that never saw a batch)")
            if require_stats:
                raise MissingWeightsError(msg, "run 'repae latent-stats' and pass stats=..., or load with "
                                               "require_stats=False")
            log.warning("%s: the latent normaliser starts at mean 0 / std 1", msg)
            return tok
        with torch.no_grad():
            tok.normalizer.running_mean.copy_(found.mean)
            tok.normalizer.running_var.copy_(found.var)
        tok.stats_source = f"{d}: {found.source}"
        log.info("latent statistics of %s (no %s): %s", d, STATS_NAME, found.source)
        return tok

    def _restore_stats(self, stats: dict) -> None:
        """Set the normaliser from a ``latent_stats.json`` dict (exact: ``var`` is what the buffer holds)."""
        mean = torch.tensor(stats["mean"], dtype=torch.float32)
        with torch.no_grad():
            self.normalizer.running_mean.copy_(mean)
            if "var" in stats:  # exact: var is what the buffer holds (std = sqrt(var) is lossy)
                self.normalizer.running_var.copy_(torch.tensor(stats["var"], dtype=torch.float32))
            else:
                self.normalizer.set_statistics(mean, torch.tensor(stats["std"], dtype=torch.float32))
            self.normalizer.num_batches_tracked.fill_(int(stats.get("num_batches_tracked", 0)))

    def load_vae_weights(self, path: str | os.PathLike) -> LoadReport:
        """Strictly load VAE weights from a diffusers folder / file or an LDM checkpoint (spec 11.27).

        Raises MissingWeightsError for a missing path and ConfigError (KeyLayoutError) with the
        missing/unexpected key counts for a checkpoint of another layout or preset.
        """
        from repae.tokenizer.registry import resolve_tokenizer_weights

        layout, num, dropped = self.load_vae_state(read_vae_file(resolve_tokenizer_weights(path)),
                                                   what=f"VAE weights {path}")
        return LoadReport(path=str(path), layout=layout, num_loaded=num, num_dropped=dropped)

    def load_vae_state(self, obj, *, what: str = "VAE weights",
                       hint: str = "; these weights are for another VAE: pass the matching --vae-preset / "
                                   "tokenizer.preset") -> tuple[str, int, int]:
        """Strictly load a VAE checkpoint held in memory (any layout and nesting, e.g. the ``vae`` entry of a
        REPA-E checkpoint); returns ``(layout, tensors loaded, non-VAE tensors ignored)``.

        Raises KeyLayoutError (a ConfigError) naming the missing / unexpected / misshapen keys.
        """
        geometry = self._config if isinstance(self._config, VAEConfig) else self._config.ldm_geometry()
        sd, layout, dropped = to_diffusers(obj, geometry)
        check_state_dict(sd, self.vae.state_dict(), what=what, hint=hint)
        result = self.vae.load_state_dict(sd, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        return layout, len(sd), dropped

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a diffusers folder (config.json + diffusion_pytorch_model.safetensors) + latent_stats.json.

        The folder loads with the VAE's own diffusers class (``diffusers.<Class>.from_pretrained``) and with
        :meth:`from_pretrained` (bit-exact, normaliser included). The normaliser's statistics also go where the
        family's pipelines read them (:meth:`export_fields`): ``latents_mean`` / ``latents_std`` for an
        LDM-design VAE (as before), the folder's own convention for the other ``AutoencoderKL`` configurations,
        FLUX.2's BatchNorm buffers, Qwen-Image's ``latents_mean`` / ``latents_std``. Every file is written atomically.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg, state, _ = self._export_payload()
        save_safetensors(d / WEIGHTS_NAME, state, metadata={"format": "pt"})
        with atomic_path(d / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        write_json(d / STATS_NAME, self.stats_dict())
        return d

    def export_fields(self) -> list[str]:
        """One line per place :meth:`save_pretrained` writes the latent statistics to (for export notes)."""
        return self._export_payload()[2]

    def _export_payload(self) -> tuple[dict, dict, list[str]]:
        """(config.json dict, state dict, notes) of :meth:`save_pretrained`; the module is not changed."""
        cfg = json.loads(self.vae.to_json_string())
        state = dict(self.vae.state_dict())
        if isinstance(self._config, VAEConfig):
            mean, std = self.normalizer.statistics()
            cfg["latents_mean"], cfg["latents_std"] = mean.tolist(), std.tolist()
            return cfg, state, ["config.json latents_mean / latents_std: per-channel mean / std of the tuned latent"]
        mean, var = self.normalizer.running_mean.detach().cpu(), self.normalizer.running_var.detach().cpu()
        return cfg, state, self._family.export_statistics(cfg, state, mean, var)

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
    def config(self) -> VAEConfig | DiffusersVAESpec:
        return self._config

    @property
    def class_name(self) -> str:
        """The diffusers class of the VAE (``AutoencoderKL`` for the LDM design)."""
        return type(self.vae).__name__

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
        moments = self._family.moments(self.vae, x)  # [B, 2C, h, w] (after quant_conv, if any)
        return DiagonalGaussian(moments.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, C, h, w] -> pixels [B, 3, H, W], unbounded (no output activation, spec 3.1; only
        Qwen-Image's decoder clamps to [-1, 1], as diffusers' forward does)."""
        return self._family.decode(self.vae, z)  # [B, 3, H, W]

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> pixels: denormalise (no eps, spec 6.3) then decode."""
        return self.decode(self.normalizer.denormalize(z))

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> TokenizerOutput:
        """Encode, sample the posterior (never the mode, spec 11.6), decode the sample."""
        posterior = self.encode(x)
        z = posterior.sample(generator)  # [B, C, h, w]
        return TokenizerOutput(posterior=posterior, z=z, recon=self.decode(z))
