"""Benchmark of a training step (verb ``repae bench``): seconds per step, images per second and peak memory.

Builds the real trainer for any preset and batch and times ``train_step`` on random uint8 images
of the configured resolution (the cost of a step does not depend on pixel values). Pretrained
weights that are absent
are replaced by random weights of the right architecture (the timing does not depend on them):
the alignment encoders are built randomly initialised and LPIPS gets a random VGG16 backbone.

Example (the issue-4 reference configuration)::

    repae bench --config tiny-fmnist model.preset=SiT-B/2 tokenizer.preset=f8d4 data.resolution=256 \\
        align.encoders=[dinov2-vit-b] loss.perceptual=lpips train.batch_size=2 --threads 2 --steps 5
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB -> GiB


def _random_vgg(folder: Path) -> str:
    import torchvision

    path = folder / "vgg16-random-features.pth"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), path)
    return str(path)


def bench(cfg, *, steps: int = 5, warmup: int = 1, device: str | None = None, count_flops: bool = False,
          peak_tflops: float = 0.0) -> dict:
    from repae.training.engine import setup_distributed
    from repae.training.trainer import Trainer

    engine = setup_distributed(cfg.train.mixed_precision, device=device)
    g = torch.Generator().manual_seed(0)
    res, n = cfg.data.resolution, max(cfg.train.batch_size, 64)
    images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g)  # timing only
    labels = torch.randint(0, cfg.model.num_classes, (n,), generator=g)
    dataset = list(zip(images, labels))
    trainer = Trainer(cfg, engine=engine, random_encoders=True, dataset=dataset)
    images, labels = images[: cfg.train.batch_size], labels[: cfg.train.batch_size]
    cuda = engine.device.type == "cuda"
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(images, labels)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    out = {
        "recipe": cfg.train.recipe,
        "sit": cfg.model.preset,
        "vae": cfg.tokenizer.preset,
        "encoders": ",".join(cfg.align.encoders),
        "resolution": cfg.data.resolution,
        "batch": cfg.train.batch_size,
        "precision": cfg.train.mixed_precision,
        "compile": cfg.train.compile,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "sec_per_step": round(sec, 4),
        "img_per_s": round(cfg.train.batch_size / sec, 3),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
    }
    if cuda:
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:  # one extra (uncompiled-equivalent) step; counts matmul/conv/attention FLOPs
            trainer.train_step(images, labels)
        tflop = counter.get_total_flops() / 1e12
        out["tflop_per_step"] = round(tflop, 3)
        out["achieved_tflops"] = round(tflop / sec, 2)
        if peak_tflops:
            out["mfu"] = round(tflop / sec / peak_tflops, 4)
    return out
