"""Tests for repae.models.lightningdit: parameter counts, SiT drop-in contract, RMSNorm/SwiGLU/RoPE."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from repae.diffusion import FlowMatching
from repae.errors import ConfigError
from repae.losses.alignment import repa_loss
from repae.models import (
    LIGHTNINGDIT_PRESETS,
    LightningDiT,
    LightningDiTConfig,
    SiTOutput,
    build_lightningdit,
    build_model,
    lightningdit_config,
    objective_kind,
)
from repae.models.layers import Mlp
from repae.models.lightningdit import RMSNorm, RotaryEmbedding2D, SwiGLUFFN


def _tiny(name="LightningDiT-T/1", **kw) -> LightningDiT:
    torch.manual_seed(0)
    return build_lightningdit(name, **{"input_size": 4, "in_channels": 8, "num_classes": 10, **kw})


def _randomise(model, std=0.05):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def _inputs(model, B=3):
    g = torch.Generator().manual_seed(2)
    c = model.config
    x = torch.randn(B, c.in_channels, c.input_size, c.input_size, generator=g)
    return x, torch.rand(B, generator=g), torch.randint(0, c.num_classes + 1, (B,), generator=g)


# ------------------------------------------------------------------------------------------------
# Presets and parameter counts (meta device)
# ------------------------------------------------------------------------------------------------


def _meta(name, input_size=16, in_channels=32, **kw):
    with torch.device("meta"):
        return build_lightningdit(name, input_size=input_size, in_channels=in_channels, num_classes=1000, **kw)


def test_presets():
    for name in ("LightningDiT-B/1", "LightningDiT-XL/1", "LightningDiT-XL/2"):
        assert name in LIGHTNINGDIT_PRESETS
    assert LIGHTNINGDIT_PRESETS["LightningDiT-XL/1"] == {"depth": 28, "hidden_size": 1152, "num_heads": 16,
                                                           "patch_size": 1}


def test_lightningdit_xl1_parameter_count():
    model = _meta("LightningDiT-XL/1")  # VA-VAE f16d32 latent: 16 x 16 x 32, 256 tokens
    n = model.num_params()
    print(f"\nLightningDiT-XL/1 (16x16x32) trainable {n:,}  incl. fixed pos_embed {n + model.pos_embed.numel():,}")
    assert n == 674_961_824
    assert abs(n - 675e6) / 675e6 < 0.01  # paper: 675M (same size class as DiT-XL / SiT-XL)
    blk = model.blocks[0]
    assert blk.mlp.w12.out_features == 2 * 3072 and blk.mlp.w3.in_features == 3072  # int(2/3 * 4 * 1152)
    assert tuple(model.feat_rope.freqs_cos.shape) == (256, 72)
    b1 = _meta("LightningDiT-B/1").num_params()
    assert abs(b1 - 130e6) / 130e6 < 0.01
    xl2 = _meta("LightningDiT-XL/2", input_size=32, in_channels=4)
    with torch.device("meta"):
        out = xl2(torch.zeros(2, 4, 32, 32), torch.zeros(2), torch.zeros(2, dtype=torch.long), hidden_at=8)
    assert out.prediction.shape == (2, 4, 32, 32) and out.hidden.shape == (2, 256, 1152)


# ------------------------------------------------------------------------------------------------
# Drop-in contract with SiT
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LightningDiT-T/1", "LightningDiT-T/2"])
def test_forward_shapes_zero_init_and_output_type(name):
    model = _tiny(name, z_dims=(16,))
    x, t, y = _inputs(model)
    out = model(x, t, y, hidden_at=2)
    assert isinstance(out, SiTOutput) and out.prediction.shape == x.shape
    assert torch.equal(out.prediction, torch.zeros_like(x))
    T = (4 // LIGHTNINGDIT_PRESETS[name]["patch_size"]) ** 2
    assert out.hidden.shape == (3, T, 64) and model.num_tokens == T
    assert [p.shape for p in model.project(out.hidden)] == [(3, T, 16)]
    assert objective_kind(model) == "flow"


def test_hidden_at_stop_at_hidden_and_manual_blocks():
    model = _randomise(_tiny(z_dims=(16,)))
    x, t, y = _inputs(model)
    full = model(x, t, y, hidden_at=2)
    stopped = model(x, t, y, hidden_at=2, stop_at_hidden=True)
    assert stopped.prediction is None
    torch.testing.assert_close(stopped.hidden, full.hidden, rtol=0, atol=0)
    c = model.t_embedder(t) + model.y_embedder(y)
    h = model.x_embedder(x) + model.pos_embed
    for blk in model.blocks[:2]:
        h = blk(h, c, model.feat_rope)
    torch.testing.assert_close(full.hidden, h)
    with pytest.raises(ValueError, match="hidden_at"):
        model(x, t, y, stop_at_hidden=True)


def test_trains_with_flow_matching_and_repa_like_sit():
    model = _randomise(_tiny(z_dims=(16,), projector="conv"), std=0.02)
    fm = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 8, 4, 4, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    target_feats = torch.randn(4, 16, 16, generator=g)
    nb = fm.draw(x0, generator=g)
    out = model(nb.x_t, nb.t, y, hidden_at=2)
    loss = fm.loss(out.prediction, nb.target).mean() + 0.5 * repa_loss(model.project(out.hidden), [target_feats])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].mlp.w12.weight.grad.abs().sum() > 0
    assert model.blocks[0].norm1.weight.grad.abs().sum() > 0


def test_state_dict_keys_follow_official_lightningdit():
    keys = set(_tiny(z_dims=(16,), qk_norm=True).state_dict())
    for k in ["pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
              "feat_rope.freqs_cos", "feat_rope.freqs_sin", "blocks.0.norm1.weight", "blocks.0.norm2.weight",
              "blocks.0.attn.qkv.bias", "blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight",
              "blocks.0.attn.proj.weight", "blocks.0.mlp.w12.weight", "blocks.0.mlp.w3.bias",
              "blocks.0.adaLN_modulation.1.weight", "final_layer.norm_final.weight", "final_layer.linear.weight",
              "final_layer.adaLN_modulation.1.weight", "projectors.0.0.weight"]:
        assert k in keys, k


def test_switches_turn_each_part_off():
    plain = _tiny(use_rope=False, use_rmsnorm=False, use_swiglu=False)
    assert plain.feat_rope is None
    assert isinstance(plain.blocks[0].norm1, torch.nn.LayerNorm) and isinstance(plain.blocks[0].mlp, Mlp)
    assert isinstance(plain.final_layer.norm_final, torch.nn.LayerNorm)
    x, t, y = _inputs(plain)
    assert _randomise(plain)(x, t, y).prediction.shape == x.shape
    qk = _tiny(qk_norm=True)
    assert isinstance(qk.blocks[0].attn.q_norm, RMSNorm)
    assert build_model("LightningDiT-T/1", input_size=4, in_channels=8).config.use_rope
    learnt = _tiny(learn_pos_embed=True)  # model.learn_pos_embed, as SiT
    assert "pos_embed" in dict(learnt.named_parameters()) and learnt.pos_embed.abs().sum() > 0


def test_config_round_trip_and_errors():
    cfg = lightningdit_config("LightningDiT-XL/1", input_size=16, in_channels=32)
    assert LightningDiTConfig(**dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ConfigError, match="LightningDiT-XL/1"):
        build_lightningdit("LightningDiT-L/1", input_size=16, in_channels=32)
    with pytest.raises(ConfigError, match="patch size"):
        build_lightningdit("LightningDiT-T/2", input_size=5, in_channels=4)
    with pytest.raises(ConfigError, match="RoPE"):
        LightningDiT(LightningDiTConfig(depth=1, hidden_size=24, num_heads=4, patch_size=1, input_size=4,
                                        in_channels=4, encoder_depth=1))


# ------------------------------------------------------------------------------------------------
# Layers against their definitions
# ------------------------------------------------------------------------------------------------


def test_rmsnorm_definition_and_dtype():
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6)
    expect = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 7.0)
    torch.testing.assert_close(norm(x), expect)
    # statistics in float32, result in the promotion of input and scale dtypes (as the reference)
    assert norm.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_swiglu_definition():
    torch.manual_seed(0)
    ffn = SwiGLUFFN(hidden_size=4, inner_size=6)
    x = torch.randn(2, 3, 4)
    h = ffn.w12(x)
    expect = ffn.w3(torch.nn.functional.silu(h[..., :6]) * h[..., 6:])
    torch.testing.assert_close(ffn(x), expect)


def test_rope_layout_rows_then_columns_interleaved_pairs():
    head_dim, G = 8, 3
    rope = RotaryEmbedding2D(head_dim=head_dim, grid_size=G)
    half = head_dim // 2
    freqs = [10000.0 ** (-(2 * k) / half) for k in range(half // 2)]  # [1, 0.01]
    x = torch.randn(1, 1, G * G, head_dim)
    out = rope(x)
    for r in range(G):
        for c in range(G):
            tok = r * G + c
            for pair in range(head_dim // 2):  # pairs (0,1),(2,3) row; (4,5),(6,7) column
                pos = r if pair < half // 2 else c
                ang = pos * freqs[pair % (half // 2)]
                a, b = x[0, 0, tok, 2 * pair], x[0, 0, tok, 2 * pair + 1]
                torch.testing.assert_close(out[0, 0, tok, 2 * pair], a * math.cos(ang) - b * math.sin(ang))
                torch.testing.assert_close(out[0, 0, tok, 2 * pair + 1], b * math.cos(ang) + a * math.sin(ang))


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding2D(head_dim=16, grid_size=5)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    same = lambda v: v.reshape(1, 1, 1, 16).expand(1, 1, 25, 16)  # noqa: E731
    rq, rk = rope(same(q))[0, 0], rope(same(k))[0, 0]  # [25, 16]
    score = rq @ rk.T  # [25, 25]
    # token (1,1) vs (2,3) and (0,2) vs (1,4): same offset (+1, +2)
    torch.testing.assert_close(score[1 * 5 + 1, 2 * 5 + 3], score[0 * 5 + 2, 1 * 5 + 4])
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(25))  # rotations keep the norm
