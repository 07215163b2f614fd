"""Rebuild the shipped starting tokenizer ``repae-vae-fmnist`` (src/repae/assets/repae-vae-fmnist/).

The embedded analogue of SD-VAE in the paper's main setting ("VAE init."): the tiny f4d4 KL-VAE
trained from scratch with the tokenizer-only recipe (``--recipe vae``: L1 + Laplacian perceptual +
KL + PatchGAN, no regulariser) on the 5,000 embedded training images, then exported with its latent
statistics. Writes ``record.json`` beside it: the exact commands, the seed, the loss curve and the
reconstruction metrics of the 1,000 held-out test images.

    .venv/bin/python scripts/make_vae_asset.py            # about 20 min on 2 idle CPU cores
    .venv/bin/python scripts/make_vae_asset.py --out runs/my-vae --steps 300 --seed 1   # a variant elsewhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from repae.cli import main

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "repae" / "assets" / "repae-vae-fmnist"
STEPS = 1500


def train_argv(steps: int, seed: int, threads: int) -> list[str]:
    """The `repae train` call that makes the tokenizer (its output folder is added by the caller)."""
    return ["train", "--config", "tiny-fmnist", "--recipe", "vae", "--no-export", "train.exp_name=repae-vae-fmnist",
            f"train.max_steps={steps}", f"train.seed={seed}", f"train.threads={threads}",
            f"train.checkpoint_every={steps}", "train.html_report=false", "train.diagnostics_every=0",
            "train.report_to=none"]


def run(argv: list[str]) -> None:
    print("repae", " ".join(argv), flush=True)
    if main(argv) != 0:
        sys.exit(f"failed: repae {' '.join(argv)}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help=f"tokenizer folder to write (default: the shipped asset, {OUT})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps of batch 64 (default {STEPS})")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        p.error("--steps and --threads must be positive")
    return args


def main_(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out: Path = args.out
    train = train_argv(args.steps, args.seed, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run([*train, f"train.output_dir={tmp}"])
        wall = time.perf_counter() - t0
        run_dir = Path(tmp) / "repae-vae-fmnist"
        run(["export-vae", str(run_dir), "--out", str(out)])
        for extra in ("discriminator.safetensors",):  # only the tokenizer ships
            (out / extra).unlink(missing_ok=True)
        recon = Path(tmp) / "recon.json"
        run(["evaluate", "--recon", str(out), "--data", "embedded:test", "--out", str(recon), "--no-progress",
             "--device", "cpu"])
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        shown = out.relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
        record = {
            "name": "repae-vae-fmnist",
            "commands": ["repae " + " ".join([*train, "train.output_dir=<tmp>"]),
                         f"repae export-vae <tmp>/repae-vae-fmnist --out {shown}"],
            "seed": args.seed, "steps": args.steps, "batch_size": 64, "train_wall_s": round(wall, 1),
            "reconstruction_embedded_test": json.loads(recon.read_text()),
            "loss_curve": [{k: v for k, v in row.items() if k in ("step", "vae_loss", "reconstruction_loss", "perceptual_loss",
                                                                  "kl_loss", "gan_loss", "d_loss")}
                           for row in curve],
        }
        (out / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main_()
