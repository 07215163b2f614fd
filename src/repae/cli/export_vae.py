"""``repae export-vae``: write the E2E-VAE of a run in diffusers format with its latent statistics.
"""

from __future__ import annotations

import argparse

from repae.training.export import export_vae


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (uses its latest checkpoint) or a checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder (diffusers format + latent_stats.json)")
    parser.add_argument("--live-stats", action="store_true", help="use the live normaliser statistics instead of EMA")


def run(args: argparse.Namespace) -> int:
    from repae.utils.io import check_output_path

    check_output_path(args.out, folder=True, what="--out")
    out = export_vae(args.run, args.out, ema_stats=not args.live_stats)
    print(f"exported E2E-VAE to {out}")
    return 0
