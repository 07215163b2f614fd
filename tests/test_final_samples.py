"""End-of-run sample metrics (train.final_eval_samples): files, the real-data floor, the report's first section."""

from __future__ import annotations

import json

import pytest

TINY = [
    "tokenizer.stats_images=32", "train.batch_size=8", "train.report_to=none", "train.log_every=1",
    "train.checkpoint_every=2", "train.max_steps=2", "train.diagnostics_every=0", "train.sample_every=0",
    "sample.num_images=4", "sample.num_steps=2", "train.final_eval_samples=30",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import repae

    root = tmp_path_factory.mktemp("runs")
    return repae.train("tiny-fmnist", overrides=[*TINY, f"train.output_dir={root}", "train.exp_name=final"],
                       export=False)


def test_final_samples_json_png_and_floor(run):
    from repae.evaluation.final import evaluate_final_samples
    from repae.sampling.generator import Generator

    r = json.loads((run / "final-samples.json").read_text())
    assert r["step"] == 2 and r["num_samples"] == 30 and r["num_real"] == 30
    assert "evalnet-fmnist" in r["feature_space"] and r["reference"] == "embedded:train"
    assert 0 <= r["class_accuracy"] <= 1 and r["fid"] > 0
    # the floor: real held-out test images are far closer to the reference and mostly classified right
    assert r["real_fid"] < r["fid"] and r["real_class_accuracy"] > 0.7
    assert (run / "final-samples.png").stat().st_size > 1000
    # the numbers are what `repae evaluate --checkpoint RUN --num-samples 30` would draw: same labels and seeds
    from repae.config import from_dict

    cfg = from_dict(json.loads((run / "config.json").read_text()))
    again, _, _ = evaluate_final_samples(Generator.from_checkpoint(run), cfg, 30)
    assert again["fid"] == pytest.approx(r["fid"], rel=1e-4)  # checkpoint vs live weights: float order only
    assert again["class_accuracy"] == r["class_accuracy"]


def test_report_opens_with_what_the_run_made(run):
    page = (run / "report.html").read_text()
    first = page.index("<h2")
    assert page[first:].startswith('<h2 id="s0">What this run made</h2>')
    head = page[first:page.index("<h2", first + 5)]
    assert "real test images (the floor" in head and "class accuracy" in head and "data:image/png;base64" in head


def test_resumed_run_with_no_step_left_keeps_the_measurement(run):
    import repae

    before = (run / "final-samples.json").read_text()
    repae.train("tiny-fmnist", overrides=[*TINY, f"train.output_dir={run.parent}", "train.exp_name=final"],
                export=False)
    assert (run / "final-samples.json").read_text() == before


def test_hook_skips_other_data_with_a_reason(caplog, tmp_path):
    import logging
    from types import SimpleNamespace

    from repae.config import load_config
    from repae.evaluation.final import FinalSamplesHook

    cfg = load_config("tiny-fmnist", ["data.resolution=64", f"train.output_dir={tmp_path}"])
    trainer = SimpleNamespace(cfg=cfg, engine=SimpleNamespace(is_main=True), sit=object(), step=1)
    with caplog.at_level(logging.INFO, logger="repae.final"):
        FinalSamplesHook(10).on_end(trainer)
    assert "skipped" in caplog.text and not (cfg.run_dir / "final-samples.json").exists()


def test_sampling_precision_is_a_run_setting(run):
    """sample.precision: the run's own (fp32 here, bf16 in the fmnist preset); bad values fail in one line."""
    from repae.config import load_config
    from repae.errors import ConfigError
    from repae.sampling.generator import Generator
    from repae.training.builders import validate_config

    assert Generator.from_checkpoint(run).precision == "fp32"
    assert load_config("fmnist").sample.precision == "bf16" and load_config("tiny-fmnist").sample.precision == "fp32"
    with pytest.raises(ConfigError, match="sample.precision"):
        validate_config(load_config("tiny-fmnist", ["sample.precision=fp8"]))


@pytest.mark.parametrize("preset", ["DiT-T/1", "LightningDiT-T/1"])
def test_final_samples_for_every_generator_family(tmp_path, preset):
    """The end-of-run measurement with the sampler that follows the model (DiT: ddim, DDPM time)."""
    import repae

    run = repae.train("tiny-fmnist", overrides=[*TINY, "train.final_eval_samples=10", f"model.preset={preset}",
                                                "train.html_report=false", f"train.output_dir={tmp_path}"], export=False)
    r = json.loads((run / "final-samples.json").read_text())
    assert r["num_samples"] == 10 and r["sampler"] == ("ddim" if preset.startswith("DiT") else "euler")
    assert 0 <= r["class_accuracy"] <= 1 and r["fid"] > 0
