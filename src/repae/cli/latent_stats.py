"""``repae latent-stats``: per-channel latent statistics of a VAE over a dataset (spec 3.6, 11.28).

Examples::

    repae latent-stats                                   # tiny-f4d4 (random init) on the embedded data
    repae latent-stats --vae sd-vae-ft-mse/ --data /data/imagenet/train \\
        --resolution 256 --max-images 50000 --out sdvae-f8d4-latents-stats.pt

``--out`` ending in ``.pt`` writes the REPA-E format {latents_scale, latents_bias} [1, C, 1, 1];
any other name writes JSON {mean, std, ...}. The statistics are always printed as JSON.
"""

from __future__ import annotations

import argparse
import json

from repae.cli.argtypes import nonneg_int, positive_int
from repae.cli.common import add_data_arguments, add_vae_argument, load_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_vae_argument(parser, default="tiny-f4d4")
    add_data_arguments(parser, default="embedded", what="images")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    parser.add_argument("--max-images", type=positive_int, default=None, help="use at most this many images (default all)")
    parser.add_argument("--use-mean", action="store_true",
                        help="statistics of posterior means instead of posterior samples (default samples)")
    parser.add_argument("--seed", type=int, default=0, help="posterior-sampling seed (default 0)")
    parser.add_argument("--num-workers", type=nonneg_int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--out", default=None, help="output file: .json (mean/std) or .pt (REPA-E latents-stats format)")


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from repae.cli.common import default_device
    from repae.data import build_dataset, default_resolution
    from repae.tokenizer.stats import compute_latent_stats, save_stats

    device = default_device(args.device)
    if args.out:
        from repae.utils.io import check_output_path

        check_output_path(args.out, folder=False, what="--out")  # before the work, not after it
    tok = load_tokenizer(args.vae, preset=args.vae_preset)
    resolution = args.resolution or default_resolution(args.data)
    tok.latent_shape(resolution)  # ConfigError early if the resolution does not fit the VAE
    tok.to(device).eval()
    dataset = build_dataset(args.data, resolution=resolution, split="train", strict=args.strict)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    mean, std = compute_latent_stats(tok, loader, use_mean=args.use_mean, max_images=args.max_images,
                                     progress=True, seed=args.seed)
    n = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    meta = {"vae": args.vae, "vae_preset": args.vae_preset, "data": args.data, "resolution": resolution,
            "num_images": n, "statistic": "posterior_mean" if args.use_mean else "posterior_sample"}
    if args.out:
        save_stats(args.out, mean, std, **meta)
    print(json.dumps({"mean": mean.tolist(), "std": std.tolist(), **meta}))
    return 0
