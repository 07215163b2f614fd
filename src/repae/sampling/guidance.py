"""Classifier-free guidance with a guidance interval (REPA-E spec 6, 11.21; Kynkäänniemi et al. 2024).

:func:`guided_velocity` turns a pure network ``model_fn(x_t, t_vec, y) -> v`` into the
``velocity_fn(x, t, t_guide)`` that every solver in :mod:`repae.sampling.solvers` takes.

Rule (spec 6): CFG is applied iff ``cfg_scale > 1`` and ``low <= t_guide <= high`` (inclusive).
Inside the interval the batch is doubled, ``[x; x]`` with labels ``[y; null]``, and the output
``uncond + s * (cond - uncond)`` is returned; outside it one conditional pass of batch ``B`` is
made (no wasted unconditional evaluations). Guidance acts on ALL latent channels (REPA/REPA-E;
not the 3-channel DiT quirk, spec-related-methods 7.4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from repae.errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["guidance_active", "guided_velocity", "model_velocity_fn"]


def _check(cfg_scale: float, interval: tuple[float, float]) -> tuple[float, float]:
    if not 1.0 <= cfg_scale < float("inf"):  # nan and inf too: they sample black or NaN images
        raise ConfigError(f"cfg_scale must be a finite number >= 1 (got {cfg_scale}); use 1.0 for no guidance")
    low, high = (float(v) for v in interval)
    if not low <= high:
        raise ConfigError(f"guidance interval ({low}, {high}) is empty; pass low <= high, e.g. (0.0, 1.0)")
    return low, high


def guidance_active(t_guide: float, *, cfg_scale: float, interval: tuple[float, float] = (0.0, 1.0)) -> bool:
    """True iff CFG applies at ``t_guide``: ``cfg_scale > 1 and low <= t_guide <= high`` (spec 11.21)."""
    low, high = _check(cfg_scale, interval)
    return cfg_scale > 1.0 and low <= t_guide <= high


def model_velocity_fn(model: torch.nn.Module) -> ModelFn:
    """Adapt a network returning ``SiTOutput`` (or a plain tensor) to ``model_fn(x_t, t, y) -> v``."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x_t, t, y)
        return out.prediction if hasattr(out, "prediction") else out  # [B, C, h, w]

    return model_fn


def guided_velocity(model_fn: ModelFn, y: torch.Tensor, *, cfg_scale: float = 1.0,
                    interval: tuple[float, float] = (0.0, 1.0), null_label: int
                    ) -> Callable[[torch.Tensor, float, float], torch.Tensor]:
    """Bind labels and guidance settings into a solver ``velocity_fn(x, t, t_guide) -> v``.

    Args:
        model_fn: ``model_fn(x_t [N,C,h,w], t [N], y [N] int64) -> v [N,C,h,w]``; pure.
        y: class labels [B] int64 in ``[0, num_classes)``.
        cfg_scale: guidance scale ``s`` (1.0 = no guidance; < 1 raises ConfigError).
        interval: ``(low, high)`` times (t = 1 noise) inside which CFG is applied, bounds
            inclusive (REPA-E README uses e.g. (0, 0.65) for SiT-XL/2).
        null_label: the unconditional label, ``num_classes`` (:mod:`repae.conventions`).

    The time is passed to the network as a 1-D tensor in the dtype of ``x`` (the noise dtype the
    solver casts to, float32 in practice; spec 11.23).
    """
    low, high = _check(cfg_scale, interval)
    scale = float(cfg_scale)
    y = torch.as_tensor(y, dtype=torch.long)
    y_null = torch.full_like(y, int(null_label))  # [B]
    y_both = torch.cat([y, y_null])  # [2B]

    def velocity_fn(x: torch.Tensor, t: float, t_guide: float) -> torch.Tensor:
        batch = x.shape[0]
        if scale > 1.0 and low <= t_guide <= high:
            x_in = torch.cat([x, x])  # [2B, C, h, w]
            t_in = torch.full((2 * batch,), float(t), dtype=x.dtype, device=x.device)  # [2B]
            out = model_fn(x_in, t_in, y_both.to(x.device))  # [2B, C, h, w]
            cond, uncond = out.chunk(2)  # [B, C, h, w] each
            return uncond + scale * (cond - uncond)
        t_in = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)  # [B]
        return model_fn(x, t_in, y.to(x.device))  # [B, C, h, w]

    return velocity_fn
