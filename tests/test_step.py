"""The training step a reader sees whole (repae.training.step): its order of phases, its micro-batch
records, the randomness it draws, and the size limits that keep it readable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from repae.training import guard, phases, step
from test_training import batch, make_trainer

TRAINING = Path(step.__file__).parent
MAX_LINES = 60


def _function_lengths() -> dict[str, int]:
    out = {}
    for path in sorted(TRAINING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{path.name}:{node.lineno}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_the_repae_step_and_every_training_function_fit_one_screen():
    lengths = _function_lengths()
    (repae,) = [n for key, n in lengths.items() if key.startswith("step.py:") and key.endswith(":repae_step")]
    assert repae <= MAX_LINES, f"repae_step has {repae} lines (docstring included)"
    long = {key: n for key, n in lengths.items() if n > MAX_LINES}
    assert not long, f"functions over {MAX_LINES} lines under src/repae/training: {long}"


def _record_calls(monkeypatch, trainer) -> list[str]:
    calls: list[str] = []
    for name in ("vae_phase", "discriminator_phase", "sit_phase", "encode_frozen"):
        real = getattr(phases, name)
        monkeypatch.setattr(phases, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    real_apply = trainer.guard.apply
    monkeypatch.setattr(trainer.guard, "apply", lambda *a, **k: calls.append("apply") or real_apply(*a, **k))
    return calls


@pytest.mark.parametrize("recipe,order", [
    ("repa-e", ["vae_phase"] * 2 + ["discriminator_phase"] * 2 + ["sit_phase"] * 2 + ["apply"]),
    ("no-stopgrad", ["vae_phase", "sit_phase"] * 2 + ["discriminator_phase"] * 2 + ["apply"]),
    ("repa", ["encode_frozen", "sit_phase"] * 2 + ["apply"]),
])
def test_step_runs_the_phases_in_order_then_one_guarded_apply(tmp_path, monkeypatch, recipe, order):
    """REPA-E: every micro-batch's VAE phase, then the discriminator's, then the SiT's, then ONE
    apply (clip, optimizer steps, EMA); the other routings keep their own order."""
    tr = make_trainer(tmp_path, f"train.recipe={recipe}", "train.grad_accum=2")
    calls = _record_calls(monkeypatch, tr)
    metrics = tr.train_step(*batch(tr))
    assert calls == order
    assert {f"grad_norm_{name.removeprefix('opt_')}" for name in tr.optimizers} <= set(metrics)


def test_micro_batches_are_named_records(tmp_path):
    tr = make_trainer(tmp_path, "train.grad_accum=2")
    images, labels = batch(tr)
    micro = tr._micro_batches(images, labels, None)
    assert len(micro) == 2 and all(isinstance(mb, step.MicroBatch) for mb in micro)
    mb = micro[1]
    assert mb.images.shape == (4, 3, 32, 32) and mb.images.dtype == torch.uint8
    assert torch.equal(mb.images, images[4:]) and torch.equal(mb.labels, labels[4:])
    assert [t.shape[0] for t in mb.targets] == [4] and mb.moments is None
    assert mb.randomness.posterior_eps.shape == (4, *tr.latent_shape) and mb.randomness.tokreg is None


def test_regulariser_choices_are_drawn_at_construction_after_the_rest(tmp_path):
    """The tokreg draw is part of StepRandomness.draw and comes last: the other draws do not change."""
    tr = make_trainer(tmp_path, "train.recipe=vae", "tokreg.se_weight=0.25", "tokreg.eq_prob=0.5",
                      "tokreg.eq_min_scale=0.75")
    common = dict(global_batch=8, rows=slice(2, 6), latent_shape=tr.latent_shape,
                  time_sampler=tr.objective.time_sampler, drop_prob=0.1, device="cpu")
    with_reg = phases.StepRandomness.draw(generator=torch.Generator().manual_seed(3), tokreg=tr.tokreg, **common)
    gen = torch.Generator().manual_seed(3)
    plain = phases.StepRandomness.draw(generator=gen, **common)
    choices = tr.tokreg.draw(gen, global_batch=8, rows=slice(2, 6), latent_channels=tr.latent_shape[0], device="cpu")
    for name in ("posterior_eps", "t", "noise", "drop"):
        assert torch.equal(getattr(with_reg, name), getattr(plain, name)), name
    assert plain.tokreg is None and with_reg.tokreg == choices


def test_guard_gets_what_it_updates_explicitly(tmp_path):
    """The guard holds the optimizers, scaler and EMA it steps, not the trainer."""
    tr = make_trainer(tmp_path)
    g = tr.guard
    assert isinstance(g, guard.NonFiniteGuard) and not hasattr(g, "trainer")
    assert g.optimizers is tr.optimizers and g.scalers is tr.scalers and g.ema is tr.ema and g.ema_model is tr.sit
    assert not hasattr(tr, "_clip_step") and not hasattr(phases.PhaseContext, "num_classes")
