"""The VAE regularisation loss L_REG of REPA-E and its discriminator objective (spec-repae.md section 4).

    L_REG = w_rec * mean|x - x_hat| + w_perc * mean_B P(x, x_hat) + w_kl * mean_B KL
            + d_weight * factor * (-mean D(x_hat))                                  (spec 4.4, 4.8)
    L_D   = factor * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) [+ w_lecam * LeCam]  (spec 4.6)

REPA-E defaults (``configs/l1_lpips_kl_gan.yaml``): L1 weight 1, LPIPS weight 1, KL weight 1e-6,
fixed GAN weight 0.1 active from step 0, no LeCam, no adaptive weight. The paper (section 3) adds
``1.5 * REPA`` to L_REG on the VAE side; that term lives in ``repae.losses.alignment``.

Gradient routing is code, not module toggles (spec 1.3, style section 2.5):

- :meth:`VAERegularizationLoss.generator_loss` calls the discriminator through
  ``torch.func.functional_call`` with DETACHED parameters, so the GAN term reaches ``x_hat`` (the
  VAE) and never the discriminator weights (their ``.grad`` stays ``None``).
- :meth:`VAERegularizationLoss.discriminator_loss` detaches both images, so only the
  discriminator receives gradients.

Both run in float32 with autocast disabled (spec 1.4 / 11.13). The discriminator runs in the loss
module's mode, which stays ``train`` in REPA-E: its BatchNorms use the current batch's statistics
(real and fake in separate forward calls) and update their running stats in both methods (spec
4.4 note, 11.12). The perceptual module is always in eval mode.

Usage::

    reg = VAERegularizationLoss(perceptual="lpips", vgg_weights="vgg16-397923af.pth").to(device)
    out = reg.generator_loss(x, x_hat, posterior, step)          # out.loss, out.metrics
    (out.loss + 1.5 * align).backward(); vae_opt.step()
    d = reg.discriminator_loss(x, x_hat, step)                    # same x_hat as above
    d.loss.backward(); disc_opt.step()                           # disc_opt over reg.discriminator.parameters()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn as nn

from repae.errors import ConfigError
from repae.losses.adversarial import (
    LeCam,
    NLayerDiscriminator,
    adaptive_weight,
    generator_adv_loss,
    hinge_d_loss,
    load_discriminator_weights,
)
from repae.losses.perceptual import build_perceptual


class Posterior(Protocol):
    """Anything with a per-sample KL to N(0, I): ``kl() -> [B]`` (e.g. the tokenizer's DiagonalGaussian)."""

    def kl(self) -> torch.Tensor: ...


@dataclass
class LossOutput:
    """A scalar loss to backpropagate and detached 0-d float32 metrics named as in spec 1.7."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def _scalar(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A detached 0-d float32 tensor on ``like``'s device (no host sync)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(())
    return torch.tensor(float(value), device=like.device, dtype=torch.float32)


class VAERegularizationLoss(nn.Module):
    """L_REG (L1 + perceptual + KL + PatchGAN hinge) and the discriminator loss (spec section 4).

    Args (keyword-only; defaults are REPA-E's ``l1_lpips_kl_gan.yaml``):
        reconstruction_weight: weight of the L1 term, a mean over all elements (1.0).
        perceptual: ``"lpips"`` (needs ``vgg_weights``), ``"laplacian"`` (weight-free), ``"none"``,
            or a ready module ``(a, b) -> [B]`` ("lpips").
        perceptual_weight: weight of the batch-mean perceptual distance (1.0).
        kl_weight: weight of the batch-mean per-sample KL, summed over C*h*w (1e-6, spec 11.11).
        disc_weight: fixed GAN weight ``d_weight`` (0.1); multiplied by the adaptive ratio when
            ``adaptive_disc_weight``.
        disc_start: step from which the GAN terms are on (0 = from the first step, spec 11.9).
        disc_factor: GAN factor once ``step >= disc_start`` (1.0).
        lecam_weight: LeCam weight (0.0 = off; then no LeCam buffers exist).
        lecam_decay: LeCam EMA decay (0.999).
        adaptive_disc_weight: taming/LDM gradient-ratio weight (False; REPA-E uses a fixed weight).
            Needs ``last_layer=`` in :meth:`generator_loss`.
        vgg_weights: local torchvision VGG16 file for LPIPS (None -> ``$REPAE_VGG16_WEIGHTS``).
        lpips_remap_inputs: reproduce REPA-E's LPIPS ``2u - 1`` input quirk (True, spec 4.5).
        disc_ndf: discriminator base width (64).
        disc_layers: discriminator stride-2 layers (3).
        disc_weights: optional pretrained discriminator file, loaded strictly (None = random init).
    """

    def __init__(
        self,
        *,
        reconstruction_weight: float = 1.0,
        perceptual: str | nn.Module = "lpips",
        perceptual_weight: float = 1.0,
        kl_weight: float = 1e-6,
        disc_weight: float = 0.1,
        disc_start: int = 0,
        disc_factor: float = 1.0,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.999,
        adaptive_disc_weight: bool = False,
        vgg_weights: str | os.PathLike | None = None,
        lpips_remap_inputs: bool = True,
        disc_ndf: int = 64,
        disc_layers: int = 3,
        disc_weights: str | os.PathLike | None = None,
    ):
        super().__init__()
        weights = dict(
            reconstruction_weight=reconstruction_weight,
            perceptual_weight=perceptual_weight,
            kl_weight=kl_weight,
            disc_weight=disc_weight,
            disc_factor=disc_factor,
            lecam_weight=lecam_weight,
        )
        for name, value in weights.items():
            if value < 0:
                raise ConfigError(f"lreg.{name} must be >= 0, got {value}; set it to 0 or more")
        self.reconstruction_weight = reconstruction_weight
        self.perceptual_weight = perceptual_weight
        self.kl_weight = kl_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.disc_factor = disc_factor
        self.lecam_weight = lecam_weight
        self.adaptive_disc_weight = adaptive_disc_weight

        self.discriminator = NLayerDiscriminator(in_channels=3, ndf=disc_ndf, n_layers=disc_layers)
        if disc_weights is not None:
            load_discriminator_weights(self.discriminator, disc_weights)
        if isinstance(perceptual, nn.Module):  # a ready distance: frozen like the built ones
            self.perceptual = perceptual.eval().requires_grad_(False)
        else:
            self.perceptual = build_perceptual(perceptual, vgg_weights=vgg_weights, remap_inputs=lpips_remap_inputs)
        # LeCam anchors exist only when the term is on (spec 4.2).
        self.lecam = LeCam(decay=lecam_decay) if lecam_weight > 0 else None

    # -----------------------------------------------------------------------------------------

    def factor(self, step: int | torch.Tensor) -> float:
        """GAN factor at ``step``: ``disc_factor`` once ``step >= disc_start``, else 0 (hard switch)."""
        return self.disc_factor if int(step) >= self.disc_start else 0.0

    def _discriminate_frozen(self, images: torch.Tensor) -> torch.Tensor:
        """D(images) with the discriminator's parameters detached: the gradient reaches ``images``
        only. Buffers are the module's own, so train-mode BN still updates its running stats."""
        params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        buffers = dict(self.discriminator.named_buffers())
        return torch.func.functional_call(self.discriminator, {**params, **buffers}, (images,))

    def generator_loss(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        posterior: Posterior,
        step: int | torch.Tensor,
        *,
        last_layer: torch.Tensor | None = None,
    ) -> LossOutput:
        """VAE-side L_REG (spec 4.4): gradients reach ``x_hat`` and the posterior, never D.

        Args:
            x: real images ``[B, 3, H, W]`` in ``[-1, 1]``.
            x_hat: reconstructions ``[B, 3, H, W]`` in ``[-1, 1]``.
            posterior: object with ``kl() -> [B]`` (per-sample sum over C*h*w).
            step: global optimisation step (for ``disc_start``).
            last_layer: decoder's final conv weight; needed only with ``adaptive_disc_weight``.

        Returns:
            ``LossOutput(loss, metrics)`` with reconstruction_loss, perceptual_loss (weighted),
            kl_loss (weighted), weighted_gan_loss, discriminator_factor, gan_loss, d_weight.
        """
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have the same shape")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, x_hat = x.float(), x_hat.float()  # [B, 3, H, W]
            rec = self.reconstruction_weight * (x - x_hat).abs().mean()  # mean over B*3*H*W
            perc = self.perceptual_weight * self.perceptual(x, x_hat).mean()  # [B] -> mean
            kl = self.kl_weight * posterior.kl().float().mean()  # sum over C*h*w per sample, mean over B

            factor = self.factor(step)
            d_weight = _scalar(self.disc_weight, x)
            if factor > 0 and self.disc_weight > 0:
                logits_fake = self._discriminate_frozen(x_hat)  # [B, 1, h, w]
                gan = generator_adv_loss(logits_fake)
                if self.adaptive_disc_weight and torch.is_grad_enabled():
                    if last_layer is None:
                        raise ConfigError(
                            "lreg.adaptive_disc_weight=true needs the decoder's last layer: pass "
                            "generator_loss(..., last_layer=<decoder final conv weight>) or set lreg.adaptive_disc_weight=false"
                        )
                    d_weight = adaptive_weight(rec + perc, gan, last_layer) * self.disc_weight
            else:  # GAN off before disc_start: no discriminator pass at all (spec 4.4 step 3)
                gan = x.new_zeros(())
            weighted_gan = d_weight * factor * gan
            loss = rec + perc + kl + weighted_gan

        metrics = {
            "reconstruction_loss": _scalar(rec, x),
            "perceptual_loss": _scalar(perc, x),
            "kl_loss": _scalar(kl, x),
            "weighted_gan_loss": _scalar(weighted_gan, x),
            "discriminator_factor": _scalar(factor, x),
            "gan_loss": _scalar(gan, x),
            "d_weight": _scalar(d_weight, x),
        }
        return LossOutput(loss=loss, metrics=metrics)

    def discriminator_loss(self, x: torch.Tensor, x_hat: torch.Tensor, step: int | torch.Tensor) -> LossOutput:
        """Discriminator hinge loss (+ LeCam) on detached images (spec 4.6).

        Real and fake go through D in two separate calls, so train-mode BatchNorm normalises each
        with its own batch statistics. Returns metrics d_loss, logits_real, logits_fake, lecam_loss.
        """
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have the same shape")
        with torch.autocast(device_type=x.device.type, enabled=False):
            real = x.detach().float()  # [B, 3, H, W]; no gradient to the VAE
            fake = x_hat.detach().float()
            logits_real = self.discriminator(real)  # [B, 1, h, w]
            logits_fake = self.discriminator(fake)  # [B, 1, h, w]
            loss = self.factor(step) * hinge_d_loss(logits_real, logits_fake)
            if self.lecam is not None:
                lecam = self.lecam_weight * self.lecam(logits_real, logits_fake)
                loss = loss + lecam
            else:
                lecam = real.new_zeros(())

        metrics = {
            "d_loss": _scalar(loss, x),
            "logits_real": _scalar(logits_real.mean(), x),
            "logits_fake": _scalar(logits_fake.mean(), x),
            "lecam_loss": _scalar(lecam, x),
        }
        return LossOutput(loss=loss, metrics=metrics)
