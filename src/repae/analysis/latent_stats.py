"""Spatial variance, total variation and image variance of latents (spec-related-methods.md 6.2; our definitions).

REPA-E (section 3, "naive end-to-end tuning is ineffective") reports that back-propagating the
diffusion loss into the VAE collapses the latent: spatial variance 17.06 -> 0.02 and total
variation 6627 -> 90. No public code defines the two numbers, so the definitions below are ours
(spec 6.2 marked them [unverified]); they are fixed here and in ``docs/analysis.md``.

For one latent ``z [C, h, w]`` (the posterior **mean**):

* **Spatial variance** ``SV(z) = 1/C sum_c Var_{i,j} z[c, i, j]`` -- the *population* variance
  (divide by ``h w``) over the spatial positions of each channel, averaged over channels.
  ``SV -> 0``: a flat, collapsed latent. Invariant to adding a per-channel constant.
* **Total variation** (anisotropic, mean-normalised)
  ``TV(z) = 1/C sum_c [ mean_{i<h-1, j} |z[c,i+1,j] - z[c,i,j]| + mean_{i, j<w-1} |z[c,i,j+1] - z[c,i,j]| ]``.
  Independent of the grid size, so f8 and f16 latents are comparable.
* ``tv_sum``: the same absolute differences **summed** over channels and positions (the
  ``kornia.losses.total_variation`` convention). Its scale (thousands for a 4x32x32 SD-VAE
  latent) matches the paper's table, which is why we think the paper summed; reported for
  comparison only, it grows with ``C h w``.
* **TV / sqrt(SV)**: both numerators scale linearly with the latent, so the ratio is invariant to
  a global rescaling ``z -> a z`` (and, after per-channel standardisation, to per-channel scales).
  Reference values: i.i.d. Gaussian noise gives ``4 / sqrt(pi) ~ 2.26`` (``E|X - Y| = 2 sigma /
  sqrt(pi)`` per direction), a smooth field gives values near 0.

Each statistic is computed per image and averaged over images; the ratio is taken of the averages
(``mean TV / sqrt(mean SV)``). Without standardisation the numbers mostly measure the latent's
scale; :func:`latent_stats` therefore also accepts per-channel ``mean``/``std`` (e.g. the
tokenizer normaliser's running statistics, i.e. what the SiT sees) or computes them from the batch.

**Image variance** (our addition, across images). REPA-E section 3 measures the collapse of the
naive end-to-end latent as a flat latent (SV 17.06 -> 0.02). A latent can also collapse into one
*image-independent* map: every image is encoded to (nearly) the same pattern, which varies within
the image, so SV stays large (this is what our ``e2e-diffusion`` runs do). Over the ``N`` images of
a set ``z [N, C, h, w]``, with ``p = (i, j)`` the ``P = h w`` positions, remove each image's
per-channel spatial mean, ``y[n, c, p] = z[n, c, p] - mean_p z[n, c, p]`` (the offset SV ignores
too), and split SV exactly (law of total variance, population variances throughout):

* ``image_variance IV = 1/C sum_c mean_p Var_n y[n, c, p]`` -- how much the spatial structure at a
  position changes from image to image (the part of SV that follows the image);
* ``pattern_variance PV = 1/C sum_c Var_p mean_n z[n, c, p]`` -- the spatial variance of the mean
  map, the structure every image shares (the fixed pattern);
* ``SV = IV + PV`` (SV averaged over the images as above), and
  ``image_variance_fraction IVF = IV / SV`` in ``[0, 1]``.

A flat latent has ``IV <= SV -> 0``; a fixed pattern has ``IV -> 0`` and ``IVF -> 0`` while SV stays
large, so IV catches both collapses; IVF is scale-free (invariant to ``z -> a z + b``), so a latent
that merely shrinks keeps its IVF. Removing the per-image offset matters: measured about the global
channel mean instead, a latent that is flat in every image but whose level follows the image
would keep a large between-image variance. A flat set (``SV <= FLAT_TOL * mean z^2``, spatial std below a
millionth of the latent's RMS, i.e. float rounding) has ``IVF := 0``: none of its (absent) spatial
structure follows the image. Reference values: i.i.d. Gaussian entries (one variance for all
channels) give ``IVF ~ Beta(C (N-1)(P-1) / 2, C (P-1) / 2)`` (IV and PV are the interaction and
position sums of squares of a two-way layout), so ``E[IVF] = (N - 1) / N`` exactly; a latent
``a u + b e_n`` (shared map ``u``; per-image maps ``e_n`` with mean 0 and variance 1 over the
images at every position and spatial mean 0 in every image) gives exactly
``IV = b^2``, ``PV = a^2 Var_p u`` and ``IVF = b^2 / (a^2 Var_p u + b^2)``; with i.i.d. ``N(0, 1)``
maps instead, ``E IV = b^2 (N-1)(P-1) / (N P)`` and ``E SV = a^2 Var_p u + b^2 (P-1) / P``. IV needs
``N >= 2`` images (NaN otherwise) and depends on the set, so compare values measured on the same
images. Computed like SV: on the posterior mean, raw or after the same standardisation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from repae.errors import ConfigError

__all__ = ["LatentStats", "spatial_variance", "total_variation", "image_variance", "latent_stats", "standardize",
           "FLAT_TOL"]

#: a set with ``SV <= FLAT_TOL * mean z^2`` is flat (spatial std below 1e-6 of the RMS): ``IVF := 0``
FLAT_TOL = 1e-12


def _check(z: Tensor) -> None:
    if z.ndim != 4:
        raise ConfigError(f"expected latents [B, C, h, w], got shape {tuple(z.shape)}")
    if z.shape[-1] < 2 or z.shape[-2] < 2:
        raise ConfigError(f"latent grid {tuple(z.shape[-2:])} is too small for differences (need h, w >= 2); "
                          "raise the image resolution (--resolution) or use a VAE that downsamples less")


def spatial_variance(z: Tensor) -> Tensor:
    """Per-image, per-channel population variance over positions ``[B, C]`` (spec 6.2, SV before averaging)."""
    _check(z)
    return z.double().flatten(2).var(dim=2, unbiased=False)  # [B, C]


def total_variation(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel (mean-normalised TV ``[B, C]``, summed |differences| ``[B, C]``)."""
    _check(z)
    z = z.double()
    dv = (z[:, :, 1:, :] - z[:, :, :-1, :]).abs()  # [B, C, h-1, w] vertical differences
    dh = (z[:, :, :, 1:] - z[:, :, :, :-1]).abs()  # [B, C, h, w-1] horizontal differences
    mean_tv = dv.mean(dim=(2, 3)) + dh.mean(dim=(2, 3))  # [B, C]
    sum_tv = dv.sum(dim=(2, 3)) + dh.sum(dim=(2, 3))  # [B, C]
    return mean_tv, sum_tv


def image_variance(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (image variance IV ``[C]``, pattern variance PV ``[C]``) of a set ``z [N, C, h, w]``.

    Definitions in the module docstring (REPA-E section 3's collapse, across images): with
    ``y = z - mean_p z`` per image and channel, ``IV_c = mean_p Var_n y[n, c, p]`` and
    ``PV_c = Var_p mean_n z[n, c, p]`` (population variances), so ``IV_c + PV_c = mean_n SV_c(z_n)``.
    NaN for ``N < 2``.
    """
    _check(z)
    z = z.double().flatten(2)  # [N, C, P]
    if z.shape[0] < 2:
        nan = torch.full((z.shape[1],), float("nan"), dtype=torch.float64, device=z.device)
        return nan, nan.clone()
    y = z - z.mean(dim=2, keepdim=True)  # [N, C, P] each image's per-channel offset removed
    iv = y.var(dim=0, unbiased=False).mean(dim=1)  # [C] between-image variance, averaged over positions
    pv = z.mean(dim=0).var(dim=1, unbiased=False)  # [C] spatial variance of the mean map [C, P]
    return iv, pv


def standardize(z: Tensor, mean: Tensor | None = None, std: Tensor | None = None, eps: float = 0.0) -> Tensor:
    """Per-channel ``(z - mean) / std``; statistics over ``(B, h, w)`` of ``z`` itself when not given."""
    if mean is None or std is None:
        zd = z.double()
        mean = zd.mean(dim=(0, 2, 3)) if mean is None else mean  # [C]
        std = zd.std(dim=(0, 2, 3)) if std is None else std  # [C]
    mean = torch.as_tensor(mean, dtype=torch.float64, device=z.device).reshape(1, -1, 1, 1)  # [1, C, 1, 1]
    std = torch.as_tensor(std, dtype=torch.float64, device=z.device).reshape(1, -1, 1, 1)  # [1, C, 1, 1]
    if mean.shape[1] != z.shape[1] or std.shape[1] != z.shape[1]:
        raise ConfigError(f"statistics have {mean.shape[1]}/{std.shape[1]} channels, latents {z.shape[1]}; "
                          "pass one mean and one std per latent channel (the statistics of the same VAE)")
    return (z.double() - mean) / (std.pow(2) + eps).sqrt().clamp_min(1e-12)  # [B, C, h, w]


@dataclass
class LatentStats:
    """Dataset averages of the spec 6.2 statistics (see the module docstring for definitions)."""

    spatial_variance: float  # mean over images and channels of Var_{i,j}
    total_variation: float  # mean over images of the channel-averaged, mean-normalised TV
    tv_sum: float  # mean over images of sum_{c,i,j} |differences| (kornia convention)
    tv_over_sqrt_sv: float  # total_variation / sqrt(spatial_variance); scale-free
    image_variance: float  # IV: mean over channels and positions of Var_n (offset-free); NaN for one image
    pattern_variance: float  # PV: mean over channels of Var_p of the mean map; IV + PV = spatial_variance
    image_variance_fraction: float  # IV / SV in [0, 1]; 0 for a flat set; NaN for one image
    per_channel_sv: list[float]  # [C]
    per_channel_tv: list[float]  # [C]
    num_images: int
    standardized: str  # "none" | "given" (e.g. normaliser statistics) | "batch"

    def to_dict(self) -> dict:
        return asdict(self)


def latent_stats(z: Tensor, *, standardized: bool = False, mean: Tensor | None = None,
                 std: Tensor | None = None, eps: float = 0.0) -> LatentStats:
    """Spatial variance, total variation, TV/sqrt(SV) and image variance of latents ``z [B, C, h, w]``.

    SV / TV: spec 6.2; image variance (IV, PV, IV/SV) across the ``B`` images: module docstring
    (catches both the flat and the image-independent collapse of REPA-E section 3).

    Args:
        z: posterior means ``[B, C, h, w]``.
        standardized: first map each channel to zero mean / unit std, with ``mean``/``std`` if given
            (e.g. ``tokenizer.normalizer.statistics()``; ``eps`` is added to the variance like the
            normaliser does) else with the statistics of ``z`` over ``(B, h, w)``.
    """
    _check(z)
    mode = "none"
    if standardized:
        mode = "given" if mean is not None and std is not None else "batch"
        z = standardize(z, mean, std, eps)
    sv = spatial_variance(z)  # [B, C]
    tv, tv_sum = total_variation(z)  # [B, C] each
    sv_mean = float(sv.mean())
    tv_mean = float(tv.mean())
    ratio = tv_mean / math.sqrt(sv_mean) if sv_mean > 0 else float("nan")
    iv, pv = image_variance(z)  # [C] each
    iv_mean, pv_mean = float(iv.mean()), float(pv.mean())
    flat = sv_mean <= FLAT_TOL * float(z.double().pow(2).mean())
    fraction = float("nan") if math.isnan(iv_mean) else 0.0 if flat else min(max(iv_mean / sv_mean, 0.0), 1.0)
    return LatentStats(
        spatial_variance=sv_mean, total_variation=tv_mean, tv_sum=float(tv_sum.sum(1).mean()),
        tv_over_sqrt_sv=ratio, image_variance=iv_mean, pattern_variance=pv_mean, image_variance_fraction=fraction,
        per_channel_sv=sv.mean(0).tolist(), per_channel_tv=tv.mean(0).tolist(),
        num_images=int(z.shape[0]), standardized=mode,
    )
