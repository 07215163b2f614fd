"""The latent normaliser: a per-channel, non-affine BatchNorm over raw VAE latents (spec 2.6).

In the official code this is a ``BatchNorm2d(C, eps=1e-4, momentum=0.1, affine=False)`` hidden
inside the SiT; here it is its own module owned by the tokenizer, so the statistics travel with
the VAE they describe (EDM2's raw/final latent split). Semantics are those of PyTorch's BatchNorm
(and SyncBatchNorm under distributed training):

* ``normalize(z, update=True)``: normalise with the *batch* mean and *biased* batch variance
  (+eps), and move the running statistics towards the batch mean and the *unbiased* batch
  variance with ``momentum``. Under ``torch.distributed`` the batch statistics are global.
* ``normalize(z, update=False)``: ``(z - running_mean) / sqrt(running_var + eps)``.
* ``denormalize(z)``: ``z * sqrt(running_var) + running_mean`` -- **no eps** (spec 2.6 / 6.3).

Everything is computed in float32, also under autocast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """SUM all-reduce whose backward all-reduces the incoming gradient (eager path).

    The gradient of a global loss equal to the sum of the per-rank losses with respect to a
    rank's input is the sum over ranks of d(loss_r)/d(all-reduced value): one all-reduce of the
    gradient. Written here on ``dist.all_reduce`` because torch's functional collectives, used
    eagerly on gloo, leave a C++ thread joinable at interpreter exit: about 1 process in 10 then
    dies with SIGABRT ("terminate called without an active exception") after a run that finished
    (measured on torch 2.14.1: 3/20 two-process runs; 0/30 with this Function).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (SUM) when distributed is up, identity otherwise.

    Exact gradient of a global loss equal to the sum of the per-rank losses (gloo and NCCL alike).
    Needed for the naive end-to-end ablation, where the diffusion loss flows through the batch
    statistics into the VAE. Eager runs use :class:`_AllReduceSum`; under ``torch.compile`` the
    functional collective (same autograd rule, traceable) is used instead.
    """
    if not _dist_ready():
        return x
    if torch.compiler.is_compiling():
        from torch.distributed import _functional_collectives as fc

        return fc.wait_tensor(fc.all_reduce(x.contiguous(), "sum", dist.group.WORLD))
    return _AllReduceSum.apply(x.contiguous())


class LatentNormalizer(nn.Module):
    """Per-channel non-affine BatchNorm over latents [B, C, h, w] (spec 2.6, 11.7).

    Args:
        num_channels: latent channels C.
        momentum: running-statistics momentum (spec ``--bn-momentum``, default 0.1).
        eps: added to the variance when normalising (1e-4 in REPA-E), never when denormalising.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, num_channels: int, *, momentum: float = 0.1, eps: float = 1e-4):
        super().__init__()
        self.num_channels = int(num_channels)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.register_buffer("running_mean", torch.zeros(num_channels, dtype=torch.float32))
        self.register_buffer("running_var", torch.ones(num_channels, dtype=torch.float32))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, momentum={self.momentum}, eps={self.eps}"

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.num_channels:
            raise ValueError(f"expected latents [B, {self.num_channels}, h, w], got {tuple(z.shape)}")

    def batch_statistics(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global per-channel (mean, biased var, count) of ``z``, differentiable.

        Two passes (sum -> mean, then sum of squared deviations) rather than sum / sum of squares:
        one extra all-reduce of C numbers, but no catastrophic cancellation when |mean| >> std.
        """
        z32 = z.float()  # [B, C, h, w]
        dims = (0, 2, 3)
        local_n = z32.numel() // self.num_channels
        s1 = torch.cat([z32.sum(dims), z32.new_tensor([float(local_n)])])  # [C + 1]
        s1 = _all_reduce_sum(s1)
        n = s1[-1]  # scalar, global element count per channel
        mean = s1[:-1] / n  # [C]
        sq = (z32 - mean[None, :, None, None]).pow(2).sum(dims)  # [C]
        var = _all_reduce_sum(sq) / n  # [C] biased
        return mean, var, n

    def normalize(self, z: torch.Tensor, *, update: bool) -> torch.Tensor:
        """Raw latents -> normalised latents (float32). See module docstring for ``update``."""
        self._check(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z.float()  # [B, C, h, w]
            if update:
                mean, var, n = self.batch_statistics(z32)
                with torch.no_grad():
                    unbiased = var * (n / (n - 1).clamp_min(1.0))  # [C]
                    self.running_mean.mul_(1.0 - self.momentum).add_(self.momentum * mean.detach())
                    self.running_var.mul_(1.0 - self.momentum).add_(self.momentum * unbiased.detach())
                    self.num_batches_tracked.add_(1)
            else:
                mean, var = self.running_mean, self.running_var
            inv = torch.rsqrt(var + self.eps)  # [C]
            return (z32 - mean[None, :, None, None]) * inv[None, :, None, None]  # [B, C, h, w]

    def forward(self, z: torch.Tensor, *, update: bool = False) -> torch.Tensor:
        return self.normalize(z, update=update)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised -> raw latents: ``z * sqrt(running_var) + running_mean``.

        Deliberately WITHOUT eps: REPA-E extracts ``latents_scale = 1 / sqrt(running_var)`` with no
        eps for sampling (spec 2.6 / 6.3 / 11.7), so denormalize(normalize(z)) differs from z by
        the factor sqrt(var / (var + eps)). Replicated for fidelity.
        """
        self._check(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            std = self.running_var.sqrt()  # [C]
            return z.float() * std[None, :, None, None] + self.running_mean[None, :, None, None]

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Overwrite running stats: running_mean = mean, running_var = std^2 (REPA-E ``init_bn``).

        Accepts [C] or the stats-file shape [1, C, 1, 1].
        """
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.num_channels or std.numel() != self.num_channels:
            raise ValueError(f"statistics must have {self.num_channels} channels, got {mean.numel()} / {std.numel()}")
        self.running_mean.copy_(mean)
        self.running_var.copy_(std.pow(2))

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [C], std [C]) with std = sqrt(running_var) (no eps), as fresh float32 tensors."""
        return self.running_mean.detach().clone(), self.running_var.detach().sqrt()
