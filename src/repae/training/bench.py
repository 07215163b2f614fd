"""Benchmark of a training step (verb ``repae bench``): seconds per step, images per second and peak memory.

Builds the real trainer for any preset and batch and times ``train_step`` on random uint8 images
of the configured resolution (the cost of a step does not depend on pixel values). Pretrained
weights that are absent
are replaced by random weights of the right architecture (the timing does not depend on them):
the alignment encoders are built randomly initialised and LPIPS gets a random VGG16 backbone.

Example (the issue-4 reference configuration)::

    repae bench --config tiny-fmnist model.preset=SiT-B/2 tokenizer.preset=f8d4 data.resolution=256 \\
        align.encoders=[dinov2-vit-b] lreg.perceptual=lpips train.batch_size=2 --threads 2 --steps 5

``profile=True`` profiles one extra step after the timed ones (:func:`profile_step`: top ops by
self time, device-to-host syncs, and torch.compile graph breaks), so it never changes
``sec_per_step``.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB: Linux's VmHWM (which :func:`reset_peak_rss`
    can lower), else getrusage's ``ru_maxrss`` (a high-water mark since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB -> GiB


def reset_peak_rss() -> bool:
    """Free what can be freed and reset the peak-RSS mark to the current RSS (Linux >= 4.0 only:
    ``echo 5 > /proc/self/clear_refs``). Returns False where the mark cannot be reset; the next
    :func:`_peak_rss_gb` is then the process's high-water mark since it started. Memory the
    allocator keeps after a reset still counts towards the next peak."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the OS (glibc)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# Device-to-host synchronisations. aten::item calls aten::_local_scalar_dense (the actual read),
# so only the latter is counted; aten::nonzero must read its output size from the device. On CUDA
# each of these ends in one of the runtime calls below, which also catch the syncs no aten op names
# (a blocking copy, for one), so there the runtime calls are the count.
_ATEN_SYNCS = ("aten::_local_scalar_dense", "aten::nonzero")
_CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
_SYNC_NAMES = ("aten::item", *_ATEN_SYNCS, *_CUDA_SYNCS)
# torch.optim's Adam/AdamW (not capturable, not fused) keep each parameter's step counter on the
# CPU and read it with .item() inside Optimizer.step: a host read per parameter, never a device sync.
_OPTIMIZER_RANGE = "Optimizer.step#"


def _count_syncs(events) -> tuple[dict[str, int], int]:
    """Sync-op counts by name over the profiled events, and the reads inside ``Optimizer.step``
    (left out of the counts: see ``_OPTIMIZER_RANGE``)."""
    counts: dict[str, int] = {}
    in_optimizer = 0
    for e in events:
        if e.name not in _SYNC_NAMES:
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith(_OPTIMIZER_RANGE):
            parent = parent.cpu_parent
        if parent is not None and e.name.startswith("aten::"):
            in_optimizer += e.name == "aten::_local_scalar_dense"
            continue
        counts[e.name] = counts.get(e.name, 0) + 1
    return counts, in_optimizer


def reset_graph_breaks() -> None:
    """Zero torch._dynamo's counters (graph breaks are counted when a function is traced)."""
    import torch._dynamo

    torch._dynamo.utils.counters.clear()


def graph_break_report(max_reasons: int = 5) -> tuple[int, list[str]]:
    """Graph breaks counted by torch._dynamo since :func:`reset_graph_breaks`: total and the first
    distinct reasons (one line each, at most 200 characters)."""
    import torch._dynamo

    breaks = torch._dynamo.utils.counters["graph_break"]
    reasons = [" ".join(str(r).split())[:200] for r in list(breaks)[:max_reasons]]
    return int(sum(breaks.values())), reasons


def profile_step(step: Callable[[], object], *, cuda: bool, top: int = 15) -> dict:
    """Run ``step`` once under ``torch.profiler`` and summarise it.

    Returns ``profile_step_ms`` (wall time of the profiled step, profiler overhead included),
    ``profile_ops_pct`` (share of it spent inside profiled ops; the rest is Python and untraced
    work), ``profile_top_ops`` (the ``top`` ops by self time: name, self ms, % of the step, calls;
    on CUDA by self GPU time, with the self CPU ms too), ``host_syncs_per_step`` and ``host_syncs``
    (count by op name; on CPU these are the reads that would synchronise on a GPU) and
    ``host_reads_in_optimizer`` (the optimizers' CPU step-counter reads, not counted as syncs).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()  # recorded as one cudaDeviceSynchronize: subtracted below
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    host_ops = [e for e in events if e.device_type == DeviceType.CPU]  # kernels are rows too on CUDA
    by_gpu = cuda and any(e.self_device_time_total > 0 for e in host_ops)
    self_us = (lambda e: e.self_device_time_total) if by_gpu else (lambda e: e.self_cpu_time_total)
    ranked = sorted((e for e in host_ops if self_us(e) > 0), key=self_us, reverse=True)
    rows = []
    for e in ranked[:top]:
        row = {"op": e.key, "self_ms": round(self_us(e) / 1e3, 3),
               "pct": round(100 * self_us(e) / 1e3 / wall_ms, 3), "calls": int(e.count)}
        if by_gpu:
            row["self_cpu_ms"] = round(e.self_cpu_time_total / 1e3, 3)
        rows.append(row)
    counts, in_optimizer = _count_syncs(prof.events())
    if cuda and counts.get("cudaDeviceSynchronize"):
        counts["cudaDeviceSynchronize"] -= 1  # ours, for the wall time
    counts = {k: v for k, v in sorted(counts.items()) if v > 0}
    runtime_seen = any(e.key.startswith("cuda") for e in host_ops)  # CUPTI recorded the runtime calls
    names = _CUDA_SYNCS if cuda and runtime_seen else _ATEN_SYNCS
    syncs = sum(counts.get(k, 0) for k in names)
    return {
        "profile_step_ms": round(wall_ms, 2),
        "profile_ops_pct": round(100 * sum(self_us(e) for e in host_ops) / 1e3 / wall_ms, 1),
        "profile_sort": "self GPU time" if by_gpu else "self CPU time",
        "profile_top_ops": rows,
        "host_syncs_per_step": int(syncs),
        "host_syncs": counts,
        "host_reads_in_optimizer": in_optimizer,
    }


def _random_vgg(folder: Path) -> str:
    import torchvision

    path = folder / "vgg16-random-features.pth"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), path)
    return str(path)


def _bench_trainer(cfg, engine):
    """The real trainer on random uint8 images (timing only) with random encoder weights, and one batch."""
    from repae.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    res, n = cfg.data.resolution, max(cfg.train.batch_size, 64)
    images = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g)  # [n, 3, H, W]
    labels = torch.randint(0, cfg.model.num_classes, (n,), generator=g)  # [n]
    trainer = Trainer(cfg, engine=engine, random_encoders=True, dataset=list(zip(images, labels)))
    return trainer, images[: cfg.train.batch_size], labels[: cfg.train.batch_size]


def _median_seconds(step: Callable[[], object], *, warmup: int, steps: int, cuda: bool) -> float:
    """Median wall time of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flop_rates(step: Callable[[], object], sec: float, peak_tflops: float) -> dict:
    """TFLOP of one extra (uncompiled-equivalent) step, counting matmul/conv/attention FLOPs, and
    the rate (and model-FLOP utilisation against ``peak_tflops``) at ``sec`` seconds per step."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    tflop = counter.get_total_flops() / 1e12
    out = {"tflop_per_step": round(tflop, 3), "achieved_tflops": round(tflop / sec, 2)}
    if peak_tflops:
        out["mfu"] = round(tflop / sec / peak_tflops, 4)
    return out


def bench(cfg, *, steps: int = 5, warmup: int = 1, device: str | None = None, count_flops: bool = False,
          peak_tflops: float = 0.0, profile: bool = False, profile_top: int = 15) -> dict:
    from repae.training.engine import setup_distributed

    engine = setup_distributed(cfg.train.mixed_precision, device=device)
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # per call: a sweep runs several benches in one process
    if profile and cfg.train.compile:
        reset_graph_breaks()  # before the first (compiling) step
    trainer, images, labels = _bench_trainer(cfg, engine)

    def step():
        trainer.train_step(images, labels)

    sec = _median_seconds(step, warmup=warmup, steps=steps, cuda=cuda)
    breaks = graph_break_report() if profile and cfg.train.compile else (None, [])  # warm-up + timed steps
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
        out.update(_flop_rates(step, sec, peak_tflops))
    if profile:
        out["graph_breaks"], out["graph_break_reasons"] = breaks
        out.update(profile_step(step, cuda=cuda, top=profile_top))
    return out
