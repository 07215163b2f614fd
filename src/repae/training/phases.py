"""The REPA-E training step as named phases with explicit gradient routing.

REPA-E (Leng et al. 2025, section 4; spec-repae.md 1.3) updates three networks from one VAE
forward, in this order: VAE -> discriminator -> SiT -> EMA (the whole step, top to bottom:
:func:`repae.training.step.repae_step`). The routing rules, written once here as code (never as
``requires_grad`` toggles on shared modules):

* VAE phase: ``L_REG + lambda_v * REPA``; the REPA term goes through the *frozen* SiT — called
  with ``torch.func.functional_call`` on detached parameters, so the gradient reaches the latent
  ``z`` (and the VAE) but never the SiT weights — and through the normaliser in eval mode
  (running statistics, no update). Label dropout is off in this pass.
* Discriminator phase: hinge loss on the reconstruction computed before the VAE update,
  detached (inside the loss module).
* SiT phase: flow-matching loss + ``lambda_g * REPA`` on ``z.detach()`` (stop-gradient: the
  diffusion loss never reaches the VAE), reusing the VAE phase's ``t`` and noise; the normaliser
  uses and updates batch statistics; label dropout on.
* Tokenizer regularisers (SE / EQ-VAE / VF, :mod:`repae.losses.tokenizer_reg`) join the VAE
  phase: on an EQ-VAE step L_REG *and* the discriminator phase score ``(tau(x), Dec(tau(z)))``;
  the VF projection trains with the VAE; the foundation model is frozen (no graph). The
  tokenizer-only recipe ``vae`` runs the VAE and discriminator phases and no SiT phase.

All randomness of a step (posterior noise, t, diffusion noise, label-drop mask) is drawn for the
*global* batch from a generator seeded by (seed, step, micro-batch) and sliced to the rank's
part (:class:`StepRandomness`), so runs are independent of the number of processes and resume
bit-exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from repae.conventions import uint8_to_unit
from repae.losses.alignment import repa_loss
from repae.losses.tokenizer_reg import TokenizerForward, TokenizerRegularizer, TokRegDraw, foundation_features
from repae.training.recipes import Recipe

# --- modules that wrap the networks for one DDP forward each ------------------------------------


class VAEForward(nn.Module):
    """Encode, sample the posterior with given noise, decode (spec 1.3 step C).

    With a :class:`~repae.losses.tokenizer_reg.TokenizerRegularizer` the regulariser runs the
    whole VAE side (its extra decodes and the VF projection), so DDP syncs the projection too.
    """

    def __init__(self, tokenizer: nn.Module, *, decode: bool = True, tokreg: nn.Module | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.decode = decode  # False when nothing uses the reconstruction (the w/o-L_REG ablation)
        self.tokreg = tokreg

    def forward(self, x: torch.Tensor, eps: torch.Tensor, draw=None) -> TokenizerForward:
        if self.tokreg is not None:
            return self.tokreg(self.tokenizer, x, eps, draw)
        posterior = self.tokenizer.encode(x)
        z = posterior.mean + posterior.std * eps  # [b, C, h, w] posterior sample, fp32
        recon = self.tokenizer.decode(z) if self.decode else None  # [b, 3, H, W]
        return TokenizerForward(mean=posterior.mean, logvar=posterior.logvar, z=z, recon=recon, target=x)


class AlignedSiT(nn.Module):
    """SiT plus its REPA projectors as one module: ``(x_t, t, y) -> (prediction, projections)``."""

    def __init__(self, sit: nn.Module):
        super().__init__()
        self.sit = sit

    def forward(self, x_t, t, y, *, align_depth: int | None = None, stop_at_hidden: bool = False):
        out = self.sit(x_t, t, y, hidden_at=align_depth, stop_at_hidden=stop_at_hidden)
        projections = self.sit.project(out.hidden) if align_depth else []  # list of [b, T, D_enc]
        return out.prediction, projections


class DiscriminatorLoss(nn.Module):
    """The discriminator's hinge loss as one forward (real and fake inside) for DDP."""

    def __init__(self, lreg: nn.Module):
        super().__init__()
        self.lreg = lreg

    def forward(self, x, x_hat, step: int):
        out = self.lreg.discriminator_loss(x, x_hat, step)
        return out.loss, out.metrics


def frozen_call(module: nn.Module, *args, **kwargs):
    """Run ``module`` with its parameters detached: gradients flow to the inputs only.

    This is how the VAE-alignment pass sees a frozen SiT without touching ``requires_grad``
    of the live model (spec 11.3: the SiT must receive no 1.5 x REPA gradient).
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, args, kwargs, strict=False)


def frozen_projections(sit: AlignedSiT, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                       depth: int) -> list[torch.Tensor]:
    """The VAE-alignment pass: the frozen SiT's projections at block ``depth`` (the forward stops
    there). One function so that ``train.compile`` can compile it (:class:`PhaseContext.frozen_sit`)."""
    _, projections = frozen_call(sit, x_t, t, y, align_depth=depth, stop_at_hidden=True)
    return projections  # list of [b, T, D_enc]


# --- randomness of one step ------------------------------------------------------------------


@dataclass
class StepRandomness:
    posterior_eps: torch.Tensor  # [b, C, h, w]
    t: torch.Tensor  # [b]
    noise: torch.Tensor  # [b, C, h, w]
    drop: torch.Tensor  # [b] bool, label dropped to the null class
    tokreg: TokRegDraw | None = None  # SE / EQ-VAE choices of the step (drawn after the above)

    @classmethod
    def draw(cls, *, generator: torch.Generator, global_batch: int, rows: slice, latent_shape, time_sampler,
             drop_prob: float, device, tokreg: TokenizerRegularizer | None = None) -> StepRandomness:
        """Draw for the global batch, in a fixed order, and keep this rank's ``rows``. The
        regularisers' choices (``tokreg`` given) come last, so turning them on changes no other draw."""
        shape = (global_batch, *latent_shape)
        eps = torch.randn(shape, generator=generator)  # [B, C, h, w]
        t = time_sampler.sample(global_batch, generator=generator)  # [B]
        noise = torch.randn(shape, generator=generator)  # [B, C, h, w]
        drop = torch.rand(global_batch, generator=generator) < drop_prob  # [B]
        mine = (eps[rows].to(device), t[rows].to(device), noise[rows].to(device), drop[rows].to(device))
        choices = None if tokreg is None else tokreg.draw(generator, global_batch=global_batch, rows=rows,
                                                            latent_channels=latent_shape[0], device=device)
        return cls(*mine, tokreg=choices)


# --- phase outputs -----------------------------------------------------------------------------


@dataclass
class PhaseOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class VAEPhaseOutput(PhaseOutput):
    z: torch.Tensor | None = None  # raw posterior sample (attached to the VAE graph)
    recon: torch.Tensor | None = None
    target: torch.Tensor | None = None  # the "real" side of recon: x, or tau(x) on an EQ-VAE step


@dataclass
class PhaseContext:
    """Everything a phase needs besides the batch (built once by the trainer)."""

    recipe: Recipe
    tokenizer: nn.Module  # unwrapped Tokenizer (owns .normalizer)
    vae_forward: nn.Module | None  # VAEForward, possibly DDP-wrapped
    sit: nn.Module  # AlignedSiT, possibly DDP-wrapped
    sit_unwrapped: AlignedSiT
    objective: object  # FlowMatching (SiT, LightningDiT) or DDPMObjective (DiT): draw + batch_loss
    lreg: nn.Module | None  # VAERegularizationLoss (unwrapped)
    disc_loss: nn.Module | None  # DiscriminatorLoss, possibly DDP-wrapped
    align_depth: int  # align.depth
    sit_coeff: float  # align.sit_coeff (lambda_g)
    vae_coeff: float  # align.vae_coeff (lambda_v)
    tokreg: TokenizerRegularizer | None = None  # unwrapped; None when all regularisers are off
    vf_encoder: nn.Module | None = None  # frozen foundation model of the VF loss
    frozen_sit: Callable = frozen_projections  # (sit, x_t, t, y, depth) -> projections; compiled with train.compile


# --- phases --------------------------------------------------------------------------------------


def encode_frozen(ctx: PhaseContext, images: torch.Tensor, rnd: StepRandomness,
                  moments: torch.Tensor | None = None) -> torch.Tensor:
    """Frozen-VAE recipes: a posterior sample without any graph (spec 8, REPA baseline), from the
    images or, for the `ldm` recipe, from cached moments [b, 2C, h, w] (spec 7.3)."""
    with torch.no_grad():
        if moments is not None:
            mean, std = moments.float().chunk(2, dim=1)  # each [b, C, h, w]
        else:
            posterior = ctx.tokenizer.encode(uint8_to_unit(images))
            mean, std = posterior.mean, posterior.std
        return mean + std * rnd.posterior_eps  # [b, C, h, w]


def vae_phase(ctx: PhaseContext, images, labels, targets, rnd: StepRandomness, step: int) -> VAEPhaseOutput:
    """L_REG + lambda_v * REPA through the frozen SiT (spec 1.3 steps C-F)."""
    x = uint8_to_unit(images)  # [b, 3, H, W] in [-1, 1]
    fwd = ctx.vae_forward(x, rnd.posterior_eps, rnd.tokreg)
    z, recon = fwd.z, fwd.recon
    loss = z.new_zeros(())
    metrics: dict[str, torch.Tensor] = {}
    if ctx.recipe.l_reg:  # on (target, recon): the transformed pair on an EQ-VAE step
        last_layer = ctx.tokenizer.decoder_last_layer if ctx.lreg.adaptive_disc_weight else None
        out = ctx.lreg.generator_loss(fwd.target, recon, fwd.kl_posterior(), step, last_layer=last_layer)
        loss = loss + out.loss
        metrics.update(out.metrics)
    if ctx.tokreg is not None:  # SE / EQ-VAE / VF (repae.losses.tokenizer_reg)
        tout = tokenizer_regularizers(ctx, images, fwd, rnd.tokreg, step)
        loss = loss + tout.loss
        metrics.update(tout.metrics)
    if ctx.recipe.vae_align:
        z_n = ctx.tokenizer.normalizer.normalize(z, update=False)  # running statistics, no update
        noised = ctx.objective.draw(z_n, t=rnd.t, noise=rnd.noise)
        projections = ctx.frozen_sit(ctx.sit_unwrapped, noised.x_t, noised.t, labels, ctx.align_depth)
        align = repa_loss(projections, targets)
        loss = loss + ctx.vae_coeff * align
        metrics["vae_align_loss"] = align.detach()
    metrics["vae_loss"] = loss.detach()
    return VAEPhaseOutput(loss=loss, metrics=metrics, z=z, recon=recon, target=fwd.target)


def tokenizer_regularizers(ctx: PhaseContext, images: torch.Tensor, fwd: TokenizerForward, draw: TokRegDraw,
                           step: int) -> PhaseOutput:
    """The tokenizer regularisers' terms of the VAE phase (spec-related-methods 1-3): SE and the
    VF loss (its features from the frozen foundation model on uint8 ``images`` [b, 3, H, W], no
    graph), plus the ``eq_step`` flag. EQ-VAE itself acts through ``fwd.target`` / ``fwd.recon``,
    which L_REG has already scored."""
    feats = None
    if ctx.vf_encoder is not None:  # [b, D, h, w] on the latent grid
        feats = foundation_features(ctx.vf_encoder, images, grid=tuple(fwd.z.shape[-2:]), pixels=ctx.tokreg.vf_pixels)
    out = ctx.tokreg.loss(fwd, lreg=ctx.lreg, step=step, features=feats,
                          last_layer=ctx.tokenizer.vae.encoder.conv_out.weight)
    metrics = dict(out.metrics)
    if ctx.tokreg.eq_prob > 0:
        metrics["eq_step"] = fwd.z.new_tensor(float(draw.eq_mode == "equivariance"))
    return PhaseOutput(loss=out.loss, metrics=metrics)


def discriminator_phase(ctx: PhaseContext, images, recon: torch.Tensor, step: int,
                        target: torch.Tensor | None = None) -> PhaseOutput:
    """Hinge loss on real vs the pre-update reconstruction (spec 1.3 step H, 4.6). ``target``
    replaces the real images when the VAE phase compared ``recon`` with a transformed image
    (EQ-VAE: the discriminator sees the transformed pair, spec-related-methods 2.1)."""
    x = uint8_to_unit(images) if target is None else target.detach()
    loss, metrics = ctx.disc_loss(x, recon.detach(), step)
    return PhaseOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


def sit_phase(ctx: PhaseContext, z: torch.Tensor, labels, targets, rnd: StepRandomness) -> PhaseOutput:
    """Flow matching + lambda_g * REPA on the (by default detached) latent (spec 1.3 step I)."""
    z_in = z.detach() if ctx.recipe.stop_grad else z  # the stop-gradient of REPA-E
    z_n = ctx.tokenizer.normalizer.normalize(z_in, update=ctx.recipe.update_normalizer)  # [b, C, h, w]
    noised = ctx.objective.draw(z_n, t=rnd.t, noise=rnd.noise)
    y = ctx.sit_unwrapped.sit.drop_labels(labels, mask=rnd.drop)  # CFG label dropout [b]
    depth = ctx.align_depth if ctx.recipe.sit_align else None
    prediction, projections = ctx.sit(noised.x_t, noised.t, y, align_depth=depth)
    denoising = ctx.objective.batch_loss(prediction, noised).mean()
    loss = denoising
    metrics = {"denoising_loss": denoising.detach()}
    if ctx.recipe.sit_align:
        proj = repa_loss(projections, targets)
        loss = loss + ctx.sit_coeff * proj
        metrics["proj_loss"] = proj.detach()
    metrics["sit_loss"] = loss.detach()
    return PhaseOutput(loss=loss, metrics=metrics)
