"""Metric maths on synthetic data with known answers (FID, IS, precision/recall, PSNR, SSIM)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from repae.evaluation import metrics

# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _frechet_eigh(mu1, s1, mu2, s2) -> float:
    """Independent reference: tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all via eigh."""
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(lam, 0, None))))


def test_frechet_matches_independent_reference():
    rng = np.random.default_rng(0)
    for d in (1, 5, 32):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        expected = _frechet_eigh(mu1, s1, mu2, s2)
        assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_frechet_analytic_cases():
    mu = np.array([1.0, -2.0, 0.5])
    assert metrics.frechet_distance(np.zeros(3), np.eye(3), mu, np.eye(3)) == pytest.approx(float(mu @ mu))
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])  # diagonal: sum (sqrt a - sqrt b)^2
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert metrics.frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected)


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(1).normal(size=(300, 16))
    mu, sigma = metrics.feature_statistics(feats)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(2)
    shift = np.array([1.0, 2.0, 0.0, -1.0])  # ||shift||^2 = 6
    a, b = rng.normal(size=(40000, 4)), rng.normal(size=(40000, 4)) + shift
    fid = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
    assert fid == pytest.approx(6.0, abs=0.05)


def test_feature_statistics_match_numpy_unbiased():
    x = np.random.default_rng(3).normal(size=(50, 3))
    mu, sigma = metrics.feature_statistics(torch.from_numpy(x).float())
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1), rtol=1e-5)
    assert sigma.dtype == np.float64


def test_frechet_rejects_mismatched_spaces():
    with pytest.raises(ValueError, match="feature spaces"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_frechet_singular_covariances_stay_finite():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 10))  # rank-deficient covariances (N < D)
    b = rng.normal(size=(5, 10))
    assert math.isfinite(metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b)))


# ---------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------


def test_is_of_uniform_predictions_is_one():
    assert metrics.inception_score(np.zeros((100, 1008))) == pytest.approx(1.0)


def test_is_of_confident_evenly_spread_predictions_is_num_classes():
    k = 10
    probs = np.eye(k)[np.arange(200) % k]  # one-hot, 20 per class
    assert metrics.inception_score(probs, kind="probs") == pytest.approx(k)
    assert metrics.inception_score(50.0 * probs) == pytest.approx(k, rel=1e-6)  # confident logits


def test_is_split_convention():
    probs = np.eye(2)[np.repeat([0, 1], 50)]  # first half class 0, second half class 1
    assert metrics.inception_score(probs, kind="probs") == pytest.approx(2.0)  # one ADM chunk (< 5000)
    assert metrics.inception_score(probs, kind="probs", split_size=50) == pytest.approx(1.0)  # ADM chunks
    assert metrics.inception_score(probs, splits=2, kind="probs") == pytest.approx(1.0)
    assert metrics.inception_score(probs, splits=1, kind="probs") == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------


def _pr_bruteforce(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    d_rr = ((real[:, None] - real[None]) ** 2).sum(-1)
    d_ff = ((fake[:, None] - fake[None]) ** 2).sum(-1)
    d_fr = ((fake[:, None] - real[None]) ** 2).sum(-1)
    r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]
    return float((d_fr <= r_real[None]).any(1).mean()), float((d_fr.T <= r_fake[None]).any(1).mean())


def test_pr_identical_clouds():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert metrics.precision_recall(x, x, device="cpu") == (1.0, 1.0)


def test_pr_disjoint_far_clouds():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(100, 4)), rng.normal(size=(120, 4)) + 100.0
    assert metrics.precision_recall(real, fake, device="cpu") == (0.0, 0.0)


def test_pr_subset_has_full_precision_and_partial_recall():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(400, 2))
    fake = real[real[:, 0] < -0.5]  # a corner of the real manifold
    precision, recall = metrics.precision_recall(real, fake, device="cpu")
    assert precision == 1.0
    assert recall < 0.6


def test_pr_matches_bruteforce_and_ignores_block_size():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(150, 6)), rng.normal(size=(130, 6)) * 1.3 + 0.3
    expected = _pr_bruteforce(real, fake)
    assert metrics.precision_recall(real, fake, half=False, device="cpu") == pytest.approx(expected)
    # radii are over the FULL set even when distances are computed in small blocks
    assert metrics.precision_recall(real, fake, half=False, batch_size=7, device="cpu") == pytest.approx(expected)
    half = metrics.precision_recall(real, fake, half=True, batch_size=7, device="cpu")
    assert half == pytest.approx(expected, abs=0.02)  # float16 ties (ADM) move it slightly at most


def test_manifold_radii_on_a_line():
    pts = torch.arange(10, dtype=torch.float32)[:, None]  # 0, 1, ..., 9
    r = metrics.manifold_radii(pts, k=3, half=False)
    assert r[0].item() == 9.0  # neighbours 1, 2, 3 -> 3^2
    assert r[5].item() == 4.0  # neighbours 4, 6, then 3 or 7 -> 2^2


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------


def test_psnr_known_values():
    x = torch.zeros(2, 3, 8, 8)
    assert torch.isinf(metrics.psnr(x, x)).all()
    y = x + 0.1  # MSE 0.01, range 2 -> 10 log10(4 / 0.01)
    assert metrics.psnr(x, y, data_range=2.0).tolist() == pytest.approx([10 * math.log10(400)] * 2)


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """scipy.ndimage gaussian filter (sigma 1.5, truncate 3.5 -> 11 taps), borders cropped."""
    def f(a):
        return ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for xc, yc in zip(x, y):
        mx, my = f(xc), f(yc)
        vx, vy, cxy = f(xc * xc) - mx ** 2, f(yc * yc) - my ** 2, f(xc * yc) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_identity_and_reference():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 3, 24, 20))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert metrics.ssim(ta, ta).tolist() == pytest.approx([1.0, 1.0])
    ours = metrics.ssim(ta, tb, data_range=2.0)
    assert ours.tolist() == pytest.approx([_ssim_reference(a[i], b[i], 2.0) for i in range(2)], rel=1e-6)
    assert torch.allclose(ours, metrics.ssim(tb, ta, data_range=2.0))
    assert (ours < 1).all()
