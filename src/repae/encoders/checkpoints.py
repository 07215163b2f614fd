"""Moved to :mod:`repae.interop.timm_vit` (encoder checkpoints -> timm ViT keys); re-exported here so that
``repae.encoders.checkpoints`` imports keep working."""

from repae.interop.timm_vit import (
    Converter,
    StateDict,
    convert_clip,
    convert_dinov1,
    convert_dinov2,
    convert_jepa,
    convert_mae,
    convert_mocov3,
    convert_timm,
    drop_keys,
    hf_dinov2_to_meta,
    read_checkpoint,
    strip_prefix,
    unwrap,
)

__all__ = [
    "Converter", "StateDict", "convert_clip", "convert_dinov1", "convert_dinov2", "convert_jepa", "convert_mae",
    "convert_mocov3", "convert_timm", "drop_keys", "hf_dinov2_to_meta", "read_checkpoint", "strip_prefix", "unwrap",
]
