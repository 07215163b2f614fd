"""A 2-process gloo run equals a 1-process run on the same global batch (slow: spawns processes)."""

from __future__ import annotations

import pytest

OVERRIDES = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "tokenizer.stats_images=32", "align.depth=2",
    "train.batch_size=8", "train.max_steps=2", "train.report_to=none", "train.checkpoint_every=1000",
    "train.sample_every=1000", "train.resume=false", "lreg.disc_weight=0.0",
]


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_gloo_processes_equal_one(tmp_path, accum):
    from distributed_helpers import assert_same_run, one_and_two_processes

    one, two = one_and_two_processes(tmp_path, [*OVERRIDES, f"train.grad_accum={accum}"], port=29531 + accum)
    assert_same_run(one, two, ("denoising_loss", "vae_align_loss", "reconstruction_loss", "grad_norm_sit",
                               "grad_norm_vae"))
