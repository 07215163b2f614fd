"""Contracts (issue 25): every generator family x every recipe that takes a generator trains through
`repae train` with the default hooks and NO sampler named, and the verbs that read a run work on it.

The families come from the model registry (:data:`repae.models.MODEL_FAMILIES`, the tiniest preset
of each) and the recipes from the recipe registry (:data:`repae.training.recipes.RECIPES`), so a
family or recipe added later is covered without editing this file. The recipes left out are
``vae`` and ``rae-decoder``: they build no generator (``Recipe.build_sit`` is False), so they cannot take one
(``rae-decoder`` and the generators on RAE latents: tests/test_rae.py).

Sizes are tiny (2 steps of batch 4, 2 sampling steps, 16 held-out images for the hooks); every run
is trained once per module and shared by the verb checks.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import repae.api
from repae.analysis.health import LatentHealthHook
from repae.analysis.report import ReportHook
from repae.cli import main
from repae.models import MODEL_FAMILIES
from repae.sampling.preview import SampleGridHook
from repae.training.builders import default_sampler
from repae.training.recipes import RECIPES


def _tiniest(presets: dict[str, dict[str, int]]) -> str:
    """The smallest preset of a family (fewest block weights, then the smallest patch: most tokens)."""
    return min(presets, key=lambda n: (presets[n]["depth"] * presets[n]["hidden_size"] ** 2, presets[n]["patch_size"]))


FAMILIES = {name: (_tiniest(f.presets), f.objective) for name, f in MODEL_FAMILIES.items()}
GENERATOR_RECIPES = [name for name, r in RECIPES.items() if r.build_sit]  # all but `vae`, `rae-decoder` (no generator)
HOOK_IMAGES = 16  # held-out images of the health hook and of the report's quick analysis

TINY = ["train.max_steps=2", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=2",
        "train.sample_every=2", "train.diagnostics_every=2", "train.report_to=none", "tokenizer.stats_images=16",
        "sample.num_images=4", "sample.num_steps=2", "model.projector_dim=64"]  # no sample.sampler: on purpose


def test_registries_are_covered():
    assert set(FAMILIES) >= {"SiT", "DiT", "LightningDiT"}
    assert {p for p, _ in FAMILIES.values()} >= {"SiT-T/1", "DiT-T/1", "LightningDiT-T/1"}
    assert set(GENERATOR_RECIPES) == set(RECIPES) - {"vae", "rae-decoder"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_objective_interface_for_hooks(family):
    """What hooks and analysis use of an objective: ``noisy_input`` is the training step's ``x_t``, and
    ``time_at(0.5)`` is the own time with equal signal and noise (flow: 0.5; DDPM: abar_t = 1/2)."""
    import torch

    from repae.config import load_config
    from repae.models import build_model
    from repae.training.builders import build_objective

    preset, kind = FAMILIES[family]
    model = build_model(preset, input_size=8, in_channels=4, num_classes=10)
    objective = build_objective(load_config("tiny-fmnist", [f"model.preset={preset}"]), model)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = objective.time_sampler.sample(3, generator=g)  # [3] own time
    assert torch.equal(objective.noisy_input(x0, noise, t), objective.draw(x0, t=t, noise=noise).x_t)
    mid = objective.time_at(0.5)
    x_mid = objective.noisy_input(x0, torch.zeros_like(x0), torch.full((3,), mid))  # signal part only
    signal = float((x_mid / x0).mean())  # alpha_t (flow) or sqrt(abar_t) (DDPM)
    noise_part = float(objective.noisy_input(torch.zeros_like(x0), noise, torch.full((3,), mid)).div(noise).mean())
    assert signal == pytest.approx(noise_part, rel=1e-2)  # equal signal and noise coefficients
    assert (objective.time_at(0.0), objective.time_at(1.0)) == ((0.0, 1.0) if kind == "flow" else (0.0, 999.0))
    model(objective.noisy_input(x0, noise, t), t, torch.tensor([0, 1, 2]))  # the network takes that time


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Run folder root, a 64-image npz (the `ldm` recipe's data), its cached latents (`repae
    cache-latents` with the shipped tokenizer) and a 64-image evaluation reference (`repae reference`)."""
    from repae.data import build_dataset

    root = tmp_path_factory.mktemp("contracts")
    ds = build_dataset("embedded", resolution=32, split="train")
    images = np.stack([ds[i][0].numpy().transpose(1, 2, 0) for i in range(64)])  # [64, 32, 32, 3] uint8
    labels = np.array([int(ds[i][1]) for i in range(64)], dtype=np.int64)
    npz = root / "subset.npz"
    np.savez(npz, arr_0=images, labels=labels)
    latents = root / "latents"
    assert main(["cache-latents", "--vae", "repae-vae-fmnist", "--data", str(npz), "--resolution", "32",
                 "--out", str(latents), "--device", "cpu", "--batch-size", "64"]) == 0
    reference = root / "reference.npz"
    assert main(["reference", "--source", "embedded:test", "--max-images", "64", "--out", str(reference),
                 "--device", "cpu", "--no-progress"]) == 0
    return root, npz, latents, reference


def repae_train(recipe: str, preset: str, out: Path, name: str, *extra: str) -> Path:
    """`repae train --recipe RECIPE` with the default hooks (their held-out sets shrunk to
    ``HOOK_IMAGES`` images) and no sampler named; returns the run folder."""
    real = repae.api.default_hooks
    seen: list[set[type]] = []

    def small_default_hooks(cfg):
        hooks = real(cfg)
        seen.append({type(h) for h in hooks})
        for h in hooks:
            if isinstance(h, LatentHealthHook):
                h.num_images = HOOK_IMAGES
            if isinstance(h, ReportHook):
                h.quick_images = HOOK_IMAGES
        return hooks

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repae.api, "default_hooks", small_default_hooks)
        code = main(["train", "--config", "tiny-fmnist", "--recipe", recipe, "--no-export", *TINY, f"model.preset={preset}",
                     f"train.output_dir={out}", f"train.exp_name={name}", *extra])
    assert code == 0, f"repae train failed for {name}"
    assert seen and seen[-1] >= {LatentHealthHook, SampleGridHook, ReportHook}, "a default hook went missing"
    return out / name


@pytest.fixture(scope="module")
def trained(workspace):
    """``trained(family, recipe) -> run folder``, trained once per pair (memoised)."""
    root, npz, latents, _ = workspace
    runs: dict[tuple[str, str], Path] = {}

    def train(family: str, recipe: str) -> Path:
        if (family, recipe) not in runs:
            extra = ([f"data.source={npz}", f"data.latents={latents}", "tokenizer.weights=repae-vae-fmnist"]
                     if RECIPES[recipe].cached_latents else [])
            runs[family, recipe] = repae_train(recipe, FAMILIES[family][0], root / "runs", f"{family}-{recipe}", *extra)
        return runs[family, recipe]

    return train


@pytest.mark.parametrize("recipe", GENERATOR_RECIPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trains_with_default_hooks_and_the_models_sampler(trained, family, recipe):
    run = trained(family, recipe)
    _, kind = FAMILIES[family]
    config = json.loads((run / "config.json").read_text())
    assert config["sample"]["sampler"] == default_sampler(kind)  # resolved and saved: euler, or ddim for DiT
    state = json.loads((run / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["config"]["sample"]["sampler"] == default_sampler(kind)  # the checkpoint samples the same way
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    health = rows[-1]
    for key in ("spatial_variance", "total_variation", "sv_drop", "latent_cknna", "cknna"):
        assert np.isfinite(health[f"health/{key}"]), key
    if RECIPES[recipe].sit_align:  # a projector is trained: alignment as both passes see it
        assert -1 <= health["health/align_cos_vae"] <= 1 and -1 <= health["health/align_cos_sit"] <= 1
    assert (run / "samples" / "step-0000002.png").is_file()  # the preview grid
    assert "EMA samples at step-0000002" in (run / "report.html").read_text()  # the report, with that grid


@pytest.mark.parametrize("recipe", GENERATOR_RECIPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sample_and_export_read_the_run(trained, family, recipe, tmp_path, capsys):
    run = trained(family, recipe)
    sampler = default_sampler(FAMILIES[family][1])
    npz = tmp_path / "samples.npz"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "4", "--batch-size", "2", "--num-steps", "2",
                 "--out-npz", str(npz), "--device", "cpu"]) == 0
    assert f"({sampler}, 2 steps" in capsys.readouterr().out  # unset --sampler: the run's own
    with np.load(npz) as f:
        assert f["arr_0"].shape == (4, 32, 32, 3) and f["arr_0"].dtype == np.uint8
    assert main(["export", str(run), "--out", str(tmp_path / "official")]) == 0  # the recipe's official layout
    assert any((tmp_path / "official").rglob("*.pt"))
    assert main(["export-vae", str(run), "--out", str(tmp_path / "vae")]) == 0
    assert (tmp_path / "vae" / "latent_stats.json").is_file()


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # FD of 4 samples: singular covariances
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_evaluate_and_analyze_read_the_runs(trained, workspace, family, tmp_path):
    """`evaluate` streams from the REPA-E run (sampling flags unset: the run's own); `analyze` takes
    every recipe's run of the family at once (CKNNA through the family's objective)."""
    runs = [trained(family, recipe) for recipe in GENERATOR_RECIPES]
    sampler = default_sampler(FAMILIES[family][1])
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(trained(family, "repa-e")), "--num-samples", "4", "--batch-size",
                 "4", "--num-steps", "2", "--reference", str(workspace[-1]), "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["sampler"] == sampler and result["num_samples"] == 4
    assert main(["analyze", *map(str, runs), "--num-images", "16", "--checkpoints", "latest", "--device", "cpu",
                 "--out", str(tmp_path / "analysis")]) == 0
    inputs = json.loads((tmp_path / "analysis" / "analysis.json").read_text())["inputs"]
    assert [i["recipe"] for i in inputs] == GENERATOR_RECIPES
    for entry in inputs:
        assert np.isfinite(entry["cknna_at_depth"]) and np.isfinite(entry["latent_cknna"]), entry["recipe"]


@pytest.mark.parametrize("family", sorted(f for f, (_, kind) in FAMILIES.items() if kind != "flow"))
def test_resume_keeps_the_resolved_sampler(trained, family, tmp_path, caplog):
    """Resuming a DDPM-family run with no sampler named resolves to the same one: nothing changed."""
    run = shutil.copytree(trained(family, "repa-e"), tmp_path / "runs" / "resumed")
    with caplog.at_level(logging.INFO, logger="repae"):
        repae_train("repa-e", FAMILIES[family][0], tmp_path / "runs", "resumed", "train.max_steps=3")
    assert "resumed from" in caplog.text and "sample.sampler" not in caplog.text
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["sample"]["sampler"] == default_sampler(FAMILIES[family][1])
