"""Time conventions of flow generators: SiT's ``transport`` (t = 0 noise, v = x - eps) vs ``repae``'s (t = 0 data,
v = eps - x).

:class:`TimeFlipped` runs a transport-convention network in ``repae``'s convention
(``v(x, t) = -net(x, 1 - t)``, exact); :func:`flip_time_convention_` rewrites the weights instead
(first timestep-MLP layer and the output layer; exact up to float rounding), which is what
``train.init_from`` and the exporter need. Which published layout uses which convention is
:data:`repae.interop.official.LAYOUTS`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from repae.models.sit import SiTOutput

__all__ = ["TimeFlipped", "flip_time_convention_"]


class TimeFlipped(nn.Module):
    """Run a network trained in SiT's ``transport`` convention (t = 0 noise, v = x - eps) in ``repae``'s.

    ``forward(x_t, t, y, ...) = -net(x_t, 1 - t, y, ...)``: with ``s = 1 - t`` both conventions describe
    the same ``x_t = (1 - t) x + t eps``, and ``dx/dt = -dx/ds``. Exact; the weights are untouched
    (so they export back bit-identically). Same ``SiTOutput`` interface as the wrapped network.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def config(self):
        return self.net.config

    @property
    def objective_kind(self) -> str:
        return getattr(self.net, "objective_kind", "flow")

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor, **kwargs) -> SiTOutput:
        out = self.net(x_t, 1.0 - t, y, **kwargs)
        pred = None if out.prediction is None else -out.prediction  # [B, C, h, w]
        return SiTOutput(prediction=pred, hidden=out.hidden)


def _time_reflection(dim: int, max_period: float = 10000.0) -> Tensor:
    """``M`` [dim, dim] float64 with ``features(1 - t) = M @ features(t)`` for the SiT timestep features.

    ``features(t) = [cos(t f) ++ sin(t f)]``; ``cos((1-t) f) = cos f cos(t f) + sin f sin(t f)`` and
    ``sin((1-t) f) = sin f cos(t f) - cos f sin(t f)``. ``M`` is symmetric and ``M @ M = I``.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    f = torch.exp(-math.log(max_period) * k / half)  # [half]
    c, s = torch.diag(torch.cos(f)), torch.diag(torch.sin(f))
    M = torch.zeros(dim, dim, dtype=torch.float64)
    M[:half, :half], M[:half, half:2 * half] = c, s
    M[half:2 * half, :half], M[half:2 * half, half:2 * half] = s, -c
    if dim % 2:
        M[-1, -1] = 1.0  # the zero padding feature stays zero
    return M


@torch.no_grad()
def flip_time_convention_(model: nn.Module) -> nn.Module:
    """Rewrite a flow network in place so that ``new(x, t) = -old(x, 1 - t)`` (transport <-> repae convention).

    Two tensors change: the first timestep-MLP weight ``W <- W M`` (:func:`_time_reflection`,
    computed in float64) and the output layer ``final_layer.linear`` (negated). Applying it twice
    gives the original network up to float rounding. Everything else (hidden states, REPA
    projections) is unchanged, so the flipped network trains and aligns like any ``repae`` network.
    """
    emb = model.t_embedder
    lin = emb.mlp[0]
    M = _time_reflection(emb.frequency_embedding_size).to(lin.weight.device)
    lin.weight.copy_((lin.weight.double() @ M).to(lin.weight.dtype))
    head = model.final_layer.linear
    head.weight.neg_()
    head.bias.neg_()
    return model
