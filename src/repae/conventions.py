"""Conventions of the whole package, named once.

Pixels
    Images enter the package as ``uint8`` tensors ``[B, 3, H, W]`` in ``[0, 255]``. The VAE sees
    ``float32`` in ``[-1, 1]``: ``x = u / 127.5 - 1`` (REPA-E spec section 3.5). Images leave the
    package as ``uint8`` again: ``clamp(255 * (x + 1) / 2, 0, 255)`` truncated (ADM / generate.py
    behaviour), or rounded with ``+0.5`` where a function says so.

Time
    Flow-matching time runs from ``t = 0`` (data) to ``t = 1`` (noise), the REPA / REPA-E
    convention: ``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_0 = 1, sigma_1 = 1``.
    Samplers integrate from ``t = 1`` down to ``t = 0``. The time fed to the network is the raw
    ``t`` in ``[0, 1]`` (not multiplied by 1000).

Latents
    *Raw* latents are what the VAE posterior produces. *Normalised* latents are raw latents passed
    through the tokenizer's :class:`~repae.tokenizer.normalizer.LatentNormalizer` (per-channel,
    non-affine BatchNorm). The diffusion model only ever sees normalised latents.

Labels
    Class labels are ``int64`` in ``[0, num_classes)``; the null (unconditional) label used for
    classifier-free guidance is ``num_classes``.
"""

from __future__ import annotations

import torch


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]`` (the VAE input range)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image tensor, got {x.dtype}; pass raw pixels in [0, 255]")
    return x.float() / 127.5 - 1.0


def unit_to_uint8(x: torch.Tensor, *, rounding: bool = False) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]``; truncates like ADM unless ``rounding``."""
    u = (x.float() + 1.0) * 127.5
    if rounding:
        u = u + 0.5
    return u.clamp(0, 255).to(torch.uint8)
