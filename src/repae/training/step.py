"""One optimisation step of each gradient routing, read top to bottom.

:func:`repae_step` is REPA-E's step (stop-gradient); :func:`joint_step` is the no-stop-gradient
one of the naive end-to-end baseline and its ablation; :func:`frozen_vae_step` trains only the
generator (REPA, vanilla, LDM). Each runs the phases of :mod:`repae.training.phases` (forwards and
backwards only) on the step's :class:`MicroBatch` records and ends in ONE guarded apply
(:meth:`repae.training.guard.NonFiniteGuard.apply`: clip, optimizer steps, EMA — or a skip).
The trainer (:mod:`repae.training.trainer`) builds the micro-batches and picks the step with
:func:`step_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from repae.training import phases
from repae.training.guard import NonFiniteGuard
from repae.training.phases import PhaseContext, StepRandomness, VAEPhaseOutput
from repae.training.recipes import Recipe


@dataclass
class MicroBatch:
    """One micro-batch of this rank, on the device, with everything its phases draw or read."""

    images: torch.Tensor  # [b, 3, H, W] uint8
    labels: torch.Tensor  # [b] class indices
    targets: list[torch.Tensor]  # one per alignment encoder, [b, N, D_enc], normalised (no graph)
    randomness: StepRandomness  # posterior noise, t, diffusion noise, label drop, tokreg choices
    moments: torch.Tensor | None = None  # [b, 2C, h, w] cached posterior moments (`ldm` recipe)


@dataclass
class VAEResult:
    """What the later phases read of one micro-batch's VAE forward, detached from its graph."""

    z: torch.Tensor  # [b, C, h, w] raw posterior sample
    recon: torch.Tensor | None  # [b, 3, H', W'] reconstruction (None without L_REG)
    target: torch.Tensor  # [b, 3, H', W'] its real side: x, or tau(x) on an EQ-VAE step

    @classmethod
    def detach(cls, out: VAEPhaseOutput) -> VAEResult:
        return cls(out.z.detach(), None if out.recon is None else out.recon.detach(), out.target.detach())


class MetricSum:
    """Metrics of a step, averaged over its micro-batches, kept on the device until the guard reads them."""

    def __init__(self, accum: int):
        self.accum = accum
        self.metrics: dict[str, torch.Tensor] = {}

    def add(self, out: phases.PhaseOutput) -> None:
        for k, v in out.metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v.float() / self.accum


@dataclass(frozen=True)
class StepTools:
    """How a step turns losses into updates (built once by the trainer)."""

    autocast: Callable[[], AbstractContextManager]  # Engine.autocast: mixed precision of the forwards
    scalers: dict[str, torch.amp.GradScaler]  # per optimizer name: fp16 loss scaling (disabled otherwise)
    grad_accum: int  # micro-batches per step
    guard: NonFiniteGuard  # clip, optimizer steps and EMA after one finiteness check

    def backward(self, loss: torch.Tensor, optimizer: str) -> None:
        """Accumulate the gradients of one micro-batch's loss (the step's mean over micro-batches),
        scaled by the loss scaler of the ``optimizer`` whose parameters it trains."""
        self.scalers[optimizer].scale(loss / self.grad_accum).backward()


def repae_step(ctx: PhaseContext, micro: list[MicroBatch], tools: StepTools, step: int) -> dict[str, float]:
    """One REPA-E step (Leng et al. 2025, "REPA-E: Unlocking VAE for End-to-End Tuning with Latent
    Diffusion Transformers", Sec. 3; spec-repae.md 1.3): VAE -> discriminator -> SiT -> apply.

    The paper trains VAE and SiT end to end on ``L = L_DIFF + lambda * L_REPA + eta * L_REG``
    (Sec. 3) with a stop-gradient on the diffusion loss; each term reaches only these parameters
    (routed by detaches and detached weights, never by ``requires_grad`` toggles):

    * VAE (+ VF projection): ``L_REG + 1.5 * REPA`` (``align.vae_coeff``; + SE / VF terms).
      The REPA term goes through the SiT called on detached weights (``phases.frozen_call``) and
      the normaliser's running statistics, so it reaches the latent ``z`` and the VAE, never the SiT.
    * Discriminator: hinge loss on the detached reconstructions of this forward.
    * SiT (+ projectors): flow matching ``+ 0.5 * REPA`` (``align.sit_coeff``) on ``z.detach()``
      — the stop-gradient: the diffusion loss never reaches the VAE. The normaliser updates its
      batch statistics here.

    No phase reads weights another one updates and no two write the same gradients, so every
    update waits for the end: one guarded apply clips, steps the optimizers and the EMA, or skips
    the whole step when any loss or gradient norm is non-finite. The tokenizer-only recipe `vae`
    has no SiT phase: its normaliser tracks the latent statistics instead.
    """
    tools.guard.begin()  # snapshot the statistics a forward updates (restored if the step is skipped)
    acc = MetricSum(len(micro))
    vae: list[VAEResult] = []
    for mb in micro:  # 1. VAE phase: one VAE forward per micro-batch, reused by the phases below
        with tools.autocast():
            out = phases.vae_phase(ctx, mb.images, mb.labels, mb.targets, mb.randomness, step)
        tools.backward(out.loss, "opt_vae")
        acc.add(out)
        vae.append(VAEResult.detach(out))
    discriminator_backward(ctx, micro, vae, tools, acc, step)  # 2. discriminator phase
    if ctx.sit is None:  # `vae`: the normaliser tracks the latent statistics (export-vae reads them)
        with torch.no_grad():
            for v in vae:
                ctx.tokenizer.normalizer.normalize(v.z, update=ctx.recipe.update_normalizer)
    else:
        for mb, v in zip(micro, vae):  # 3. SiT phase on the detached latent
            with tools.autocast():
                out = phases.sit_phase(ctx, v.z, mb.labels, mb.targets, mb.randomness)
            tools.backward(out.loss, "opt_sit")
            acc.add(out)
    return tools.guard.apply(acc.metrics, step)  # 4. clip, step every optimizer and the EMA (or skip)


def joint_step(ctx: PhaseContext, micro: list[MicroBatch], tools: StepTools, step: int) -> dict[str, float]:
    """No stop-gradient (the naive end-to-end baseline `e2e-diffusion` of REPA-E Table 1 and the
    `no-stopgrad` ablation): one backward through the VAE and SiT losses, then the discriminator."""
    tools.guard.begin()
    acc = MetricSum(len(micro))
    vae: list[VAEResult] = []
    for mb in micro:
        with tools.autocast():
            vout = phases.vae_phase(ctx, mb.images, mb.labels, mb.targets, mb.randomness, step)
            sout = phases.sit_phase(ctx, vout.z, mb.labels, mb.targets, mb.randomness)  # z attached
        tools.backward(vout.loss + sout.loss, "opt_vae")  # one scaler for both (guard.loss_scalers)
        acc.add(vout)
        acc.add(sout)
        vae.append(VAEResult.detach(vout))
    discriminator_backward(ctx, micro, vae, tools, acc, step)
    return tools.guard.apply(acc.metrics, step)


def frozen_vae_step(ctx: PhaseContext, micro: list[MicroBatch], tools: StepTools, step: int) -> dict[str, float]:
    """Frozen VAE (REPA / vanilla / LDM): only the generator learns, on posterior samples without graph."""
    tools.guard.begin()
    acc = MetricSum(len(micro))
    for mb in micro:
        z = phases.encode_frozen(ctx, mb.images, mb.randomness, moments=mb.moments)  # [b, C, h, w]
        with tools.autocast():
            out = phases.sit_phase(ctx, z, mb.labels, mb.targets, mb.randomness)
        tools.backward(out.loss, "opt_sit")
        acc.add(out)
    return tools.guard.apply(acc.metrics, step)


def discriminator_backward(ctx: PhaseContext, micro: list[MicroBatch], vae: list[VAEResult], tools: StepTools,
                           acc: MetricSum, step: int) -> None:
    """Hinge loss on each micro-batch's detached (reconstruction, target) pair; nothing without L_REG."""
    if ctx.lreg is None:
        return
    for mb, v in zip(micro, vae):
        out = phases.discriminator_phase(ctx, mb.images, v.recon, step, target=v.target)
        tools.backward(out.loss, "opt_disc")
        acc.add(out)


def step_for(recipe: Recipe) -> Callable[[PhaseContext, list[MicroBatch], StepTools, int], dict[str, float]]:
    """The step shape of a recipe's routing (spec 1.3, REPA-E Table 6)."""
    if recipe.train_vae and recipe.stop_grad:
        return repae_step
    return joint_step if recipe.train_vae else frozen_vae_step
