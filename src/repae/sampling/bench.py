"""Benchmark of sampling (``repae bench --sample N``): seconds per batch of N images, split into
the solver (every network evaluation of ``sample.num_steps`` steps, CFG included) and the decode.

The networks are the configured architectures with random weights: the cost of a forward does
not depend on the weights, and the solver runs the same number of evaluations whatever the
network predicts. Labels and per-sample seeds are those ``repae sample`` would use (seed 0), so the
per-sample noise generators are part of the timing exactly as in a real run.

Example (the issue-13 sampling case: 50-step SDE with CFG on the SiT-B/2 + f8d4 reference)::

    repae bench --sample 8 --threads 2 --steps 3 --config tiny-fmnist data.resolution=256 \\
        tokenizer.preset=f8d4 model.preset=SiT-B/2 model.num_classes=1000 \\
        sample.sampler=euler-maruyama sample.num_steps=50 sample.cfg_scale=1.8
"""

from __future__ import annotations

import statistics
import time

import torch

from repae.config import resolve_channels_last
from repae.errors import ConfigError
from repae.sampling.generator import SAMPLING_PRECISIONS, Generator, sample_labels, sample_seeds
from repae.training.bench import _peak_rss_gb
from repae.training.builders import build_sit_for, build_tokenizer_arch, encoder_dims, validate_config


def build_random_generator(cfg, *, device: torch.device, precision: str = "fp32",
                           channels_last: bool = False) -> Generator:
    """The run's tokenizer and generator architectures with random weights, in eval mode on ``device``."""
    recipe = validate_config(cfg)
    if not recipe.build_sit:
        raise ConfigError(f"recipe '{cfg.train.recipe}' trains no generator: bench sampling with a recipe that "
                          "does (e.g. train.recipe=repa-e)")
    tok = build_tokenizer_arch(cfg).eval()
    z_dims = encoder_dims(cfg) if (recipe.sit_align or recipe.vae_align) else ()
    sit = build_sit_for(cfg, tok, z_dims=z_dims).eval()
    if channels_last:  # NHWC decoder convolutions (as train.channels_last does for training)
        tok.vae.to(memory_format=torch.channels_last)
    gen = Generator(tokenizer=tok, model=sit, path=cfg.diffusion.path, num_classes=cfg.model.num_classes,
                    resolution=cfg.data.resolution, precision=precision)
    return gen.to(device)


def bench_sampling(cfg, *, batch: int, steps: int = 3, warmup: int = 1, device: str | None = None,
                   precision: str = "fp32", channels_last: bool | str = False) -> dict:
    """Median seconds per batch of ``batch`` images with ``cfg.sample``'s sampler settings.

    Returns the figures as a dict: ``sec_per_batch`` (solver + decode), ``solver_s``, ``decode_s``
    (medians of ``steps`` timed batches after ``warmup`` untimed ones), ``img_per_s``,
    ``nfe`` (network evaluations per sample: doubled inside the CFG interval), peak memory.
    """
    if batch < 1:
        raise ConfigError(f"--sample {batch} must be >= 1 (images per timed batch)")
    if precision not in SAMPLING_PRECISIONS:
        raise ConfigError(f"--sample-precision {precision!r} is unknown; use one of: {', '.join(SAMPLING_PRECISIONS)}")
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cuda.matmul.allow_tf32 = True  # as `repae sample` (and generate.py) by default
        torch.backends.cudnn.allow_tf32 = True
    channels_last = resolve_channels_last(channels_last, dev.type)
    gen = build_random_generator(cfg, device=dev, precision=precision, channels_last=channels_last)
    s = cfg.sample
    gen.check_sampler(s.sampler)
    kw = dict(sampler=s.sampler, num_steps=s.num_steps, cfg_scale=s.cfg_scale,
              guidance_interval=(s.guidance_low, s.guidance_high))
    labels = sample_labels(batch, 0, gen.num_classes)  # [batch]
    seeds = sample_seeds(0, range(batch))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rows = []  # rows of every network call: NFE per sample, CFG doubling included
    hook = gen.model.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    solver_t, decode_t = [], []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        z = gen.latents(labels, seeds=seeds, **kw)  # [batch, C, h, w]
        sync()
        t1 = time.perf_counter()
        gen.decode(z)  # [batch, 3, H, W] uint8
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            solver_t.append(t1 - t0)
            decode_t.append(t2 - t1)
    hook.remove()
    solver, decode = statistics.median(solver_t), statistics.median(decode_t)
    total = statistics.median(a + b for a, b in zip(solver_t, decode_t))
    out = {
        "mode": "sample",
        "sit": cfg.model.preset,
        "vae": cfg.tokenizer.preset,
        "resolution": cfg.data.resolution,
        "batch": batch,
        "sampler": s.sampler,
        "num_steps": s.num_steps,
        "cfg_scale": s.cfg_scale,
        "guidance_interval": f"{s.guidance_low},{s.guidance_high}",
        "nfe": round(sum(rows) / batch / (warmup + steps), 2),
        "precision": precision,
        "channels_last": channels_last,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "sec_per_batch": round(total, 4),
        "solver_s": round(solver, 4),
        "decode_s": round(decode, 4),
        "img_per_s": round(batch / total, 4),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
    }
    if cuda:
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    return out
