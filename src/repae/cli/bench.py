"""``repae bench``: seconds per training step, images per second and peak memory (see :mod:`repae.training.bench`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from repae.config import load_config
from repae.training.bench import _random_vgg, bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny-fmnist", help="preset name or YAML path")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile, allocator)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--flops", action="store_true",
                        help="count the FLOPs of one step (torch.utils.flop_counter) and report achieved TFLOP/s")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="accelerator peak (e.g. 989 for H100 bf16 dense) to report MFU = achieved / peak")
    parser.add_argument("overrides", nargs="*", help="dotted overrides (model.preset=SiT-B/2 ...)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"train.output_dir={tmp}", "train.resume=false", "train.report_to=none", *args.overrides]
        cfg = load_config(args.config, overrides)
        cfg.align.encoder_weights = []
        if cfg.loss.perceptual == "lpips" and not cfg.loss.vgg_weights:
            cfg.loss.vgg_weights = _random_vgg(Path(tmp))
        result = bench(cfg, steps=args.steps, warmup=args.warmup, device=args.device, count_flops=args.flops,
                       peak_tflops=args.peak_tflops)
    line = " ".join(f"{k}={v}" for k, v in result.items())
    print(line)
    if args.json:
        from repae.utils.io import write_json

        write_json(args.json, result)
    return 0
