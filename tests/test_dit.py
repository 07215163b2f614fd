"""Tests for repae.models.dit (DiT): presets, parameter counts, 2C head, hidden states, REPA heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from repae.errors import ConfigError
from repae.models import DIT_PRESETS, DiT, DiTConfig, SiTOutput, build_dit, build_model, dit_config, objective_kind
from repae.models.layers import FinalLayer


def _tiny(name="DiT-T/2", **kw) -> DiT:
    torch.manual_seed(0)
    return build_dit(name, **{"input_size": 8, "in_channels": 4, "num_classes": 10, **kw})


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
    t = torch.randint(0, 1000, (B,), generator=g).float()  # DDPM timesteps
    y = torch.randint(0, c.num_classes + 1, (B,), generator=g)
    return x, t, y


# ------------------------------------------------------------------------------------------------
# Presets and parameter counts (meta device)
# ------------------------------------------------------------------------------------------------


def test_preset_table():
    for size in ("S", "B", "L", "XL"):
        for p in (2, 4, 8):
            assert f"DiT-{size}/{p}" in DIT_PRESETS
    assert DIT_PRESETS["DiT-XL/2"] == {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2}
    assert DIT_PRESETS["DiT-S/4"]["hidden_size"] == 384 and DIT_PRESETS["DiT-L/8"]["depth"] == 24


def _meta(name, **kw):
    with torch.device("meta"):
        return build_dit(name, input_size=32, in_channels=4, num_classes=1000, **kw)


def test_dit_xl2_has_675m_parameters():
    model = _meta("DiT-XL/2")
    trainable = model.num_params()
    with_pos = trainable + model.pos_embed.numel()  # official DiT keeps pos_embed as a frozen Parameter
    print(f"\nDiT-XL/2 trainable {trainable:,}  incl. fixed pos_embed {with_pos:,}")
    # DiT's train.py logs sum(p.numel() for p in model.parameters()) = 675,129,632 (pos_embed included)
    assert with_pos == 675_129_632
    assert trainable == 674_834_720
    # paper Table 1 / Table 4 sizes: S 33M, B 130M, L 458M, XL 675M
    for name, expect in [("DiT-S/2", 33e6), ("DiT-B/2", 130e6), ("DiT-L/2", 458e6), ("DiT-XL/8", 675e6)]:
        n = _meta(name).num_params()
        assert abs(n - expect) / expect < 0.01, (name, n)


def test_learned_sigma_head_width_and_sit_difference():
    dit = _meta("DiT-XL/2")
    assert dit.final_layer.linear.out_features == 2 * 2 * 8  # p*p*2C
    small = _meta("DiT-XL/2", learn_sigma=False)
    assert small.final_layer.linear.out_features == 2 * 2 * 4
    # the 2C head is the only difference to SiT-XL/2: 1152*16 + 16 extra parameters
    with torch.device("meta"):
        sit = build_model("SiT-XL/2", input_size=32, in_channels=4, num_classes=1000)
    assert dit.num_params() - sit.num_params() == 1152 * 16 + 16


@pytest.mark.parametrize("name", ["DiT-S/8", "DiT-B/4", "DiT-L/2"])
def test_presets_forward_on_meta(name):
    model = _meta(name)
    with torch.device("meta"):
        out = model(torch.zeros(2, 4, 32, 32), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.prediction.shape == (2, 8, 32, 32)


# ------------------------------------------------------------------------------------------------
# Forward, init, hidden states
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["DiT-T/1", "DiT-T/2"])
def test_forward_shapes_and_zero_init(name):
    model = _tiny(name, z_dims=(16,))
    x, t, y = _inputs(model)
    out = model(x, t, y, hidden_at=2)
    assert isinstance(out, SiTOutput)
    assert out.prediction.shape == (3, 8, 8, 8)  # (eps, v): 2C channels
    assert torch.equal(out.prediction, torch.zeros_like(out.prediction))
    T = (8 // DIT_PRESETS[name]["patch_size"]) ** 2
    assert out.hidden.shape == (3, T, 64) and model.num_tokens == T
    assert objective_kind(model) == "ddpm" and model.out_channels == 8


def test_hidden_extraction_and_stop_at_hidden():
    model = _randomise(_tiny(z_dims=(16,)))
    x, t, y = _inputs(model)
    calls = []
    model.final_layer.register_forward_hook(lambda *a: calls.append("final"))
    full = model(x, t, y, hidden_at=2)
    stopped = model(x, t, y, hidden_at=2, stop_at_hidden=True)
    assert calls == ["final"] and stopped.prediction is None
    torch.testing.assert_close(stopped.hidden, full.hidden, rtol=0, atol=0)
    # hidden after block 2 equals running the embeddings and first two blocks by hand
    c = model.t_embedder(t) + model.y_embedder(y)
    h = model.x_embedder(x) + model.pos_embed
    for blk in model.blocks[:2]:
        h = blk(h, c)
    torch.testing.assert_close(full.hidden, h)
    # the full prediction is the final layer on the last block's output
    last = model(x, t, y, hidden_at=4).hidden
    torch.testing.assert_close(model.unpatchify(model.final_layer(last, c)), full.prediction)
    projected = model.project(full.hidden)
    assert [p.shape for p in projected] == [(3, 16, 16)]
    with pytest.raises(ValueError, match="1..4"):
        model(x, t, y, hidden_at=5)


def test_timestep_conditioning_uses_integer_scale():
    model = _randomise(_tiny())
    x, _, y = _inputs(model)
    a = model(x, torch.full((3,), 10.0), y).prediction
    b = model(x, torch.full((3,), 11.0), y).prediction
    assert not torch.allclose(a, b)  # one DDPM step apart is a visible change (t is not scaled to [0,1])
    torch.testing.assert_close(model(x, torch.tensor(10.0), y).prediction, a)


def test_unpatchify_2c_channel_order():
    model = _tiny()
    p, C, g = 2, 8, 4
    img = torch.randn(2, C, 8, 8)
    tokens = img.reshape(2, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p * C)
    torch.testing.assert_close(model.unpatchify(tokens), img, rtol=0, atol=0)


def test_backward_reaches_every_parameter():
    model = _randomise(_tiny(z_dims=(16,), projector="conv"))
    x, t, y = _inputs(model)
    out = model(x, t, y, hidden_at=2)
    (out.prediction.square().mean() + model.project(out.hidden)[0].square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_one_ddpm_training_step_decreases_loss():
    from repae.diffusion.gaussian import DDPMObjective

    model = _randomise(_tiny(), std=0.02)
    obj = DDPMObjective()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 8, 8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    nb = obj.draw(x0, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = obj.loss(model(nb.x_t, nb.t, y).prediction, nb).mean()
    before.backward()
    opt.step()
    after = obj.loss(model(nb.x_t, nb.t, y).prediction, nb).mean()
    assert torch.isfinite(before) and after < before


def test_state_dict_keys_follow_official_dit():
    keys = set(_tiny(z_dims=(16,)).state_dict())
    for k in ["pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
              "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.bias", "blocks.0.adaLN_modulation.1.weight",
              "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias", "projectors.0.4.weight"]:
        assert k in keys, k


def test_config_round_trip_and_errors():
    cfg = dit_config("DiT-XL/2", input_size=32, in_channels=4)
    assert DiTConfig(**dataclasses.asdict(cfg)) == cfg and cfg.out_channels == 8
    with pytest.raises(ConfigError, match="DiT-XL/2"):
        build_dit("DiT-XXL/2", input_size=32, in_channels=4)
    with pytest.raises(ConfigError, match="DiT patch size"):
        build_dit("DiT-T/2", input_size=7, in_channels=4)
    with pytest.raises(ConfigError, match="encoder_depth"):
        build_dit("DiT-T/2", input_size=8, in_channels=4, encoder_depth=9)
    with pytest.raises(ConfigError, match="align.projector"):
        build_dit("DiT-T/2", input_size=8, in_channels=4, projector="transformer")
    with pytest.raises(ConfigError, match="choose one of"):
        build_model("UNet-XL/2", input_size=8, in_channels=4)
    assert isinstance(build_model("DiT-T/2", input_size=8, in_channels=4).final_layer, FinalLayer)
    learnt = build_dit("DiT-T/2", input_size=8, in_channels=4, learn_pos_embed=True)  # model.learn_pos_embed
    assert "pos_embed" in dict(learnt.named_parameters()) and learnt.pos_embed.abs().sum() > 0
