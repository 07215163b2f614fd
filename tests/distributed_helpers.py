"""Shared by the slow "2 gloo processes equal 1 process" tests: one training worker and one comparison.

Not a test module: ``from distributed_helpers import ...`` (pytest puts tests/ on sys.path, and
``torch.multiprocessing.spawn`` hands that path to the children, which import the worker by name).
"""

from __future__ import annotations

import os

import torch


def train_worker(rank: int, world: int, port: int, out_dir: str, overrides: list[str]) -> None:
    """Train ``tiny-fmnist`` + ``overrides`` as rank ``rank`` of ``world`` (gloo on loopback); rank 0 saves the
    non-discriminator state and the last metrics to ``<out_dir>/result-w<world>.pt``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from repae.config import load_config
    from repae.training.trainer import Trainer

    cfg = load_config("tiny-fmnist", [*overrides, f"train.output_dir={out_dir}/w{world}"])
    trainer = Trainer(cfg, random_encoders=True)
    last = trainer.fit()
    if rank == 0:
        state = {f"{g}.{k}": v for g, sd in trainer.model_state().items() if g != "disc" for k, v in sd.items()}
        torch.save({"state": state, "metrics": last}, f"{out_dir}/result-w{world}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


def one_and_two_processes(tmp_path, overrides: list[str], port: int) -> tuple[dict, dict]:
    """The saved results of the same run on 1 process and on 2 gloo processes (same global batch)."""
    import torch.multiprocessing as mp

    train_worker(0, 1, 0, str(tmp_path), overrides)
    mp.spawn(train_worker, args=(2, port, str(tmp_path), overrides), nprocs=2, join=True)
    return torch.load(tmp_path / "result-w1.pt"), torch.load(tmp_path / "result-w2.pt")


def assert_same_run(one: dict, two: dict, metrics: tuple[str, ...]) -> None:
    """Equal weights and pre-clip metrics up to float reduction order.

    Weights are compared by their median difference only: Adam's first steps are ~lr * sign(g), so a gradient
    that is ~0 up to float noise can flip one element by 2 * lr, while a routing/averaging/sync bug moves whole
    tensors. Adam also hides a gradient scale error (sum instead of mean over processes); the pre-clip norms
    and losses in ``metrics`` do not."""
    assert one["state"].keys() == two["state"].keys()
    for k, v in one["state"].items():
        diff = (two["state"][k].double() - v.double()).abs()
        assert diff.median() < 1e-5, f"{k}: median difference {diff.median():.2e}"
    for k in metrics:
        assert abs(one["metrics"][k] - two["metrics"][k]) < 1e-4 * max(1.0, abs(one["metrics"][k])), k
