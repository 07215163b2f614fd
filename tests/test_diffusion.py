"""Tests for repae.diffusion: paths (contract over the registry), time samplers, FlowMatching."""

from __future__ import annotations

import math

import pytest
import torch

from repae.diffusion import (
    PATHS,
    TIME_SAMPLERS,
    FlowMatching,
    LinearPath,
    LogNormalTime,
    NoisedBatch,
    UniformTime,
    get_path,
    get_time_sampler,
)
from repae.diffusion.paths import expand_time
from repae.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# Paths: contract tests over every registry entry
# ------------------------------------------------------------------------------------------------

PATH_NAMES = sorted(PATHS)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_derivatives_match_autograd(name):
    path = get_path(name)
    t = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    c = path.coefficients(t)
    (d_alpha,) = torch.autograd.grad(c.alpha.sum(), t)
    (d_sigma,) = torch.autograd.grad(path.coefficients(t).sigma.sum(), t)
    torch.testing.assert_close(c.d_alpha.detach(), d_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c.d_sigma.detach(), d_sigma, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_endpoints_data_at_0_noise_at_1(name):
    path = get_path(name)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    torch.testing.assert_close(path.interpolate(x0, eps, torch.zeros(3)), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(path.interpolate(x0, eps, torch.ones(3)), eps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_velocity_is_time_derivative_of_interpolant(name):
    path = get_path(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64).requires_grad_(True)
    x_t = path.interpolate(x0, eps, t)
    # d/dt of x_t, one sample at a time (t_i only influences sample i): grad of sum(x_t * w) w.r.t. t
    v = path.velocity_target(x0, eps, t.detach())
    for k in range(2):
        w = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        (dt,) = torch.autograd.grad((x_t * w).sum(), t, retain_graph=True)
        torch.testing.assert_close(dt, (v * w).flatten(1).sum(1))


@pytest.mark.parametrize("name", PATH_NAMES)
@pytest.mark.parametrize("s", [0.5, 2.0])
def test_score_from_optimal_velocity_matches_gaussian_score(name, s):
    """Data N(0, s^2 I): p_t = N(0, V I), V = alpha^2 s^2 + sigma^2, score = -x / V, and the optimal
    velocity is E[v | x_t] = (d_alpha alpha s^2 + d_sigma sigma) / V * x."""
    path = get_path(name)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    x = torch.randn(7, 3, 2, 2, generator=g, dtype=torch.float64)
    c = path.coefficients(t.view(-1, 1, 1, 1))
    V = c.alpha**2 * s**2 + c.sigma**2
    v_opt = (c.d_alpha * c.alpha * s**2 + c.d_sigma * c.sigma) / V * x
    torch.testing.assert_close(path.velocity_to_score(v_opt, x, t), -x / V)
    # and the optimal velocity's x0 / eps estimates are the posterior means
    torch.testing.assert_close(path.velocity_to_x0(v_opt, x, t), c.alpha * s**2 / V * x)
    torch.testing.assert_close(path.velocity_to_eps(v_opt, x, t), c.sigma / V * x)


def test_linear_score_closed_form():
    path = LinearPath()
    g = torch.Generator().manual_seed(0)
    v, x = torch.randn(5, 4, 2, 2, generator=g), torch.randn(5, 4, 2, 2, generator=g)
    t = torch.rand(5, generator=g) * 0.9 + 0.05
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(path.velocity_to_score(v, x, t), -((1 - tt) * v + x) / tt)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_converter_round_trips(name):
    path = get_path(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x = path.interpolate(x0, eps, t)
    v = path.velocity_target(x0, eps, t)
    torch.testing.assert_close(path.velocity_to_x0(v, x, t), x0)
    torch.testing.assert_close(path.velocity_to_eps(v, x, t), eps)
    torch.testing.assert_close(path.eps_to_velocity(eps, x, t), v)
    torch.testing.assert_close(path.x0_to_velocity(x0, x, t), v)
    # score = -eps / sigma for the exact pair
    sigma = path.coefficients(t).sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(path.velocity_to_score(v, x, t), -eps / sigma)


def test_linear_velocity_is_noise_minus_data():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(LinearPath().velocity_target(x0, eps, torch.rand(2)), eps - x0)


def test_time_broadcasting():
    x = torch.zeros(3, 2, 4, 4)
    assert expand_time(torch.rand(3), x).shape == (3, 1, 1, 1)
    assert expand_time(0.5, x).ndim == 0
    assert expand_time(torch.rand(3, 1, 1, 1), x).shape == (3, 1, 1, 1)
    # [B] and [B,1,1,1] give the same interpolation
    t = torch.rand(3)
    eps = torch.randn(3, 2, 4, 4)
    p = get_path("cosine")
    torch.testing.assert_close(p.interpolate(x + 1, eps, t), p.interpolate(x + 1, eps, t.view(3, 1, 1, 1)))


def test_unknown_path_is_config_error():
    with pytest.raises(ConfigError, match="linear"):
        get_path("vp")


# ------------------------------------------------------------------------------------------------
# Time samplers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TIME_SAMPLERS))
@pytest.mark.parametrize("path_name", PATH_NAMES)
def test_time_sampler_contract(name, path_name):
    sampler = get_time_sampler(name, path_name)
    t = sampler.sample(1000, generator=torch.Generator().manual_seed(3))
    assert t.shape == (1000,) and t.dtype == torch.float32
    assert (t >= 0).all() and (t <= 1).all()
    t2 = sampler.sample(1000, generator=torch.Generator().manual_seed(3), device="cpu")
    torch.testing.assert_close(t, t2, rtol=0, atol=0)  # reproducible for a seed


def test_uniform_moments():
    t = UniformTime().sample(20000, generator=torch.Generator().manual_seed(0))
    assert abs(t.mean().item() - 0.5) < 0.01
    assert abs(t.var().item() - 1 / 12) < 0.003


def test_lognormal_linear_moments():
    t = LogNormalTime(path_name="linear").sample(20000, generator=torch.Generator().manual_seed(0)).double()
    assert abs(t.median().item() - 0.5) < 0.01
    logit = torch.log(t / (1 - t))  # = n ~ N(0, 1)
    assert abs(logit.mean().item()) < 0.03
    assert abs(logit.std().item() - 1.0) < 0.03


def test_lognormal_cosine_moments_and_parameters():
    sampler = LogNormalTime(path_name="cosine", mean=-0.4, std=0.5)
    t = sampler.sample(20000, generator=torch.Generator().manual_seed(0)).double()
    n = torch.log(torch.tan(math.pi * t / 2))  # log of the noise-to-signal ratio
    assert abs(n.mean().item() + 0.4) < 0.02
    assert abs(n.std().item() - 0.5) < 0.02
    assert abs(LogNormalTime(path_name="cosine").sample(20000).median().item() - 0.5) < 0.01


def test_unknown_time_sampler_is_config_error():
    with pytest.raises(ConfigError, match="uniform"):
        get_time_sampler("beta", "linear")
    with pytest.raises(ConfigError):
        LogNormalTime(path_name="nope")


# ------------------------------------------------------------------------------------------------
# FlowMatching
# ------------------------------------------------------------------------------------------------


def test_draw_builds_consistent_batch():
    fm = FlowMatching.from_names(path="linear", time_sampler="uniform")
    x0 = torch.randn(4, 2, 4, 4)
    nb = fm.draw(x0, generator=torch.Generator().manual_seed(0))
    assert nb.t.shape == (4,) and nb.t.dtype == torch.float32
    assert nb.noise.shape == nb.x_t.shape == nb.target.shape == x0.shape
    tt = nb.t.view(-1, 1, 1, 1)
    torch.testing.assert_close(nb.x_t, (1 - tt) * x0 + tt * nb.noise)
    torch.testing.assert_close(nb.target, nb.noise - x0)
    nb2 = fm.draw(x0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nb.x_t, nb2.x_t, rtol=0, atol=0)


def test_draw_reuses_t_and_noise():
    """REPA-E reuses the alignment pass's t and eps in the SiT pass (spec 1.3 step I)."""
    fm = FlowMatching.from_names(path="cosine", time_sampler="lognormal")
    x_a, x_b = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    first = fm.draw(x_a)
    second = fm.draw(x_b, t=first.t.view(3, 1, 1, 1), noise=first.noise)
    torch.testing.assert_close(second.t, first.t, rtol=0, atol=0)
    torch.testing.assert_close(second.noise, first.noise, rtol=0, atol=0)
    torch.testing.assert_close(second.x_t, fm.path.interpolate(x_b, first.noise, first.t))
    with pytest.raises(ValueError):
        fm.draw(x_a, noise=torch.randn(3, 2, 4, 5))
    with pytest.raises(ValueError):
        fm.draw(x_a, t=torch.rand(2))


def test_loss_is_per_sample_fp32_mse():
    fm = FlowMatching()
    pred = torch.randn(3, 2, 4, 4, dtype=torch.bfloat16)
    target = torch.randn(3, 2, 4, 4)
    loss = fm.loss(pred, target)
    assert loss.shape == (3,) and loss.dtype == torch.float32
    ref = torch.stack([((pred[i].float() - target[i]) ** 2).mean() for i in range(3)])
    torch.testing.assert_close(loss, ref)
    assert fm.loss(target, target).abs().max() == 0
    assert fm.batch_loss(pred, NoisedBatch(t=None, noise=None, x_t=None, target=target)).equal(loss)
    with pytest.raises(ValueError, match="channels"):
        fm.loss(torch.zeros(3, 4, 4, 4), target)


def test_optimal_velocity_minimises_loss_on_gaussian_data():
    """With data N(0, s^2 I), the analytic E[v | x_t] has lower loss than perturbed predictors."""
    s = 0.7
    fm = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x0 = s * torch.randn(4096, 1, 1, 1, generator=g, dtype=torch.float64)
    nb = fm.draw(x0, generator=g)
    c = fm.path.coefficients(nb.t.double().view(-1, 1, 1, 1))
    V = c.alpha**2 * s**2 + c.sigma**2
    v_opt = (c.d_alpha * c.alpha * s**2 + c.d_sigma * c.sigma) / V * nb.x_t
    best = fm.loss(v_opt, nb.target).mean()
    for k in (0.9, 1.1):
        assert fm.loss(k * v_opt, nb.target).mean() > best
