"""DDPM samplers for DiT-style eps models: respaced ancestral DDPM and DDIM, with CFG.

Same call convention as :mod:`repae.sampling.solvers` (one signature for interchangeable parts)::

    x0 = sampler(denoiser_fn, xT, *, num_steps=250, generator=None, progress=False, **kw)

``denoiser_fn(x, t, t_guide) -> output`` is the (possibly guided) *network output* at state ``x``:
``[B, 2C, h, w]`` = (eps, variance values) for a learned-variance DiT, or ``[B, C, h, w]`` = eps.
``t`` is the ORIGINAL DDPM timestep the network is conditioned on (a float holding a whole number;
with respacing this is ``timestep_map[i]``, IDDPM's ``_WrappedModel``), and ``t_guide =
t / (T - 1)`` in ``[0, 1]`` (1 = pure noise) is the time on which a guidance interval is decided,
so :func:`guided_denoiser` takes the same ``(low, high)`` interval as the flow samplers.

Precision and randomness follow the flow solvers: the state is kept in float64, the network is
called in the dtype of ``x`` and its output cast back; ``generator`` is ``None``, one
``torch.Generator`` or one per sample (:func:`repae.sampling.solvers.randn_per_sample`).

Samplers (:data:`DDPM_SAMPLERS`):

* ``ddpm``  - ancestral sampling on a respaced process (IDDPM sec. 4; DiT uses 250 steps):
  ``x_{t-1} = mu_theta(x_t, t) + [t > 0] sigma_t z`` (DDPM Algorithm 2), with the learned-range
  variance (IDDPM eq. 15) or, for C-channel outputs, the fixed ``beta~_t``.
* ``ddim``  - DDIM (Song et al. 2021, eq. 12): ``x_{t-1} = sqrt(abar_{t-1}) x0_hat +
  sqrt(1 - abar_{t-1} - s^2) eps_hat + s z`` with ``s = eta sqrt((1 - abar_{t-1}) / (1 - abar_t))
  sqrt(1 - abar_t / abar_{t-1})``; ``eta = 0`` is deterministic.
* :func:`ddim_invert` - the eta = 0 DDIM ODE run forward (data -> noise), DDIM sec. 4.3.

These samplers expect an eps/DDPM network (DiT); the velocity solvers in
:mod:`repae.sampling.solvers` expect a flow network (SiT, LightningDiT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from repae.diffusion.gaussian import GaussianDiffusion
from repae.errors import ConfigError
from repae.sampling.guidance import ModelFn
from repae.sampling.solvers import GeneratorArg, randn_per_sample

DenoiserFn = Callable[[Tensor, float, float], Tensor]

__all__ = ["DenoiserFn", "DDPM_SAMPLERS", "ddpm", "ddim", "ddim_invert", "guided_denoiser", "get_ddpm_sampler",
           "sampling_process"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def sampling_process(num_steps: int, *, diffusion: GaussianDiffusion | None = None,
                     spacing: str | Sequence[int] | None = None) -> GaussianDiffusion:
    """The respaced process a sampler runs on: ``diffusion`` (default 1000 linear steps) respaced to
    ``spacing`` (default ``str(num_steps)``: evenly spaced, as DiT's ``create_diffusion(str(N))``)."""
    if int(num_steps) < 1:
        raise ConfigError(f"num_steps must be >= 1 (got {num_steps}); pass a positive number of steps")
    base = diffusion if diffusion is not None else GaussianDiffusion.linear(1000)
    process = base.respace(spacing if spacing is not None else str(int(num_steps)))
    if spacing is None and process.num_timesteps != int(num_steps):
        raise ConfigError(f"cannot respace {base.num_timesteps} steps to {num_steps}; ask for fewer steps")
    return process


def _t_guide(process: GaussianDiffusion, original_t: int) -> float:
    T = max(process.original_num_timesteps - 1, 1)
    return float(original_t) / T


def _call(fn: DenoiserFn, x: Tensor, original_t: int, process: GaussianDiffusion, dtype: torch.dtype) -> Tensor:
    """Network output in float64 for state ``x`` at original timestep ``original_t``."""
    return fn(x.to(dtype), float(original_t), _t_guide(process, original_t)).to(torch.float64)


def guided_denoiser(model_fn: ModelFn, y: Tensor, *, cfg_scale: float = 1.0,
                    interval: tuple[float, float] = (0.0, 1.0), null_label: int,
                    cfg_channels: int | None = None) -> DenoiserFn:
    """Bind labels and classifier-free guidance into a ``denoiser_fn(x, t, t_guide)`` (Ho & Salimans 2021).

    Inside the guidance interval the batch is doubled (``[x; x]``, labels ``[y; null]``) and the
    **noise prediction** is guided, ``eps = eps_u + s (eps_c - eps_u)``; the variance channels
    (if any) come from the conditional half, as in DiT's ``forward_with_cfg``. Outside it one
    conditional pass is made.

    Args:
        model_fn: ``model_fn(x_t [N,C,h,w], t [N] (DDPM timesteps), y [N]) -> [N, C or 2C, h, w]``.
        y: labels ``[B]``; ``null_label`` = ``num_classes``.
        cfg_scale: ``s`` (1 = no guidance; < 1 raises).
        interval: ``(low, high)`` in ``t_guide = t / (T - 1)``, bounds inclusive.
        cfg_channels: how many leading eps channels to guide; ``None`` = all ``C`` (the default
            here). ``3`` reproduces the official DiT/SiT sampling scripts, which guide only the first
            three channels (a leftover from pixel-space code; spec-related-methods 7.5).
    """
    if not 1.0 <= cfg_scale < float("inf"):
        raise ConfigError(f"cfg_scale must be a finite number >= 1 (got {cfg_scale}); use 1.0 for no guidance")
    low, high = (float(v) for v in interval)
    if not low <= high:
        raise ConfigError(f"guidance interval ({low}, {high}) is empty; pass low <= high, e.g. (0.0, 1.0)")
    scale = float(cfg_scale)
    y = torch.as_tensor(y, dtype=torch.long)
    y_both = torch.cat([y, torch.full_like(y, int(null_label))])  # [2B]

    def denoiser_fn(x: Tensor, t: float, t_guide: float) -> Tensor:
        B, C = x.shape[0], x.shape[1]
        if scale > 1.0 and low <= t_guide <= high:
            t_in = torch.full((2 * B,), float(t), dtype=x.dtype, device=x.device)  # [2B]
            out = model_fn(torch.cat([x, x]), t_in, y_both.to(x.device))  # [2B, C or 2C, h, w]
            cond, uncond = out.chunk(2)  # [B, ., h, w] each
            k = C if cfg_channels is None else int(cfg_channels)
            if not 1 <= k <= C:
                raise ConfigError(f"cfg_channels={cfg_channels} must lie in 1..{C} (the latent channels)")
            guided = cond.clone()
            guided[:, :k] = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
            return guided
        t_in = torch.full((B,), float(t), dtype=x.dtype, device=x.device)  # [B]
        return model_fn(x, t_in, y.to(x.device))  # [B, C or 2C, h, w]

    return denoiser_fn


# ---------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------


def ddpm(denoiser_fn: DenoiserFn, x: Tensor, *, num_steps: int = 250, generator: GeneratorArg = None,
         progress: bool = False, diffusion: GaussianDiffusion | None = None,
         spacing: str | Sequence[int] | None = None, clip_denoised: bool = False,
         fixed_variance: str = "small", **_: Any) -> Tensor:
    """Ancestral DDPM sampling (DDPM Algorithm 2) on the respaced process (IDDPM sec. 4).

    For ``i = S-1 .. 0``: ``p = p_mean_variance(out, x, i)``; ``x <- p.mean + [i > 0] exp(0.5 log var) z``.
    Noise ``z`` is drawn every step (as the reference), also at ``i = 0`` where it is masked.
    ``diffusion``: the training process (default 1000 linear steps); ``spacing``: kept timesteps
    (default ``num_steps`` evenly spaced). ``fixed_variance`` applies to C-channel outputs only.
    Network evaluations: ``S`` (``= num_steps``).
    """
    process = sampling_process(num_steps, diffusion=diffusion, spacing=spacing)
    dtype = x.dtype
    state = x.to(torch.float64)  # [B, C, h, w]
    B = state.shape[0]
    for i in tqdm(range(process.num_timesteps - 1, -1, -1), desc="ddpm", leave=False, disable=not progress):
        t_vec = torch.full((B,), i, dtype=torch.long, device=state.device)  # [B] respaced index
        out = _call(denoiser_fn, state, int(process.timestep_map[i]), process, dtype)  # [B, C or 2C, h, w]
        pred = process.p_mean_variance(out, state, t_vec, clip_denoised=clip_denoised, fixed_variance=fixed_variance)
        z = randn_per_sample(state.shape, generator, dtype=dtype, device=state.device).to(torch.float64)
        state = pred.mean + (float(i > 0) * torch.exp(0.5 * pred.log_variance)) * z  # [B, C, h, w]
    return state.to(dtype)


def ddim(denoiser_fn: DenoiserFn, x: Tensor, *, num_steps: int = 50, generator: GeneratorArg = None,
         progress: bool = False, diffusion: GaussianDiffusion | None = None,
         spacing: str | Sequence[int] | None = None, eta: float = 0.0, clip_denoised: bool = False,
         **_: Any) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) on the respaced process; ``eta = 0`` is deterministic.

    ``x0_hat`` and ``eps_hat`` come from the network's eps (a learned variance is ignored);
    ``eps_hat`` is recomputed from ``x0_hat`` so ``clip_denoised`` stays consistent (IDDPM
    ``ddim_sample``). No noise is drawn when ``eta = 0``. Network evaluations: ``S``.
    """
    if eta < 0:
        raise ConfigError(f"eta must be >= 0 (got {eta}); 0 = deterministic DDIM, 1 = DDPM-like")
    process = sampling_process(num_steps, diffusion=diffusion, spacing=spacing)
    dtype = x.dtype
    state = x.to(torch.float64)  # [B, C, h, w]
    B, C = state.shape[0], state.shape[1]
    for i in tqdm(range(process.num_timesteps - 1, -1, -1), desc="ddim", leave=False, disable=not progress):
        t_vec = torch.full((B,), i, dtype=torch.long, device=state.device)  # [B]
        out = _call(denoiser_fn, state, int(process.timestep_map[i]), process, dtype)
        pred_x0 = process.pred_x0_from_eps(state, t_vec, out[:, :C])  # [B, C, h, w]
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        eps = process.eps_from_pred_x0(state, t_vec, pred_x0)  # [B, C, h, w]
        abar = float(process.alphas_cumprod[i])
        abar_prev = float(process.alphas_cumprod_prev[i])
        sigma = eta * ((1 - abar_prev) / (1 - abar)) ** 0.5 * (1 - abar / abar_prev) ** 0.5
        mean = pred_x0 * abar_prev**0.5 + (max(1 - abar_prev - sigma**2, 0.0)) ** 0.5 * eps  # [B, C, h, w]
        if eta > 0 and i > 0:
            z = randn_per_sample(state.shape, generator, dtype=dtype, device=state.device).to(torch.float64)
            mean = mean + sigma * z
        state = mean
    return state.to(dtype)


def ddim_invert(denoiser_fn: DenoiserFn, x0: Tensor, *, num_steps: int = 50, progress: bool = False,
                diffusion: GaussianDiffusion | None = None, spacing: str | Sequence[int] | None = None,
                **_: Any) -> Tensor:
    """Deterministic DDIM inversion, data -> noise (DDIM sec. 4.3): :func:`ddim` (eta = 0) run backwards.

    Sampling step ``j`` moves from level ``abar_j`` to ``abar_{j-1}`` (``abar_{-1} = 1``, clean data)
    with the network evaluated at step ``j``. Its inverse here moves from ``abar_{j-1}`` to ``abar_j``
    with the network evaluated at the *current* level (step ``j - 1``; step 0 for the clean input):
    ``eps = eps_theta(x)``, ``x0_hat = (x - sqrt(1 - abar_{j-1}) eps) / sqrt(abar_{j-1})``,
    ``x <- sqrt(abar_j) x0_hat + sqrt(1 - abar_j) eps``. Both are Euler steps of the same ODE in
    ``(x / sqrt(abar), sqrt(1 / abar - 1))``, so ``ddim(ddim_invert(x0)) = x0`` up to their
    discretisation error. Network evaluations: ``S``.
    """
    process = sampling_process(num_steps, diffusion=diffusion, spacing=spacing)
    dtype = x0.dtype
    state = x0.to(torch.float64)  # [B, C, h, w]
    C = state.shape[1]
    for j in tqdm(range(process.num_timesteps), desc="ddim-invert", leave=False, disable=not progress):
        at = max(j - 1, 0)  # the step whose noise level the state is at (0 for the clean input)
        out = _call(denoiser_fn, state, int(process.timestep_map[at]), process, dtype)
        eps = out[:, :C]  # [B, C, h, w]
        abar_cur = float(process.alphas_cumprod_prev[j])  # 1 for j = 0
        abar_next = float(process.alphas_cumprod[j])
        pred_x0 = (state - (1 - abar_cur) ** 0.5 * eps) / abar_cur**0.5  # [B, C, h, w]
        state = pred_x0 * abar_next**0.5 + (1 - abar_next) ** 0.5 * eps  # [B, C, h, w]
    return state.to(dtype)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

DDPM_SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_ddpm_sampler(name: str) -> Callable[..., Tensor]:
    """The DDPM sampler registered as ``name``; :class:`ConfigError` listing the choices otherwise."""
    try:
        return DDPM_SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"unknown DDPM sampler {name!r}; choose one of: {', '.join(DDPM_SAMPLERS)}") from None
