"""Tokenizer regularisers (SE, EQ-VAE, VA-VAE VF; spec-related-methods.md 1.3, 2, 3) and the `vae`
recipe: hand-computed VF losses, the adaptive weight on a closed-form toy, exact equivariance,
SE factor 1, gradient routing, bad input, and the tokenizer-only recipe with bit-exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repae.config import load_config
from repae.errors import ConfigError
from repae.losses.regularization import VAERegularizationLoss
from repae.losses.tokenizer_reg import (
    TokenizerRegularizer,
    TokRegDraw,
    eq_numerators,
    eq_transform,
    marginal_cosine_loss,
    marginal_distance_matrix_loss,
    reconstruction_distance,
    vf_adaptive_weight,
)
from repae.tokenizer.vae import DiagonalGaussian

S2 = 1.0 / math.sqrt(2.0)


def _lreg() -> VAERegularizationLoss:
    return VAERegularizationLoss(perceptual="laplacian", disc_ndf=8)


def _grid(*tokens) -> torch.Tensor:
    """Tokens (each a D-vector) -> a [1, D, 1, N] map (row-major, N tokens on one row)."""
    return torch.tensor(tokens, dtype=torch.float32).T.reshape(1, len(tokens[0]), 1, len(tokens))


# ---------------------------------------------------------------------------------------------
# VF loss: hand-computed values
# ---------------------------------------------------------------------------------------------


def test_marginal_cosine_loss_by_hand():
    z = _grid([1.0, 0.0], [0.0, 3.0])  # cos with f: 1 and 1/sqrt(2) (scale-free)
    f = _grid([2.0, 0.0], [1.0, 1.0])
    # mean over the 2 positions of relu(1 - m - cos)
    assert marginal_cosine_loss(z, f, 0.0).item() == pytest.approx((0.0 + (1 - S2)) / 2, abs=1e-6)
    assert marginal_cosine_loss(z, f, 0.25).item() == pytest.approx((0.0 + (0.75 - S2)) / 2, abs=1e-6)
    assert marginal_cosine_loss(z, f, 0.5).item() == 0.0  # both positions inside the margin: cut off


def test_marginal_distance_matrix_loss_by_hand_counts_the_diagonal():
    z = _grid([1.0, 0.0], [0.0, 5.0])  # Gz = [[1, 0], [0, 1]]
    f = _grid([1.0, 0.0], [1.0, 1.0])  # Gf = [[1, c], [c, 1]], c = 1/sqrt(2)
    # |Gz - Gf| = [[0, c], [c, 0]]: mean over all N^2 = 4 entries (diagonal included) -> 2c / 4
    assert marginal_distance_matrix_loss(z, f, 0.0).item() == pytest.approx(2 * S2 / 4, abs=1e-6)
    assert marginal_distance_matrix_loss(z, f, 0.25).item() == pytest.approx(2 * (S2 - 0.25) / 4, abs=1e-6)
    assert marginal_distance_matrix_loss(z, f, 0.8).item() == 0.0  # every |diff| below the margin
    # the batch is averaged too: a second, identical-geometry sample with zero loss halves the mean
    z2, f2 = torch.cat([z, f]), torch.cat([f, f])
    assert marginal_distance_matrix_loss(z2, f2, 0.0).item() == pytest.approx(S2 / 4, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Adaptive weight: closed-form toy
# ---------------------------------------------------------------------------------------------


def test_vf_adaptive_weight_closed_form():
    w = torch.tensor([1.0, 2.0, 2.0], requires_grad=True)  # ||w|| = 3
    a = torch.tensor([3.0, 0.0, 4.0])  # ||a|| = 5
    nll = (a * w).sum()  # grad a
    vf = 0.5 * 2.0 * w.pow(2).sum()  # grad 2w, norm 6
    weight = vf_adaptive_weight(nll, vf, w)
    assert weight.item() == pytest.approx(5.0 / (6.0 + 1e-4), rel=1e-6)
    assert not weight.requires_grad  # detached
    (nll + weight * vf).backward()  # graphs were retained for the caller
    torch.testing.assert_close(w.grad, a + weight * 2 * w.detach())


def test_vf_adaptive_weight_clamps_at_1e8():
    w = torch.ones(2, requires_grad=True)
    nll = 1e6 * w.sum()  # ||grad|| = 1.41e6
    vf = 0.0 * w.sum()  # zero gradient -> ratio 1.41e10 before the clamp
    assert vf_adaptive_weight(nll, vf, w).item() == 1e8


# ---------------------------------------------------------------------------------------------
# EQ-VAE: an exactly equivariant toy gives zero loss, a non-equivariant one does not
# ---------------------------------------------------------------------------------------------


class PointwiseTokenizer(nn.Module):
    """f = 1 toy: 1x1 linear encoder, its pseudo-inverse as decoder (pointwise linear maps commute
    with bilinear resizing and rot90 exactly). ``ramp`` adds a row-position code to the latent that
    the decoder removes at ITS grid: perfect reconstruction, but not equivariant to rotation."""

    downsample_factor = 1

    def __init__(self, ramp: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.we = nn.Parameter(torch.randn(4, 3, generator=g))  # [C, 3]
        self.wd = nn.Parameter(torch.linalg.pinv(self.we.detach()))  # [3, C]
        self.ramp = ramp

    def _code(self, like: torch.Tensor) -> torch.Tensor:
        h, w = like.shape[-2:]
        rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h  # [h]
        return self.ramp * rows.view(1, 1, h, 1).expand(1, 1, h, w)  # [1, 1, h, w]

    def encode(self, x):
        mean = torch.einsum("oc,bchw->bohw", self.we, x) + self._code(x)  # [B, C, h, w]
        return DiagonalGaussian(torch.cat([mean, torch.full_like(mean, -30.0)], dim=1))

    def decode(self, z):
        return torch.einsum("co,bohw->bchw", self.wd, z - self._code(z))  # [B, 3, h, w]


def _eq_loss(tok, draw, lreg) -> float:
    reg = TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), eq_prob=1.0, eq_scale_den=8)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        fwd = reg(tok, x, torch.zeros(2, 4, 8, 8), draw)
        return reconstruction_distance(lreg, fwd.target, fwd.recon).item()


@pytest.mark.parametrize("size,rotation", [((6, 6), 1), ((2, 2), 2), ((5, 5), 3), ((4, 7), 1)])
def test_equivariant_toy_has_zero_eq_loss(size, rotation):
    lreg = _lreg()
    draw = TokRegDraw(eq_mode="equivariance", eq_size=size, eq_rotation=rotation)
    assert _eq_loss(PointwiseTokenizer(), draw, lreg) < 1e-5
    non_eq = PointwiseTokenizer(ramp=1.0)
    assert _eq_loss(non_eq, TokRegDraw(), lreg) < 1e-5  # it reconstructs perfectly ...
    assert _eq_loss(non_eq, draw, lreg) > 1e-2  # ... but is not equivariant


def test_eq_transform_scales_then_rotates():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = eq_transform(x, (2, 2), 1)
    manual = torch.rot90(torch.nn.functional.interpolate(x, size=(2, 2), mode="bilinear", align_corners=False),
                         1, dims=(-2, -1))
    torch.testing.assert_close(out, manual)
    assert eq_numerators(32, 0.25) == list(range(8, 32))  # {8/32, ..., 31/32}: 24 scales (spec 2.2)


def test_draws_follow_the_step_probabilities():
    reg = TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), eq_prob=0.5, eq_lowres_prob=0.25,
                               eq_scale_den=8, se_weight=0.25, se_factors=(2, 4))
    modes, factors, rotations, sizes = [], set(), set(), set()
    for step in range(800):
        d = reg.draw(torch.Generator().manual_seed(step), global_batch=4, rows=slice(0, 2), latent_channels=4,
                     device="cpu")
        modes.append(d.eq_mode)
        factors.add(d.se_factor)
        if d.eq_mode == "equivariance":
            rotations.add(d.eq_rotation)
            sizes.add(d.eq_size)
        if d.eq_mode == "lowres":
            assert d.lowres_eps.shape == (2, 4, *d.eq_size)
    assert abs(modes.count("equivariance") / 800 - 0.5) < 0.06
    assert abs(modes.count("lowres") / 800 - 0.125) < 0.04  # 25% of the prior-preservation half
    assert factors == {2, 4} and rotations == {1, 2, 3}
    assert sizes == {(k, k) for k in range(2, 8)}  # isotropic, scales 2/8 ... 7/8 of the 8x8 latent
    again = reg.draw(torch.Generator().manual_seed(7), global_batch=4, rows=slice(0, 2), latent_channels=4,
                     device="cpu")
    first = reg.draw(torch.Generator().manual_seed(7), global_batch=4, rows=slice(0, 2), latent_channels=4,
                     device="cpu")
    assert (again.eq_mode, again.eq_size, again.eq_rotation, again.se_factor) == \
        (first.eq_mode, first.eq_size, first.eq_rotation, first.se_factor)


# ---------------------------------------------------------------------------------------------
# SE and VF on the real tiny tokenizer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from repae.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f4d4")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    return tok, x, eps


def test_se_with_factor_1_is_plain_reconstruction(tiny):
    tok, x, eps = tiny
    lreg = _lreg()
    reg = TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), se_weight=1.0, se_factors=(1,))
    with torch.no_grad():
        fwd = reg(tok, x, eps, TokRegDraw(se_factor=1))
        out = reg.loss(fwd, lreg=lreg, step=0)
        plain = reconstruction_distance(lreg, x, tok.decode(tok.encode(x).mean + tok.encode(x).std * eps))
    torch.testing.assert_close(fwd.se_recon, fwd.recon)
    torch.testing.assert_close(out.metrics["se_loss"], plain)
    with torch.no_grad():
        fwd4 = reg(tok, x, eps, TokRegDraw(se_factor=4))
    assert fwd4.se_target.shape == fwd4.se_recon.shape == (2, 3, 8, 8)  # latent 8 -> 2, image 32 -> 8


def test_vf_gradient_reaches_projection_and_encoder_only(tiny):
    tok, x, eps = tiny
    tok.zero_grad(set_to_none=True)
    lreg = _lreg()
    reg = TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), vf_weight=0.1, vf_dim=16)
    feats = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    fwd = reg(tok, x, eps, TokRegDraw())
    out = reg.loss(fwd, lreg=lreg, step=0, features=feats, last_layer=tok.vae.encoder.conv_out.weight)
    assert out.metrics["vf_weight"] > 0
    out.loss.backward()
    assert reg.vf_proj.weight.grad is not None and reg.vf_proj.weight.grad.abs().sum() > 0
    assert reg.vf_proj.bias is None  # bias-free projection (spec 1.3)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.vae.encoder.parameters())
    # the adaptive weight reads decoder gradients via autograd.grad but accumulates none
    assert all(p.grad is None for p in tok.vae.decoder.parameters())
    assert all(p.grad is None for p in lreg.discriminator.parameters())
    tok.zero_grad(set_to_none=True)


def test_se_gan_term_never_trains_the_discriminator(tiny):
    tok, x, eps = tiny
    lreg = _lreg()
    reg = TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), se_weight=0.5, se_factors=(1,),
                               se_terms=("l1", "perceptual", "gan"))
    fwd = reg(tok, x, eps, TokRegDraw(se_factor=1))
    out = reg.loss(fwd, lreg=lreg, step=0)
    out.loss.backward()
    assert all(p.grad is None for p in lreg.discriminator.parameters())
    assert any(p.grad is not None for p in tok.vae.decoder.parameters())
    tok.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------
# The `vae` recipe and the regularisers inside the trainer
# ---------------------------------------------------------------------------------------------

TINY = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "tokenizer.stats_images=32",
    "align.depth=2", "train.batch_size=8", "train.report_to=none", "train.log_every=1",
    "train.checkpoint_every=1000", "train.sample_every=1000", "sample.num_images=4", "sample.num_steps=2",
]
# all three on the embedded default: 8x8 latent; EQ scales 6/8, 7/8 keep images >= 24 px (PatchGAN)
ALL_REGS = ["tokreg.se_weight=0.25", "tokreg.eq_prob=0.5", "tokreg.eq_min_scale=0.75", "tokreg.vf_weight=0.1"]


def _trainer(tmp_path, *extra: str, recipe: str = "vae"):
    from repae.training.trainer import Trainer

    cfg = load_config("tiny-fmnist", [*TINY, f"train.output_dir={tmp_path}", f"train.recipe={recipe}", *extra])
    return Trainer(cfg, random_encoders=True)  # real encoder architectures, random weights


def _batch(tr, n: int = 8):
    items = [tr.dataset[i] for i in range(n)]
    return torch.stack([i[0] for i in items]), torch.stack([torch.as_tensor(i[1]) for i in items])


def _state(tr) -> dict[str, torch.Tensor]:
    flat = {f"{g}.{k}": v for g, sd in tr.model_state().items() for k, v in sd.items()}
    for name, opt in tr.optimizers.items():
        for idx, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                flat[f"{name}.{idx}.{k}"] = torch.as_tensor(v)
    return flat


def test_vae_recipe_builds_no_sit_and_trains_the_tokenizer(tmp_path):
    tr = _trainer(tmp_path, *ALL_REGS)
    assert tr.sit is None and tr.encoders == [] and tr.vf_encoder is not None
    assert set(tr.optimizers) == {"opt_vae", "opt_disc"}
    proj = tr.tokreg.vf_proj.weight
    assert any(p is proj for p in tr.optimizers["opt_vae"].param_groups[0]["params"])  # trained with the VAE
    before = {k: v.clone() for k, v in _state(tr).items()}
    metrics = tr.train_step(*_batch(tr))
    assert {"reconstruction_loss", "se_loss", "vf_loss", "vf_weight", "eq_step", "d_loss"} <= set(metrics)
    assert "sit_loss" not in metrics
    after = _state(tr)
    for key in ("tokreg.vf_proj.weight", "vae.encoder.conv_out.weight", "vae.decoder.conv_out.weight",
                "normalizer.running_mean"):
        assert not torch.equal(before[key], after[key]), f"{key} did not change"


def test_vae_recipe_without_regularisers_has_none(tmp_path):
    tr = _trainer(tmp_path)
    assert tr.tokreg is None and tr.vf_encoder is None and "tokreg" not in tr.model_state()
    assert set(tr.train_step(*_batch(tr))) >= {"reconstruction_loss", "d_loss"}


def test_phase_routing_with_every_regulariser(tmp_path):
    from repae.training import phases

    tr = _trainer(tmp_path, *ALL_REGS)
    images, labels = _batch(tr)
    rnd = phases.StepRandomness.draw(generator=torch.Generator().manual_seed(0), global_batch=8, rows=slice(0, 8),
                                     latent_shape=tr.latent_shape, time_sampler=tr.objective.time_sampler,
                                     drop_prob=0.1, device="cpu")
    rnd.tokreg = TokRegDraw(se_factor=2, eq_mode="equivariance", eq_size=(6, 6), eq_rotation=1)
    out = phases.vae_phase(tr.ctx, images, labels, [], rnd, step=0)
    assert out.target.shape == out.recon.shape == (8, 3, 24, 24)  # the transformed pair
    out.loss.backward()
    assert tr.tokreg.vf_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tr.lreg.discriminator.parameters()), "the VAE phase must not train D"
    assert all(p.grad is None for p in tr.vf_encoder.parameters())
    tr.tokenizer.zero_grad(set_to_none=True)
    tr.tokreg.zero_grad(set_to_none=True)
    d = phases.discriminator_phase(tr.ctx, images, out.recon, step=0, target=out.target)
    d.loss.backward()  # D sees the transformed pair; nothing else learns from it
    assert any(p.grad is not None for p in tr.lreg.discriminator.parameters())
    assert all(p.grad is None for p in tr.tokenizer.parameters())
    assert tr.tokreg.vf_proj.weight.grad is None


def test_vae_recipe_resume_is_bit_exact(tmp_path):
    common = [*ALL_REGS, "train.vae_ema=true", "train.max_steps=4", "train.checkpoint_every=2"]
    straight = _trainer(tmp_path / "a", *common)
    straight.fit()
    interrupted = _trainer(tmp_path / "b", *common)
    interrupted.fit(max_steps=2)  # "killed" after the step-2 checkpoint
    resumed = _trainer(tmp_path / "b", *common)
    resumed.fit()
    assert resumed.step == straight.step == 4
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and any(k.startswith("ema.model.") for k in a)  # tokenizer EMA saved
    for k in a:
        assert torch.equal(a[k], b[k]), f"resume diverged at {k}"

    from repae.tokenizer import Tokenizer
    from repae.training.export import export_vae

    out = export_vae(resumed.cfg.run_dir, tmp_path / "vae-out")
    tok = Tokenizer.from_pretrained(out)
    for name, p in tok.vae.state_dict().items():  # the EMA tokenizer is what gets exported
        assert torch.equal(p, a[f"ema.model.{name}"]), name
    assert (out / "tokreg.safetensors").exists()


def test_regularisers_inside_repa_e(tmp_path):
    plain = _trainer(tmp_path / "plain", recipe="repa-e")
    assert plain.tokreg is None  # weights default to 0 in the REPA-E recipe
    tr = _trainer(tmp_path / "se-vf", "tokreg.se_weight=0.25", "tokreg.vf_weight=0.1", recipe="repa-e")
    metrics = tr.train_step(*_batch(tr))
    assert {"se_loss", "vf_loss", "vae_align_loss", "sit_loss", "d_loss"} <= set(metrics)


@pytest.mark.parametrize("preset", ["imagenet-vavae-f16d32", "imagenet-eqvae-f8d4-finetune", "imagenet-se-finetune"])
def test_presets_validate(preset):
    from repae.training.builders import validate_config

    cfg = load_config(preset)
    assert validate_config(cfg).build_sit is False


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the key and the fix, before anything is built
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["tokreg.se_wieght=0.25"], "tokreg.se_wieght"),  # unknown regulariser key
        (["tokreg.se_weight=0.25", "tokreg.se_terms=[l1,lpips2]"], "tokreg.se_terms"),
        (["tokreg.vf_weight=-0.1"], "tokreg.vf_weight"),  # weight < 0
        (["tokreg.se_weight=-1"], "tokreg.se_weight"),
        (["tokreg.eq_prob=1.5"], "tokreg.eq_prob"),
        (["tokreg.se_weight=0.25", "tokreg.se_factors=[3]"], "tokreg.se_factors"),  # 3 does not divide 8
        (["tokreg.eq_prob=0.5", "tokreg.eq_scale_den=3"], "tokreg.eq_scale_den"),
        (["tokreg.eq_prob=0.5"], "tokreg.eq_min_scale"),  # 2/8 of 32 px = 8 px: too small for the PatchGAN
        (["tokreg.vf_weight=0.1", "tokenizer.preset=tiny-f8d4"], "tokreg.vf_encoder"),  # 8x8 grid vs 4x4 latent
        (["tokreg.vf_weight=0.1", "tokreg.vf_encoder=dinov2-vit-l"], "tokreg.vf_encoder"),  # 16/32 vs 8
        (["tokreg.vf_weight=0.1", "tokreg.vf_pixels=raw"], "tokreg.vf_pixels"),
        (["tokreg.se_weight=0.25", "train.recipe=repa"], "tokreg"),  # frozen VAE: nothing to regularise
        (["train.vae_ema=true", "train.recipe=repa-e"], "train.vae_ema"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, overrides, needle):
    from repae.training.builders import validate_config

    with pytest.raises(ConfigError) as info:
        cfg = load_config("tiny-fmnist", [f"train.output_dir={tmp_path}", "train.recipe=vae", *overrides])
        validate_config(cfg)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):  # the trainer runs the same checks first: no folder is made
        _trainer(tmp_path, *overrides)
    assert not (tmp_path / "repae-tiny-fmnist").exists()


def test_module_rejects_bad_values_directly():
    with pytest.raises(ConfigError, match="tokreg.se_factors"):
        TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), se_weight=0.25, se_factors=(3,))
    with pytest.raises(ConfigError, match="tokreg.vf_cos_margin"):
        TokenizerRegularizer(latent_channels=4, latent_hw=(8, 8), vf_cos_margin=-0.5)


@pytest.mark.slow
def test_vae_recipe_two_processes_equal_one(tmp_path):
    from distributed_helpers import assert_same_run, one_and_two_processes

    # GAN off (BatchNorm statistics differ per process) and a fixed VF weight (the adaptive ratio
    # is computed per process on its own micro-batch, as upstream does per GPU)
    overrides = [*TINY, "train.recipe=vae", "train.max_steps=2", "train.resume=false", "lreg.disc_weight=0.0",
                 "tokreg.se_weight=0.25", "tokreg.eq_prob=0.5", "tokreg.eq_min_scale=0.75", "tokreg.vf_weight=0.1",
                 "tokreg.vf_adaptive=false"]
    one, two = one_and_two_processes(tmp_path, overrides, port=29577)
    assert "tokreg.vf_proj.weight" in one["state"]
    assert_same_run(one, two, ("reconstruction_loss", "se_loss", "vf_loss", "grad_norm_vae"))
