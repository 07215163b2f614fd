"""Tests for repae.models (SiT): init, shapes, hidden/stop semantics, projectors, presets, counts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from repae.errors import ConfigError
from repae.models import SIT_PRESETS, SiT, SiTConfig, build_sit, sit_config
from repae.models.layers import Attention, TimestepEmbedder, sincos_pos_embed_2d

TINY = ["SiT-T/1", "SiT-T/2"]


def _tiny(name="SiT-T/2", **kw) -> SiT:
    torch.manual_seed(0)
    kw = {"input_size": 8, "in_channels": 4, "num_classes": 10, **kw}
    return build_sit(name, **kw)


def _randomise(model: SiT, std: float = 0.05) -> SiT:
    """Perturb every parameter so blocks stop being the identity (zero-init hides bugs)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def _inputs(model: SiT, B: int = 3):
    g = torch.Generator().manual_seed(2)
    c = model.config
    x = torch.randn(B, c.in_channels, c.input_size, c.input_size, generator=g)
    t = torch.rand(B, generator=g)
    y = torch.randint(0, c.num_classes + 1, (B,), generator=g)
    return x, t, y


# ------------------------------------------------------------------------------------------------
# Init, shapes, gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_output_exactly_zero_at_init_and_shapes(name):
    model = _tiny(name, z_dims=(16,))
    x, t, y = _inputs(model)
    out = model(x, t, y, hidden_at=2)
    assert out.prediction.shape == x.shape
    assert torch.equal(out.prediction, torch.zeros_like(x))
    T = (8 // SIT_PRESETS[name]["patch_size"]) ** 2
    assert out.hidden.shape == (3, T, 64) and model.num_tokens == T
    # every block is the identity at init: hidden = patch embed + pos embed
    torch.testing.assert_close(out.hidden, model.x_embedder(x) + model.pos_embed)


@pytest.mark.parametrize("name", TINY)
def test_forward_backward(name):
    model = _randomise(_tiny(name, z_dims=(16,)))
    x, t, y = _inputs(model)
    out = model(x, t, y, hidden_at=2)
    loss = out.prediction.square().mean() + model.project(out.hidden)[0].square().mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.projectors[0][0].weight.grad.abs().sum() > 0


def test_backward_at_init_reaches_zero_initialised_head():
    model = _tiny()
    x, t, y = _inputs(model)
    model(x, t, y).prediction.sub(1).square().mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_output_depends_on_t_and_y():
    model = _randomise(_tiny())
    x, t, y = _inputs(model)
    base = model(x, t, y).prediction
    assert not torch.allclose(base, model(x, t.flip(0) * 0.5, y).prediction)
    assert not torch.allclose(base, model(x, t, (y + 1) % 11).prediction)
    # a scalar time is broadcast over the batch
    torch.testing.assert_close(model(x, torch.tensor(0.3), y).prediction, model(x, torch.full((3,), 0.3), y).prediction)


def test_qk_norm_variant_runs():
    model = _randomise(_tiny(qk_norm=True))
    assert isinstance(model.blocks[0].attn.q_norm, torch.nn.LayerNorm)
    x, t, y = _inputs(model)
    assert torch.isfinite(model(x, t, y).prediction).all()


# ------------------------------------------------------------------------------------------------
# hidden_at / stop_at_hidden / projectors
# ------------------------------------------------------------------------------------------------


def test_hidden_at_and_stop_at_hidden_equivalence():
    model = _randomise(_tiny(z_dims=(16,)))
    x, t, y = _inputs(model)
    calls = []
    model.final_layer.register_forward_hook(lambda *a: calls.append("final"))
    model.blocks[3].register_forward_hook(lambda *a: calls.append("block4"))
    full = model(x, t, y, hidden_at=2)
    assert calls == ["block4", "final"]
    calls.clear()
    stopped = model(x, t, y, hidden_at=2, stop_at_hidden=True)
    assert calls == []  # blocks 3..4 and the final layer were skipped
    assert stopped.prediction is None
    torch.testing.assert_close(stopped.hidden, full.hidden, rtol=0, atol=0)
    # no hidden asked -> None, prediction unchanged
    plain = model(x, t, y)
    assert plain.hidden is None
    torch.testing.assert_close(plain.prediction, full.prediction, rtol=0, atol=0)
    # hidden after the last block feeds the final layer
    last = model(x, t, y, hidden_at=4)
    c = model.t_embedder(t) + model.y_embedder(y)
    torch.testing.assert_close(model.unpatchify(model.final_layer(last.hidden, c)), full.prediction)
    # hidden after block k equals running the first k blocks by hand
    h = model.x_embedder(x) + model.pos_embed
    for blk in model.blocks[:2]:
        h = blk(h, c)
    torch.testing.assert_close(full.hidden, h)


def test_hidden_at_validation():
    model = _tiny()
    x, t, y = _inputs(model)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="1..4"):
            model(x, t, y, hidden_at=bad)
    with pytest.raises(ValueError, match="hidden_at"):
        model(x, t, y, stop_at_hidden=True)


def test_projector_shapes_and_architecture():
    model = _tiny(z_dims=(16, 24))
    x, t, y = _inputs(model)
    hidden = model(x, t, y, hidden_at=2, stop_at_hidden=True).hidden
    outs = model.project(hidden)
    assert [o.shape for o in outs] == [(3, 16, 16), (3, 16, 24)]
    proj = model.projectors[0]
    assert [type(m).__name__ for m in proj] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    # every preset uses the paper's 2048-wide head (spec 2.5); model.projector_dim narrows it
    assert (proj[0].in_features, proj[0].out_features, proj[2].out_features) == (64, 2048, 2048)
    assert SiTConfig.projector_dim == 2048
    narrow = _tiny(z_dims=(16,), projector_dim=256).projectors[0]
    assert (narrow[0].out_features, narrow[2].out_features) == (256, 256)
    assert _tiny().project(hidden) == []


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------


def test_label_drop_probabilities():
    model = _tiny()
    y = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.y_embedder.drop(y, 0.0), y, rtol=0, atol=0)
    assert (model.y_embedder.drop(y, 1.0) == 10).all()
    dropped = model.drop_labels(y, generator=torch.Generator().manual_seed(1))  # p = 0.1
    frac = (dropped == 10).float().mean().item()
    assert abs(frac - 0.1) < 0.02
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])
    again = model.drop_labels(y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(dropped, again)
    # explicit, not driven by module.training
    model.eval()
    assert (model.y_embedder.drop(y, 1.0) == 10).all()
    assert model.y_embedder.embedding_table.num_embeddings == 11


def test_no_null_row_without_dropout():
    model = _tiny(class_dropout_prob=0.0)
    assert model.y_embedder.embedding_table.num_embeddings == 10
    y = torch.arange(10)
    assert torch.equal(model.drop_labels(y), y)
    with pytest.raises(ConfigError, match="class_dropout_prob"):
        model.y_embedder.drop(y, 0.5)


# ------------------------------------------------------------------------------------------------
# Embeddings and layers against analytic answers
# ------------------------------------------------------------------------------------------------


def test_pos_embed_column_first():
    D, G = 16, 4
    pe = sincos_pos_embed_2d(D, G)
    assert pe.shape == (G * G, D) and pe.dtype == torch.float32
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))
    for r, c in [(0, 1), (2, 3), (3, 0)]:
        row = pe[r * G + c].double()
        expect = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)])
        torch.testing.assert_close(row, expect.float().double())
    model = _tiny()
    torch.testing.assert_close(model.pos_embed[0], sincos_pos_embed_2d(64, 4), rtol=0, atol=0)
    assert "pos_embed" not in dict(model.named_parameters())


def test_timestep_features_unscaled_cos_first():
    t = torch.tensor([0.0, 0.25, 1.0])
    f = TimestepEmbedder.frequency_features(t, 256)
    assert f.shape == (3, 256)
    torch.testing.assert_close(f[:, 0], torch.cos(t))  # f_0 = 1, t not multiplied by 1000
    torch.testing.assert_close(f[:, 128], torch.sin(t))
    k = 5
    fk = math.exp(-math.log(10000) * k / 128)
    torch.testing.assert_close(f[:, k], torch.cos(t * fk))


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    attn = Attention(hidden_size=8, num_heads=2)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # scale head_dim^-1/2 = 1/2
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_unpatchify_inverts_patch_ordering(name):
    model = _tiny(name)
    p, C, g = model.config.patch_size, 4, 8 // model.config.patch_size
    x = torch.randn(2, C, 8, 8)
    # tokens row-major over the grid; within a token: patch row, patch column, channel fastest
    tokens = x.reshape(2, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p * C)
    torch.testing.assert_close(model.unpatchify(tokens), x, rtol=0, atol=0)


def test_init_statistics_follow_spec():
    model = _tiny(z_dims=(16,))
    assert model.t_embedder.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.y_embedder.embedding_table.weight.std().item() == pytest.approx(0.02, rel=0.15)
    qkv = model.blocks[0].attn.qkv.weight  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (64 + 192))
    assert qkv.abs().max().item() <= bound and qkv.abs().max().item() > 0.9 * bound
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    for blk in model.blocks:
        assert blk.adaLN_modulation[1].weight.abs().sum() == 0


def test_state_dict_keys_follow_official_naming():
    keys = set(_tiny(z_dims=(16,)).state_dict())
    for k in [
        "pos_embed",
        "x_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.weight",
        "y_embedder.embedding_table.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.weight",
        "projectors.0.0.weight",
        "projectors.0.4.weight",
    ]:
        assert k in keys, k


# ------------------------------------------------------------------------------------------------
# Presets, config errors, parameter counts (big models on the meta device only)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SIT_PRESETS))
def test_every_preset_config(name):
    cfg = sit_config(name, input_size=32, in_channels=4)
    assert cfg.num_tokens == (32 // cfg.patch_size) ** 2
    assert SIT_PRESETS[name]["patch_size"] == cfg.patch_size
    assert cfg.hidden_size % cfg.num_heads == 0
    assert 1 <= cfg.encoder_depth <= cfg.depth
    assert SiTConfig(**dataclasses.asdict(cfg)) == cfg  # serialisable round trip


@pytest.mark.parametrize("name", ["SiT-S/1", "SiT-S/8", "SiT-B/4", "SiT-L/8", "SiT-XL/1"])
def test_presets_build_on_meta(name):
    with torch.device("meta"):
        model = build_sit(name, input_size=32, in_channels=4, num_classes=1000)
        out = model(torch.zeros(2, 4, 32, 32), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.prediction.shape == (2, 4, 32, 32)
    D = model.config.hidden_size
    assert model.final_layer.linear.in_features == D  # SiT-S head is 384 wide (spec 2.1 fix)


def _count(name, z_dims=()):
    with torch.device("meta"):
        model = build_sit(name, input_size=32, in_channels=4, num_classes=1000, z_dims=z_dims)
    return model.num_params(), model.num_params(include_projectors=True)


def test_param_counts():
    xl, xl_proj = _count("SiT-XL/2", (768,))
    b, _ = _count("SiT-B/2")
    large, _ = _count("SiT-L/2")
    print(f"\nSiT-XL/2 {xl:,}  projector(768) {xl_proj - xl:,}  SiT-B/2 {b:,}  SiT-L/2 {large:,}")
    assert abs(xl - 675e6) / 675e6 < 0.01
    assert abs(b - 130e6) / 130e6 < 0.01
    assert abs(large - 458e6) / 458e6 < 0.01
    expected_proj = 1152 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768
    assert xl_proj - xl == expected_proj  # ~8.1 M


def test_config_errors():
    with pytest.raises(ConfigError, match="SiT-XL/2"):
        build_sit("SiT-XXL/2", input_size=32, in_channels=4)
    with pytest.raises(ConfigError, match="encoder_depth"):
        build_sit("SiT-T/2", input_size=8, in_channels=4, encoder_depth=5)
    with pytest.raises(ConfigError, match="encoder_depth"):
        build_sit("SiT-T/2", input_size=8, in_channels=4, encoder_depth=0)
    with pytest.raises(ConfigError, match="patch"):
        build_sit("SiT-T/2", input_size=7, in_channels=4)
    with torch.device("meta"), pytest.raises(ConfigError, match="encoder_depth"):
        build_sit("SiT-B/2", input_size=32, in_channels=4, encoder_depth=13)
    assert sit_config("SiT-XL/2", input_size=32, in_channels=4).encoder_depth == 8
