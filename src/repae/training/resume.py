"""The resume policy: which checkpoint a run continues from, and what a changed setting means.

Checkpoint files themselves (atomic writes, verification, rotation) are
:mod:`repae.training.checkpoint`; this module decides what to do with them when a run starts:

* :func:`resume_run` loads the newest checkpoint that verifies and reports how the current config
  differs from the one it was written with: keys that fix tensor shapes (:data:`ARCHITECTURE`) stop
  the run in one line, optimizer hyper-parameters (:data:`OVERRIDDEN`) are taken from the
  checkpoint, bookkeeping keys (:data:`HARMLESS`) are only noted, anything else is warned about
  (the run then differs from an uninterrupted one);
* :func:`prepare_run` makes the run folder agree with the resumed step (``metrics.jsonl`` cut back,
  room for one more checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repae.config import ARCH as _ARCH
from repae.config import HARMLESS as _HARMLESS
from repae.config import OVERRIDDEN as _OVERRIDDEN
from repae.config import migrate_config_dict, resume_keys
from repae.training.checkpoint import (
    CheckpointError,
    check_free_space,
    estimate_checkpoint_bytes,
    find_resume_checkpoint,
    latest_checkpoint,
)
from repae.utils.io import truncate_jsonl

log = logging.getLogger("repae.checkpoint")

# The three tables come from each key's ``resume`` fact in repae.config (:func:`repae.config.key`).
# Settings a checkpoint restores over the config (the optimizers' param_groups).
OVERRIDDEN = resume_keys(_OVERRIDDEN)
# Settings that fix tensor shapes: resuming with another value cannot load the weights (a dict such as
# tokenizer.arch: any of its fields).
ARCHITECTURE = resume_keys(_ARCH)
# Settings that change nothing about the trained weights.
HARMLESS = resume_keys(_HARMLESS)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (checkpoint value, config value)}`` for every setting that differs (a config saved
    before a key was renamed is compared under the new names: :func:`repae.config.migrate_config_dict`)."""
    old, new = _flat(migrate_config_dict(saved)), _flat(current)
    return {k: (old.get(k), v) for k, v in new.items() if k in old and not _same(old[k], v)}


def report_config_changes(path: Path, saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """Log what resuming ``path`` with the ``current`` config changes; raise for shape-changing ones.

    * architecture keys (:data:`ARCHITECTURE`) -> :class:`CheckpointError` (the weights cannot load);
    * optimizer hyper-parameters (:data:`OVERRIDDEN`) -> a warning: the checkpoint's value is used;
    * anything else that affects training (seed, batch size, loss weights, ...) -> a warning;
    * bookkeeping keys (:data:`HARMLESS`) -> an info line.
    """
    changes = config_changes(saved, current)
    arch = {k: v for k, v in changes.items() if k in ARCHITECTURE or k.startswith(tuple(a + "." for a in ARCHITECTURE))}
    if arch:
        what = ", ".join(f"{k}={b!r} (checkpoint: {a!r})" for k, (a, b) in arch.items())
        raise CheckpointError(f"cannot resume {path}: {what}; use the checkpoint's values or a new train.exp_name")
    over = {k: v for k, v in changes.items() if k in OVERRIDDEN}
    if over:
        log.warning("resume: %s; the checkpoint's optimizer state wins, so its values are used "
                    "(start a new train.exp_name to change them)",
                    ", ".join(f"{k}={b!r} differs from the checkpoint's {a!r}" for k, (a, b) in over.items()))
    harmless = {k: v for k, v in changes.items() if k.startswith(HARMLESS)}
    other = {k: v for k, v in changes.items() if k not in over and k not in harmless}
    if other:
        log.warning("resume: changed settings make this run differ from an uninterrupted one: %s",
                    ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in other.items()))
    if harmless:
        log.info("resume: changed %s", ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in harmless.items()))
    return changes


def resume_run(run_dir: Path, config: dict, load: Callable[[Path], None]) -> Path | None:
    """Load the newest checkpoint of ``run_dir`` that verifies with ``load``; return its path.

    Reports what differs between the checkpoint's config and ``config`` (the run's, as a dict;
    :func:`report_config_changes`) and turns a checkpoint that does not fit the built models into
    one :class:`CheckpointError` line.
    """
    ckpt = find_resume_checkpoint(run_dir)
    if ckpt is None:
        return None
    try:
        saved = json.loads((ckpt / "state.json").read_text()).get("config", {})
    except (OSError, ValueError):
        saved = {}
    report_config_changes(ckpt, saved, config)
    try:
        load(ckpt)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {ckpt} does not fit the models of this config ({first}); "
                              "resume with the settings it was written with or use a new train.exp_name") from None
    return ckpt


def prepare_run(run_dir: Path, *, step: int, resume: bool, is_main: bool, models: dict, optimizers: dict) -> None:
    """Every process, after resuming: make the run folder consistent with ``step``.

    ``metrics.jsonl`` loses the records after the resumed step (they are logged again, so no step
    appears twice) and any torn last line; the disk must hold one more checkpoint (else
    :class:`CheckpointSpaceError` before the first step, naming the size); a fresh start
    (``train.resume=false``) in a folder with checkpoints of an earlier run is warned about. Only
    the main process writes; the space check runs on every rank so that all of them stop together.
    """
    dropped = truncate_jsonl(run_dir / "metrics.jsonl", step) if is_main else 0
    if dropped:
        log.info("metrics.jsonl: dropped %d records after step %d (they are logged again)", dropped, step)
    if is_main and not resume and (old := latest_checkpoint(run_dir)) is not None:
        log.warning("train.resume=false but %s holds checkpoints up to %s from an earlier run; a later resume may "
                    "pick those: use a new train.exp_name for a fresh run", run_dir, old.name)
    needed = estimate_checkpoint_bytes(models, optimizers)
    check_free_space(run_dir / "checkpoints", needed, "one checkpoint")
