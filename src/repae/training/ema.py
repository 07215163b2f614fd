"""Exponential moving average of the SiT *and* the latent normaliser statistics.

REPA-E (spec-repae.md 1.5, 11.7) EMAs the parameters and every float buffer; generation and VAE
export use the EMA's normaliser statistics. The EMA starts as an exact copy (a decay-0 update,
spec 1.2 step 13).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, *, model: nn.Module, normalizer: nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.normalizer = copy.deepcopy(normalizer).requires_grad_(False).eval()

    def _pairs(self, live_model: nn.Module, live_norm: nn.Module):
        for ema_m, live_m in ((self.model, live_model), (self.normalizer, live_norm)):
            live_p = dict(live_m.named_parameters())
            for name, p in ema_m.named_parameters():
                yield p, live_p[name]
            live_b = dict(live_m.named_buffers())
            for name, b in ema_m.named_buffers():
                yield b, live_b[name]

    @torch.no_grad()
    def update(self, live_model: nn.Module, live_normalizer: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        for ema_t, live_t in self._pairs(live_model, live_normalizer):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(live_t.detach().to(ema_t.dtype), 1.0 - d)
            else:
                ema_t.copy_(live_t)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"normalizer.{k}": v for k, v in self.normalizer.state_dict().items()})
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("model.")})
        self.normalizer.load_state_dict({k[11:]: v for k, v in sd.items() if k.startswith("normalizer.")})
