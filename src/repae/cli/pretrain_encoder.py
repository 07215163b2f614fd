"""``repae pretrain-encoder``: self-supervised pretraining of the project's small alignment encoders.

    repae pretrain-encoder                                   # repae-vit-t4: MAE, 40 epochs on the embedded data
    repae pretrain-encoder --out src/repae/assets/repae-vit-t4-fmnist.safetensors   # the shipped ViT
    repae pretrain-encoder --architecture cnn-p4 --objective simclr --data fashion-mnist \
        --batch-size 256 --precision bf16 --epochs 15      # repae-cnn-p4 (scripts/make_encoder_asset.py)

Writes the backbone weights (timm-format safetensors) and a JSON record next to them (command,
seed, epochs, wall time, per-epoch loss curve and, unless ``--no-probe``, the linear-probe
accuracy of the trained encoder and of a random encoder of the same shape).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from repae.cli.argtypes import finite_float, positive_int

DEFAULT_OUT = "runs/encoder/repae-vit-t4.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="embedded", help="dataset spec (see repae.data.build_dataset); default: embedded")
    parser.add_argument("--objective", default="mae", choices=["mae", "dino", "simclr"], help="self-supervised objective")
    parser.add_argument("--architecture", default="vit-t4", choices=["vit-t4", "cnn-p4"],
                        help="vit-t4 = repae-vit-t4 (any objective); cnn-p4 = repae-cnn-p4 (simclr)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast of the forward pass")
    parser.add_argument("--epochs", type=positive_int, default=40)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=finite_float, default=None,
                        help="peak AdamW lr (default: 8e-4 for mae, 1e-3 for dino, 2e-3 for simclr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"weights file (default: {DEFAULT_OUT})")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume-state", default=None,
                        help="per-epoch resume state (default: <out>.state.pt; a rerun with the same flags continues "
                             "from the last finished epoch; deleted once the weights are written)")
    parser.add_argument("--no-probe", action="store_true", help="skip the final linear probe on the embedded test split")


def _command_line(args: argparse.Namespace) -> str:
    if len(sys.argv) > 1 and sys.argv[1] == "pretrain-encoder":
        return shlex.join(["repae", *sys.argv[1:]])
    return "repae pretrain-encoder (called from Python) " + shlex.join(f"--{k.replace('_', '-')}={v}"
                                                                       for k, v in sorted(vars(args).items()))


def run(args: argparse.Namespace) -> int:
    import torch

    from repae.data import build_dataset, dataset_to_tensor
    from repae.ssl.train import PretrainConfig, check_config, pretrain, save_encoder
    from repae.utils.io import check_output_path

    check_output_path(args.out, folder=False, what="--out", suffix=".safetensors")  # before the epochs, not after them
    torch.set_num_threads(args.threads)
    images, _ = dataset_to_tensor(build_dataset(args.data, resolution=32, split="train"), progress=True)
    cfg = PretrainConfig(objective=args.objective, architecture=args.architecture, precision=args.precision,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
    check_config(cfg)  # before reading 60,000 images
    state_path = args.resume_state or str(args.out) + ".state.pt"
    result = pretrain(images, cfg, state_path=state_path)
    extra = {"command": _command_line(args), "data": args.data, "num_images": int(images.shape[0]),
             "final_metrics": {"loss": round(result.epoch_losses[-1], 5)}}
    if not args.no_probe:
        from repae.ssl.probe_encoders import probe_encoders

        accs = probe_encoders({"trained": result.state_dict}, seed=args.seed, device=args.device,
                              architecture=args.architecture)
        extra["final_metrics"].update({"probe_accuracy": accs["trained"].accuracy,
                                       "random_probe_accuracy": accs["random"].accuracy,
                                       "probe": "embedded train -> embedded test (1000), mean-pooled patch tokens, "
                                                "L-BFGS logistic regression, weight_decay 1e-4"})
    record = save_encoder(args.out, result, extra=extra)
    Path(state_path).unlink(missing_ok=True)  # the weights and record now hold everything; a rerun starts over
    print(f"wrote {args.out} (loss {record['final_metrics']['loss']}, wall {record['wall_s']} s)")
    for k in ("probe_accuracy", "random_probe_accuracy"):
        if k in record["final_metrics"]:
            print(f"  {k}: {record['final_metrics'][k]:.4f}")
    return 0
