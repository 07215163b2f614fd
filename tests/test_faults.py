"""Fault injection (issue 14, slow): real processes killed with SIGKILL at chosen and random points,
damaged checkpoints, NaN losses, full disks, two writers, bad inputs — and what survives.

Every case trains the same tiny REPA-E run (VAE, discriminator and SiT phases; 4 steps, a
checkpoint every step, rotation keeping 2) in a subprocess through ``repae train`` and compares the
final checkpoint, tensor by tensor, with an uninterrupted reference run: "survived" means
bit-identical weights, optimizer states and logged losses, one record per step in metrics.jsonl,
the final grid present, nothing left behind. docs/reliability.md tabulates the cases.

This file is also the fault driver: ``python tests/test_faults.py RUN_ROOT [overrides...]`` trains
with the fault named by ``REPAE_FAULT`` (see :func:`_install_fault`). The tests start each run from
a *zygote* (``python tests/test_faults.py --zygote``): a process that has imported torch, timm and
diffusers once and forks a fresh child per run, so a run costs its training, not 8 s of imports.
The children are ordinary processes: killed with SIGKILL, limited with RLIMIT_FSIZE, racing for
the lock.

    pytest -m slow tests/test_faults.py        # ~2 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
STEPS = 4
OVERRIDES = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "align.depth=2",
    "tokenizer.stats_images=32", "train.batch_size=8", "train.report_to=none", "train.log_every=1",
    f"train.max_steps={STEPS}", "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.sample_every=1000",
    "train.diagnostics_every=0", "train.html_report=false", "sample.num_images=4", "sample.num_steps=2",
]


# --- the driver (runs in the child process) ---------------------------------------------------------


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(spec: str) -> None:
    """``REPAE_FAULT`` = ``kind[:arg]``:

    * ``write:N``    SIGKILL inside the N-th checkpoint write, after models.safetensors, before the rest;
    * ``rename:N``   SIGKILL after the N-th checkpoint is complete (manifest fsynced), before its rename;
    * ``rotate:N``   SIGKILL inside the N-th rotation, with the old checkpoint renamed and half-deleted;
    * ``final``      SIGKILL right after the last checkpoint (rotation done), before the run ends;
    * ``nan:a,b,..`` the SiT loss is NaN at these 1-based steps (of a run started from step 0);
    * ``slow:S``     sleep S seconds in every step (numerics unchanged).
    """
    from repae.training import checkpoint as ck
    from repae.training import phases

    kind, _, arg = spec.partition(":")
    count = {"n": 0}

    def nth() -> bool:
        count["n"] += 1
        return count["n"] == int(arg)

    if kind == "write":
        real_save = ck.save_file

        def save_file(tensors, path, *a, **k):
            real_save(tensors, path, *a, **k)
            if path.endswith("models.safetensors") and nth():
                _die()

        ck.save_file = save_file
    elif kind == "rename":
        real_manifest = ck._write_manifest

        def write_manifest(folder, step):
            out = real_manifest(folder, step)
            if nth():
                _die()
            return out

        ck._write_manifest = write_manifest
    elif kind == "rotate":
        real_rmtree = shutil.rmtree

        def rmtree(path, *a, **k):
            p = Path(path)
            if ".prune-" in p.name and p.exists() and nth():
                for f in sorted(p.iterdir())[:2]:  # half of it gone, then the kill
                    f.unlink()
                _die()
            return real_rmtree(path, *a, **k)

        ck.shutil.rmtree = rmtree
    elif kind == "final":
        real_prune = ck.prune_checkpoints

        def prune(run_dir, keep, *, protect=None):
            out = real_prune(run_dir, keep, protect=protect)
            if protect is not None and protect.name == f"step-{STEPS:07d}":
                _die()
            return out

        ck.prune_checkpoints = prune
    elif kind == "nan":
        bad = {int(s) for s in arg.split(",")}
        real_sit = phases.sit_phase
        state = {"calls": 0}

        def sit_phase(ctx, *a, **k):
            out = real_sit(ctx, *a, **k)
            state["calls"] += 1  # one SiT phase per step (grad_accum = 1)
            if state["calls"] in bad:
                out.loss = out.loss * float("nan")
                out.metrics = {**out.metrics, "sit_loss": out.loss.detach()}
            return out

        phases.sit_phase = sit_phase
    elif kind == "slow":
        real_vae = phases.vae_phase

        def vae_phase(*a, **k):
            time.sleep(float(arg))
            return real_vae(*a, **k)

        phases.vae_phase = vae_phase
    elif kind:
        raise SystemExit(f"unknown REPAE_FAULT {spec!r}")


def _driver(argv: list[str]) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    _install_fault(os.environ.get("REPAE_FAULT", ""))
    from repae.cli import main

    root, overrides = argv[0], argv[1:]
    return main(["train", "--config", "tiny-fmnist", "--no-export", *OVERRIDES, f"train.output_dir={root}", *overrides])


def _zygote() -> None:
    """Import once, then fork one child per ``run`` command read from stdin (JSON lines)."""
    import traceback

    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL  # noqa: F401  (diffusers imports lazily)

    import repae.analysis.health  # noqa: F401
    import repae.analysis.report  # noqa: F401
    import repae.api  # noqa: F401
    import repae.cli.train  # noqa: F401
    import repae.encoders  # noqa: F401
    import repae.sampling.preview  # noqa: F401
    import repae.training.trainer  # noqa: F401

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
            continue
        pid = os.fork()
        if pid:
            print(json.dumps({"pid": pid}), flush=True)
            continue
        rc = 1
        try:  # the child
            os.environ.update(cmd["env"])
            for res, value in cmd["limits"]:
                resource.setrlimit(res, (value, value))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG
            for fd, name in ((1, "out"), (2, "err")):
                os.dup2(os.open(cmd[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            rc = _driver(cmd["argv"])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        _zygote()
    else:
        sys.exit(_driver(sys.argv[1:]))


# --- the tests (parent process) ---------------------------------------------------------------------

pytestmark = pytest.mark.slow


class Run:
    """One training process forked by the zygote."""

    def __init__(self, zygote: Zygote, pid: int, logs: Path):
        self.zygote, self.pid, self.logs = zygote, pid, logs
        self.returncode: int | None = None

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> Run:
        if self.returncode is None:
            self.returncode = self.zygote.ask({"op": "wait", "pid": self.pid})["returncode"]
            self.stdout = (self.logs / "out").read_text(errors="replace")
            self.stderr = (self.logs / "err").read_text(errors="replace")
        return self


class Zygote:
    def __init__(self, tmp: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
        self.tmp, self.count = tmp, 0
        self.proc = subprocess.Popen([sys.executable, str(HERE), "--zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert "ready" in json.loads(self.proc.stdout.readline())

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], fault: str = "", limit: dict | None = None) -> Run:
        self.count += 1
        logs = self.tmp / f"run-{self.count}"
        logs.mkdir()
        pid = self.ask({"op": "run", "argv": argv, "env": {"REPAE_FAULT": fault},
                        "limits": list((limit or {}).items()), "out": str(logs / "out"), "err": str(logs / "err")})
        return Run(self, pid["pid"], logs)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module", autouse=True)
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    ZYGOTE[:] = [z]
    yield z
    z.close()


def train(root: Path, *overrides: str, fault: str = "", limit: dict | None = None, background: bool = False):
    """Train in a fresh child process; returns the finished :class:`Run` (or the running one)."""
    run = ZYGOTE[0].start([str(root), *overrides], fault=fault, limit=limit)
    return run if background else run.wait()


ZYGOTE: list[Zygote] = []


def run_dir(root: Path) -> Path:
    return root / "repae-tiny-fmnist"


def final_state(root: Path) -> dict:
    import torch

    from repae.training.checkpoint import read_checkpoint

    models, opt, state = read_checkpoint(run_dir(root) / "checkpoints" / f"step-{STEPS:07d}")
    flat = {f"{g}.{k}": v for g, sd in models.items() for k, v in sd.items()}
    flat.update({f"optim.{k}": v for k, v in opt.items()})
    flat["scaler"] = torch.tensor([hash(json.dumps(state.get("scalers"), sort_keys=True))])
    return flat


def logged(root: Path) -> list[dict]:
    lines = (run_dir(root) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "img_per_s"} for x in lines]


def leftovers(root: Path) -> list[str]:
    rd = run_dir(root)
    return sorted(str(p.relative_to(rd)) for p in rd.rglob(".*") if p.name != ".")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    done = train(root)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def assert_same_as_reference(root: Path, reference: Path) -> None:
    import torch

    a, b = final_state(reference), final_state(root)
    assert a.keys() == b.keys()
    diverged = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diverged, f"resume is not bit-exact: {diverged[:5]}"
    assert logged(root) == logged(reference), "metrics.jsonl differs (duplicated, missing or different steps)"
    assert (run_dir(root) / "samples" / f"step-{STEPS:07d}.png").exists(), "final grid missing"
    assert leftovers(root) == [], leftovers(root)
    assert sorted(p.name for p in (run_dir(root) / "checkpoints").iterdir()) == [f"step-{STEPS - 1:07d}", f"step-{STEPS:07d}"]


def killed(result) -> bool:
    return result.returncode == -signal.SIGKILL


def one_line_error(result) -> str:
    err = re.findall(r"repae train: error: [^\r\n]*", result.stderr)  # (tqdm's bar may precede it on the line)
    assert result.returncode == 2 and len(err) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return err[0]


def test_kills_at_chosen_points_resume_bit_exact(reference, tmp_path):
    """One run killed five times — inside a checkpoint write, between its fsync and rename, inside
    the rotation, after the last checkpoint — and its newest checkpoint truncated; each rerun resumes."""
    ckpts = run_dir(tmp_path) / "checkpoints"
    r = train(tmp_path, fault="write:2")  # inside the write of step 2
    assert killed(r) and any(p.name.startswith(".step-0000002.tmp-") for p in ckpts.iterdir())
    r = train(tmp_path, fault="rename:1")  # step 2 complete but not renamed: promoted at the next start
    assert killed(r) and any(p.name.startswith(".step-0000002.tmp-") for p in ckpts.iterdir())
    r = train(tmp_path, fault="rotate:1")  # step 3 written, step 1 renamed and half-deleted
    assert killed(r), r.stderr[-2000:]
    assert "recovered complete checkpoint step-0000002" in r.stderr
    assert any(p.name.startswith(".step-0000001.prune-") for p in ckpts.iterdir())
    r = train(tmp_path, fault="final")  # after the last checkpoint, before the end of the run
    assert killed(r)
    (run_dir(tmp_path) / "samples" / f"step-{STEPS:07d}.png").unlink()  # as a grid written after it would be
    r = train(tmp_path)  # nothing left to train: the final grid is still written
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_as_reference(tmp_path, reference)
    newest = ckpts / f"step-{STEPS:07d}" / "optim.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated newest checkpoint
    r = train(tmp_path)
    assert r.returncode == 0 and "skipping checkpoint step-0000004" in r.stderr, r.stderr[-2000:]
    assert_same_as_reference(tmp_path, reference)


def test_kills_at_random_times_resume_bit_exact(reference, tmp_path):
    seed = int(os.environ.get("REPAE_FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    upper = 6.0  # building takes ~2 s, each step ~1 s incl. its checkpoint
    for attempt in range(4):  # a draw after the end of the run kills nothing: retry in a fresh folder, sooner
        root = tmp_path / f"try{attempt}"
        kills = 0
        for _ in range(2):
            proc = train(root, background=True)
            time.sleep(rng.uniform(0.5, upper))
            proc.kill()
            kills += proc.wait().returncode == -signal.SIGKILL
        if kills:
            break
        upper = max(1.0, upper / 2)
    assert kills >= 1, f"no kill landed in 4 tries (REPAE_FAULT_SEED={seed})"
    r = train(root)
    assert r.returncode == 0, (seed, r.stderr[-2000:])
    assert_same_as_reference(root, reference), f"REPAE_FAULT_SEED={seed}"


def test_nan_losses_skip_then_halt_without_losing_checkpoints(tmp_path):
    r = train(tmp_path, "train.max_nonfinite_skips=2", "train.max_steps=3", fault="nan:2")  # skipped, run goes on
    assert r.returncode == 0 and "step 2: non-finite sit_loss" in r.stderr, r.stderr[-2000:]
    records = logged(tmp_path)
    assert [x["step"] for x in records] == [1, 2, 3] and records[-1]["nonfinite_skips"] == 1.0
    shutil.rmtree(run_dir(tmp_path))
    r = train(tmp_path, "train.max_nonfinite_skips=2", fault="nan:2,3,4")
    line = one_line_error(r)  # step 2 skipped (its checkpoint holds the unchanged step-1 weights), step 3 halts
    assert "halted at step 3" in line and "sit_loss" in line and "step-0000002" in line
    from repae.training.checkpoint import list_checkpoints, read_checkpoint, verify_checkpoint

    assert [p.name for p in list_checkpoints(run_dir(tmp_path))] == ["step-0000001", "step-0000002"]
    import torch

    one, two = (read_checkpoint(run_dir(tmp_path) / "checkpoints" / f"step-{s:07d}")[0] for s in (1, 2))
    for group in ("sit", "vae", "disc", "ema.model"):  # the skipped step changed no weight
        assert all(torch.equal(one[group][k], two[group][k]) for k in one[group]), group
    assert verify_checkpoint(run_dir(tmp_path) / "checkpoints" / "step-0000002")["finite"] is True


def test_file_size_limit_inside_a_checkpoint_write(reference, tmp_path):
    """The disk 'fills' in the middle of optim.safetensors (RLIMIT_FSIZE -> EFBIG, as ENOSPC would)."""
    r = train(tmp_path, limit={resource.RLIMIT_FSIZE: 60 * 2**20})  # models (55 MB) fit, optim (70 MB) does not
    line = one_line_error(r)
    assert "disk full while writing checkpoint step-0000001" in line and "needs" in line
    assert leftovers(tmp_path) == [] and not (run_dir(tmp_path) / "checkpoints" / "step-0000001").exists()
    r = train(tmp_path)  # space is back: the rerun succeeds
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_as_reference(tmp_path, reference)


def _mount_tmpfs(path: Path, size_mb: int, *, remount: bool = False) -> bool:
    opts = f"size={size_mb}m" + (",remount" if remount else "")
    cmd = ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)] if not remount else \
        ["mount", "-o", opts, str(path)]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_tiny_filesystem_fills(reference, tmp_path):
    """A 300 MB tmpfs holds two checkpoints but not the third one rotation needs room for."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(disk, 300):
        pytest.skip("needs root to mount a tmpfs (the RLIMIT_FSIZE case covers the write path)")
    try:
        r = train(disk)
        line = one_line_error(r)
        assert "no space for checkpoint step-0000003" in line and "step-0000002" in line
        assert re.search(r"needs \d+\.\d MB, \d+\.\d MB free", line), line
        assert leftovers(disk) == []
        assert _mount_tmpfs(disk, 600, remount=True)
        r = train(disk)
        assert r.returncode == 0, r.stderr[-2000:]
        assert_same_as_reference(disk, reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_two_concurrent_writers(reference, tmp_path):
    # started together; one is slowed (1 s a step) so their training would overlap whoever locks first
    a, b = train(tmp_path, fault="slow:1", background=True), train(tmp_path, background=True)
    err_a, err_b = a.wait().stderr, b.wait().stderr
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (codes, err_a[-1500:], err_b[-1500:])
    loser = err_a if a.returncode == 2 else err_b
    lines = re.findall(r"repae train: error: [^\r\n]*", loser)
    assert len(lines) == 1 and "is in use by pid" in lines[0] and "Traceback" not in loser
    assert_same_as_reference(tmp_path, reference)


@pytest.mark.parametrize("argv,needle", [
    (["train", "optim.ema_decay=2"], "optim.ema_decay"),
    (["train", "train.checkpoint_every=0"], "train.checkpoint_every"),
    (["train", "train.max_nonfinite_skips=-1"], "max_nonfinite_skips"),
    (["export-vae", "{ckpt}", "--out", "{tmp}/out"], "damaged"),
    (["export-vae", "{tmp}/nothing-here", "--out", "{tmp}/out"], "no checkpoint"),
    (["sample", "--checkpoint", "{ckpt}", "--num-samples", "2", "--out-npz", "{tmp}/s.npz"], "damaged"),
    (["sample", "--checkpoint", "{tmp}", "--num-samples", "2", "--out-npz", "{tmp}/s.npz"], "no checkpoint"),
])
def test_bad_inputs_are_one_line(reference, tmp_path, capsys, argv, needle):
    from repae.cli import main

    ckpt = tmp_path / "step-0000004"
    shutil.copytree(run_dir(reference) / "checkpoints" / "step-0000004", ckpt)
    (ckpt / "models.safetensors").write_bytes((ckpt / "models.safetensors").read_bytes()[:-7] + b"garbage")
    argv = [a.format(ckpt=ckpt, tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv = [*argv, f"train.output_dir={tmp_path}"]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0] and not (tmp_path / "out").exists() and not (tmp_path / "s.npz").exists()
