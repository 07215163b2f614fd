"""The offline evaluation network ``repae-evalnet-fmnist``: a small CNN classifier of Fashion-MNIST.

Why it exists
    The FID InceptionV3 weights cannot be obtained offline (offline-assets.md section 2), yet the
    default run trains on the embedded Fashion-MNIST subset and should still report FID-like
    numbers. This network is the project's own *evaluation* feature space, trained supervised on
    the embedded train split (5000 images, 10 classes) with a fixed seed and shipped as
    ``repae/assets/repae-evalnet-fmnist.safetensors`` (+ ``.json`` with the command, seed and test
    accuracy). It is deliberately NOT the REPA alignment encoder: scoring samples in the feature
    space the generator was aligned to would favour REPA / REPA-E.

    Everything computed with it is labelled ``FEATURE_SPACE`` = "repae-evalnet-fmnist (NOT
    comparable with published FID)". The metric formulas are the ADM ones (``metrics.py``); only
    the feature space changes:

    * ``pool``    [B, 256]  global average of the last conv stage (FID, precision/recall);
    * ``spatial`` [B, 512]  first 8 channels of the 8x8 map after stage 2, NHWC-flattened — the
      analogue of ADM's sFID ``mixed_6/conv`` (first 7 channels of an intermediate 17x17 map);
    * ``logits``  [B, 10]   class logits (IS analogue, ``class_accuracy``).

Retrain (a few CPU minutes)::

    python -m repae.evaluation.offline_net --out src/repae/assets/repae-evalnet-fmnist.safetensors
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repae.conventions import uint8_to_unit
from repae.errors import MissingWeightsError
from repae.utils.assets import ASSETS

DEFAULT_WEIGHTS = ASSETS / "repae-evalnet-fmnist.safetensors"
DEFAULT_RECORD = DEFAULT_WEIGHTS.with_suffix(".json")
FEATURE_SPACE = "repae-evalnet-fmnist (NOT comparable with published FID)"
NUM_CLASSES = 10
SPATIAL_CHANNELS = 8


@dataclass(frozen=True)
class EvalNetConfig:
    """Stage widths: stage 1 one 3x3 conv (32x32), stage 2 two (16x16), stage 3 two (8x8) and a
    1x1 conv to ``feature_dim``; 2x2 max pool after stages 1 and 2, global average at the end."""

    widths: tuple[int, int, int] = (32, 64, 128)
    feature_dim: int = 256  # pool feature dimension (FID / precision-recall space)
    num_classes: int = NUM_CLASSES
    spatial_channels: int = SPATIAL_CHANNELS  # channels of the stage-2 map kept for the sFID analogue
    input_size: int = 32  # images are bilinearly resized to this if they differ


def _conv_bn_relu(c_in: int, c_out: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class EvalNet(nn.Module):
    """A ~0.3 M-parameter VGG-style CNN; ``forward(uint8 [B,3,H,W]) -> (pool, spatial, logits)``."""

    def __init__(self, *, config: EvalNetConfig = EvalNetConfig()) -> None:
        super().__init__()
        w1, w2, w3 = config.widths
        self.config = config
        self.stage1 = nn.Sequential(*_conv_bn_relu(3, w1))
        self.stage2 = nn.Sequential(*_conv_bn_relu(w1, w2), *_conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(*_conv_bn_relu(w2, w3), *_conv_bn_relu(w3, w3),
                                    *_conv_bn_relu(w3, config.feature_dim, k=1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(config.feature_dim, config.num_classes)

    def forward_unit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same forward on float images in [-1, 1] (used for training)."""
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        h = F.max_pool2d(self.stage1(x), 2)  # [B, w1, 16, 16]
        h = F.max_pool2d(self.stage2(h), 2)  # [B, w2, 8, 8]
        spatial = h[:, :self.config.spatial_channels].permute(0, 2, 3, 1).flatten(1)  # [B, 8*8*8]
        h = self.stage3(h)  # [B, 256, 8, 8]
        pool = h.mean(dim=(2, 3))  # [B, 256]
        logits = self.fc(self.dropout(pool))  # [B, num_classes]
        return pool, spatial, logits

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 ``[B, 3, H, W]`` -> ``(pool [B, 256], spatial [B, 512], logits [B, 10])``."""
        return self.forward_unit(uint8_to_unit(images))


def load_evalnet(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> EvalNet:
    """Load the shipped (or a given) ``repae-evalnet-fmnist`` safetensors file strictly."""
    from repae.interop.io import check_state_dict, read_weights

    weights = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not weights.is_file():
        raise MissingWeightsError(
            f"offline evaluation network weights not found at {weights}",
            "reinstall the package or retrain them with 'python -m repae.evaluation.offline_net'",
        )
    model = EvalNet()
    state = read_weights(weights, what="evaluation network weights file",
                         fix="reinstall the package or retrain them with 'python -m repae.evaluation.offline_net'")
    check_state_dict(state, model.state_dict(), what=f"{weights} is not a repae-evalnet-fmnist state dict")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def class_accuracy(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                   model: EvalNet | None = None, batch_size: int = 500) -> float:
    """Fraction of uint8 images ``[N, 3, H, W]`` the evaluation network assigns to ``labels``.

    For class-conditional samples: how often a sample of class ``y`` is recognised as ``y``.
    """
    model = model if model is not None else load_evalnet()
    device = next(model.parameters()).device
    x, y = torch.as_tensor(images), torch.as_tensor(labels).long()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))[2]  # [b, 10]
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return correct / max(len(x), 1)


# ---------------------------------------------------------------------------------------------
# Training (run once; the result is committed as an asset)
# ---------------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random translation of up to 2 px (zero fill) of ``[B,3,32,32]``."""
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)  # [B, 3, 36, 36]
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()  # one shift per batch keeps it cheap
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def train_evalnet(*, epochs: int = 30, batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 5e-4,
                  seed: int = 0, source: str = "embedded", device: str = "cpu",
                  progress: bool = True) -> tuple[EvalNet, dict]:
    """Train :class:`EvalNet` on the Fashion-MNIST train split; returns (CPU model, record).

    AdamW with a cosine schedule, flip + translate augmentation, label smoothing 0.1. ``record``
    holds the test accuracy on the held-out test split of the same ``source``, always measured on
    the CPU (the device the shipped weights are checked on).
    """
    from tqdm import tqdm

    from repae.data.embedded import load_fashion_mnist

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = load_fashion_mnist("train", source=source)
    xte, yte = load_fashion_mnist("test", source=source)
    x = uint8_to_unit(torch.from_numpy(xtr)).to(device)  # [N, 3, 32, 32]
    y = torch.from_numpy(ytr).to(device)
    model = EvalNet().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    t0 = time.time()
    bar = tqdm(total=total, desc="train evalnet", disable=not progress)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size].to(device)
            logits = model.forward_unit(_augment(x[idx], g))[2]  # [b, 10]
            loss = F.cross_entropy(logits, y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model = model.cpu().eval()
    acc = class_accuracy(xte, yte, model=model)
    record = {
        "name": "repae-evalnet-fmnist",
        "feature_space": FEATURE_SPACE,
        "train_split": f"fashion-mnist {source} train ({len(x)} images)",
        "test_split": f"fashion-mnist {source} test ({len(xte)} images)",
        "test_accuracy": acc,
        "seed": seed,
        "train_device": str(device),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    return model, record


def main(argv: list[str] | None = None) -> int:
    from repae.utils.io import save_safetensors, write_json

    p = argparse.ArgumentParser(description="train the offline evaluation network repae-evalnet-fmnist")
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS),
                   help="safetensors path (a .json record is written next to it)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--device", default="cpu", help="training device (cpu: ~20 min on 2 cores; cuda: seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="embedded", choices=["embedded", "full"])
    args = p.parse_args(argv)
    model, record = train_evalnet(epochs=args.epochs, seed=args.seed, source=args.source, device=args.device)
    record["command"] = "python -m repae.evaluation.offline_net " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    save_safetensors(out, model.state_dict(), metadata={"feature_space": FEATURE_SPACE, "seed": args.seed,
                                                        "test_accuracy": record["test_accuracy"]})
    write_json(out.with_suffix(".json"), record)
    print(f"test accuracy {record['test_accuracy']:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
