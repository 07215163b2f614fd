"""Tokenizer: presets, posterior maths, shapes, save/load round trip, latent statistics, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from repae.errors import ConfigError, MissingWeightsError
from repae.tokenizer import (
    VAE_PRESETS,
    DiagonalGaussian,
    Tokenizer,
    VAEConfig,
    build_vae,
    compute_latent_stats,
    load_stats,
    save_stats,
)

# name -> (latent channels, factor, expected params in M or None, rel. tolerance)
EXPECTED = {
    "f8d4": (4, 8, 83.65, 0.01),  # SD kl-f8 / REPA-E f8d4 (spec 3.2)
    "f16d32": (32, 16, 69.84, 0.01),  # measured; REPA-E f16d32 (spec 3.3)
    "tiny-f4d4": (4, 4, 0.95, 0.05),
    "tiny-f8d4": (4, 8, 1.08, 0.05),
}


def _params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_every_preset_is_listed():
    assert set(EXPECTED) == set(VAE_PRESETS)


@pytest.mark.parametrize("name", list(VAE_PRESETS))
def test_preset_contract_on_meta(name):
    channels, factor, params, tol = EXPECTED[name]
    with torch.device("meta"):
        tok = Tokenizer.from_preset(name)
    n = _params(tok.vae)
    print(f"{name}: {n:.3f} M parameters")
    assert n == pytest.approx(params, rel=tol)
    assert tok.latent_channels == channels and tok.downsample_factor == factor
    assert tok.config is VAE_PRESETS[name] and tok.preset == name
    res = 32 if name.startswith("tiny") else 256
    assert tok.latent_shape(res) == (channels, res // factor, res // factor)
    assert tok.latent_shape((2 * factor, 3 * factor)) == (channels, 2, 3)
    assert VAEConfig.from_diffusers_config(dict(tok.vae.config)) == VAE_PRESETS[name]
    assert not list(tok.normalizer.parameters())  # non-affine


def test_f16d32_attention_placement():
    kw = VAE_PRESETS["f16d32"].to_diffusers_kwargs()
    assert kw["down_block_types"][-1] == "AttnDownEncoderBlock2D" and kw["up_block_types"][0] == "AttnUpDecoderBlock2D"
    assert "Attn" not in "".join(kw["down_block_types"][:-1] + kw["up_block_types"][1:])
    assert "Attn" not in "".join(VAE_PRESETS["f8d4"].to_diffusers_kwargs()["down_block_types"])


def test_config_errors():
    with pytest.raises(ConfigError, match="tiny-f4d4"):
        Tokenizer.from_preset("f8d5")
    tok = Tokenizer.from_preset("tiny-f4d4")
    with pytest.raises(ConfigError, match="multiple of the VAE downsample factor 4"):
        tok.latent_shape(30)
    with pytest.raises(ConfigError):
        VAEConfig(block_out_channels=(30, 64), norm_num_groups=8)
    with pytest.raises(ConfigError):
        VAEConfig(block_out_channels=(32, 64), attention_levels=(2,))
    with pytest.raises(TypeError, match="uint8_to_unit"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["tiny-f4d4", "tiny-f8d4"])
def test_tiny_forward_shapes_and_gradients(name):
    torch.manual_seed(0)
    tok = Tokenizer.from_preset(name)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tok(x, generator=torch.Generator().manual_seed(0))
    c, h, w = tok.latent_shape(32)
    assert out.z.shape == (2, c, h, w) and out.posterior.mean.shape == (2, c, h, w)
    assert out.recon.shape == x.shape and out.posterior.kl().shape == (2,)
    (out.recon.square().mean() + out.posterior.kl().mean()).backward()
    assert tok.vae.encoder.conv_in.weight.grad.abs().sum() > 0


def test_posterior_sample_and_mode_and_kl():
    mean = torch.tensor([[[[1.0]], [[-2.0]]]])  # [1, 2, 1, 1]
    logvar = torch.tensor([[[[0.0]], [[50.0]]]])  # second clamps to 20
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert post.logvar.flatten().tolist() == [0.0, 20.0]
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))
    torch.testing.assert_close(post.var, torch.exp(post.logvar))
    # KL = 0.5 * [(1 + 1 - 1 - 0) + (4 + e^20 - 1 - 20)]
    expected = 0.5 * ((1 + 1 - 1 - 0) + (4 + torch.exp(torch.tensor(20.0)) - 1 - 20))
    torch.testing.assert_close(post.kl(), expected.reshape(1))
    assert torch.equal(post.mode(), mean)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(post.sample(torch.Generator().manual_seed(3)), mean + post.std * eps)
    # standard normal posterior has zero KL; samples have the right moments
    std_normal = DiagonalGaussian(torch.zeros(2, 6, 4, 4))
    assert torch.equal(std_normal.kl(), torch.zeros(2))
    wide = DiagonalGaussian(torch.cat([torch.full((1, 1, 100, 100), 3.0), torch.full((1, 1, 100, 100), 2 * 0.693147)], 1))
    s = wide.sample(torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 3.0) < 0.05 and abs(s.std().item() - 2.0) < 0.05
    # cached (mean, std) format round trip
    back = DiagonalGaussian.from_mean_std(post.mean, post.std)
    torch.testing.assert_close(back.mean_std(), post.mean_std())


def test_save_pretrained_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f8d4", momentum=0.2)
    for _ in range(3):  # make the normaliser statistics non-trivial
        tok.normalizer.normalize(torch.randn(4, 4, 4, 4) * 3 + 1, update=True)
    d = tok.save_pretrained(tmp_path / "tok")
    assert {p.name for p in d.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors", "latent_stats.json"}
    back = Tokenizer.from_pretrained(d)
    a, b = tok.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert back.normalizer.momentum == 0.2 and back.preset == "tiny-f8d4" and back.config == tok.config
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(back(x, generator=torch.Generator().manual_seed(0)).recon, tok(x, generator=g).recon,
                               rtol=0, atol=0)
    # the folder is a valid diffusers model
    from diffusers import AutoencoderKL

    ref = AutoencoderKL.from_pretrained(d)
    assert all(torch.equal(v, tok.vae.state_dict()[k]) for k, v in ref.state_dict().items())
    assert ref.config.latents_mean == tok.normalizer.statistics()[0].tolist()
    # stats file readable by load_stats
    m, s = load_stats(d)
    torch.testing.assert_close(s, tok.normalizer.statistics()[1])


def test_from_pretrained_requires_stats(tmp_path):
    tok = Tokenizer.from_preset("tiny-f4d4")
    tok.save_pretrained(tmp_path)
    (tmp_path / "latent_stats.json").unlink()
    with pytest.raises(MissingWeightsError, match="latent-stats"):
        Tokenizer.from_pretrained(tmp_path)
    back = Tokenizer.from_pretrained(tmp_path, require_stats=False)
    assert torch.equal(back.normalizer.running_var, torch.ones(4))
    with pytest.raises(MissingWeightsError):
        Tokenizer.from_pretrained(tmp_path / "missing")


def test_decode_normalized_inverts_normalisation_without_eps():
    tok = Tokenizer.from_preset("tiny-f4d4").eval()
    tok.normalizer.set_statistics(torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 1.0, 3.0]))
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(tok.decode_normalized((z - tok.normalizer.running_mean[None, :, None, None])
                                                         / tok.normalizer.running_var.sqrt()[None, :, None, None]),
                                   tok.decode(z), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ statistics
def _batches(n=10, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return [(imgs[i: i + bs], torch.zeros(len(imgs[i: i + bs]), dtype=torch.long)) for i in range(0, n, bs)], imgs


def test_compute_latent_stats_matches_direct_computation():
    from repae.conventions import uint8_to_unit

    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f4d4")
    batches, imgs = _batches()
    with torch.no_grad():
        post = tok.encode(uint8_to_unit(imgs))
    mean, std = compute_latent_stats(tok, batches, use_mean=True, progress=False)
    ref = post.mean.double()
    torch.testing.assert_close(mean, ref.mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, ref.std((0, 2, 3), unbiased=False).float(), rtol=1e-5, atol=1e-6)
    # samples: same draws as a generator seeded like the function (seed + rank 0), batch by batch
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        zs = torch.cat([tok.encode(uint8_to_unit(b)).sample(g) for b, _ in batches]).double()
    m2, s2 = compute_latent_stats(tok, batches, progress=False, seed=5)
    torch.testing.assert_close(m2, zs.mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2, zs.std((0, 2, 3), unbiased=False).float(), rtol=1e-5, atol=1e-6)
    assert (s2 > std).all()  # samples add the posterior variance
    # max_images truncates mid-batch
    m3, _ = compute_latent_stats(tok, batches, use_mean=True, max_images=6, progress=False)
    torch.testing.assert_close(m3, post.mean[:6].double().mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    assert tok.training  # mode restored


def test_stats_files_round_trip(tmp_path):
    mean, std = torch.tensor([0.1, -0.2, 3.0, 0.0]), torch.tensor([1.5, 0.25, 4.0, 1.0])
    save_stats(tmp_path / "s.json", mean, std, note="x")
    save_stats(tmp_path / "s-latents-stats.pt", mean, std)
    pt = torch.load(tmp_path / "s-latents-stats.pt")
    assert pt["latents_scale"].shape == (1, 4, 1, 1) and pt["latents_bias"].shape == (1, 4, 1, 1)
    torch.testing.assert_close(pt["latents_scale"].flatten(), 1 / std)
    for name in ("s.json", "s-latents-stats.pt"):
        m, s = load_stats(tmp_path / name)
        torch.testing.assert_close(m, mean)
        torch.testing.assert_close(s, std)
    tok = Tokenizer.from_preset("tiny-f4d4", stats=tmp_path / "s-latents-stats.pt")  # REPA-E file -> init_bn
    torch.testing.assert_close(tok.normalizer.running_mean, mean)
    torch.testing.assert_close(tok.normalizer.running_var, std**2)
    with pytest.raises(MissingWeightsError):
        load_stats(tmp_path / "none.json")


def test_latent_stats_cli(tmp_path, monkeypatch, capsys):
    import repae.data
    from repae.cli import main

    _, imgs = _batches(n=6)

    def fake_build_dataset(spec, *, resolution, split="train", strict=False):
        assert (spec, resolution, split) == ("fake", 32, "train")
        return torch.utils.data.TensorDataset(imgs, torch.zeros(len(imgs), dtype=torch.long))

    monkeypatch.setattr(repae.data, "build_dataset", fake_build_dataset, raising=False)
    model = build_vae(VAE_PRESETS["tiny-f4d4"])
    model.save_pretrained(tmp_path / "vae")
    out = tmp_path / "stats.json"
    rc = main(["latent-stats", "--vae", str(tmp_path / "vae"), "--vae-preset", "tiny-f4d4", "--data", "fake",
               "--resolution", "32", "--batch-size", "4", "--max-images", "5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    saved = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert saved["mean"] == printed["mean"] and len(saved["std"]) == 4 and saved["num_images"] == 5
    assert all(s > 0 for s in saved["std"])
    assert main(["latent-stats", "--data", "fake", "--resolution", "30"]) == 2  # one-line ConfigError
    assert "multiple of the VAE downsample factor" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["f8d4", "f16d32"])
def test_full_size_presets_encode_decode_256(name):
    """Real-size forward at 256 px (CPU, batch 1): latent [4, 32, 32] / [32, 16, 16] and image shape back."""
    tok = Tokenizer.from_preset(name).eval()
    with torch.no_grad():
        out = tok(torch.zeros(1, 3, 256, 256))
    assert tuple(out.z.shape[1:]) == tok.latent_shape(256) and out.recon.shape == (1, 3, 256, 256)


def test_shipped_starting_tokenizer_loads_by_name(tmp_path):
    """`tokenizer.weights=repae-vae-fmnist` is a registry name (issue 10): no skip if the asset is missing."""
    import json as _json

    from repae.config import load_config
    from repae.tokenizer.registry import SHIPPED_TOKENIZERS, resolve_tokenizer_weights
    from repae.training.builders import build_tokenizer
    from repae.training.recipes import get_recipe

    folder = resolve_tokenizer_weights("repae-vae-fmnist")
    record = _json.loads((folder / "record.json").read_text())
    assert record["seed"] == 0 and record["loss_curve"] and record["commands"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8e6  # a few MB
    cfg = load_config("tiny-fmnist", [f"train.output_dir={tmp_path}", "tokenizer.weights=repae-vae-fmnist"])
    tok, has_stats = build_tokenizer(cfg, get_recipe("repa-e"))
    assert has_stats and tok.latent_shape(32) == (4, 8, 8)
    assert SHIPPED_TOKENIZERS["repae-vae-fmnist"][1] == "tiny-f4d4"
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        assert tok.decode(tok.encode(x).mode()).shape == x.shape


# ---------------------------------------------------------------------------------------------
# folded decoder upsampling (repae.tokenizer.upsample)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (6, 4)])
def test_folded_upsample_equals_nearest_then_conv3x3_with_gradients(size):
    import torch.nn.functional as F

    from repae.tokenizer.upsample import upsample_conv3x3

    g = torch.Generator().manual_seed(sum(size))
    x = torch.randn(2, 5, *size, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    want = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)  # [2, 7, 2H, 2W]
    got = upsample_conv3x3(x, w, b)
    assert got.shape == want.shape == (2, 7, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    up = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads_want = torch.autograd.grad(want, (x, w, b), up)
    grads_got = torch.autograd.grad(got, (x, w, b), up)
    for a, c in zip(grads_got, grads_want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_vae_decoder_uses_folded_upsampling_with_the_same_state_and_output():
    from repae.tokenizer.upsample import FoldedUpsample2D, set_folded_upsampling

    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f8d4")
    ups = [m for m in tok.vae.modules() if type(m).__name__.endswith("Upsample2D")]
    assert len(ups) == 3 and all(isinstance(m, FoldedUpsample2D) for m in ups)  # f8: three x2 upsamplings
    keys = list(tok.vae.state_dict())
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        folded = tok.decode(z)
        assert set_folded_upsampling(tok.vae, False) == 3
        assert not any(isinstance(m, FoldedUpsample2D) for m in tok.vae.modules())
        plain = tok.decode(z)
        set_folded_upsampling(tok.vae, True)
        tok.vae.to(memory_format=torch.channels_last)
        nhwc = tok.decode(z)
    assert list(tok.vae.state_dict()) == keys
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nhwc, plain, rtol=1e-5, atol=1e-5)
