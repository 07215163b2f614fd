"""LatentNormalizer: BatchNorm2d(affine=False, eps=1e-4) semantics, eps quirk, gradients, SyncBN over gloo."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from repae.tokenizer.normalizer import LatentNormalizer

C = 3


def _latents(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channel means far from 0 and unequal scales, like real VAE latents
    scale = torch.tensor([0.5, 2.0, 7.0])[None, :, None, None]
    shift = torch.tensor([3.0, -1.0, 10.0])[None, :, None, None]
    return torch.randn(n, C, 4, 5, generator=g) * scale + shift  # [n, C, 4, 5]


def _bn() -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, eps=1e-4, momentum=0.1, affine=False, track_running_stats=True)


def test_update_matches_batchnorm_train_mode():
    norm, bn = LatentNormalizer(C), _bn().train()
    for step in range(3):
        z = _latents(6, seed=step)
        out, ref = norm.normalize(z, update=True), bn(z)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(norm.running_mean, bn.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norm.running_var, bn.running_var, rtol=1e-6, atol=1e-6)
    assert int(norm.num_batches_tracked) == int(bn.num_batches_tracked) == 3


def test_no_update_matches_batchnorm_eval_mode_and_leaves_buffers():
    norm, bn = LatentNormalizer(C), _bn()
    norm.set_statistics(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 1.5, 4.0]))
    bn.running_mean.copy_(norm.running_mean)
    bn.running_var.copy_(norm.running_var)
    z = _latents(4)
    before = norm.running_mean.clone(), norm.running_var.clone()
    torch.testing.assert_close(norm.normalize(z, update=False), bn.eval()(z), rtol=1e-6, atol=1e-6)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert int(norm.num_batches_tracked) == 0


def test_gradients_through_batch_statistics_match_batchnorm():
    z = _latents(5)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    (LatentNormalizer(C).normalize(z1, update=True) * w).sum().backward()
    (_bn().train()(z2) * w).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-4, atol=1e-5)
    assert z1.grad.abs().sum() > 0


def test_denormalize_has_no_eps():
    """denormalize(normalize(z)) == (z - m) * sqrt(v / (v + eps)) + m exactly the REPA-E quirk; == z for eps=0."""
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.01, 1.5, 4.0])  # tiny std makes eps visible
    z = _latents(3)
    norm = LatentNormalizer(C)
    norm.set_statistics(mean, std)
    back = norm.denormalize(norm.normalize(z, update=False))
    m, v = mean[None, :, None, None], std[None, :, None, None] ** 2
    torch.testing.assert_close(back, (z - m) * torch.sqrt(v / (v + 1e-4)) + m, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(back[:, 0], z[:, 0], atol=1e-2)  # channel 0: factor 0.707
    exact = LatentNormalizer(C, eps=0.0)
    exact.set_statistics(mean, std)
    torch.testing.assert_close(exact.denormalize(exact.normalize(z, update=False)), z, rtol=1e-5, atol=1e-5)


def test_statistics_round_trip_and_stats_file_shape():
    norm = LatentNormalizer(C)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 2.0, 3.0])
    norm.set_statistics(mean.reshape(1, C, 1, 1), std.reshape(1, C, 1, 1))  # REPA-E [1, C, 1, 1] files
    torch.testing.assert_close(norm.running_var, std**2)
    m, s = norm.statistics()
    torch.testing.assert_close(m, mean)
    torch.testing.assert_close(s, std)
    with pytest.raises(ValueError):
        norm.set_statistics(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError):
        norm.normalize(torch.zeros(2, 4, 3, 3), update=False)


def test_float32_under_autocast():
    norm = LatentNormalizer(C)
    z = _latents(4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm.normalize(z, update=True)
        back = norm.denormalize(out)
    assert out.dtype == torch.float32 and back.dtype == torch.float32
    assert norm.running_mean.dtype == torch.float32


# ------------------------------------------------------------------------- SyncBN across 2 ranks
SPLIT = (3, 5)  # unequal per-rank batches: the global count must be all-reduced too


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    from torch.distributed import _functional_collectives as fc

    def eager_only(*_a, **_k):  # used eagerly on gloo they abort ~1 process in 10 at exit (SIGABRT)
        raise AssertionError("the eager all-reduce must not use functional collectives")

    fc.all_reduce = eager_only
    try:
        z_full, w_full = _latents(sum(SPLIT)), torch.randn(sum(SPLIT), C, 4, 5, generator=torch.Generator().manual_seed(7))
        lo = sum(SPLIT[:rank])
        z = z_full[lo: lo + SPLIT[rank]].clone().requires_grad_()
        norm = LatentNormalizer(C)
        out = None
        for _ in range(2):  # two steps: running stats must follow the global batch
            out = norm.normalize(z, update=True)
        (out * w_full[lo: lo + SPLIT[rank]]).sum().backward()
        torch.save({"out": out.detach(), "grad": z.grad, "mean": norm.running_mean, "var": norm.running_var},
                   os.path.join(tmp, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before teardown (avoids a gloo shutdown race)
    finally:
        dist.destroy_process_group()


def test_synchronised_statistics_over_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    z = _latents(sum(SPLIT)).requires_grad_()
    w = torch.randn(sum(SPLIT), C, 4, 5, generator=torch.Generator().manual_seed(7))
    bn = _bn().train()
    out = None
    for _ in range(2):
        out = bn(z)
    (out * w).sum().backward()  # global loss = sum of the per-rank losses
    torch.testing.assert_close(torch.cat([r["out"] for r in res]), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["grad"] for r in res]), z.grad, rtol=1e-4, atol=1e-5)
    for r in res:
        torch.testing.assert_close(r["mean"], bn.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r["var"], bn.running_var, rtol=1e-6, atol=1e-6)
