"""Tests for repae.models.projectors: REPA's MLP head, iREPA's conv head and spatial target norm."""

from __future__ import annotations

import pytest
import torch

from repae.config import load_config
from repae.errors import ConfigError
from repae.losses.alignment import repa_loss
from repae.models import build_model, build_sit
from repae.models.projectors import (
    PROJECTORS,
    TARGET_NORMS,
    ConvProjector,
    build_projector,
    normalize_targets,
    spatial_normalize,
)


def test_conv_projector_is_a_3x3_conv_on_the_row_major_grid():
    torch.manual_seed(0)
    proj = ConvProjector(hidden_size=5, z_dim=7)
    assert proj.proj.kernel_size == (3, 3) and proj.proj.padding == (1, 1)
    G = 4
    hidden = torch.zeros(2, G * G, 5)
    r, c = 1, 2
    hidden[:, r * G + c] = torch.randn(2, 5)  # one token at row 1, column 2
    out = proj(hidden) - proj.proj.bias  # [2, 16, 7], bias removed
    changed = {i for i in range(G * G) if out[:, i].abs().max() > 0}
    expect = {rr * G + cc for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)}
    assert changed == expect  # only the 3x3 neighbourhood of (1, 2) sees it
    ref = torch.nn.functional.conv2d(hidden.transpose(1, 2).reshape(2, 5, G, G), proj.proj.weight, proj.proj.bias,
                                     padding=1)
    torch.testing.assert_close(proj(hidden), ref.flatten(2).transpose(1, 2))
    with pytest.raises(ConfigError, match="square"):
        proj(torch.zeros(1, 6, 5))


@pytest.mark.parametrize("family", ["SiT-T/2", "DiT-T/2", "LightningDiT-T/2"])
def test_every_generator_takes_the_conv_projector(family):
    model = build_model(family, input_size=8, in_channels=4, num_classes=10, z_dims=(16, 24), projector="conv")
    assert all(isinstance(p, ConvProjector) for p in model.projectors)
    assert "projectors.1.proj.weight" in model.state_dict()
    n = model.num_params(include_projectors=True) - model.num_params()
    assert n == (64 * 16 * 9 + 16) + (64 * 24 * 9 + 24)
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.zeros(2, dtype=torch.long)
    hidden = model(x, t, y, hidden_at=2, stop_at_hidden=True).hidden
    assert [p.shape for p in model.project(hidden)] == [(2, 16, 16), (2, 16, 24)]


def test_mlp_projector_default_is_unchanged():
    model = build_sit("SiT-T/2", input_size=8, in_channels=4, z_dims=(16,))
    assert model.config.projector == "mlp"
    assert [type(m).__name__ for m in model.projectors[0]] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert isinstance(build_projector("mlp", hidden_size=4, projector_dim=8, z_dim=2), torch.nn.Sequential)
    with pytest.raises(ConfigError, match="align.projector"):
        build_projector("attention", hidden_size=4, projector_dim=8, z_dim=2)
    assert PROJECTORS == ("mlp", "conv") and TARGET_NORMS == ("none", "spatial")


def test_spatial_normalize_formula():
    g = torch.Generator().manual_seed(0)
    z = 3.0 + 2.0 * torch.randn(2, 16, 5, generator=g, dtype=torch.float64)
    full = spatial_normalize(z, gamma=1.0)
    assert full.dtype == torch.float32
    torch.testing.assert_close(full.mean(dim=1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(full.std(dim=1), torch.ones(2, 5), atol=1e-5, rtol=0)
    part = spatial_normalize(z, gamma=0.7)
    mean, std = z.mean(dim=1, keepdim=True), z.std(dim=1, keepdim=True)
    torch.testing.assert_close(part, ((z - 0.7 * mean) / (std + 1e-6)).float())
    with pytest.raises(ConfigError, match="target_norm=none"):
        spatial_normalize(torch.zeros(1, 1, 3))


def test_spatial_norm_removes_the_global_component_from_the_repa_target():
    """With full centring a vector shared by every token (global information) no longer moves the loss."""
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(2, 16, 8, generator=g)
    z = torch.randn(2, 16, 8, generator=g)
    shifted = z + 5.0 * torch.randn(2, 1, 8, generator=g)  # same global vector added to all tokens
    plain = repa_loss([proj], [z]), repa_loss([proj], [shifted])
    assert abs(plain[0] - plain[1]) > 0.05
    normed = (repa_loss([proj], normalize_targets([z], "spatial", gamma=1.0)),
              repa_loss([proj], normalize_targets([shifted], "spatial", gamma=1.0)))
    torch.testing.assert_close(normed[0], normed[1], atol=1e-5, rtol=0)


def test_normalize_targets_modes_and_config_keys():
    z = [torch.randn(2, 4, 3)]
    assert normalize_targets(z, "none")[0] is z[0]
    with pytest.raises(ConfigError, match="align.target_norm"):
        normalize_targets(z, "global")
    cfg = load_config(overrides=["align.projector=conv", "align.target_norm=spatial"])
    assert (cfg.align.projector, cfg.align.target_norm) == ("conv", "spatial")
    default = load_config()
    assert (default.align.projector, default.align.target_norm) == ("mlp", "none")
