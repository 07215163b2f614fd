"""Issue 24 item 4: a power cut after a checkpoint write loses nothing that was reported as saved.

A power loss drops what the page cache had not yet written: file data never fsynced and folder
entries (renames) whose parent folder was never fsynced. :class:`PageCache` models exactly that on
top of the real filesystem. It watches ``fsync_file`` / ``fsync_dir`` / ``os.replace`` while a
checkpoint is written, can *lose* one of those flushes (a crash between the write and its fsync, or
a disk that acknowledges a flush it did not do), and :meth:`PageCache.cut` then applies the loss:
unsynced files keep a torn prefix of their bytes, unsynced renames are undone. The run's start-up
path (``clean_run_dir`` under the run lock, then ``find_resume_checkpoint``) must pick the newest
checkpoint that is intact, never a torn one, and report what it skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

import repae.training.checkpoint as ck


class PageCache:
    """What survives a power cut: fsynced file data and fsynced folder entries (inode-level model)."""

    def __init__(self, monkeypatch, root: Path, *, lose: str | None = None):
        self.root, self.lose = root, lose
        self.durable: dict[int, int] = {}  # inode -> size at its last fsync
        self.pending_renames: list[tuple[Path, Path]] = []  # renames not yet made durable by fsync_dir
        for p in root.rglob("*"):  # what is on disk before the watched write counts as flushed
            if p.is_file():
                self.durable[p.stat().st_ino] = p.stat().st_size
        real_file, real_dir, real_replace = ck.fsync_file, ck.fsync_dir, os.replace

        def fsync_file(path):
            if Path(path).name == self.lose:  # the flush of this file never reaches the disk
                return
            real_file(path)
            st = os.stat(path)
            self.durable[st.st_ino] = st.st_size

        def fsync_dir(path):
            if self.lose == "rename" and Path(path) == self.root:  # the folder's new entry is not flushed
                return
            real_dir(path)
            self.pending_renames = [(a, b) for a, b in self.pending_renames if b.parent != Path(path)]

        def replace(src, dst):
            real_replace(src, dst)
            self.pending_renames.append((Path(src), Path(dst)))

        monkeypatch.setattr(ck, "fsync_file", fsync_file)
        monkeypatch.setattr(ck, "fsync_dir", fsync_dir)
        monkeypatch.setattr(os, "replace", replace)
        self._replace = real_replace

    def cut(self) -> None:
        """The power goes: undo unflushed renames (newest first), tear every unflushed file."""
        for src, dst in reversed(self.pending_renames):
            if dst.exists():
                self._replace(dst, src)
        for p in self.root.rglob("*"):
            if p.is_file() and self.durable.get(p.stat().st_ino) != p.stat().st_size:
                data = p.read_bytes()
                p.write_bytes(data[: len(data) // 2])  # the page cache had flushed only a prefix


def _save(run: Path, step: int) -> None:
    torch.manual_seed(step)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    ck.save_checkpoint(run, step, models={"sit": net.state_dict()}, optimizers={"sit": opt},
                       state={"step": step}, keep=0)


# (what the crash loses while step 2 is written, the checkpoint a restart must resume from)
CASES = [(None, 2), ("models.safetensors", 1), ("optim.safetensors", 1), ("state.json", 1),
         ("manifest.json", 1), ("rename", 2)]


@pytest.mark.parametrize("lose,resumes", CASES, ids=[str(c[0]) for c in CASES])
def test_power_cut_after_a_checkpoint_resumes_from_the_newest_intact_one(tmp_path, monkeypatch, caplog,
                                                                          lose, resumes):
    run = tmp_path / "run"
    _save(run, 1)
    cache = PageCache(monkeypatch, run / "checkpoints", lose=lose)
    _save(run, 2)  # save_checkpoint returned: the trainer believes step 2 is safe
    cache.cut()
    monkeypatch.undo()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    if lose == "rename":  # the folder is back under its temporary name: complete, so start-up recovers it
        assert any(n.startswith(".step-0000002.tmp-") for n in names) and "step-0000002" not in names
    else:
        assert names == ["step-0000001", "step-0000002"]
    actions = ck.clean_run_dir(run)  # start-up, under the run lock
    with caplog.at_level(logging.WARNING, logger="repae.checkpoint"):
        found = ck.find_resume_checkpoint(run)
    assert found is not None and ck.step_of(found) == resumes
    ck.read_checkpoint(found)  # loads: verified end to end
    if lose == "rename":
        assert any("recovered complete checkpoint step-0000002" in a for a in actions)
    if resumes == 1:  # the torn checkpoint was seen, skipped and said so
        assert "skipping checkpoint step-0000002" in caplog.text


def test_the_model_tears_what_was_not_flushed(tmp_path, monkeypatch):
    """The shim itself: an unflushed file loses bytes, a flushed one keeps them (the test above can fail)."""
    root = tmp_path / "c"
    root.mkdir()
    cache = PageCache(monkeypatch, root, lose="b.bin")
    for name in ("a.bin", "b.bin"):
        (root / name).write_bytes(b"x" * 100)
        ck.fsync_file(root / name)
    cache.cut()
    assert (root / "a.bin").stat().st_size == 100 and (root / "b.bin").stat().st_size == 50
