"""Tests for the DDPM objective (repae.diffusion.gaussian) and samplers (repae.sampling.ddpm).

Analytic answers: the posterior against a float64 Bayes computation, the VLB of a perfect model
against its known minimum, respacing rules, and DDIM/DDPM on Gaussian data whose optimal eps
predictor is known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from repae.diffusion.gaussian import (
    DDPMObjective,
    DiscreteUniformTime,
    GaussianDiffusion,
    linear_betas,
    space_timesteps,
)
from repae.errors import ConfigError
from repae.sampling.ddpm import ddim, ddim_invert, ddpm, get_ddpm_sampler, guided_denoiser, sampling_process
from repae.sampling.guidance import model_velocity_fn

BASE = GaussianDiffusion.linear(1000)


# ------------------------------------------------------------------------------------------------
# Schedule, q_sample, posterior
# ------------------------------------------------------------------------------------------------


def test_linear_betas():
    b = linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, abs=1e-15) and b[-1].item() == pytest.approx(0.02, abs=1e-15)
    torch.testing.assert_close(b[1] - b[0], torch.tensor((0.02 - 1e-4) / 999, dtype=torch.float64))
    half = linear_betas(500)  # IDDPM scaling by 1000/T
    assert half[0].item() == pytest.approx(2e-4) and half[-1].item() == pytest.approx(0.04)
    with pytest.raises(ConfigError):
        linear_betas(0)


def _abar_reference(t: int) -> float:
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    out = 1.0
    for i in range(t + 1):
        out *= 1.0 - betas[i]
    return out


def test_q_sample_matches_definition():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = BASE.q_sample(x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        a = _abar_reference(ti)
        torch.testing.assert_close(x_t[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [1, 2, 37, 500, 998, 999])
def test_posterior_mean_variance_against_float64_bayes(t):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): product of two Gaussians in x_{t-1}."""
    g = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    beta = 1e-4 + (0.02 - 1e-4) * t / 999
    a_prev = _abar_reference(t - 1)
    prec = 1.0 / (1.0 - a_prev) + (1.0 - beta) / beta  # prior precision + likelihood precision
    var = 1.0 / prec
    mean = var * (math.sqrt(a_prev) * x0 / (1.0 - a_prev) + math.sqrt(1.0 - beta) * x_t / beta)
    post = BASE.q_posterior(x0, x_t, torch.full((2,), t))
    torch.testing.assert_close(post.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.variance.expand_as(x0), torch.full_like(x0, var), rtol=1e-10, atol=0)
    torch.testing.assert_close(post.log_variance.expand_as(x0), torch.full_like(x0, math.log(var)), rtol=1e-10, atol=0)


def test_posterior_at_t0_is_x0_with_clipped_log_variance():
    x0, x_t = torch.randn(2, 4, 2, 2, dtype=torch.float64), torch.randn(2, 4, 2, 2, dtype=torch.float64)
    post = BASE.q_posterior(x0, x_t, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(post.mean, x0, rtol=1e-12, atol=1e-12)
    assert post.variance.abs().max() == 0
    assert post.log_variance.flatten()[0].item() == pytest.approx(math.log(BASE.posterior_variance[1].item()))


def test_pred_x0_eps_round_trip():
    x0, eps = torch.randn(3, 2, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    x_t = BASE.q_sample(x0, t, eps)
    torch.testing.assert_close(BASE.pred_x0_from_eps(x_t, t, eps), x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(BASE.eps_from_pred_x0(x_t, t, x0), eps, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# VLB and the hybrid loss
# ------------------------------------------------------------------------------------------------


def _perfect_output(x0, eps, v=-1.0):
    """Network output of a perfect model: the true eps and v = -1 (log Sigma = log beta~_t)."""
    return torch.cat([eps, torch.full_like(eps, v)], dim=1)


def test_vlb_of_perfect_model_is_zero_for_t_positive():
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, 4, 4, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(5, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 700, 999])
    x_t = BASE.q_sample(x0, t, eps)
    vb = BASE.vb_terms_bpd(_perfect_output(x0, eps), x0, x_t, t)
    assert vb.abs().max().item() < 1e-9
    # any other variance or a wrong mean costs more (for large t, beta_t ~ beta~_t, so the variance
    # gap shrinks to ~1e-14 bits at t = 999; check the steps where it is resolvable)
    assert (BASE.vb_terms_bpd(_perfect_output(x0, eps, v=-0.5), x0, x_t, t)[:3] > 1e-6).all()
    assert (BASE.vb_terms_bpd(_perfect_output(x0, eps + 0.1), x0, x_t, t) > 1e-6).all()
    # as a function of v (same for every element) the minimum over [-1, 1] is at v = -1
    vs = torch.linspace(-1, 1, 21, dtype=torch.float64)
    curve = torch.stack([BASE.vb_terms_bpd(_perfect_output(x0, eps, v=float(v)), x0, x_t, t) for v in vs])  # [21, 5]
    assert (curve[:, :3].argmin(dim=0) == 0).all()


def test_vlb_of_perfect_model_at_t0_is_the_decoder_bin_mass():
    """At t = 0 the perfect decoder is N(x0, beta~_1) (clipped); its -log2 bin mass is known."""
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, 4, 4, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8  # away from the edge bins
    eps = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.zeros(3, dtype=torch.long)
    x_t = BASE.q_sample(x0, t, eps)
    vb = BASE.vb_terms_bpd(_perfect_output(x0, eps), x0, x_t, t)
    sigma = math.sqrt(BASE.posterior_variance[1].item())
    u = (1.0 / 255.0) / sigma
    mass = math.erf(u / math.sqrt(2.0))  # = 2 Phi(u) - 1, the exact bin probability
    expect = -math.log2(mass)
    print(f"\nL_0 minimum: {expect:.6f} bits/dim (sigma = {sigma:.5f})")
    torch.testing.assert_close(vb, torch.full_like(vb, expect), rtol=2e-3, atol=0)  # tanh-approx CDF
    assert (BASE.vb_terms_bpd(_perfect_output(x0, eps, v=0.0), x0, x_t, t) > vb).all()


def test_hybrid_loss_terms_and_stop_gradient():
    obj = DDPMObjective()
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 2, 4, 4, generator=g)
    nb = obj.draw(x0, generator=g)
    assert nb.t.dtype == torch.float32 and bool((nb.t == nb.t.round()).all()) and torch.equal(nb.target, nb.noise)
    pred = torch.cat([nb.noise + 0.3, torch.zeros_like(nb.noise)], dim=1).requires_grad_(True)
    terms = obj.loss_terms(pred, nb)
    torch.testing.assert_close(terms.mse, torch.full((4,), 0.09), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.loss, terms.mse + terms.vb)
    terms.vb.sum().backward()
    assert pred.grad[:, :2].abs().max() == 0  # the VLB term does not train the mean (eps)
    assert pred.grad[:, 2:].abs().max() > 0  # it trains the variance
    # perfect eps -> mse exactly 0
    perfect = torch.cat([nb.noise, -torch.ones_like(nb.noise)], dim=1)
    assert obj.loss_terms(perfect, nb).mse.abs().max() == 0
    # eps-only model: plain L_simple
    eps_only = DDPMObjective(learn_sigma=False)
    t2 = eps_only.loss_terms(nb.noise + 0.3, nb)
    assert t2.vb.abs().max() == 0 and torch.allclose(t2.loss, t2.mse)
    with pytest.raises(ValueError, match="output channels"):
        obj.loss(nb.noise, nb)


def test_draw_reuse_and_time_sampler():
    obj = DDPMObjective()
    t = obj.time_sampler.sample(10_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 999 and bool((t == t.round()).all())
    assert len(torch.unique(t)) > 990
    x0 = torch.randn(3, 2, 2, 2)
    nb = obj.draw(x0)
    again = obj.draw(x0, t=nb.t, noise=nb.noise)
    torch.testing.assert_close(again.x_t, nb.x_t, rtol=0, atol=0)
    with pytest.raises(ValueError, match="whole numbers"):
        obj.draw(x0, t=torch.full((3,), 0.5))
    assert isinstance(obj.time_sampler, DiscreteUniformTime)


# ------------------------------------------------------------------------------------------------
# Respacing
# ------------------------------------------------------------------------------------------------


def test_space_timesteps_rules():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    gaps = torch.diff(torch.tensor(kept))
    assert set(gaps.tolist()) <= {4, 5}  # stride (1000 - 1) / 249 = 4.012 rounded
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(10, "1") == [0]
    sec = space_timesteps(300, "10,15,20")  # three sections of 100
    assert len(sec) == 45 and sec[0] == 0 and 99 in sec and 100 in sec and sec[-1] == 299
    with pytest.raises(ConfigError, match="fewer"):
        space_timesteps(10, "11")
    with pytest.raises(ConfigError, match="DDIM"):
        space_timesteps(1000, "ddim999")


def test_respaced_process_keeps_marginals():
    r = BASE.respace("250")
    kept = torch.tensor(space_timesteps(1000, "250"))
    assert r.num_timesteps == 250 and torch.equal(r.timestep_map, kept)
    torch.testing.assert_close(r.alphas_cumprod, BASE.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert r.betas[0].item() == pytest.approx(BASE.betas[0].item())
    full = BASE.respace(1000)
    torch.testing.assert_close(full.betas, BASE.betas, rtol=1e-10, atol=1e-14)
    # respacing a respaced process composes the timestep maps
    twice = r.respace([0, 249])
    assert twice.timestep_map.tolist() == [0, 999] and twice.original_num_timesteps == 1000
    torch.testing.assert_close(twice.alphas_cumprod, BASE.alphas_cumprod[[0, 999]])
    assert sampling_process(250).num_timesteps == 250


# ------------------------------------------------------------------------------------------------
# Samplers on Gaussian data (optimal eps known in closed form)
# ------------------------------------------------------------------------------------------------

S = 0.5  # data ~ N(0, S^2 I)


def _gauss_eps(x, t, t_guide):
    """E[eps | x_t] for x_0 ~ N(0, S^2): sqrt(1 - abar) x / (abar S^2 + 1 - abar)."""
    a = float(BASE.alphas_cumprod[int(t)])
    return (math.sqrt(1 - a) / (a * S * S + 1 - a)) * x


def test_ddim_eta0_is_deterministic_and_invertible():
    g = torch.Generator().manual_seed(0)
    x0 = S * torch.randn(32, 2, 4, 4, generator=g, dtype=torch.float64)
    xT = ddim_invert(_gauss_eps, x0, num_steps=1000)
    assert abs(xT.std().item() - 1.0) < 0.05  # inverted latents look like unit noise
    a = ddim(_gauss_eps, xT, num_steps=1000, generator=torch.Generator().manual_seed(1))
    b = ddim(_gauss_eps, xT, num_steps=1000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)  # eta = 0 draws no noise
    rel = ((a - x0).norm() / x0.norm()).item()
    assert rel < 0.01, rel
    # first-order scheme: halving the step halves the round-trip error
    err = [((ddim(_gauss_eps, ddim_invert(_gauss_eps, x0, num_steps=n), num_steps=n) - x0).norm()).item()
           for n in (250, 500)]
    assert 1.7 < err[0] / err[1] < 2.3, err
    # eta > 0 is stochastic
    c = ddim(_gauss_eps, xT, num_steps=50, eta=1.0, generator=torch.Generator().manual_seed(1))
    d = ddim(_gauss_eps, xT, num_steps=50, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(c, d)


def test_ddpm_ancestral_recovers_data_variance_and_learned_range_matches_fixed():
    x = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ddpm(_gauss_eps, x, num_steps=1000, generator=torch.Generator().manual_seed(1))
    assert abs(out.std().item() - S) / S < 0.03
    assert abs(out.mean().item()) < 0.02
    # a 2C output with v = -1 is the fixed 'small' variance: same samples for the same noise
    learned = lambda x_, t, tg: torch.cat([_gauss_eps(x_, t, tg), -torch.ones_like(x_)], dim=1)  # noqa: E731
    small = ddpm(_gauss_eps, x[:16], num_steps=50, generator=torch.Generator().manual_seed(2))
    same = ddpm(learned, x[:16], num_steps=50, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(small, same, rtol=1e-10, atol=1e-12)


def test_samplers_call_network_with_original_timesteps_and_keep_dtype():
    seen = []

    def fn(x, t, t_guide):
        seen.append((t, t_guide, x.dtype))
        return torch.zeros_like(x)

    out = ddpm(fn, torch.randn(2, 4, 2, 2), num_steps=250, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and len(seen) == 250
    assert seen[0][:2] == (999.0, 1.0) and seen[-1][:2] == (0.0, 0.0)
    assert [s[0] for s in seen] == [float(v) for v in reversed(space_timesteps(1000, "250"))]
    assert all(s[2] == torch.float32 for s in seen)  # network called in the noise dtype
    seen.clear()
    ddim(fn, torch.randn(2, 4, 2, 2), num_steps=50, spacing="ddim50")
    assert seen[0][0] == 980.0 and len(seen) == 50
    assert get_ddpm_sampler("ddim") is ddim
    with pytest.raises(ConfigError, match="ddpm, ddim"):
        get_ddpm_sampler("dpm-solver")


def test_ddpm_per_sample_generators_are_batch_independent():
    x = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    full = ddpm(_gauss_eps, x, num_steps=20, generator=gens())
    alone = ddpm(_gauss_eps, x[1:2], num_steps=20, generator=gens()[1:2])
    torch.testing.assert_close(full[1:2], alone, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ------------------------------------------------------------------------------------------------


def _label_model(calls):
    def model_fn(x_t, t, y):
        calls.append(x_t.shape[0])
        eps = x_t + y.to(x_t.dtype).reshape(-1, 1, 1, 1)  # [N, C, h, w]
        var = 10 * y.to(x_t.dtype).reshape(-1, 1, 1, 1).expand_as(x_t)  # [N, C, h, w]
        return torch.cat([eps, var], dim=1)

    return model_fn


def test_guided_denoiser_guides_eps_and_keeps_conditional_variance():
    calls = []
    y = torch.tensor([2, 3])
    fn = guided_denoiser(_label_model(calls), y, cfg_scale=4.0, null_label=10)
    x = torch.zeros(2, 4, 2, 2)
    out = fn(x, 500.0, 0.5)
    assert calls == [4]
    # eps: u + s (c - u) with u = 10 (null), c = y
    expect_eps = 10 + 4.0 * (y.float() - 10)
    torch.testing.assert_close(out[:, :4], expect_eps.reshape(2, 1, 1, 1).expand(2, 4, 2, 2))
    torch.testing.assert_close(out[:, 4:], 10 * y.float().reshape(2, 1, 1, 1).expand(2, 4, 2, 2))
    # DiT's 3-channel quirk
    quirk = guided_denoiser(_label_model(calls), y, cfg_scale=4.0, null_label=10, cfg_channels=3)(x, 500.0, 0.5)
    torch.testing.assert_close(quirk[:, 3], y.float().reshape(2, 1, 1).expand(2, 2, 2))
    # outside the interval: one conditional pass
    calls.clear()
    gated = guided_denoiser(_label_model(calls), y, cfg_scale=4.0, interval=(0.0, 0.3), null_label=10)
    torch.testing.assert_close(gated(x, 999.0, 1.0)[:, :4], y.float().reshape(2, 1, 1, 1).expand(2, 4, 2, 2))
    assert calls == [2]
    with pytest.raises(ConfigError, match="cfg_scale"):
        guided_denoiser(_label_model(calls), y, cfg_scale=0.5, null_label=10)


def test_tiny_dit_samples_with_ddpm_and_ddim():
    from repae.models import build_dit

    torch.manual_seed(0)
    model = build_dit("DiT-T/2", input_size=8, in_channels=4, num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        fn = guided_denoiser(model_velocity_fn(model), torch.tensor([1, 2]), cfg_scale=1.5, null_label=10)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        a = ddpm(fn, x, num_steps=10, generator=torch.Generator().manual_seed(1))
        b = ddim(fn, x, num_steps=10)
    assert a.shape == b.shape == (2, 4, 8, 8) and torch.isfinite(a).all() and torch.isfinite(b).all()
