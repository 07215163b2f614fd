"""Non-finite guard: a step whose losses or gradient norms are NaN/inf changes nothing.

A REPA-E step has up to three optimizer updates (VAE, discriminator, SiT) and an EMA update.
None of the phases reads weights another phase has just updated (the discriminator and SiT
phases use the VAE output detached and computed before the VAE update), and no two phases
write gradients to the same parameters, so a step (:mod:`repae.training.step`) computes every
phase's gradients first and the guard applies the updates together at the end:

1. :meth:`NonFiniteGuard.begin` snapshots the buffers a forward pass mutates (latent-normaliser
   and discriminator BatchNorm statistics, LeCam averages) — a few KB.
2. The step runs the phases (forwards and backwards only).
3. :meth:`NonFiniteGuard.apply` unscales and clips each optimizer's gradients (``grad_norm_*``),
   stacks every metric (loss terms and gradient norms) into one vector and reads it to the host
   **once** (with several processes the vector is all-reduced first, so every rank takes the
   same decision). If all are finite it steps the optimizers and the EMA; otherwise it zeroes
   the gradients, restores the buffers and touches no optimizer and no EMA. The step counter and
   the data stream still advance, so a bad batch is not retried forever.

Skipped steps are counted and logged (``nonfinite_skips`` in the metrics once there is one);
``train.max_nonfinite_skips`` consecutive skips halt the run with :class:`NonFiniteError`, one line
naming the step, the loss term and the last good checkpoint.

Under fp16 every optimizer has its own ``GradScaler`` (:func:`loss_scalers`): the discriminator's
overflow must not lower the SiT's loss scale. A non-finite gradient norm with finite losses is a
scaler's normal overflow: that optimizer's update is skipped and its scale lowered; the others step.
The EMA (it follows the SiT) is updated only when the SiT stepped, and when every optimizer
overflowed the step changes nothing at all (buffers restored, as for a non-finite loss). Overflows
are counted (``fp16_overflows``: optimizer updates skipped so far) and never halt the run; each
optimizer's current scale is in the metrics (``loss_scale_sit`` ...).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from repae.errors import ConfigError
from repae.training.ema import EMA
from repae.training.engine import Engine

log = logging.getLogger("repae.train")


class NonFiniteError(ConfigError):
    """Training stopped: too many consecutive steps with non-finite losses or gradients."""


def loss_scalers(optimizers: dict[str, torch.optim.Optimizer], device_type: str, *, enabled: bool,
                 joint: bool = False) -> dict[str, torch.amp.GradScaler]:
    """One ``GradScaler`` per optimizer (disabled unless fp16). ``joint``: the VAE and the SiT share
    one, because without the stop-gradient one backward feeds both (a loss has one scale)."""
    scalers = {name: torch.amp.GradScaler(device_type, enabled=enabled) for name in optimizers}
    if joint and "opt_vae" in scalers and "opt_sit" in scalers:
        scalers["opt_sit"] = scalers["opt_vae"]
    return scalers


def _short(name: str) -> str:
    return name.removeprefix("opt_")


class NonFiniteGuard:
    """Clips, then steps every optimizer and the EMA after one finiteness check, or skips the step.

    Args:
        optimizers: the run's optimizers by name (``opt_vae`` -> metric ``grad_norm_vae``); each
            clips and steps exactly the parameters it was built with.
        scalers: each optimizer's ``GradScaler`` by the same names (:func:`loss_scalers`; fp16 loss
            scaling, disabled otherwise).
        ema: the EMA, updated from ``ema_model`` and ``normalizer`` after a finite step.
        stateful: modules whose buffers a forward updates (restored when a step is skipped).
        engine: the process set-up (the finiteness check is shared by all ranks).
        max_grad_norm: clipping threshold of every optimizer's gradients.
        max_consecutive: this many skips in a row halt the run (:class:`NonFiniteError`).
        run_dir: where the halt message looks for the last good checkpoint.
    """

    def __init__(self, *, optimizers: dict[str, torch.optim.Optimizer], scalers: dict[str, torch.amp.GradScaler], ema: EMA,
                 ema_model: nn.Module, normalizer: nn.Module, stateful: list[nn.Module | None], engine: Engine,
                 max_grad_norm: float, max_consecutive: int, run_dir: Path):
        self.optimizers, self.scalers = optimizers, scalers
        self.ema, self.ema_model, self.normalizer = ema, ema_model, normalizer
        self.stateful = [m for m in stateful if m is not None]
        self.engine, self.run_dir = engine, run_dir
        self.max_grad_norm = max_grad_norm
        self.max_consecutive = int(max_consecutive)
        self.consecutive = 0
        self.total = 0
        self.overflows = 0  # fp16: optimizer updates a scaler skipped
        self._snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []

    def begin(self) -> None:
        """Snapshot the buffers a forward pass updates (call before the step's first forward)."""
        self._snapshot = [(b, b.detach().clone()) for m in self.stateful for b in m.buffers()]

    def clip(self) -> dict[str, torch.Tensor]:
        """Unscale (fp16) and clip every optimizer's gradients; their norms, still on the device."""
        norms = {}
        for name, opt in self.optimizers.items():
            self.scalers[name].unscale_(opt)
            params = [p for group in opt.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            norms[f"grad_norm_{_short(name)}"] = norm.detach()
        return norms

    def _read(self, metrics: dict[str, torch.Tensor]) -> tuple[dict[str, float], list[str]]:
        """The step's one device->host read: local metric values and the globally non-finite keys."""
        eng = self.engine
        keys = list(metrics)
        if not keys:
            return {}, []
        dev = next((v.device for v in metrics.values() if torch.is_tensor(v)), torch.device("cpu"))
        vec = torch.stack([torch.as_tensor(metrics[k], device=dev).detach().float().reshape(()) for k in keys])
        if eng.distributed:
            import torch.distributed as dist

            glob = vec.to(eng._coll_device, copy=True)
            dist.all_reduce(glob)  # a NaN/inf on any rank makes the sum non-finite on every rank
            host = torch.cat([vec.to(glob.device), glob]).tolist()
            local, total = host[:len(keys)], host[len(keys):]
        else:
            local = total = vec.tolist()
        bad = [k for k, v in zip(keys, total) if not math.isfinite(v)]
        return dict(zip(keys, local)), bad

    def apply(self, metrics: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Clip, then step every optimizer and the EMA if the step (0-based ``step``) is finite,
        else skip it; return the metrics (with the gradient norms) as floats. Raises
        :class:`NonFiniteError` after too many consecutive skips."""
        metrics.update(self.clip())
        values, bad = self._read(metrics)
        overflowed = self._overflowed(bad)
        skip = bool(bad) and not overflowed  # a non-finite loss: nothing steps
        if not skip:
            for name, opt in self.optimizers.items():
                self.scalers[name].step(opt)  # fp16: a scaler skips its overflowed optimizer itself
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        for scaler in {id(s): s for s in self.scalers.values()}.values():
            scaler.update()
        if skip or len(overflowed) == len(self.optimizers):
            with torch.no_grad():
                for live, saved in self._snapshot:
                    live.copy_(saved)
        elif "opt_sit" not in overflowed:
            self.ema.update(self.ema_model, self.normalizer)
        self._snapshot = []
        if skip:
            self._count_skip(step + 1, bad)
        else:
            self.consecutive = 0
        self._fp16_metrics(values, overflowed, step + 1)
        if self.total:
            values["nonfinite_skips"] = float(self.total)
        return values

    def _overflowed(self, bad: list[str]) -> list[str]:
        """fp16: the optimizers whose gradients overflowed (finite losses, non-finite gradient norms)."""
        if not bad or not any(s.is_enabled() for s in self.scalers.values()):
            return []
        if not all(k.startswith("grad_norm") for k in bad):
            return []
        return [name for name in self.optimizers if f"grad_norm_{_short(name)}" in bad]

    def _fp16_metrics(self, values: dict[str, float], overflowed: list[str], step: int) -> None:
        if overflowed:
            self.overflows += len(overflowed)
            log.info("step %d: fp16 gradient overflow in %s; those updates skipped, loss scale lowered", step,
                     ", ".join(overflowed))
        for name, scaler in self.scalers.items():
            if scaler.is_enabled():
                values[f"loss_scale_{_short(name)}"] = float(scaler.get_scale())
        if self.overflows:
            values["fp16_overflows"] = float(self.overflows)

    def _count_skip(self, step: int, bad: list[str]) -> None:
        """Log a skipped step (1-based ``step``); halt after ``max_consecutive`` in a row."""
        self.consecutive += 1
        self.total += 1
        term = next((k for k in bad if not k.startswith("grad_norm")), bad[0])
        log.warning("step %d: non-finite %s; step skipped, no weights changed (%d in a row, %d in total)",
                    step, ", ".join(bad), self.consecutive, self.total)
        if self.consecutive >= self.max_consecutive:
            from repae.training.checkpoint import last_good_checkpoint

            raise NonFiniteError(
                f"training halted at step {step}: {self.consecutive} consecutive steps with non-finite "
                f"{term}; last good checkpoint: {last_good_checkpoint(self.run_dir)} "
                "(lower the learning rates or optim.max_grad_norm, then rerun to resume from it)")

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total, "fp16_overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
        self.overflows = int(state.get("fp16_overflows", 0))
