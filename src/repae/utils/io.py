"""Atomic, durable writes: every file the package produces appears complete or not at all.

``atomic_path`` writes to a temporary file in the target folder, fsyncs it, renames it onto the
target and fsyncs the folder, so after a crash or power loss the target holds either the old or
the new content, never a torn or empty file. Temporary files are named
``.<target name>.<8 random chars>.tmp`` (:data:`TEMP_FILE`) so leftovers of a killed process can
be recognised and removed by the process that owns the folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` on success.

    The rename is atomic on POSIX, so readers never see a half-written file. On error the
    temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


# what ``atomic_path`` leaves behind when its process is killed mid-write (mkstemp: 8 of [a-z0-9_])
TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

# errors that mean "the disk (or the quota, or the file-size limit) is full"
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data to the device."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, creations, deletions) to the device.

    Without it a power loss can leave a renamed-but-empty or missing entry even though the file
    data was fsynced. A no-op where folders cannot be opened (Windows).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on folders; the data is still written
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` (or an error it wraps) is a full disk / quota / file-size limit."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return True
        # libraries that wrap the OS error in their own type (safetensors: "... (os error 28)")
        if (m := re.search(r"os error (\d+)", str(err))) and int(m.group(1)) in NO_SPACE_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return False


def remove_dead_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete ``atomic_path`` leftovers directly inside ``folder``; return what was removed.

    Only call this on a folder whose single writer is the caller (e.g. while holding the run
    lock): a live writer's temporary file matches the same pattern.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if TEMP_FILE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def truncate_jsonl(path: str | os.PathLike, max_step: int, key: str = "step") -> int:
    """Keep only the records of a JSON-lines log with ``record[key] <= max_step``; return how many
    lines were dropped (later steps, and torn or unparsable lines from a killed writer).

    Used on resume so a log matches the checkpoint it continues from: steps after the checkpoint
    are written again by the resumed run and must not appear twice. Rewritten atomically.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and int(rec[key]) <= max_step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))
    return dropped


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 8 MiB blocks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Save a flat ``{name: tensor}`` dict as safetensors, atomically (tensors made contiguous)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.chmod(tmp, mode)  # safetensors re-creates the file; keep the mode atomic_path chose


def check_output_path(path: str | os.PathLike, *, folder: bool, what: str, suffix: str | None = None) -> Path:
    """Refuse, before any work, an output path that cannot be written as the kind asked for.

    ``folder=False``: ``path`` must not be an existing folder; ``folder=True``: it must not be an existing
    file. Either way no existing ancestor may be a file (``mkdir`` would fail after the work is done).
    ``suffix`` (e.g. ``".npz"``): the file name must end with it, because the verbs that read the file
    back choose their reader by suffix. ``what`` names the flag in the one-line error (e.g. ``"--out-npz"``).
    """
    from repae.errors import ConfigError

    if not str(path).strip():
        raise ConfigError(f"{what} is empty: give a {'folder' if folder else 'file'} path")
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file: give a folder path")
    if not folder and path.is_dir():
        raise ConfigError(f"{what} {path} is a folder: give a file path (inside it, say)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} is a file, not a folder; give a path under a folder")
            break
    if suffix is not None and path.suffix.lower() != suffix:
        raise ConfigError(f"{what} {path} must end in {suffix} (the readers pick the format by suffix): "
                          f"give e.g. {path.with_suffix(suffix)}")
    return path
