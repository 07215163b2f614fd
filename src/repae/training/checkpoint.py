"""Training checkpoints: safetensors + JSON, written atomically and durably, verified on load.

Layout of one checkpoint (a folder, renamed into place only when complete)::

    <run>/checkpoints/step-0000400/
        models.safetensors   sit.*, ema.model.*, ema.normalizer.*, vae.*, normalizer.*, disc.*
        optim.safetensors    tensors of the three optimizers (flattened)
        state.json           step, images seen, data-sampler position, optimizer hyper-parameters,
                             grad-scaler state, the resolved run config
        manifest.json        size + SHA-256 of the three files above, written last

No pickles: every tensor is in safetensors and everything else is JSON, so a checkpoint can be
inspected and loaded without executing code.

Guarantees (docs/reliability.md lists the faults they were tested against):

* **Complete or absent.** Files are written into ``.step-XXXXXXX.tmp-<pid>``, fsynced, the
  manifest last, the folder fsynced, then renamed into place and the parent fsynced: after a kill
  or power loss a ``step-*`` folder is either complete or does not exist.
* **Verified.** :func:`verify_checkpoint` checks every file against the manifest; loading
  (:func:`read_checkpoint`) verifies first, so flipped bytes or a truncated file are reported in
  one line (:class:`CheckpointError`) instead of being trained on. Resume
  (:func:`find_resume_checkpoint`) takes the newest checkpoint that verifies and logs each one it
  skipped and why.
* **Finite.** :func:`save_checkpoint` refuses to write non-finite weights or optimizer state
  (:class:`NonFiniteCheckpointError`) and rotation never deletes the newest checkpoint known to
  be finite.
* **Rotation cannot half-delete.** An old checkpoint is renamed to ``.step-XXXXXXX.prune-<pid>``
  before it is deleted; :func:`clean_run_dir` (run at start-up under the run lock) removes such
  leftovers and dead temporary folders, and promotes a temporary folder that is complete (killed
  between its last fsync and the rename). It never touches a name it does not write.
* **Full disk in one line.** The space a checkpoint needs is checked before writing, and a full
  disk during the write removes the partial folder and raises :class:`CheckpointSpaceError`
  naming the size needed and the checkpoint a rerun resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from repae.errors import ConfigError
from repae.utils.io import file_sha256, fsync_dir, fsync_file, is_no_space, remove_dead_temp_files

log = logging.getLogger("repae.checkpoint")

PREFIX = "step-"
MANIFEST = "manifest.json"
DATA_FILES = ("models.safetensors", "optim.safetensors", "state.json")
STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_DIR = re.compile(r"^\.(step-\d+)\.tmp-\d+$")
PRUNE_DIR = re.compile(r"^\.(step-\d+)\.prune-\d+$")
OWN_FILES = frozenset((*DATA_FILES, MANIFEST))
FORMAT = 1


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used (damaged, incomplete, missing, or for another architecture)."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No (usable) checkpoint where one was asked for."""


class CheckpointSpaceError(CheckpointError):
    """Not enough disk space to write a checkpoint."""


class NonFiniteCheckpointError(CheckpointError):
    """Refused to write a checkpoint whose weights or optimizer state hold NaN/inf."""


# --- helpers -----------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def step_of(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}.{idx}.{key}"] = value.detach()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, field = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[field] = value
    for idx, values in meta[name]["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating tensor holding NaN/inf, or None (one device read per device)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for k, v in tensors.items():
        if v.is_floating_point() and v.numel():
            by_device.setdefault(v.device, []).append((k, v))
    for items in by_device.values():
        flags = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu()
        if not bool(flags.all()):
            return items[int((~flags).nonzero()[0])][0]
    return None


def estimate_checkpoint_bytes(models: dict[str, dict[str, torch.Tensor]],
                              optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Bytes one checkpoint of these models and optimizers takes (AdamW: two moments per parameter
    when the optimizer has no state yet), with a small allowance for headers and JSON."""
    n = sum(v.numel() * v.element_size() for sd in models.values() for v in sd.values())
    for opt in optimizers.values():
        params = [p for g in opt.param_groups for p in g["params"]]
        if opt.state:
            n += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                     if torch.is_tensor(v))
        else:
            n += 2 * sum(p.numel() * p.element_size() for p in params)
    return int(n * 1.01) + (1 << 20)


def check_free_space(folder: Path, needed: int, what: str, *, resume_hint: str = "") -> None:
    """Raise :class:`CheckpointSpaceError` when ``folder``'s filesystem has less than ``needed`` bytes free."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise CheckpointSpaceError(
            f"no space for {what} in {folder}: it needs {format_bytes(needed)}, {format_bytes(free)} free; "
            f"free space, lower train.keep_checkpoints or choose another train.output_dir{resume_hint}"
        )


def _retire(path: Path) -> None:
    """Delete a checkpoint folder so that a kill never leaves a half-deleted ``step-*`` folder:
    rename it out of the way first (atomic), then delete the renamed folder."""
    doomed = path.with_name(f".{path.name}.prune-{os.getpid()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _write_manifest(folder: Path, step: int) -> dict:
    files = {}
    for name in DATA_FILES:
        p = folder / name
        files[name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
    manifest = {"format": FORMAT, "step": step, "finite": True, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_file(folder / MANIFEST)
    return manifest


def last_good_checkpoint(run_dir: str | Path) -> str:
    """The newest checkpoint whose manifest says it is finite (not re-hashed), for messages."""
    for p in reversed(list_checkpoints(run_dir)):
        if _known_finite(p):
            return str(p)
    return "none (a rerun starts from step 0)"


# --- writing -----------------------------------------------------------------------------------


def save_checkpoint(run_dir: str | Path, step: int, *, models: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-XXXXXXX`` (complete or not at all), then prune to the newest ``keep`` (0 = keep all).

    Raises :class:`NonFiniteCheckpointError` (nothing written) when a weight or optimizer tensor is
    not finite, and :class:`CheckpointSpaceError` (nothing left behind) when the disk is full.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:07d}"
    flat = {f"{group}.{k}": v.detach() for group, sd in models.items() for k, v in sd.items()}
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        _flatten_optimizer(name, opt, opt_tensors, opt_meta)
    bad = first_nonfinite({**flat, **opt_tensors})
    if bad is not None:
        raise NonFiniteCheckpointError(
            f"refusing to write checkpoint {final.name}: '{bad}' holds NaN/inf; "
            f"last good checkpoint: {last_good_checkpoint(run_dir)} (lower the learning rates or "
            "optim.max_grad_norm, then rerun to resume from it)")
    needed = estimate_checkpoint_bytes(models, {})  # models exactly; optimizer tensors below
    needed += sum(v.numel() * v.element_size() for v in opt_tensors.values())
    good = last_good_checkpoint(run_dir)
    hint = f" (a rerun resumes from {good})" if good.startswith(str(run_dir)) else " (a rerun starts from step 0)"
    check_free_space(ckpt_root, needed, f"checkpoint {final.name}", resume_hint=hint)

    tmp = ckpt_root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.cpu().contiguous() for k, v in flat.items()}, str(tmp / "models.safetensors"))
        save_file({k: v.cpu().contiguous() for k, v in opt_tensors.items()}, str(tmp / "optim.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "optimizers": opt_meta}, indent=2, default=str))
        for name in DATA_FILES:
            fsync_file(tmp / name)
        _write_manifest(tmp, step)  # last: its presence means the folder is complete
        fsync_dir(tmp)
        old = None
        if final.exists():  # same step written again (a resumed run catching up): swap, then delete
            old = final.with_name(f".{final.name}.prune-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(err):
            raise CheckpointSpaceError(
                f"disk full while writing checkpoint {final.name} in {ckpt_root}: it needs {format_bytes(needed)}; "
                f"free space, lower train.keep_checkpoints or choose another train.output_dir{hint}") from None
        raise
    _VERIFIED.pop(str(final), None)
    prune_checkpoints(run_dir, keep, protect=final)
    return final


def prune_checkpoints(run_dir: str | Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (0 = keep all); return the deleted ones.

    Never deletes ``protect`` (the checkpoint just written) nor the newest checkpoint known to be
    finite (manifest ``finite: true``) when none of the kept ones is.
    """
    if keep <= 0:
        return []
    found = list_checkpoints(run_dir)
    kept, doomed = found[-keep:], found[:-keep]
    if protect is not None and protect in doomed:
        doomed.remove(protect)
    if not any(_known_finite(p) for p in kept):
        newest_finite = next((p for p in reversed(doomed) if _known_finite(p)), None)
        if newest_finite is not None:
            doomed.remove(newest_finite)
    for p in doomed:
        _retire(p)
        _VERIFIED.pop(str(p), None)
    return doomed


# --- finding and verifying ---------------------------------------------------------------------


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoints of a run (``step-*`` with a manifest or a state.json), oldest first.

    Temporary and half-pruned folders are ignored; whether a checkpoint is intact is
    :func:`verify_checkpoint`'s job.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if STEP_DIR.match(p.name) and p.is_dir()
            and ((p / MANIFEST).exists() or (p / "state.json").exists())]
    return sorted(done, key=step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete-looking checkpoint (not verified; see :func:`find_resume_checkpoint`)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _known_finite(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("finite") is True
    except (OSError, ValueError, AttributeError):
        return False


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged ({why}); use an earlier step-XXXXXXX folder "
                           "or delete this one")


def _check_safetensors(path: Path) -> None:
    """Header parses and the file is as long as the header says (catches truncation without hashing)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(path.parent, f"{path.name} is truncated")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise _damaged(path.parent, f"{path.name} is truncated")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise _damaged(path.parent, f"{path.name} has an unreadable header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise _damaged(path.parent, f"{path.name} has {size} bytes, its header describes {8 + n + end}")


# path -> ((name, size, mtime_ns), ...) of files already hashed in this process (one hash per load)
_VERIFIED: dict[str, tuple] = {}


def _fingerprint(path: Path) -> tuple:
    return tuple((n, (path / n).stat().st_size, (path / n).stat().st_mtime_ns) for n in (*DATA_FILES, MANIFEST))


def verify_checkpoint(path: str | Path) -> dict:
    """Check one ``step-XXXXXXX`` folder against its manifest; return the manifest.

    Raises :class:`CheckpointError` (one line: which file and what is wrong) for a missing or
    unreadable manifest entry, a missing file, a wrong size or a wrong SHA-256. A checkpoint
    written before manifests existed is checked structurally (state.json parses, safetensors
    lengths match their headers) and returned as ``{"legacy": True}`` with a warning.
    """
    p = Path(path)
    if not p.is_dir():
        raise MissingCheckpointError(f"checkpoint {p} does not exist: pass a run folder or a step-XXXXXXX folder")
    manifest_path = p / MANIFEST
    if not manifest_path.exists():
        missing = [n for n in DATA_FILES if not (p / n).is_file()]
        if missing:
            raise _damaged(p, f"{missing[0]} is missing")
        try:
            json.loads((p / "state.json").read_text())
        except (ValueError, UnicodeDecodeError):
            raise _damaged(p, "state.json is not valid JSON") from None
        for n in DATA_FILES[:2]:
            _check_safetensors(p / n)
        log.warning("checkpoint %s has no checksums (written by an older version): not verified", p)
        return {"legacy": True}
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        entries = {n: (int(files[n]["bytes"]), str(files[n]["sha256"])) for n in DATA_FILES}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _damaged(p, f"{MANIFEST} is unreadable") from None
    for name, (size, digest) in entries.items():
        f = p / name
        if not f.is_file():
            raise _damaged(p, f"{name} is missing")
        if f.stat().st_size != size:
            raise _damaged(p, f"{name} has {f.stat().st_size} bytes, expected {size}")
    fp = _fingerprint(p)
    if _VERIFIED.get(str(p)) == fp:
        return manifest
    for name, (_, digest) in entries.items():
        if file_sha256(p / name) != digest:
            raise _damaged(p, f"{name} fails its SHA-256 check")
    _VERIFIED[str(p)] = fp
    return manifest


_RESUME_HINT = "delete the damaged ones to start over, or set train.resume=false"


def find_resume_checkpoint(run_dir: str | Path, *, hint: str = _RESUME_HINT) -> Path | None:
    """The newest checkpoint of a run that verifies (None if there is none at all).

    Each newer checkpoint that fails is logged with the reason; if checkpoints exist but none
    verifies, raises :class:`CheckpointError` (ending with ``hint``, the fix) rather than silently starting over.
    """
    found = list_checkpoints(run_dir)
    reasons = []
    for p in reversed(found):
        try:
            verify_checkpoint(p)
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", p.name, err)
            reasons.append(f"{p.name}: {err}")
            continue
        return p
    if found:
        raise CheckpointError(f"no checkpoint of {run_dir} verifies ({'; '.join(reasons)}); {hint}")
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder (verified) or a run folder (-> its newest checkpoint that verifies)."""
    p = Path(path)
    if STEP_DIR.match(p.name) or (p / MANIFEST).exists() or (p / "state.json").exists():
        verify_checkpoint(p)
        return p
    found = find_resume_checkpoint(p, hint="retrain or restore the run (a reader cannot use a damaged "
                                   "checkpoint)") if p.is_dir() else None
    if found is None:
        raise MissingCheckpointError(
            f"no checkpoint in '{p}': pass a run folder with checkpoints/ or a step-XXXXXXX folder")
    return found


def read_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor], dict]:
    """-> (models grouped by prefix, flat optimizer tensors, state dict), verified first.

    Raises :class:`CheckpointError` in one line for a damaged or missing checkpoint.
    """
    p = resolve_checkpoint(path)
    try:
        flat = load_file(str(p / "models.safetensors"))
        opt_tensors = load_file(str(p / "optim.safetensors"))
        state = json.loads((p / "state.json").read_text())
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise _damaged(p, (str(err).strip().splitlines() or [type(err).__name__])[0]) from None
    models: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, rest = key.split(".", 1)
        if group == "ema":
            sub, rest = rest.split(".", 1)
            group = f"ema.{sub}"
        models.setdefault(group, {})[rest] = value
    return models, opt_tensors, state


def restore_optimizers(optimizers: dict[str, torch.optim.Optimizer], opt_tensors: dict, state: dict) -> None:
    for name, opt in optimizers.items():
        _unflatten_optimizer(name, opt, opt_tensors, state["optimizers"])


# --- start-up of a run: clean-up, resume, config changes -----------------------------------------


def clean_run_dir(run_dir: str | Path) -> list[str]:
    """Remove what killed processes of this run left behind; return a description of each action.

    Only names this package writes are touched: ``checkpoints/.step-*.tmp-<pid>`` (promoted to
    ``step-*`` when complete and the target is absent, deleted otherwise),
    ``checkpoints/.step-*.prune-<pid>``, ``checkpoints/step-*`` folders holding nothing but an
    incomplete subset of the checkpoint files (a half-deleted checkpoint of an older version), and
    ``atomic_path`` temporaries in the run folder and ``samples/``. Call it only while holding the
    run lock (:mod:`repae.training.runlock`), since a live writer's temporaries look the same.
    """
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    actions: list[str] = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if not p.is_dir():
                continue
            if m := TMP_DIR.match(p.name):
                final = root / m.group(1)
                if not final.exists() and (p / MANIFEST).exists():
                    try:
                        verify_checkpoint(p)
                        os.replace(p, final)
                        fsync_dir(root)
                        actions.append(f"recovered complete checkpoint {final.name} from {p.name}")
                        continue
                    except CheckpointError:
                        pass
                shutil.rmtree(p, ignore_errors=True)
                actions.append(f"removed dead temporary folder {p.name}")
            elif PRUNE_DIR.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                actions.append(f"removed half-deleted folder {p.name}")
            elif STEP_DIR.match(p.name) and not (p / MANIFEST).exists() and not (p / "state.json").exists():
                names = {c.name for c in p.iterdir()}
                if names <= OWN_FILES:
                    shutil.rmtree(p, ignore_errors=True)
                    actions.append(f"removed incomplete folder {p.name}")
        fsync_dir(root)
    for folder in (run_dir, run_dir / "samples"):
        actions += [f"removed dead temporary file {p.name}" for p in remove_dead_temp_files(folder)]
    for a in actions:
        log.info("%s: %s", run_dir, a)
    return actions
