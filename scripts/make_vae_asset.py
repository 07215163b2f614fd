"""Rebuild the shipped starting tokenizer ``repae-vae-fmnist`` (src/repae/assets/repae-vae-fmnist/).

The embedded analogue of SD-VAE in the paper's main setting ("VAE init."): the tiny f4d4 KL-VAE
trained from scratch with the tokenizer-only recipe (``--recipe vae``: L1 + Laplacian perceptual +
KL + PatchGAN, no regulariser) on the 5,000 embedded training images, then exported with its latent
statistics. Writes ``record.json`` beside it: the exact commands, the seed, the loss curve and the
reconstruction metrics of the 1,000 held-out test images.

    .venv/bin/python scripts/make_vae_asset.py            # about 20 min on 2 idle CPU cores
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from repae.cli import main

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "repae" / "assets" / "repae-vae-fmnist"
STEPS = 1500
TRAIN = ["train", "--config", "tiny-fmnist", "--recipe", "vae", "--no-export", "train.exp_name=repae-vae-fmnist",
         f"train.max_steps={STEPS}", "train.seed=0", "train.threads=2", f"train.checkpoint_every={STEPS}",
         "train.html_report=false", "train.diagnostics_every=0", "train.report_to=none"]


def run(argv: list[str]) -> None:
    print("repae", " ".join(argv), flush=True)
    if main(argv) != 0:
        sys.exit(f"failed: repae {' '.join(argv)}")


def main_() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run([*TRAIN, f"train.output_dir={tmp}"])
        wall = time.perf_counter() - t0
        run_dir = Path(tmp) / "repae-vae-fmnist"
        run(["export-vae", str(run_dir), "--out", str(OUT)])
        for extra in ("discriminator.safetensors",):  # only the tokenizer ships
            (OUT / extra).unlink(missing_ok=True)
        recon = Path(tmp) / "recon.json"
        run(["evaluate", "--recon", str(OUT), "--data", "embedded:test", "--out", str(recon), "--no-progress",
             "--device", "cpu"])
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        record = {
            "name": "repae-vae-fmnist",
            "commands": ["repae " + " ".join([*TRAIN, "train.output_dir=<tmp>"]),
                         "repae export-vae <tmp>/repae-vae-fmnist --out src/repae/assets/repae-vae-fmnist"],
            "seed": 0, "steps": STEPS, "batch_size": 64, "train_wall_s": round(wall, 1),
            "reconstruction_embedded_test": json.loads(recon.read_text()),
            "loss_curve": [{k: v for k, v in row.items() if k in ("step", "vae_loss", "reconstruction_loss", "perceptual_loss",
                                                                  "kl_loss", "gan_loss", "d_loss")}
                           for row in curve],
        }
        (OUT / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {OUT} ({sum(p.stat().st_size for p in OUT.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main_()
