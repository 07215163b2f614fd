"""``repae sample``: draw N samples from a checkpoint into an ADM ``.npz`` and/or a PNG folder.

Single process::

    repae sample --checkpoint runs/repae-xl2 --num-samples 50000 --sampler euler-maruyama \\
        --num-steps 250 --cfg-scale 1.8 --guidance-high 0.825 --out-npz samples.npz

Several processes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set by torchrun or accelerate)::

    torchrun --nproc-per-node 8 -m repae.cli sample --checkpoint ... --out-dir pngs --out-npz samples.npz

Defaults follow generate.py (spec 6.4): Euler ODE, 50 steps, CFG 1.5 on [0, 1], seed 0, EMA
weights, TF32 on. Sample i depends only on (seed, i), so any world size gives the same npz.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from repae.sampling.solvers import SOLVERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--num-samples", type=int, default=50_000, help="number of samples N (default 50000)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass per process (default 256)")
    parser.add_argument("--sampler", choices=list(SOLVERS), default="euler",
                        help="solver (default euler; published REPA-E numbers use euler-maruyama with 250 steps)")
    parser.add_argument("--num-steps", type=int, default=50, help="solver steps (default 50)")
    parser.add_argument("--cfg-scale", type=float, default=1.5,
                        help="classifier-free guidance scale >= 1 (default 1.5)")
    parser.add_argument("--guidance-low", type=float, default=0.0, help="CFG applied for t >= this (default 0.0)")
    parser.add_argument("--guidance-high", type=float, default=1.0, help="CFG applied for t <= this (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="run seed; sample i depends only on (seed, i) (default 0)")
    parser.add_argument("--out-npz", default=None, help="ADM-format .npz to write (arr_0 uint8 [N,H,W,3] + labels)")
    parser.add_argument("--out-dir", default=None, help="folder of {index:06d}.png; existing PNGs are kept (resume)")
    parser.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    parser.add_argument("--no-tf32", action="store_true", help="disable TF32 matmuls on CUDA (on by default, spec 6.4)")
    parser.add_argument("--device", default=None, help="device (default: cuda:LOCAL_RANK if available, else cpu)")


def _distributed_setup() -> tuple[int, int, torch.device]:
    """Read RANK/WORLD_SIZE/LOCAL_RANK and init gloo (CPU) or nccl (CUDA) when WORLD_SIZE > 1."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return rank, world, device


def run(args: argparse.Namespace) -> int:
    from repae.errors import ConfigError
    from repae.sampling.generator import sample_to_outputs
    from repae.training.checkpoint import load_generator  # lazy: written by the training package

    if args.out_npz is None and args.out_dir is None:
        raise ConfigError("nothing to write; pass --out-npz FILE.npz and/or --out-dir FOLDER")
    if args.cfg_scale < 1.0:
        raise ConfigError(f"--cfg-scale must be >= 1 (got {args.cfg_scale}); use 1.0 for no guidance")
    rank, world, device = _distributed_setup()
    if args.device:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
    try:
        gen = load_generator(args.checkpoint, ema=not args.no_ema, map_location="cpu").to(device)
        start = time.perf_counter()
        result = sample_to_outputs(
            gen, num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
            out_npz=args.out_npz, out_dir=args.out_dir, rank=rank, world_size=world,
            sampler=args.sampler, num_steps=args.num_steps, cfg_scale=args.cfg_scale,
            guidance_interval=(args.guidance_low, args.guidance_high), progress=True,
        )
        if rank == 0:
            where = ", ".join(str(p) for p in (result.npz, result.out_dir) if p is not None)
            print(f"{result.num_samples} samples ({args.sampler}, {args.num_steps} steps, cfg {args.cfg_scale} "
                  f"on [{args.guidance_low}, {args.guidance_high}], {world} process(es)): rank 0 generated "
                  f"{result.generated}, kept {result.skipped} in {time.perf_counter() - start:.1f} s -> {where}")
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
