"""Evaluation: ADM-compatible FID / sFID / IS / precision / recall, rFID / PSNR / SSIM / LPIPS.

* ``metrics``     pure functions on features and statistics (Fréchet distance, IS, P/R, PSNR, SSIM);
* ``inception``   the TF-ported FID InceptionV3 (user-supplied ``pt_inception-2015-12-05-6726825d.pth``);
* ``offline_net`` the shipped offline evaluation CNN ``repae-evalnet-fmnist`` (NOT comparable with published FID);
* ``features``    the extractor registry and streaming feature computation over any image source;
* ``reference``   ADM reference batches, ``evaluate_samples`` and ``evaluate_reconstruction``;
* ``cli`` / ``reference_cli``  the ``repae evaluate`` / ``repae reference`` verbs.
"""

from repae.evaluation.features import (
    EXTRACTORS,
    FeatureBatch,
    FeatureExtractor,
    Features,
    compute_features,
    get_extractor,
)
from repae.evaluation.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
    psnr,
    ssim,
)
from repae.evaluation.reference import (
    ReferenceStats,
    build_reference,
    compute_reference,
    evaluate_reconstruction,
    evaluate_samples,
    load_reference,
)

__all__ = [
    "EXTRACTORS", "FeatureBatch", "FeatureExtractor", "Features", "ReferenceStats", "build_reference",
    "compute_features", "compute_reference", "evaluate_reconstruction", "evaluate_samples", "feature_statistics",
    "frechet_distance", "get_extractor", "inception_score", "load_reference", "precision_recall", "psnr", "ssim",
]
