"""One writer per run folder: ``<run>/train.lock``.

:func:`acquire_run_lock` takes an exclusive, non-blocking ``flock`` on the lock file and writes the
holder's pid, host and start time into it. A second ``repae train`` on the same folder stops with
one line naming the holder (:class:`RunLockedError`). The kernel drops the ``flock`` when the
holder dies however it dies (``kill -9`` included), so the lock of a dead process is taken over
atomically by the next ``train`` — the old pid/host is logged — with no window in which two
processes both hold it.

On a filesystem without ``flock`` (some network/FUSE mounts) the lock falls back to creating the
file exclusively; a lock whose holder is a dead process on this host is then taken over by an
atomic rename, and one held from another host must be removed by hand (the message says so).

Once it holds the lock, rank 0 removes what killed processes of this run left behind
(:func:`repae.training.checkpoint.clean_run_dir`). In a multi-process run only rank 0 locks;
every rank learns the outcome in one collective, so all ranks stop together (and none looks for a
checkpoint before the clean-up is done).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from repae.errors import ConfigError

log = logging.getLogger("repae.train")

LOCK_NAME = "train.lock"

# lock files this process holds: path -> open fd (a second acquire in the same process reuses it)
_HELD: dict[str, int] = {}


class RunLockedError(ConfigError):
    """Another live process is writing to this run folder."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    if not h:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"])) if "started" in h else "?"
    return f"pid {h.get('pid', '?')} on host {h.get('host', '?')} (since {since})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n"


def _locked_error(path: Path, holder: dict) -> RunLockedError:
    return RunLockedError(f"run folder {path.parent} is in use by {_describe(holder)}: wait for it to finish, "
                          f"stop it, or choose another train.exp_name")


class RunLock:
    """A held lock; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int | None, *, exclusive_file: bool = False):
        self.path = path
        self.fd = fd
        self.exclusive_file = exclusive_file  # fallback mode: the file's existence is the lock

    def release(self) -> None:
        if self.fd is None:
            return
        if _HELD.get(str(self.path)) == self.fd:
            del _HELD[str(self.path)]
            try:
                if self.exclusive_file:
                    self.path.unlink(missing_ok=True)
                else:
                    os.ftruncate(self.fd, 0)  # an empty file: nobody holds it (kept: flock needs one inode)
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _lock_exclusive_file(path: Path) -> int:
    """Fallback without flock: O_EXCL creation; a dead local holder's file is renamed away first."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            holder = _holder(path)
            local = holder.get("host") == socket.gethostname()
            dead = local and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])
            abandoned = not holder and time.time() - _mtime(path) > 5  # emptied by a released flock-mode lock
            if not (dead or abandoned):
                hint = "" if local else f" (if it is gone, delete {path})"
                raise RunLockedError(str(_locked_error(path, holder)) + hint) from None
            stale = path.with_name(f".{LOCK_NAME}.stale-{os.getpid()}")
            try:
                os.replace(path, stale)  # only one taker's rename finds the file
            except FileNotFoundError:
                continue
            if _holder(stale) != holder:  # someone else replaced it meanwhile: put theirs back
                os.replace(stale, path)
                raise _locked_error(path, _holder(path)) from None
            stale.unlink(missing_ok=True)
            log.warning("took over the stale lock of %s (not running)", _describe(holder))
            continue
        os.write(fd, _record().encode())
        os.fsync(fd)
        return fd
    raise _locked_error(path, _holder(path))


def _written_holder(path: Path, timeout: float = 1.0) -> dict:
    """The holder's record; a winner that has just locked may not have written it yet (it truncates,
    then writes), so an empty record is read again for up to ``timeout`` seconds before giving up."""
    deadline = time.monotonic() + timeout
    holder = _holder(path)
    while not holder and time.monotonic() < deadline:
        time.sleep(0.02)
        holder = _holder(path)
    return holder


def _flock_works(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # re-locking an fd we hold succeeds
        return True
    except OSError:
        return False


def _lock_main(run_dir: Path) -> RunLock:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    if str(path) in _HELD:  # this process already holds it (an earlier Trainer of the same run)
        return RunLock(path, _HELD[str(path)], exclusive_file=not _flock_works(_HELD[str(path)]))
    import fcntl

    try:
        fd, created = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
    except FileExistsError:
        fd, created = os.open(path, os.O_RDWR), False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _locked_error(path, _written_holder(path)) from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
        if created:  # we made the file exclusively: it is ours in the fallback scheme too
            os.write(fd, _record().encode())
            os.fsync(fd)
        else:
            os.close(fd)
            fd = _lock_exclusive_file(path)
        _HELD[str(path)] = fd
        return RunLock(path, fd, exclusive_file=True)
    previous = _holder(path)
    if previous and previous.get("pid") != os.getpid():
        log.warning("took over the stale lock of %s (not running)", _describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, _record().encode(), 0)
    os.fsync(fd)
    _HELD[str(path)] = fd
    return RunLock(path, fd)


def acquire_run_lock(run_dir: str | Path, engine=None) -> RunLock:
    """Make this process the only writer of ``run_dir`` (see the module docstring).

    Raises :class:`RunLockedError` (one line naming the holder's pid and host) when another live
    process holds it. With several processes, rank 0 locks and cleans, and all ranks raise together.
    """
    run_dir = Path(run_dir)
    distributed = engine is not None and engine.distributed
    is_main = engine is None or engine.is_main
    lock, error = None, None
    if is_main:
        try:
            lock = _lock_main(run_dir)
        except RunLockedError as err:
            error = err
        else:
            from repae.training.checkpoint import clean_run_dir

            clean_run_dir(run_dir)  # safe now: no other process writes this folder
    if distributed:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0.0 if error is None else 1.0], device=engine._coll_device)
        dist.all_reduce(flag)
        if float(flag.item()) > 0 and error is None:
            if lock is not None:
                lock.release()
            raise RunLockedError(f"run folder {run_dir} is in use by another process (rank 0 could not lock it): wait for "
                                 "it to finish, stop it, or choose another train.exp_name")
    if error is not None:
        raise error
    return lock if lock is not None else RunLock(run_dir / LOCK_NAME, None)
