"""Solvers and classifier-free guidance: closed-form answers, convergence, CFG/interval call counts."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from repae.errors import ConfigError
from repae.sampling.guidance import guidance_active, guided_velocity
from repae.sampling.solvers import SOLVERS, euler, euler_maruyama, get_solver, heun


class LinearPath:
    """Local stand-in for repae.diffusion.paths' linear path: score = -((1 - t) v + x) / t (spec 11.22)."""

    def velocity_to_score(self, v, x, t):
        t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)  # [B, 1, 1, 1]
        return -((1 - t) * v + x) / t


PATH = LinearPath()
SHAPE = (3, 2, 4, 4)


def field(fn):
    """velocity_fn(x, t, t_guide) from fn(x, t) that ignores guidance."""
    return lambda x, t, t_guide: fn(x, t)


# ---------------------------------------------------------------------------------------------
# registry contract (every solver)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solver_contract(name):
    solver = get_solver(name)
    params = inspect.signature(solver).parameters
    assert list(params)[:2] == ["velocity_fn", "x"]
    for kw in ("num_steps", "generator", "progress"):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    seen = []

    def vf(x, t, t_guide):
        seen.append((x.dtype, type(t), type(t_guide)))
        return -x

    x = torch.randn(SHAPE)
    out = solver(vf, x, num_steps=4, generator=torch.Generator().manual_seed(0), progress=True, path=PATH)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # network called in the noise dtype with python-float times (spec 11.23)
    assert all(s == (torch.float32, float, float) for s in seen)
    expected_calls = {"euler": 4, "heun": 2 * 4 - 1, "euler-maruyama": 4}[name]
    assert len(seen) == expected_calls
    with pytest.raises(ConfigError):
        solver(vf, x, num_steps=0, path=PATH)


def test_get_solver_unknown_lists_choices():
    with pytest.raises(ConfigError, match="euler-maruyama"):
        get_solver("dopri5")


@pytest.mark.parametrize("solver", [euler, heun])
def test_state_is_integrated_in_float64(solver):
    # 1000 steps of dt * 5e-8 vanish against 1.0 in float32 (spacing 6e-8 below 1) but not in float64
    x = torch.ones(1, 1, 1, 1)
    out = solver(field(lambda x, t: torch.full_like(x, 5e-8)), x, num_steps=1000)
    assert out.dtype == torch.float32 and out.item() < 1.0


# ---------------------------------------------------------------------------------------------
# ODE solvers on closed-form fields
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [euler, heun])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_constant_velocity_is_exact(solver, n):
    c = torch.randn(SHAPE, dtype=torch.float64)
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    out = solver(field(lambda x, t: c), x1, num_steps=n)
    torch.testing.assert_close(out, x1 - c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_linear_in_time_field_closed_forms(n):
    # v = 2 t a, exact x0 = x1 - a. Euler (left points t_i = 1 - i/N): x1 - a (1 + 1/N).
    # Heun: trapezoid is exact on all steps but the last (plain Euler from 1/N): x1 - a (1 + 1/N^2).
    a = torch.randn(SHAPE, dtype=torch.float64)
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    vf = field(lambda x, t: 2 * t * a)
    torch.testing.assert_close(euler(vf, x1, num_steps=n), x1 - a * (1 + 1 / n), rtol=0, atol=1e-12)
    torch.testing.assert_close(heun(vf, x1, num_steps=n), x1 - a * (1 + 1 / n**2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_quadratic_in_time_field_euler_closed_form(n):
    # v = 3 t^2 a: Euler sums (1/N) 3 (k/N)^2 a for k = 1..N = a (N+1)(2N+1) / (2 N^2)
    a = torch.randn(SHAPE, dtype=torch.float64)
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    out = euler(field(lambda x, t: 3 * t**2 * a), x1, num_steps=n)
    torch.testing.assert_close(out, x1 - a * (n + 1) * (2 * n + 1) / (2 * n**2), rtol=0, atol=1e-12)
    heun_out = heun(field(lambda x, t: 3 * t**2 * a), x1, num_steps=n)
    if n == 1:  # Heun's only step is the (uncorrected) last step: plain Euler
        assert torch.equal(heun_out, out)
    else:
        assert (heun_out - (x1 - a)).abs().max() < (out - (x1 - a)).abs().max()


def test_linear_ode_convergence_orders():
    # dx/dt = k x  =>  x(0) = x(1) exp(-k); Euler is order 1, Heun order 2
    k = 1.3
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    exact = x1 * math.exp(-k)
    vf = field(lambda x, t: k * x)
    errs = {s.__name__: [(s(vf, x1, num_steps=n) - exact).abs().max().item() for n in (10, 20, 40)]
            for s in (euler, heun)}
    for i in range(3):
        assert errs["heun"][i] < errs["euler"][i]
    for i in range(2):
        assert 1.7 < errs["euler"][i] / errs["euler"][i + 1] < 2.3
        assert 3.4 < errs["heun"][i] / errs["heun"][i + 1] < 4.6


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama
# ---------------------------------------------------------------------------------------------


def test_em_single_step_is_deterministic_mean_step():
    # grid [1, 0]: only the noise-free last step; linear path at t=1: score = -x, drift = v + x
    c = torch.randn(SHAPE, dtype=torch.float64)
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    outs = [euler_maruyama(field(lambda x, t: c), x1, num_steps=1, path=PATH,
                           generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    torch.testing.assert_close(outs[0], -c, rtol=0, atol=1e-12)
    assert torch.equal(outs[0], outs[1])


def test_em_two_steps_by_hand_and_noise_drawn_before_network_call():
    # grid [1, 0.04, 0]: stochastic 1 -> 0.04, then deterministic 0.04 -> 0 (spec 6.2)
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    initial_state = g.get_state()
    states_at_call = []

    def vf(x, t, t_guide):
        states_at_call.append(g.get_state())
        return 0.5 * x + t

    out = euler_maruyama(vf, x1, num_steps=2, generator=g, path=PATH)
    # the first network call happens after eps was drawn
    assert not torch.equal(states_at_call[0], initial_state)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def drift(x, t):
        v = 0.5 * x + t
        return v - 0.5 * (2 * t) * (-((1 - t) * v + x) / t)

    x = x1 + drift(x1, 1.0) * (0.04 - 1.0) + math.sqrt(2 * 1.0) * math.sqrt(0.96) * eps
    x = x + (0.0 - 0.04) * drift(x, 0.04)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


def test_em_reproducible_and_per_sample_generators_batch_invariant():
    x1 = torch.randn(SHAPE)
    vf = field(lambda x, t: torch.tanh(x) * t)
    run = lambda seed: euler_maruyama(vf, x1, num_steps=6, path=PATH, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    together = euler_maruyama(vf, x1, num_steps=6, path=PATH, generator=gens([5, 6, 7]))
    alone = [euler_maruyama(vf, x1[i:i + 1], num_steps=6, path=PATH, generator=gens([5 + i])) for i in range(3)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="one generator per sample"):
        euler_maruyama(vf, x1, num_steps=3, path=PATH, generator=gens([1]))


def test_em_with_repae_linear_path():
    from repae.diffusion import paths
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    vf = field(lambda x, t: torch.sin(x) + t)
    ours = euler_maruyama(vf, x1, num_steps=5, path=PATH, generator=torch.Generator().manual_seed(0))
    theirs = euler_maruyama(vf, x1, num_steps=5, path=paths.get_path("linear"),
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# classifier-free guidance
# ---------------------------------------------------------------------------------------------


class RecordingModel:
    """model_fn(x, t, y) -> v depending on the label; records batch sizes and times."""

    def __init__(self, num_classes=5):
        torch.manual_seed(0)
        self.table = torch.randn(num_classes + 1, SHAPE[1], 1, 1, dtype=torch.float64)
        self.calls = []

    def __call__(self, x, t, y):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype and y.dtype == torch.long
        self.calls.append((x.shape[0], float(t[0])))
        return -0.7 * x + self.table[y].to(x.dtype) * (1 + t.reshape(-1, 1, 1, 1))


def test_cfg_scale_one_is_the_conditional_model_with_single_batch():
    m = RecordingModel()
    y = torch.tensor([0, 1, 2])
    x = torch.randn(SHAPE, dtype=torch.float64)
    vf = guided_velocity(m, y, cfg_scale=1.0, null_label=5)
    out = vf(x, 0.5, 0.5)
    assert m.calls == [(3, 0.5)]
    torch.testing.assert_close(out, m(x, torch.full((3,), 0.5, dtype=torch.float64), y))


def test_cfg_combination_inside_interval():
    m = RecordingModel()
    y = torch.tensor([0, 1, 4])
    x = torch.randn(SHAPE, dtype=torch.float64)
    vf = guided_velocity(m, y, cfg_scale=2.5, interval=(0.2, 0.6), null_label=5)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    cond, uncond = m(x, t, y), m(x, t, torch.full_like(y, 5))
    m.calls.clear()
    torch.testing.assert_close(vf(x, 0.4, 0.4), uncond + 2.5 * (cond - uncond))
    assert m.calls == [(6, 0.4)]
    # bounds inclusive; outside -> conditional only
    m.calls.clear()
    vf(x, 0.2, 0.2), vf(x, 0.6, 0.6), vf(x, 0.1, 0.1), vf(x, 0.61, 0.61)
    assert [c[0] for c in m.calls] == [6, 6, 3, 3]
    assert guidance_active(0.2, cfg_scale=2.0, interval=(0.2, 0.6))
    assert not guidance_active(0.4, cfg_scale=1.0, interval=(0.2, 0.6))


def test_cfg_bad_settings():
    with pytest.raises(ConfigError, match=">= 1"):
        guided_velocity(RecordingModel(), torch.tensor([0]), cfg_scale=0.5, null_label=5)
    with pytest.raises(ConfigError, match="low <= high"):
        guided_velocity(RecordingModel(), torch.tensor([0]), cfg_scale=2.0, interval=(0.7, 0.3), null_label=5)


def test_interval_counts_in_euler_and_heun():
    y = torch.tensor([0, 1, 2])
    x = torch.randn(SHAPE)
    m = RecordingModel()
    euler(guided_velocity(m, y, cfg_scale=2.0, interval=(0.25, 0.65), null_label=5), x, num_steps=10)
    # t_cur in {1.0, 0.9, ..., 0.1}; inside [0.25, 0.65]: 0.6, 0.5, 0.4, 0.3
    assert sum(b == 6 for b, _ in m.calls) == 4 and len(m.calls) == 10
    m = RecordingModel()
    heun(guided_velocity(m, y, cfg_scale=2.0, interval=(0.55, 1.0), null_label=5), x, num_steps=10)
    # predictor+corrector of steps t_cur = 1.0 ... 0.6 are guided (corrector uses t_cur's decision,
    # even the one evaluated at t = 0.5); everything later is conditional only
    doubled = [t for b, t in m.calls if b == 6]
    assert len(m.calls) == 19 and len(doubled) == 10
    assert min(doubled) == pytest.approx(0.5)


def test_cfg_on_velocity_equals_cfg_on_sde_drift():
    # spec 6.2 applies CFG to the drift; our EM takes the guided velocity (module docstring of solvers)
    m = RecordingModel()
    y = torch.tensor([0, 3, 1])
    x1 = torch.randn(SHAPE, dtype=torch.float64)
    s, n = 2.2, 4
    out = euler_maruyama(guided_velocity(m, y, cfg_scale=s, null_label=5), x1, num_steps=n, path=PATH,
                         generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    grid = torch.cat([torch.linspace(1, 0.04, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = x1.clone()
    for i in range(n):
        t, t_next = float(grid[i]), float(grid[i + 1])
        eps = torch.randn(SHAPE, generator=g, dtype=torch.float64) if i < n - 1 else None
        t_vec = torch.full((3,), t, dtype=torch.float64)
        d = [v - t * PATH.velocity_to_score(v, x, t_vec) for v in (m(x, t_vec, y), m(x, t_vec, torch.full_like(y, 5)))]
        drift = d[1] + s * (d[0] - d[1])
        x = x + drift * (t_next - t) + (0 if eps is None else math.sqrt(2 * t) * math.sqrt(t - t_next) * eps)
    torch.testing.assert_close(out, x, rtol=1e-9, atol=1e-9)
