"""Batched image augmentations in torch for self-supervised pretraining.

All ops act on a whole float batch at once (no per-sample PIL work) and draw their randomness
from an explicit ``torch.Generator``, so a run is a pure function of its seed:

* random resized crop (area fraction ``scale``, aspect ratio in [3/4, 4/3]) + horizontal flip,
  implemented as one affine ``grid_sample`` (bilinear) per batch;
* intensity jitter: brightness (additive) and contrast (multiplicative about the image mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_resized_crop(x: torch.Tensor, *, size: int, scale: tuple[float, float], g: torch.Generator,
                        flip: bool = True, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """float ``[B, C, H, W]`` -> ``[B, C, size, size]``: a random box per image, resampled bilinearly.

    The box covers an area fraction ``scale`` of the image with aspect ratio in ``ratio``
    (log-uniform), clipped to lie inside the image (the torchvision RandomResizedCrop recipe,
    batched as affine sampling grids in normalised coordinates).
    """
    b = x.shape[0]
    area = _uniform(b, *scale, g)  # [B]
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), g)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # [B] width as a fraction of the image
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)  # centre in [-1, 1] keeping the box inside
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    sx = w * torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if flip else w  # negative = flip
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x), [b, x.shape[1], size, size], align_corners=False)  # [B, s, s, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_jitter(x: torch.Tensor, *, brightness: float, contrast: float, g: torch.Generator) -> torch.Tensor:
    """Brightness ``x + U(-b, b)`` then contrast ``mean + (x - mean) * U(1-c, 1+c)`` on ``[-1, 1]`` data."""
    b = x.shape[0]
    shift = _uniform(b, -brightness, brightness, g).view(b, 1, 1, 1).to(x)
    gain = _uniform(b, 1 - contrast, 1 + contrast, g).view(b, 1, 1, 1).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    return ((x + shift - mean) * gain + mean).clamp(-1, 1)


def augment_view(x: torch.Tensor, *, size: int, scale: tuple[float, float], g: torch.Generator,
                 brightness: float = 0.2, contrast: float = 0.3) -> torch.Tensor:
    """One augmented view of a float ``[-1, 1]`` batch: crop + flip + intensity jitter."""
    v = random_resized_crop(x, size=size, scale=scale, g=g)
    return intensity_jitter(v, brightness=brightness, contrast=contrast, g=g)
