"""Reference batches and the two evaluation procedures: generated samples and VAE reconstructions.

Reference ``.npz`` layout (ADM, spec-related-methods.md 5.5), e.g. ``VIRTUAL_imagenet256_labeled.npz``:

    arr_0    uint8 [M, H, W, 3]   reference images (ADM: 10,000) used for precision/recall
    mu       float64 [2048]       pool_3 mean over the whole training set      (FID)
    sigma    float64 [2048, 2048] pool_3 covariance                            (FID)
    mu_s     float64 [2023]       mixed_6/conv mean                            (sFID)
    sigma_s  float64 [2023, 2023] mixed_6/conv covariance                      (sFID)

The references this module writes (``build_reference``) add

    pool_features  float32 [M, D]  pool features of ``arr_0`` (precision/recall without re-running the net)
    feature_space  str             which network made the statistics (e.g. "repae-evalnet-fmnist (...)")
    num_images     int64           how many images the statistics cover

When ``mu`` is present the stored statistics are used for FID/sFID and ``arr_0`` only for
precision/recall (ADM behaviour, pitfall 23); a batch with images only gets its statistics
computed from ``arr_0``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repae.conventions import uint8_to_unit, unit_to_uint8
from repae.errors import ConfigError
from repae.evaluation import metrics
from repae.evaluation.features import (
    FeatureExtractor,
    Features,
    compute_features,
    iter_uint8_batches,
    read_npz_labels,
)

ADM_FEATURE_SPACE = "inception-2015-12-05 (ADM reference batch)"
PR_IMAGES = 10_000  # ADM keeps 10,000 reference images for precision/recall


@dataclass
class ReferenceStats:
    """Statistics (FID, sFID) and precision/recall features of a reference set."""

    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    mu_s: np.ndarray  # [S]
    sigma_s: np.ndarray  # [S, S]
    pool_features: np.ndarray | None  # [M, D] features of the P/R reference images
    feature_space: str
    num_images: int  # images the statistics cover
    images: np.ndarray | None = None  # [M, H, W, 3] uint8 (arr_0)


def _feature_space_matches(ref_space: str, extractor: FeatureExtractor) -> bool:
    # An ADM batch carries no label; it is Inception space by construction.
    if ref_space == ADM_FEATURE_SPACE:
        return extractor.name == "inception"
    return ref_space == extractor.feature_space


def reference_from_features(feats: Features, *, pr_images: int = PR_IMAGES) -> ReferenceStats:
    """Statistics over all of ``feats``; the first ``pr_images`` pool features kept for P/R."""
    mu, sigma = metrics.feature_statistics(feats.pool)
    mu_s, sigma_s = metrics.feature_statistics(feats.spatial)
    return ReferenceStats(mu, sigma, mu_s, sigma_s, feats.pool[:pr_images].astype(np.float32),
                          feats.feature_space, len(feats), feats.images)


def compute_reference(source: Any, extractor: FeatureExtractor, *, batch_size: int = 64,
                      max_images: int | None = None, pr_images: int = PR_IMAGES,
                      progress: bool = True) -> ReferenceStats:
    """In-memory reference over an image source (statistics over all, P/R over the first ``pr_images``)."""
    feats = compute_features(source, extractor, batch_size=batch_size, progress=progress,
                             max_images=max_images, keep_images=pr_images)
    return reference_from_features(feats, pr_images=pr_images)


def save_reference(ref: ReferenceStats, out: str | os.PathLike) -> Path:
    """Write ``ref`` in the ADM layout plus ``pool_features``/``feature_space``/``num_images``, atomically."""
    from repae.utils.io import atomic_path, check_output_path

    out = check_output_path(out, folder=False, what="reference output", suffix=".npz")
    arrays = {"mu": ref.mu, "sigma": ref.sigma, "mu_s": ref.mu_s, "sigma_s": ref.sigma_s,
              "feature_space": np.array(ref.feature_space), "num_images": np.array(ref.num_images, np.int64)}
    if ref.images is not None:
        arrays["arr_0"] = ref.images
    if ref.pool_features is not None:
        arrays["pool_features"] = ref.pool_features
    with atomic_path(out) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz"
        np.savez(f, **arrays)
    return out


def build_reference(source: Any, extractor: FeatureExtractor, out: str | os.PathLike, *, batch_size: int = 64,
                    max_images: int | None = None, pr_images: int = PR_IMAGES,
                    progress: bool = True) -> ReferenceStats:
    """Compute a reference over ``source`` with ``extractor`` and write it to ``out`` (see module docstring)."""
    if isinstance(source, (str, os.PathLike)):
        read_npz_labels(source)  # a malformed labels array is refused before the long feature pass
    ref = compute_reference(source, extractor, batch_size=batch_size, max_images=max_images,
                            pr_images=pr_images, progress=progress)
    save_reference(ref, out)
    return ref


def load_reference(path: str | os.PathLike, extractor: FeatureExtractor | None = None, *, batch_size: int = 64,
                   progress: bool = True) -> ReferenceStats:
    """Load an ADM reference batch or one of ours.

    Missing pieces are computed with ``extractor``: the P/R features of ``arr_0`` (ADM batches
    ship only images) and, when there is no ``mu``, the statistics. Raises ``ConfigError`` if the
    stored statistics live in another feature space than ``extractor``'s.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference batch {path} does not exist; build one with 'repae reference --source ... "
                          f"--out {path}' or download ADM's VIRTUAL_*.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            stored = {k: z[k] for k in ("mu", "sigma", "mu_s", "sigma_s", "pool_features") if k in keys}
            space = str(z["feature_space"]) if "feature_space" in keys else ADM_FEATURE_SPACE
            num = int(z["num_images"]) if "num_images" in keys else -1
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # truncated / not a zip / pickled
        raise ConfigError(f"reference batch {path} is not a readable .npz ({type(err).__name__}); rebuild it with "
                          f"'repae reference --source ... --out {path}' or download ADM's VIRTUAL_*.npz again") from None
    if not stored and "feature_space" not in keys:  # images only: their features come from this extractor
        space = extractor.feature_space if extractor is not None else space
    if extractor is not None and not _feature_space_matches(space, extractor):
        raise ConfigError(f"{path} holds statistics in feature space {space!r} but the extractor is "
                          f"{extractor.feature_space!r}; rebuild it with 'repae reference' and the same extractor")
    has_stats = all(k in stored for k in ("mu", "sigma", "mu_s", "sigma_s"))
    if has_stats and "pool_features" in stored:
        return ReferenceStats(stored["mu"], stored["sigma"], stored["mu_s"], stored["sigma_s"],
                              stored["pool_features"], space, num)
    if extractor is None:
        raise ConfigError(f"{path} needs a feature extractor to compute its missing features "
                          "(pass inception weights for an ADM batch)")
    feats = compute_features(path, extractor, batch_size=batch_size, progress=progress)
    if has_stats:  # ADM: stored training-set statistics; arr_0 only for precision/recall
        return ReferenceStats(stored["mu"], stored["sigma"], stored["mu_s"], stored["sigma_s"],
                              feats.pool.astype(np.float32), space, num)
    ref = reference_from_features(feats, pr_images=len(feats))
    return ref


# ---------------------------------------------------------------------------------------------
# Generated samples: FID / sFID / IS / precision / recall (+ class accuracy)
# ---------------------------------------------------------------------------------------------


def metrics_from_features(feats: Features, ref: ReferenceStats, *, labels: np.ndarray | None = None,
                          split_size: int = 5000, pr_batch_size: int = 10000) -> dict:
    """All sample metrics from precomputed features (ADM evaluator order: FID, sFID, IS, P, R)."""
    mu, sigma = metrics.feature_statistics(feats.pool)
    mu_s, sigma_s = metrics.feature_statistics(feats.spatial)
    out: dict[str, Any] = {
        "fid": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma),
        "sfid": metrics.frechet_distance(mu_s, sigma_s, ref.mu_s, ref.sigma_s),
        "inception_score": metrics.inception_score(feats.logits, split_size=split_size),
    }
    if ref.pool_features is not None and len(ref.pool_features) > 3 and len(feats) > 3:
        out["precision"], out["recall"] = metrics.precision_recall(ref.pool_features, feats.pool,
                                                                   batch_size=pr_batch_size)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)[:len(feats)]
        k = feats.logits.shape[1]
        if len(labels) and (labels.min() < 0 or labels.max() >= k):  # not classes this network knows
            import warnings

            warnings.warn(f"labels span {labels.min()}..{labels.max()} but the evaluation network "
                          f"({feats.feature_space}) has classes 0..{k - 1}: class accuracy left out; store labels "
                          "in that range to get it", stacklevel=2)
        else:
            out["class_accuracy"] = float((feats.logits.argmax(1) == labels).mean())
    out.update(num_samples=len(feats), num_reference_stats=ref.num_images,
               num_reference_pr=0 if ref.pool_features is None else len(ref.pool_features),
               feature_space=feats.feature_space)
    return out


def evaluate_samples(samples: Any, reference: ReferenceStats | str | os.PathLike, extractor: FeatureExtractor, *,
                     batch_size: int = 64, max_images: int | None = None, labels: np.ndarray | None = None,
                     split_size: int = 5000, progress: bool = True) -> dict:
    """FID, sFID, IS, precision, recall of ``samples`` against ``reference`` in ``extractor``'s space.

    ``class_accuracy`` is added when class labels are known (``labels``, or ``arr_1`` of a sample
    ``.npz``) and the extractor classifies the same classes (the offline Fashion-MNIST network).
    Every result carries ``feature_space``.
    """
    ref = reference if isinstance(reference, ReferenceStats) else load_reference(
        reference, extractor, batch_size=batch_size, progress=progress)
    if not _feature_space_matches(ref.feature_space, extractor):
        raise ConfigError(f"reference is in feature space {ref.feature_space!r}, extractor is "
                          f"{extractor.feature_space!r}; build the reference with the same extractor")
    feats = compute_features(samples, extractor, batch_size=batch_size, progress=progress, max_images=max_images)
    if labels is None and isinstance(samples, (str, os.PathLike)):
        labels = read_npz_labels(samples)
    if extractor.name != "evalnet-fmnist":
        labels = None  # Inception's 1008 classes are not the generator's classes
    result = metrics_from_features(feats, ref, labels=labels, split_size=split_size)
    result["extractor"] = extractor.name
    return result


# ---------------------------------------------------------------------------------------------
# VAE reconstructions: rFID / PSNR / SSIM / LPIPS
# ---------------------------------------------------------------------------------------------


def _module_device(obj: Any) -> torch.device:
    try:
        return next(obj.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


@torch.inference_mode()
def evaluate_reconstruction(tokenizer: Any, dataset: Any, extractor: FeatureExtractor, *, batch_size: int = 64,
                            max_images: int | None = None, lpips: Callable | None = None,
                            sample_posterior: bool = False, progress: bool = True) -> dict:
    """rFID, PSNR, SSIM (and LPIPS if ``lpips`` is given) of ``tokenizer`` reconstructions of ``dataset``.

    Protocol (spec-related-methods.md 5.7): each image -> ``tokenizer.encode(x).mode()`` (or
    ``.sample()``) -> ``decode`` -> clamp to [-1, 1] -> uint8 with rounding (``127.5 x + 128``,
    LightningDiT's ``evaluate_tokenizer``; truncation would lose one level on exact round trips);
    rFID is the Fréchet distance between the pool features of the originals and of the uint8
    reconstructions (NOT against an ADM training-set reference); PSNR and SSIM are per-image on
    [-1, 1] floats (data range 2, as LightningDiT) and averaged (PSNR over finite values, i.e.
    perfectly reconstructed images are skipped); LPIPS is ``lpips(x, x_rec)`` on [-1, 1], averaged.
    """
    from tqdm import tqdm

    device = _module_device(tokenizer)
    orig_pool, rec_pool, psnrs, ssims, lpipss = [], [], [], [], []
    n = 0
    total = max_images if max_images is not None else None
    bar = tqdm(total=total, desc="reconstruct", unit="img", disable=not progress)
    for u in iter_uint8_batches(dataset, batch_size=batch_size):
        if max_images is not None:
            u = u[:max_images - n]
        if len(u) == 0:
            break
        x = uint8_to_unit(u).to(device)  # [b, 3, H, W] in [-1, 1]
        posterior = tokenizer.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        x_rec = tokenizer.decode(z).float().clamp(-1, 1)  # [b, 3, H, W]
        u_rec = unit_to_uint8(x_rec, rounding=True)  # 127.5 x + 128 as LightningDiT; lossless for a perfect VAE
        psnrs.append(metrics.psnr(x, x_rec, data_range=2.0).cpu())
        ssims.append(metrics.ssim(x, x_rec, data_range=2.0).cpu())
        if lpips is not None:
            lpipss.append(torch.as_tensor(lpips(x, x_rec)).float().flatten().cpu())
        orig_pool.append(extractor(u).pool.cpu().numpy())
        rec_pool.append(extractor(u_rec).pool.cpu().numpy())
        n += len(u)
        bar.update(len(u))
        if max_images is not None and n >= max_images:
            break
    bar.close()
    if n < 2:
        raise ConfigError("reconstruction metrics need at least 2 images; pass a dataset with 2 or more images "
                          "(and --num-samples >= 2)")
    mu1, s1 = metrics.feature_statistics(np.concatenate(orig_pool))
    mu2, s2 = metrics.feature_statistics(np.concatenate(rec_pool))
    psnr_all = torch.cat(psnrs)
    out: dict[str, Any] = {
        "rfid": metrics.frechet_distance(mu2, s2, mu1, s1),
        "psnr": float(psnr_all[torch.isfinite(psnr_all)].mean()) if torch.isfinite(psnr_all).any() else float("inf"),
        "ssim": float(torch.cat(ssims).mean()),
    }
    if lpipss:
        out["lpips"] = float(torch.cat(lpipss).mean())
    out.update(num_images=n, feature_space=extractor.feature_space, extractor=extractor.name,
               posterior="sample" if sample_posterior else "mode",
               protocol="rFID = reconstructions vs the same originals")
    return out
