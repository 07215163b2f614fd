"""``repae cache-latents``: encode a dataset once with a frozen (E2E-)VAE (see :mod:`repae.data.latent_cache`).

``torchrun --nproc_per_node N -m repae.cli cache-latents ...`` (or ``accelerate launch``) shards the dataset
over N processes (gloo on CPU, NCCL on GPUs; process ``r`` on ``cuda:<LOCAL_RANK>``) and writes the same
folder as one process; an interrupted run started again with the same arguments resumes from its finished
chunks. The progress bar is rank 0's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from repae.cli.argtypes import nonneg_int, positive_int
from repae.cli.common import add_data_arguments, add_vae_argument, load_tokenizer
from repae.data.latent_cache import cache_latents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_vae_argument(parser)
    add_data_arguments(parser, default="embedded", what="images to encode")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--num-workers", type=nonneg_int, default=0)
    parser.add_argument("--chunk-size", type=positive_int, default=None,
                        help="images per resumable unit, a multiple of --batch-size (default 16 batches); an "
                        "interrupted run re-encodes at most one chunk per process")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda if available; with several processes, cuda:<LOCAL_RANK>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from repae.training.engine import setup_distributed
    from repae.utils.io import check_output_path

    check_output_path(args.out, folder=True, what="--out")  # before the work, not after it
    engine = setup_distributed(device=args.device)  # torchrun / accelerate: gloo for cpu, NCCL for cuda:<LOCAL_RANK>
    rank, world = engine.rank, engine.world_size
    try:
        return _run(args, rank, world, engine.device)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a failing rank makes the others stop at once


def _run(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> int:
    from repae.data import build_dataset, default_resolution

    tokenizer = load_tokenizer(args.vae, preset=args.vae_preset)
    resolution = args.resolution or default_resolution(args.data)
    dataset = build_dataset(args.data, resolution=resolution, split="train", strict=args.strict)
    # the `ldm` recipe takes its VAE from meta.json: a path is recorded absolute (usable from any folder),
    # a shipped tokenizer by its name
    vae = str(Path(args.vae).resolve()) if Path(args.vae).exists() else str(args.vae)
    meta = {"vae": vae, "vae_preset": tokenizer.preset, "data": args.data, "resolution": resolution}
    start = time.perf_counter()
    out = cache_latents(tokenizer, dataset, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
                        device=device, meta=meta, chunk_size=args.chunk_size, progress=not args.no_progress)
    if rank == 0:
        print(f"cached {len(dataset)} latents to {out} ({world} process(es), {time.perf_counter() - start:.1f} s)")
    return 0
