"""Published checkpoints in and out: exact official key layouts, strict loading, time conventions, export.

The official layouts are spelled out here key by key, independently of ``repae.models.official``, from
the public code (REPA-E ``models/sit.py`` + ``generate.py``, REPA ``models/sit.py`` + ``utils.py``,
SiT ``models.py``, DiT ``models.py``, LightningDiT ``models/lightningdit.py`` + ``pos_embed.py`` +
``swiglu_ffn.py``). Random weights in those layouts are saved the way the official scripts save them
(``{model, ema, args, ...}`` with ``module.`` prefixes, or bare), loaded, exported back and compared.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from repae.errors import ConfigError
from repae.models.official import (
    KeyLayoutError,
    TimeFlipped,
    build_official_model,
    flip_time_convention_,
    load_official_file,
    load_official_weights,
    repae_to_official,
)

NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------
# the official layouts, key by key (shapes from the public model definitions)
# ---------------------------------------------------------------------------------------------


def _sit_block(prefix: str, D: int, *, qk_norm: bool = False, lightning: bool = False, heads: int = 2) -> dict:
    keys = {f"{prefix}.attn.qkv.weight": (3 * D, D), f"{prefix}.attn.qkv.bias": (3 * D,),
            f"{prefix}.attn.proj.weight": (D, D), f"{prefix}.attn.proj.bias": (D,),
            f"{prefix}.adaLN_modulation.1.weight": (6 * D, D), f"{prefix}.adaLN_modulation.1.bias": (6 * D,)}
    if qk_norm:  # timm Attention(qk_norm=True): LayerNorm(head_dim) with affine
        keys.update({f"{prefix}.attn.{n}_norm.{w}": (D // heads,) for n in "qk" for w in ("weight", "bias")})
    if lightning:  # RMSNorm(D) weights, SwiGLUFFN(D, int(2/3 * 4D)) w12 / w3
        hidden = int(2 / 3 * 4 * D)
        keys.update({f"{prefix}.norm1.weight": (D,), f"{prefix}.norm2.weight": (D,),
                     f"{prefix}.mlp.w12.weight": (2 * hidden, D), f"{prefix}.mlp.w12.bias": (2 * hidden,),
                     f"{prefix}.mlp.w3.weight": (D, hidden), f"{prefix}.mlp.w3.bias": (D,)})
    else:  # timm Mlp(D, 4D)
        keys.update({f"{prefix}.mlp.fc1.weight": (4 * D, D), f"{prefix}.mlp.fc1.bias": (4 * D,),
                     f"{prefix}.mlp.fc2.weight": (D, 4 * D), f"{prefix}.mlp.fc2.bias": (D,)})
    return keys


def official_shapes(layout: str, *, depth: int = 4, D: int = 64, C: int = 4, p: int = 1, grid: int = 8,
                    num_classes: int = NUM_CLASSES, z_dims=(), heads: int = 2, qk_norm: bool = False,
                    learn_sigma: bool | None = None, legacy_encoder_depth: int | None = None) -> dict:
    """{key: shape} of an official checkpoint's network entry."""
    if learn_sigma is None:
        learn_sigma = layout in ("sit", "dit")
    out_c = 2 * C if learn_sigma else C
    T = grid * grid
    keys = {"x_embedder.proj.weight": (D, C, p, p), "x_embedder.proj.bias": (D,),
            "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
            "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
            "y_embedder.embedding_table.weight": (num_classes + 1, D), "pos_embed": (1, T, D),
            "final_layer.linear.weight": (p * p * out_c, D), "final_layer.linear.bias": (p * p * out_c,),
            "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,)}
    for i in range(depth):
        prefix = f"blocks.{i}"
        if legacy_encoder_depth is not None and i >= legacy_encoder_depth:
            prefix = f"decoder_blocks.{i - legacy_encoder_depth}"
        keys.update(_sit_block(prefix, D, qk_norm=qk_norm, lightning=layout == "lightningdit", heads=heads))
    for k, z in enumerate(z_dims):  # REPA build_mlp(D, 2048, z)
        keys.update({f"projectors.{k}.0.weight": (2048, D), f"projectors.{k}.0.bias": (2048,),
                     f"projectors.{k}.2.weight": (2048, 2048), f"projectors.{k}.2.bias": (2048,),
                     f"projectors.{k}.4.weight": (z, 2048), f"projectors.{k}.4.bias": (z,)})
    if layout == "repa-e":  # BatchNorm2d(C, affine=False) inside the SiT
        keys.update({"bn.running_mean": (C,), "bn.running_var": (C,), "bn.num_batches_tracked": ()})
    if layout == "lightningdit":  # VisionRotaryEmbeddingFast(head_dim / 2, grid) buffers; RMSNorm final norm
        keys.update({"feat_rope.freqs_cos": (T, D // heads), "feat_rope.freqs_sin": (T, D // heads),
                     "final_layer.norm_final.weight": (D,)})
    return keys


def random_state(shapes: dict, seed: int = 0, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if device == "meta":
            out[k] = torch.empty(shape, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked")
                                 else torch.float32)
        elif k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1234, dtype=torch.int64)
        elif k == "bn.running_var":
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.05
    return out


def save_training_checkpoint(path, model_sd, ema_sd, **extra):
    """As train_repae.py / REPA train.py save: {model, ema, opt, args, steps}, here with DDP prefixes on ema."""
    torch.save({"model": model_sd, "ema": {f"module.{k}": v for k, v in ema_sd.items()},
                "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "args": argparse.Namespace(model="SiT-T/1", enc_type="dinov2-vit-b"), "steps": 7, **extra}, path)


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:6]
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


CASES = {
    # layout, preset, official_shapes kwargs
    "repa-e": ("repa-e", "SiT-T/1", dict(z_dims=(32,))),
    "repa": ("repa", "SiT-T/1", dict(z_dims=(32, 16))),
    "repa-legacy": ("repa", "SiT-T/1", dict(z_dims=(32,), legacy_encoder_depth=2)),
    "repa-qknorm-p2": ("repa", "SiT-T/2", dict(z_dims=(32,), qk_norm=True, p=2, grid=4)),
    "sit": ("sit", "SiT-T/1", {}),
    "sit-p2": ("sit", "SiT-T/2", dict(p=2, grid=4)),
    "dit": ("dit", "DiT-T/2", dict(p=2, grid=4)),
    "dit-no-sigma": ("dit", "DiT-T/1", dict(learn_sigma=False)),
    "lightningdit": ("lightningdit", "LightningDiT-T/1", {}),
    "lightningdit-sigma": ("lightningdit", "LightningDiT-T/1", dict(learn_sigma=True)),
}


# ---------------------------------------------------------------------------------------------
# round trips: official file -> repae network -> official layout, identical tensors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_training_checkpoint(case, tmp_path):
    layout, preset, kw = CASES[case]
    shapes = official_shapes(layout, **kw)
    live, ema = random_state(shapes, seed=1), random_state(shapes, seed=2)
    path = tmp_path / "ckpt.pt"
    save_training_checkpoint(path, live, ema)
    for use_ema, want in ((True, ema), (False, live)):
        model, info = build_official_model(load_official_file(path), preset, num_classes=NUM_CLASSES, ema=use_ema)
        assert info.layout == layout and info.entry == ("ema" if use_ema else "model")
        back = repae_to_official(model.state_dict(), info.layout, extras=info.extras)
        assert_same(back, want)


@pytest.mark.parametrize("case", ["repa-e", "sit", "dit", "lightningdit"])
def test_round_trip_bare_and_safetensors(case, tmp_path):
    from safetensors.torch import save_file

    layout, preset, kw = CASES[case]
    sd = random_state(official_shapes(layout, **kw), seed=3)
    torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, tmp_path / "bare.pt")  # compiled, bare (SiT/DiT release)
    save_file({f"ema.{k}": v.contiguous() for k, v in sd.items()}, str(tmp_path / "ckpt.safetensors"))
    for name in ("bare.pt", "ckpt.safetensors"):
        model, info = build_official_model(load_official_file(tmp_path / name), preset, num_classes=NUM_CLASSES)
        assert info.layout == layout
        assert_same(repae_to_official(model.state_dict(), layout, extras=info.extras), sd)


@pytest.mark.parametrize("layout,preset,kw", [
    ("repa-e", "SiT-XL/2", dict(depth=28, D=1152, heads=16, p=2, grid=16, num_classes=1000, z_dims=(768,))),
    ("repa-e", "SiT-XL/1", dict(depth=28, D=1152, heads=16, p=1, grid=16, C=32, num_classes=1000, z_dims=(768,))),
    ("sit", "SiT-XL/2", dict(depth=28, D=1152, heads=16, p=2, grid=16, num_classes=1000)),
    ("dit", "DiT-XL/2", dict(depth=28, D=1152, heads=16, p=2, grid=16, num_classes=1000)),
    ("lightningdit", "LightningDiT-XL/1", dict(depth=28, D=1152, heads=16, p=1, grid=16, C=32, num_classes=1000)),
])
def test_published_sizes_match_on_meta(layout, preset, kw):
    """SiT-XL / DiT-XL / LightningDiT-XL checkpoints of the exact published layout fit the presets (no memory)."""
    sd = random_state(official_shapes(layout, **kw), device="meta")
    model, info = build_official_model(sd, preset, num_classes=1000, device="meta")
    assert info.layout == layout and info.architecture["input_size"] == kw["grid"] * kw["p"]
    assert next(model.parameters()).is_meta


# ---------------------------------------------------------------------------------------------
# strictness
# ---------------------------------------------------------------------------------------------


def test_renamed_key_is_named(tmp_path):
    sd = random_state(official_shapes("repa-e", z_dims=(32,)))
    sd["blocks.1.attn.qkv_renamed.weight"] = sd.pop("blocks.1.attn.qkv.weight")
    with pytest.raises(KeyLayoutError) as err:
        build_official_model({"ema": sd}, "SiT-T/1", num_classes=NUM_CLASSES)
    msg = str(err.value)
    assert "'blocks.1.attn.qkv.weight'" in msg and "'blocks.1.attn.qkv_renamed.weight'" in msg
    assert "missing" in msg and "unexpected" in msg and "\n" not in msg


def test_missing_extra_and_misshapen_keys_are_named():
    base = random_state(official_shapes("sit"))
    sd = dict(base)
    del sd["blocks.3.mlp.fc2.bias"]
    with pytest.raises(KeyLayoutError, match=r"1 missing key\(s\) 'blocks.3.mlp.fc2.bias'"):
        build_official_model(sd, "SiT-T/1", num_classes=NUM_CLASSES)
    sd = dict(base, **{"blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(KeyLayoutError, match="unexpected key.*'blocks.0.extra.weight'"):
        build_official_model(sd, "SiT-T/1", num_classes=NUM_CLASSES)
    sd = dict(base, **{"t_embedder.mlp.2.bias": torch.zeros(3)})
    with pytest.raises(KeyLayoutError, match=r"wrong shape.*'t_embedder.mlp.2.bias' \(3,\) vs \(64,\)"):
        build_official_model(sd, "SiT-T/1", num_classes=NUM_CLASSES)


def test_wrong_preset_and_classes_name_the_fix():
    sd = random_state(official_shapes("sit", p=2, grid=4))
    with pytest.raises(ConfigError, match="pass --model SiT-T/2"):
        build_official_model(sd, "SiT-T/1", num_classes=NUM_CLASSES)
    with pytest.raises(ConfigError, match="--num-classes 10"):
        build_official_model(sd, "SiT-T/2", num_classes=1000)
    light = random_state(official_shapes("lightningdit"))
    with pytest.raises(ConfigError, match="LightningDiT"):
        build_official_model(light, "SiT-T/1", num_classes=NUM_CLASSES)


class _Payload:
    """Unpickling this object would run code (it writes ``marker``)."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('x')",))


class _Config:
    """A pickled object of a type torch does not allow (e.g. an OmegaConf config): must load as inert data."""

    def __init__(self):
        self.lr = 1e-4


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    payload = _Payload()
    payload.marker = str(marker)
    sd = random_state(official_shapes("repa", z_dims=(32,)))
    torch.save({"ema": sd, "payload": payload, "config": _Config(), "args": argparse.Namespace(a=1)},
               tmp_path / "evil.pt")
    obj = load_official_file(tmp_path / "evil.pt")
    assert not marker.exists()
    assert isinstance(obj["args"], argparse.Namespace) and "inert" in repr(obj["payload"])
    model, info = build_official_model(obj, "SiT-T/1", num_classes=NUM_CLASSES)
    assert info.entry == "ema" and torch.equal(model.state_dict()["pos_embed"], sd["pos_embed"])
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# time conventions
# ---------------------------------------------------------------------------------------------


def _official_euler(net, x, y, steps, *, transport: bool):
    """The official fixed-step Euler loops: REPA/REPA-E t 1 -> 0; SiT/LightningDiT transport s 0 -> 1."""
    x = x.double()
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64) if transport else \
        torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    for a, b in zip(grid[:-1], grid[1:]):
        t = torch.full((x.shape[0],), float(a))
        v = net(x.float(), t, y).prediction.double()
        x = x + (b - a) * v
    return x.float()


@pytest.mark.parametrize("case", ["repa-e", "sit", "lightningdit"])
def test_sampling_matches_the_official_loop(case, tmp_path):
    from repae.sampling.official import generator_from_official
    from repae.tokenizer.tokenizer import Tokenizer

    layout, preset, kw = CASES[case]
    sd = random_state(official_shapes(layout, **kw), seed=5)
    torch.save({"ema": sd}, tmp_path / "c.pt")
    tok_dir = Tokenizer.from_preset("tiny-f4d4").save_pretrained(tmp_path / "tok")
    gen = generator_from_official(tmp_path / "c.pt", model_preset=preset, vae=tok_dir, resolution=32,
                                  num_classes=NUM_CLASSES, stats=(torch.zeros(4), torch.ones(4)))
    assert isinstance(gen.model, TimeFlipped) == (layout != "repa-e")
    net, _ = build_official_model({"ema": sd}, preset, num_classes=NUM_CLASSES)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 7])
    ours = gen.latents(y, sampler="euler", num_steps=5, noise=noise)
    ref = _official_euler(net.eval(), noise, y, 5, transport=layout != "repa-e")
    assert ref.abs().mean() > 0.1  # the random network moves the state
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_weight_space_time_flip_matches_wrapper():
    sd = random_state(official_shapes("lightningdit"), seed=6)
    net, _ = build_official_model(sd, "LightningDiT-T/1", num_classes=NUM_CLASSES)
    net.eval()
    wrapped = TimeFlipped(net)
    x, y, t = torch.randn(3, 4, 8, 8), torch.tensor([0, 3, 9]), torch.tensor([0.0, 0.37, 1.0])
    want = wrapped(x, t, y).prediction
    import copy

    flipped = flip_time_convention_(copy.deepcopy(net))
    torch.testing.assert_close(flipped(x, t, y).prediction, want, atol=1e-5, rtol=1e-4)
    twice = flip_time_convention_(copy.deepcopy(flipped))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(twice.state_dict()[k], v, atol=1e-6, rtol=1e-5)


def test_load_official_weights_for_init_from(tmp_path):
    from repae.models import build_model

    sd = random_state(official_shapes("repa", z_dims=(32,)), seed=8)
    save_training_checkpoint(tmp_path / "c.pt", sd, sd)
    narrow = build_model("SiT-T/1", input_size=8, in_channels=4, num_classes=NUM_CLASSES, z_dims=(32,),
                         projector_dim=256)
    with pytest.raises(KeyLayoutError, match=r"projectors.0.0.bias' \(2048,\) vs \(256,\)"):
        load_official_weights(narrow, tmp_path / "c.pt")  # a narrowed head vs the official 2048
    model = build_model("SiT-T/1", input_size=8, in_channels=4, num_classes=NUM_CLASSES, z_dims=(32,))
    info = load_official_weights(model, tmp_path / "c.pt")
    assert info.layout == "repa" and torch.equal(model.state_dict()["blocks.2.mlp.fc1.weight"],
                                                 sd["blocks.2.mlp.fc1.weight"])
    other = build_model("SiT-T/1", input_size=8, in_channels=4, num_classes=NUM_CLASSES, z_dims=(16,))
    with pytest.raises(KeyLayoutError, match="projectors.0.4"):
        load_official_weights(other, tmp_path / "c.pt")


# ---------------------------------------------------------------------------------------------
# generators from official files: VAE and statistics
# ---------------------------------------------------------------------------------------------


def test_repae_training_checkpoint_carries_vae_and_bn(tmp_path):
    from repae.sampling.official import generator_from_official
    from repae.tokenizer.convert import diffusers_to_ldm
    from repae.tokenizer.tokenizer import Tokenizer

    shapes = official_shapes("repa-e", z_dims=(32,))
    live, ema = random_state(shapes, seed=1), random_state(shapes, seed=2)
    src = Tokenizer.from_preset("tiny-f4d4")
    vae_ldm = diffusers_to_ldm(src.vae.state_dict(), src.config)  # REPA-E models/autoencoder.py layout
    save_training_checkpoint(tmp_path / "0000007.pt", live, ema, vae=vae_ldm,
                             discriminator={"main.0.weight": torch.zeros(1)})
    gen = generator_from_official(tmp_path / "0000007.pt", model_preset="SiT-T/1", vae_preset="tiny-f4d4",
                                  resolution=32, num_classes=NUM_CLASSES)
    assert_same(gen.tokenizer.vae.state_dict(), src.vae.state_dict())
    assert torch.equal(gen.tokenizer.normalizer.running_var, ema["bn.running_var"])  # EMA BN, like generate.py
    assert torch.equal(gen.tokenizer.normalizer.running_mean, ema["bn.running_mean"])
    assert "bn.running_var" in gen.official_stats.source and gen.sample_defaults.sampler == "euler-maruyama"
    live_gen = generator_from_official(tmp_path / "0000007.pt", model_preset="SiT-T/1", vae_preset="tiny-f4d4",
                                       resolution=32, num_classes=NUM_CLASSES, ema=False)
    assert torch.equal(live_gen.tokenizer.normalizer.running_var, live["bn.running_var"])


def test_statistics_defaults_and_files(tmp_path):
    from repae.sampling.official import generator_from_official
    from repae.tokenizer.stats import save_stats
    from repae.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.from_preset("tiny-f4d4")
    torch.save(tok.vae.state_dict(), tmp_path / "vae.pt")  # a VAE weights file, diffusers keys
    dit = random_state(official_shapes("dit", p=2, grid=4), seed=4)
    torch.save(dit, tmp_path / "dit.pt")
    gen = generator_from_official(tmp_path / "dit.pt", model_preset="DiT-T/2", vae=tmp_path / "vae.pt",
                                  vae_preset="tiny-f4d4", resolution=32, num_classes=NUM_CLASSES)
    torch.testing.assert_close(gen.tokenizer.normalizer.running_var, torch.full((4,), (1 / 0.18215) ** 2))
    assert gen.sample_defaults.sampler == "ddpm" and gen.model.objective_kind == "ddpm"
    images = gen(torch.tensor([2]), sampler="ddim", num_steps=2, seeds=[0])
    assert images.shape == (1, 3, 32, 32) and images.dtype == torch.uint8
    # LightningDiT: no default; a sidecar *-latents-stats.pt next to the VAE file is used, --stats wins
    light = random_state(official_shapes("lightningdit"), seed=4)
    torch.save({"ema": light}, tmp_path / "light.pt")
    with pytest.raises(ConfigError, match="--stats"):
        generator_from_official(tmp_path / "light.pt", model_preset="LightningDiT-T/1", vae=tmp_path / "vae.pt",
                                vae_preset="tiny-f4d4", resolution=32, num_classes=NUM_CLASSES)
    save_stats(tmp_path / "vae-latents-stats.pt", torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1., 2., 3., 4.]))
    gen = generator_from_official(tmp_path / "light.pt", model_preset="LightningDiT-T/1", vae=tmp_path / "vae.pt",
                                  vae_preset="tiny-f4d4", resolution=32, num_classes=NUM_CLASSES)
    torch.testing.assert_close(gen.tokenizer.normalizer.running_var, torch.tensor([1., 4., 9., 16.]))
    assert gen.official_stats.source.endswith("vae-latents-stats.pt")
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.full((1, 4, 1, 1), 2.0)}, tmp_path / "latents_stats.pt")
    gen = generator_from_official(tmp_path / "light.pt", model_preset="LightningDiT-T/1", vae=tmp_path / "vae.pt",
                                  vae_preset="tiny-f4d4", resolution=32, num_classes=NUM_CLASSES,
                                  stats=tmp_path / "latents_stats.pt")
    torch.testing.assert_close(gen.tokenizer.normalizer.running_var, torch.full((4,), 4.0))
    with pytest.raises(ConfigError, match="expect 4x8x8 latents"):
        generator_from_official(tmp_path / "light.pt", model_preset="LightningDiT-T/1", vae=tmp_path / "vae.pt",
                                vae_preset="tiny-f4d4", resolution=64, num_classes=NUM_CLASSES,
                                stats=tmp_path / "latents_stats.pt")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_sample_official_file(tmp_path, monkeypatch, capsys):
    from repae.cli import main
    from repae.sampling.generator import sample_labels, sample_seeds
    from repae.sampling.official import generator_from_official
    from repae.tokenizer.stats import save_stats
    from repae.tokenizer.tokenizer import Tokenizer

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    sd = random_state(official_shapes("sit"), seed=9)
    torch.save(sd, tmp_path / "SiT-T-1.pt")
    tok_dir = Tokenizer.from_preset("tiny-f4d4").save_pretrained(tmp_path / "tok")
    save_stats(tmp_path / "e2e-latents-stats.pt", torch.tensor([0.0, 0.1, -0.1, 0.2]), torch.tensor([1., .5, 2., 1.]))
    out = tmp_path / "s.npz"
    argv = ["sample", "--checkpoint", str(tmp_path / "SiT-T-1.pt"), "--model", "SiT-T/1", "--vae", str(tok_dir),
            "--stats", str(tmp_path / "e2e-latents-stats.pt"), "--resolution", "32", "--num-classes", "10",
            "--num-samples", "3", "--batch-size", "2", "--sampler", "euler", "--num-steps", "3",
            "--out-npz", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sit layout" in printed and "e2e-latents-stats.pt" in printed
    with np.load(out) as f:
        arr, labels = f["arr_0"], f["labels"]
    assert arr.shape == (3, 32, 32, 3) and arr.dtype == np.uint8
    gen = generator_from_official(tmp_path / "SiT-T-1.pt", model_preset="SiT-T/1", vae=tok_dir, resolution=32,
                                  num_classes=10, stats=tmp_path / "e2e-latents-stats.pt")
    labels3 = sample_labels(3, 0, 10)
    want = torch.cat([gen(labels3[idx], seeds=sample_seeds(0, idx), sampler="euler", num_steps=3)
                      for idx in ([0, 1], [2])])  # the CLI's batches of 2
    np.testing.assert_array_equal(arr, want.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(labels, sample_labels(3, 0, 10).numpy())
    # a file without --model: one line naming the fix (and the preset the weights look like)
    assert main(argv[:3] + argv[5:]) == 2
    assert "--model SiT-T/1" in capsys.readouterr().err


def test_cli_official_flags_rejected_for_run_folders(tmp_path, capsys):
    from repae.cli import main

    (tmp_path / "run").mkdir()
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--model", "SiT-T/1", "--out-npz",
                 str(tmp_path / "x.npz"), "--device", "cpu"]) == 2
    assert "--model apply to official checkpoint files" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# export: a repae run in the official layouts
# ---------------------------------------------------------------------------------------------


def _fake_run(tmp_path, preset: str, *, z_dims=(32,)):
    """A repae run folder with one checkpoint (random, non-trivial weights; no training)."""
    from repae.config import RunConfig
    from repae.training.builders import build_sit_for, build_tokenizer_arch
    from repae.training.checkpoint import save_checkpoint

    cfg = RunConfig()
    cfg.model.preset, cfg.model.num_classes, cfg.data.resolution = preset, NUM_CLASSES, 32
    cfg.tokenizer.preset = "tiny-f4d4"
    cfg.sample.sampler = "ddpm" if preset.startswith("DiT-") else "euler"
    g = torch.Generator().manual_seed(0)
    tok = build_tokenizer_arch(cfg)
    models = {"vae": tok.vae.state_dict()}
    for group, seed in (("sit", 1), ("ema.model", 2)):
        net = build_sit_for(cfg, tok, z_dims=z_dims)
        models[group] = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and
                             k != "pos_embed" and not k.startswith("feat_rope") else v)
                         for k, v in net.state_dict().items()}
    for group, scale in (("normalizer", 1.0), ("ema.normalizer", 2.0)):
        models[group] = {"running_mean": torch.full((4,), 0.1 * scale), "running_var": torch.full((4,), scale),
                         "num_batches_tracked": torch.tensor(10, dtype=torch.int64)}
    run = tmp_path / "run"
    save_checkpoint(run, 7, models=models, optimizers={},
                    state={"step": 7, "config": cfg.to_dict(), "z_dims": list(z_dims), "recipe": "repa-e"})
    return run, models


def test_export_official_layout_round_trips(tmp_path, capsys):
    import json

    from repae.cli import main
    from repae.sampling.generator import Generator
    from repae.sampling.official import generator_from_official
    from repae.tokenizer.stats import load_stats
    from repae.tokenizer.tokenizer import Tokenizer

    run, models = _fake_run(tmp_path, "SiT-T/1")
    out = tmp_path / "exp"
    assert main(["export", str(run), "--out", str(out)]) == 0
    ckpt_path = out / "checkpoints" / "0000007.pt"
    assert str(ckpt_path) in capsys.readouterr().out
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(ckpt) == {"model", "ema", "vae", "steps"} and ckpt["steps"] == 7
    layout_keys = set(official_shapes("repa-e", z_dims=(32,)))
    assert set(ckpt["ema"]) == layout_keys and set(ckpt["model"]) == layout_keys  # the exact REPA-E layout
    assert torch.equal(ckpt["ema"]["bn.running_var"], models["ema.normalizer"]["running_var"])
    assert torch.equal(ckpt["model"]["bn.running_var"], models["normalizer"]["running_var"])
    args = json.loads((out / "args.json").read_text())
    assert args["model"] == "SiT-T/1" and args["vae"] == "tiny-f4d4" and args["resolution"] == 32
    # the exported files sample exactly like the run
    ours = Generator.from_checkpoint(run)
    theirs = generator_from_official(ckpt_path, model_preset="SiT-T/1", vae_preset="tiny-f4d4", resolution=32,
                                     num_classes=NUM_CLASSES)
    y, seeds = torch.tensor([1, 4]), [3, 5]
    assert torch.equal(ours(y, seeds=seeds, sampler="euler-maruyama", num_steps=3),
                       theirs(y, seeds=seeds, sampler="euler-maruyama", num_steps=3))
    vae = Tokenizer.from_preset("tiny-f4d4")
    vae.load_vae_weights(out / "e2e-vae" / "e2e-vae.pt")
    assert_same(vae.vae.state_dict(), models["vae"])
    mean, std = load_stats(out / "e2e-vae" / "e2e-vae-latents-stats.pt")
    torch.testing.assert_close(std, models["ema.normalizer"]["running_var"].sqrt())
    torch.testing.assert_close(mean, models["ema.normalizer"]["running_mean"])
    # diffusers format: an AutoencoderKL folder with the EMA statistics
    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--format", "diffusers"]) == 0
    tok = Tokenizer.from_pretrained(tmp_path / "hf" / "e2e-vae-hf")
    assert_same(tok.vae.state_dict(), models["vae"])
    assert torch.equal(tok.normalizer.running_var, models["ema.normalizer"]["running_var"])


@pytest.mark.parametrize("preset,layout", [("DiT-T/1", "dit"), ("LightningDiT-T/1", "lightningdit")])
def test_export_other_families(tmp_path, preset, layout):
    from repae.sampling.generator import Generator
    from repae.sampling.official import export_official, generator_from_official

    run, models = _fake_run(tmp_path, preset)
    written = export_official(run, tmp_path / "exp")
    ckpt = torch.load(written["checkpoint"], weights_only=True)
    assert set(ckpt) == {"model", "ema", "steps"}  # no VAE inside: DiT / LightningDiT keep it apart
    assert set(ckpt["ema"]) == set(official_shapes(layout))  # official layout (projectors dropped)
    ours = Generator.from_checkpoint(run)
    theirs = generator_from_official(written["checkpoint"], model_preset=preset, vae=written["vae"],
                                     vae_preset="tiny-f4d4", resolution=32, num_classes=NUM_CLASSES)
    assert theirs.official.layout == layout
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.9]), torch.tensor([1, 2])
    if layout == "dit":
        t = t * 999
    with torch.no_grad():
        want = ours.model.eval()(x, t, y).prediction
        got = theirs.model.eval()(x, t, y).prediction
    tol = 0.0 if layout == "dit" else 1e-5  # LightningDiT: exported in its own time convention, read back
    torch.testing.assert_close(got, want, atol=tol, rtol=tol * 10)
    assert math.isclose(float(theirs.tokenizer.normalizer.running_var[0]), 2.0, rel_tol=1e-6)  # sidecar (EMA)


def test_cli_passes_no_official_arguments_for_run_folders(tmp_path, monkeypatch, capsys):
    """A repae run is loaded exactly as before: load_generator(path, ema=..., device=...) and nothing else."""
    import repae.cli.evaluate as evaluate_cli
    import repae.cli.sample as sample_cli
    from repae.cli import main
    from repae.cli.common import official_kwargs

    calls = []

    class Stop(Exception):
        pass

    def fake(path, *, ema, device, **kw):
        calls.append(kw)
        raise Stop

    monkeypatch.setattr(sample_cli, "load_generator", fake)
    monkeypatch.setattr(evaluate_cli, "load_generator", fake)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(Stop):
        sample_cli.run(argparse.Namespace(**{**_parse("sample", ["--checkpoint", "runs/x", "--out-npz", "a.npz"])}))
    assert calls == [{}]
    assert official_kwargs(argparse.Namespace(model_preset="SiT-XL/2", vae=None, resolution=None)) == {
        "model_preset": "SiT-XL/2"}
    for verb in ("export", "sample", "evaluate"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
    assert "--format" in capsys.readouterr().out


def _parse(verb: str, argv: list[str]) -> dict:
    import importlib

    from repae.cli import VERBS

    parser = argparse.ArgumentParser()
    importlib.import_module(VERBS[verb][0]).add_arguments(parser)
    return vars(parser.parse_args(argv + ["--device", "cpu"]))
