"""Adversarial parts of the VAE regularisation loss (spec-repae.md sections 4.4, 4.6, 4.7).

- :class:`NLayerDiscriminator`: the PatchGAN of pix2pix / taming-transformers with BatchNorm
  (n_layers 3, ndf 64: 256x256 input -> logits ``[B, 1, 30, 30]``, 2,765,633 parameters). Its
  ``main.<i>`` state-dict layout matches the REPA-E/taming checkpoints, so a published
  ``*-discriminator-ckpt.pt`` loads strictly with :func:`load_discriminator_weights`.
- :func:`hinge_d_loss`, :func:`generator_adv_loss`: the hinge GAN objectives (spec 4.6 step 4, 4.4 step 3).
- :class:`LeCam`: LeCam regulariser with EMA anchors (Tseng et al. 2021; spec 4.6 step 5).
- :func:`adaptive_weight`: taming/LDM gradient-ratio GAN weight (Esser et al. 2021, eq. 7). Not
  used by REPA-E (its weight is a fixed 0.1, spec 11.9); available as an option.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import check_state_dict, is_state_dict, read_weights, strip_wrappers, unwrap_entries

# ---------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017), BatchNorm variant used by REPA-E (spec 4.7).

    Layers (``n_layers = 3``, ``ndf = 64``): conv 4/2/1 (bias) + LReLU; ``n_layers - 1`` blocks
    conv 4/2/1 (no bias) + BN + LReLU with widths ``ndf * min(2^n, 8)``; conv 4/1/1 (no bias) + BN
    + LReLU at width ``ndf * min(2^n_layers, 8)``; conv 4/1/1 (bias) to one logit channel.
    Spatial size: 256 -> 128 -> 64 -> 32 -> 31 -> 30. LeakyReLU slope 0.2 (in place).

    Args:
        in_channels: image channels (default 3).
        ndf: width of the first conv (default 64).
        n_layers: number of stride-2 convs (default 3).
    """

    def __init__(self, *, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise ConfigError(f"discriminator needs n_layers >= 1 and ndf >= 1 (got {n_layers}, {ndf}); pass values >= 1 "
                              "(defaults 3 and 64)")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last BN block keeps the resolution (minus 1)
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The "weights_init" rule (spec 4.7): conv weights N(0, 0.02) (conv biases keep PyTorch's
        default init), BatchNorm weight N(1, 0.02) and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits ``[B, 1, h, w]`` for images ``[B, C, H, W]`` (``h = H/8 - 2`` for 3 layers)."""
        return self.main(x)


def load_discriminator_weights(discriminator: nn.Module, path: str | os.PathLike) -> None:
    """Load a pretrained discriminator (README recipe, ``--disc-pretrained-ckpt``) strictly.

    Accepts a bare state dict, or one nested under ``discriminator`` / ``model`` / ``state_dict``
    (e.g. one of our training checkpoints); a DDP ``module.`` prefix is stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"discriminator checkpoint not found at {path}",
            "set lreg.disc_weights to an existing file "
            "or leave it unset to start from random init",
        )
    fix = "pass a discriminator state dict, or leave lreg.disc_weights unset to start from random init"
    sd = unwrap_entries(read_weights(path, what="discriminator checkpoint", fix=fix),
                        ("discriminator", "model", "state_dict"))
    if not is_state_dict(sd):
        raise ConfigError(f"{path} holds no discriminator state dict; {fix}")
    sd = strip_wrappers(sd)
    check_state_dict(sd, discriminator.state_dict(), what=f"{path} does not match the discriminator",
                     hint="; the discriminator is the 3-layer PatchGAN with 64 base channels; pass a checkpoint of "
                     "that architecture")
    discriminator.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------
# GAN objectives
# ---------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))`` (spec 4.6)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean D(x_hat)`` over all patch logits (spec 4.4 step 3)."""
    return -logits_fake.mean()


class LeCam(nn.Module):
    """LeCam regulariser (Tseng et al. 2021, "Regularizing GANs under limited data"), as in spec 4.6
    step 5: with ``r = mean D(x)``, ``f = mean D(x_hat)`` and EMA anchors ``r_ema, f_ema`` (init 0),

        ``R = relu(r - f_ema)^2 + relu(r_ema - f)^2``

    computed with the anchors BEFORE this call's update ``a <- decay * a + (1 - decay) * value``.
    The caller multiplies by the LeCam weight.

    Args:
        decay: EMA decay of the anchors (default 0.999).
    """

    def __init__(self, *, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"lecam_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        r, f = logits_real.float().mean(), logits_fake.float().mean()
        loss = F.relu(r - self.ema_fake.clone()).pow(2) + F.relu(self.ema_real.clone() - f).pow(2)
        with torch.no_grad():
            self.ema_real.mul_(self.decay).add_((1.0 - self.decay) * r.detach())
            self.ema_fake.mul_(self.decay).add_((1.0 - self.decay) * f.detach())
        return loss


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Gradient-ratio GAN weight of taming/LDM (Esser et al. 2021, eq. 7), detached:

    ``||grad_W rec_loss|| / (||grad_W g_loss|| + 1e-4)`` clamped to ``[0, 1e4]``, with ``W`` the
    decoder's last layer weight. Both graphs are retained for the caller's backward.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()
