"""``repae sample``: draw N samples from a checkpoint into an ADM ``.npz`` and/or a PNG folder.

Single process::

    repae sample --checkpoint runs/repae-xl2 --num-samples 50000 --sampler euler-maruyama \\
        --num-steps 250 --cfg-scale 1.8 --guidance-high 0.825 --out-npz samples.npz

Several processes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set by torchrun or accelerate)::

    torchrun --nproc-per-node 8 -m repae.cli sample --checkpoint ... --out-dir pngs --out-npz samples.npz

An official checkpoint file (REPA-E, REPA, SiT, DiT, LightningDiT; docs/official-checkpoints.md)::

    repae sample --checkpoint pretrained/sit-repae-sdvae/checkpoints/0400000.pt --model SiT-XL/2 \\
        --cfg-scale 2.2 --guidance-high 0.65 --out-npz samples.npz

Sampling flags left unset take the run's own ``sample`` config (the settings its preview grids
used); EMA weights and TF32 are on by default. Sample i depends only on (seed, i), so any world
size gives the same npz.
"""

from __future__ import annotations

import argparse
import time

import torch

from repae.cli.argtypes import positive_int
from repae.cli.common import (
    add_official_arguments,
    add_sampling_arguments,
    default_device,
    distributed_setup,
    load_generator,
    official_kwargs,
    resolve_sampling,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory, or an official "
                        "checkpoint file (.pt/.safetensors) with --model")
    parser.add_argument("--num-samples", type=positive_int, default=50_000, help="number of samples N (default 50000)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass per process (default 256)")
    parser.add_argument("--out-npz", default=None, help="ADM-format .npz to write (arr_0 uint8 [N,H,W,3] + labels)")
    parser.add_argument("--out-dir", default=None, help="folder of {index:06d}.png; existing PNGs are kept (resume)")
    parser.add_argument("--no-tf32", action="store_true", help="disable TF32 matmuls on CUDA (on by default, spec 6.4)")
    parser.add_argument("--device", default=None, help="device (default: cuda:LOCAL_RANK if available, else cpu)")
    add_sampling_arguments(parser)
    g = add_official_arguments(parser)
    g.add_argument("--resolution", type=positive_int, default=None, help="image side of an official generator (default 256)")
    g.add_argument("--num-classes", type=positive_int, default=None, help="classes of an official generator (default 1000)")


def run(args: argparse.Namespace) -> int:
    from repae.errors import ConfigError
    from repae.sampling.outputs import sample_to_outputs

    if args.out_npz is None and args.out_dir is None:
        raise ConfigError("nothing to write; pass --out-npz FILE.npz and/or --out-dir FOLDER")
    resolve_sampling(args, None)  # bad flag values fail before the checkpoint is read
    from repae.utils.io import check_output_path

    if args.out_npz is not None:
        check_output_path(args.out_npz, folder=False, what="--out-npz", suffix=".npz")
    if args.out_dir is not None:
        check_output_path(args.out_dir, folder=True, what="--out-dir")
    official_only = [flag for flag, value in (("--resolution", args.resolution), ("--num-classes", args.num_classes))
                     if value is not None]
    if official_only:
        from pathlib import Path

        from repae.interop.official import resolve_official_file

        if not Path(resolve_official_file(args.checkpoint)).is_file():
            raise ConfigError(f"{', '.join(official_only)} apply to official checkpoint files; {args.checkpoint} is a "
                              "repae run or checkpoint folder, which records its own resolution and classes: drop them")
    rank, world, device = distributed_setup()
    if args.device:
        device = default_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
    try:
        gen = load_generator(args.checkpoint, ema=not args.no_ema, device=device, **official_kwargs(args))
        gen.precision = args.precision or getattr(gen, "precision", "fp32")
        kw = resolve_sampling(args, gen.sample_defaults)
        start = time.perf_counter()
        result = sample_to_outputs(
            gen, num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
            out_npz=args.out_npz, out_dir=args.out_dir, rank=rank, world_size=world, progress=True, **kw,
        )
        if rank == 0:
            where = ", ".join(str(p) for p in (result.npz, result.out_dir) if p is not None)
            low, high = kw["guidance_interval"]
            print(f"{result.num_samples} samples ({kw['sampler']}, {kw['num_steps']} steps, cfg {kw['cfg_scale']} "
                  f"on [{low}, {high}], {world} process(es)): rank 0 generated "
                  f"{result.generated}, kept {result.skipped} in {time.perf_counter() - start:.1f} s -> {where}")
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
