"""Moved to :mod:`repae.interop.vae` (LDM / official REPA-E <-> diffusers VAE layouts); re-exported here
so that ``repae.tokenizer.convert`` imports keep working. :class:`KeyLayoutError` and :func:`check_keys`
are :mod:`repae.interop.io`'s (one class, one check)."""

from repae.interop.io import KeyLayoutError, check_keys
from repae.interop.vae import (
    ATTN_LINEAR_PARTS,
    ATTN_PARTS,
    LEGACY_DIFFUSERS_ATTN,
    MID_PARTS,
    PARAMS,
    RESNET_PARTS,
    RESNET_SHORTCUT,
    TOP_LEVEL,
    detect_layout,
    diffusers_to_ldm,
    key_map,
    ldm_to_diffusers,
    rename_legacy_diffusers,
)

__all__ = [
    "ATTN_LINEAR_PARTS", "ATTN_PARTS", "LEGACY_DIFFUSERS_ATTN", "MID_PARTS", "PARAMS", "RESNET_PARTS",
    "RESNET_SHORTCUT", "TOP_LEVEL", "KeyLayoutError", "check_keys", "detect_layout", "diffusers_to_ldm", "key_map",
    "ldm_to_diffusers", "rename_legacy_diffusers",
]
