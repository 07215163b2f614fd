"""Issue 22 item 4: `repae cache-latents` on several processes writes the 1-process cache byte for byte,
resumes after a kill from its finished chunks, and refuses to finish a partial cache with other arguments."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repae.cli import main
from repae.errors import ConfigError

N = 40  # images; batch 4, chunk 8 -> 5 chunks
FILES = ("moments.npy", "labels.npy", "meta.json")


@pytest.fixture
def npz(tmp_path, monkeypatch):
    from repae.data import build_dataset

    monkeypatch.chdir(tmp_path)  # meta.json records the data spec as given: the same relative name in every run
    ds = build_dataset("embedded", resolution=32, split="train")
    np.savez(tmp_path / "subset.npz", arr_0=np.stack([ds[i][0].numpy().transpose(1, 2, 0) for i in range(N)]),
             labels=np.array([int(ds[i][1]) for i in range(N)], dtype=np.int64))
    return "subset.npz"


def _argv(out: str, *extra: str) -> list[str]:
    return ["cache-latents", "--vae", "repae-vae-fmnist", "--data", "subset.npz", "--resolution", "32", "--out", out,
            "--device", "cpu", "--batch-size", "4", "--chunk-size", "8", "--no-progress", *extra]


def _same_cache(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(FILES) == sorted(p.name for p in b.iterdir())
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _kill_after(monkeypatch, chunks: int) -> list[int]:
    """Make the next run die (KeyboardInterrupt, as a kill would stop it) right after its ``chunks``-th chunk file."""
    import repae.data.latent_cache as lc

    written, original = [], lc._write_chunk

    def write_then_die(path, moments, labels):
        original(path, moments, labels)
        written.append(int(path.stem))
        if len(written) == chunks:
            raise KeyboardInterrupt

    monkeypatch.setattr(lc, "_write_chunk", write_then_die)
    return written


def test_killed_run_resumes_from_its_chunks_and_equals_an_uninterrupted_one(npz, tmp_path, monkeypatch):
    import repae.data.latent_cache as lc
    from repae.tokenizer.tokenizer import Tokenizer

    assert main(_argv("whole")) == 0
    original = lc._write_chunk
    _kill_after(monkeypatch, 2)
    assert main(_argv("cut")) == 130  # `repae: interrupted`
    monkeypatch.setattr(lc, "_write_chunk", original)
    partial = tmp_path / ".cut.partial"
    assert not (tmp_path / "cut").exists() and sorted(p.name for p in (partial / "chunks").iterdir()) == [
        "000000.npz", "000001.npz"]
    (partial / "chunks" / "000002.npz.tmp-12345").write_bytes(b"half a chunk")  # a writer killed mid-file
    damaged = partial / "chunks" / "000001.npz"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # a chunk file cut short (a disk fault): encoded again
    encoded = []
    real_encode = Tokenizer.encode
    monkeypatch.setattr(Tokenizer, "encode", lambda self, x: encoded.append(len(x)) or real_encode(self, x))
    assert main(_argv("cut")) == 0
    assert sum(encoded) == N - 8  # the intact finished chunk was not encoded again
    assert not partial.exists()
    _same_cache(tmp_path / "whole", tmp_path / "cut")


def test_a_partial_cache_is_finished_only_with_its_own_arguments(npz, tmp_path, monkeypatch, capsys):
    import repae.data.latent_cache as lc

    original = lc._write_chunk
    _kill_after(monkeypatch, 1)
    assert main(_argv("cut")) == 130  # `repae: interrupted`
    monkeypatch.setattr(lc, "_write_chunk", original)
    capsys.readouterr()
    assert main(_argv("cut", "--batch-size", "8", "--chunk-size", "16")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("repae ")]
    assert len(err) == 1 and ".cut.partial" in err[0] and "batch_size: 4 then, 8 now" in err[0], err
    assert "delete" in err[0] and "chunk_size: 8 then, 16 now" in err[0]
    with pytest.raises(ConfigError, match="multiple of --batch-size 4"):
        from repae.data import build_dataset
        from repae.tokenizer.tokenizer import Tokenizer

        lc.cache_latents(Tokenizer.from_preset("tiny-f4d4"), build_dataset("subset.npz", resolution=32), "x",
                         batch_size=4, chunk_size=6)
    assert main(_argv("cut")) == 0 and (tmp_path / "cut" / "meta.json").is_file()


def test_a_failure_before_the_first_chunk_leaves_nothing(npz, tmp_path, monkeypatch):
    from repae.tokenizer.tokenizer import Tokenizer

    def broken(self, x):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(Tokenizer, "encode", broken)
    assert main(_argv("cache")) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["subset.npz"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, out: str) -> None:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "repae.cli", *_argv(out)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("cached 40 latents") == 1  # rank 0 reports


@pytest.mark.slow  # two torchrun launches of two interpreters each: ~90 s on a loaded 2-core machine
def test_two_gloo_processes_write_the_one_process_cache_and_resume_a_one_process_one(npz, tmp_path, monkeypatch):
    import repae.data.latent_cache as lc

    assert main(_argv("one")) == 0  # one process, one thread (conftest), as torchrun's workers
    _torchrun(tmp_path, "two")
    _same_cache(tmp_path / "one", tmp_path / "two")

    original = lc._write_chunk
    _kill_after(monkeypatch, 3)  # a 1-process run killed after 3 of 5 chunks ...
    assert main(_argv("cut")) == 130  # `repae: interrupted`
    monkeypatch.setattr(lc, "_write_chunk", original)
    _torchrun(tmp_path, "cut")  # ... is finished by 2 processes (one chunk each)
    _same_cache(tmp_path / "one", tmp_path / "cut")
