"""Flow-matching samplers with ONE call signature (k-diffusion style, style guide 1.4 / 4.4).

Every solver in :data:`SOLVERS` is called the same way::

    x0 = solver(velocity_fn, x1, num_steps=50, generator=None, progress=False, **kw)

``velocity_fn(x, t, t_guide) -> v`` returns the (possibly guided) velocity ``v = dx/dt`` at the
state ``x`` and time ``t`` (a python float). ``t_guide`` is the time at which the caller should
decide whether classifier-free guidance applies: it equals ``t`` except in Heun's corrector, which
evaluates the network at ``t_next`` but keeps the guidance decision of ``t_cur`` (REPA-E spec 6.1,
11.21). See :func:`repae.sampling.guidance.guided_velocity`.

Conventions (:mod:`repae.conventions`): ``t = 1`` is noise, ``t = 0`` is data; the solvers
integrate from 1 down to 0.

Precision (spec 6 / 11.23): the state is integrated in float64; ``velocity_fn`` is always called
with the state cast to the dtype of the ``x`` you pass in (the *noise dtype*, float32 in practice),
and its output is cast back to float64. The result is returned in the noise dtype. Passing a
float64 ``x`` therefore runs everything in float64 (used by the analytic tests).

Random numbers (Euler-Maruyama only): ``generator`` may be ``None`` (global RNG), one
``torch.Generator``, or a list of per-sample generators (one per row of ``x``). With per-sample
generators the noise of sample ``i`` depends only on its own generator, never on which other
samples share the batch, so results do not depend on batch size or world size.

Why one guided ``velocity_fn`` serves the SDE too: the reference applies CFG to the SDE *drift*
``d = v - 0.5 * w(t) * score(v, x, t)`` (spec 6.2). For every path the score is affine in ``v``
with coefficients that depend only on ``(x, t)``: ``score = (r * v - x) / var``. Both CFG branches
see the same ``x`` and ``t``, so ``d`` is affine in ``v`` with shared coefficients, and
``d_u + s * (d_c - d_u) = drift(v_u + s * (v_c - v_u))``. CFG on the drift equals the drift of the
CFG velocity (up to float rounding), and the SDE can take the same guided velocity as the ODEs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from repae.errors import ConfigError

VelocityFn = Callable[[torch.Tensor, float, float], torch.Tensor]
GeneratorArg = torch.Generator | Sequence[torch.Generator] | None

__all__ = [
    "SOLVERS",
    "VelocityFn",
    "euler",
    "euler_maruyama",
    "get_solver",
    "heun",
    "randn_per_sample",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def randn_per_sample(shape: Sequence[int], generator: GeneratorArg, *, dtype: torch.dtype,
                     device: torch.device | str) -> torch.Tensor:
    """Standard normal noise of ``shape`` [B, ...], drawn so that row ``i`` depends only on its RNG.

    ``generator``: ``None`` -> the global RNG of ``device``; one ``torch.Generator`` -> the whole
    tensor from it (on the generator's device, then moved); a sequence of ``B`` generators -> row
    ``i`` is drawn from ``generator[i]`` (on that generator's device, then moved to ``device``).
    """
    shape = tuple(int(s) for s in shape)
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ConfigError(
            f"got {len(gens)} per-sample generators for a batch of {shape[0]}; pass one generator per sample"
        )
    rows = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in gens]  # B x [C, h, w]
    return torch.stack(rows).to(device)  # [B, C, h, w]


def _call(velocity_fn: VelocityFn, x: torch.Tensor, t: float, t_guide: float,
          model_dtype: torch.dtype) -> torch.Tensor:
    """Call the network in ``model_dtype`` and return the velocity in float64 (spec 11.23)."""
    return velocity_fn(x.to(model_dtype), float(t), float(t_guide)).to(torch.float64)


def _steps(grid: torch.Tensor, n: int, progress: bool, desc: str):
    """Pairs (t_cur, t_next) for the first ``n`` intervals of ``grid``, with an optional tqdm bar."""
    pairs = [(float(grid[i]), float(grid[i + 1])) for i in range(n)]
    return tqdm(pairs, desc=desc, leave=False, disable=not progress)


def _shifted(grid: torch.Tensor, alpha: float) -> torch.Tensor:
    """A time grid mapped through RAE's time shift (:func:`repae.diffusion.shift.shift_time`; 1 = unchanged)."""
    if float(alpha) == 1.0:
        return grid
    from repae.diffusion.shift import shift_time  # lazy: keeps this module importable alone

    return shift_time(grid, float(alpha))


def _check_steps(num_steps: int) -> None:
    if int(num_steps) < 1:
        raise ConfigError(f"num_steps must be >= 1 (got {num_steps}); pass a positive number of steps")


# ---------------------------------------------------------------------------------------------
# ODE solvers
# ---------------------------------------------------------------------------------------------


def euler(velocity_fn: VelocityFn, x: torch.Tensor, *, num_steps: int, generator: GeneratorArg = None,
          progress: bool = False, time_shift: float = 1.0, **_: Any) -> torch.Tensor:
    """Explicit Euler for dx/dt = v(x, t) from t = 1 to t = 0 (REPA-E spec 6.1, ``euler_sampler``).

    Grid ``t_i = linspace(1, 0, num_steps + 1)``; ``x_{i+1} = x_i + (t_{i+1} - t_i) * v(x_i, t_i)``.
    Network evaluations: ``num_steps``. ``generator`` and extra keywords (e.g. ``path``) are
    accepted and ignored so that every solver is called the same way. ``time_shift`` alpha maps the
    grid through RAE's shift ``alpha t / (1 + (alpha - 1) t)`` (:mod:`repae.diffusion.shift`; 1 = off).
    """
    _check_steps(num_steps)
    model_dtype = x.dtype
    grid = _shifted(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), time_shift)
    state = x.to(torch.float64)  # [B, C, h, w]
    for t_cur, t_next in _steps(grid, num_steps, progress, "euler"):
        d = _call(velocity_fn, state, t_cur, t_cur, model_dtype)  # [B, C, h, w]
        state = state + (t_next - t_cur) * d
    return state.to(model_dtype)


def heun(velocity_fn: VelocityFn, x: torch.Tensor, *, num_steps: int, generator: GeneratorArg = None,
         progress: bool = False, time_shift: float = 1.0, **_: Any) -> torch.Tensor:
    """Heun's 2nd-order method (Euler predictor + trapezoid corrector), REPA-E spec 6.1.

    Same grid as :func:`euler`. Each step except the last: predictor ``x' = x_i + dt * d`` with
    ``d = v(x_i, t_i)``, corrector ``d' = v(x', t_{i+1})`` evaluated with the guidance decision of
    ``t_i`` (``t_guide = t_cur``), then ``x_{i+1} = x_i + dt * (d + d') / 2``. The last step is a
    plain Euler step (it would evaluate the network at t = 0). Network evaluations:
    ``2 * num_steps - 1``.
    """
    _check_steps(num_steps)
    model_dtype = x.dtype
    grid = _shifted(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), time_shift)
    state = x.to(torch.float64)  # [B, C, h, w]
    for i, (t_cur, t_next) in enumerate(_steps(grid, num_steps, progress, "heun")):
        dt = t_next - t_cur
        d = _call(velocity_fn, state, t_cur, t_cur, model_dtype)  # [B, C, h, w]
        pred = state + dt * d
        if i < num_steps - 1:
            d_next = _call(velocity_fn, pred, t_next, t_cur, model_dtype)  # guidance decided at t_cur
            pred = state + dt * 0.5 * (d + d_next)
        state = pred
    return state.to(model_dtype)


# ---------------------------------------------------------------------------------------------
# SDE solver
# ---------------------------------------------------------------------------------------------


def _resolve_path(path: Any) -> Any:
    """A path object with ``velocity_to_score``; strings go through :func:`repae.diffusion.paths.get_path`."""
    if hasattr(path, "velocity_to_score"):
        return path
    if isinstance(path, str):
        from repae.diffusion.paths import get_path  # lazy: keeps this module importable alone

        return get_path(path)
    raise ConfigError(f"path must be a path name (e.g. 'linear') or an object with velocity_to_score, got {path!r}")


def diffusion_coefficient(t: float) -> float:
    """``w(t) = 2 t`` (REPA ``compute_diffusion``, spec 6.2 / 11.22); noise amplitude is sqrt(w)."""
    return 2.0 * t


def euler_maruyama(velocity_fn: VelocityFn, x: torch.Tensor, *, num_steps: int,
                   generator: GeneratorArg = None, progress: bool = False, path: Any = "linear",
                   t_last: float = 0.04, time_shift: float = 1.0, **_: Any) -> torch.Tensor:
    """Euler-Maruyama for the reverse SDE of the flow (REPA-E spec 6.2, ``euler_maruyama_sampler``).

    Grid: ``linspace(1, t_last, num_steps)`` followed by 0 (``t_last = 0.04`` as published).
    The first ``num_steps - 1`` intervals are stochastic::

        eps ~ N(0, I)                      (drawn BEFORE the network call, per sample)
        d   = v - 0.5 * w(t) * score(v, x, t),   w(t) = 2 t
        x  <- x + d * dt + sqrt(w(t)) * sqrt(|dt|) * eps

    and the final interval ``t_last -> 0`` is the deterministic mean step ``x + d * dt`` (no
    noise; it never evaluates the score at t = 0). With ``num_steps = 1`` the grid is [1, 0] and
    no noise is drawn at all. Network evaluations: ``num_steps``.

    ``path``: a name for :func:`repae.diffusion.paths.get_path` or an object with
    ``velocity_to_score(v, x, t)`` (t given as a float64 tensor [B]); linear:
    ``score = -((1 - t) v + x) / t``. CFG is already inside ``velocity_fn``: see the module
    docstring for why that equals CFG on the drift.

    ``time_shift`` alpha (RAE, :mod:`repae.diffusion.shift`) shifts the stochastic part of the grid
    on ``[t_last, 1]``: ``t = t_last + (1 - t_last) * shift((s - t_last) / (1 - t_last))``, so both
    ends (1 and ``t_last``) stay where they are and the mean step ``t_last -> 0`` is unchanged.
    """
    _check_steps(num_steps)
    path_obj = _resolve_path(path)
    model_dtype = x.dtype
    stochastic = torch.linspace(1.0, float(t_last), num_steps, dtype=torch.float64)  # [num_steps]
    if float(time_shift) != 1.0:
        span = 1.0 - float(t_last)
        stochastic = float(t_last) + span * _shifted((stochastic - float(t_last)) / span, time_shift)
    grid = torch.cat([stochastic, torch.zeros(1, dtype=torch.float64)])  # [num_steps + 1]
    state = x.to(torch.float64)  # [B, C, h, w]
    batch = state.shape[0]

    def drift(s: torch.Tensor, t: float) -> torch.Tensor:
        v = _call(velocity_fn, s, t, t, model_dtype)  # [B, C, h, w]
        t_vec = torch.full((batch,), t, dtype=torch.float64, device=s.device)  # [B]
        score = path_obj.velocity_to_score(v, s, t_vec).to(torch.float64)  # [B, C, h, w]
        return v - 0.5 * diffusion_coefficient(t) * score

    bar = tqdm(total=num_steps, desc="euler-maruyama", leave=False, disable=not progress)
    for i in range(num_steps - 1):
        t_cur, t_next = float(grid[i]), float(grid[i + 1])
        dt = t_next - t_cur
        eps = randn_per_sample(state.shape, generator, dtype=model_dtype, device=state.device)  # [B, C, h, w]
        d = drift(state, t_cur)
        state = state + d * dt + (diffusion_coefficient(t_cur) ** 0.5) * (abs(dt) ** 0.5) * eps.to(torch.float64)
        bar.update(1)
    # last step t_last -> 0: mean only, no noise (spec 6.2; SiT's "Mean" last step)
    t_cur, t_next = float(grid[num_steps - 1]), float(grid[num_steps])
    state = state + (t_next - t_cur) * drift(state, t_cur)
    bar.update(1)
    bar.close()
    return state.to(model_dtype)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": euler,
    "heun": heun,
    "euler-maruyama": euler_maruyama,
}


def get_solver(name: str) -> Callable[..., torch.Tensor]:
    """The solver registered as ``name``; :class:`~repae.errors.ConfigError` listing the choices otherwise."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ConfigError(f"unknown sampler {name!r}; choose one of: {', '.join(SOLVERS)}") from None
