"""``repae cache-latents``: encode a dataset once with a frozen (E2E-)VAE (see :mod:`repae.data.latent_cache`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from repae.cli.common import add_data_arguments, add_vae_argument, load_tokenizer
from repae.data.latent_cache import cache_latents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_vae_argument(parser)
    add_data_arguments(parser, default="embedded", what="images to encode")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> int:
    from repae.data import build_dataset, default_resolution

    tokenizer = load_tokenizer(args.vae, preset=args.vae_preset)
    resolution = args.resolution or default_resolution(args.data)
    dataset = build_dataset(args.data, resolution=resolution, split="train", strict=args.strict)
    # the `ldm` recipe takes its VAE from meta.json: a path is recorded absolute (usable from any folder),
    # a shipped tokenizer by its name
    vae = str(Path(args.vae).resolve()) if Path(args.vae).exists() else str(args.vae)
    meta = {"vae": vae, "vae_preset": tokenizer.preset, "data": args.data, "resolution": resolution}
    out = cache_latents(tokenizer, dataset, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
                        device=args.device, meta=meta)
    print(f"cached {len(dataset)} latents to {out}")
    return 0
