"""Representation autoencoders in the trainers (issue 23): the RAE tokenizer (frozen encoder, diffusers'
RAEDecoder, noise augmentation), the `rae-decoder` recipe, the width rule, the DiT^DH head and the
dimension-dependent time shift. Sizes are tiny; the encoder is the packaged `repae-vit-t4`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from repae.config import load_config
from repae.diffusion.shift import ShiftedTime, dimension_shift, resolve_time_shift, shift_time
from repae.diffusion.timesteps import UniformTime
from repae.errors import ConfigError

# ---------------------------------------------------------------------------------------------- time shift


def test_shift_formula_known_values():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_time(t, 1.0), t)  # alpha = 1: the identity
    for alpha in (0.25, 1.7, 6.93):
        s = shift_time(t, alpha)
        assert float(s[0]) == 0.0 and float(s[-1]) == 1.0  # t = 0 and t = 1 are fixed points
        assert bool((s[1:] > s[:-1]).all())  # increasing: a grid stays ordered
    assert shift_time(0.5, 2.0) == pytest.approx(2 / 3)  # 2 * 0.5 / (1 + 0.5) by hand
    assert shift_time(0.25, 3.0) == pytest.approx(0.5)  # 0.75 / 1.5
    assert shift_time(0.5, 3.0) > 0.5  # alpha > 1 moves times towards noise (t = 1 is noise in repae)


def test_dimension_shift_and_config_values():
    assert dimension_shift((768, 16, 16)) == pytest.approx(math.sqrt(768 * 256 / 4096))  # DINOv2-B RAE: 6.93
    assert dimension_shift((192, 8, 8)) == pytest.approx(math.sqrt(3.0))  # repae-vit-t4 RAE
    assert dimension_shift((4, 64, 64)) == 2.0  # m = 16384 = 4 n: alpha = sqrt(4)
    assert resolve_time_shift("none", (4, 8, 8)) == 1.0
    assert resolve_time_shift("dimension", (16, 16, 16), base=4096) == 1.0
    assert resolve_time_shift("2.5", (4, 8, 8)) == 2.5
    for bad in ("fast", "0", "-1"):
        with pytest.raises(ConfigError, match="diffusion.time_shift"):
            resolve_time_shift(bad, (4, 8, 8))


def test_shifted_time_sampler_and_solver_grids():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    base = UniformTime()
    assert torch.allclose(ShiftedTime(base, 3.0).sample(64, generator=g1), shift_time(base.sample(64, generator=g2), 3.0))
    from repae.sampling.solvers import euler, euler_maruyama

    seen = []

    def zero_velocity(x, t, t_guide):
        seen.append(t)
        return torch.zeros_like(x)

    euler(zero_velocity, torch.zeros(1, 1, 2, 2), num_steps=4, time_shift=2.0)
    expected = shift_time(torch.linspace(1, 0, 5, dtype=torch.float64), 2.0)[:-1]
    assert seen == pytest.approx(expected.tolist())
    seen.clear()
    euler_maruyama(zero_velocity, torch.zeros(1, 1, 2, 2), num_steps=5, time_shift=2.0,
                   generator=torch.Generator().manual_seed(0))
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(0.04)  # the ends stay; the interior moves to noise
    assert seen[2] > 1.0 - 2 * (1.0 - 0.04) / 4


# ---------------------------------------------------------------------------------------------- DiT^DH head


def _head_params_analytic(W: int, heads: int, depth: int, D: int, C: int, p: int, *, lightning: bool,
                          mlp_ratio: float = 4.0) -> int:
    """The head's parameters counted from its definition (repae.models.dh), not measured."""
    embed = C * p * p * W + W  # PatchEmbed conv
    project = D * W + W if D != W else 0  # trunk tokens -> head width
    attn = W * 3 * W + 3 * W + W * W + W  # qkv + proj (biases on)
    if lightning:  # RMSNorm scales, SwiGLU with inner int(2/3 * mlp_ratio * W)
        inner = int(2 / 3 * int(W * mlp_ratio))
        norms, ffn = 2 * W, W * 2 * inner + 2 * inner + inner * W + W
    else:  # affine-free LayerNorms, GELU MLP
        inner = int(W * mlp_ratio)
        norms, ffn = 0, W * inner + inner + inner * W + W
    ada = W * 6 * W + 6 * W
    final = (W if lightning else 0) + W * 2 * W + 2 * W + W * p * p * C + p * p * C
    return embed + project + depth * (norms + attn + ffn + ada) + final


def test_dit_dh_xl_head_parameter_count():
    """DiT^DH-XL (RAE sec. 5): LightningDiT-XL/1 trunk (1152 wide) + a 2-block, 2048-wide, 16-head head on
    DINOv2-B's [768, 16, 16] latent."""
    from repae.models import build_model

    cfg = load_config("imagenet-rae-dit-dh-xl")
    with torch.device("meta"):
        model = build_model(cfg.model.preset, input_size=16, in_channels=768, num_classes=1000,
                            head_depth=cfg.model.dh_depth, head_hidden_size=cfg.model.dh_width,
                            head_num_heads=cfg.model.dh_heads)
    mc = model.config
    counted = sum(p.numel() for p in model.head.parameters())
    assert counted == _head_params_analytic(mc.head_hidden_size, mc.head_num_heads, mc.head_depth, mc.hidden_size,
                                            mc.in_channels, mc.patch_size, lightning=True)
    assert not hasattr(model, "final_layer")  # the head replaces the trunk's final layer


def test_sit_head_parameter_count_and_forward():
    from repae.models import build_model

    model = build_model("SiT-T/1", input_size=4, in_channels=48, num_classes=10, z_dims=(16,), head_depth=2,
                        head_hidden_size=96, head_num_heads=4, encoder_depth=2)
    assert sum(p.numel() for p in model.head.parameters()) == _head_params_analytic(96, 4, 2, 64, 48, 1,
                                                                                     lightning=False)
    x, t, y = torch.randn(3, 48, 4, 4), torch.rand(3), torch.tensor([0, 1, 10])
    out = model(x, t, y, hidden_at=2)
    assert out.prediction.shape == (3, 48, 4, 4) and out.hidden.shape == (3, 16, 64)
    assert float(out.prediction.detach().abs().max()) == 0.0  # zero-initialised output, as the trunk's final layer
    assert model(x, t, y, hidden_at=1, stop_at_hidden=True).prediction is None
    with torch.no_grad():  # once trained, every head parameter takes part in the prediction
        for p in model.head.parameters():
            p.add_(0.01)
    model(x, t, y).prediction.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_dh_head_is_not_for_dit():
    from repae.models import build_model

    with pytest.raises(ConfigError, match="dh_depth"):
        build_model("DiT-T/1", input_size=4, in_channels=4, head_depth=2, head_hidden_size=64, head_num_heads=2)


# ------------------------------------------------------------------------------------------- width rule


def test_width_rule_is_a_one_line_error():
    from repae.training.builders import validate_config

    cfg = load_config("tiny-fmnist-rae-sit-dh", ["model.preset=SiT-T/1", "model.dh_depth=0"])
    with pytest.raises(ConfigError, match=r"64 wide but a latent token has 192 values") as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)
    validate_config(load_config("tiny-fmnist-rae-sit-dh", ["model.preset=SiT-T/1"]))  # the 384-wide head fits
    validate_config(load_config("tiny-fmnist-rae-sit-dh", ["model.preset=SiT-T/1", "model.dh_depth=0",
                                                           "model.check_width=false"]))


def test_time_shift_is_refused_for_ddpm():
    from repae.training.builders import validate_config

    cfg = load_config("tiny-fmnist", ["diffusion.time_shift=dimension", "model.preset=DiT-T/1"])
    with pytest.raises(ConfigError, match="DDPM"):
        validate_config(cfg)


# ------------------------------------------------------------------------------------------ RAE tokenizer


@pytest.fixture(scope="module")
def rae():
    from repae.encoders.rae import build_rae_tokenizer, rae_spec

    torch.manual_seed(0)
    tok = build_rae_tokenizer(rae_spec("repae-vit-t4", resolution=32, decoder="ViT-T"))
    return tok


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1


def test_rae_specs_from_the_registry():
    from repae.encoders.rae import rae_spec

    spec = rae_spec("dinov2-vit-b-reg", resolution=256, decoder="ViT-XL")  # RAE: 224 px input, patch 14
    assert (spec.latent_channels, spec.grid, spec.downsample_factor) == (768, 16, 16)
    assert spec.decoder_kwargs()["decoder_hidden_size"] == 1152 and spec.decoder_kwargs()["patch_size"] == 16
    spec = rae_spec("repae-vit-t4", resolution=32, decoder="ViT-T")
    assert (spec.latent_channels, spec.grid, spec.downsample_factor) == (192, 8, 4)


def test_rae_round_trip_shapes_and_encoder_tokens(rae):
    from repae.encoders import load_encoder

    x = _images()
    post = rae.encode(x)
    assert post.mean.shape == (4, 192, 8, 8) and rae.latent_shape(32) == (192, 8, 8)
    assert float(post.std.abs().max()) == 0.0 and torch.equal(post.sample(), post.mean)  # no posterior
    assert float(post.kl().abs().max()) == 0.0
    assert rae.decode(post.mean).shape == (4, 3, 32, 32)
    # the latent is the registry encoder's patch tokens (row-major grid), from float pixels
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    tokens = load_encoder("repae-vit-t4", resolution=32)(u8)  # [4, 64, 192]
    z = rae.encode(u8.float() / 127.5 - 1).mean
    assert torch.allclose(z.flatten(2).transpose(1, 2), tokens, atol=1e-4)
    with pytest.raises(ConfigError, match="decodes 32x32"):
        rae.latent_shape(64)


def test_no_gradient_reaches_the_encoder(rae):
    rae.zero_grad(set_to_none=True)
    rae.noise_augment = True
    rae.train()
    try:
        out = rae(_images())
        out.recon.abs().mean().backward()
    finally:
        rae.noise_augment = False
        rae.eval()
    encoder = rae.vae.encoder
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in rae.vae.decoder.parameters())
    rae.zero_grad(set_to_none=True)


def test_noise_augmentation_only_in_decoder_training(rae):
    x = _images()
    rae.train()
    assert float(rae.encode(x).std.abs().max()) == 0.0  # noise_augment off (a frozen-tokenizer recipe)
    rae.noise_augment = True
    try:
        with torch.no_grad():  # no graph: statistics, caches, hooks
            assert float(rae.encode(x).std.abs().max()) == 0.0
        draws = int(rae.vae.noise.draws)
        std = rae.encode(x).std[:, 0, 0, 0]  # [B] sigma_i * RMS of the latent
        assert int(rae.vae.noise.draws) == draws + 1
        rms = float((rae.normalizer.running_var + rae.normalizer.running_mean ** 2).mean().sqrt())
        assert bool((std >= 0).all()) and float(std.max()) <= 0.8 * rms
        assert len(set(std.tolist())) == 4  # one sigma per image
        rae.vae.noise.draws.fill_(draws)  # the counter (saved in checkpoints) makes the draws repeatable
        assert torch.equal(rae.encode(x).std[:, 0, 0, 0], std)
        rae.eval()
        assert float(rae.encode(x).std.abs().max()) == 0.0
    finally:
        rae.noise_augment = False
        rae.eval()


def test_rae_folder_round_trip_and_diffusers_decoder_keys(rae, tmp_path):
    from repae.encoders.rae import load_rae_tokenizer
    from repae.tokenizer.rae import RAE_CLASS, is_rae_folder

    with torch.no_grad():
        rae.normalizer.set_statistics(torch.linspace(-1, 1, 192), torch.linspace(0.5, 2, 192))
    rae.save_pretrained(tmp_path / "rae")
    assert is_rae_folder(tmp_path / "rae")
    assert json.loads((tmp_path / "rae" / "config.json").read_text())["_class_name"] == RAE_CLASS
    back = load_rae_tokenizer(tmp_path / "rae").eval()
    x = _images()
    z = rae.encode(x).mean
    assert torch.equal(back.encode(x).mean, z)
    assert torch.equal(back.decode(z), rae.decode(z))
    assert torch.equal(back.normalizer.running_var, rae.normalizer.running_var)
    # the decoder is diffusers' RAEDecoder (AutoencoderRAE's ``decoder``; AutoencoderRAE itself needs the
    # transformers package for its encoder, which repae does not install): the folder's decoder.* weights load
    # strictly into one built from the folder's config
    from diffusers.models.autoencoders.autoencoder_rae import RAEDecoder

    assert type(rae.vae.decoder) is RAEDecoder
    from safetensors.torch import load_file

    from repae.tokenizer.rae import read_rae_spec

    fresh = RAEDecoder(**read_rae_spec(tmp_path / "rae").decoder_kwargs())
    weights = load_file(str(tmp_path / "rae" / "diffusion_pytorch_model.safetensors"))
    fresh.load_state_dict({k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")}, strict=True)
    tokens = z.flatten(2).transpose(1, 2)
    assert torch.equal(fresh(tokens).logits, rae.vae.decoder(tokens).logits)


def test_rae_config_errors(tmp_path):
    from repae.training.builders import validate_config

    cases = [
        (["train.recipe=rae-decoder"], "tiny-fmnist", "set tokenizer.preset=rae"),
        (["train.recipe=repa-e"], "tiny-fmnist-rae", "cannot train an RAE"),
        (["lreg.kl_weight=1e-6"], "tiny-fmnist-rae", "lreg.kl_weight"),
        (["tokreg.se_weight=0.25"], "tiny-fmnist-rae", "tokreg"),
        (["tokenizer.rae_decoder=ViT-Q"], "tiny-fmnist-rae", "unknown RAE decoder"),
    ]
    for overrides, preset, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(load_config(preset, overrides))
    cfg = load_config("tiny-fmnist-rae")
    validate_config(cfg)
    cfg.tokenizer.rae_decoder = "ViT-S"  # a recorded architecture that the keys no longer describe
    with pytest.raises(ConfigError, match="another RAE"):
        validate_config(cfg)


def test_rae_decoder_recipe_trains_the_decoder_only(tmp_path):
    """Two `rae-decoder` steps: the encoder is bit-identical afterwards, the decoder moved, the latent
    statistics are the clean latents' and did not move, and the export is an RAE folder."""
    from repae.api import run_training
    from repae.encoders import load_encoder

    overrides = [f"train.output_dir={tmp_path}", "train.exp_name=dec", "train.max_steps=2", "train.batch_size=4",
                 "train.report_to=none", "tokenizer.stats_images=16", "train.sample_every=0",
                 "train.diagnostics_every=0", "train.html_report=false", "train.mixed_precision=no"]
    result = run_training("tiny-fmnist-rae", overrides=overrides, hooks=[])
    from repae.training.checkpoint import read_checkpoint

    models, _, _ = read_checkpoint(tmp_path / "dec")
    encoder = load_encoder("repae-vit-t4", resolution=32).state_dict()
    vae = models["vae"]
    assert all(torch.equal(vae[f"encoder.{k}"], v) for k, v in encoder.items())
    assert int(vae["noise.draws"]) == 2  # one augmented forward per step
    assert torch.equal(models["normalizer"]["running_mean"], models["ema.normalizer"]["running_mean"])
    assert int(models["normalizer"]["num_batches_tracked"]) == 0
    assert (result.exported / "config.json").is_file()
    from repae.tokenizer.rae import is_rae_folder

    assert is_rae_folder(result.exported)
    assert "load_rae_tokenizer" in (result.exported / "REPAE_EXPORT.md").read_text()


@pytest.mark.slow
def test_rae_presets_end_to_end(tmp_path, monkeypatch):
    """`repae train --config tiny-fmnist-rae` a few steps, then the generator preset on its export a few steps
    (DiT^DH head, time shift), then `repae sample` from it and `repae cache-latents` with the RAE folder."""
    from repae.cli import main

    monkeypatch.chdir(tmp_path)  # the generator preset reads runs/rae-fmnist/e2e-vae
    common = ["train.batch_size=8", "train.max_steps=3", "train.log_every=1", "train.checkpoint_every=3",
              "train.sample_every=3", "train.diagnostics_every=3", "sample.num_images=4", "sample.num_steps=2",
              "tokenizer.stats_images=32", "train.report_to=none"]
    assert main(["train", "--config", "tiny-fmnist-rae", *common]) == 0
    assert (tmp_path / "runs" / "rae-fmnist" / "e2e-vae" / "latent_stats.json").is_file()
    assert main(["train", "--config", "tiny-fmnist-rae-sit-dh", *common]) == 0
    run = tmp_path / "runs" / "rae-fmnist-sit-dh"
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"]["arch"]["_class_name"] == "RepresentationAutoencoder"
    assert config["diffusion"]["time_shift"] == "dimension" and config["model"]["dh_depth"] == 2
    assert (run / "samples" / "step-0000003.png").is_file()
    import repae

    gen = repae.load(run)
    assert gen.time_shift == pytest.approx(math.sqrt(3.0))
    assert gen([0, 1], seeds=[0, 1], num_steps=2).shape == (2, 3, 32, 32)
    assert main(["cache-latents", "--vae", "runs/rae-fmnist/e2e-vae", "--out", "latents", "--device", "cpu",
                 "--batch-size", "500"]) == 0
    meta = json.loads((tmp_path / "latents" / "meta.json").read_text())
    assert meta["latent_shape"] == [192, 8, 8] and meta["vae_preset"] == "rae"
    assert main(["train", "--config", "tiny-fmnist-rae-sit-dh", *common, "train.recipe=ldm", "data.latents=latents",
                 "train.exp_name=rae-ldm", "train.max_steps=2", "train.checkpoint_every=2", "train.sample_every=0",
                 "train.diagnostics_every=0"]) == 0
