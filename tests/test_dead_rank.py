"""Issue 24 item 1: a node that dies mid-run stops the job everywhere, fast, and loses nothing.

Two one-process ``torchrun`` "nodes" on loopback (static rendezvous, gloo) train the tiny preset.
Node 1 (its agent and worker, the whole process group) is killed with SIGKILL at a random step;
node 0 must exit non-zero within ``train.dist_timeout_min`` (here 1 min; in practice gloo sees the
closed sockets at once), leaving only complete checkpoints. Both nodes started again resume and
end bit-identical to a run that was never interrupted. Slow: it spawns 6 torchrun processes.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repae.training.checkpoint import list_checkpoints, verify_checkpoint

pytestmark = pytest.mark.slow

STEPS = 8
OVERRIDES = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "tokenizer.stats_images=32",
    "align.depth=2", "train.batch_size=8", f"train.max_steps={STEPS}", "train.log_every=1",
    "train.checkpoint_every=2", "train.keep_checkpoints=0", "train.sample_every=0", "train.diagnostics_every=0",
    "train.final_eval_samples=0", "train.html_report=false", "train.report_to=none", "train.dist_timeout_min=1",
    "train.exp_name=run",
]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
BOUND_S = 60.0  # = train.dist_timeout_min


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, launcher: list[str], name: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [TORCHRUN, *launcher, "-m", "repae.cli", "train", "--config", "tiny-fmnist", "--no-export", *OVERRIDES,
           f"train.output_dir={out}"]
    log = open(out.parent / f"{out.name}-{name}.log", "ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _launch(out: Path, port: int) -> list[subprocess.Popen]:
    """Two one-process nodes on loopback (static rendezvous), no restarts."""
    return [_torchrun(out, ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}", "--master_addr=127.0.0.1",
                            f"--master_port={port}", "--max_restarts=0"], f"node{node}") for node in (0, 1)]


def _wait_ok(procs: list[subprocess.Popen], out: Path) -> None:
    for node, p in enumerate(procs):
        rc = p.wait(timeout=900)
        assert rc == 0, (rc, [p.read_text()[-3000:] for p in sorted(out.parent.glob(f"{out.name}-*.log"))])


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in their own sessions)."""
    children = _children()
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _logged_steps(run: Path) -> int:
    f = run / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _final_models(run: Path) -> dict[str, torch.Tensor]:
    (last,) = [p for p in list_checkpoints(run) if p.name.endswith(f"{STEPS:07d}")]
    return load_file(str(last / "models.safetensors"))


def test_a_dead_node_stops_the_job_fast_and_the_rerun_is_bit_exact(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _wait_ok(_launch(whole, _free_port()), whole)

    kill_at = random.Random(os.environ.get("REPAE_FAULT_SEED")).randint(3, STEPS - 2)
    procs = _launch(cut, _free_port())
    deadline = time.monotonic() + 900
    while _logged_steps(cut / "run") < kill_at:
        assert time.monotonic() < deadline and procs[0].poll() is None, "the run did not reach the kill step"
        time.sleep(0.2)
    _kill_tree(procs[1].pid)  # node 1: its torchrun agent and its worker
    t0 = time.monotonic()
    rc = procs[0].wait(timeout=BOUND_S + 60)
    stopped_after = time.monotonic() - t0
    procs[1].wait()
    assert rc != 0, "node 0 must fail when its peer is gone"
    assert stopped_after < BOUND_S, f"node 0 took {stopped_after:.0f} s to stop (bound {BOUND_S:.0f} s)"
    for ckpt in list_checkpoints(cut / "run"):  # every checkpoint left is complete
        verify_checkpoint(ckpt)

    _wait_ok(_launch(cut, _free_port()), cut)  # both nodes again: resume from the newest checkpoint
    a, b = _final_models(whole / "run"), _final_models(cut / "run")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {kill_at}: the resumed run differs"


def test_an_elastic_restart_resumes_bit_exact(tmp_path):
    """``torchrun --max-restarts``: a worker killed mid-run makes the agent restart both workers; they
    resume from the newest verified checkpoint (the restarted rank 0 takes the run lock again) and end
    bit-identical to an uninterrupted run."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    single = ["--nnodes=1", "--nproc_per_node=2", "--max_restarts=3"]  # one kill; spare restarts for a loaded machine
    _wait_ok([_torchrun(whole, [*single, f"--master_port={_free_port()}"], "agent")], whole)

    kill_at = random.Random(os.environ.get("REPAE_FAULT_SEED")).randint(3, STEPS - 2)
    agent = _torchrun(cut, [*single, f"--master_port={_free_port()}"], "agent")
    deadline = time.monotonic() + 900
    while _logged_steps(cut / "run") < kill_at:
        assert time.monotonic() < deadline and agent.poll() is None, "the run did not reach the kill step"
        time.sleep(0.2)
    workers = _children().get(agent.pid, [])
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # one worker dies; the agent restarts the group once
    _wait_ok([agent], cut)
    log = (tmp_path / "cut-agent.log").read_text()
    assert "resumed from" in log, log[-2000:]  # the restarted workers continued, they did not start over
    a, b = _final_models(whole / "run"), _final_models(cut / "run")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {kill_at}: the restarted run differs"
