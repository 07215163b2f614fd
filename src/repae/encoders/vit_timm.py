"""ViT encoders built with timm's ``VisionTransformer`` and loaded from local files.

Every registry family in REPA-E spec 5.1 (DINOv2, DINOv1, MoCo-v3, CLIP, MAE, I-JEPA) is a plain
ViT that timm builds exactly with the right keyword arguments, so we reuse timm's well-kept
implementation instead of vendoring five model files. Token policy per family:

* prefix tokens (CLS, DINOv2 registers) are always dropped -> patch tokens only;
* the final LayerNorm is applied or not per family (``final_norm`` in the spec table): DINOv2,
  DINOv1, MoCo-v3, I-JEPA and repae-vit-t4 use it; MAE ("tokens after the blocks") and CLIP
  ("tokens after the transformer, no ln_post") do not, so their model is built without it.

Weights: the model is built on the ``meta`` device (no random init of big towers), the
converted state dict is loaded with ``strict=True, assign=True`` and cast to float32.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from repae.encoders.base import RepresentationEncoder
from repae.encoders.spec import EncoderSpec, LoadReport
from repae.interop.io import check_state_dict
from repae.interop.timm_vit import drop_keys, read_checkpoint, unwrap


class TimmViTEncoder(RepresentationEncoder):
    """A frozen timm ``VisionTransformer`` returning patch tokens (prefix tokens dropped)."""

    def __init__(self, model: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.num_prefix_tokens = int(model.num_prefix_tokens)  # CLS (+ registers); 0 for I-JEPA
        self.load_report: LoadReport | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, R, R]`` -> ``[B, (R / p)^2, D]`` (final norm per family, prefix dropped)."""
        tokens = self.model.forward_features(x)  # [B, P + N, D]
        return tokens[:, self.num_prefix_tokens :]  # [B, N, D]


def build_timm_vit(
    spec: EncoderSpec,
    *,
    resolution: int,
    arch_overrides: dict | None = None,
    device: str | torch.device = "cpu",
) -> TimmViTEncoder:
    """Build the family's timm ViT for ``resolution`` (weights uninitialised on ``meta``).

    ``arch_overrides`` (e.g. ``{"depth": 2}``) shrink the tower while keeping the key layout --
    for converter tests only.
    """
    input_res = spec.input_size(resolution)
    kwargs = dict(spec.timm_kwargs)
    kwargs.update(arch_overrides or {})
    kwargs.update(img_size=input_res, num_classes=0, final_norm=spec.final_norm)
    if torch.device(device).type == "meta":
        kwargs["weight_init"] = "skip"  # nothing to initialise: weights are assigned on load
    with torch.device(device):
        if spec.timm_arch is None:  # exact class + kwargs from the registry row
            model = VisionTransformer(**kwargs)
        else:
            model = timm.create_model(spec.timm_arch, pretrained=False, **kwargs)
    enc = TimmViTEncoder(
        model,
        name=spec.name,
        embed_dim=model.embed_dim,  # == spec.embed_dim unless arch_overrides change the width
        patch_size=spec.patch_size,
        resolution=resolution,
        input_resolution=input_res,
        pixels=spec.pixels,
    )
    if model.embed_dim != spec.embed_dim and not arch_overrides:
        raise AssertionError(f"registry says {spec.embed_dim} for {spec.name}, timm built {model.embed_dim}")
    return enc


def load_timm_weights(enc: TimmViTEncoder, spec: EncoderSpec, path: str) -> LoadReport:
    """Read ``path``, convert it to timm keys, resample pos-embed, and load it strictly.

    Order: unwrap the training-checkpoint entry -> family converter -> drop unused keys ->
    timm ``checkpoint_filter_fn`` (Meta/OpenAI renames, pos-embed resample) -> drop again (keys the
    filter produced, e.g. CLIP ``ln_post``) -> ``load_state_dict(strict=True, assign=True)``.
    """
    obj, config = read_checkpoint(path)
    state = unwrap(obj, spec.checkpoint_entries)
    state, fmt = spec.converter(state, config)
    state, dropped1 = drop_keys(state, spec.drop_prefixes)
    state = checkpoint_filter_fn(state, enc.model)
    state, dropped2 = drop_keys(state, spec.drop_prefixes)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    check_state_dict(state, enc.model.state_dict(), what=f"{path} does not fit {spec.name} ({fmt} format guessed)",
                     hint=f"; pass weights for {spec.name} or pick the matching encoder")
    enc.model.load_state_dict(state, strict=True, assign=True)
    return LoadReport(path=str(path), format=fmt, num_tensors=len(state), dropped=tuple(dropped1 + dropped2))
