"""Issue 24 item 3: fp16 mixed precision cannot poison a run.

Every optimizer has its own GradScaler; a gradient overflow skips exactly the overflowed updates
(counted in ``fp16_overflows``, the scale of that optimizer lowered, the others untouched), never
halts the run, and the next step trains. Overflow is forced by scaling one phase's loss so that the
scaled loss is inf in float32 while the loss itself (what the metrics read) stays finite.
"""

from __future__ import annotations

import json

import torch

import repae.training.checkpoint as ck
from repae.training import phases
from test_training import batch, make_trainer


def _inflate(monkeypatch, *names: str) -> None:
    """Multiply the loss of the named phases by 1e36: finite itself, inf once scaled by 2**16."""
    for name in names:
        real = getattr(phases, name)

        def big(*a, _real=real, **k):
            out = _real(*a, **k)
            out.loss = out.loss * 1e36
            return out

        monkeypatch.setattr(phases, name, big)


def _snapshot(tr) -> dict[str, torch.Tensor]:
    named = {**{f"sit.{k}": v for k, v in tr.sit.state_dict().items()},
             **{f"vae.{k}": v for k, v in tr.tokenizer.vae.state_dict().items()},
             **{f"norm.{k}": v for k, v in tr.tokenizer.normalizer.state_dict().items()},
             **{f"ema.{k}": v for k, v in tr.ema.state_dict().items()}}
    return {k: v.detach().clone() for k, v in named.items()}


def _changed(a: dict, b: dict, prefix: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_each_optimizer_has_its_own_scaler_and_joint_routing_shares_one(tmp_path):
    tr = make_trainer(tmp_path, "train.mixed_precision=fp16")
    assert set(tr.scalers) == set(tr.optimizers) and all(s.is_enabled() for s in tr.scalers.values())
    assert len({id(s) for s in tr.scalers.values()}) == len(tr.optimizers)
    joint = make_trainer(tmp_path / "j", "train.mixed_precision=fp16", "train.recipe=no-stopgrad")
    assert joint.scalers["opt_sit"] is joint.scalers["opt_vae"]  # one backward feeds both
    off = make_trainer(tmp_path / "o")
    assert not any(s.is_enabled() for s in off.scalers.values())


def test_an_overflow_in_the_sit_phase_skips_only_the_sit_update(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, "train.mixed_precision=fp16")
    images, labels = batch(tr)
    tr.train_step(images, labels)  # a normal fp16 step first
    scales = {n: s.get_scale() for n, s in tr.scalers.items()}
    sit_steps = tr.optimizers["opt_sit"].state_dict()["state"][0]["step"].item()
    before = _snapshot(tr)
    with monkeypatch.context() as m:
        _inflate(m, "sit_phase")
        metrics = tr.train_step(images, labels)
    after = _snapshot(tr)
    assert metrics["fp16_overflows"] == 1 and "nonfinite_skips" not in metrics
    assert not _changed(before, after, "sit.") and not _changed(before, after, "ema.")  # skipped: SiT and its EMA
    assert _changed(before, after, "vae.")  # the VAE's own update went through
    assert tr.optimizers["opt_sit"].state_dict()["state"][0]["step"].item() == sit_steps
    assert tr.scalers["opt_sit"].get_scale() == scales["opt_sit"] / 2  # backoff 0.5
    assert tr.scalers["opt_vae"].get_scale() == scales["opt_vae"]  # another optimizer's scale is untouched
    assert metrics["loss_scale_sit"] == scales["opt_sit"] / 2
    assert tr.guard.consecutive == 0
    tr.train_step(images, labels)  # the run goes on and the SiT trains again
    assert _changed(after, _snapshot(tr), "sit.")


def test_an_overflow_everywhere_changes_nothing_and_never_halts(tmp_path, monkeypatch):
    """Every optimizer overflowed: weights, EMA, normaliser statistics and optimizer states unchanged;
    more overflows in a row than train.max_nonfinite_skips do not halt (the scaler backs off)."""
    tr = make_trainer(tmp_path, "train.mixed_precision=fp16", "train.max_nonfinite_skips=2")
    images, labels = batch(tr)
    tr.train_step(images, labels)
    before = _snapshot(tr)
    opt_before = {n: o.state_dict()["state"][0]["step"].item() for n, o in tr.optimizers.items()}
    with monkeypatch.context() as m:
        _inflate(m, "vae_phase", "discriminator_phase", "sit_phase")
        for _ in range(3):
            metrics = tr.train_step(images, labels)
    assert not any(_changed(before, _snapshot(tr), p) for p in ("sit.", "vae.", "norm.", "ema."))
    assert {n: o.state_dict()["state"][0]["step"].item() for n, o in tr.optimizers.items()} == opt_before
    assert metrics["fp16_overflows"] == 3 * len(tr.optimizers) and tr.guard.total == 0


def test_scaler_states_resume_and_an_older_single_scaler_checkpoint_loads(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, "train.mixed_precision=fp16")
    images, labels = batch(tr)
    with monkeypatch.context() as m:
        _inflate(m, "discriminator_phase")
        tr.train_step(images, labels)
    tr.step = 1
    path = tr.save()
    back = make_trainer(tmp_path / "b", "train.mixed_precision=fp16")
    back.load(path)
    assert {n: s.get_scale() for n, s in back.scalers.items()} == {n: s.get_scale() for n, s in tr.scalers.items()}
    assert back.guard.overflows == 1
    state = json.loads((path / "state.json").read_text())  # what the one-scaler trainer wrote:
    state["scaler"] = state.pop("scalers")["opt_disc"]  # one "scaler" entry
    (path / "state.json").write_text(json.dumps(state))
    ck._write_manifest(path, 1)
    old = make_trainer(tmp_path / "c", "train.mixed_precision=fp16")
    old.load(path)
    assert all(s.get_scale() == tr.scalers["opt_disc"].get_scale() for s in old.scalers.values())


def test_fp16_on_a_cpu_without_native_half_precision_warns_once_naming_bf16(tmp_path, monkeypatch, caplog):
    """fp16 convolutions without AVX512-FP16 take oneDNN's reference path (~60x slower than fp32 here):
    the run says so and names bf16; a CPU with the flag, bf16 and fp32 get no warning."""
    import logging

    import repae.training.engine as engine

    plain, native = tmp_path / "plain", tmp_path / "native"
    plain.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    native.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_fp16 amx_fp16\n")
    assert not engine.cpu_has_native_fp16(str(plain)) and engine.cpu_has_native_fp16(str(native))
    assert engine.cpu_has_native_fp16(str(tmp_path / "missing"))  # unknown: no warning on a guess

    def warnings_for(precision: str, has_fp16: bool) -> list[str]:
        monkeypatch.setattr(engine, "cpu_has_native_fp16", lambda *a: has_fp16)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="repae.train"):
            engine.setup_distributed(precision, device="cpu")
        return [r.getMessage() for r in caplog.records if "fp16" in r.getMessage()]

    msgs = warnings_for("fp16", False)
    assert len(msgs) == 1 and "train.mixed_precision=bf16" in msgs[0]
    assert warnings_for("fp16", True) == [] and warnings_for("bf16", False) == [] and warnings_for("no", False) == []
