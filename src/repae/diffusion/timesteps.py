"""Training-time samplers for the flow-matching time ``t`` in ``[0, 1]`` (spec 2.8 step 2).

* ``uniform``:   ``t ~ U[0, 1)``.
* ``lognormal``: the noise-to-signal ratio ``sigma_t / alpha_t = exp(n)``, ``n ~ N(mean, std)``
  (EDM-style); for the linear path ``t = s / (1 + s)`` (= ``sigmoid(n)``, median 0.5 when
  ``mean = 0``), for the cosine path ``t = (2/pi) atan(s)``. The map from ratio to ``t`` is owned
  by the path (:meth:`repae.diffusion.paths.Path.time_from_noise_ratio`).

Draws come from ``generator`` (on its device; the reference uses the **CPU** RNG for time,
spec 11.4) or from the default CPU RNG, and are then moved to ``device``. Output: float32 ``[n]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from repae.diffusion.paths import get_path
from repae.errors import ConfigError

__all__ = ["TimeSampler", "UniformTime", "LogNormalTime", "TIME_SAMPLERS", "get_time_sampler"]


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class TimeSampler:
    """Interface: ``sample(n, *, generator=None, device=None) -> Tensor [n]`` float32 in ``[0, 1]``."""

    name: str = ""

    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        raise NotImplementedError


class UniformTime(TimeSampler):
    """``t ~ U[0, 1)`` (REPA-E default ``--weighting uniform``).

    ``path_name`` is accepted so every sampler is built the same way; uniform time ignores it.
    """

    name = "uniform"

    def __init__(self, *, path_name: str = "linear"):
        self.path_name = path_name  # unused: uniform in t for every path

    def sample(self, n, *, generator=None, device=None):
        t = torch.rand(n, generator=generator, device=_draw_device(generator), dtype=torch.float32)  # [n]
        return t.to(device) if device is not None else t  # [n]

    def __repr__(self) -> str:
        return "UniformTime()"


class LogNormalTime(TimeSampler):
    """Log-normal noise-to-signal ratio ``exp(n)``, ``n ~ N(mean, std)``, mapped to ``t`` by the path."""

    name = "lognormal"

    def __init__(self, *, path_name: str = "linear", mean: float = 0.0, std: float = 1.0):
        self.path_name = path_name  # which path's ratio -> t map to use ("linear" | "cosine")
        self.mean = mean  # mean of log(sigma_t / alpha_t)   (0.0 in REPA / REPA-E)
        self.std = std  # std of log(sigma_t / alpha_t)      (1.0 in REPA / REPA-E)
        self._path = get_path(path_name)

    def sample(self, n, *, generator=None, device=None):
        z = torch.randn(n, generator=generator, device=_draw_device(generator), dtype=torch.float32)  # [n]
        ratio = torch.exp(self.mean + self.std * z)  # [n] sigma_t / alpha_t
        t = self._path.time_from_noise_ratio(ratio).to(torch.float32)  # [n]
        return t.to(device) if device is not None else t  # [n]

    def __repr__(self) -> str:
        return f"LogNormalTime(path_name={self.path_name!r}, mean={self.mean}, std={self.std})"


#: Registry of time samplers, keyed by the config / CLI name (``--weighting``).
TIME_SAMPLERS: dict[str, type[TimeSampler]] = {"uniform": UniformTime, "lognormal": LogNormalTime}


def get_time_sampler(name: str, path_name: str = "linear", **kwargs) -> TimeSampler:
    """Build time sampler ``name`` for path ``path_name``; extra kwargs go to the constructor."""
    if name not in TIME_SAMPLERS:
        raise ConfigError(f"unknown time sampler {name!r}; choose one of: {', '.join(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[name](path_name=path_name, **kwargs)
