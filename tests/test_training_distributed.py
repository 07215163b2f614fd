"""A 2-process gloo run equals a 1-process run on the same global batch (slow: spawns processes)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

OVERRIDES = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "tokenizer.stats_images=32", "align.depth=2",
    "train.batch_size=8", "train.max_steps=2", "train.report_to=none", "train.checkpoint_every=1000",
    "train.sample_every=1000", "train.resume=false", "lreg.disc_weight=0.0",
]


def _run(rank: int, world: int, port: int, out_dir: str, accum: int = 1) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from repae.config import load_config
    from repae.training.trainer import Trainer

    cfg = load_config("tiny-fmnist", [*OVERRIDES, f"train.output_dir={out_dir}/w{world}", f"train.grad_accum={accum}"])
    trainer = Trainer(cfg, random_encoders=True)
    last = trainer.fit()
    if rank == 0:
        state = {f"{g}.{k}": v for g, sd in trainer.model_state().items() if g != "disc" for k, v in sd.items()}
        torch.save({"state": state, "metrics": last}, f"{out_dir}/result-w{world}.pt")
    torch.distributed.destroy_process_group() if world > 1 else None


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_gloo_processes_equal_one(tmp_path, accum):
    _run(0, 1, 0, str(tmp_path), accum)
    mp.spawn(_run, args=(2, 29531 + accum, str(tmp_path), accum), nprocs=2, join=True)
    one = torch.load(tmp_path / "result-w1.pt")
    two = torch.load(tmp_path / "result-w2.pt")
    assert one["state"].keys() == two["state"].keys()
    # Equal up to float reduction order (Adam turns a 1e-9 gradient difference on a ~0 gradient into
    # a visible but tiny step difference); a routing/averaging/sync bug moves far more than this.
    # Weights are compared by their median difference only: Adam's first steps are ~lr * sign(g), so a gradient that
    # is ~0 up to float noise can flip one element by 2 * lr; a real bug moves whole tensors.
    for k, v in one["state"].items():
        diff = (two["state"][k].double() - v.double()).abs()
        assert diff.median() < 1e-5, f"{k}: median difference {diff.median():.2e}"
    # Adam hides a gradient scale error (sum instead of mean over processes); the pre-clip norms do not.
    for k in ("denoising_loss", "vae_align_loss", "reconstruction_loss", "grad_norm_sit", "grad_norm_vae"):
        assert abs(one["metrics"][k] - two["metrics"][k]) < 1e-4 * max(1.0, abs(one["metrics"][k]))
