"""Published generator checkpoints <-> ``repae`` networks: the key layouts of SiT, REPA, REPA-E, DiT, LightningDiT.

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

Every converter is strict: after unwrapping (``module.`` / ``_orig_mod.`` prefixes, ``ema`` / ``model``
entries) the key set must equal the network's; a missing or extra key is a :class:`KeyLayoutError`
naming the first few. Files are read with ``torch.load(weights_only=True)`` or safetensors only; a
pickled object of a type that is not allowed becomes an inert placeholder (:func:`load_official_file`),
so no code from a checkpoint ever runs.

Time conventions: :class:`TimeFlipped` runs a transport-convention network in ``repae``'s convention
(``v(x, t) = -net(x, 1 - t)``, exact); :func:`flip_time_convention_` rewrites the weights instead
(first timestep-MLP layer and the output layer; exact up to float rounding), which is what
``train.init_from`` and the exporter need.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repae.errors import ConfigError, MissingWeightsError
from repae.models.sit import SiTOutput

__all__ = [
    "LAYOUTS",
    "ENTRY_NAMES",
    "KeyLayoutError",
    "OfficialWeights",
    "TimeFlipped",
    "build_official_model",
    "check_state_dict",
    "detect_layout",
    "flip_time_convention_",
    "guess_presets",
    "infer_architecture",
    "load_official_file",
    "load_official_weights",
    "official_to_repae",
    "repae_to_official",
    "select_state_dict",
    "strip_wrappers",
]


class KeyLayoutError(ConfigError):
    """A state dict whose keys or shapes do not match the expected layout (one line, names the keys)."""


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
#: Wrapper prefixes stripped from every key: DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
BN_KEYS = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
SIGMA_KEYS = ("final_layer.linear.weight", "final_layer.linear.bias")
#: SD-VAE latent scale used by REPA, SiT and DiT (``x * 0.18215``, the same for every channel).
SD_LATENT_SCALE = 0.18215
_SHOW = 5  # how many key names an error message lists


def _first(names, n: int = _SHOW) -> str:
    names = sorted(names)
    more = f", ... (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(repr(k) for k in names[:n]) + more


# ----------------------------------------------------------------------------------------------
# Reading files without executing pickled code
# ----------------------------------------------------------------------------------------------


class _Inert:
    """Stand-in for a pickled object whose type is not on torch's allow-list; keeps its data, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


def _inert_globals(path: Path) -> list[tuple[type, str]]:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    out = []
    for name in names:
        if name == "argparse.Namespace":
            out.append((argparse.Namespace, name))  # official checkpoints pickle their args; plain data
            continue
        module, _, qual = name.rpartition(".")
        out.append((type(qual or name, (_Inert,), {"__module__": module, "__qualname__": qual or name}), name))
    return out


def _weights_only_load(path: Path, allowed: list) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file allows it (optimizer states in a
    training checkpoint are then never read from disk)."""
    import zipfile

    with torch.serialization.safe_globals(allowed):
        mmap = zipfile.is_zipfile(path)  # torch >= 1.6 format; legacy files cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_official_file(path: str | os.PathLike) -> Any:
    """Read a published checkpoint (``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` / ``.safetensors``) on the CPU.

    ``torch.load(weights_only=True)``: only tensors and plain containers are rebuilt. Objects of
    other types (``argparse.Namespace`` args are kept; e.g. an OmegaConf config, or anything
    malicious) are replaced by inert placeholders whose constructors are never called, so loading
    never runs code from the file. A flat safetensors file whose keys start with ``ema.`` /
    ``model.`` is regrouped into those entries.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingWeightsError(f"checkpoint not found at {p}", "pass a local .pt / .safetensors file "
                                  "(weights are never downloaded)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(p), device="cpu")
        heads = {k.split(".", 1)[0] for k in flat}
        if heads and heads <= set(ENTRY_NAMES) | {"vae"}:
            grouped: dict[str, dict[str, Tensor]] = {}
            for k, v in flat.items():
                head, rest = k.split(".", 1)
                grouped.setdefault(head, {})[rest] = v
            return grouped
        return flat
    try:
        return _weights_only_load(p, [argparse.Namespace])
    except Exception as first:  # noqa: BLE001 - retried once with inert placeholders, else one line
        try:
            return _weights_only_load(p, _inert_globals(p))
        except Exception:  # noqa: BLE001
            msg = (str(first).strip().splitlines() or [type(first).__name__])[0][:160]
            raise ConfigError(f"cannot read {p} as a torch checkpoint ({msg}); expected a state dict or a "
                              "{model, ema, ...} training checkpoint") from None


# ----------------------------------------------------------------------------------------------
# Unwrapping
# ----------------------------------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def strip_wrappers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove DDP ``module.`` and ``torch.compile`` ``_orig_mod.`` prefixes (leading or nested) from every key."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        k = k.replace("._orig_mod.", ".")  # a compiled sub-module
        if k in out:
            raise KeyLayoutError(f"key {key!r} collides with another after removing the module./_orig_mod. prefix")
        out[k] = value
    return out


def select_state_dict(obj: Any, *, ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """The network state dict inside a checkpoint and the entry it came from.

    ``ema=True`` picks ``ema`` (what every official sampler loads) and falls back to ``model``;
    ``ema=False`` picks ``model``. A bare state dict (SiT, DiT releases) is returned as ``"bare"``.
    Wrapper prefixes are stripped.
    """
    if _is_state_dict(obj):
        return strip_wrappers(obj), "bare"
    if not isinstance(obj, Mapping):
        raise ConfigError(f"checkpoint holds a {type(obj).__name__}, not a state dict or a {{model, ema}} dict")
    order = ("ema", "model", "state_dict", "module") if ema else ("model", "state_dict", "module", "ema")
    for name in order:
        inner = obj.get(name)
        if _is_state_dict(inner):
            return strip_wrappers(inner), name
        if isinstance(inner, Mapping) and inner and not _is_state_dict(inner):
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
                             f"({len(sd)} keys, e.g. {_first(list(sd), 3)})")
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
        raise KeyLayoutError("missing key 'pos_embed' (the sin-cos table every official SiT/DiT saves)")
    T = int(pos.shape[-2])
    g = math.isqrt(T)
    if g * g != T:
        raise KeyLayoutError(f"'pos_embed' has {T} tokens, not a square grid")
    table = sd.get("y_embedder.embedding_table.weight")
    if table is None:
        raise KeyLayoutError("missing key 'y_embedder.embedding_table.weight' (class-conditional models only)")
    z_dims, projector, projector_dim = [], "mlp", None
    for k in sorted({int(m.group(1)) for key in sd if (m := re.match(r"^projectors\.(\d+)\.", key))}):
        if f"projectors.{k}.4.weight" in sd:
            z_dims.append(int(sd[f"projectors.{k}.4.weight"].shape[0]))
            projector_dim = int(sd[f"projectors.{k}.4.weight"].shape[1])  # REPA: 2048
        elif f"projectors.{k}.proj.weight" in sd:
            z_dims.append(int(sd[f"projectors.{k}.proj.weight"].shape[0]))
            projector = "conv"
        else:
            raise KeyLayoutError(f"projector {k} has neither '.4.weight' (REPA MLP) nor '.proj.weight' (iREPA conv)")
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
        raise KeyLayoutError(f"MLP width {int(fc1.shape[0])} is not 4 x hidden {D}; only mlp_ratio 4 is supported")
    ada = sd.get("blocks.0.adaLN_modulation.1.weight")
    if ada is not None and int(ada.shape[0]) != 6 * D:
        raise KeyLayoutError(f"adaLN modulation has {int(ada.shape[0])} outputs, expected 6 x {D} "
                             "(LightningDiT wo_shift=True checkpoints are not supported)")
    if layout == "lightningdit":
        arch.update(use_rmsnorm="blocks.0.norm1.weight" in sd, use_swiglu="blocks.0.mlp.w12.weight" in sd,
                    use_rope="feat_rope.freqs_cos" in sd)
    return arch


def guess_presets(state_dict: Mapping[str, Tensor], family: str | None = None) -> list[str]:
    """Model presets whose depth / hidden size / patch size match the weights (for error messages)."""
    from repae.models import MODEL_PRESETS

    try:
        D, _, p = _geometry(state_dict)
    except KeyLayoutError:
        return []
    depth = len(_block_ids(state_dict)) + len(_block_ids(state_dict, "decoder_blocks."))
    return [name for name, a in MODEL_PRESETS.items()
            if a["depth"] == depth and a["hidden_size"] == D and a["patch_size"] == p
            and (family is None or name.startswith(family + "-"))]


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
            raise KeyLayoutError(f"REPA-E weights without the latent BatchNorm: missing {_first(missing)}")
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


# ----------------------------------------------------------------------------------------------
# Strict loading into a repae network
# ----------------------------------------------------------------------------------------------


def check_state_dict(found: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, what: str,
                     hint: str = "") -> None:
    """Strict key and shape comparison; :class:`KeyLayoutError` naming the first few offending keys."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {_first(unexpected)}")
        raise KeyLayoutError(f"{what}: {'; '.join(parts)}{hint}")
    bad = [k for k in expected if tuple(found[k].shape) != tuple(expected[k].shape)]
    if bad:
        shown = ", ".join(f"{k!r} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(bad)[:3])
        raise KeyLayoutError(f"{what}: {len(bad)} tensor(s) with the wrong shape ({shown}){hint}")


@dataclass
class OfficialWeights:
    """What :func:`build_official_model` read: where the weights came from and what is not a network weight."""

    layout: str  # key of LAYOUTS
    entry: str  # "ema" | "model" | "bare" | ...
    preset: str
    architecture: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)  # bn / sigma / legacy_encoder_depth
    source: str = ""

    @property
    def time(self) -> str:
        return LAYOUTS[self.layout].time

    def describe(self) -> str:
        a = self.architecture
        return (f"{self.source or 'checkpoint'}: {self.layout} layout ({LAYOUTS[self.layout].source.split()[0]}), "
                f"entry '{self.entry}', {self.preset} on {a['in_channels']}x{a['input_size']}x{a['input_size']} "
                f"latents, time convention {self.time}")


def _family(preset: str) -> str:
    from repae.models import MODEL_PRESETS

    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    return "LightningDiT" if preset.startswith("LightningDiT-") else preset.split("-", 1)[0]


def build_official_model(checkpoint: Any, preset: str, *, num_classes: int = 1000, ema: bool = True,
                         layout: str | None = None, encoder_depth: int | None = None, source: str = "",
                         device: str | torch.device | None = None, load: bool = True) -> tuple[nn.Module, OfficialWeights]:
    """Build ``repae`` preset ``preset`` and load published weights into it, strictly.

    Args:
        checkpoint: what :func:`load_official_file` returned (a training checkpoint or a bare state dict).
        preset: a :data:`repae.models.MODEL_PRESETS` name (``SiT-XL/2``, ``DiT-XL/2``, ``LightningDiT-XL/1``);
            its depth / width / patch must match the weights. Channels, latent size, projector widths,
            QK-norm and the LightningDiT switches are read from the weights.
        num_classes: real classes; the label table must have ``num_classes + 1`` rows (null label) or
            ``num_classes``.
        ema: take the ``ema`` entry (default, as every official sampler) or ``model``.
        layout: force a layout (default: :func:`detect_layout`).
        encoder_depth: REPA block whose output the projectors read (default: the preset's, 8).
        device: build on this device (``"meta"`` checks keys and shapes without memory; then ``load``
            is ignored).
        load: copy the weights into the network (False: check only).

    Returns:
        ``(network, OfficialWeights)``; the network is in ``repae``'s time convention only for the
        ``repa`` / ``repa-e`` / ``dit`` layouts: wrap ``sit`` / ``lightningdit`` networks in
        :class:`TimeFlipped` (sampling) or call :func:`flip_time_convention_` (training).
    """
    from repae.models import MODEL_PRESETS, build_model

    family = _family(preset)
    sd_off, entry = select_state_dict(checkpoint, ema=ema)
    layout = layout or detect_layout(sd_off, family)
    if LAYOUTS[layout].family != family:
        raise ConfigError(f"layout {layout!r} holds a {LAYOUTS[layout].family}, but --model {preset} is a {family}")
    sd, extras = official_to_repae(sd_off, layout)
    arch = infer_architecture(sd, layout)
    want = MODEL_PRESETS[preset]
    got = {k: arch[k] for k in ("depth", "hidden_size", "patch_size")}
    if any(want[k] != got[k] for k in got):
        guesses = guess_presets(sd, family)
        raise ConfigError(f"{source or 'checkpoint'} has depth {got['depth']}, hidden {got['hidden_size']}, patch "
                          f"{got['patch_size']}, but {preset} has depth {want['depth']}, hidden {want['hidden_size']}, "
                          f"patch {want['patch_size']}"
                          + (f"; pass --model {' or '.join(guesses)}" if guesses else ""))
    rows = arch["label_rows"]
    if rows not in (num_classes, num_classes + 1):
        raise ConfigError(f"{source or 'checkpoint'} has {rows} label rows; it was trained with "
                          f"{rows - 1} classes (+ null label): pass --num-classes {rows - 1}")
    kwargs: dict[str, Any] = dict(
        input_size=arch["input_size"], in_channels=arch["in_channels"], num_classes=num_classes,
        z_dims=arch["z_dims"], class_dropout_prob=0.1 if rows == num_classes + 1 else 0.0, qk_norm=arch["qk_norm"],
        projector=arch["projector"],
    )
    if arch["projector_dim"]:  # the weights' MLP width (official files: 2048, whatever the preset's)
        kwargs["projector_dim"] = arch["projector_dim"]
    if encoder_depth is not None or "legacy_encoder_depth" in extras:
        kwargs["encoder_depth"] = int(encoder_depth if encoder_depth is not None else extras["legacy_encoder_depth"])
    if family == "DiT":
        C = arch["in_channels"]
        if arch["out_channels"] not in (C, 2 * C):
            raise KeyLayoutError(f"DiT head has {arch['out_channels']} channels, expected {C} or {2 * C}")
        kwargs["learn_sigma"] = arch["out_channels"] == 2 * C
    if family == "LightningDiT":
        kwargs.update(use_rmsnorm=arch["use_rmsnorm"], use_swiglu=arch["use_swiglu"], use_rope=arch["use_rope"])
    if device is not None:
        with torch.device(device):
            model = build_model(preset, **kwargs)
    else:
        model = build_model(preset, **kwargs)
    what = f"{source or 'checkpoint'} ({layout} layout, entry '{entry}') vs {preset}"
    check_state_dict(sd, model.state_dict(), what=what)
    if load and str(device) != "meta":
        model.load_state_dict(sd, strict=True)
    info = OfficialWeights(layout=layout, entry=entry, preset=preset, architecture=arch, extras=extras, source=source)
    return model, info


def load_official_weights(model: nn.Module, path: str | os.PathLike, *, ema: bool = True,
                          layout: str | None = None, to_repae_time: bool = True) -> OfficialWeights:
    """Strictly load a published checkpoint into an existing ``repae`` network (``train.init_from``).

    Keys and shapes must match exactly (projectors included: a network built with other target
    encoders fails naming ``projectors.*``). With ``to_repae_time`` a ``sit`` / ``lightningdit``
    checkpoint is rewritten into ``repae``'s time convention (:func:`flip_time_convention_`).
    """
    family = "LightningDiT" if type(model).__name__ == "LightningDiT" else (
        "DiT" if getattr(model, "objective_kind", "flow") == "ddpm" else "SiT")
    sd_off, entry = select_state_dict(load_official_file(path), ema=ema)
    layout = layout or detect_layout(sd_off, family)
    sd, extras = official_to_repae(sd_off, layout)
    check_state_dict(sd, model.state_dict(), what=f"{path} ({layout} layout, entry '{entry}')")
    model.load_state_dict(sd, strict=True)
    if to_repae_time and LAYOUTS[layout].time == "transport":
        flip_time_convention_(model)
    arch = infer_architecture(sd, layout)
    return OfficialWeights(layout=layout, entry=entry, preset=type(model).__name__, architecture=arch,
                           extras=extras, source=str(path))


# ----------------------------------------------------------------------------------------------
# Time conventions
# ----------------------------------------------------------------------------------------------


class TimeFlipped(nn.Module):
    """Run a network trained in SiT's ``transport`` convention (t = 0 noise, v = x - eps) in ``repae``'s.

    ``forward(x_t, t, y, ...) = -net(x_t, 1 - t, y, ...)``: with ``s = 1 - t`` both conventions describe
    the same ``x_t = (1 - t) x + t eps``, and ``dx/dt = -dx/ds``. Exact; the weights are untouched
    (so they export back bit-identically). Same ``SiTOutput`` interface as the wrapped network.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def config(self):
        return self.net.config

    @property
    def objective_kind(self) -> str:
        return getattr(self.net, "objective_kind", "flow")

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor, **kwargs) -> SiTOutput:
        out = self.net(x_t, 1.0 - t, y, **kwargs)
        pred = None if out.prediction is None else -out.prediction  # [B, C, h, w]
        return SiTOutput(prediction=pred, hidden=out.hidden)


def _time_reflection(dim: int, max_period: float = 10000.0) -> Tensor:
    """``M`` [dim, dim] float64 with ``features(1 - t) = M @ features(t)`` for the SiT timestep features.

    ``features(t) = [cos(t f) ++ sin(t f)]``; ``cos((1-t) f) = cos f cos(t f) + sin f sin(t f)`` and
    ``sin((1-t) f) = sin f cos(t f) - cos f sin(t f)``. ``M`` is symmetric and ``M @ M = I``.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    f = torch.exp(-math.log(max_period) * k / half)  # [half]
    c, s = torch.diag(torch.cos(f)), torch.diag(torch.sin(f))
    M = torch.zeros(dim, dim, dtype=torch.float64)
    M[:half, :half], M[:half, half:2 * half] = c, s
    M[half:2 * half, :half], M[half:2 * half, half:2 * half] = s, -c
    if dim % 2:
        M[-1, -1] = 1.0  # the zero padding feature stays zero
    return M


@torch.no_grad()
def flip_time_convention_(model: nn.Module) -> nn.Module:
    """Rewrite a flow network in place so that ``new(x, t) = -old(x, 1 - t)`` (transport <-> repae convention).

    Two tensors change: the first timestep-MLP weight ``W <- W M`` (:func:`_time_reflection`,
    computed in float64) and the output layer ``final_layer.linear`` (negated). Applying it twice
    gives the original network up to float rounding. Everything else (hidden states, REPA
    projections) is unchanged, so the flipped network trains and aligns like any ``repae`` network.
    """
    emb = model.t_embedder
    lin = emb.mlp[0]
    M = _time_reflection(emb.frequency_embedding_size).to(lin.weight.device)
    lin.weight.copy_((lin.weight.double() @ M).to(lin.weight.dtype))
    head = model.final_layer.linear
    head.weight.neg_()
    head.bias.neg_()
    return model
