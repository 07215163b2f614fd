"""RAE tokenizers from the encoder registry: the frozen encoder of a representation autoencoder.

:class:`repae.tokenizer.rae.RAETokenizer` takes its encoder injected (the tokenizer layer sits below
this package); this module is where the registry meets it::

    spec = rae_spec("repae-vit-t4", resolution=32, decoder="ViT-T")        # [192, 8, 8] latents, f4
    tok = build_rae_tokenizer(spec)                  # packaged encoder weights, random decoder
    tok = build_rae_tokenizer(spec, load_weights=False)   # random encoder too (a checkpoint fills both)
    tok = load_rae_tokenizer("runs/rae-fmnist/e2e-vae")    # an RAE folder (encoder weights inside)

Any registry encoder works (DINOv2 with registers, SigLIP-like CLIP towers, MAE, the project's own
``repae-vit-t4`` / ``repae-cnn-p4``); weights always come from local files (the registry's rules:
``tokenizer.rae_encoder_weights``, else ``$REPAE_<NAME>_WEIGHTS``, else a packaged default).
"""

from __future__ import annotations

import os

import torch

from repae.encoders.registry import build_encoder, encoder_spec, load_encoder
from repae.errors import ConfigError
from repae.tokenizer.rae import RAESpec, RAETokenizer, read_rae_spec

__all__ = ["rae_spec", "build_rae_tokenizer", "load_rae_tokenizer", "rae_encoder_builder"]


def rae_spec(encoder: str, *, resolution: int, decoder: str) -> RAESpec:
    """The RAE of registry encoder ``encoder`` for ``resolution`` px images and decoder preset ``decoder``:
    latent ``[D, g, g]`` with ``D`` the encoder's width and ``g`` its patch grid (DINOv2-B at 256 px:
    224 px input, patch 14 -> ``[768, 16, 16]``, decoder patch 16). Nothing is built."""
    row = encoder_spec(encoder)
    row.check_resolution(resolution)
    side = row.input_size(resolution)
    if side % row.patch_size:
        raise ConfigError(f"encoder {encoder}: input side {side} is no multiple of its patch {row.patch_size}; pick a "
                          f"data.resolution (or encoder) whose input side is a multiple of {row.patch_size}")
    return RAESpec.build(encoder=row.name, embed_dim=row.embed_dim, grid=side // row.patch_size,
                         resolution=resolution, decoder=decoder)


def rae_encoder_builder(*, weights: str | os.PathLike | None = None, load_weights: bool = True, device="cpu"):
    """``spec -> frozen encoder``: the registry encoder of ``spec`` with its local weights, or (``load_weights``
    False) the architecture with random weights, for a folder or checkpoint that holds the weights."""

    def build(spec: RAESpec):
        if load_weights:
            return load_encoder(spec.encoder, weights=weights, resolution=spec.resolution, device=device)
        with torch.random.fork_rng(devices=[]):  # a placeholder init must not move the caller's RNG
            return build_encoder(spec.encoder, resolution=spec.resolution, device=device)

    return build


def build_rae_tokenizer(spec: RAESpec, *, encoder_weights: str | os.PathLike | None = None, load_weights: bool = True,
                        momentum: float = 0.1, noise_tau: float = 0.8) -> RAETokenizer:
    """An :class:`RAETokenizer` with the registry encoder of ``spec`` (weights loaded unless ``load_weights``
    is False) and a randomly initialised decoder."""
    encoder = rae_encoder_builder(weights=encoder_weights, load_weights=load_weights)(spec)
    return RAETokenizer(spec, encoder, momentum=momentum, noise_tau=noise_tau)


def load_rae_tokenizer(folder: str | os.PathLike, *, require_stats: bool = False) -> RAETokenizer:
    """An RAE folder (:meth:`RAETokenizer.save_pretrained`): encoder and decoder weights from the folder."""
    read_rae_spec(folder)  # one-line error for anything else
    return RAETokenizer.from_pretrained(folder, encoder=rae_encoder_builder(load_weights=False),
                                        require_stats=require_stats)
