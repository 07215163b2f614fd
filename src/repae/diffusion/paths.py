"""Interpolation paths ``x_t = alpha_t * x_0 + sigma_t * eps`` and converters between predictions.

ONE convention (REPA / REPA-E, :mod:`repae.conventions`): **t = 0 is data, t = 1 is noise**, so
``alpha_0 = 1, sigma_0 = 0`` and ``alpha_1 = 0, sigma_1 = 1``. (SiT's own ``transport`` package
uses the opposite direction; do not mix the two.) The network predicts the velocity
``v = d_alpha * x_0 + d_sigma * eps`` (spec 2.8 step 4).

Paths (spec 2.8 step 4):

* ``linear``:  ``alpha = 1 - t``, ``sigma = t``; ``v = eps - x_0``.
* ``cosine``:  ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` (SiT's "GVP").

Broadcasting: every method takes ``t`` either already broadcastable against the data, or of
shape ``[B]`` for data ``[B, ...]``; a ``[B]`` time is reshaped to ``[B, 1, 1, 1]`` (one trailing
singleton per data dimension). :meth:`Path.coefficients` itself returns tensors of ``t``'s shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from repae.errors import ConfigError

__all__ = ["PathCoefficients", "Path", "LinearPath", "CosinePath", "PATHS", "get_path", "expand_time"]


def expand_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Make ``t`` broadcast against ``x``: ``[B] -> [B, 1, ..., 1]``; scalars and others unchanged."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 1 and x.ndim > 1 and t.shape[0] == x.shape[0]:
        return t.reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, 1, 1]
    return t


@dataclass
class PathCoefficients:
    """``alpha_t``, ``sigma_t`` and their time derivatives, each with ``t``'s shape."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


class Path:
    """Base class: subclasses define :meth:`coefficients` and :meth:`time_from_noise_ratio`."""

    name: str = ""

    def coefficients(self, t: Tensor) -> PathCoefficients:
        raise NotImplementedError

    def time_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        """The ``t`` at which ``sigma_t / alpha_t == ratio`` (used by log-normal time sampling)."""
        raise NotImplementedError

    def _coef(self, t: Tensor | float, x: Tensor) -> PathCoefficients:
        return self.coefficients(expand_time(t, x))

    def interpolate(self, x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
        """``x_t = alpha_t x_0 + sigma_t eps`` (spec 2.8 step 4)."""
        c = self._coef(t, x0)
        return c.alpha * x0 + c.sigma * noise  # [B, C, h, w]

    def velocity_target(self, x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
        """``v = d_alpha x_0 + d_sigma eps`` (linear path: ``eps - x_0``)."""
        c = self._coef(t, x0)
        return c.d_alpha * x0 + c.d_sigma * noise  # [B, C, h, w]

    def velocity_to_score(self, v: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """Score ``grad log p_t(x)`` from a velocity (spec 6.2).

        ``r = alpha / d_alpha``, ``var = sigma^2 - r d_sigma sigma``, ``score = (r v - x) / var``;
        for the linear path ``score = -((1 - t) v + x) / t``. Undefined at t = 0 (``var = 0``;
        the SDE sampler never evaluates it there).
        """
        c = self._coef(t, x)
        r = c.alpha / c.d_alpha
        var = c.sigma**2 - r * c.d_sigma * c.sigma
        return (r * v - x) / var  # [B, C, h, w]

    def _det(self, c: PathCoefficients) -> Tensor:
        # alpha d_sigma - sigma d_alpha: 1 for linear, pi/2 for cosine; never 0 on [0, 1].
        return c.alpha * c.d_sigma - c.sigma * c.d_alpha

    def velocity_to_x0(self, v: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """Data estimate ``x_0 = (d_sigma x - sigma v) / (alpha d_sigma - sigma d_alpha)``."""
        c = self._coef(t, x)
        return (c.d_sigma * x - c.sigma * v) / self._det(c)  # [B, C, h, w]

    def velocity_to_eps(self, v: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """Noise estimate ``eps = (alpha v - d_alpha x) / (alpha d_sigma - sigma d_alpha)``."""
        c = self._coef(t, x)
        return (c.alpha * v - c.d_alpha * x) / self._det(c)  # [B, C, h, w]

    def eps_to_velocity(self, eps: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """Velocity from a noise estimate: ``x_0 = (x - sigma eps) / alpha``; undefined at t = 1."""
        c = self._coef(t, x)
        x0 = (x - c.sigma * eps) / c.alpha  # [B, C, h, w]
        return c.d_alpha * x0 + c.d_sigma * eps  # [B, C, h, w]

    def x0_to_velocity(self, x0: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        """Velocity from a data estimate: ``eps = (x - alpha x_0) / sigma``; undefined at t = 0."""
        c = self._coef(t, x)
        eps = (x - c.alpha * x0) / c.sigma  # [B, C, h, w]
        return c.d_alpha * x0 + c.d_sigma * eps  # [B, C, h, w]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(Path):
    """Rectified-flow / SiT "Linear" interpolant in REPA's time direction (spec 2.8 step 4)."""

    name = "linear"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = torch.as_tensor(t)
        return PathCoefficients(alpha=1 - t, sigma=t, d_alpha=-torch.ones_like(t), d_sigma=torch.ones_like(t))

    def time_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        return ratio / (1 + ratio)  # t / (1 - t) = ratio


class CosinePath(Path):
    """Variance-preserving trigonometric interpolant (SiT "GVP"; spec 2.8 step 4)."""

    name = "cosine"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = torch.as_tensor(t)
        half_pi = math.pi / 2
        return PathCoefficients(
            alpha=torch.cos(half_pi * t),
            sigma=torch.sin(half_pi * t),
            d_alpha=-half_pi * torch.sin(half_pi * t),
            d_sigma=half_pi * torch.cos(half_pi * t),
        )

    def time_from_noise_ratio(self, ratio: Tensor) -> Tensor:
        return torch.atan(ratio) * (2 / math.pi)  # tan(pi t / 2) = ratio


#: Registry of interpolation paths, keyed by the config / CLI name (``--path-type``).
PATHS: dict[str, type[Path]] = {"linear": LinearPath, "cosine": CosinePath}


def get_path(name: str) -> Path:
    """Instantiate the path registered as ``name``; :class:`ConfigError` lists the choices."""
    if name not in PATHS:
        raise ConfigError(f"unknown path type {name!r}; choose one of: {', '.join(PATHS)}")
    return PATHS[name]()
