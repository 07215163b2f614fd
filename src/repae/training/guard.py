"""Non-finite guard: a step whose losses or gradient norms are NaN/inf changes nothing.

A REPA-E step has up to three optimizer updates (VAE, discriminator, SiT) and an EMA update.
None of the phases reads weights another phase has just updated (the discriminator and SiT
phases use the VAE output detached and computed before the VAE update), so the trainer computes
every phase's gradients and norms first and the guard applies the updates together at the end:

1. :meth:`NonFiniteGuard.begin` snapshots the buffers a forward pass mutates (latent-normaliser
   and discriminator BatchNorm statistics, LeCam averages) — a few KB.
2. The trainer runs the phases; ``_clip_step`` unscales and clips but does not step.
3. :meth:`NonFiniteGuard.apply` stacks every metric (loss terms and gradient norms) into one
   vector and reads it to the host **once** (with several processes the vector is all-reduced
   first, so every rank takes the same decision). If all are finite it steps the optimizers and
   the EMA; otherwise it zeroes the gradients, restores the buffers and touches no optimizer
   and no EMA. The step counter and the data stream still advance, so a bad batch is not retried
   forever.

Skipped steps are counted and logged (``nonfinite_skips`` in the metrics once there is one);
``train.max_nonfinite_skips`` consecutive skips halt the run with :class:`NonFiniteError`, one line
naming the step, the loss term and the last good checkpoint. Under fp16 a non-finite gradient
norm with finite losses is the GradScaler's normal overflow (it skips that optimizer and lowers
the scale) and is not counted.
"""

from __future__ import annotations

import logging
import math

import torch

from repae.errors import ConfigError

log = logging.getLogger("repae.train")


class NonFiniteError(ConfigError):
    """Training stopped: too many consecutive steps with non-finite losses or gradients."""


class NonFiniteGuard:
    def __init__(self, trainer, max_consecutive: int):
        self.trainer = trainer
        self.max_consecutive = int(max_consecutive)
        self.consecutive = 0
        self.total = 0
        self.pending: list[str] = []  # optimizers whose step waits for the check
        self._snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _mutable_buffers(self) -> list[torch.Tensor]:
        tr = self.trainer
        mods = [tr.tokenizer.normalizer, getattr(tr, "lreg", None), getattr(tr, "tokreg", None)]
        return [b for m in mods if m is not None for b in m.buffers()]

    def begin(self) -> None:
        """Snapshot the buffers a forward pass updates (call before the step's first forward)."""
        self.pending = []
        self._snapshot = [(b, b.detach().clone()) for b in self._mutable_buffers()]

    def _read(self, metrics: dict[str, torch.Tensor]) -> tuple[dict[str, float], list[str]]:
        """The step's one device->host read: local metric values and the globally non-finite keys."""
        eng = self.trainer.engine
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

    def apply(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        """Step the pending optimizers and the EMA if the step is finite, else skip it; return the
        metrics as floats. Raises :class:`NonFiniteError` after too many consecutive skips."""
        tr = self.trainer
        values, bad = self._read(metrics)
        overflow = bool(bad) and tr.scaler.is_enabled() and all(k.startswith("grad_norm") for k in bad)
        skip = bool(bad) and not overflow
        if not skip:
            for name in self.pending:
                tr.scaler.step(tr.optimizers[name])  # fp16: the scaler skips an overflowed optimizer itself
        for opt in tr.optimizers.values():
            opt.zero_grad(set_to_none=True)
        tr.scaler.update()
        if skip:
            with torch.no_grad():
                for live, saved in self._snapshot:
                    live.copy_(saved)
        else:
            tr.ema.update(tr._ema_source, tr.tokenizer.normalizer)
        self._snapshot, self.pending = [], []
        if skip:
            self.consecutive += 1
            self.total += 1
            step = tr.step + 1
            term = next((k for k in bad if not k.startswith("grad_norm")), bad[0])
            log.warning("step %d: non-finite %s; step skipped, no weights changed (%d in a row, %d in total)",
                        step, ", ".join(bad), self.consecutive, self.total)
            if self.consecutive >= self.max_consecutive:
                from repae.training.checkpoint import last_good_checkpoint

                raise NonFiniteError(
                    f"training halted at step {step}: {self.consecutive} consecutive steps with non-finite "
                    f"{term}; last good checkpoint: {last_good_checkpoint(tr.cfg.run_dir)} "
                    "(lower the learning rates or optim.max_grad_norm, then rerun to resume from it)")
        else:
            self.consecutive = 0
        if self.total:
            values["nonfinite_skips"] = float(self.total)
        return values

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
