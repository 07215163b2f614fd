"""Reading weight files safely, unwrapping their containers, and checking key sets strictly.

Every weights file the package reads goes through :func:`read_weights` (training-checkpoint resume IO,
which is safetensors + JSON only, has its own verified reader in :mod:`repae.training.checkpoint`):

* safetensors (by suffix or by its header) is read with ``safetensors.torch.load_file``;
* anything else with ``torch.load(weights_only=True)``: only tensors, plain containers and
  ``argparse.Namespace`` (official checkpoints pickle their args) are rebuilt. A pickle that names
  any other global (a class, ``exec``, ``os.system``, ...) is refused in one line naming those
  globals, or, with ``inert=True`` (published generator checkpoints that pickle e.g. an OmegaConf
  config next to the weights), those objects become inert placeholders whose constructors never run.
  Either way no code from a weights file is ever executed.

Errors are one line that names the fix: :class:`~repae.errors.MissingWeightsError` for a missing
file, :class:`~repae.errors.ConfigError` for an unreadable one (corrupt, truncated, code-bearing
pickle). :func:`check_keys` / :func:`check_state_dict` are the one strict key (and shape) check,
raising :class:`KeyLayoutError` with the counts and the first few missing and unexpected keys.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from repae.errors import ConfigError, MissingWeightsError

__all__ = [
    "ALLOWED_GLOBALS",
    "WRAPPER_PREFIXES",
    "KeyLayoutError",
    "check_keys",
    "check_state_dict",
    "drop_keys",
    "first_keys",
    "is_safetensors",
    "is_state_dict",
    "read_weights",
    "strip_prefix",
    "strip_wrappers",
    "unwrap_entries",
]

#: Non-tensor types a weights file may pickle besides torch's own allow-list (plain data, no code).
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
#: Wrapper prefixes :func:`strip_wrappers` removes: DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: How many key names an error message lists.
SHOW = 5
DEFAULT_FIX = "save a plain state dict (torch.save(model.state_dict(), path)) or a .safetensors file"
DEFAULT_MISSING_HINT = "pass a local file (weights are never downloaded)"
#: The end of a key/shape mismatch message when the caller knows no more specific fix.
DEFAULT_LAYOUT_HINT = "; pass weights saved from this exact architecture (same preset and options)"


class KeyLayoutError(ConfigError):
    """A state dict whose keys or shapes do not match the expected layout (one line, names the keys)."""


def first_keys(names: Iterable[str], n: int = SHOW) -> str:
    """``'a', 'b', ... (+k)``: the first ``n`` names (sorted) for an error message."""
    names = sorted(names)
    more = f", ... (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(repr(k) for k in names[:n]) + more


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` suffix, or a safetensors header (8-byte little-endian length, then ``{``)."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= min(100_000_000, path.stat().st_size - 8)


class _Inert:
    """Stand-in for a pickled object whose type is not allowed; keeps its data, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


def _inert_stand_ins(names: list[str]) -> list[tuple[type, str]]:
    out = []
    for name in names:
        module, _, qual = name.rpartition(".")
        out.append((type(qual or name, (_Inert,), {"__module__": module, "__qualname__": qual or name}), name))
    return out


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _unsafe_globals(path: Path, err: BaseException) -> list[str]:
    """The globals a pickle names beyond the allow-list (empty when the file does not say)."""
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in ALLOWED_GLOBALS}
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: read the name from the error
        names = _GLOBAL_RE.findall(str(err))
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _one_line(err: BaseException) -> str:
    lines = [s.strip() for s in str(err).strip().splitlines() if s.strip()]
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def _torch_load(path: Path, allowed: list, mmap: bool) -> Any:
    with torch.serialization.safe_globals(allowed):
        mapped = mmap and zipfile.is_zipfile(path)  # torch >= 1.6 format; legacy files cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)


def read_weights(path: str | os.PathLike, *, what: str = "weights file", fix: str = DEFAULT_FIX,
                 missing_hint: str = DEFAULT_MISSING_HINT, inert: bool = False, mmap: bool = False) -> Any:
    """Read a weights file on the CPU without ever running code from it.

    Args:
        path: a ``.safetensors`` file or anything ``torch.save`` wrote (``.pt``/``.pth``/``.ckpt``/``.bin``).
        what: what the file should be, for messages (``"{what} not found at PATH"``,
            ``"PATH is not a readable {what} (reason); {fix}"``).
        fix: the second half of the unreadable-file message.
        missing_hint: the second half of the missing-file message.
        inert: replace pickled objects of non-allowed types by inert placeholders instead of refusing.
        mmap: memory-map a zip-format torch file (a training checkpoint's optimizer states are then
            never read from disk). Only for callers that copy what they need right away.

    Returns:
        A flat ``{name: tensor}`` dict for safetensors; whatever was saved otherwise.

    Raises:
        MissingWeightsError: no file at ``path``.
        ConfigError: corrupt / truncated / not a weights file, or a pickle that names code.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{what} not found at {p}", missing_hint)
    if is_safetensors(p):
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as err:  # noqa: BLE001 - SafetensorError, header errors: one line
            raise ConfigError(f"{p} is not a readable {what} (safetensors {_one_line(err)}); {fix}") from None
    try:
        return _torch_load(p, list(ALLOWED_GLOBALS), mmap)
    except Exception as first:  # noqa: BLE001 - retried once with inert placeholders, else one line
        unsafe = _unsafe_globals(p, first)
        if inert and unsafe:
            try:
                return _torch_load(p, list(ALLOWED_GLOBALS) + _inert_stand_ins(unsafe), mmap)
            except Exception:  # noqa: BLE001 - reported as the first failure below
                pass
        if unsafe:
            reason = (f"it pickles {first_keys(unsafe, 3)}, not plain tensor data; refused, no code from a "
                      "weights file is ever run")
        elif isinstance(first, pickle.UnpicklingError):
            reason = "a pickle that torch's weights-only loader refuses"
        else:
            reason = _one_line(first)
        raise ConfigError(f"{p} is not a readable {what} ({reason}); {fix}") from None


# ----------------------------------------------------------------------------------------------
# Unwrapping containers and prefixes
# ----------------------------------------------------------------------------------------------


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping whose values are all tensors."""
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def unwrap_entries(obj: Any, entries: Iterable[str], *, levels: int = 1) -> Any:
    """Descend into a training checkpoint: up to ``levels`` times take the first of ``entries`` that holds a
    mapping (``{"state_dict": {...}}``, ``{"model": {...}}``, ``{"ema": {...}}``, ...). Returns what is left
    (the input itself when nothing matches); the caller checks that it is a state dict."""
    entries = tuple(entries)
    for _ in range(levels):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in entries if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    return obj


def strip_prefix(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> tuple[dict[str, Tensor], bool]:
    """Keep only the keys under the first of ``prefixes`` that occurs and remove it; ``(state, stripped?)``."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, True
    return dict(state), False


def drop_keys(state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> tuple[dict[str, Tensor], list[str]]:
    """Remove keys that start with any of ``prefixes``; ``(kept, sorted dropped names)``."""
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    return kept, sorted(set(state) - set(kept))


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
            raise KeyLayoutError(f"key {key!r} collides with another after removing the module./_orig_mod. prefix; "
                                 "save the unwrapped network's state_dict() (DDP: .module, torch.compile: ._orig_mod)")
        out[k] = value
    return out


# ----------------------------------------------------------------------------------------------
# The strict check
# ----------------------------------------------------------------------------------------------


def check_keys(found: Iterable[str], expected: Iterable[str], *, what: str, hint: str = DEFAULT_LAYOUT_HINT,
               may_miss: tuple[str, ...] = ()) -> None:
    """Strict key-set comparison: :class:`KeyLayoutError` ``"{what}: N missing key(s) 'a', ...; M unexpected
    key(s) 'b', ...{hint}"``. ``may_miss``: key suffixes that may be absent (e.g. ``num_batches_tracked``)."""
    found, expected = set(found), set(expected)
    missing = {k for k in expected - found if not (may_miss and k.endswith(may_miss))}
    unexpected = found - expected
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {first_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {first_keys(unexpected)}")
        raise KeyLayoutError(f"{what}: {'; '.join(parts)}{hint}")


def check_state_dict(found: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, what: str,
                     hint: str = DEFAULT_LAYOUT_HINT, may_miss: tuple[str, ...] = ()) -> None:
    """:func:`check_keys`, then shapes: ``"{what}: N tensor(s) with the wrong shape ('k' (3,) vs (64,), ...){hint}"``.

    Works on ``meta`` tensors (``expected`` may be a state dict of a network built on the meta device).
    """
    if not isinstance(found, Mapping):
        raise KeyLayoutError(f"{what}: the file holds a {type(found).__name__}, not a state dict{hint}")
    check_keys(found, expected, what=what, hint=hint, may_miss=may_miss)
    bad = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if bad:
        shown = ", ".join(f"{k!r} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(bad)[:3])
        raise KeyLayoutError(f"{what}: {len(bad)} tensor(s) with the wrong shape ({shown}){hint}")
