"""``repae linear-probe``: linear-probe accuracy of an encoder's mean-pooled patch tokens.

    repae linear-probe                                   # shipped repae-vit-t4, embedded train -> test
    repae linear-probe --encoder random                  # same architecture, random init (baseline)
    repae linear-probe --encoder pixels                  # raw grey values (83.3 %: what a target must beat)
    repae linear-probe --encoder repae-cnn-p4            # the shipped SimCLR CNN

Prints the accuracy and writes a JSON ``{accuracy, train_accuracy, ...}`` (``--out``).
"""

from __future__ import annotations

import argparse

import torch

from repae.cli.argtypes import finite_float, positive_int
from repae.ssl.probe_encoders import _data, token_function


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="repae-vit-t4",
                        help="'repae-vit-t4' (default), 'random' (repae-vit-t4 shape, random init), 'pixels' "
                             "(raw grey values, the baseline), or any name of repae.encoders (e.g. repae-cnn-p4)")
    parser.add_argument("--encoder-weights", default=None, help="weights file (default: the shipped asset)")
    parser.add_argument("--train-data", default="embedded", help="dataset spec for fitting the head (train split)")
    parser.add_argument("--test-data", default="embedded", help="dataset spec for the accuracy (test split)")
    parser.add_argument("--resolution", type=positive_int, default=32, help="image side fed to the encoder")
    parser.add_argument("--weight-decay", type=finite_float, default=1e-4, help="L2 on the linear head")
    parser.add_argument("--seed", type=int, default=0, help="init seed of the 'random' encoder")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON result (default: runs/probe/<encoder>.json)")


# --------------------------------------------------------------------------------------------
# encoders as uint8 -> patch-token functions
# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from repae.ssl.probe import extract_features, linear_probe
    from repae.utils.io import write_json

    out = args.out or f"runs/probe/{args.encoder}.json"
    from repae.utils.io import check_output_path

    check_output_path(out, folder=False, what="--out")  # before the work, not after it
    torch.set_num_threads(args.threads)
    fn = token_function(args.encoder, weights=args.encoder_weights, seed=args.seed, resolution=args.resolution,
                        device=args.device)
    xtr, ytr = _data(args.train_data, "train", args.resolution)
    xte, yte = _data(args.test_data, "test", args.resolution)
    ftr = extract_features(fn, xtr, batch_size=args.batch_size, device=args.device)
    fte = extract_features(fn, xte, batch_size=args.batch_size, device=args.device)
    result = linear_probe(ftr, ytr, fte, yte, weight_decay=args.weight_decay)
    record = {**asdict(result), "encoder": args.encoder, "encoder_weights": args.encoder_weights,
              "train_data": args.train_data, "test_data": args.test_data, "features": "raw grey values" if args.encoder == "pixels" else "mean-pooled patch tokens",
              "seed": args.seed}
    write_json(out, record)
    print(f"linear-probe accuracy of {args.encoder}: {result.accuracy:.4f} "
          f"(train {result.train_accuracy:.4f}, {result.num_train} -> {result.num_test} images); wrote {out}")
    return 0
