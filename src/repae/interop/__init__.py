"""Weights interop: reading published / diffusers / timm weight files and mapping their keys.

One low layer (it imports only :mod:`repae.errors`), so every package that loads weights uses it:

* :mod:`repae.interop.io` -- the one safe reader :func:`read_weights` (safetensors, else
  ``torch.load(weights_only=True)``; a pickle that names code is refused, or with ``inert=True``
  read with inert placeholders), container / prefix unwrapping, the one strict key check
  (:func:`check_keys`, :func:`check_state_dict`) and the one :class:`KeyLayoutError`;
* :mod:`repae.interop.official` -- published generator checkpoints (REPA-E, REPA, SiT, DiT,
  LightningDiT): layouts, detection, architecture inference, converters to / from ``repae`` keys;
* :mod:`repae.interop.vae` -- VAE weights: LDM / official REPA-E layout <-> diffusers, folders;
* :mod:`repae.interop.timm_vit` -- encoder checkpoints (DINOv2, DINOv1, MoCo-v3, MAE, I-JEPA, CLIP) ->
  timm ``VisionTransformer`` keys.

Building networks from converted weights stays with the networks (:mod:`repae.models.official`,
:mod:`repae.tokenizer.tokenizer`, :mod:`repae.encoders`).
"""

from repae.interop.io import (
    KeyLayoutError,
    check_keys,
    check_state_dict,
    read_weights,
    strip_wrappers,
    unwrap_entries,
)

__all__ = ["KeyLayoutError", "check_keys", "check_state_dict", "read_weights", "strip_wrappers", "unwrap_entries"]
