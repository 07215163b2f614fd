"""Published generator checkpoints: the key layouts of SiT, REPA, REPA-E, DiT, LightningDiT and their converters.

Layouts (``LAYOUTS``), as saved by the public code (checked against the public source files named
in ``docs/official-checkpoints.md``). In every layout the network parameters already carry
``repae``'s names (``x_embedder.proj``, ``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``,
``pos_embed``, ``blocks.{i}.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2,adaLN_modulation.1}``,
``final_layer.{linear,adaLN_modulation.1}``, ``projectors.{k}.{0,2,4}``); what differs is listed:

``repa-e``   End2End-Diffusion/REPA-E ``train_repae.py`` / ``train_ldm_only.py``: ``{model, ema, vae?, ...}``;
             the SiT state dict also holds the latent BatchNorm ``bn.{running_mean, running_var,
             num_batches_tracked}`` (here: the tokenizer's normaliser, returned in ``extras``).
             Time: t = 0 data, v = eps - x (= ``repae``).
``repa``     sihyun-yu/REPA ``train.py``: ``{model, ema, opt, args, steps}``, SiT with projectors, no BN;
             old checkpoints name the blocks after ``encoder_depth`` ``decoder_blocks.{j}``
             (= ``blocks.{j + encoder_depth}``, REPA ``utils.load_legacy_checkpoints``). Time as ``repae``.
``sit``      willisma/SiT ``SiT-XL-2-256x256.pt``: a bare EMA state dict, no projectors, ``learn_sigma``:
             ``final_layer.linear`` has ``p*p*2C`` rows of which the forward keeps channels ``< C``
             (the others are returned in ``extras`` and restored on export). Time: SiT ``transport``,
             t = 0 noise, v = x - eps.
``dit``      facebookresearch/DiT ``DiT-XL-2-256x256.pt``: bare EMA state dict; ``2C`` outputs (eps, variance)
             as :class:`~repae.models.dit.DiT`. Time: DDPM integer timesteps (= ``repae`` DiT).
``lightningdit`` hustvl/LightningDiT: ``{model, ema, opt, config}`` (the sampler takes ``ema``) or bare;
             ``blocks.{i}.norm{1,2}.weight`` (RMSNorm), ``blocks.{i}.mlp.{w12,w3}`` (SwiGLU),
             ``feat_rope.freqs_{cos,sin}``, ``final_layer.norm_final.weight``; optional ``learn_sigma`` as
             ``sit``. Time: SiT ``transport`` (t = 0 noise, v = x - eps).

Here: naming (:func:`resolve_official_file`: a local path, or a hub id read from the local Hugging Face
cache), reading (:func:`load_official_file`, through :func:`repae.interop.io.read_weights` with inert
placeholders, so no code from a checkpoint ever runs), unwrapping (:func:`select_state_dict`: ``module.`` /
``_orig_mod.`` prefixes, ``ema`` / ``model`` entries), :func:`detect_layout`, :func:`infer_architecture`
and the pure key/tensor maps :func:`official_to_repae` / :func:`repae_to_official`. Building a
``repae`` network from them (strictly: the key set must equal the network's) is
:mod:`repae.models.official`; the time conventions are :mod:`repae.models.time_convention`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from repae.errors import ConfigError
from repae.interop.io import KeyLayoutError, first_keys, is_safetensors, is_state_dict, read_weights, strip_wrappers

__all__ = [
    "BN_KEYS",
    "CHECKPOINT_HUB_FILES",
    "ENTRY_NAMES",
    "LAYOUTS",
    "SD_LATENT_SCALE",
    "SIGMA_KEYS",
    "Layout",
    "architecture_key",
    "detect_layout",
    "infer_architecture",
    "load_official_file",
    "official_to_repae",
    "repae_to_official",
    "resolve_official_file",
    "select_state_dict",
]


@dataclass(frozen=True)
class Layout:
    """One published checkpoint layout."""

    family: str  # "SiT" | "DiT" | "LightningDiT": the repae preset family it loads into
    time: str  # "repae" (t=0 data, v = eps - x), "transport" (t=0 noise, v = x - eps) or "ddpm"
    source: str  # where the layout comes from (public code)


LAYOUTS: dict[str, Layout] = {
    "repa-e": Layout("SiT", "repae", "End2End-Diffusion/REPA-E train_repae.py, models/sit.py, generate.py"),
    "repa": Layout("SiT", "repae", "sihyun-yu/REPA train.py, models/sit.py, generate.py, utils.py"),
    "sit": Layout("SiT", "transport", "willisma/SiT models.py, transport/transport.py, sample.py"),
    "dit": Layout("DiT", "ddpm", "facebookresearch/DiT models.py, sample.py, diffusion/"),
    "lightningdit": Layout("LightningDiT", "transport", "hustvl/LightningDiT models/lightningdit.py, inference.py"),
}

#: Entries of a training checkpoint that hold a network state dict, in the order they are tried.
ENTRY_NAMES = ("ema", "model", "state_dict", "module")
BN_KEYS = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
SIGMA_KEYS = ("final_layer.linear.weight", "final_layer.linear.bias")
#: The files a hub repository given as a published checkpoint may hold, in the order they are tried (the
#: REPA-E generator repositories keep theirs in ``checkpoints/``; any other file: ``owner/name/path/in/repo.pt``).
CHECKPOINT_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "last.pt", "checkpoints/0400000.pt",
                        "checkpoints/4000000.pt")
#: SD-VAE latent scale used by REPA, SiT and DiT (``x * 0.18215``, the same for every channel).
SD_LATENT_SCALE = 0.18215


# ----------------------------------------------------------------------------------------------
# Reading and unwrapping
# ----------------------------------------------------------------------------------------------


def resolve_official_file(path: str | os.PathLike) -> str | os.PathLike:
    """``path`` unchanged, unless it is a Hugging Face hub id with no such local path: ``owner/name`` -> the
    first of :data:`CHECKPOINT_HUB_FILES` in its cached snapshot, ``owner/name/path/in/repo.pt`` -> that file
    (:func:`repae.interop.hub.resolve_weights_file`; never downloaded)."""
    from repae.interop.hub import resolve_weights_file

    return resolve_weights_file(path, CHECKPOINT_HUB_FILES, "published checkpoint")


def load_official_file(path: str | os.PathLike) -> Any:
    """Read a published checkpoint (``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` / ``.safetensors``) on the CPU.

    :func:`~repae.interop.io.read_weights` with ``inert=True``: only tensors and plain containers are
    rebuilt; objects of other types (``argparse.Namespace`` args are kept; e.g. an OmegaConf config, or
    anything malicious) are replaced by inert placeholders whose constructors are never called, so
    loading never runs code from the file. Zip-format files are memory-mapped. A flat safetensors file
    whose keys start with ``ema.`` / ``model.`` is regrouped into those entries.
    """
    obj = read_weights(path, what="checkpoint", inert=True, mmap=True,
                       missing_hint="pass a local .pt / .safetensors file (weights are never downloaded)",
                       fix="expected a state dict or a {model, ema, ...} training checkpoint")
    return _regroup(obj) if is_safetensors(Path(path).expanduser()) else obj


def _regroup(flat: dict[str, Tensor]) -> dict:
    """``{"ema.x": ..., "model.x": ...}`` -> ``{"ema": {"x": ...}, "model": {...}}`` when every key has such a head."""
    heads = {k.split(".", 1)[0] for k in flat}
    if not heads or not heads <= set(ENTRY_NAMES) | {"vae"} or any("." not in k for k in flat):
        return flat
    grouped: dict[str, dict[str, Tensor]] = {}
    for k, v in flat.items():
        head, rest = k.split(".", 1)
        grouped.setdefault(head, {})[rest] = v
    return grouped


def select_state_dict(obj: Any, *, ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """The network state dict inside a checkpoint and the entry it came from.

    ``ema=True`` picks ``ema`` (what every official sampler loads) and falls back to ``model``;
    ``ema=False`` picks ``model``. A bare state dict (SiT, DiT releases) is returned as ``"bare"``.
    Wrapper prefixes are stripped.
    """
    if is_state_dict(obj):
        return strip_wrappers(obj), "bare"
    if not isinstance(obj, Mapping):
        raise ConfigError(f"checkpoint holds a {type(obj).__name__}, not a state dict or a {{model, ema}} dict; "
                          "save the network's state_dict() (or {'ema': ..., 'model': ...} of state dicts)")
    order = ("ema", "model", "state_dict", "module") if ema else ("model", "state_dict", "module", "ema")
    for name in order:
        inner = obj.get(name)
        if is_state_dict(inner):
            return strip_wrappers(inner), name
        if isinstance(inner, Mapping) and inner and not is_state_dict(inner):
            try:  # one more level (e.g. {"state_dict": {"ema": ...}})
                return select_state_dict(inner, ema=ema)
            except ConfigError:
                continue
    entries = sorted(str(k) for k in obj)
    raise ConfigError(f"no network weights in this checkpoint (entries: {', '.join(entries[:8])}); expected a "
                      "state dict or one of the entries 'ema', 'model'")


# ----------------------------------------------------------------------------------------------
# Layout detection and architecture inference
# ----------------------------------------------------------------------------------------------


def _block_ids(sd: Mapping[str, Tensor], prefix: str = "blocks.") -> list[int]:
    ids = {int(m.group(1)) for k in sd if (m := re.match(rf"^{re.escape(prefix)}(\d+)\.", k))}
    return sorted(ids)


def _geometry(sd: Mapping[str, Tensor]) -> tuple[int, int, int]:
    """(hidden D, latent channels C, patch p) from the patch-embedding conv ``[D, C, p, p]``."""
    w = sd.get("x_embedder.proj.weight")
    if w is None or w.dim() != 4:
        raise KeyLayoutError(f"not a SiT/DiT/LightningDiT state dict: no 4-D 'x_embedder.proj.weight' "
                             f"({len(sd)} keys, e.g. {first_keys(list(sd), 3)}); pass a generator checkpoint "
                             "(VAE weights go to --vae)")
    return int(w.shape[0]), int(w.shape[1]), int(w.shape[2])


def detect_layout(state_dict: Mapping[str, Tensor], family: str | None = None) -> str:
    """The layout name (a key of :data:`LAYOUTS`) of an unwrapped state dict.

    ``family`` (``"SiT"``, ``"DiT"``, ``"LightningDiT"``, from the preset) decides between layouts that
    have the same keys: a bare ``2C``-output SiT is ``sit`` for the SiT family and ``dit`` for DiT.
    """
    keys = set(state_dict)
    D, C, p = _geometry(state_dict)
    lightning = any(re.match(r"^blocks\.\d+\.(mlp\.w12|norm1)\.weight$", k) for k in keys) or \
        any(k.startswith("feat_rope.") for k in keys) or "final_layer.norm_final.weight" in keys
    if lightning:
        found = "lightningdit"
    elif family == "DiT":
        found = "dit"
    elif "bn.running_mean" in keys:
        found = "repa-e"
    elif any(k.startswith(("projectors.", "decoder_blocks.")) for k in keys):
        found = "repa"
    else:
        rows = state_dict.get("final_layer.linear.weight")
        two_c = rows is not None and int(rows.shape[0]) == p * p * 2 * C
        found = "sit" if two_c else "repa"  # a C-output SiT without projectors: REPA trained with --enc-type None
    if family is not None and LAYOUTS[found].family != family:
        raise KeyLayoutError(f"these weights are a {LAYOUTS[found].family} checkpoint ({found} layout), not a "
                             f"{family}: pass a --model {LAYOUTS[found].family}-... preset")
    return found


def infer_architecture(state_dict: Mapping[str, Tensor], layout: str) -> dict[str, Any]:
    """What the weights say about the network (repae names): depth, hidden, patch, channels, sizes, switches."""
    sd = state_dict
    D, C, p = _geometry(sd)
    pos = sd.get("pos_embed")
    if pos is None:
        raise KeyLayoutError("missing key 'pos_embed' (the sin-cos table every official SiT/DiT saves); pass an "
                             "unmodified official or repae-exported checkpoint")
    T = int(pos.shape[-2])
    g = math.isqrt(T)
    if g * g != T:
        raise KeyLayoutError(f"'pos_embed' has {T} tokens, not a square grid; only square latents are supported: "
                             "pass a checkpoint trained on square images")
    table = sd.get("y_embedder.embedding_table.weight")
    if table is None:
        raise KeyLayoutError("missing key 'y_embedder.embedding_table.weight': only class-conditional models load; "
                             "pass a class-conditional checkpoint")
    z_dims, projector, projector_dim = [], "mlp", None
    for k in sorted({int(m.group(1)) for key in sd if (m := re.match(r"^projectors\.(\d+)\.", key))}):
        if f"projectors.{k}.4.weight" in sd:
            z_dims.append(int(sd[f"projectors.{k}.4.weight"].shape[0]))
            projector_dim = int(sd[f"projectors.{k}.4.weight"].shape[1])  # REPA: 2048
        elif f"projectors.{k}.proj.weight" in sd:
            z_dims.append(int(sd[f"projectors.{k}.proj.weight"].shape[0]))
            projector = "conv"
        else:
            raise KeyLayoutError(f"projector {k} has neither '.4.weight' (REPA MLP) nor '.proj.weight' (iREPA conv); "
                                 "pass an unmodified REPA / iREPA / REPA-E checkpoint")
    depth = len(_block_ids(sd)) + len(_block_ids(sd, "decoder_blocks."))
    rows = sd.get("final_layer.linear.weight")
    out_channels = int(rows.shape[0]) // (p * p) if rows is not None else C
    arch: dict[str, Any] = {
        "depth": depth, "hidden_size": D, "patch_size": p, "in_channels": C, "input_size": g * p,
        "label_rows": int(table.shape[0]), "z_dims": tuple(z_dims), "projector": projector,
        "projector_dim": projector_dim,
        "qk_norm": "blocks.0.attn.q_norm.weight" in sd, "out_channels": out_channels,
    }
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and int(fc1.shape[0]) != 4 * D:
        raise KeyLayoutError(f"MLP width {int(fc1.shape[0])} is not 4 x hidden {D}; only mlp_ratio 4 is supported: "
                             "pass a checkpoint of a standard SiT / DiT / LightningDiT preset")
    ada = sd.get("blocks.0.adaLN_modulation.1.weight")
    if ada is not None and int(ada.shape[0]) != 6 * D:
        raise KeyLayoutError(f"adaLN modulation has {int(ada.shape[0])} outputs, expected 6 x {D} "
                             "(LightningDiT wo_shift=True checkpoints are not supported)")
    if layout == "lightningdit":
        arch.update(use_rmsnorm="blocks.0.norm1.weight" in sd, use_swiglu="blocks.0.mlp.w12.weight" in sd,
                    use_rope="feat_rope.freqs_cos" in sd)
    return arch


def architecture_key(state_dict: Mapping[str, Tensor]) -> tuple[int, int, int] | None:
    """``(depth, hidden size, patch size)`` of a SiT/DiT/LightningDiT state dict (to match presets), or None."""
    try:
        D, _, p = _geometry(state_dict)
    except KeyLayoutError:
        return None
    return len(_block_ids(state_dict)) + len(_block_ids(state_dict, "decoder_blocks.")), D, p


# ----------------------------------------------------------------------------------------------
# Converters (pure key/tensor maps; strictness is checked against the built network)
# ----------------------------------------------------------------------------------------------


def _sigma_rows(rows: int, C: int, p: int) -> tuple[Tensor, Tensor]:
    """(kept, dropped) row indices of a ``p*p*2C``-output head: the official forward keeps the rows whose
    channel index (fastest within each of the p*p pixels) is < C. Index tensors, so meta tensors work."""
    if rows != p * p * 2 * C:
        raise KeyLayoutError(f"final_layer.linear has {rows} outputs, expected p*p*2C = {p * p * 2 * C}")
    keep = (torch.arange(rows) % (2 * C)) < C  # [p*p*2C] bool
    return keep.nonzero().reshape(-1), (~keep).nonzero().reshape(-1)  # [p*p*C] each


def official_to_repae(state_dict: Mapping[str, Tensor], layout: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Official (unwrapped) keys -> ``repae`` keys of the network, plus ``extras`` that are not network weights.

    ``extras``: ``"bn"`` (REPA-E latent BatchNorm buffers, for the tokenizer's normaliser),
    ``"sigma"`` (the discarded learned-variance rows of a ``sit`` / LightningDiT head),
    ``"legacy_encoder_depth"`` (REPA checkpoints with ``decoder_blocks``). Tensors are not copied.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    sd = dict(state_dict)
    extras: dict[str, Any] = {}
    if layout == "repa-e":
        missing = [k for k in BN_KEYS if k not in sd]
        if missing:
            raise KeyLayoutError(f"REPA-E weights without the latent BatchNorm: missing {first_keys(missing)}; pass the "
                                 "complete REPA-E checkpoint (its bn.* entries hold the latent statistics)")
        extras["bn"] = {k[3:]: sd.pop(k) for k in BN_KEYS}
    if layout == "repa" and any(k.startswith("decoder_blocks.") for k in sd):
        enc = len(_block_ids(sd))
        extras["legacy_encoder_depth"] = enc
        renamed = {}
        for k, v in sd.items():
            m = re.match(r"^decoder_blocks\.(\d+)\.(.*)$", k)
            renamed[f"blocks.{int(m.group(1)) + enc}.{m.group(2)}" if m else k] = v
        sd = renamed
    if layout in ("sit", "lightningdit"):
        D, C, p = _geometry(sd)
        w = sd.get("final_layer.linear.weight")
        if w is not None and int(w.shape[0]) == p * p * 2 * C:  # learn_sigma head: keep the forward's half
            kept, dropped = _sigma_rows(int(w.shape[0]), C, p)
            extras["sigma"] = {k: sd[k].index_select(0, dropped.to(sd[k].device)) for k in SIGMA_KEYS}
            for k in SIGMA_KEYS:
                sd[k] = sd[k].index_select(0, kept.to(sd[k].device))
    return sd, extras


def repae_to_official(state_dict: Mapping[str, Tensor], layout: str, *, extras: Mapping[str, Any] | None = None,
                      bn: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``repae`` network keys -> the official layout (inverse of :func:`official_to_repae`).

    ``bn``: ``{running_mean, running_var, num_batches_tracked}`` of the latent normaliser (required for
    ``repa-e``; default: ``extras["bn"]``). A ``sit`` head gets its variance rows back from
    ``extras["sigma"]`` (zeros for a network trained without them). Projectors are dropped for the
    layouts whose networks have none (``sit``, ``dit``, ``lightningdit``).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    extras = dict(extras or {})
    sd = dict(state_dict)
    if layout in ("sit", "dit", "lightningdit"):
        sd = {k: v for k, v in sd.items() if not k.startswith("projectors.")}
    if layout == "sit" or (layout == "lightningdit" and "sigma" in extras):
        D, C, p = _geometry(sd)
        w, b = sd["final_layer.linear.weight"], sd["final_layer.linear.bias"]
        if int(w.shape[0]) != p * p * C:
            raise KeyLayoutError(f"final_layer.linear has {int(w.shape[0])} outputs, expected p*p*C = {p * p * C}")
        sigma = extras.get("sigma") or {"final_layer.linear.weight": torch.zeros_like(w),
                                        "final_layer.linear.bias": torch.zeros_like(b)}
        kept_rows, dropped_rows = _sigma_rows(p * p * 2 * C, C, p)
        for k, kept in (("final_layer.linear.weight", w), ("final_layer.linear.bias", b)):
            full = kept.new_empty((p * p * 2 * C, *kept.shape[1:]))
            full.index_copy_(0, kept_rows.to(kept.device), kept)
            full.index_copy_(0, dropped_rows.to(kept.device), sigma[k].to(kept.dtype))
            sd[k] = full
    if layout == "repa" and extras.get("legacy_encoder_depth"):
        enc = int(extras["legacy_encoder_depth"])
        renamed = {}
        for k, v in sd.items():
            m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
            renamed[f"decoder_blocks.{int(m.group(1)) - enc}.{m.group(2)}" if m and int(m.group(1)) >= enc else k] = v
        sd = renamed
    if layout == "repa-e":
        stats = bn if bn is not None else extras.get("bn")
        if stats is None:
            raise ConfigError("the REPA-E layout stores the latent BatchNorm inside the SiT; pass bn=normalizer "
                              "state dict {running_mean, running_var, num_batches_tracked}")
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            sd[f"bn.{k}"] = stats[k]
    return sd
