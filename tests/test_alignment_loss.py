"""Tests for repae.losses.alignment (REPA loss) against a per-sample loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repae.losses.alignment import repa_loss, repa_loss_per_sample


def _loop_reference(projected, targets):
    """Spec 2.8 step 9 literally: per encoder, per sample, mean token cosine; sum / (N * B)."""
    total, B = 0.0, projected[0].shape[0]
    for p, z in zip(projected, targets):
        for j in range(B):
            cos = [F.cosine_similarity(p[j, n].double(), z[j, n].double(), dim=0) for n in range(p.shape[1])]
            total = total - torch.stack(cos).mean()
    return total / (len(projected) * B)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_matches_loop_reference_several_encoders():
    proj = [_rand(3, 5, 8, seed=1), _rand(3, 5, 12, seed=2)]
    targ = [_rand(3, 5, 8, seed=3), _rand(3, 5, 12, seed=4)]
    loss = repa_loss(proj, targ)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), _loop_reference(proj, targ), rtol=1e-5, atol=1e-6)
    # several encoders = average of the single-encoder losses
    single = torch.stack([repa_loss([p], [z]) for p, z in zip(proj, targ)]).mean()
    torch.testing.assert_close(loss, single)


def test_per_sample_shape_and_mean():
    proj, targ = [_rand(4, 6, 8, seed=1)], [_rand(4, 6, 8, seed=2)]
    per = repa_loss_per_sample(proj, targ)
    assert per.shape == (4,)
    torch.testing.assert_close(per.mean(), repa_loss(proj, targ))
    ref = torch.stack([_loop_reference([proj[0][j : j + 1]], [targ[0][j : j + 1]]) for j in range(4)])
    torch.testing.assert_close(per.double(), ref, rtol=1e-5, atol=1e-6)


def test_analytic_values():
    z = _rand(2, 4, 8)
    assert repa_loss([z], [z]).item() == pytest.approx(-1.0, abs=1e-6)
    assert repa_loss([3.0 * z], [z]).item() == pytest.approx(-1.0, abs=1e-6)  # scale invariant
    assert repa_loss([-z], [z]).item() == pytest.approx(1.0, abs=1e-6)
    # orthogonal features -> 0
    a = torch.zeros(1, 2, 4)
    b = torch.zeros(1, 2, 4)
    a[..., 0], b[..., 1] = 1.0, 1.0
    assert repa_loss([a], [b]).item() == pytest.approx(0.0, abs=1e-7)
    # zero vector is handled (eps), no NaN
    assert torch.isfinite(repa_loss([torch.zeros(1, 2, 4)], [b]))


def test_fp32_for_low_precision_inputs_and_gradient():
    p = _rand(2, 4, 8, seed=1).to(torch.bfloat16).requires_grad_(True)
    z = _rand(2, 4, 8, seed=2).to(torch.bfloat16)
    loss = repa_loss([p], [z])
    assert loss.dtype == torch.float32
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_mismatch_errors_name_the_fix():
    with pytest.raises(ValueError, match="patch"):
        repa_loss([torch.zeros(2, 64, 8)], [torch.zeros(2, 256, 8)])
    with pytest.raises(ValueError, match="z_dims"):
        repa_loss([torch.zeros(2, 16, 8)], [torch.zeros(2, 16, 12)])
    with pytest.raises(ValueError, match="z_dims"):
        repa_loss([torch.zeros(2, 16, 8)], [torch.zeros(2, 16, 8), torch.zeros(2, 16, 8)])
    with pytest.raises(ValueError, match="batch"):
        repa_loss([torch.zeros(2, 16, 8)], [torch.zeros(3, 16, 8)])


def test_with_sit_projector_end_to_end():
    from repae.models import build_sit

    torch.manual_seed(0)
    model = build_sit("SiT-T/2", input_size=8, in_channels=4, num_classes=10, z_dims=(16,))
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 10])
    hidden = model(x, t, y, hidden_at=2, stop_at_hidden=True).hidden
    target = torch.randn(2, 16, 16)
    loss = repa_loss(model.project(hidden), [target])
    loss.backward()
    assert model.projectors[0][4].weight.grad.abs().sum() > 0
    assert model.blocks[2].attn.qkv.weight.grad is None  # blocks after encoder_depth not used
