"""Encoder checkpoints (DINOv2, DINOv1, MoCo-v3, MAE, I-JEPA, CLIP, timm) -> timm ``VisionTransformer`` keys.

Nothing here downloads. A weights path may be

* a ``.pth``/``.pt``/``.bin`` pickle (official Meta / MoCo-v3 / MAE / I-JEPA / DINO releases,
  or a timm ``state_dict``), read with :func:`repae.interop.io.read_weights` (never runs pickled code);
* a ``.safetensors`` file (timm format);
* an OpenAI CLIP TorchScript archive (``ViT-L-14.pt``);
* a Hugging Face folder holding ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

Each family has a small converter ``(state, config) -> (state, format)`` that maps its official
layout onto timm's ``VisionTransformer`` keys; timm's own ``checkpoint_filter_fn`` then does the
shared work (Meta DINOv2 register/SwiGLU names, OpenAI CLIP names, and the bicubic, antialiased
resampling of the absolute position embedding to the model grid -- REPA-E spec 5.1).
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import drop_keys, read_weights, strip_prefix, unwrap_entries

__all__ = [
    "Converter",
    "StateDict",
    "convert_clip",
    "convert_dinov1",
    "convert_dinov2",
    "convert_jepa",
    "convert_mae",
    "convert_mocov3",
    "convert_timm",
    "drop_keys",
    "hf_dinov2_to_meta",
    "read_checkpoint",
    "strip_prefix",
    "unwrap",
]

StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict, dict], "tuple[StateDict, str]"]

# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def read_checkpoint(path: str | Path) -> tuple[Any, dict]:
    """Load a local checkpoint; returns ``(object, hf_config)`` (config is ``{}`` unless HF folder).

    Raises:
        MissingWeightsError: the path does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingWeightsError(str(path), "file not found; check the path passed with --encoder-weights")
    config: dict = {}
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.exists():
            config = json.loads(cfg.read_text())
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise MissingWeightsError(str(path), "folder holds no model.safetensors or pytorch_model.bin; pass the weights "
                                      "file itself, or a Hugging Face model folder that holds one")
    if path.suffix != ".safetensors" and _is_torchscript(path):  # OpenAI CLIP release files are TorchScript
        with warnings.catch_warnings():  # a TorchScript archive holds TorchScript, not pickled Python code
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), config
    # official training checkpoints (MAE, DINO) pickle their argparse.Namespace next to the weights: allowed
    return read_weights(path, what="encoder checkpoint", fix="pass the released .pth / .safetensors file, "
                        "or a plain state dict"), config


def unwrap(obj: Any, entries: tuple[str, ...]) -> StateDict:
    """Return the state dict inside a training checkpoint (first of ``entries`` present)."""
    obj = unwrap_entries(obj, entries)
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    return dict(obj)


# ---------------------------------------------------------------------------------------------
# Family converters: official layout -> timm VisionTransformer layout (before checkpoint_filter_fn)
# ---------------------------------------------------------------------------------------------

# Hugging Face Dinov2Model -> Meta DINOv2 names (the Meta layout is then handled by timm's filter).
_HF_DINOV2_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
    (r"^layernorm\.", "norm."),
)
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def hf_dinov2_to_meta(state: StateDict, config: dict) -> StateDict:
    """Hugging Face ``Dinov2Model`` (or ``Dinov2WithRegistersModel``) keys -> Meta DINOv2 keys.

    Separate q/k/v projections are concatenated into the fused ``qkv`` of the Meta/timm layout.
    """
    state, _ = strip_prefix(state, ("dinov2.",))
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _HF_DINOV2_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # unknown keys surface in the strict load
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    hidden = config.get("hidden_size")
    if hidden is not None and "cls_token" in out and out["cls_token"].shape[-1] != hidden:
        raise ConfigError(f"config.json says hidden_size={hidden} but the weights have {out['cls_token'].shape[-1]}; "
                          "pass a folder whose config.json and weights come from the same model")
    return out


def convert_dinov2(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """DINOv2: Meta ``.pth`` (has ``mask_token``), HF folder, or timm state dict."""
    if any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in state):
        return hf_dinov2_to_meta(state, config), "hf"
    return state, "meta" if "mask_token" in state else "timm"


# MoCo-v3 checkpoints misname two sub-modules in blocks 13/14 (spec 5.1); repaired per key part.
_MOCOV3_REPAIRS = {"norm13": "norm1", "fc13": "fc1", "norm14": "norm2", "fc14": "fc2"}


def convert_mocov3(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """MoCo-v3 (RCG release): keep ``module.base_encoder.*``, strip it, repair norm13/fc13/..."""
    state, official = strip_prefix(state, ("module.base_encoder.", "base_encoder."))
    state = {".".join(_MOCOV3_REPAIRS.get(p, p) for p in k.split(".")): v for k, v in state.items()}
    return state, "mocov3" if official else "timm"


def convert_mae(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """MAE: the ``model`` entry (already unwrapped); decoder and mask token are dropped by the spec."""
    official = any(k.startswith(("decoder", "mask_token")) for k in state)
    return state, "mae" if official else "timm"


def convert_jepa(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """I-JEPA: the ``encoder`` entry with the 7-character ``module.`` prefix stripped (spec 5.1)."""
    state, official = strip_prefix(state, ("module.",))
    return state, "ijepa" if official else "timm"


def convert_dinov1(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """DINO v1: the official backbone file, or a training checkpoint's ``teacher`` backbone."""
    state, official = strip_prefix(state, ("module.backbone.", "backbone."))
    return state, "dino" if official else "timm"


def convert_clip(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """OpenAI CLIP: full model (``visual.*``) or a bare visual tower; timm's filter renames them."""
    if "class_embedding" in state:  # bare ``model.visual.state_dict()``
        return {f"visual.{k}": v for k, v in state.items()}, "openai"
    if "visual.class_embedding" in state or "module.visual.class_embedding" in state:
        return state, "openai"
    return state, "timm"


def convert_timm(state: StateDict, config: dict) -> tuple[StateDict, str]:
    """Already timm keys (the project's own encoders)."""
    return state, "timm"
