"""Representation autoencoders (RAE, Zheng et al. 2025, arXiv 2510.11690) as repae tokenizers.

An RAE replaces the VAE's encoder by a FROZEN pretrained representation encoder (DINOv2-B with
registers, SigLIP, MAE; on the embedded default the project's own ``repae-vit-t4``). Its latent is
the encoder's patch tokens, reshaped to an image-like grid, and only a ViT decoder is trained to map
them back to pixels::

    z = tokens(x)          [B, N, D] -> [B, D, h, w], h = w = sqrt(N)   (no posterior, no KL)
    x_hat = Dec(z + n)     n ~ N(0, sigma^2 I), sigma ~ U(0, tau) per image, only in decoder training

The decoder is trained with L1 + perceptual + GAN (repae's L_REG with ``lreg.kl_weight=0``; recipe
``rae-decoder``) and with RAE's *noise-augmented decoding*: Gaussian noise of a random std is added to
the latent before decoding, so the decoder also maps the slightly-off latents a diffusion model makes
to clean images. We draw ``sigma ~ U(0, tau)`` per image, as RAE's released code and diffusers'
``AutoencoderRAE._noising`` do (``tau = 0.8``), and add the noise to the raw tokens (before the latent
normaliser), also as they do. RAE's tokens come out of a LayerNorm without affine, so every token has a
root-mean-square of 1 and ``tau`` is relative to that; a registry encoder's tokens need not (an affine final
norm, a CNN's ReLU features; ``repae-vit-t4``: 0.97), so sigma is scaled by the RMS of the raw latent (from the
normaliser's statistics,
``sqrt(mean_c(var_c + mean_c^2))``): the same noise-to-signal as RAE's for any encoder, exactly RAE's for
unit-RMS tokens.

What diffusers gives and what it does not (diffusers 0.42 ``AutoencoderRAE``):

* the **decoder** is diffusers' own ``RAEDecoder`` (the ViT-MAE decoder of RAE's code: ``decoder_embed``,
  ``decoder_layers``, ``decoder_norm``, ``decoder_pred``, ``trainable_cls_token``), built as
  ``AutoencoderRAE`` builds it, so its weights carry the same ``decoder.*`` keys as an ``AutoencoderRAE``
  folder. One deliberate difference: our decoder predicts pixels in repae's ``[-1, 1]``; RAE's predicts
  ImageNet-normalised pixels (``_denormalize_image`` undoes that in ``AutoencoderRAE._decode``);
* the **encoder** is NOT ``AutoencoderRAE``'s: that class builds its encoder from ``transformers``
  classes (``Dinov2WithRegistersModel``, ``SiglipVisionModel``, ``ViTMAEModel``) and nothing else — a
  package repae does not depend on (not installed here, so ``AutoencoderRAE`` cannot even be built) — so
  it cannot hold the project's own encoders (timm ViT / CNN, ``repae-vit-t4``, ``repae-cnn-p4``), nor the
  repae encoder registry's local-file loaders (Meta / timm / HF layouts, no download); it also draws the
  augmentation noise inside ``encode`` from the global RNG whenever the module is in train mode, which a
  seeded, resumable trainer cannot control. So the encoder is any registry encoder
  (:mod:`repae.encoders`), injected: this module (the tokenizer layer) imports nothing from the encoders
  package; :mod:`repae.encoders.rae` builds RAE tokenizers from the registry. An RAE folder is therefore
  repae's format (below), not an ``AutoencoderRAE`` one.

The latent normaliser (per-channel, non-affine BatchNorm of repae) plays the role of RAE's latent
statistics; its statistics are computed once from clean latents (the encoder is frozen, so they never
change). The tokens are taken as the registry gives them (DINOv2: after its final LayerNorm, *with* its
affine; RAE drops that affine): a per-channel affine map followed by per-channel normalisation gives the
same normalised latent, so the difference only rescales the augmentation noise per channel.

RAE folder (:meth:`RAETokenizer.save_pretrained`): ``config.json`` (``_class_name``
``RepresentationAutoencoder``, the :class:`RAESpec` and the ``noise_tau`` the decoder was trained with),
``diffusion_pytorch_model.safetensors`` (the whole autoencoder: ``encoder.*`` — the frozen encoder, so a
folder or checkpoint needs no encoder file to decode or encode — ``decoder.*`` and the noise counter)
and ``latent_stats.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from repae.errors import ConfigError, MissingWeightsError
from repae.tokenizer.normalizer import LatentNormalizer
from repae.tokenizer.tokenizer import CONFIG_NAME, STATS_NAME, Tokenizer
from repae.tokenizer.vae import LOGVAR_MIN

__all__ = ["RAE_CLASS", "RAE_DECODERS", "RAESpec", "RAELatent", "NoiseAugmentation", "RepresentationAutoencoder",
           "RAETokenizer", "is_rae_folder"]

#: ``_class_name`` of an RAE folder's ``config.json``.
RAE_CLASS = "RepresentationAutoencoder"
_WEIGHTS = "diffusion_pytorch_model.safetensors"

#: Decoder presets: (width, blocks, heads, MLP width). ViT-B / ViT-L / ViT-XL are RAE's decoder sizes (ViT-XL
#: its default); ViT-T (ViT-Ti width, 4 blocks) and ViT-S are small CPU sizes of ours.
RAE_DECODERS: dict[str, tuple[int, int, int, int]] = {
    "ViT-T": (192, 4, 3, 768),
    "ViT-S": (384, 12, 6, 1536),
    "ViT-B": (768, 12, 12, 3072),
    "ViT-L": (1024, 24, 16, 4096),
    "ViT-XL": (1152, 28, 16, 4096),
}


@dataclass(frozen=True)
class RAESpec:
    """Architecture of an RAE: what the latent is and which decoder maps it back (no weights).

    ``downsample_factor`` is the decoder's patch size (pixels per token side): the encoder resizes its
    input to its own size, so the token grid is fixed and the decoder draws ``grid * patch`` pixels.
    """

    encoder: str  # registry name of the frozen encoder (repae.encoders)
    embed_dim: int  # D: token width = latent channels
    grid: int  # tokens per side (h = w)
    resolution: int  # image side the decoder makes
    decoder: str = "ViT-T"  # decoder preset name (RAE_DECODERS)
    decoder_hidden_size: int = 192
    decoder_num_hidden_layers: int = 4
    decoder_num_attention_heads: int = 3
    decoder_intermediate_size: int = 768

    @classmethod
    def build(cls, *, encoder: str, embed_dim: int, grid: int, resolution: int, decoder: str) -> RAESpec:
        """The spec of decoder preset ``decoder``; ConfigError for an unknown preset or a resolution that is
        no multiple of the token grid."""
        if decoder not in RAE_DECODERS:
            raise ConfigError(f"unknown RAE decoder {decoder!r}; set tokenizer.rae_decoder to one of: "
                              f"{', '.join(RAE_DECODERS)}")
        if grid <= 0 or resolution % grid:
            raise ConfigError(f"an RAE on {encoder} has a {grid}x{grid} token grid: data.resolution={resolution} "
                              f"must be a multiple of {grid} (e.g. {max(grid, resolution // max(grid, 1) * grid)})")
        width, depth, heads, mlp = RAE_DECODERS[decoder]
        return cls(encoder=encoder, embed_dim=int(embed_dim), grid=int(grid), resolution=int(resolution),
                   decoder=decoder, decoder_hidden_size=width, decoder_num_hidden_layers=depth,
                   decoder_num_attention_heads=heads, decoder_intermediate_size=mlp)

    @classmethod
    def from_dict(cls, raw: dict, *, where: str = "tokenizer.arch") -> RAESpec:
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as err:
            raise ConfigError(f"{where} is no RAE architecture ({err}); rebuild it from tokenizer.rae_encoder / tokenizer.rae_decoder") from None

    def to_dict(self) -> dict:
        return {"_class_name": RAE_CLASS, **asdict(self)}

    def differences(self, other: RAESpec) -> list[str]:
        """``field a vs b`` for every field that differs (empty: the same architecture)."""
        return [f"{f.name} {getattr(self, f.name)} vs {getattr(other, f.name)}" for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]

    @property
    def latent_channels(self) -> int:
        return self.embed_dim

    @property
    def downsample_factor(self) -> int:
        return self.resolution // self.grid

    @property
    def class_name(self) -> str:
        return RAE_CLASS

    def decoder_kwargs(self) -> dict:
        """The arguments of diffusers' ``RAEDecoder`` (as ``AutoencoderRAE.__init__`` passes them)."""
        return dict(hidden_size=self.embed_dim, decoder_hidden_size=self.decoder_hidden_size,
                    decoder_num_hidden_layers=self.decoder_num_hidden_layers,
                    decoder_num_attention_heads=self.decoder_num_attention_heads,
                    decoder_intermediate_size=self.decoder_intermediate_size, num_patches=self.grid ** 2,
                    patch_size=self.downsample_factor, num_channels=3, image_size=self.resolution)


class RAELatent:
    """What :meth:`RAETokenizer.encode` returns: the posterior-like object the trainer reads.

    ``mean`` is the latent [B, D, h, w]; ``std`` is the augmentation noise's sigma of each image (expanded
    to the latent's shape) in the differentiable forward of decoder training, else exactly 0, so
    ``mean + std * eps`` (what the trainer and the latent cache compute) is the noise-augmented latent there
    and the latent itself everywhere else. There is no KL: :meth:`kl` is 0.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean  # [B, D, h, w] float32
        self.std = std.expand_as(mean)  # [B, D, h, w]
        self.var = self.std.pow(2)
        self.logvar = torch.log(self.var).clamp_min(LOGVAR_MIN)  # finite (the trainer keeps it for a KL)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps  # [B, D, h, w]

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        return self.mean.new_zeros(self.mean.shape[0])  # [B]

    def mean_std(self) -> torch.Tensor:
        return torch.cat([self.mean, self.std], dim=1)  # [B, 2D, h, w]


class NoiseAugmentation(nn.Module):
    """sigma ~ U(0, tau) per image (RAE's noise-augmented decoding; in units of the latent's RMS, module
    docstring), from its own counter-based RNG.

    The trainer draws all randomness of a step from a seeded generator; the tokenizer interface has no
    way to receive one, so sigma comes from ``torch.Generator().manual_seed(f(seed, draws, rank))``, where
    ``draws`` counts the draws in a persistent buffer: it is saved in every checkpoint (the tokenizer's
    ``vae`` state), so a resumed run draws the same sigmas as an uninterrupted one with the same number
    of processes. (The noise itself is the trainer's seeded posterior noise.)
    """

    draws: torch.Tensor

    def __init__(self, tau: float = 0.8, seed: int = 0):
        super().__init__()
        self.tau = float(tau)  # largest sigma (RAE: 0.8)
        self.seed = int(seed)  # the run's train.seed (set by the builder)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long), persistent=True)

    def sigma(self, batch: int, device: torch.device) -> torch.Tensor:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        key = ((self.seed * 1_000_003 + int(self.draws)) * 1_000_033 + rank) % (1 << 63)
        g = torch.Generator().manual_seed(key)
        self.draws.add_(1)
        return (self.tau * torch.rand(batch, generator=g)).to(device).view(batch, 1, 1, 1)  # [B, 1, 1, 1]


class RepresentationAutoencoder(nn.Module):
    """The RAE itself (the tokenizer's ``vae``): frozen ``encoder``, trainable ``decoder`` (diffusers'
    ``RAEDecoder``) and the augmentation's draw counter. ``encoder`` is duck-typed: a repae
    :class:`~repae.encoders.RepresentationEncoder` (``preprocess_unit(x) -> model input``,
    ``features(input) -> [B, N, D]``)."""

    def __init__(self, spec: RAESpec, encoder: nn.Module, *, noise_tau: float = 0.8):
        super().__init__()
        from diffusers.models.autoencoders.autoencoder_rae import RAEDecoder  # a large module: loaded when needed

        self.encoder = encoder.requires_grad_(False).eval()  # frozen, always
        self.decoder = RAEDecoder(**spec.decoder_kwargs())
        self.noise = NoiseAugmentation(noise_tau)

    def train(self, mode: bool = True) -> RepresentationAutoencoder:
        super().train(mode)
        self.encoder.eval()  # the representation encoder never leaves eval mode
        return self

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels float [-1, 1] [B, 3, H, W] -> patch tokens [B, N, D] float32, never with a graph."""
        with torch.no_grad():
            return self.encoder.features(self.encoder.preprocess_unit(x)).float()  # [B, N, D]

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] -> pixels [B, 3, H, W] (diffusers' RAEDecoder + its unpatchify)."""
        return self.decoder.unpatchify(self.decoder(tokens).logits)  # [B, 3, H, W]


class RAETokenizer(Tokenizer):
    """An RAE behind the :class:`~repae.tokenizer.tokenizer.Tokenizer` interface the trainer, the latent
    cache and the generator use: ``encode`` (a :class:`RAELatent`), ``decode``, ``normalizer``,
    ``latent_shape``, ``save_pretrained`` (module docstring).

    Args:
        spec: the architecture.
        encoder: the frozen representation encoder (built by :mod:`repae.encoders.rae`).
        momentum / eps: of the latent normaliser (its statistics do not move in any RAE recipe).
        noise_tau: largest sigma of the noise augmentation (RAE 0.8; ``tokenizer.rae_noise_tau``).

    Attributes:
        noise_augment: add the augmentation noise in the differentiable training forward (set by the builder
            for the recipe that trains the decoder; never in eval mode nor under ``torch.no_grad``).
    """

    def __init__(self, spec: RAESpec, encoder: nn.Module, *, momentum: float = 0.1, eps: float = 1e-4,
                 noise_tau: float = 0.8):
        nn.Module.__init__(self)  # no VAE to build: Tokenizer.__init__ is skipped on purpose
        self._config = spec
        self._family = None
        self.preset = "rae"
        self.stats_source: str | None = None
        self.noise_augment = False
        self.vae = RepresentationAutoencoder(spec, encoder, noise_tau=noise_tau)
        self.normalizer = LatentNormalizer(spec.latent_channels, momentum=momentum, eps=eps)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> RAETokenizer:
        raise ConfigError("an RAE has no VAE preset: build it with repae.encoders.rae.build_rae_tokenizer(rae_spec(...))")

    # ------------------------------------------------------------------------------ properties
    @property
    def spec(self) -> RAESpec:
        return self._config

    @property
    def decoder_last_layer(self) -> torch.Tensor:
        """The decoder's output projection (the ``W`` of an adaptive GAN weight)."""
        return self.vae.decoder.decoder_pred.weight

    def latent_shape(self, resolution: int | tuple[int, int]) -> tuple[int, int, int]:
        """(D, grid, grid); only at the resolution the decoder was built for."""
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if (h, w) != (self.spec.resolution, self.spec.resolution):
            raise ConfigError(f"this RAE decodes {self.spec.resolution}x{self.spec.resolution} images, not {h}x{w}: "
                              f"set data.resolution={self.spec.resolution} or build an RAE for {h}px")
        return self.spec.embed_dim, self.spec.grid, self.spec.grid

    # --------------------------------------------------------------------------------- forward
    def encode(self, x: torch.Tensor) -> RAELatent:
        """Pixels float [-1, 1] [B, 3, H, W] -> :class:`RAELatent` over [B, D, h, w] (no graph to the encoder)."""
        if not torch.is_floating_point(x):
            raise TypeError(f"RAETokenizer.encode expects float pixels in [-1, 1], got {x.dtype}; use uint8_to_unit")
        tokens = self.vae.tokens(x)  # [B, N, D]
        B, N, D = tokens.shape
        z = tokens.transpose(1, 2).reshape(B, D, self.spec.grid, self.spec.grid)  # [B, D, h, w] (row-major grid)
        if self.noise_augment and self.training and torch.is_grad_enabled() and self.vae.noise.tau > 0:
            norm = self.normalizer
            rms = (norm.running_var + norm.running_mean.pow(2)).mean().sqrt()  # RMS of a raw latent value
            std = self.vae.noise.sigma(B, z.device) * rms  # [B, 1, 1, 1] (module docstring)
        else:
            std = z.new_zeros(B, 1, 1, 1)
        return RAELatent(z, std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, D, h, w] -> pixels [B, 3, H, W] in ~[-1, 1] (unbounded)."""
        tokens = z.flatten(2).transpose(1, 2)  # [B, N, D]
        return self.vae.decode_tokens(tokens)  # [B, 3, H, W]

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """An RAE folder (module docstring): config.json, the whole autoencoder's weights, latent_stats.json."""
        from repae.utils.io import atomic_path, save_safetensors, write_json

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_safetensors(d / _WEIGHTS, dict(self.vae.state_dict()), metadata={"format": "pt"})
        with atomic_path(d / CONFIG_NAME) as tmp:
            cfg = {**self.spec.to_dict(), "noise_tau": self.vae.noise.tau}
            tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        write_json(d / STATS_NAME, self.stats_dict())
        return d

    def export_fields(self) -> list[str]:
        return ["config.json: the RAE architecture (repae's RAE folder; the decoder's keys are diffusers' "
                "AutoencoderRAE decoder.* keys)"]

    def load_vae_weights(self, path: str | os.PathLike):
        """Strictly load the autoencoder's weights from an RAE folder or its safetensors file."""
        from repae.interop.io import check_state_dict, read_weights

        p = Path(path)
        file = p / _WEIGHTS if p.is_dir() else p
        if not file.is_file():
            raise MissingWeightsError(f"RAE weights {file}", "give an RAE folder written by save_pretrained / "
                                                             "repae export-vae")
        sd = read_weights(file)
        check_state_dict(sd, self.vae.state_dict(), what=f"RAE weights {file}",
                         hint="; these weights are for another encoder or decoder: give the RAE folder saved with this configuration")
        self.vae.load_state_dict(sd, strict=True)
        return str(file)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, encoder: Callable[[RAESpec], nn.Module] | None = None,
                        require_stats: bool = True) -> RAETokenizer:
        """Load an RAE folder; ``encoder(spec)`` builds the encoder architecture (its weights come from the
        folder): :func:`repae.encoders.rae.load_rae_tokenizer` passes the registry's builder."""
        d = Path(directory)
        if encoder is None:
            raise ConfigError(f"{d} is an RAE folder: load it with repae.encoders.rae.load_rae_tokenizer (the "
                              "encoder architecture comes from the encoder registry)")
        spec = read_rae_spec(d)
        raw = json.loads((d / CONFIG_NAME).read_text())
        stats = json.loads((d / STATS_NAME).read_text()) if (d / STATS_NAME).is_file() else {}
        if not stats and require_stats:
            raise MissingWeightsError(f"latent statistics not found at {d / STATS_NAME}",
                                      "load with require_stats=False (then computed from data by the trainer)")
        tok = cls(spec, encoder(spec), momentum=float(stats.get("momentum", 0.1)), eps=float(stats.get("eps", 1e-4)),
                  noise_tau=float(raw.get("noise_tau", 0.8)))
        tok.load_vae_weights(d)
        if stats:
            tok._restore_stats(stats)
            tok.stats_source = str(d / STATS_NAME)
        return tok


def is_rae_folder(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` names :data:`RAE_CLASS`."""
    if path is None:
        return False
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == RAE_CLASS
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def read_rae_spec(folder: str | os.PathLike) -> RAESpec:
    """The :class:`RAESpec` of an RAE folder."""
    path = Path(folder) / CONFIG_NAME
    if not is_rae_folder(folder):
        raise ConfigError(f"{folder} is no RAE folder (no {CONFIG_NAME} with _class_name {RAE_CLASS}); pass a folder "
                          "written by save_pretrained / repae export-vae of an RAE tokenizer")
    return RAESpec.from_dict(json.loads(path.read_text()), where=str(path))
