"""Reliability (issue 14): non-finite guard, checkpoint integrity and clean-up, logs that match the
checkpoint, one writer per run folder, config that cannot be silently wrong.

Fast: checkpoint mechanics use a few small tensors; the trainer-level checks share one tiny run.
The kill/corruption/full-disk cases with real subprocesses are in tests/test_faults.py (slow).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repae.config import check_ranges, load_config
from repae.errors import ConfigError
from repae.training import checkpoint as ck
from repae.training import phases, resume
from repae.training.guard import NonFiniteError
from repae.training.runlock import RunLockedError, acquire_run_lock
from repae.utils.io import truncate_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from test_training import TINY, batch, make_trainer  # noqa: E402

# --- checkpoint mechanics on small tensors ----------------------------------------------------------


def small_checkpoint(run: Path, step: int, *, keep: int = 0, value: float = 1.0) -> Path:
    p = torch.nn.Parameter(torch.full((4, 4), value))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    models = {"sit": {"w": p.detach().clone()}, "vae": {"w": p.detach() * 2}, "ema": {"model.w": p.detach().clone()}}
    return ck.save_checkpoint(run, step, models=models, optimizers={"opt_sit": opt},
                              state={"step": step, "config": {}}, keep=keep)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text, text
    return text


def test_checkpoint_has_a_manifest_and_verifies(tmp_path):
    path = small_checkpoint(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == set(ck.DATA_FILES) and manifest["finite"] is True
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (path / name).stat().st_size and len(entry["sha256"]) == 64
    assert ck.verify_checkpoint(path)["step"] == 1
    models, opt, state = ck.read_checkpoint(path)
    assert set(models) == {"sit", "vae", "ema.model"} and models["vae"]["w"].shape == (4, 4)
    assert state["step"] == 1 and "opt_sit.0.exp_avg" in opt
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_checkpoint_is_one_line(tmp_path, damage):
    path = small_checkpoint(tmp_path, 1)
    target = path / "models.safetensors"
    if damage == "flip":  # a byte inside the tensor data: safetensors alone would load it silently
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:50])
    elif damage == "delete":
        target.unlink()
    else:
        (path / "manifest.json").write_text("{not json")
    ck._VERIFIED.clear()
    for call in (ck.verify_checkpoint, ck.read_checkpoint):
        with pytest.raises(ck.CheckpointError) as info:
            call(path)
        assert "damaged" in one_line(info.value) and str(path) in str(info.value)


def test_legacy_checkpoint_without_manifest_is_checked_structurally(tmp_path, caplog):
    path = small_checkpoint(tmp_path, 1)
    (path / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert ck.verify_checkpoint(path) == {"legacy": True}
    assert "no checksums" in caplog.text
    optim = path / "optim.safetensors"
    optim.write_bytes(optim.read_bytes()[:-10])
    with pytest.raises(ck.CheckpointError, match="optim.safetensors"):
        ck.verify_checkpoint(path)


def test_resume_takes_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    for step in (1, 2, 3):
        small_checkpoint(tmp_path, step)
    newest = tmp_path / "checkpoints" / "step-0000003"
    (newest / "optim.safetensors").write_bytes(b"\0" * 10)
    ck._VERIFIED.clear()
    with caplog.at_level(logging.WARNING):
        assert ck.find_resume_checkpoint(tmp_path).name == "step-0000002"
    assert "skipping checkpoint step-0000003" in caplog.text and "optim.safetensors" in caplog.text
    assert ck.resolve_checkpoint(tmp_path).name == "step-0000002"  # sample/evaluate on the run folder
    for step in (1, 2):
        (tmp_path / "checkpoints" / f"step-{step:07d}" / "state.json").write_text("{}")
    ck._VERIFIED.clear()
    with pytest.raises(ck.CheckpointError, match="no checkpoint of .* verifies"):
        ck.find_resume_checkpoint(tmp_path)
    with pytest.raises(ck.MissingCheckpointError):
        ck.resolve_checkpoint(tmp_path / "nowhere")


def test_refuses_to_write_non_finite_weights(tmp_path):
    small_checkpoint(tmp_path, 1)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p])
    bad = {"sit": {"w": torch.tensor([0.0, float("nan"), 1.0])}}
    with pytest.raises(ck.NonFiniteCheckpointError) as info:
        ck.save_checkpoint(tmp_path, 2, models=bad, optimizers={"opt_sit": opt}, state={"step": 2})
    text = one_line(info.value)
    assert "sit.w" in text and "step-0000001" in text  # names the tensor and the last good checkpoint
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]


def test_rotation_keeps_the_newest_finite_checkpoint(tmp_path):
    for step in (1, 2, 3):
        small_checkpoint(tmp_path, step)
    for step in (2, 3):  # e.g. written by an older version: not known to be finite
        m = tmp_path / "checkpoints" / f"step-{step:07d}" / "manifest.json"
        m.write_text(json.dumps({**json.loads(m.read_text()), "finite": None}))
    deleted = ck.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in deleted] == ["step-0000002"]
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-0000001", "step-0000003"]


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    for step in (5, 6):
        small_checkpoint(tmp_path, step)
    written = small_checkpoint(tmp_path, 1, keep=2)  # a fresh run in an old folder
    assert written.exists()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_same_step_is_replaced_without_leftovers(tmp_path):
    small_checkpoint(tmp_path, 4, value=1.0)
    small_checkpoint(tmp_path, 4, value=3.0)
    models, _, _ = ck.read_checkpoint(tmp_path / "checkpoints" / "step-0000004")
    assert float(models["sit"]["w"][0, 0]) > 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000004"]


def test_directory_entries_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = ck.fsync_dir
    monkeypatch.setattr(ck, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    small_checkpoint(tmp_path, 1)
    root = tmp_path / "checkpoints"
    assert root in synced and any(p.name.startswith(".step-0000001.tmp-") for p in synced)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    small_checkpoint(tmp_path, 1)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", no_space)
    with pytest.raises(ck.CheckpointSpaceError) as info:
        small_checkpoint(tmp_path, 2)
    text = one_line(info.value)
    assert "needs" in text and "step-0000001" in text
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]

    monkeypatch.undo()
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(ck.CheckpointSpaceError, match=r"needs .* B free"):
        small_checkpoint(tmp_path, 2)


def test_clean_run_dir_removes_only_its_own_dead_leftovers(tmp_path):
    good = small_checkpoint(tmp_path, 1)
    root = tmp_path / "checkpoints"
    shutil.copytree(good, root / ".step-0000002.tmp-99999")  # complete: killed before the rename
    (root / ".step-0000002.tmp-99999" / "manifest.json").write_text(
        (good / "manifest.json").read_text().replace('"step": 1', '"step": 2'))
    (root / ".step-0000003.tmp-99998").mkdir()  # incomplete temporary
    (root / ".step-0000003.tmp-99998" / "models.safetensors").write_bytes(b"x")
    shutil.copytree(good, root / ".step-0000000.prune-99997")  # killed while deleting
    (root / "step-0000004").mkdir()  # half-deleted by an older version
    (root / "step-0000004" / "optim.safetensors").write_bytes(b"x")
    (root / "step-0000005").mkdir()  # not ours: holds a file we never write
    (root / "step-0000005" / "notes.txt").write_text("mine")
    (root / "backup").mkdir()
    (tmp_path / ".metrics.jsonl.abc123_x.tmp").write_text("torn")
    (tmp_path / "keep.tmp").write_text("user file")
    actions = ck.clean_run_dir(tmp_path)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["backup", "step-0000001", "step-0000002", "step-0000005"], (names, actions)
    assert ck.verify_checkpoint(root / "step-0000002")
    assert not (tmp_path / ".metrics.jsonl.abc123_x.tmp").exists() and (tmp_path / "keep.tmp").exists()


def test_resume_config_changes_are_reported(tmp_path, caplog):
    saved = load_config("tiny-fmnist").to_dict()
    changed = load_config("tiny-fmnist", ["optim.lr=5e-4", "train.seed=3", "train.max_steps=9"]).to_dict()
    with caplog.at_level(logging.INFO, logger="repae.checkpoint"):
        changes = resume.report_config_changes(tmp_path, saved, changed)
    assert set(changes) == {"optim.lr", "train.seed", "train.max_steps"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("optim.lr=0.0005 differs from the checkpoint's 0.001" in w and "its values are used" in w
               for w in warnings), warnings
    assert any("train.seed 0 -> 3" in w for w in warnings)
    assert not any("max_steps" in w for w in warnings)
    arch = load_config("tiny-fmnist", ["model.preset=SiT-T/2"]).to_dict()
    with pytest.raises(ck.CheckpointError, match="model.preset='SiT-T/2' \\(checkpoint: 'SiT-T/1'\\)"):
        resume.report_config_changes(tmp_path, saved, arch)


# --- logs ------------------------------------------------------------------------------------------


def test_truncate_jsonl(tmp_path):
    log_file = tmp_path / "metrics.jsonl"
    log_file.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    assert truncate_jsonl(log_file, 3) == 3
    assert [json.loads(x)["step"] for x in log_file.read_text().splitlines()] == [1, 2, 3]
    assert truncate_jsonl(log_file, 3) == 0
    assert truncate_jsonl(tmp_path / "missing.jsonl", 3) == 0


# --- run lock --------------------------------------------------------------------------------------

LOCK_SCRIPT = "import sys; from repae.training.runlock import acquire_run_lock; acquire_run_lock(sys.argv[1]); print('locked')"


def _other_process(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(run)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_second_writer_stops_in_one_line_and_stale_lock_is_taken_over(tmp_path, caplog):
    lock = acquire_run_lock(tmp_path)
    holder = json.loads((tmp_path / "train.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"]
    other = _other_process(tmp_path)
    assert other.returncode != 0 and "RunLockedError" in other.stderr
    assert f"in use by pid {os.getpid()} on host" in other.stderr.strip().splitlines()[-1]
    lock.release()
    assert _other_process(tmp_path).stdout.strip() == "locked"  # released: the next one gets it
    # a lock left by a killed process (its record is still in the file)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": dead.pid, "host": "somewhere", "started": 0}))
    with caplog.at_level(logging.WARNING):
        lock = acquire_run_lock(tmp_path)
    assert f"took over the stale lock of pid {dead.pid}" in caplog.text
    lock.release()


def test_lock_without_flock_falls_back_to_an_exclusive_file(tmp_path, monkeypatch, caplog):
    import fcntl
    import socket

    def no_flock(*a):
        raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = acquire_run_lock(tmp_path / "a")
    assert (tmp_path / "a" / "train.lock").exists()
    lock.release()
    assert not (tmp_path / "a" / "train.lock").exists()
    run = tmp_path / "b"
    run.mkdir()
    live = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0}
    (run / "train.lock").write_text(json.dumps(live))
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}"):
        acquire_run_lock(run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "train.lock").write_text(json.dumps({**live, "pid": dead.pid}))
    with caplog.at_level(logging.WARNING):
        acquire_run_lock(run).release()
    assert "took over the stale lock" in caplog.text


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,needle", [
    ("optim.ema_decay=2", "optim.ema_decay"), ("optim.ema_decay=1.0", "[0, 1)"), ("optim.betas=[0.9,1.5]", "betas"),
    ("train.batch_size=0", "train.batch_size"), ("train.max_steps=-1", "max_steps"), ("train.log_every=0", "log_every"),
    ("train.checkpoint_every=0", "checkpoint_every"), ("train.threads=-2", "threads"),
    ("data.num_workers=-1", "num_workers"), ("optim.lr=.nan", "finite"), ("sample.num_images=0", "num_images"),
    ("sample.guidance_low=0.8", "guidance_low"), ("tokenizer.bn_momentum=1.5", "bn_momentum"),
    ("train.max_nonfinite_skips=0", "max_nonfinite_skips"), ("optim.eps=0", "optim.eps"),
])
def test_out_of_range_values_fail_before_any_work(tmp_path, override, needle):
    with pytest.raises(ConfigError) as info:
        make_trainer(tmp_path, override, "sample.guidance_high=0.5" if "guidance_low" in override else "train.seed=0")
    assert needle in one_line(info.value)
    assert not (tmp_path / "repae-tiny-fmnist").exists()


def test_shipped_presets_are_in_range():
    from repae.config import available_presets

    for name in available_presets():
        check_ranges(load_config(name))


def test_tokenizer_weights_of_another_architecture_are_an_error(tmp_path):
    from repae.tokenizer import Tokenizer

    tok = Tokenizer.from_preset("tiny-f8d4")
    tok.normalizer.set_statistics(torch.zeros(4), torch.ones(4))
    tok.save_pretrained(tmp_path / "vae")
    with pytest.raises(ConfigError) as info:
        make_trainer(tmp_path, f"tokenizer.weights={tmp_path / 'vae'}", "tokenizer.preset=tiny-f4d4",
                     "train.recipe=repa")
    text = one_line(info.value)
    assert "tokenizer.weights" in text and "tiny-f4d4" in text and "block_out_channels" in text


# --- the trainer: guard, resume, logs (one shared tiny run) ----------------------------------------


def _snapshot(tr) -> dict[str, torch.Tensor]:
    out = {f"{g}.{k}": v.detach().clone() for g, sd in tr.model_state().items() for k, v in sd.items()}
    for name, opt in tr.optimizers.items():
        for idx, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"{name}.{idx}.{k}"] = torch.as_tensor(v).clone()
    return out


def _poison(monkeypatch, phase: str, steps: set[int], trainer):
    """Make ``phase``'s loss NaN while ``trainer.step`` is in ``steps`` (NaN injected at chosen steps)."""
    real = getattr(phases, phase)

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        if trainer.step in steps:
            out.loss = out.loss * float("nan")
            out.metrics = {**out.metrics, f"{phase.split('_')[0]}_loss": out.loss.detach()}
        return out

    monkeypatch.setattr(phases, phase, poisoned)


@pytest.mark.parametrize("phase", ["sit_phase", "vae_phase"])
def test_non_finite_step_changes_nothing(tmp_path, monkeypatch, phase):
    tr = make_trainer(tmp_path)
    images, labels = batch(tr)
    tr.train_step(images, labels)  # optimizers have state now
    before = _snapshot(tr)
    _poison(monkeypatch, phase, {1}, tr)
    metrics = tr.train_step(images, labels)
    assert tr.step == 2 and tr.guard.consecutive == 1 and metrics["nonfinite_skips"] == 1.0
    after = _snapshot(tr)
    for k in before:  # VAE, discriminator and SiT optimizers, EMA, normaliser + BatchNorm statistics
        assert torch.equal(before[k], after[k]), f"a skipped step changed {k}"
    assert all(p.grad is None for opt in tr.optimizers.values() for g in opt.param_groups for p in g["params"])
    tr.train_step(images, labels)  # a finite step afterwards trains again and resets the count
    assert tr.guard.consecutive == 0 and tr.guard.total == 1
    trained = _snapshot(tr)
    assert any(not torch.equal(trained[k], after[k]) for k in after if k.startswith("sit."))


def test_consecutive_non_finite_steps_halt_in_one_line(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, "train.max_steps=6", "train.checkpoint_every=2", "train.max_nonfinite_skips=2")
    _poison(monkeypatch, "sit_phase", {2, 3, 4, 5}, tr)
    with pytest.raises(NonFiniteError) as info:
        tr.fit()
    text = one_line(info.value)
    assert "step 4" in text and "sit_loss" in text and "step-0000002" in text
    assert [p.name for p in ck.list_checkpoints(tr.cfg.run_dir)] == ["step-0000002"]
    assert ck.first_nonfinite(ck.read_checkpoint(tr.cfg.run_dir)[0]["sit"]) is None


@pytest.fixture(scope="module")
def run_of_three(tmp_path_factory):
    """A 3-step tiny run with checkpoints at steps 2 and 3 (keep all)."""
    tmp = tmp_path_factory.mktemp("run3")
    tr = make_trainer(tmp, "train.max_steps=3", "train.checkpoint_every=2", "train.keep_checkpoints=0")
    tr.fit()
    return tmp


def _copy(run_of_three, tmp_path) -> Path:
    shutil.copytree(run_of_three, tmp_path, dirs_exist_ok=True)
    ck._VERIFIED.clear()
    return tmp_path


def test_resume_falls_back_and_truncates_the_log(run_of_three, tmp_path, caplog):
    tmp = _copy(run_of_three, tmp_path)
    run = tmp / "repae-tiny-fmnist"
    data = bytearray((run / "checkpoints" / "step-0000003" / "models.safetensors").read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit in the newest checkpoint
    (run / "checkpoints" / "step-0000003" / "models.safetensors").write_bytes(bytes(data))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "torn')
    tr = make_trainer(tmp, "train.max_steps=3", "train.checkpoint_every=2", "train.keep_checkpoints=0")
    with caplog.at_level(logging.INFO):
        tr.fit()
    assert "skipping checkpoint step-0000003" in caplog.text and "SHA-256" in caplog.text
    assert tr.step == 3
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 3 logged once, by the resumed run
    assert ck.verify_checkpoint(run / "checkpoints" / "step-0000003")  # rewritten intact


def test_damaged_checkpoint_in_export_and_sample_is_one_line(run_of_three, tmp_path, capsys):
    from repae.cli import main
    from repae.sampling.generator import Generator
    from repae.training.export import export_vae

    tmp = _copy(run_of_three, tmp_path)
    step3 = tmp / "repae-tiny-fmnist" / "checkpoints" / "step-0000003"
    (step3 / "state.json").write_text((step3 / "state.json").read_text().replace('"step": 3', '"step": 9'))
    for call in (lambda: export_vae(step3, tmp / "out"), lambda: Generator.from_checkpoint(step3)):
        with pytest.raises(ck.CheckpointError) as info:
            call()
        assert "state.json fails its SHA-256 check" in one_line(info.value)
    assert main(["export-vae", str(step3), "--out", str(tmp / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and "Traceback" not in err[0]
    assert not (tmp / "out").exists()
    assert export_vae(tmp / "repae-tiny-fmnist", tmp / "out2").exists()  # run folder: falls back to step 2


def test_second_trainer_on_a_live_run_stops(run_of_three, tmp_path):
    tmp = _copy(run_of_three, tmp_path)
    run = tmp / "repae-tiny-fmnist"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT + "; import time; time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        tr = make_trainer(tmp, "train.max_steps=7")
        with pytest.raises(RunLockedError) as info:
            tr.fit()
        assert f"pid {holder.pid}" in one_line(info.value)
        assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 3  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_no_space_for_a_checkpoint_fails_before_training(run_of_three, tmp_path, monkeypatch):
    tmp = _copy(run_of_three, tmp_path)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    tr = make_trainer(tmp, "train.max_steps=5")
    with pytest.raises(ck.CheckpointSpaceError) as info:
        tr.fit()
    assert "needs" in one_line(info.value) and tr.step == 3


def test_tiny_config_is_the_shared_one():
    assert "train.report_to=none" in TINY  # the trainer tests above rely on it (no tensorboard files)
