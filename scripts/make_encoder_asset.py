"""Rebuild the shipped alignment encoder ``repae-cnn-p4`` (src/repae/assets/repae-cnn-p4-fmnist.safetensors).

SimCLR (no labels) on all 60,000 Fashion-MNIST training images of the Debian package
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), bf16 autocast, one thread (so a second job can use the other core).
The embedded test split (1,000 images of the official *test* file) is never seen in pretraining.
``repae pretrain-encoder`` writes the record next to the weights (``repae-cnn-p4-fmnist.json``:
command, seed, per-epoch loss curve, wall time, linear probe of the trained and of a random
encoder of the same shape).

    .venv/bin/python scripts/make_encoder_asset.py            # about 2 h 20 min on one CPU thread (12 epochs: 46 min)
    repae linear-probe --encoder repae-cnn-p4                 # reads the shipped file
"""

from __future__ import annotations

import sys
from pathlib import Path

from repae.cli import main

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "repae" / "assets" / "repae-cnn-p4-fmnist.safetensors"
EPOCHS = 30
COMMAND = ["pretrain-encoder", "--architecture", "cnn-p4", "--objective", "simclr", "--data", "fashion-mnist",
           "--batch-size", "256", "--precision", "bf16", "--epochs", str(EPOCHS), "--seed", "0", "--threads", "1",
           "--out", str(OUT)]

if __name__ == "__main__":
    args = COMMAND + sys.argv[1:]  # extra flags (e.g. --epochs 1 --out /tmp/x.safetensors) override
    print("repae", " ".join(args), flush=True)
    sys.exit(main(args))
