"""The dimension-dependent time shift of the noise schedule (RAE, Zheng et al. 2025, arXiv 2510.11690).

A wide latent (RAE: 256 tokens x 768 channels of DINOv2-B) keeps much more of the image at a given
noise level than a 4-channel VAE latent, so the same uniform schedule spends most steps where the
image is already decided. RAE (sec. 4, following Esser et al. 2024, SD3 sec. 5.3.2) shifts every
time of the schedule towards noise by a factor that grows with the latent's dimension::

    alpha = sqrt(m / n)              m = tokens x channels = C * h * w of this latent (its numel per
                                     image), n = the base dimension (4096, RAE's choice)
    t' = alpha * t / (1 + (alpha - 1) * t)

Convention: ``t`` is the noise level, ``t = 0`` data and ``t = 1`` noise — SD3's rectified-flow
convention, in which the formula is written, and repae's (:mod:`repae.conventions`), so it applies
as written, with no ``1 - t``. ``t = 0`` and ``t = 1`` are fixed points, ``alpha = 1`` is the
identity, ``alpha > 1`` moves every time towards noise (at ``t = 1/2``: ``t' = alpha / (1 + alpha)``)
and the map is increasing, so a uniform grid stays ordered.

The same shift is applied where ``t`` is drawn for training (:class:`ShiftedTime` around the
configured time sampler) and where the sampler's time grid is built (the ``time_shift`` keyword of
:mod:`repae.sampling.solvers`), so training and sampling see the same schedule. The network is still
conditioned on the true ``t``: the shift changes which times are visited, never what ``t`` means.
Config: ``diffusion.time_shift`` (``none`` | ``dimension`` | a number alpha) and
``diffusion.time_shift_base`` (n, 4096).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from repae.diffusion.timesteps import TimeSampler
from repae.errors import ConfigError

__all__ = ["RAE_BASE_DIMENSION", "shift_time", "dimension_shift", "resolve_time_shift", "ShiftedTime"]

#: RAE's base dimension n (a 64 x 64 x 1 "image", the dimension the unshifted schedule is tuned for).
RAE_BASE_DIMENSION = 4096


def shift_time(t: Tensor | float, alpha: float) -> Tensor | float:
    """``alpha t / (1 + (alpha - 1) t)`` (module docstring); exact identity for ``alpha == 1``."""
    if alpha == 1.0:
        return t
    return alpha * t / (1.0 + (alpha - 1.0) * t)


def dimension_shift(latent_shape: tuple[int, ...], base: int = RAE_BASE_DIMENSION) -> float:
    """``sqrt(m / n)`` with ``m`` the number of values of one latent ``(C, h, w)`` and ``n = base``."""
    m = math.prod(int(s) for s in latent_shape)
    if m <= 0 or base <= 0:
        raise ConfigError(f"time shift: latent shape {tuple(latent_shape)} and base {base} must be positive")
    return math.sqrt(m / base)


def resolve_time_shift(value: str | float | None, latent_shape: tuple[int, ...], base: int = RAE_BASE_DIMENSION
                       ) -> float:
    """``diffusion.time_shift`` as the factor alpha: ``none`` -> 1, ``dimension`` -> :func:`dimension_shift`,
    a positive number -> itself. ConfigError naming the values otherwise."""
    text = "none" if value is None else str(value).strip().lower()
    if text == "none":
        return 1.0
    if text == "dimension":
        return dimension_shift(latent_shape, base)
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not alpha > 0 or math.isinf(alpha):
        raise ConfigError(f"diffusion.time_shift={value!r} must be none, dimension (RAE: sqrt(C*h*w / "
                          "diffusion.time_shift_base)) or a positive number")
    return alpha


class ShiftedTime(TimeSampler):
    """A time sampler whose draws are shifted by :func:`shift_time` (RAE's training schedule)."""

    def __init__(self, base: TimeSampler, alpha: float):
        self.base = base  # the configured sampler (uniform in RAE)
        self.alpha = float(alpha)  # shift factor; 1 = the base sampler unchanged
        self.name = base.name
        self.path_name = getattr(base, "path_name", "linear")

    def sample(self, n, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        return shift_time(self.base.sample(n, generator=generator, device=device), self.alpha)  # [n]

    def __repr__(self) -> str:
        return f"ShiftedTime({self.base!r}, alpha={self.alpha:.4g})"
