"""Tests for the VAE regularisation loss L_REG: perceptual distances, PatchGAN, hinge/LeCam/adaptive
weight, and gradient routing (spec-repae.md section 4, items 9-13 of section 11)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from repae.errors import ConfigError, MissingWeightsError
from repae.losses.adversarial import (
    LeCam,
    NLayerDiscriminator,
    adaptive_weight,
    generator_adv_loss,
    hinge_d_loss,
    load_discriminator_weights,
)
from repae.losses.perceptual import (
    LPIPS,
    PERCEPTUAL,
    LaplacianPyramidL1,
    build_perceptual,
    load_lpips_heads,
    lpips_heads_path,
    vgg16_features_state_dict,
)
from repae.losses.regularization import LossOutput, VAERegularizationLoss

GEN_METRICS = {
    "reconstruction_loss",
    "perceptual_loss",
    "kl_loss",
    "weighted_gan_loss",
    "discriminator_factor",
    "gan_loss",
    "d_weight",
}
DISC_METRICS = {"d_loss", "logits_real", "logits_fake", "lecam_loss"}


class FixedKL:
    """Posterior stand-in with a given per-sample KL ``[B]``."""

    def __init__(self, kl: torch.Tensor):
        self._kl = kl

    def kl(self) -> torch.Tensor:
        return self._kl


class GaussianStub:
    """Posterior stand-in with the spec 3.4 KL of N(mean, I) to N(0, I): 0.5 * sum mean^2."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean

    def kl(self) -> torch.Tensor:
        return 0.5 * self.mean.pow(2).sum(dim=(1, 2, 3))


def _images(b=2, h=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, h, generator=g) * 2 - 1
    x_hat = (x + 0.2 * torch.randn(b, 3, h, h, generator=g)).clamp(-1, 1)
    return x, x_hat


def _small_loss(**kw) -> VAERegularizationLoss:
    kw = {"perceptual": "laplacian", "disc_ndf": 8, **kw}
    return VAERegularizationLoss(**kw)


# ---------------------------------------------------------------------------------------------
# Fixtures: a random VGG16 `features` state dict written in the torchvision full-model layout
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_module(vgg_file):
    return build_perceptual("lpips", vgg_weights=vgg_file[0])


# ---------------------------------------------------------------------------------------------
# Hand-computed losses
# ---------------------------------------------------------------------------------------------


def test_l1_and_kl_hand_computed():
    reg = _small_loss(perceptual="none", disc_weight=0.0, reconstruction_weight=2.0, kl_weight=1e-3)
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.full((2, 3, 4, 4), 0.5)
    x_hat[1] = -0.25  # |diff| means: 0.5 and 0.25 -> overall 0.375
    out = reg.generator_loss(x, x_hat, FixedKL(torch.tensor([2.0, 4.0])), step=0)
    assert isinstance(out, LossOutput)
    assert set(out.metrics) == GEN_METRICS
    torch.testing.assert_close(out.metrics["reconstruction_loss"], torch.tensor(0.75))
    torch.testing.assert_close(out.metrics["kl_loss"], torch.tensor(3e-3))  # 1e-3 * mean(2, 4)
    torch.testing.assert_close(out.metrics["gan_loss"], torch.tensor(0.0))
    torch.testing.assert_close(out.loss, torch.tensor(0.75 + 3e-3))


def test_total_is_sum_of_weighted_terms():
    reg = _small_loss()
    x, x_hat = _images()
    out = reg.generator_loss(x, x_hat, GaussianStub(torch.randn(2, 4, 4, 4)), step=5)
    m = out.metrics
    total = m["reconstruction_loss"] + m["perceptual_loss"] + m["kl_loss"] + m["weighted_gan_loss"]
    torch.testing.assert_close(out.loss.detach(), total)
    torch.testing.assert_close(m["weighted_gan_loss"], 0.1 * 1.0 * m["gan_loss"])
    torch.testing.assert_close(m["d_weight"], torch.tensor(0.1))
    assert all(v.dtype == torch.float32 and v.dim() == 0 and not v.requires_grad for v in m.values())


def test_hinge_and_generator_loss_hand_computed():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))
    torch.testing.assert_close(generator_adv_loss(fake), torch.tensor(1.0 / 3))


def test_discriminator_loss_matches_hinge_of_separate_passes():
    reg = _small_loss()
    x, x_hat = _images()
    ref = copy.deepcopy(reg.discriminator)
    out = reg.discriminator_loss(x, x_hat, step=0)
    assert set(out.metrics) == DISC_METRICS
    lr, lf = ref(x), ref(x_hat)  # separate train-mode BN passes, like the loss
    torch.testing.assert_close(out.loss.detach(), hinge_d_loss(lr, lf).detach())
    torch.testing.assert_close(out.metrics["logits_real"], lr.mean().detach())
    torch.testing.assert_close(out.metrics["logits_fake"], lf.mean().detach())
    torch.testing.assert_close(out.metrics["lecam_loss"], torch.tensor(0.0))


# ---------------------------------------------------------------------------------------------
# Discriminator architecture
# ---------------------------------------------------------------------------------------------


def test_discriminator_shapes_and_param_count():
    d = NLayerDiscriminator()
    n = sum(p.numel() for p in d.parameters())
    print(f"default PatchGAN parameters: {n:,}")
    assert n == 2_765_633  # 3,136 + 131,328 + 524,800 + 2,098,176 + 8,193 (conv + BN, spec 4.7)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # 32 -> 16 -> 8 -> 7 -> 6
    with torch.device("meta"):
        big = NLayerDiscriminator()
        assert big(torch.empty(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # spec 4.7
    kinds = [type(m).__name__ for m in d.main]
    assert kinds.count("BatchNorm2d") == 3 and kinds.count("Conv2d") == 5
    assert d.main[0].bias is not None and d.main[2].bias is None and d.main[11].bias is not None


def test_discriminator_weights_init_rule():
    torch.manual_seed(0)
    d = NLayerDiscriminator()
    conv_w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv2d)])
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert abs(conv_w.std().item() - 0.02) < 1e-3 and abs(conv_w.mean().item()) < 1e-3
    bn_w = torch.cat([m.weight for m in bns])
    assert abs(bn_w.mean().item() - 1.0) < 5e-3 and abs(bn_w.std().item() - 0.02) < 5e-3
    assert all(torch.all(m.bias == 0) for m in bns)
    first_bias = d.main[0].bias  # PyTorch default uniform(+-1/sqrt(fan_in)), not N(0, 0.02)
    assert first_bias.abs().max() <= 1 / (3 * 16) ** 0.5 and first_bias.abs().max() > 0.06


def test_discriminator_checkpoint_round_trip(tmp_path):
    a, b = NLayerDiscriminator(ndf=8), NLayerDiscriminator(ndf=8)
    path = tmp_path / "disc.pt"
    torch.save({"discriminator": {f"module.{k}": v for k, v in a.state_dict().items()}}, path)
    load_discriminator_weights(b, path)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(ConfigError):
        load_discriminator_weights(NLayerDiscriminator(ndf=8, n_layers=2), path)
    with pytest.raises(MissingWeightsError):
        load_discriminator_weights(b, tmp_path / "nope.pt")
    reg = _small_loss(disc_weights=path)
    assert torch.equal(reg.discriminator.main[0].weight, a.main[0].weight)


# ---------------------------------------------------------------------------------------------
# Gradient routing, train-mode BN, disc_start, fp32
# ---------------------------------------------------------------------------------------------


def test_generator_loss_gradient_reaches_x_hat_not_discriminator():
    reg = _small_loss()
    x, x_hat = _images()
    x_hat.requires_grad_(True)
    mean = torch.randn(2, 4, 4, 4, requires_grad=True)
    ref = copy.deepcopy(reg.discriminator)
    bn = reg.discriminator.main[3]
    out = reg.generator_loss(x, x_hat, GaussianStub(mean), step=0)
    out.loss.backward()
    assert all(p.grad is None for p in reg.discriminator.parameters())
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert mean.grad is not None and mean.grad.abs().sum() > 0  # through KL
    # the frozen call is the same function as the module (train-mode BN, batch stats) ...
    torch.testing.assert_close(out.metrics["gan_loss"], -ref(x_hat).mean().detach())
    # ... and updated the module's own BN running statistics, as the original does (spec 4.4 note)
    assert bn.num_batches_tracked.item() == 1 and bn.running_mean.abs().sum() > 0


def test_generator_gan_gradient_equals_plain_autograd():
    """The detached-parameter call gives x_hat exactly the gradient a normal call would."""
    reg = _small_loss(perceptual="none", kl_weight=0.0, reconstruction_weight=0.0)
    x, x_hat = _images()
    ref = copy.deepcopy(reg.discriminator)
    xa = x_hat.clone().requires_grad_(True)
    reg.generator_loss(x, xa, FixedKL(torch.zeros(2)), step=0).loss.backward()
    xb = x_hat.clone().requires_grad_(True)
    (0.1 * -ref(xb).mean()).backward()
    torch.testing.assert_close(xa.grad, xb.grad)


def test_discriminator_loss_gradient_reaches_discriminator_not_x_hat():
    reg = _small_loss()
    x, x_hat = _images()
    x_hat.requires_grad_(True)
    out = reg.discriminator_loss(x, x_hat, step=0)
    out.loss.backward()
    assert x_hat.grad is None
    assert all(p.grad is not None for p in reg.discriminator.parameters())
    assert reg.discriminator.main[0].weight.grad.abs().sum() > 0
    assert reg.discriminator.main[3].num_batches_tracked.item() == 2  # real and fake: two BN passes


def test_disc_start_switches_gan_off():
    reg = _small_loss(disc_start=10)
    x, x_hat = _images()
    bn = reg.discriminator.main[3]
    g = reg.generator_loss(x, x_hat, FixedKL(torch.zeros(2)), step=9)
    assert g.metrics["discriminator_factor"] == 0 and g.metrics["weighted_gan_loss"] == 0
    assert bn.num_batches_tracked.item() == 0  # no discriminator pass before disc_start
    d = reg.discriminator_loss(x, x_hat, step=9)
    assert d.loss.item() == 0.0
    g = reg.generator_loss(x, x_hat, FixedKL(torch.zeros(2)), step=10)
    assert g.metrics["discriminator_factor"] == 1 and g.metrics["gan_loss"] != 0


def test_loss_runs_in_fp32_under_autocast():
    reg = _small_loss()
    x, x_hat = _images()
    ref = copy.deepcopy(reg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reg.generator_loss(x.bfloat16(), x_hat.bfloat16(), FixedKL(torch.ones(2)), step=0)
        d = reg.discriminator_loss(x.bfloat16(), x_hat.bfloat16(), step=0)
    assert out.loss.dtype == torch.float32 and d.loss.dtype == torch.float32
    want = ref.generator_loss(x.bfloat16().float(), x_hat.bfloat16().float(), FixedKL(torch.ones(2)), step=0)
    torch.testing.assert_close(out.loss, want.loss)


# ---------------------------------------------------------------------------------------------
# LeCam and adaptive weight
# ---------------------------------------------------------------------------------------------


def test_lecam_ema_arithmetic():
    lecam = LeCam(decay=0.9)
    # anchors start at 0: relu(2 - 0)^2 + relu(0 - (-1))^2 = 5
    torch.testing.assert_close(lecam(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -1.0])), torch.tensor(5.0))
    torch.testing.assert_close(lecam.ema_real, torch.tensor(0.2))  # 0.9 * 0 + 0.1 * 2
    torch.testing.assert_close(lecam.ema_fake, torch.tensor(-0.1))
    # relu(0 - (-0.1))^2 + relu(0.2 - 0)^2 = 0.01 + 0.04
    torch.testing.assert_close(lecam(torch.zeros(3), torch.zeros(3)), torch.tensor(0.05))
    torch.testing.assert_close(lecam.ema_real, torch.tensor(0.18))


def test_lecam_in_discriminator_loss():
    off = _small_loss()
    assert off.lecam is None and not any("lecam" in k or "ema" in k for k in off.state_dict())
    reg = _small_loss(lecam_weight=0.5, lecam_decay=0.99)
    x, x_hat = _images()
    ref = copy.deepcopy(reg.discriminator)
    out = reg.discriminator_loss(x, x_hat, step=0)
    r, f = ref(x).mean(), ref(x_hat).mean()
    want_lecam = 0.5 * (torch.relu(r) ** 2 + torch.relu(-f) ** 2)  # anchors were 0
    torch.testing.assert_close(out.metrics["lecam_loss"], want_lecam.detach())
    want_d = (hinge_d_loss(ref(x), ref(x_hat)) + want_lecam).detach()  # ref BN: 2nd pass, same batch stats
    torch.testing.assert_close(out.metrics["d_loss"], want_d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reg.lecam.ema_real, 0.01 * r.detach())


def test_adaptive_weight_toy_last_layer():
    w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    v = torch.tensor([3.0, 4.0])
    out = (w @ v).sum()  # 11
    rec, g = out**2, 5 * out  # grads: 2*11*v (norm 110), 5*v (norm 25)
    torch.testing.assert_close(adaptive_weight(rec, g, w), torch.tensor(110 / (25 + 1e-4)))
    g0 = 0 * out  # zero generator gradient -> clamped at 1e4
    torch.testing.assert_close(adaptive_weight(rec, g0, w), torch.tensor(1e4))
    assert not adaptive_weight(rec, g, w).requires_grad


def test_adaptive_weight_in_generator_loss():
    reg = _small_loss(adaptive_disc_weight=True)
    x, _ = _images()
    head = nn.Conv2d(3, 3, 1)  # toy "decoder last layer"
    x_hat = head(x)
    with pytest.raises(ConfigError):
        reg.generator_loss(x, x_hat, FixedKL(torch.zeros(2)), step=0)
    out = reg.generator_loss(x, x_hat, FixedKL(torch.zeros(2)), step=0, last_layer=head.weight)
    assert out.metrics["d_weight"] != pytest.approx(0.1) and out.metrics["d_weight"] > 0
    out.loss.backward()
    assert head.weight.grad is not None and all(p.grad is None for p in reg.discriminator.parameters())


# ---------------------------------------------------------------------------------------------
# Laplacian-pyramid L1
# ---------------------------------------------------------------------------------------------


def test_laplacian_identity_symmetry_and_frequency_preference():
    lap = LaplacianPyramidL1(levels=3)
    x, y = _images(h=32)
    assert torch.all(lap(x, x) == 0)
    torch.testing.assert_close(lap(x, y), lap(y, x))
    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = 0.1 * (1 - 2 * ((ii + jj) % 2)).float().expand(2, 3, 32, 32)  # highest frequency
    const = torch.full((2, 3, 32, 32), 0.1)  # lowest frequency, same L1 (0.1 per element)
    hi, lo = lap(x, x + checker), lap(x, x + const)
    # constant offset a lands only in the residual: a * 4^-(J-1) pixels * 2^-2(J-1) = a / 16^(J-1)
    torch.testing.assert_close(lo, torch.full((2,), 0.1 / 256))
    assert torch.all(hi > 0.09) and torch.all(hi > 20 * lo)


def test_laplacian_one_level_is_l1_and_pyramid_round_trip():
    x, y = _images(h=20)
    torch.testing.assert_close(LaplacianPyramidL1(levels=1)(x, y), (x - y).abs().mean(dim=(1, 2, 3)))
    lap = LaplacianPyramidL1(levels=4)
    bands = lap.pyramid(x)
    assert [b.shape[-1] for b in bands] == [20, 10, 5, 3]
    g = bands[-1]
    for band in reversed(bands[:-1]):  # exact reconstruction: G_j = up(G_{j+1}) + L^j
        g = torch.nn.functional.interpolate(g, size=band.shape[-2:], mode="bilinear", align_corners=False) + band
    torch.testing.assert_close(g, x)
    assert len(LaplacianPyramidL1(levels=9).pyramid(torch.zeros(1, 3, 4, 4))) == 3  # capped: 4 -> 2 -> 1


# ---------------------------------------------------------------------------------------------
# LPIPS-VGG with the real loaders (random VGG weights of the right shape; heads from the wheel)
# ---------------------------------------------------------------------------------------------


def test_lpips_loads_local_vgg_and_wheel_heads(vgg_file, lpips_module):
    _, features = vgg_file
    for (k, want), got in zip(features.state_dict().items(), lpips_module.features.state_dict().values()):
        assert torch.equal(want, got), k
    wheel = torch.load(lpips_heads_path(), map_location="cpu", weights_only=True)
    for k, head in enumerate(lpips_module.heads):
        assert torch.equal(head, wheel[f"lin{k}.model.1.weight"])
    assert lpips_heads_path().stat().st_size == 7289


def test_lpips_distance_properties(lpips_module):
    x, y = _images(h=32)
    d = lpips_module(x, y)
    assert d.shape == (2,) and d.dtype == torch.float32 and torch.all(d > 0)
    torch.testing.assert_close(lpips_module(x, x), torch.zeros(2))
    torch.testing.assert_close(lpips_module(y, x), d)
    lpips_module.train()
    assert not lpips_module.training  # forced eval
    assert not any(p.requires_grad for p in lpips_module.parameters())
    xr = x.clone().requires_grad_(True)
    lpips_module(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_module.parameters())


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips calls torchvision with the deprecated `pretrained=`
def test_lpips_matches_reference_package(vgg_file):
    """Same numbers as the ``lpips`` package (its backbone given our weights); remap == normalize=True."""
    import lpips

    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    ref_sd = {}
    for k in ref.net.state_dict():  # "slice{s}.{idx}.weight" -> features "{idx}.weight"
        ref_sd[k] = vgg_file[1].state_dict()[k.split(".", 1)[1]]
    ref.net.load_state_dict(ref_sd)
    x, y = _images(h=32, seed=3)
    for remap in (False, True):
        ours = LPIPS(features=vgg_file[1], heads=load_lpips_heads(), remap_inputs=remap)
        with torch.no_grad():
            got, want = ours(x, y), ref(x, y, normalize=remap).view(-1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_lpips_real_side_gets_no_graph(lpips_module):
    """With a gradient on one side only, the other side runs its own VGG pass under no_grad (no
    saved activations, no input gradient for it); values and the gradient equal the joint pass."""
    x, y = _images(h=32, seed=5)
    calls = []
    hook = lpips_module.features[0].register_forward_hook(
        lambda mod, inp, out: calls.append((inp[0].shape[0], torch.is_grad_enabled())))
    try:
        with torch.no_grad():
            joint = lpips_module(x, y)
        assert calls == [(4, False)]  # no gradient anywhere: one [2B] pass
        calls.clear()
        yr = y.clone().requires_grad_(True)
        split = lpips_module(x, yr)
        assert calls == [(2, False), (2, True)]  # the real side alone and without a graph
        split.sum().backward()
        calls.clear()
        xr, yr2 = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        both = lpips_module(xr, yr2)
        assert calls == [(4, True)]  # both sides need gradients: one joint pass
        both.sum().backward()
    finally:
        hook.remove()
    torch.testing.assert_close(split.detach(), joint, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(yr.grad, yr2.grad, rtol=1e-4, atol=1e-8)


def test_lpips_env_var_and_key_layouts(vgg_file, monkeypatch):
    monkeypatch.setenv("REPAE_VGG16_WEIGHTS", str(vgg_file[0]))
    assert isinstance(build_perceptual("lpips"), LPIPS)
    bare = {"0.weight": torch.zeros(1), "2.bias": torch.zeros(1)}
    assert vgg16_features_state_dict(bare) == bare
    wrapped = {"module.features.0.weight": bare["0.weight"], "module.classifier.0.weight": torch.zeros(1)}
    assert list(vgg16_features_state_dict(wrapped)) == ["0.weight"]


def test_missing_vgg_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv("REPAE_VGG16_WEIGHTS", raising=False)
    for kwargs in ({}, {"vgg_weights": tmp_path / "absent.pth"}):
        with pytest.raises(MissingWeightsError) as err:
            build_perceptual("lpips", **kwargs)
        msg = str(err.value)
        assert "\n" not in msg
        for needle in ("vgg16-397923af.pth", "lreg.vgg_weights", "REPAE_VGG16_WEIGHTS", "laplacian"):
            assert needle in msg
    with pytest.raises(MissingWeightsError):
        VAERegularizationLoss()  # REPA-E default perceptual="lpips" needs the file


def test_wrong_vgg_file_is_config_error(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ConfigError, match="not a torchvision VGG16"):
        build_perceptual("lpips", vgg_weights=path)


# ---------------------------------------------------------------------------------------------
# Registry contract and config validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PERCEPTUAL))
def test_perceptual_registry_contract(name, vgg_file):
    module = build_perceptual(name, vgg_weights=vgg_file[0])
    x, y = _images(h=32)
    xr = x.clone().requires_grad_(True)
    d = module(xr, y)
    assert d.shape == (2,) and d.dtype == torch.float32 and torch.all(torch.isfinite(d))
    torch.testing.assert_close(module(x, x), torch.zeros(2))
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    if name != "none":
        assert torch.all(d > 0)
        d.sum().backward()
        assert xr.grad.abs().sum() > 0


def test_config_errors():
    with pytest.raises(ConfigError, match="lreg.perceptual"):
        _small_loss(perceptual="dists")
    with pytest.raises(ConfigError, match="kl_weight"):
        _small_loss(kl_weight=-1.0)
    with pytest.raises(ValueError):
        _small_loss().generator_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4), FixedKL(torch.zeros(1)), 0)
