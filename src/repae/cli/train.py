"""`repae train`: run a recipe from a preset plus dotted overrides.

With no arguments it runs the preset ``fmnist``: REPA-E end to end on the embedded Fashion-MNIST
subset from the shipped tokenizer, SiT-XS/1 aligned to the project's SimCLR encoder, bf16, on the
CPU, and leaves checkpoints, sample grids, the end-of-run sample metrics, metrics, a report and the
exported E2E-VAE in ``runs/repae-fmnist``.

Multi-GPU / multi-node: ``torchrun --nproc_per_node 8 -m repae.cli train --config NAME ...``.
"""

from __future__ import annotations

import argparse
import logging

from repae.config import available_presets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="fmnist",
                        help=f"preset name ({', '.join(available_presets())}) or a YAML path [fmnist]")
    parser.add_argument("--recipe", default=None, help="shortcut for train.recipe=... (repa-e, repa, vanilla, ...)")
    parser.add_argument("--no-export", action="store_true", help="do not export the E2E-VAE at the end")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100 model.preset=SiT-B/2")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.recipe:
        overrides.append(f"train.recipe={args.recipe}")
    from repae.api import run_training

    result = run_training(args.config, overrides=overrides, export=not args.no_export)
    if result.is_main:
        summary = " ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
        print(f"done: {result.step} steps in {result.seconds:.1f}s -> {result.run_dir} | {summary}")
        if result.exported is not None:
            print(f"exported E2E-VAE to {result.exported}")
    return 0
