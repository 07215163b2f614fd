"""The frozen representation-encoder interface (REPA-E spec section 5).

A :class:`RepresentationEncoder` turns raw ``uint8`` pixels ``[B, 3, H, W]`` into patch tokens
``[B, N, D]`` -- the targets of the REPA alignment loss. Every encoder owns its pixel
preprocessing (constants *and* order, spec 5.2) so callers never normalise by hand::

    enc = repae.encoders.load_encoder("dinov2-vit-b", weights="dinov2_vitb14_pretrain.pth")
    tokens = enc(images_uint8)          # [B, 256, 768], computed under torch.no_grad

Encoders are always frozen: parameters have ``requires_grad=False`` and the module stays in
eval mode even if a parent calls ``.train()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Pixel constants (spec 5.2)
# ---------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # N_IN
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # N_CLIP
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PixelPipeline:
    """How one encoder family turns uint8 pixels into model input (spec 5.2).

    ``mean``/``std`` given: ``x = u8 / 255`` then ``(x - mean) / std``. Both ``None``: the
    project's ``[-1, 1]`` convention ``x = u8 / 127.5 - 1`` (:mod:`repae.conventions`).
    ``order`` says whether the bicubic resize (``align_corners=False``) runs before or after the
    normalisation. Both steps are linear and the bicubic weights sum to one, so the two orders
    agree up to float rounding; the order is still kept per family for bit-fidelity with REPA-E.
    The resize only runs when the input size differs from the model input size.
    """

    mean: tuple[float, float, float] | None = IMAGENET_MEAN  # None -> [-1, 1] range
    std: tuple[float, float, float] | None = IMAGENET_STD
    order: Literal["normalize_resize", "resize_normalize"] = "normalize_resize"
    antialias: bool = False  # upstream F.interpolate(..., mode="bicubic") has no antialias


def _normalize(x: torch.Tensor, pipe: PixelPipeline) -> torch.Tensor:
    """Per-channel normalisation: ``[0, 1] -> (x - mean) / std``, or ``[0, 255] -> [-1, 1]``."""
    if pipe.mean is None:
        return x / 127.5 - 1.0  # [B, 3, H, W] in [-1, 1]
    mean = torch.tensor(pipe.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pipe.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std  # [B, 3, H, W]


def _resize(x: torch.Tensor, size: int, pipe: PixelPipeline) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=pipe.antialias)


def preprocess_pixels(images: torch.Tensor, size: int, pipe: PixelPipeline) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 ``[B, 3, size, size]`` following ``pipe`` (spec 5.2)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in [0, 255], got {images.dtype}; pass raw pixels")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    return _pipeline(images.float(), size, pipe)


def preprocess_unit(x: torch.Tensor, size: int, pipe: PixelPipeline) -> torch.Tensor:
    """float ``[-1, 1]`` ``[B, 3, H, W]`` (the VAE's pixels) -> ``[B, 3, size, size]``: the same pipeline as
    :func:`preprocess_pixels` on ``(x + 1) * 127.5``, without rounding to uint8 (an RAE encodes such pixels)."""
    if not torch.is_floating_point(x) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected float pixels in [-1, 1] of shape [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
    return _pipeline((x.float() + 1.0) * 127.5, size, pipe)


def _pipeline(x: torch.Tensor, size: int, pipe: PixelPipeline) -> torch.Tensor:
    """float ``[0, 255]`` ``[B, 3, H, W]`` -> model input following ``pipe``."""
    if pipe.mean is not None:
        x = x / 255.0  # every upstream pipeline starts with x / 255 (spec 5.2)
    if pipe.order == "normalize_resize":
        return _resize(_normalize(x, pipe), size, pipe)
    return _normalize(_resize(x, size, pipe), pipe)


# ---------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------


class RepresentationEncoder(nn.Module):
    """A frozen image encoder that yields patch tokens ``[B, N, D]``.

    Attributes:
        name: registry name, e.g. ``"dinov2-vit-b"``.
        embed_dim: token width ``D`` (known from the registry without weights).
        patch_size: model patch size in model-input pixels.
        resolution: image resolution the encoder was configured for (REPA-E ``--resolution``).
        input_resolution: side of the square image fed to the network after preprocessing.
        pixels: the :class:`PixelPipeline` used by :meth:`preprocess`.

    Subclasses implement :meth:`features` only.
    """

    def __init__(
        self,
        *,
        name: str,
        embed_dim: int,
        patch_size: int,
        resolution: int,
        input_resolution: int,
        pixels: PixelPipeline,
    ) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.resolution = resolution
        self.input_resolution = input_resolution
        self.pixels = pixels

    # -- pixels ---------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> model input ``[B, 3, R, R]``, ``R = input_resolution``."""
        return preprocess_pixels(images, self.input_resolution, self.pixels)

    def preprocess_unit(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[-1, 1]`` ``[B, 3, H, W]`` -> model input ``[B, 3, R, R]`` (:func:`preprocess_unit`)."""
        return preprocess_unit(x, self.input_resolution, self.pixels)

    # -- tokens ---------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``[B, 3, R, R]`` -> patch tokens ``[B, N, D]`` (no CLS, no registers)."""
        raise NotImplementedError

    @property
    def num_patches(self) -> int:
        """Tokens per image at the configured resolution."""
        return (self.input_resolution // self.patch_size) ** 2

    def num_tokens(self, resolution: int | None = None) -> int:
        """Tokens per image that :meth:`forward` returns for images of side ``resolution``.

        Preprocessing always resizes to ``input_resolution``, so the count does not depend on the
        input size; use :func:`repae.encoders.encoder_spec` ``(name).num_tokens(r)`` for the count
        of an encoder *loaded* at another resolution.
        """
        del resolution  # any input side is resized to input_resolution
        return self.num_patches

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> ``[B, N, D]`` = ``features(preprocess(images))``, no grad."""
        return self.features(self.preprocess(images))

    # -- frozen ---------------------------------------------------------------------------
    def freeze(self) -> RepresentationEncoder:
        """Turn off gradients and switch to eval mode; returns ``self``."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> RepresentationEncoder:
        """Encoders are never trained: stays in eval mode whatever ``mode`` says."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, embed_dim={self.embed_dim}, patch_size={self.patch_size}, "
            f"resolution={self.resolution}, input_resolution={self.input_resolution}"
        )
