"""`repae analyze` / `repae report` and the latent-health hook on a tiny 2-step run (CPU, seconds)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from repae.cli import main

TINY = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "align.depth=2",
    "tokenizer.stats_images=32", "train.batch_size=8", "train.report_to=none", "train.log_every=1",
    "train.checkpoint_every=1", "train.keep_checkpoints=3", "train.max_steps=2",
    "sample.num_images=4", "sample.num_steps=2",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step REPA-E run with the health hook (every step), a preview grid and the report hook."""
    from repae.analysis.health import LatentHealthHook
    from repae.analysis.report import ReportHook
    from repae.config import load_config
    from repae.sampling.preview import SampleGridHook
    from repae.training.export import export_vae
    from repae.training.trainer import Trainer

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("tiny-fmnist", [*TINY, f"train.output_dir={root}", "train.exp_name=tiny"])
    health = LatentHealthHook(every=1, num_images=24)
    trainer = Trainer(cfg, hooks=[health, SampleGridHook(2), ReportHook(quick_images=24)])
    trainer.fit()
    export_vae(cfg.run_dir, cfg.run_dir / "e2e-vae")
    return cfg.run_dir, trainer, health


def test_health_scalars_are_logged(tiny_run):
    run, _, _ = tiny_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("spatial_variance", "total_variation", "tv_over_sqrt_sv", "spatial_variance_normalized",
                "norm_std_mean", "norm_batch_over_running_std", "align_cos_vae", "align_cos_sit", "cknna",
                "latent_cknna", "sv_drop", "image_variance", "image_variance_fraction", "image_variance_drop"):
        assert all(isinstance(r[f"health/{key}"], float) for r in rows), key
    assert rows[0]["health/sv_drop"] == 1.0 and rows[0]["health/image_variance_drop"] == 1.0
    assert all(0 < r["health/image_variance_fraction"] <= 1 and r["health/image_variance"] > 0 for r in rows)
    assert -1 <= rows[-1]["health/align_cos_vae"] <= 1 and -1 <= rows[-1]["health/cknna"] <= 1


def test_health_warns_on_collapse(tiny_run, caplog):
    _, trainer, health = tiny_run
    health.first, health.warned = (0, 1e9), False  # pretend the run started with a huge spatial variance
    with caplog.at_level(logging.WARNING, logger="repae.health"):
        out = health.on_step(trainer, 3, {})
    assert out["health/sv_drop"] > 100 and "collapsing" in caplog.text
    with caplog.at_level(logging.WARNING, logger="repae.health"):
        caplog.clear()
        health.on_step(trainer, 4, {})
    assert "collapsing" not in caplog.text  # warned once


def test_health_warns_on_fixed_pattern_collapse(caplog):
    """SV stays put while every image maps to the same latent: only the image-variance warning fires."""
    from repae.analysis.health import LatentHealthHook

    def scalars(iv, frac):
        return {"health/spatial_variance": 16.0, "health/image_variance": iv, "health/image_variance_fraction": frac}

    for later in (scalars(0.05, 0.6), scalars(5.0, 0.01)):  # a 100x drop of IV; IV/SV below 0.05 from 0.6
        hook = LatentHealthHook(every=1)
        hook._batch = {}  # set up: on_step only measures
        seq = iter([scalars(9.6, 0.6), later, later])
        hook.measure = lambda trainer: dict(next(seq))
        with caplog.at_level(logging.WARNING, logger="repae.health"):
            caplog.clear()
            first = hook.on_step(None, 1, {})
            out = hook.on_step(None, 2, {})
        assert first["health/image_variance_drop"] == 1.0 and out["health/sv_drop"] == 1.0
        assert "same latent" in caplog.text and "spatial variance fell" not in caplog.text
        assert out["health/image_variance_drop"] == pytest.approx(9.6 / later["health/image_variance"])
        with caplog.at_level(logging.WARNING, logger="repae.health"):
            caplog.clear()
            hook.on_step(None, 3, {})
        assert "same latent" not in caplog.text  # warned once


def test_study_backfills_image_variance_into_an_old_analysis(tiny_run, tmp_path):
    import shutil

    from repae.study.measure import IMAGE_VARIANCE_FIELDS, StudyEvaluator, backfill_image_variance, collect_run
    from repae.study.plan import StudyConfig

    run, _, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("e2e-vae", "samples", "*.html", "*.png"))
    path = copy / "analysis" / "analysis.json"
    analysis = json.loads(path.read_text())
    for stats in analysis["inputs"][0]["stats"].values():  # as written before the measure existed
        for f in IMAGE_VARIANCE_FIELDS:
            stats.pop(f)
    path.write_text(json.dumps(analysis))
    before = analysis["inputs"][0]["stats"]["raw"]
    evaluator = StudyEvaluator(StudyConfig(analysis_images=24), torch.device("cpu"))  # the quick analysis' set
    assert backfill_image_variance(copy, evaluator)
    raw = json.loads(path.read_text())["inputs"][0]["stats"]["raw"]
    assert {k: raw[k] for k in before} == before  # nothing else rewritten
    assert raw["image_variance"] > 0 and 0 < raw["image_variance_fraction"] <= 1
    assert raw["image_variance"] + raw["pattern_variance"] == pytest.approx(raw["spatial_variance"], rel=1e-6)
    assert not backfill_image_variance(copy, evaluator)  # nothing missing any more
    (copy / "eval").mkdir(exist_ok=True)
    (copy / "eval" / "step-0000002.json").write_text(json.dumps({"fid": 50.0, "step": 2}))
    res = collect_run(copy)
    assert res["latent_image_variance"] == raw["image_variance"]
    assert res["latent_image_variance_fraction"] == raw["image_variance_fraction"]


def test_report_is_self_contained_with_images(tiny_run):
    run, _, _ = tiny_run
    page = (run / "report.html").read_text()  # written by ReportHook.on_end
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert any(a.startswith("EMA samples at step-0000002") for a in images)  # the preview grid, labelled
    assert any(a.startswith("Reconstructions") for a in images)  # quick analysis ran
    assert "Losses" in images and any("health" in a.lower() for a in images)
    assert "repa-e" in page and "Latent analysis" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing loaded from the network
    assert (run / "analysis" / "analysis.json").is_file()


def test_report_cli_and_bad_run(tiny_run, tmp_path, capsys):
    run, _, _ = tiny_run
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--no-analyze"]) == 0
    assert out.stat().st_size > 10_000
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]


def test_analyze_run_and_vae_on_same_axes(tiny_run, tmp_path, capsys):
    run, _, _ = tiny_run
    out = tmp_path / "cmp"
    rc = main(["analyze", str(run), str(run / "e2e-vae"), "--num-images", "24", "--out", str(out), "--grid", "4"])
    assert rc == 0
    result = json.loads((out / "analysis.json").read_text())
    assert [r["kind"] for r in result["inputs"]] == ["run", "vae"]
    ckpt = result["inputs"][0]
    assert [c["step"] for c in ckpt["checkpoints"]] == [1, 2] and len(ckpt["cknna"]["values"]) == 4
    assert result["inputs"][1]["latent_cknna"] is not None and result["settings"]["k"] == 10
    for name in ("dct_spectra", "latent_stats", "pca_grid", "recon_grid", "cknna_layers", "checkpoints"):
        assert (out / f"{name}.png").stat().st_size > 5000 and (out / f"{name}.json").is_file(), name
    spectra = json.loads((out / "dct_spectra.json").read_text())
    assert set(spectra) >= {"rgb", "tiny", "tiny/e2e-vae"}
    assert "TV/sqrt(SV)" in capsys.readouterr().out


def test_analyze_reads_fd_from_evaluation_json(tiny_run, tmp_path):
    run, _, _ = tiny_run
    (run / "eval").mkdir(exist_ok=True)
    for step, fid in ((1, 90.0), (2, 70.0)):
        (run / "eval" / f"step-{step:07d}.json").write_text(json.dumps(
            {"fid": fid, "checkpoint": str(run / "checkpoints" / f"step-{step:07d}")}))
    out = tmp_path / "fd"
    assert main(["analyze", str(run), "--num-images", "16", "--out", str(out), "--k", "5"]) == 0
    points = json.loads((out / "fd_vs_cknna.json").read_text())
    assert [(p["step"], p["fd"]) for p in points] == [(1, 90.0), (2, 70.0)]


def test_analyze_one_line_errors(tiny_run, tmp_path, capsys):
    run, _, _ = tiny_run
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    # VAE / data resolution mismatch: an f4 VAE cannot encode 30 px images
    assert main(["analyze", str(run / "e2e-vae"), "--resolution", "30", "--no-cknna"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "downsamples by 4" in err[0] and "--resolution" in err[0]
    # a run is analysed at its training resolution
    assert main(["analyze", str(run), "--resolution", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained at 32 px" in err[0]
    weights = tmp_path / "vae.safetensors"
    weights.write_bytes(b"")
    assert main(["analyze", str(weights)]) == 2
    assert "--vae-preset" in capsys.readouterr().err


def test_split_grid_round_trip():
    from torchvision.utils import make_grid

    from repae.analysis.report import split_grid

    imgs = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    cells = split_grid(make_grid(imgs, nrow=3, padding=2), 8)
    assert len(cells) == 6 and all(torch.equal(c, i) for c, i in zip(cells, imgs))


def test_health_without_alignment_loads_the_config_encoder(tmp_path):
    """vanilla trains no projector: no alignment cosines, but CKNNA with the config's encoder."""
    from repae.analysis.health import LatentHealthHook
    from repae.config import load_config
    from repae.training.trainer import Trainer

    cfg = load_config("tiny-fmnist", [*TINY, f"train.output_dir={tmp_path}", "train.recipe=vanilla"])
    trainer = Trainer(cfg)
    assert not trainer.encoders
    hook = LatentHealthHook(every=1, num_images=16)
    hook.on_start(trainer)
    before = {k: v.clone() for k, v in trainer.tokenizer.normalizer.state_dict().items()}
    out = hook.on_step(trainer, 1, {})
    assert "health/align_cos_vae" not in out and -1 <= out["health/cknna"] <= 1
    assert all(torch.equal(v, before[k]) for k, v in trainer.tokenizer.normalizer.state_dict().items())
