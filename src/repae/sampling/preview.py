"""Preview grids during training: a :class:`~repae.training.hooks.TrainHook` of the sampling layer.

The grid is drawn from the EMA SiT with the EMA normaliser statistics (what ``repae sample``
uses by default), with the run's own ``sample`` config and fixed per-sample seeds, so grids of
one run are comparable across steps. Labels cycle through the classes (row-major).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from repae.training.hooks import TrainHook
from repae.utils.io import atomic_path


def grid_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "samples" / f"step-{step:07d}.png"


@torch.no_grad()
def sample_grid(trainer, path: Path) -> Path:
    """Write a class-conditional grid of ``cfg.sample.num_images`` EMA samples to ``path`` (atomic)."""
    from PIL import Image
    from torchvision.utils import make_grid

    from repae.sampling.generator import Generator

    sc = trainer.cfg.sample
    n = sc.num_images
    labels = torch.arange(n) % trainer.cfg.model.num_classes
    gen = Generator.from_trainer(trainer)
    images = gen(labels.to(trainer.engine.device), sampler=sc.sampler, num_steps=sc.num_steps,
                 cfg_scale=sc.cfg_scale, guidance_interval=(sc.guidance_low, sc.guidance_high),
                 seeds=list(range(n)))  # uint8 [n, 3, H, W]
    grid = make_grid(images.cpu(), nrow=int(round(math.sqrt(n))), padding=2)  # [3, H', W'] uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return path


class SampleGridHook(TrainHook):
    """Every ``every`` steps (and after the last one) write ``samples/step-XXXXXXX.png``.

    ``on_end`` writes the final step's grid if it is missing, e.g. when a run killed after its last
    checkpoint is resumed with no step left.
    """

    def __init__(self, every: int):
        self.every = int(every)

    def on_step(self, trainer, step: int, metrics: dict) -> None:
        if trainer.engine.is_main and getattr(trainer, "sit", None) is not None:
            sample_grid(trainer, grid_path(trainer.cfg.run_dir, step))
        return None

    def on_end(self, trainer) -> None:
        path = grid_path(trainer.cfg.run_dir, trainer.step)
        if (trainer.engine.is_main and trainer.step > 0 and not path.exists()
                and getattr(trainer, "sit", None) is not None):
            sample_grid(trainer, path)
