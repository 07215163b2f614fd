"""The encoder registry: ONE table of every frozen representation encoder (REPA-E spec 5).

Each :class:`EncoderSpec` row says everything about an encoder that is known without weights
(width, patch size, input size, pixel pipeline, token policy, timm architecture, accepted
checkpoint formats, where its weights come from). Public entry points::

    encoder_spec("dinov2-vit-b").embed_dim          # 768, no weights needed
    load_encoder("dinov2-vit-b", weights="dinov2_vitb14_pretrain.pth")   # frozen, [B, 256, 768]
    load_encoders("dinov2-vit-b,mocov3-vit-b", weights="a.pth,b.pth")    # several at once
    available_encoders()

Weights path resolution: the explicit ``weights`` argument (CLI ``--encoder-weights``), else the
entry's environment variable (``REPAE_<NAME>_WEIGHTS``, e.g. ``REPAE_DINOV2_VIT_B_WEIGHTS``), else
a packaged default (only ``repae-vit-t4``), else :class:`~repae.errors.MissingWeightsError`.
Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repae.encoders.base import CLIP_MEAN, CLIP_STD, PixelPipeline, RepresentationEncoder
from repae.encoders.convnet import ConvTokenEncoder, build_cnn_p4, load_convnet_weights
from repae.encoders.spec import EncoderSpec, LoadReport
from repae.encoders.vit_timm import TimmViTEncoder, build_timm_vit, load_timm_weights
from repae.errors import ConfigError, MissingWeightsError
from repae.interop import timm_vit as ck

# ---------------------------------------------------------------------------------------------
# Input-size policies (spec 5.2): R = 224 * (res // 256) for patch-14 towers, else the image size
# ---------------------------------------------------------------------------------------------


def scaled_224(resolution: int) -> int:
    """DINOv2 / CLIP / I-JEPA: bicubic resize to ``224 * (resolution // 256)``."""
    return 224 * (resolution // 256)


def same_size(resolution: int) -> int:
    """MoCo-v3 / MAE / DINOv1 / random: the image stays at its resolution."""
    return resolution


def fixed_32(resolution: int) -> int:
    """repae-vit-t4: always 32x32 (it was trained on 32x32 Fashion-MNIST)."""
    return 32


# ---------------------------------------------------------------------------------------------
# Pixel pipelines (spec 5.2)
# ---------------------------------------------------------------------------------------------

PIX_IN_THEN_RESIZE = PixelPipeline(order="normalize_resize")  # dinov2, jepa (and no-resize families)
PIX_CLIP = PixelPipeline(mean=CLIP_MEAN, std=CLIP_STD, order="resize_normalize")
# project encoder: [-1, 1] like the VAE; resize only if needed, antialiased because it is a
# large downsampling (e.g. 256 -> 32) -- a project choice, not an upstream one.
PIX_UNIT = PixelPipeline(mean=None, std=None, order="resize_normalize", antialias=True)


# ---------------------------------------------------------------------------------------------
# Builders that are not plain "timm ViT + weights"
# ---------------------------------------------------------------------------------------------


def build_random(
    spec: EncoderSpec,
    *,
    resolution: int,
    device: str | torch.device = "cpu",
    arch_overrides: dict | None = None,
    embed_dim: int | None = None,
    patch_size: int | None = None,
    depth: int = 2,
    seed: int = 0,
) -> RepresentationEncoder:
    """A small frozen ViT with fixed-seed random weights (tests and plumbing only).

    Its features carry no semantics. The global RNG is left untouched (``fork_rng``).
    """
    dim = embed_dim or spec.embed_dim
    patch = patch_size or spec.patch_size
    heads = next(h for h in (4, 2, 1) if dim % h == 0)
    kwargs = dict(embed_dim=dim, patch_size=patch, depth=depth, num_heads=heads, mlp_ratio=2.0)
    kwargs.update(arch_overrides or {})
    spec = dataclasses.replace(spec, embed_dim=dim, patch_size=patch, timm_kwargs=kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_timm_vit(spec, resolution=resolution, device=device)


def _vit(spec: EncoderSpec, *, resolution: int, device="cpu", arch_overrides=None) -> TimmViTEncoder:
    return build_timm_vit(spec, resolution=resolution, device=device, arch_overrides=arch_overrides)


def _cnn(spec: EncoderSpec, *, resolution: int, device="cpu", arch_overrides=None) -> ConvTokenEncoder:
    model = build_cnn_p4(**(arch_overrides or {})).to(device)
    return ConvTokenEncoder(model, name=spec.name, resolution=resolution, input_resolution=spec.input_size(resolution),
                            pixels=spec.pixels)


def repae_cnn_p4_default_path() -> Path:
    """Packaged weights of the project's CNN encoder: ``<repae>/assets/repae-cnn-p4-fmnist.safetensors``."""
    from repae.utils.assets import asset

    return asset("repae-cnn-p4-fmnist.safetensors")


def repae_vit_t4_default_path() -> Path:
    """Packaged weights of the project's encoder: ``<repae>/assets/repae-vit-t4-fmnist.safetensors``."""
    from repae.utils.assets import asset

    return asset("repae-vit-t4-fmnist.safetensors")


# EXACT architecture of the project's own encoder (trained by `repae pretrain-encoder`).
REPAE_VIT_T4_KWARGS = dict(
    patch_size=4, in_chans=3, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0,
    class_token=True, global_pool="token",
)  # fmt: skip


def repae_vit_t4_model() -> nn.Module:
    """A trainable, randomly initialised repae-vit-t4 tower (timm ``VisionTransformer``, img 32).

    The pretraining code trains this module and saves ``model.state_dict()`` with
    :func:`repae.utils.io.save_safetensors` to :func:`repae_vit_t4_default_path`.
    """
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, num_classes=0, **REPAE_VIT_T4_KWARGS)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

_DINOV2_SIZES = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024), "g": ("giant", 1536)}
_MOCOV3_SIZES = {  # MoCo-v3 ViT-S uses 12 heads (not timm's 6)
    "s": ("vit_small_patch16_224", 384, {"num_heads": 12}),
    "b": ("vit_base_patch16_224", 768, {}),
    "l": ("vit_large_patch16_224", 1024, {}),
}


def _dinov2(size: str, reg: bool) -> EncoderSpec:
    width, dim = _DINOV2_SIZES[size]
    return EncoderSpec(
        name=f"dinov2-vit-{size}" + ("-reg" if reg else ""),
        family="dinov2",
        embed_dim=dim,
        patch_size=14,
        input_size=scaled_224,
        pixels=PIX_IN_THEN_RESIZE,
        builder=_vit,
        timm_arch=f"vit_{width}_patch14_{'reg4_' if reg else ''}dinov2",
        final_norm=True,  # normalised patch tokens (x_norm_patchtokens)
        resolutions=(256, 512),  # 512 is allowed for DINOv2 only (spec 5.1)
        formats=("meta .pth", "timm .pth/.safetensors", "HF folder (config.json + model.safetensors)"),
        converter=ck.convert_dinov2,
        weights_file=f"dinov2_vit{size}14{'_reg4' if reg else ''}_pretrain.pth",
    )


def _mocov3(size: str) -> EncoderSpec:
    arch, dim, extra = _MOCOV3_SIZES[size]
    return EncoderSpec(
        name=f"mocov3-vit-{size}",
        family="mocov3",
        embed_dim=dim,
        patch_size=16,
        input_size=same_size,
        pixels=PIX_IN_THEN_RESIZE,
        builder=_vit,
        timm_arch=arch,
        timm_kwargs=extra,
        final_norm=True,  # timm forward_features includes the final LayerNorm
        formats=("MoCo-v3/RCG .pth (module.base_encoder.*)", "timm .pth/.safetensors"),
        checkpoint_entries=("state_dict", "model"),
        converter=ck.convert_mocov3,
        drop_prefixes=("head.", "fc."),
        weights_file=f"mocov3_vit{size}.pth",
    )


_SPECS: tuple[EncoderSpec, ...] = (
    *(_dinov2(s, reg) for reg in (False, True) for s in "sblg"),
    EncoderSpec(
        name="dinov1-vit-b",
        family="dinov1",
        embed_dim=768,
        patch_size=16,
        input_size=same_size,
        pixels=PIX_IN_THEN_RESIZE,
        builder=_vit,
        timm_arch="vit_base_patch16_224",
        # Upstream's missing models/dinov1.py returned the CLS output; we return patch tokens
        # after the final norm so every entry has the same [B, 256, D] contract.
        final_norm=True,
        formats=("DINO .pth (backbone or full checkpoint 'teacher')", "timm .pth/.safetensors"),
        checkpoint_entries=("teacher", "state_dict", "model"),
        converter=ck.convert_dinov1,
        weights_file="dinov1_vitb.pth (dino_vitbase16_pretrain.pth)",
    ),
    *(_mocov3(s) for s in "sbl"),
    EncoderSpec(
        name="clip-vit-L",
        family="clip",
        embed_dim=1024,  # transformer width, not the 768-d projection
        patch_size=14,
        input_size=scaled_224,
        pixels=PIX_CLIP,
        builder=_vit,
        timm_arch="vit_large_patch14_clip_quickgelu_224",  # OpenAI CLIP uses QuickGELU
        final_norm=False,  # tokens straight after the transformer: no ln_post, no proj
        formats=("OpenAI CLIP .pt (TorchScript or state dict)", "timm .pth/.safetensors"),
        converter=ck.convert_clip,
        drop_prefixes=("head.", "norm."),  # ln_post and proj after timm's rename
        weights_file="ViT-L-14.pt",
    ),
    EncoderSpec(
        name="mae-vit-l",
        family="mae",
        embed_dim=1024,
        patch_size=16,
        input_size=same_size,
        pixels=PIX_IN_THEN_RESIZE,
        builder=_vit,
        timm_arch="vit_large_patch16_224",
        final_norm=False,  # tokens after the blocks, no final norm (spec 5.1)
        formats=("MAE .pth ('model' entry)", "timm .pth/.safetensors"),
        checkpoint_entries=("model", "state_dict"),
        converter=ck.convert_mae,
        drop_prefixes=("decoder", "mask_token", "norm.", "fc_norm.", "head."),
        weights_file="mae_vitl.pth (mae_pretrain_vit_large.pth)",
    ),
    EncoderSpec(
        name="jepa-vit-h",
        family="jepa",
        embed_dim=1280,
        patch_size=14,
        input_size=scaled_224,
        pixels=PIX_IN_THEN_RESIZE,
        builder=_vit,
        timm_arch="vit_huge_patch14_224",
        timm_kwargs={"class_token": False, "global_pool": ""},  # no CLS; all tokens after final LN
        final_norm=True,
        formats=("I-JEPA .pth ('encoder' entry, module.*)", "timm .pth/.safetensors"),
        checkpoint_entries=("encoder", "state_dict", "model"),
        converter=ck.convert_jepa,
        drop_prefixes=("mask_token", "head."),
        weights_file="ijepa_vith.pth (IN1K-vit.h.14-300e.pth.tar)",
    ),
    EncoderSpec(
        name="random",
        family="random",
        embed_dim=64,  # settable: "random-<D>" or load_encoder("random", embed_dim=D)
        patch_size=16,
        input_size=same_size,
        pixels=PIX_IN_THEN_RESIZE,
        builder=build_random,
        resolutions=None,
        needs_weights=False,
    ),
    EncoderSpec(
        name="repae-vit-t4",
        family="repae",
        embed_dim=192,
        patch_size=4,
        input_size=fixed_32,
        pixels=PIX_UNIT,
        builder=_vit,
        timm_arch=None,
        timm_kwargs=REPAE_VIT_T4_KWARGS,
        final_norm=True,  # forward_features output (after final norm), CLS dropped -> [B, 64, 192]
        resolutions=None,
        formats=("timm .safetensors/.pth",),
        weights_file="repae-vit-t4-fmnist.safetensors",
        default_weights=repae_vit_t4_default_path,
        missing_hint="run `repae pretrain-encoder` to create it",
    ),
    EncoderSpec(
        name="repae-cnn-p4",
        family="repae",
        embed_dim=512,
        patch_size=4,
        input_size=fixed_32,
        pixels=PIX_UNIT,
        builder=_cnn,
        resolutions=None,
        formats=("repae .safetensors (repae pretrain-encoder --architecture cnn-p4)",),
        weights_file="repae-cnn-p4-fmnist.safetensors",
        default_weights=repae_cnn_p4_default_path,
        missing_hint="run `python scripts/make_encoder_asset.py` to create it",
        loader=load_convnet_weights,
    ),
)

ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in _SPECS}
_RANDOM_WIDTH = re.compile(r"^random-(\d+)$")


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def available_encoders() -> list[str]:
    """Registry names (``random`` also accepts ``random-<D>``)."""
    return list(ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    """The registry row for ``name`` (case-insensitive); ``random-<D>`` sets the random width.

    Raises:
        ConfigError: unknown name (the message lists the choices).
    """
    key = name.strip().lower()
    by_lower = {k.lower(): v for k, v in ENCODERS.items()}
    if key in by_lower:
        return by_lower[key]
    m = _RANDOM_WIDTH.match(key)
    if m:
        return dataclasses.replace(ENCODERS["random"], name=key, embed_dim=int(m.group(1)))
    raise ConfigError(f"unknown encoder {name!r}; choose from {', '.join(available_encoders())} (or random-<D>)")


#: the weight files of an encoder's hub repository, in the order they are looked for (timm and
#: transformers repositories hold model.safetensors; older ones pytorch_model.bin)
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_weights(spec: EncoderSpec, weights: str | os.PathLike | None = None) -> Path:
    """Explicit path, else ``$REPAE_<NAME>_WEIGHTS``, else the packaged default, else raise.

    A path or variable that reads as a Hugging Face hub id (``owner/name``, no such local path) is
    looked up in the local hub cache (:mod:`repae.interop.hub`): the first of :data:`HUB_WEIGHT_FILES`
    (then ``spec.weights_file``) in the cached snapshot, ``owner/name/file`` that file
    (:func:`repae.interop.hub.resolve_weights_file`). Nothing is downloaded.

    Raises:
        MissingWeightsError: no path found, or the named file does not exist (one-line message).
    """
    candidate = weights or os.environ.get(spec.env_var) or None
    source = "--encoder-weights" if weights else spec.env_var
    if candidate is None and spec.default_weights is not None and spec.default_weights().exists():
        return spec.default_weights()
    if candidate is None:
        extra = f"{spec.missing_hint}, or " if spec.missing_hint else ""
        raise MissingWeightsError(
            f"{spec.name} weights",
            f"{extra}pass --encoder-weights /path/to/{spec.weights_file} or set {spec.env_var} "
            f"(accepted: {'; '.join(spec.formats)}); nothing is downloaded",
        )
    from repae.interop.hub import resolve_weights_file

    # e.g. timm/vit_base_patch14_dinov2.lvd142m: the local hub cache only, never downloaded
    candidate = resolve_weights_file(str(candidate), (*HUB_WEIGHT_FILES, spec.weights_file), f"{spec.name} weights")
    path = Path(candidate).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"{spec.name} weights", f"{path} (from {source}) does not exist; point {source} at an "
                                                        f"existing file ({'; '.join(spec.formats)})")
    return path


def build_encoder(
    name: str,
    *,
    resolution: int = 256,
    device: str | torch.device = "cpu",
    arch_overrides: dict | None = None,
    **options: Any,
) -> RepresentationEncoder:
    """The frozen architecture only, weights NOT loaded (random init, or ``device="meta"``).

    For shape checks (``with meta``) and tests; use :func:`load_encoder` for real use.
    """
    spec = encoder_spec(name)
    spec.check_resolution(resolution)
    enc = spec.builder(spec, resolution=resolution, device=device, arch_overrides=arch_overrides, **options)
    return enc.freeze()


def load_encoder(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    resolution: int = 256,
    device: str | torch.device = "cpu",
    arch_overrides: dict | None = None,
    **options: Any,
) -> RepresentationEncoder:
    """Build ``name`` and load its weights from a local file; returns a frozen encoder.

    Args:
        name: registry name (see :func:`available_encoders`).
        weights: local weights path (file or HF folder); default: env var / packaged default.
        resolution: training image resolution (256, or 512 for DINOv2); sets the model input size.
        device: where the encoder lives.
        arch_overrides: timm kwargs replacing the registry ones (e.g. ``{"depth": 2}`` to test a
            converter on a shallower tower with the same key layout). Leave ``None`` in real use.
        **options: builder options (``random``: ``embed_dim``, ``patch_size``, ``depth``, ``seed``).

    Raises:
        ConfigError: unknown name, unsupported resolution, or a checkpoint that does not fit.
        MissingWeightsError: no weights file could be found.
    """
    spec = encoder_spec(name)
    spec.check_resolution(resolution)
    if not spec.needs_weights:
        if weights:
            raise ConfigError(f"encoder {spec.name} takes no weights file; drop --encoder-weights for it")
        return build_encoder(name, resolution=resolution, device=device, arch_overrides=arch_overrides, **options)
    path = resolve_weights(spec, weights)
    enc = spec.builder(spec, resolution=resolution, device="meta", arch_overrides=arch_overrides, **options)
    report: LoadReport = (spec.loader or load_timm_weights)(enc, spec, str(path))
    enc.load_report = report
    return enc.to(device).freeze()


def _split(value: str | Sequence | None) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [v.strip() or None for v in str(value).split(",")]
    return [v or None for v in value]


def load_encoders(
    names: str | Sequence[str],
    *,
    weights: str | Sequence[str | None] | None = None,
    resolution: int = 256,
    device: str | torch.device = "cpu",
) -> list[RepresentationEncoder]:
    """Load several encoders, e.g. ``"dinov2-vit-b,mocov3-vit-b"`` (REPA-E ``--enc-type``).

    ``weights`` pairs with ``names`` by position (comma-separated string or list; an empty entry
    falls back to that encoder's env var).
    """
    name_list = [n for n in _split(names) if n]
    if not name_list:
        raise ConfigError("no encoder named; set e.g. align.encoders=[dinov2-vit-b]")
    weight_list = _split(weights) or [None] * len(name_list)
    if len(weight_list) != len(name_list):
        raise ConfigError(
            f"{len(name_list)} encoders but {len(weight_list)} weight paths; give one path per encoder, comma-separated"
        )
    return [
        load_encoder(n, weights=w, resolution=resolution, device=device) for n, w in zip(name_list, weight_list)
    ]
