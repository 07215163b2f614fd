"""PCA of latent channels -> RGB images (spec-related-methods.md 6.3, EQ-VAE's latent visualisation).

Pixels are samples and channels are features: latents ``[B, C, h, w]`` become rows
``X [B h w, C]``, centred by their column mean; the covariance ``Xc^T Xc / (n - 1)`` is
eigendecomposed (symmetric ``eigh``, float64) and the data projected on the top three
eigenvectors. Choices fixed here for reproducibility across models and runs:

* **Order**: by explained variance, descending: PC1 -> red, PC2 -> green, PC3 -> blue.
* **Sign**: each eigenvector is flipped so that its largest-magnitude loading is positive (ties:
  the first such channel).
* **Fit**: ``joint=True`` fits one PCA over the whole batch (colours comparable across images;
  the default), ``joint=False`` one PCA per image (the reference script's behaviour for B = 1).
* **Display range**: min-max over the three channels jointly (relative PC strengths are kept) --
  per image for per-image fits, over the whole batch for joint fits -> ``[0, 1]``.
* Latents with fewer than three channels get zero (black) channels for the missing components.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from repae.errors import ConfigError

__all__ = ["PCAResult", "pca_components", "pca_rgb"]

NUM_COMPONENTS = 3  # one per RGB channel


@dataclass
class PCAResult:
    """PCA view of latents. With ``joint=False`` the fitted quantities gain a leading ``[B]`` dim."""

    images: Tensor  # [B, 3, h, w] in [0, 1] (PC1 -> R, PC2 -> G, PC3 -> B)
    projections: Tensor  # [B, 3, h, w] raw scores (before min-max)
    components: Tensor  # [3, C] (or [B, 3, C]) unit eigenvectors, sign-fixed
    explained_variance: Tensor  # [3] (or [B, 3]) eigenvalues
    explained_ratio: Tensor  # [3] (or [B, 3]) eigenvalue / trace
    mean: Tensor  # [C] (or [B, C]) column mean that was subtracted
    joint: bool


def pca_components(x: Tensor, k: int = NUM_COMPONENTS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-``k`` principal axes of rows ``x [n, C]``: (components [k, C], eigenvalues [k], ratio [k], mean [C]).

    Eigenvalues descending, signs fixed (largest-|loading| positive); ``k > C`` is padded with zeros.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"PCA needs rows [n >= 2, C], got shape {tuple(x.shape)}; pass at least 2 rows of C features "
                          "(e.g. the latents of 2 or more images)")
    xd = x.double()
    mean = xd.mean(0)  # [C]
    xc = xd - mean  # [n, C]
    cov = xc.T @ xc / (xc.shape[0] - 1)  # [C, C]
    evals, evecs = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)  # descending  [C], [C, C]
    comps = evecs.T  # [C, C] rows = components
    idx = comps.abs().argmax(dim=1)  # [C] first largest-|loading| channel of each component
    signs = torch.sign(comps.gather(1, idx[:, None])).squeeze(1)  # [C]
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]  # [C, C]
    trace = evals.sum()
    ratio = evals / trace if trace > 0 else torch.zeros_like(evals)  # [C]
    C = comps.shape[0]
    if k > C:  # too few channels: zero components (black display channels)
        comps = torch.cat([comps, comps.new_zeros(k - C, C)])
        evals = torch.cat([evals, evals.new_zeros(k - C)])
        ratio = torch.cat([ratio, ratio.new_zeros(k - C)])
    return comps[:k], evals[:k], ratio[:k], mean


def _minmax(p: Tensor, dims: tuple[int, ...]) -> Tensor:
    lo = p.amin(dim=dims, keepdim=True)
    hi = p.amax(dim=dims, keepdim=True)
    return (p - lo) / (hi - lo).clamp_min(1e-12)


def pca_rgb(z: Tensor, *, joint: bool = True) -> PCAResult:
    """Project latents ``z [B, C, h, w]`` on their top three principal axes -> RGB ``[B, 3, h, w]``.

    See the module docstring for order, sign, fit and display-range conventions.
    """
    if z.ndim != 4:
        raise ConfigError(f"expected latents [B, C, h, w], got shape {tuple(z.shape)}")
    B, C, h, w = z.shape
    rows = z.double().permute(0, 2, 3, 1)  # [B, h, w, C]
    if joint:
        comps, evals, ratio, mean = pca_components(rows.reshape(B * h * w, C))  # [3, C], [3], [3], [C]
        proj = (rows - mean) @ comps.T  # [B, h, w, 3]
        proj = proj.permute(0, 3, 1, 2)  # [B, 3, h, w]
        images = _minmax(proj, dims=(0, 1, 2, 3))  # batch-wide range
    else:
        fits = [pca_components(rows[b].reshape(h * w, C)) for b in range(B)]
        comps, evals, ratio, mean = (torch.stack(t) for t in zip(*fits))  # [B, 3, C], [B, 3], [B, 3], [B, C]
        proj = torch.einsum("bhwc,bkc->bkhw", rows - mean[:, None, None, :], comps)  # [B, 3, h, w]
        images = _minmax(proj, dims=(1, 2, 3))  # per-image range
    return PCAResult(images=images.float(), projections=proj.float(), components=comps.float(),
                     explained_variance=evals.float(), explained_ratio=ratio.float(), mean=mean.float(),
                     joint=joint)
