"""``repae reference``: build a reference batch (ADM ``.npz`` layout + features) from an image source.

The output holds ``mu``/``sigma`` (pool features) and ``mu_s``/``sigma_s`` (spatial features) over
all images of ``--source``, ``arr_0`` and ``pool_features`` of the first ``--pr-images`` images
(precision/recall), and the ``feature_space`` it was made in. Written atomically.

Examples::

    repae reference --source embedded:train --out refs/fmnist-evalnet.npz
    repae reference --source imagenet_train_256.npz --out refs/in256.npz \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import argparse

from repae.cli.argtypes import nonneg_int, positive_int
from repae.cli.common import add_data_arguments, default_device, image_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, flag="--source", default=None, what="reference images (an ADM .npz streams as it is)")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--extractor", choices=["inception", "evalnet-fmnist"], default=None,
                        help="feature network (default: inception if weights are given, else evalnet-fmnist)")
    parser.add_argument("--inception-weights", help="path to pt_inception-2015-12-05-6726825d.pth, or a hub id "
                        "in the local Hugging Face cache (or set REPAE_INCEPTION_WEIGHTS)")
    parser.add_argument("--max-images", type=positive_int, default=None, help="use at most this many images (default all)")
    parser.add_argument("--pr-images", type=nonneg_int, default=10_000,
                        help="images kept (arr_0 + pool features) for precision/recall (ADM: 10000)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from repae.evaluation.features import get_extractor
    from repae.evaluation.reference import build_reference
    from repae.utils.io import check_output_path

    check_output_path(args.out, folder=False, what="--out", suffix=".npz")  # before the work, not after it
    device = default_device(args.device)
    extractor = get_extractor(args.extractor, inception_weights=args.inception_weights, device=device)
    source = image_source(args.source, resolution=args.resolution, split="train", strict=args.strict)
    ref = build_reference(source, extractor, args.out, batch_size=args.batch_size, max_images=args.max_images,
                          pr_images=args.pr_images, progress=not args.no_progress)
    print(f"wrote {args.out}: statistics over {ref.num_images} images, "
          f"{0 if ref.pool_features is None else len(ref.pool_features)} for precision/recall "
          f"[{ref.feature_space}]")
    return 0
