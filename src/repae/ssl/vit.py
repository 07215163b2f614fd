"""The project's own small alignment encoder: ``repae-vit-t4`` (ViT, 32x32 input, patch 4).

The architecture is exactly timm's ``VisionTransformer(img_size=32, patch_size=4, in_chans=3,
num_classes=0, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, class_token=True,
global_pool='token')`` (2,691,648 parameters); weights are stored as a timm-format state dict in
safetensors, so the encoder registry (``repae.encoders``) loads them into that exact module.

Preprocessing: ``uint8 / 127.5 - 1`` (:func:`repae.conventions.uint8_to_unit`) at 32x32.
Patch tokens: ``forward_features`` output (after the final LayerNorm) minus the CLS token,
``[B, 64, 192]`` for a 32x32 input.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from repae.conventions import uint8_to_unit
from repae.errors import ConfigError, MissingWeightsError
from repae.utils.assets import asset

VIT_T4_KWARGS: dict = dict(
    img_size=32,         # input resolution the encoder is trained at
    patch_size=4,        # 8x8 = 64 patch tokens
    in_chans=3,          # grayscale data is replicated to 3 channels
    num_classes=0,       # backbone only (no classifier head)
    embed_dim=192,       # ViT-Tiny width
    depth=6,             # half of ViT-Tiny's 12 blocks (CPU budget)
    num_heads=3,
    mlp_ratio=4.0,
    class_token=True,
    global_pool="token",
)
ASSET_WEIGHTS = asset("repae-vit-t4-fmnist.safetensors")


def build_vit_t4(*, dynamic_img_size: bool = False, **overrides) -> VisionTransformer:
    """The exact ``repae-vit-t4`` architecture (randomly initialised).

    Args:
        dynamic_img_size: let the same weights run on smaller crops (pos-embed resampled); used
            for DINO local crops. It changes no parameter, so the state dict is identical.
        overrides: architecture overrides for tests only (e.g. ``depth=1, embed_dim=32``).
    """
    kwargs = {**VIT_T4_KWARGS, **overrides}
    if dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    return VisionTransformer(**kwargs)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, 32, 32]`` -> float ``[-1, 1]`` (the encoder's input convention)."""
    return uint8_to_unit(images)


def patch_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens of a preprocessed batch: ``forward_features`` minus prefix tokens -> ``[B, N, D]``."""
    return model.forward_features(x)[:, model.num_prefix_tokens:]  # [B, N, D]


def load_vit_t4(weights: str | os.PathLike | None = None, **overrides) -> VisionTransformer:
    """Build ``repae-vit-t4`` and load a timm-format safetensors state dict strictly (frozen, eval).

    ``weights=None`` uses the shipped asset; a missing file raises :class:`MissingWeightsError`.
    """
    from repae.interop.io import read_weights

    path = Path(weights) if weights is not None else ASSET_WEIGHTS
    if not path.exists():
        raise MissingWeightsError(f"repae-vit-t4 weights not found at {path}",
                                  "train them with 'repae pretrain-encoder --out PATH' and pass --encoder-weights PATH")
    model = build_vit_t4(**overrides)
    state = read_weights(path, what="repae-vit-t4 weights file",
                         fix="train them with 'repae pretrain-encoder --out PATH' and pass --encoder-weights PATH")
    result = model.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept for clarity
        raise ConfigError(f"{path}: state dict does not match repae-vit-t4 ({result}); pass weights written by "
                          "'repae pretrain-encoder'")
    model.eval().requires_grad_(False)
    return model
