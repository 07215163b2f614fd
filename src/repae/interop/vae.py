"""VAE weights: the LDM / official REPA-E layout <-> diffusers' ``AutoencoderKL`` layout, and reading them.

LDM layout (CompVis ``AutoencoderKL``, SD ``first_stage_model``, REPA-E ``models/autoencoder.py``)::

    encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}   encoder.down.{i}.attn.{j}.{norm,q,k,v,proj_out}
    encoder.down.{i}.downsample.conv     encoder.mid.{block_1,attn_1,block_2}    encoder.{norm_out,conv_out}
    decoder.up.{i}.block.{j}...          decoder.up.{i}.upsample.conv            quant_conv / post_quant_conv

diffusers layout::

    encoder.down_blocks.{i}.resnets.{j}.{norm1,conv1,norm2,conv2,conv_shortcut}
    encoder.down_blocks.{i}.attentions.{j}.{group_norm,to_q,to_k,to_v,to_out.0}
    encoder.down_blocks.{i}.downsamplers.0.conv   encoder.mid_block.{resnets.0,attentions.0,resnets.1}
    decoder.up_blocks.{L-1-i}...  (LDM numbers decoder levels by resolution, diffusers from the bottom up)
    decoder.up_blocks.{k}.upsamplers.0.conv       {encoder,decoder}.{conv_norm_out,conv_out}

Attention q/k/v/proj_out are 1x1 convs [C, C, 1, 1] in LDM and Linear [C, C] in diffusers.

The full key map is generated from the VAE geometry (a :class:`~repae.tokenizer.vae.VAEConfig`, or
anything with the same fields, :class:`VAEGeometry`) by walking the architecture with small
rename tables, so a conversion is exact and strict: any key outside the map, or any map entry missing
from the input, raises :class:`~repae.interop.io.KeyLayoutError`.

Files: :func:`read_vae_file` reads a diffusers folder (``diffusion_pytorch_model.safetensors`` /
``.bin``, or a pipeline folder's ``vae/``) or a single file through
:func:`repae.interop.io.read_weights`; :func:`extract_vae_state_dict` unwraps a training
checkpoint (``vae`` / ``state_dict`` / ``model`` entries, ``first_stage_model.`` / ``vae.`` /
``module.`` prefixes, LDM ``loss.*`` dropped); :func:`to_diffusers` does both conversions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Protocol

import torch

from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import KeyLayoutError, check_keys, read_weights, unwrap_entries

__all__ = [
    "WEIGHTS_NAME",
    "WEIGHTS_NAME_BIN",
    "VAEGeometry",
    "detect_layout",
    "diffusers_to_ldm",
    "extract_vae_state_dict",
    "key_map",
    "missing_vae_weights",
    "ldm_to_diffusers",
    "read_vae_file",
    "rename_legacy_diffusers",
    "to_diffusers",
]

#: File names inside a diffusers ``AutoencoderKL`` folder.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAME_BIN = "diffusion_pytorch_model.bin"
# Containers a VAE state dict may be nested in, tried in this order ("vae" first: a REPA-E
# training checkpoint also has a "model" entry that is the SiT).
NESTING_KEYS = ("vae", "state_dict", "model", "module")
# Prefixes of VAE keys inside bigger checkpoints (SD: first_stage_model.; DDP: module.).
PREFIXES = ("first_stage_model.", "vae.", "module.")
# Keys that belong to the training loss of an LDM checkpoint (LPIPS, discriminator), not the VAE.
NON_VAE_PREFIXES = ("loss.",)


class VAEGeometry(Protocol):
    """What the key map needs of a VAE config (:class:`repae.tokenizer.vae.VAEConfig` has it)."""

    block_out_channels: tuple[int, ...]
    attention_levels: tuple[int, ...]
    layers_per_block: int

    @property
    def num_levels(self) -> int: ...


# ---------------------------------------------------------------------------------------------
# Rename tables (data, not code): LDM sub-name -> diffusers sub-name
# ---------------------------------------------------------------------------------------------
RESNET_PARTS: dict[str, str] = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
RESNET_SHORTCUT: dict[str, str] = {"nin_shortcut": "conv_shortcut"}
ATTN_PARTS: dict[str, str] = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
ATTN_LINEAR_PARTS = frozenset({"q", "k", "v", "proj_out"})  # 1x1 conv <-> Linear weights
TOP_LEVEL: dict[str, str] = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.norm_out": "encoder.conv_norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.norm_out": "decoder.conv_norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
# mid block, per side: LDM name -> (diffusers name, kind)
MID_PARTS: dict[str, tuple[str, str]] = {
    "mid.block_1": ("mid_block.resnets.0", "resnet"),
    "mid.attn_1": ("mid_block.attentions.0", "attn"),
    "mid.block_2": ("mid_block.resnets.1", "resnet"),
}
# Pre-0.14 diffusers attention names, renamed on load (diffusers does the same internally).
LEGACY_DIFFUSERS_ATTN: dict[str, str] = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")

PARAMS = ("weight", "bias")


def _resnet(ldm: str, dif: str, has_shortcut: bool) -> list[tuple[str, str, bool]]:
    parts = dict(RESNET_PARTS, **(RESNET_SHORTCUT if has_shortcut else {}))
    return [(f"{ldm}.{a}.{p}", f"{dif}.{b}.{p}", False) for a, b in parts.items() for p in PARAMS]


def _attn(ldm: str, dif: str) -> list[tuple[str, str, bool]]:
    return [
        (f"{ldm}.{a}.{p}", f"{dif}.{b}.{p}", a in ATTN_LINEAR_PARTS and p == "weight")
        for a, b in ATTN_PARTS.items()
        for p in PARAMS
    ]


def key_map(config: VAEGeometry) -> list[tuple[str, str, bool]]:
    """Every parameter of the architecture as ``(ldm_key, diffusers_key, is_attn_linear_weight)``.

    A geometry with ``use_quant_conv`` / ``use_post_quant_conv`` False (FLUX.1, SD3: no 1x1 convs around
    the latent) has no ``quant_conv`` / ``post_quant_conv`` entries; without those attributes both exist.
    """
    ch = config.block_out_channels
    n = config.num_levels
    attn = set(config.attention_levels)
    absent = {name for name, flag in (("quant_conv", "use_quant_conv"), ("post_quant_conv", "use_post_quant_conv"))
              if not getattr(config, flag, True)}
    out: list[tuple[str, str, bool]] = []
    for a, b in TOP_LEVEL.items():
        if a not in absent:
            out += [(f"{a}.{p}", f"{b}.{p}", False) for p in PARAMS]
    kinds = {"resnet": lambda a, b: _resnet(a, b, False), "attn": _attn}
    for side in ("encoder", "decoder"):
        for a, (b, kind) in MID_PARTS.items():
            out += kinds[kind](f"{side}.{a}", f"{side}.{b}")
    # encoder levels: layers_per_block resnets, optional attention after each, downsample except last
    for i in range(n):
        c_in = ch[max(i - 1, 0)]
        for j in range(config.layers_per_block):
            out += _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}",
                           has_shortcut=(c_in if j == 0 else ch[i]) != ch[i])
            if i in attn:
                out += _attn(f"encoder.down.{i}.attn.{j}", f"encoder.down_blocks.{i}.attentions.{j}")
        if i < n - 1:
            out += [(f"encoder.down.{i}.downsample.conv.{p}", f"encoder.down_blocks.{i}.downsamplers.0.conv.{p}", False)
                    for p in PARAMS]
    # decoder levels (LDM index i = resolution level; diffusers index k = n-1-i): one more resnet
    for i in range(n):
        k = n - 1 - i
        c_in = ch[min(i + 1, n - 1)]
        for j in range(config.layers_per_block + 1):
            out += _resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{k}.resnets.{j}",
                           has_shortcut=(c_in if j == 0 else ch[i]) != ch[i])
            if i in attn:
                out += _attn(f"decoder.up.{i}.attn.{j}", f"decoder.up_blocks.{k}.attentions.{j}")
        if i > 0:
            out += [(f"decoder.up.{i}.upsample.conv.{p}", f"decoder.up_blocks.{k}.upsamplers.0.conv.{p}", False)
                    for p in PARAMS]
    return out


def detect_layout(state_dict: dict) -> str:
    """``"diffusers"`` or ``"ldm"`` from the key names; KeyLayoutError if neither."""
    keys = list(state_dict)
    if any(".down_blocks." in k or ".mid_block." in k or ".up_blocks." in k for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.down.", "encoder.mid.", "decoder.up.", "decoder.mid.")) for k in keys):
        return "ldm"
    example = keys[0] if keys else "<empty>"
    raise KeyLayoutError(
        f"not a VAE state dict ({len(keys)} keys, e.g. {example!r}); expected LDM keys like "
        "'encoder.down.0.block.0.norm1.weight' or diffusers keys like 'encoder.down_blocks.0.resnets.0.norm1.weight'"
    )


def rename_legacy_diffusers(state_dict: dict) -> dict:
    """Map old diffusers attention names (query/key/value/proj_attn) to the current ones."""
    return {_LEGACY_RE.sub(lambda m: f"{m.group(1)}{LEGACY_DIFFUSERS_ATTN[m.group(2)]}.", k): v
            for k, v in state_dict.items()}


def _convert(state_dict: dict, pairs: list[tuple[str, str, bool]], reshape) -> dict:
    check_keys(state_dict, [a for a, _, _ in pairs], what="VAE weights",
               hint="; these weights are for another VAE: pass the matching --vae-preset / tokenizer.preset")
    return {b: (reshape(state_dict[a]) if lin else state_dict[a]) for a, b, lin in pairs}


def _conv_to_linear(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1]) if w.dim() == 4 else w  # [C, C, 1, 1] -> [C, C]


def _linear_to_conv(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1], 1, 1) if w.dim() == 2 else w  # [C, C] -> [C, C, 1, 1]


def ldm_to_diffusers(state_dict: dict, config: VAEGeometry) -> dict:
    """LDM / official REPA-E keys -> diffusers ``AutoencoderKL`` keys (strict, same tensors)."""
    return _convert(state_dict, key_map(config), _conv_to_linear)


def diffusers_to_ldm(state_dict: dict, config: VAEGeometry) -> dict:
    """diffusers ``AutoencoderKL`` keys -> LDM / official REPA-E keys (strict, same tensors)."""
    pairs = [(b, a, lin) for a, b, lin in key_map(config)]
    return _convert(rename_legacy_diffusers(state_dict), pairs, _linear_to_conv)


# ---------------------------------------------------------------------------------------------
# Files and containers
# ---------------------------------------------------------------------------------------------


def missing_vae_weights(path) -> MissingWeightsError:
    """The one-line error for VAE weights that are not there (a hub id's names the files to place in the cache)."""
    from repae.interop import hub

    repo = hub.repo_id(str(path))
    if repo is not None:
        return MissingWeightsError(f"VAE weights not found at {path}", hub.missing_hint(repo))
    return MissingWeightsError(
        f"VAE weights not found at {path}",
        "pass a local diffusers folder, .safetensors, .pt or .ckpt file (weights are never downloaded)",
    )


def read_vae_file(path: str | os.PathLike) -> Any:
    """Read a raw (not yet converted) VAE checkpoint from a file or a diffusers folder (never runs pickled code)."""
    p = Path(path)
    if p.is_dir():
        for base in (p, p / "vae"):  # a VAE folder, or a whole diffusers pipeline folder
            for name in (WEIGHTS_NAME, WEIGHTS_NAME_BIN):
                if (base / name).is_file():
                    return read_vae_file(base / name)
        raise missing_vae_weights(f"{p} (no {WEIGHTS_NAME} or {WEIGHTS_NAME_BIN} inside)")
    if not p.is_file():
        raise missing_vae_weights(p)
    return read_weights(p, what="VAE weights file", fix="the file is damaged or not a state dict: export or copy it "
                        "again (repae export-vae RUN --out DIR, or a diffusers folder)")


def extract_vae_state_dict(obj: Any) -> tuple[dict, int]:
    """Unwrap nesting and prefixes; return (VAE tensors, number of non-VAE tensors dropped)."""
    obj = unwrap_entries(obj, NESTING_KEYS, levels=4)  # at most a few levels of nesting
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    kept = {k: v for k, v in sd.items() if not k.startswith(NON_VAE_PREFIXES)}
    return kept, len(sd) - len(kept)


def to_diffusers(obj: Any, config: VAEGeometry | None) -> tuple[dict, str, int]:
    """A checkpoint object (any layout, any nesting) -> ``(diffusers state dict, layout, non-VAE tensors dropped)``.

    The key set is checked against the LDM map for ``ldm`` checkpoints; the caller checks the result
    against its network (:func:`repae.interop.io.check_state_dict`). ``config`` None: an architecture
    with no LDM layout (FLUX.2, Qwen-Image), so an ``ldm`` checkpoint is a KeyLayoutError.
    """
    sd, dropped = extract_vae_state_dict(obj)
    layout = detect_layout(sd)
    if layout == "ldm" and config is None:
        raise KeyLayoutError("VAE weights in the LDM layout (encoder.down.*) cannot load into this architecture, "
                             "which has no LDM layout: give its diffusers folder or a diffusers-layout file")
    sd = ldm_to_diffusers(sd, config) if layout == "ldm" else rename_legacy_diffusers(sd)
    return sd, layout, dropped
