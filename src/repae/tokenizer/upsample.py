"""Nearest x2 upsampling followed by a 3x3 convolution, computed as one stride-2 transposed
convolution (exact; fewer FLOPs).

The decoder of the KL autoencoder upsamples three times with ``conv3x3(nearest_x2(h))`` (LDM /
diffusers ``Upsample2D``). Every output pixel of that pair reads only a 2x2 window of the *low*
resolution input, so the pair equals ``conv_transpose2d(h, K, stride=2, padding=1)`` with a 4x4
kernel ``K`` folded from the 3x3 one. Per output pixel and channel pair that is 4 multiply-adds
instead of 9: the three upsampling convolutions are 28 % of the f8d4 decoder's FLOPs (174 of 620
GFLOP per 256x256 image), and they shrink to 4/9 of that. The 3x3 weight stays the parameter
(checkpoints and state dicts do not change), the gradients reach it through the fold, and the
result equals the original up to float summation order (tests/test_tokenizer.py).

The fold, per axis: output ``2i`` sums ``w[0] x[i-1] + (w[1] + w[2]) x[i]`` and output ``2i+1``
sums ``(w[0] + w[1]) x[i] + w[2] x[i+1]``. A stride-2 transposed convolution with padding 1 writes
``x[i] K[k]`` to output ``2i - 1 + k``, so ``K = [w2, w1 + w2, w0 + w1, w0]``, i.e. ``K = F w F^T``
in 2-D with the 4x3 matrix ``F`` below.

This is written here (not taken from a library) because neither diffusers nor PyTorch offers it;
it pays on every device: -1.5 s of the 34 s CPU reference step (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn

# rows: the 4 taps of the transposed kernel; columns: the 3 taps of the conv3x3 they sum
_FOLD = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def fold_upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The conv_transpose2d weight ``[C_in, C_out, 4, 4]`` equal to nearest x2 then ``weight``
    ``[C_out, C_in, 3, 3]`` (stride 1, padding 1); differentiable in ``weight``."""
    fold = torch.tensor(_FOLD, dtype=weight.dtype, device=weight.device)  # [4, 3]
    with torch.autocast(device_type=weight.device.type, enabled=False):  # the fold in the weight's dtype
        kernel = torch.einsum("ka,oiab,lb->iokl", fold, weight, fold)  # [C_in, C_out, 4, 4]
    return kernel


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for
    ``x`` [B, C_in, H, W] -> [B, C_out, 2H, 2W], as one transposed convolution."""
    return F.conv_transpose2d(x, fold_upsample_kernel(weight), bias, stride=2, padding=1)  # [B, C_out, 2H, 2W]


def _plain_3x3(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class FoldedUpsample2D(Upsample2D):
    """diffusers ``Upsample2D`` whose nearest-x2 + conv3x3 runs as one transposed convolution
    (any other configuration of the layer runs diffusers' own forward)."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if (output_size is not None or args or kwargs or self.norm is not None or self.use_conv_transpose
                or not (self.use_conv and self.interpolate and _plain_3x3(conv))):
            return super().forward(hidden_states, output_size, *args, **kwargs)
        return upsample_conv3x3(hidden_states, conv.weight, conv.bias)  # [B, C, 2H, 2W]


def set_folded_upsampling(vae: nn.Module, enabled: bool = True) -> int:
    """Switch every ``Upsample2D`` of ``vae`` to the folded form (or back); returns how many.

    Only the forward changes (the instances' class): parameters, buffers and state-dict keys stay.
    """
    count = 0
    for module in vae.modules():
        if isinstance(module, Upsample2D):
            module.__class__ = FoldedUpsample2D if enabled else Upsample2D
            count += 1
    return count
