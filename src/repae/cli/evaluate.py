"""``repae evaluate``: gFID/sFID/IS/precision/recall of samples, or rFID/PSNR/SSIM/LPIPS of a VAE.

Three mutually exclusive inputs:

* ``--samples PATH``: an ADM ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1`` labels) or a PNG folder;
* ``--checkpoint RUN``: samples are drawn from a training checkpoint and streamed through the
  feature extractor (nothing is written to disk);
* ``--recon DIR`` (alias ``--vae-checkpoint``): reconstruction metrics of an exported VAE over ``--data``.

Feature space: ``--inception-weights`` (or ``$REPAE_INCEPTION_WEIGHTS``) selects the ADM
InceptionV3; without it the offline ``evalnet-fmnist`` network is used and every number is
labelled NOT comparable with published FID. Prints one line; ``--out`` also writes JSON.

Examples::

    repae evaluate --samples samples.npz --reference VIRTUAL_imagenet256_labeled.npz \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth --out metrics.json
    repae evaluate --checkpoint runs/tiny --num-samples 5000        # offline net, embedded reference
    repae evaluate --recon runs/tiny/vae --data embedded:test
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from typing import Any

import torch

from repae.cli.argtypes import positive_int
from repae.cli.common import (
    add_data_arguments,
    add_official_arguments,
    add_sampling_arguments,
    default_device,
    image_source,
    load_generator,
    load_tokenizer,
    official_kwargs,
    resolve_sampling,
)
from repae.errors import ConfigError

DEFAULT_OFFLINE_REFERENCE = "embedded:train"  # reference for the offline network when none is given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="ADM sample .npz (arr_0 uint8 [N,H,W,3]) or a folder of PNGs")
    src.add_argument("--checkpoint", help="training run / checkpoint to sample from (streamed, nothing written), or "
                     "an official checkpoint file (or its hub id in the local Hugging Face cache) with --model")
    src.add_argument("--recon", "--vae-checkpoint", dest="vae_checkpoint",
                     help="exported VAE directory: reconstruction metrics (rFID, PSNR, SSIM, LPIPS) over --data")
    parser.add_argument("--reference", help="reference .npz (ADM VIRTUAL_*.npz or 'repae reference' output) or an "
                        f"image source; default for the offline network: {DEFAULT_OFFLINE_REFERENCE}")
    add_data_arguments(parser, what="images for --recon and for a --reference that is not an .npz")
    parser.add_argument("--extractor", choices=["inception", "evalnet-fmnist"], default=None,
                        help="feature network (default: inception if weights are given, else evalnet-fmnist)")
    parser.add_argument("--inception-weights", help="path to pt_inception-2015-12-05-6726825d.pth, or a hub id "
                        "in the local Hugging Face cache (or set REPAE_INCEPTION_WEIGHTS)")
    parser.add_argument("--num-samples", type=positive_int, default=None,
                        help="samples to draw with --checkpoint (default 50000) / images to use otherwise "
                        "(default all)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward (ADM: 64)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_sampling_arguments(parser)
    parser.add_argument("--num-classes", type=positive_int, default=None, help="override the generator's number of classes")
    add_official_arguments(parser)
    r = parser.add_argument_group("reconstruction (--recon)")
    r.add_argument("--lpips-vgg-weights", default=None, help="VGG16 weights for LPIPS: a file or a hub id in the "
                   "local Hugging Face cache (omitted: no LPIPS)")
    r.add_argument("--sample-posterior", action="store_true", help="decode a posterior sample instead of its mode")


def sample_stream(gen: Any, labels: torch.Tensor, *, batch_size: int, seed: int,
                  call_kwargs: dict) -> Iterator[torch.Tensor]:
    """Draw one image per label, batch by batch, with the per-sample seeds of ``repae sample``.

    Labels and seeds come from :mod:`repae.sampling.generator` (``sample_labels`` /
    ``sample_seeds``), so sample ``i`` here is the same image ``repae sample`` writes for ``i``.
    """
    from repae.sampling.generator import sample_seeds

    for start in range(0, len(labels), batch_size):
        idx = list(range(start, min(start + batch_size, len(labels))))
        yield gen(labels[idx], seeds=sample_seeds(seed, idx), **call_kwargs)  # uint8 [b, 3, H, W]


def _format(result: dict) -> str:
    keys = ("fid", "sfid", "inception_score", "precision", "recall", "class_accuracy",
            "rfid", "psnr", "ssim", "lpips")
    names = {"inception_score": "IS", "class_accuracy": "class_acc"}
    parts = [f"{names.get(k, k)} {result[k]:.4f}" for k in keys if k in result and isinstance(result[k], float)]
    n = result.get("num_samples", result.get("num_images"))
    return " | ".join(parts + [f"n {n}", f"[{result['feature_space']}]"])


def run(args: argparse.Namespace) -> int:
    from repae.evaluation.features import get_extractor
    from repae.evaluation.reference import compute_reference, evaluate_reconstruction, evaluate_samples, load_reference
    from repae.utils.io import write_json

    if args.checkpoint:
        resolve_sampling(args, None)  # bad flag values fail before any network is built
    if args.out:
        from repae.utils.io import check_output_path

        check_output_path(args.out, folder=False, what="--out")  # before the work, not after it
    device = default_device(args.device)
    extractor = get_extractor(args.extractor, inception_weights=args.inception_weights, device=device)
    progress = not args.no_progress

    if args.vae_checkpoint:
        tokenizer = load_tokenizer(args.vae_checkpoint, preset=args.vae_preset)
        if isinstance(tokenizer, torch.nn.Module):
            tokenizer = tokenizer.to(device).eval()
        lpips = None
        if args.lpips_vgg_weights:
            from repae.losses.perceptual import build_perceptual

            # evaluation LPIPS takes [-1, 1] images as the lpips package does (no training remap)
            lpips = build_perceptual("lpips", vgg_weights=args.lpips_vgg_weights,
                                     remap_inputs=False).to(device).eval()
        data = image_source(args.data, resolution=args.resolution, split="test", strict=args.strict)
        result = evaluate_reconstruction(tokenizer, data, extractor, batch_size=args.batch_size,
                                         max_images=args.num_samples, lpips=lpips,
                                         sample_posterior=args.sample_posterior, progress=progress)
        result.update(vae_checkpoint=args.vae_checkpoint, data=args.data)
    else:
        reference = args.reference
        if reference is None:
            if extractor.name != "evalnet-fmnist":
                raise ConfigError("--reference is required with the Inception extractor (e.g. ADM's "
                                  "VIRTUAL_imagenet256_labeled.npz, or build one with 'repae reference')")
            reference = DEFAULT_OFFLINE_REFERENCE
        if str(reference).endswith(".npz"):
            ref = load_reference(reference, extractor, batch_size=args.batch_size, progress=progress)
        else:
            source = image_source(reference, resolution=args.resolution, split="train", strict=args.strict)
            ref = compute_reference(source, extractor, batch_size=args.batch_size, progress=progress)
        if args.checkpoint:
            gen = load_generator(args.checkpoint, ema=not args.no_ema, device=device, **official_kwargs(args))
            gen.precision = args.precision or getattr(gen, "precision", "fp32")
            num_classes = args.num_classes or getattr(gen, "num_classes", None)
            if not num_classes:
                raise ConfigError("the generator does not expose num_classes; pass --num-classes")
            call_kwargs = resolve_sampling(args, getattr(gen, "sample_defaults", None))
            from repae.sampling.generator import sample_labels

            labels = sample_labels(args.num_samples or 50_000, args.seed, num_classes)  # uniform, as generate.py
            source = sample_stream(gen, labels, batch_size=args.batch_size, seed=args.seed, call_kwargs=call_kwargs)
            result = evaluate_samples(source, ref, extractor, batch_size=args.batch_size, labels=labels.numpy(),
                                      progress=progress)
            result.update(checkpoint=args.checkpoint, seed=args.seed, sampling_precision=gen.precision, **call_kwargs)
        else:
            result = evaluate_samples(args.samples, ref, extractor, batch_size=args.batch_size,
                                      max_images=args.num_samples, progress=progress)
            result["samples"] = args.samples
        result["reference"] = str(reference)
    print(_format(result))
    if args.out:
        write_json(args.out, {k: (v if not (isinstance(v, float) and math.isnan(v)) else None)
                              for k, v in result.items()})
    return 0

