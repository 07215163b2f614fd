"""The README path end to end on the embedded data (slow; CI runs it once):
train -> checkpoint + grid + exported VAE -> resume -> sample (npz) -> evaluate (offline network)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from repae.cli import main

pytestmark = pytest.mark.slow


def test_train_export_sample_evaluate(tmp_path, capsys):
    run = tmp_path / "runs" / "e2e"
    common = [f"train.output_dir={tmp_path / 'runs'}", "train.exp_name=e2e", "train.batch_size=16",
              "train.checkpoint_every=2", "train.sample_every=4", "sample.num_images=4", "sample.num_steps=4",
              "tokenizer.stats_images=64", "train.log_every=1", "train.final_eval_samples=50"]
    assert main(["train", *common, "train.max_steps=2"]) == 0  # the default recipe and shipped encoder
    assert (run / "checkpoints" / "step-0000002" / "models.safetensors").exists()
    assert main(["train", *common, "train.max_steps=4"]) == 0  # resumes from step 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert (run / "samples" / "step-0000004.png").exists()
    assert (run / "e2e-vae" / "latent_stats.json").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["lreg"]["perceptual"] == "laplacian" and config["train"]["recipe"] == "repa-e"
    assert config["model"]["preset"] == "SiT-XS/1" and config["align"]["encoders"] == ["repae-cnn-p4"]
    final = json.loads((run / "final-samples.json").read_text())  # the end-of-run measurement of the default
    assert final["step"] == 4 and final["num_samples"] == 50 and "real_fid" in final

    from repae.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(run / "e2e-vae")
    assert tok.latent_shape(32) == (4, 8, 8)

    npz = tmp_path / "samples.npz"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "8", "--batch-size", "4", "--num-steps", "4",
                 "--out-npz", str(npz), "--device", "cpu"]) == 0
    with np.load(npz) as f:
        assert f["arr_0"].shape == (8, 32, 32, 3) and f["arr_0"].dtype == np.uint8
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--samples", str(npz), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(result[key])
    assert "NOT comparable" in result["feature_space"]
