"""Blockwise 2D DCT-II spectra of images and latents (spec-related-methods.md 3.2).

Protocol (JPEG-style, Skorokhodov et al. 2025, "Improving the Diffusability of Autoencoders"):
split every channel into non-overlapping ``n x n`` blocks (``n = 8``), take the orthonormal 2D
DCT-II of each block (rows then columns, ``norm="ortho"``), average the energy ``|X(u, v)|^2``
over blocks and images, order the ``n^2`` coefficients from low to high frequency in JPEG zigzag
order (or group them into the ``2n - 1`` diagonal bands ``u + v``), and normalise each channel's
profile so that signals of different scale are comparable.

Conventions fixed here:

* ``u`` is the vertical (row) frequency, ``v`` the horizontal one; zigzag index 0 is DC, index 1 is
  ``(u, v) = (0, 1)``, index 2 is ``(1, 0)``, ..., index ``n^2 - 1`` is ``(n-1, n-1)`` (JPEG order).
* Normalisation: the profile of each channel is its **fraction of total energy** (sums to 1 over
  frequencies). With ``include_dc=False`` the DC term is set to 0 and the profile is the fraction
  of the **AC** energy (sums to 1 over the ``n^2 - 1`` AC coefficients). A channel with no energy
  (below ``1e-20`` of its total, i.e. rounding noise) gets an all-zero profile.
* Grids whose side is not a multiple of ``n`` are **rejected** (:class:`ConfigError`), never
  padded: zero or edge padding adds artificial edges, i.e. high frequencies that are not in the
  signal. Use a smaller ``block`` (e.g. 4 for 4x4 latents) or crop first.

Works identically for RGB images ``[B, 3, H, W]`` (in ``[-1, 1]``) and latents ``[B, C, h, w]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from repae.errors import ConfigError

__all__ = ["DCTSpectrum", "dct_matrix", "zigzag_order", "blockwise_dct", "blockwise_idct", "dct_spectrum",
           "combine_spectra"]

BLOCK = 8  # JPEG block size (spec 3.2 step 2)


# ---------------------------------------------------------------------------------------------
# Transform
# ---------------------------------------------------------------------------------------------


def dct_matrix(n: int = BLOCK, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Orthonormal DCT-II matrix ``D [n, n]``: ``D[k, i] = a_k cos(pi (2i + 1) k / (2n))``.

    ``a_0 = sqrt(1/n)``, ``a_k = sqrt(2/n)`` for ``k > 0`` (scipy ``dct(norm="ortho")``), so
    ``D @ D.T = I`` and the inverse (DCT-III) is ``D.T``.
    """
    if n < 1:
        raise ConfigError(f"DCT block size must be >= 1, got {n}")
    k = torch.arange(n, dtype=torch.float64)[:, None]  # [n, 1] frequency
    i = torch.arange(n, dtype=torch.float64)[None, :]  # [1, n] position
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n))  # [n, n]
    d[0] *= math.sqrt(1.0 / n)
    d[1:] *= math.sqrt(2.0 / n)
    return d.to(dtype=dtype, device=device)


@lru_cache(maxsize=8)
def zigzag_order(n: int = BLOCK) -> tuple[tuple[int, int], ...]:
    """JPEG zigzag order of an ``n x n`` block as ``(u, v)`` pairs (row, column), low to high.

    Anti-diagonal ``s = u + v`` is walked with the row increasing when ``s`` is odd and decreasing
    when ``s`` is even, so for ``n = 8`` the flat indices ``8u + v`` start 0, 1, 8, 16, 9, 2, 3, ...
    """
    order: list[tuple[int, int]] = []
    for s in range(2 * n - 1):
        rows = range(max(0, s - n + 1), min(s, n - 1) + 1)  # valid u on this anti-diagonal
        rows = rows if s % 2 == 1 else reversed(rows)
        order.extend((u, s - u) for u in rows)
    return tuple(order)


def _check_grid(x: Tensor, block: int) -> None:
    if x.ndim != 4:
        raise ConfigError(f"expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % block or w % block:
        raise ConfigError(
            f"grid {h}x{w} is not a multiple of the DCT block {block}; pass block={math.gcd(math.gcd(h, w), block)} "
            f"or crop to a multiple of {block} (padding would add artificial high frequencies)"
        )


def blockwise_dct(x: Tensor, block: int = BLOCK) -> Tensor:
    """Orthonormal 2D DCT-II of every non-overlapping ``block x block`` tile (spec 3.2 step 3).

    Args:
        x: ``[B, C, H, W]``, ``H`` and ``W`` multiples of ``block``.
        block: tile side ``n`` (8 = JPEG).

    Returns:
        Coefficients ``[B, C, H/n, W/n, n, n]`` (last two dims ``(u, v)``) in float64 for exactness.
    """
    _check_grid(x, block)
    B, C, H, W = x.shape
    n = block
    d = dct_matrix(n, device=x.device)  # [n, n]
    tiles = x.double().reshape(B, C, H // n, n, W // n, n).permute(0, 1, 2, 4, 3, 5)  # [B, C, H/n, W/n, n, n]
    return d @ tiles @ d.T  # columns (rows of each tile) then rows: X = D x D^T  [B, C, H/n, W/n, n, n]


def blockwise_idct(coeffs: Tensor) -> Tensor:
    """Inverse of :func:`blockwise_dct`: ``[B, C, H/n, W/n, n, n] -> [B, C, H, W]`` (float64)."""
    if coeffs.ndim != 6 or coeffs.shape[-1] != coeffs.shape[-2]:
        raise ConfigError(f"expected coefficients [B, C, H/n, W/n, n, n], got shape {tuple(coeffs.shape)}")
    B, C, hb, wb, n, _ = coeffs.shape
    d = dct_matrix(n, device=coeffs.device)  # [n, n]
    tiles = d.T @ coeffs.double() @ d  # x = D^T X D  [B, C, H/n, W/n, n, n]
    return tiles.permute(0, 1, 2, 4, 3, 5).reshape(B, C, hb * n, wb * n)  # [B, C, H, W]


# ---------------------------------------------------------------------------------------------
# Spectrum
# ---------------------------------------------------------------------------------------------


@dataclass
class DCTSpectrum:
    """Blockwise DCT energy of one signal, per channel (spec 3.2 steps 4-6).

    ``energy``: mean ``|X|^2`` per coefficient over blocks and images, zigzag order ``[C, n^2]``
    (unnormalised, in squared signal units). ``profile``: ``energy`` normalised per channel to a
    fraction of the total (``include_dc``) or of the AC energy (DC set to 0) ``[C, n^2]``.
    ``bands``: ``profile`` summed per diagonal band ``u + v`` ``[C, 2n - 1]``.
    """

    energy: Tensor  # [C, n^2] zigzag order
    profile: Tensor  # [C, n^2] sums to 1 per channel (or 0 for a channel without energy)
    bands: Tensor  # [C, 2n - 1]
    block: int
    include_dc: bool
    num_blocks: int  # blocks averaged per channel (images x tiles)

    def mean_profile(self) -> Tensor:
        """Profile averaged over channels ``[n^2]`` (the single RGB curve of spec 3.2 step 7)."""
        return self.profile.mean(0)

    def mean_bands(self) -> Tensor:
        """Band fractions averaged over channels ``[2n - 1]``."""
        return self.bands.mean(0)

    def high_frequency_fraction(self, from_band: int | None = None) -> Tensor:
        """Per-channel share of the profile in bands ``>= from_band`` (default: the upper half) ``[C]``."""
        start = self.block if from_band is None else from_band
        return self.bands[:, start:].sum(1)

    def to_dict(self) -> dict:
        return {
            "block": self.block, "include_dc": self.include_dc, "num_blocks": self.num_blocks,
            "normalisation": "fraction of total energy" if self.include_dc else "fraction of AC energy (DC = 0)",
            "profile": self.profile.tolist(), "bands": self.bands.tolist(), "energy": self.energy.tolist(),
            "mean_profile": self.mean_profile().tolist(), "mean_bands": self.mean_bands().tolist(),
        }


def dct_spectrum(x: Tensor, *, block: int = BLOCK, include_dc: bool = True) -> DCTSpectrum:
    """Per-channel blockwise DCT energy spectrum of images or latents ``x [B, C, H, W]`` (spec 3.2).

    Args:
        x: RGB ``[B, 3, H, W]`` in ``[-1, 1]`` or latents ``[B, C, h, w]`` (posterior mean, raw or
           per-channel standardised -- the caller decides and says so).
        block: tile side (8; the grid side must be a multiple of it).
        include_dc: normalise by the total energy (True) or by the AC energy with DC zeroed (False).
    """
    coeffs = blockwise_dct(x, block)  # [B, C, hb, wb, n, n]
    B, C, hb, wb, n, _ = coeffs.shape
    power = coeffs.pow(2).permute(1, 0, 2, 3, 4, 5).reshape(C, B * hb * wb, n * n).mean(1)  # [C, n*n] row-major
    zz = torch.tensor([u * n + v for u, v in zigzag_order(n)], device=x.device)  # [n*n]
    return _from_energy(power[:, zz], block=n, include_dc=include_dc, num_blocks=B * hb * wb)


def combine_spectra(spectra: list[DCTSpectrum]) -> DCTSpectrum:
    """Spectrum of the union of the signals behind ``spectra`` (e.g. batches of a dataset streamed
    through :func:`dct_spectrum`): energies averaged with weights ``num_blocks``, then renormalised."""
    if not spectra:
        raise ConfigError("combine_spectra needs at least one spectrum; pass a non-empty list of dct_spectrum results")
    first = spectra[0]
    if any(s.block != first.block or s.include_dc != first.include_dc or s.energy.shape != first.energy.shape
           for s in spectra):
        raise ConfigError("spectra to combine must share block size, channel count and include_dc")
    total = sum(s.num_blocks for s in spectra)
    energy = sum(s.energy.double() * (s.num_blocks / total) for s in spectra)  # [C, n*n]
    return _from_energy(energy, block=first.block, include_dc=first.include_dc, num_blocks=total)


def _from_energy(energy: Tensor, *, block: int, include_dc: bool, num_blocks: int) -> DCTSpectrum:
    """Normalised profile and band sums from zigzag-ordered mean energies ``[C, n*n]``."""
    n = block
    C = energy.shape[0]
    energy = energy.double()
    kept = energy.clone()
    if not include_dc:
        kept[:, 0] = 0.0
    total = kept.sum(1, keepdim=True)  # [C, 1]
    # float64 rounding leaves ~1e-32 relative energy in AC terms of a constant: treat as no energy
    has_energy = total > 1e-20 * energy.sum(1, keepdim=True)  # [C, 1]
    profile = torch.where(has_energy, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), torch.zeros_like(kept))
    band_of = torch.tensor([u + v for u, v in zigzag_order(n)], device=energy.device)  # [n*n]
    bands = profile.new_zeros(C, 2 * n - 1).index_add_(1, band_of, profile)  # [C, 2n-1]
    return DCTSpectrum(energy=energy.float(), profile=profile.float(), bands=bands.float(), block=n,
                       include_dc=include_dc, num_blocks=num_blocks)
