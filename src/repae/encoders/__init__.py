"""Frozen representation encoders: the REPA alignment targets (REPA-E spec section 5).

One registry table (:mod:`repae.encoders.registry`) covers DINOv2 (+ registers), DINOv1,
MoCo-v3, CLIP ViT-L/14, MAE ViT-L, I-JEPA ViT-H, a seeded ``random`` ViT for tests, and the
project's own ``repae-vit-t4``. Weights always come from local files::

    from repae.encoders import load_encoder, encoder_spec
    encoder_spec("dinov2-vit-b").embed_dim            # 768, without weights
    enc = load_encoder("dinov2-vit-b", weights="dinov2_vitb14_pretrain.pth")
    tokens = enc(images_uint8)                        # [B, 256, 768]
"""

from repae.encoders.base import PixelPipeline, RepresentationEncoder, preprocess_pixels
from repae.encoders.registry import (
    ENCODERS,
    available_encoders,
    build_encoder,
    encoder_spec,
    load_encoder,
    load_encoders,
    repae_vit_t4_default_path,
    repae_vit_t4_model,
    resolve_weights,
)
from repae.encoders.spec import EncoderSpec, LoadReport
from repae.encoders.vit_timm import TimmViTEncoder

load = load_encoder  # short alias: repae.encoders.load("dinov2-vit-b", weights=...)

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "LoadReport",
    "PixelPipeline",
    "RepresentationEncoder",
    "TimmViTEncoder",
    "available_encoders",
    "build_encoder",
    "encoder_spec",
    "load",
    "load_encoder",
    "load_encoders",
    "preprocess_pixels",
    "repae_vit_t4_default_path",
    "repae_vit_t4_model",
    "resolve_weights",
]
