"""The flow-matching objective: draw ``t`` and noise, build ``x_t`` and the velocity target (spec 2.8).

No model lives here (SiT ``transport`` / EDM2 ``EDM2Loss`` style): the training step calls::

    fm = FlowMatching(get_path("linear"), get_time_sampler("uniform", "linear"))
    nb = fm.draw(x0)                                   # NoisedBatch(t [B], noise, x_t, target)
    pred = model(nb.x_t, nb.t, y).prediction
    loss = fm.loss(pred, nb.target).mean()             # per-sample MSE [B] -> scalar

REPA-E draws ``t`` and ``eps`` once in the VAE-alignment pass and **reuses** them in the SiT pass
(spec 1.3 step I, 11.4): ``fm.draw(z2, t=nb.t, noise=nb.noise)``. ``x_0`` is the *normalised*
latent. Time comes from the CPU RNG (or ``generator``), noise from ``x_0``'s device RNG (or
``generator``, drawn on its device and moved), as in the reference.

Every objective (this one and :class:`repae.diffusion.gaussian.DDPMObjective`) has the interface
:class:`DiffusionObjective`, which is all that code outside the training step (hooks, analysis)
may use: ``noisy_input(x0, noise, t)`` builds the network input in the objective's own time, and
``time_at(u)`` turns a noise level ``u`` in ``[0, 1]`` (0 data, 1 noise) into that time, e.g. the
"t = 0.5" of a CKNNA measurement.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from repae.diffusion.paths import LinearPath, Path, get_path
from repae.diffusion.timesteps import TimeSampler, UniformTime, get_time_sampler

__all__ = ["NoisedBatch", "DiffusionObjective", "FlowMatching", "per_sample_mse", "fp32_region"]


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that disables autocast on ``device`` so a loss is computed in float32."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean over all non-batch dims of ``(prediction - target)^2``, in float32 (spec 2.8 step 8).

    No time-dependent weighting (REPA-E's ``weighting`` flag only changes time sampling).
    ``[B, C, h, w], [B, C, h, w] -> [B]``.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ; "
            f"the model must output as many channels as the latent has"
        )
    with fp32_region(prediction.device):
        err = (prediction.float() - target.float()) ** 2  # [B, C, h, w]
        return err.reshape(err.shape[0], -1).mean(dim=1)  # [B]


@dataclass
class NoisedBatch:
    """One draw of the forward process for a batch ``x_0`` ``[B, C, h, w]``.

    ``t`` ``[B]`` float32; ``noise``, ``x_t`` and ``target`` ``[B, C, h, w]`` (``x_t`` and
    ``target`` in the promotion of ``x_0``'s dtype with float32).
    """

    t: Tensor
    noise: Tensor
    x_t: Tensor
    target: Tensor


class DiffusionObjective(Protocol):
    """What every training objective offers (:class:`FlowMatching`, ``DDPMObjective``).

    ``t`` is always the objective's *own* time, the value the network is conditioned on: flow time
    in ``[0, 1]`` (0 = data) for flow matching, whole DDPM timesteps ``0..T-1`` (0 = least noisy)
    for DDPM. Code that must pick a time without knowing the objective asks :meth:`time_at`.
    """

    time_sampler: TimeSampler  # draws training times [n] in the objective's own convention

    def draw(self, x0: Tensor, *, generator: torch.Generator | None = None, t: Tensor | None = None,
             noise: Tensor | None = None) -> NoisedBatch:
        """Sample (or reuse) ``t`` and noise; the noised batch with its regression target."""
        ...

    def batch_loss(self, prediction: Tensor, batch: NoisedBatch) -> Tensor:
        """Per-sample loss ``[B]`` of a prediction on a noised batch."""
        ...

    def noisy_input(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The network input ``x_t`` ``[B, C, h, w]`` for clean latents ``x0``, ``noise`` and own times ``t`` ``[B]``."""
        ...

    def time_at(self, u: float) -> float:
        """The own time whose input has noise level ``u`` in ``[0, 1]`` (0 data, 1 noise; see the implementations)."""
        ...


def check_noise_level(u: float) -> float:
    """``u`` as a float in ``[0, 1]`` (ValueError naming the range otherwise)."""
    u = float(u)
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"noise level u={u} must lie in [0, 1] (0 = data, 1 = noise)")
    return u


def draw_t_and_noise(time_sampler: TimeSampler, x0: Tensor, *, generator: torch.Generator | None = None,
                     t: Tensor | None = None, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Draw (time first, then noise) or check reused ``t`` ``[B]`` and ``noise`` (``x0``'s shape).

    Shared by every objective, so that reusing the VAE phase's ``t`` and noise in the SiT phase
    (spec 1.3) means the same thing for flow matching and DDPM.
    """
    B = x0.shape[0]
    if t is None:
        t = time_sampler.sample(B, generator=generator, device=x0.device)  # [B]
    else:
        if t.numel() != B:
            raise ValueError(f"reused t has {t.numel()} entries for a batch of {B}; pass one t per sample")
        t = t.reshape(B).to(device=x0.device, dtype=torch.float32)  # [B]
    if noise is None:
        if generator is None:
            noise = torch.randn_like(x0)  # [B, C, h, w]
        else:
            noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"reused noise {tuple(noise.shape)} does not match x0 {tuple(x0.shape)}; pass noise shaped like x0")
    return t, noise.to(device=x0.device, dtype=x0.dtype)  # [B], [B, C, h, w]


class FlowMatching:
    """Velocity-prediction flow matching on a :class:`~repae.diffusion.paths.Path` (spec 2.8)."""

    def __init__(self, path: Path | None = None, time_sampler: TimeSampler | None = None):
        self.path = path if path is not None else LinearPath()  # interpolant (default linear)
        self.time_sampler = time_sampler if time_sampler is not None else UniformTime()  # (default uniform)

    @classmethod
    def from_names(cls, *, path: str = "linear", time_sampler: str = "uniform") -> FlowMatching:
        """Build from registry names, e.g. ``from_names(path="linear", time_sampler="lognormal")``."""
        return cls(get_path(path), get_time_sampler(time_sampler, path))

    def draw(
        self,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> NoisedBatch:
        """Sample (or reuse) ``t`` and ``eps``; return ``x_t`` and the velocity target.

        Args:
            x0: normalised clean latents ``[B, C, h, w]``.
            generator: optional RNG for both draws (time first, then noise).
            t: reuse these times (``[B]`` or ``[B, 1, 1, 1]``) instead of drawing.
            noise: reuse this noise (``x0``'s shape) instead of drawing.
        """
        t, noise = draw_t_and_noise(self.time_sampler, x0, generator=generator, t=t, noise=noise)  # [B], [B, C, h, w]
        x_t = self.noisy_input(x0, noise, t)  # [B, C, h, w]
        target = self.path.velocity_target(x0, noise, t)  # [B, C, h, w]
        return NoisedBatch(t=t, noise=noise, x_t=x_t, target=target)

    def noisy_input(self, x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
        """``x_t = alpha_t x_0 + sigma_t eps`` on this objective's path; ``t`` flow time ``[B]`` (or a scalar)."""
        return self.path.interpolate(x0, noise, t)  # [B, C, h, w]

    def time_at(self, u: float) -> float:
        """The flow time itself: ``u`` is already this objective's time (``t = 0.5``: equal signal and
        noise, ``alpha = sigma``, on the linear and the cosine path alike)."""
        return check_noise_level(u)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-sample denoising loss ``[B]`` (mean squared velocity error over C, h, w; fp32)."""
        return per_sample_mse(prediction, target)

    def batch_loss(self, prediction: Tensor, batch: NoisedBatch) -> Tensor:
        """Per-sample loss ``[B]`` from the whole noised batch: the one interface every objective shares
        (:class:`repae.diffusion.gaussian.DDPMObjective` needs ``x_0``, ``x_t`` and ``t`` too)."""
        return self.loss(prediction, batch.target)

    def __repr__(self) -> str:
        return f"FlowMatching(path={self.path!r}, time_sampler={self.time_sampler!r})"
