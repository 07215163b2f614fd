"""Pure metric functions: Fréchet distance, Inception Score, improved precision/recall, PSNR, SSIM.

Everything here works on *features* or *statistics* (numpy, float64 for the statistics) or on
image tensors (PSNR/SSIM); no network is involved, so the same functions serve the TF-ported
InceptionV3 and the offline evaluation network. The numerics follow the ADM evaluation suite
(openai/guided-diffusion ``evaluations/evaluator.py``) as described in spec-related-methods.md
section 5:

* FID / sFID (section 5.2): ``mu`` = mean, ``sigma`` = unbiased covariance (``np.cov``, N-1),
  ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`` with scipy's ``sqrtm``; a 1e-6
  diagonal offset when the square root is not finite, and the real part taken when the
  imaginary part of the diagonal is below 1e-3 (larger -> error).
* IS (section 5.3): softmax of the logits, splits of 5000 samples, exp(mean KL) averaged.
* Improved precision/recall (section 5.4, Kynkäänniemi et al. 2019): squared Euclidean
  distances (float16 first, float32 if not finite), k-th (k=3) nearest-neighbour radius within
  each full set (self at index 0), a point is "covered" if it lies within at least one
  hypersphere of the other set.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from repae.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Fréchet distance (FID / sFID)
# ---------------------------------------------------------------------------------------------


def feature_statistics(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``feats [N, D]`` in float64 (ADM / pytorch-fid ``np.cov``)."""
    x = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"need features of shape [N>=2, D], got {x.shape}; pass at least 2 images (the statistics "
                          "hold a covariance)")
    mu = x.mean(axis=0)  # [D]
    sigma = np.cov(x, rowvar=False)  # [D, D]
    return mu, np.atleast_2d(sigma)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # scipy >= 1.16 deprecates ``disp``; without it sqrtm returns the root directly.
    return linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6).

    ``d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``, computed as ADM's evaluator does
    (spec-related-methods.md 5.2): retry with ``eps * I`` added to both covariances when the matrix
    square root is not finite; drop an imaginary part whose diagonal is below 1e-3 (numerical
    noise), raise ``ValueError`` otherwise.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape} (different feature spaces); compute both with the same "
                         "feature extractor")
    diff = mu1 - mu2  # [D]
    covmean = _sqrtm(sigma1.dot(sigma2))  # [D, D]
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ---------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------


def inception_score(logits_or_probs: np.ndarray | torch.Tensor, splits: int | None = None, *,
                    split_size: int = 5000, kind: str = "logits") -> float:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` averaged over splits (Salimans et al. 2016).

    ADM (spec-related-methods.md 5.3) softmaxes the 1008 bias-free logits and cuts the samples
    into consecutive chunks of ``split_size = 5000`` (50K samples -> 10 splits; the last chunk
    may be shorter). Pass ``splits`` instead to cut into that many near-equal chunks (the
    pytorch-fid / torch-fidelity convention; identical to ADM for 50K samples and ``splits=10``).

    Args:
        logits_or_probs: ``[N, K]`` logits (``kind="logits"``) or probabilities (``kind="probs"``).
        splits: number of near-equal chunks; ``None`` -> ADM's fixed ``split_size``.
        split_size: chunk length when ``splits`` is None (ADM: 5000).
        kind: ``"logits"`` (softmax taken here, in float64) or ``"probs"``.
    """
    from scipy.special import softmax, xlogy

    x = np.asarray(logits_or_probs.detach().cpu() if isinstance(logits_or_probs, torch.Tensor)
                   else logits_or_probs, dtype=np.float64)
    if kind not in ("logits", "probs"):
        raise ValueError(f"kind must be 'logits' or 'probs', got {kind!r}")
    p = softmax(x, axis=1) if kind == "logits" else x  # [N, K]
    n = p.shape[0]
    if splits is not None:
        chunks = np.array_split(p, splits)
    else:
        chunks = [p[i:i + split_size] for i in range(0, n, split_size)]
    scores = []
    for part in chunks:
        marginal = part.mean(axis=0, keepdims=True)  # [1, K]
        # 0 * log 0 := 0 so one-hot probabilities are allowed
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------
# Improved precision / recall
# ---------------------------------------------------------------------------------------------


def _pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``max(|u|^2 - 2 u.v + |v|^2, 0)`` in ``dtype`` (ADM computes it in float16 first)."""
    u, v = u.to(dtype), v.to(dtype)
    nu = (u * u).sum(dim=1, keepdim=True)  # [A, 1]
    nv = (v * v).sum(dim=1, keepdim=True).T  # [1, B]
    return (nu - 2 * u @ v.T + nv).clamp_min(0)  # [A, B]


def _distances(u: torch.Tensor, v: torch.Tensor, half: bool) -> torch.Tensor:
    """Squared distances in float16 when finite there (ADM), else float32; returned as float32."""
    if half:
        d = _pairwise_sq_distances(u, v, torch.float16)
        if torch.isfinite(d).all():
            return d.float()
    return _pairwise_sq_distances(u, v, torch.float32)


def manifold_radii(feats: torch.Tensor, *, k: int = 3, batch_size: int = 10000, half: bool = True) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour within the FULL set.

    Index ``k`` of each sorted row (the self-distance 0 sits at index 0), computed over blocks of
    ``batch_size`` x ``batch_size`` for memory only (spec-related-methods.md 5.4, pitfall 22).
    """
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} points for manifold radii, got {n}; pass more samples or lower k")
    radii = torch.empty(n, dtype=torch.float32, device=feats.device)
    for r0 in range(0, n, batch_size):
        rows = feats[r0:r0 + batch_size]
        dist = torch.cat([_distances(rows, feats[c0:c0 + batch_size], half)
                          for c0 in range(0, n, batch_size)], dim=1)  # [b, N]
        radii[r0:r0 + batch_size] = torch.kthvalue(dist, k + 1, dim=1).values  # (k+1)-th smallest = index k
    return radii


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, *, batch_size: int,
              half: bool) -> torch.Tensor:
    """Boolean ``[len(points)]``: inside at least one hypersphere (squared distance <= squared radius)."""
    inside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for r0 in range(0, points.shape[0], batch_size):
        rows = points[r0:r0 + batch_size]
        for c0 in range(0, centres.shape[0], batch_size):
            d = _distances(rows, centres[c0:c0 + batch_size], half)  # [b, c]
            inside[r0:r0 + batch_size] |= (d <= radii[c0:c0 + batch_size][None, :]).any(dim=1)
    return inside


def precision_recall(real_feats: np.ndarray | torch.Tensor, fake_feats: np.ndarray | torch.Tensor, *,
                     k: int = 3, batch_size: int = 10000, half: bool = True,
                     device: str | torch.device | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as ADM computes them.

    Precision = fraction of ``fake`` points inside at least one ``real`` k-NN hypersphere;
    recall = fraction of ``real`` points inside at least one ``fake`` hypersphere. ``half=True``
    reproduces ADM's float16 distance blocks (ties can move results by ~1e-3 vs float32).

    Args:
        real_feats: ``[N_real, D]`` reference features (ADM: the 10K ``arr_0`` images).
        fake_feats: ``[N_fake, D]`` sample features.
        k: neighbourhood size (ADM: 3).
        batch_size: block edge of the distance computation (memory only; ADM: 10000).
        half: float16 distances first (ADM), float32 otherwise.
        device: where to compute; default CUDA if available.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = torch.as_tensor(real_feats).to(dev, torch.float32)  # [N_r, D]
    fake = torch.as_tensor(fake_feats).to(dev, torch.float32)  # [N_f, D]
    r_real = manifold_radii(real, k=k, batch_size=batch_size, half=half)
    r_fake = manifold_radii(fake, k=k, batch_size=batch_size, half=half)
    precision = _coverage(fake, real, r_real, batch_size=batch_size, half=half).double().mean().item()
    recall = _coverage(real, fake, r_fake, batch_size=batch_size, half=half).double().mean().item()
    return float(precision), float(recall)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM (per image)
# ---------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR ``10 log10(R^2 / MSE)`` in dB, ``[B]``; ``inf`` for identical images.

    ``data_range`` is ``max - min`` of the value range (2.0 for [-1, 1] like LightningDiT,
    255 for uint8 values).
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}; pass two batches of the same shape")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)  # [B]
    return 10.0 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # [size, size]


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0, window_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, eq. 13), ``[B]``: gaussian window 11, sigma 1.5.

    Local statistics use the 'valid' part of a depthwise gaussian convolution (no padding, like
    skimage ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``); the
    SSIM map is averaged over channels and positions. Images smaller than the window use a
    window the size of the image.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"need two [B, C, H, W] tensors of the same shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    size = min(window_size, x.shape[-1], x.shape[-2])
    w = _gaussian_window(size, sigma, x.dtype, x.device).expand(c, 1, size, size)  # [C, 1, k, k]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)  # [B, C, H-k+1, W-k+1]

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return smap.flatten(1).mean(dim=1)  # [B]
