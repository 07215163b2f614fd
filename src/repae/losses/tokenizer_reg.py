"""Tokenizer regularisers that make a VAE's latent easier to diffuse (spec-related-methods.md 1-3).

Three regularisers, each optional, usable in the tokenizer-only recipe ``vae`` and inside REPA-E
(all weights default to 0 = off):

* **SE** — scale equivariance (Skorokhodov et al. 2025, "Improving the Diffusability of
  Autoencoders"; spec 3.1): ``L = d(x, Dec(z)) + alpha * d(x~, Dec(z~))`` where ``x~, z~`` are
  bilinear downsamplings of the image and of the latent by the SAME factor, drawn per step. The
  first term is L_REG's reconstruction; this module adds the second one.
* **EQ-VAE** (Kouzelis et al. 2025; spec 2.1-2.2), implicit decoder form: on an *equivariance
  step* the reconstruction pair that L_REG and the discriminator see becomes
  ``(tau(x), Dec(tau(z)))``, ``tau`` = bilinear resize by ``s`` then ``rot90`` by ``k * 90°``; the
  other steps are *prior-preservation* steps (plain reconstruction, a fraction of them at a
  random low resolution: encode and decode the downscaled image).
* **VF loss** of VA-VAE (Yao et al. 2025; spec 1.3): a bias-free 1x1 conv projects the *sampled*
  latent to the foundation model's width, then ``L_vf = w_mdms * L_mdms + w_mcos * L_mcos`` with
  margins m2 / m1, weighted by the detached adaptive ratio
  ``||grad_W L_nll|| / (||grad_W L_vf|| + 1e-4)`` (``W`` = the encoder's last conv, clamped to
  ``[0, 1e8]``) times ``w_hyper``.

Where the parts live:

* :class:`TokenizerRegularizer` (an ``nn.Module``; it owns the VF projection, which is trained by
  the VAE optimizer and saved in checkpoints) has two halves:
  :meth:`~TokenizerRegularizer.forward` runs every network call of the VAE side (encode, the extra
  decodes, the projection) so that it can sit inside the DDP-wrapped VAE forward, and
  :meth:`~TokenizerRegularizer.loss` turns that output into the SE and VF terms.
* Per-step randomness (the SE factor, the EQ step type, scale and rotation, the low-resolution
  posterior noise) is drawn by :meth:`~TokenizerRegularizer.draw` from the trainer's per-step
  generator (``repae.training.engine.step_generator``), so runs resume bit-exactly.
* the run-config side (``validate_tokreg``, ``build_tokreg``, ``build_vf_encoder``) is in
  :mod:`repae.training.builders` with the other builders.

Pixels are float ``[-1, 1]`` (:mod:`repae.conventions`); latents are raw (un-normalised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from repae.conventions import uint8_to_unit
from repae.errors import ConfigError
from repae.losses.adversarial import generator_adv_loss

if TYPE_CHECKING:  # pragma: no cover
    from repae.losses.regularization import VAERegularizationLoss

SE_TERMS = ("l1", "perceptual", "gan")  # distance terms d of SE may use (spec 3.1 [unverified])
VF_PIXELS = ("encoder", "vavae")  # how the foundation model sees the image (spec 8 pitfall 1)
VF_EPS = 1e-4  # eps of the VF adaptive weight (spec 1.3)
VF_MAX_WEIGHT = 1e8  # clamp of the VF adaptive weight (spec 1.3; the GAN one uses 1e4)
PATCHGAN_LAYERS = 3  # the trainer's discriminator depth (NLayerDiscriminator default)
LPIPS_MIN_SIDE = 16  # VGG16 relu5_3 needs >= 1 pixel after four 2x max-pools


# ---------------------------------------------------------------------------------------------
# Helpers: resizing and transforms (same operator in pixel and latent space)
# ---------------------------------------------------------------------------------------------


def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size`` (align_corners=False, no antialias), identity when unchanged.

    The one resampling operator of this module, for images and latents alike (spec 2.1 step 2,
    spec 8 pitfall 13): with the same operator on both sides the spatial correspondence holds.
    """
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)


def downsample(t: torch.Tensor, factor: int) -> torch.Tensor:
    """SE's ``Down``: bilinear downsampling of ``[B, C, H, W]`` by an integer ``factor`` (spec 3.1)."""
    h, w = t.shape[-2:]
    return resize(t, (h // factor, w // factor))  # [B, C, H/f, W/f]


def eq_transform(t: torch.Tensor, size: tuple[int, int], rotation: int) -> torch.Tensor:
    """EQ-VAE's ``tau``: resize to ``size`` then ``rot90`` by ``rotation * 90°`` over (H, W) (spec 2.1)."""
    return torch.rot90(resize(t, size), rotation, dims=(-2, -1))  # [B, C, h', w'] (swapped if k odd)


def patchgan_min_side(n_layers: int = PATCHGAN_LAYERS) -> int:
    """Smallest image side the PatchGAN maps to >= 1 logit: ``floor(n / 2^L) - 2 >= 1``."""
    return 3 * 2**n_layers


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major patch tokens ``[B, N, D]`` -> feature map ``[B, D, h, w]`` (``N = h * w``)."""
    b, n, d = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} foundation tokens do not form the {grid[0]}x{grid[1]} latent grid")
    return tokens.transpose(1, 2).reshape(b, d, *grid)  # [B, D, h, w]


# ---------------------------------------------------------------------------------------------
# VF loss (VA-VAE, spec 1.3)
# ---------------------------------------------------------------------------------------------


def marginal_cosine_loss(z_proj: torch.Tensor, feats: torch.Tensor, margin: float) -> torch.Tensor:
    """``L_mcos = mean_{b,i,j} ReLU(1 - m1 - cos(z'_ij, f_ij))``, cosine over channels (spec 1.3).

    Args:
        z_proj: projected latent ``[B, D, h, w]``.
        feats: foundation features on the same grid ``[B, D, h, w]``.
        margin: m1 (VA-VAE 0.5): positions already closer than ``1 - m1`` in cosine cost nothing.
    """
    cos = F.cosine_similarity(z_proj.float(), feats.float(), dim=1)  # [B, h, w]
    return F.relu(1.0 - margin - cos).mean()


def marginal_distance_matrix_loss(z_proj: torch.Tensor, feats: torch.Tensor, margin: float) -> torch.Tensor:
    """``L_mdms = mean_{b,n,n'} ReLU(|Gz - Gf| - m2)`` over ALL ``N^2`` pairs (spec 1.3, pitfall 5).

    ``Gz = Zn^T Zn`` and ``Gf = Fn^T Fn`` are the token-by-token cosine-similarity matrices
    (tokens L2-normalised along channels). The diagonal differences are 0 but stay in the mean's
    denominator, as in the reference.
    """
    zn = F.normalize(z_proj.float().flatten(2), dim=1)  # [B, D, N]
    fn = F.normalize(feats.float().flatten(2), dim=1)  # [B, D, N]
    gz = zn.transpose(1, 2) @ zn  # [B, N, N]
    gf = fn.transpose(1, 2) @ fn  # [B, N, N]
    return F.relu((gz - gf).abs() - margin).mean()  # mean over B * N * N entries


def vf_adaptive_weight(nll: torch.Tensor, vf: torch.Tensor, last_layer: torch.Tensor, *,
                       eps: float = VF_EPS, max_weight: float = VF_MAX_WEIGHT) -> torch.Tensor:
    """VA-VAE's adaptive VF weight (spec 1.3): ``||grad_W nll|| / (||grad_W vf|| + eps)``,
    clamped to ``[0, max_weight]`` and detached. ``W`` is the ENCODER's last conv weight (pitfall 4).
    Both graphs are kept for the caller's backward."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_vf = torch.autograd.grad(vf, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_vf.norm() + eps)).clamp(0.0, max_weight).detach()


@torch.no_grad()
def foundation_features(encoder: nn.Module, images: torch.Tensor, *, grid: tuple[int, int],
                        pixels: str = "encoder") -> torch.Tensor:
    """Frozen foundation features on the latent grid, ``[B, D, h, w]`` float32 (spec 1.3).

    The encoder was built so that its patch grid equals the latent grid (the *image* is resized,
    never the features; :func:`matched_encoder_resolution`).

    Args:
        encoder: a frozen :class:`repae.encoders.RepresentationEncoder`.
        images: uint8 ``[B, 3, H, W]``.
        grid: latent ``(h, w)``.
        pixels: ``"encoder"``: the encoder's own pixel pipeline (e.g. DINOv2 with ImageNet
            mean/std, bicubic). ``"vavae"``: the reference VA-VAE input — the VAE's ``[-1, 1]``
            image, bilinearly resized, no mean/std normalisation (spec 1.3, pitfall 1).
    """
    if pixels == "vavae":
        r = encoder.input_resolution
        x = resize(uint8_to_unit(images), (r, r))  # [B, 3, R, R] in [-1, 1]
        tokens = encoder.features(x)  # [B, N, D]
    else:
        tokens = encoder(images)  # [B, N, D]
    return tokens_to_grid(tokens.float(), grid)


# ---------------------------------------------------------------------------------------------
# Per-step randomness and the forward output
# ---------------------------------------------------------------------------------------------


@dataclass
class TokRegDraw:
    """The random choices of one step (same for every rank: drawn for the global batch)."""

    se_factor: int = 1  # SE downsampling factor of this step
    eq_mode: str = "plain"  # plain | equivariance | lowres (EQ-VAE step type, spec 2.1)
    eq_size: tuple[int, int] | None = None  # latent (h', w') after the EQ scale
    eq_rotation: int = 0  # k of rot90 (0 when rotations are off)
    lowres_eps: torch.Tensor | None = None  # [b, C, h', w'] posterior noise of the low-res image


@dataclass
class TokenizerForward:
    """Everything the VAE side computes in one (DDP) forward.

    ``target`` / ``recon`` is the pair L_REG and the discriminator see: ``(x, Dec(z))`` normally,
    ``(tau(x), Dec(tau(z)))`` on an EQ equivariance step and the low-resolution pair on an EQ
    low-resolution step. ``z`` is always the sample of the full image (for REPA, SiT, SE, VF).
    """

    mean: torch.Tensor  # [b, C, h, w] posterior of the full image
    logvar: torch.Tensor  # [b, C, h, w] (clamped)
    z: torch.Tensor  # [b, C, h, w] posterior sample
    recon: torch.Tensor | None  # [b, 3, H', W']
    target: torch.Tensor  # [b, 3, H', W']
    kl_moments: torch.Tensor | None = None  # [b, 2C, h', w'] posterior used for the KL (None = mean/logvar)
    se_target: torch.Tensor | None = None  # [b, 3, H/f, W/f]
    se_recon: torch.Tensor | None = None  # [b, 3, H/f, W/f]
    vf_proj: torch.Tensor | None = None  # [b, D, h, w] projected sample

    def kl_posterior(self):
        from repae.tokenizer.vae import DiagonalGaussian

        moments = self.kl_moments if self.kl_moments is not None else torch.cat([self.mean, self.logvar], dim=1)
        return DiagonalGaussian(moments)


@dataclass
class TokRegOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------


def eq_numerators(den: int, min_scale: float) -> list[int]:
    """Numerators ``k`` of the EQ scale set ``{k / den : min_scale <= k / den < 1}`` (spec 2.2:
    ``den = 32, min_scale = 0.25`` gives the 24 values 8/32 ... 31/32)."""
    return list(range(max(1, math.ceil(min_scale * den - 1e-9)), den))


class TokenizerRegularizer(nn.Module):
    """SE + EQ-VAE + VF on one tokenizer (module docstring; spec-related-methods.md 1.3, 2, 3).

    Args (keyword-only; 0 weights / probabilities switch a regulariser off):
        latent_channels: C of the latent.
        latent_hw: latent grid ``(h, w)`` at the training resolution.
        se_weight: SE alpha (0 = off; paper 0.25 [unverified]).
        se_factors: downsampling factors, one drawn uniformly per step (paper x2 / x4; the uniform
            choice is [unverified]). Each must divide the latent grid.
        se_terms: terms of SE's distance d: ``l1``, ``perceptual`` (L_REG's weights), ``gan``
            (L_REG's fixed GAN weight on the downsampled reconstruction). [unverified]
        eq_prob: probability of an EQ equivariance step (0 = off; EQ-VAE 0.5).
        eq_lowres_prob: fraction of the other (prior-preservation) steps reconstructed at a random
            low resolution (EQ-VAE 0.25).
        eq_scale_den: scale set ``k / den``; must divide the latent side (EQ-VAE 32 = the latent
            side of SD-VAE at 256 px).
        eq_min_scale: smallest scale of the set (EQ-VAE 0.25).
        eq_rotate: compose the scaling with ``rot90`` by k in {1, 2, 3} (EQ-VAE: always).
        eq_anisotropic: independent scales for height and width (EQ-VAE default off).
        vf_weight: w_hyper (0 = off; VA-VAE 0.1).
        vf_dim: foundation feature width D (the projection's output channels).
        vf_cos_margin / vf_distmat_margin: m1 / m2 (VA-VAE 0.5 / 0.25).
        vf_cos_weight / vf_distmat_weight: weights of L_mcos / L_mdms (1.0 / 1.0).
        vf_adaptive: multiply by the adaptive ratio (VA-VAE true); off = weight 1 * w_hyper.
        vf_pixels: how the foundation model sees the image (:func:`foundation_features`).
    """

    def __init__(
        self,
        *,
        latent_channels: int,
        latent_hw: tuple[int, int],
        se_weight: float = 0.0,
        se_factors: tuple[int, ...] = (2, 4),
        se_terms: tuple[str, ...] = ("l1", "perceptual"),
        eq_prob: float = 0.0,
        eq_lowres_prob: float = 0.25,
        eq_scale_den: int = 32,
        eq_min_scale: float = 0.25,
        eq_rotate: bool = True,
        eq_anisotropic: bool = False,
        vf_weight: float = 0.0,
        vf_dim: int | None = None,
        vf_cos_margin: float = 0.5,
        vf_distmat_margin: float = 0.25,
        vf_cos_weight: float = 1.0,
        vf_distmat_weight: float = 1.0,
        vf_adaptive: bool = True,
        vf_pixels: str = "encoder",
    ):
        super().__init__()
        check_values(se_weight=se_weight, se_factors=se_factors, se_terms=se_terms, eq_prob=eq_prob,
                     eq_lowres_prob=eq_lowres_prob, eq_min_scale=eq_min_scale, vf_weight=vf_weight,
                     vf_cos_margin=vf_cos_margin, vf_distmat_margin=vf_distmat_margin, vf_cos_weight=vf_cos_weight,
                     vf_distmat_weight=vf_distmat_weight, vf_pixels=vf_pixels)
        h, w = latent_hw
        check_grid(latent_hw, se_factors=se_factors if se_weight > 0 else (),
                   eq_scale_den=eq_scale_den if eq_prob > 0 else None)
        self.latent_hw = (int(h), int(w))
        self.se_weight = float(se_weight)
        self.se_factors = tuple(int(f) for f in se_factors)
        self.se_terms = tuple(se_terms)
        self.eq_prob = float(eq_prob)
        self.eq_lowres_prob = float(eq_lowres_prob)
        self.eq_scale_den = int(eq_scale_den)
        self.eq_numerators = eq_numerators(self.eq_scale_den, eq_min_scale)
        self.eq_rotate = bool(eq_rotate)
        self.eq_anisotropic = bool(eq_anisotropic)
        self.vf_weight = float(vf_weight)
        self.vf_cos_margin = float(vf_cos_margin)
        self.vf_distmat_margin = float(vf_distmat_margin)
        self.vf_cos_weight = float(vf_cos_weight)
        self.vf_distmat_weight = float(vf_distmat_weight)
        self.vf_adaptive = bool(vf_adaptive)
        self.vf_pixels = vf_pixels
        # W of VA-VAE ("reverse_proj"): latent C -> foundation D, 1x1, no bias, on the SAMPLED z
        # (spec 1.3, pitfall 3). The decoder keeps the un-projected z.
        self.vf_proj = None
        if self.vf_weight > 0:
            if not vf_dim:
                raise ConfigError("tokreg.vf_weight > 0 needs the foundation width: pass vf_dim (tokreg.vf_encoder)")
            self.vf_proj = nn.Conv2d(latent_channels, int(vf_dim), kernel_size=1, bias=False)

    @property
    def active(self) -> bool:
        return self.se_weight > 0 or self.eq_prob > 0 or self.vf_weight > 0

    # --- randomness ------------------------------------------------------------------------

    def draw(self, generator: torch.Generator, *, global_batch: int, rows: slice, latent_channels: int,
             device) -> TokRegDraw:
        """This step's choices from the step generator. The scalar draws always happen (same
        stream whatever is on); the low-resolution noise is drawn for the global batch and sliced."""
        i_se = int(torch.randint(len(self.se_factors), (1,), generator=generator))
        u_eq, u_low = torch.rand(2, generator=generator).tolist()
        k_y, k_x = torch.randint(len(self.eq_numerators) or 1, (2,), generator=generator).tolist()
        rotation = int(torch.randint(1, 4, (1,), generator=generator))  # k in {1, 2, 3} (spec 2.2)
        out = TokRegDraw(se_factor=self.se_factors[i_se])
        if self.eq_prob <= 0:
            return out
        if not self.eq_anisotropic:
            k_x = k_y
        h, w = self.latent_hw
        den = self.eq_scale_den
        size = (h * self.eq_numerators[k_y] // den, w * self.eq_numerators[k_x] // den)  # exact: den | h, w
        if u_eq < self.eq_prob:
            out.eq_mode, out.eq_size, out.eq_rotation = "equivariance", size, rotation if self.eq_rotate else 0
        elif u_low < self.eq_lowres_prob:
            out.eq_mode, out.eq_size = "lowres", size
            eps = torch.randn((global_batch, latent_channels, *size), generator=generator)  # [B, C, h', w']
            out.lowres_eps = eps[rows].to(device)
        return out

    # --- network calls (inside the DDP-wrapped VAE forward) ------------------------------------

    def forward(self, tokenizer: nn.Module, x: torch.Tensor, eps: torch.Tensor, draw: TokRegDraw) -> TokenizerForward:
        """Encode ``x`` ``[b, 3, H, W]``, sample with ``eps``, and run the decodes this step needs."""
        if draw is None:
            raise ValueError("TokenizerRegularizer needs this step's TokRegDraw (from TokenizerRegularizer.draw)")
        posterior = tokenizer.encode(x)
        z = posterior.mean + posterior.std * eps  # [b, C, h, w] posterior sample
        f = tokenizer.downsample_factor
        kl_moments = None
        if draw.eq_mode == "equivariance":  # implicit form: decode tau(z), compare with tau(x) (spec 2.1)
            hh, ww = draw.eq_size
            target = eq_transform(x, (hh * f, ww * f), draw.eq_rotation)  # [b, 3, H', W']
            recon = tokenizer.decode(eq_transform(z, (hh, ww), draw.eq_rotation))  # [b, 3, H', W']
        elif draw.eq_mode == "lowres":  # prior preservation at low resolution: encode + decode x_s
            hh, ww = draw.eq_size
            target = resize(x, (hh * f, ww * f))  # [b, 3, H', W']
            small = tokenizer.encode(target)
            recon = tokenizer.decode(small.mean + small.std * draw.lowres_eps)  # [b, 3, H', W']
            kl_moments = torch.cat([small.mean, small.logvar], dim=1)  # [b, 2C, h', w']
        else:
            target, recon = x, tokenizer.decode(z)  # [b, 3, H, W]
        se_target = se_recon = None
        if self.se_weight > 0:  # same factor in pixel and latent space (spec 3.1)
            se_target = downsample(x, draw.se_factor)  # [b, 3, H/s, W/s]
            se_recon = tokenizer.decode(downsample(z, draw.se_factor))  # [b, 3, H/s, W/s]
        vf_proj = self.vf_proj(z) if self.vf_proj is not None else None  # [b, D, h, w]
        return TokenizerForward(mean=posterior.mean, logvar=posterior.logvar, z=z, recon=recon, target=target,
                                kl_moments=kl_moments, se_target=se_target, se_recon=se_recon, vf_proj=vf_proj)

    # --- losses ------------------------------------------------------------------------------

    def loss(self, fwd: TokenizerForward, *, lreg: VAERegularizationLoss, step: int,
             features: torch.Tensor | None = None, last_layer: torch.Tensor | None = None) -> TokRegOutput:
        """SE and VF terms (EQ acts through ``fwd.target`` / ``fwd.recon``, which L_REG scores).

        Args:
            fwd: this step's :class:`TokenizerForward`.
            lreg: the run's L_REG module (its weights, perceptual distance and discriminator).
            step: global step (GAN start).
            features: foundation features ``[b, D, h, w]`` (needed when VF is on).
            last_layer: the encoder's last conv weight (needed for the adaptive VF weight).
        """
        loss = fwd.z.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=fwd.z.device.type, enabled=False):
            if self.se_weight > 0:
                se = reconstruction_distance(lreg, fwd.se_target, fwd.se_recon, terms=self.se_terms, step=step)
                loss = loss + self.se_weight * se
                metrics["se_loss"] = se.detach()
            if self.vf_weight > 0:
                if features is None:
                    raise ValueError("the VF loss needs foundation features: pass features= (tokreg.vf_encoder tokens) or "
                                     "set tokreg.vf_weight=0")
                mcos = marginal_cosine_loss(fwd.vf_proj, features, self.vf_cos_margin)
                mdms = marginal_distance_matrix_loss(fwd.vf_proj, features, self.vf_distmat_margin)
                vf = self.vf_distmat_weight * mdms + self.vf_cos_weight * mcos
                if not self.vf_adaptive:
                    adaptive = vf.new_ones(())
                elif torch.is_grad_enabled() and last_layer is not None:
                    nll = reconstruction_distance(lreg, fwd.target, fwd.recon, terms=("l1", "perceptual"))
                    # per process on its own micro-batch, like upstream's per-GPU loss
                    adaptive = vf_adaptive_weight(nll, vf, last_layer)
                else:  # no graph (evaluation): the reference sets the weight to 0
                    adaptive = vf.new_zeros(())
                weight = adaptive * self.vf_weight
                loss = loss + weight * vf
                metrics.update(vf_loss=vf.detach(), vf_mcos=mcos.detach(), vf_mdms=mdms.detach(),
                               vf_weight=weight.detach())
        return TokRegOutput(loss=loss, metrics=metrics)


def reconstruction_distance(lreg: VAERegularizationLoss, a: torch.Tensor, b: torch.Tensor, *,
                            terms: tuple[str, ...] = ("l1", "perceptual"), step: int = 0) -> torch.Tensor:
    """L_REG's reconstruction distance with L_REG's own weights (spec-repae 4.4):
    ``w_rec * mean|a - b| + w_perc * mean_B P(a, b)`` [+ ``d_weight * factor * (-mean D(b))``].

    Used as SE's ``d`` and as the NLL of the VF adaptive weight. The NLL here is L_REG's
    per-element mean, not LDM's sum / B (spec 1.2): the adaptive ratio rescales the VF gradient
    to the NLL's, so the balance between the two does not depend on that reduction.
    """
    a, b = a.float(), b.float()  # [B, 3, H, W]
    d = a.new_zeros(())
    if "l1" in terms:
        d = d + lreg.reconstruction_weight * (a - b).abs().mean()
    if "perceptual" in terms:
        d = d + lreg.perceptual_weight * lreg.perceptual(a, b).mean()  # [B] -> mean
    if "gan" in terms:
        factor = lreg.factor(step)
        if factor > 0 and lreg.disc_weight > 0:
            # through the discriminator with detached parameters: the gradient reaches b only
            d = d + lreg.disc_weight * factor * generator_adv_loss(lreg._discriminate_frozen(b))
    return d


# ---------------------------------------------------------------------------------------------
# Validation and construction from a run config
# ---------------------------------------------------------------------------------------------


def check_values(*, se_weight, se_factors, se_terms, eq_prob, eq_lowres_prob, eq_min_scale, vf_weight,
                 vf_cos_margin, vf_distmat_margin, vf_cos_weight, vf_distmat_weight, vf_pixels="encoder") -> None:
    """Value checks that need no model (one-line ConfigErrors naming the key and the fix)."""
    for key, value in dict(se_weight=se_weight, vf_weight=vf_weight, vf_cos_weight=vf_cos_weight,
                           vf_distmat_weight=vf_distmat_weight, vf_cos_margin=vf_cos_margin,
                           vf_distmat_margin=vf_distmat_margin).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"tokreg.{key} must be a number >= 0, got {value!r}; use 0 to switch it off")
    for key, value in dict(eq_prob=eq_prob, eq_lowres_prob=eq_lowres_prob).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"tokreg.{key} must be a probability in [0, 1], got {value!r}")
    if isinstance(eq_min_scale, bool) or not isinstance(eq_min_scale, (int, float)) or not 0 < eq_min_scale < 1:
        raise ConfigError(f"tokreg.eq_min_scale must be in (0, 1), got {eq_min_scale!r} (EQ-VAE: 0.25)")
    bad = [t for t in se_terms if t not in SE_TERMS]
    if bad:
        raise ConfigError(f"tokreg.se_terms has unknown term(s) {bad}; choose from {', '.join(SE_TERMS)}")
    if se_weight > 0 and not se_terms:
        raise ConfigError("tokreg.se_terms is empty but tokreg.se_weight > 0; list e.g. [l1, perceptual]")
    if not se_factors or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in se_factors):
        raise ConfigError(f"tokreg.se_factors must be a non-empty list of integers >= 1, got {list(se_factors)}")
    if vf_pixels not in VF_PIXELS:
        raise ConfigError(f"tokreg.vf_pixels must be one of {', '.join(VF_PIXELS)}, got {vf_pixels!r}")


def check_grid(latent_hw: tuple[int, int], *, se_factors=(), eq_scale_den: int | None = None) -> None:
    """SE factors and the EQ scale denominator must divide the latent grid (exact alignment,
    spec 8 pitfalls 13-14)."""
    h, w = latent_hw
    bad = [f for f in se_factors if h % f or w % f]
    if bad:
        ok = [f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]
        raise ConfigError(f"tokreg.se_factors {bad} do not divide the {h}x{w} latent grid; use factors from {ok}")
    if eq_scale_den is not None and (eq_scale_den < 2 or h % eq_scale_den or w % eq_scale_den):
        raise ConfigError(f"tokreg.eq_scale_den={eq_scale_den} does not divide the {h}x{w} latent grid; "
                          f"use 0 (= the latent side {h}) or a divisor of {h}")


def is_active(tc) -> bool:
    """Whether a ``TokRegConfig`` switches on any regulariser."""
    return tc.se_weight > 0 or tc.eq_prob > 0 or tc.vf_weight > 0


def matched_encoder_resolution(name: str, latent_side: int, data_resolution: int) -> int:
    """The encoder resolution whose patch grid equals the latent grid (spec 1.3: resize the
    image, not the features). DINOv2 at 256 px gives 224 / 14 = 16 (an f16 latent at 256), at
    512 px 448 / 14 = 32 (an f8 latent at 256); ``repae-vit-t4`` always gives 32 / 4 = 8."""
    from repae.encoders import encoder_spec

    spec = encoder_spec(name)
    want = latent_side * spec.patch_size
    candidates = list(spec.resolutions) if spec.resolutions else [data_resolution, want]
    for r in candidates:
        if spec.input_size(r) == want:
            return r
    grids = sorted({spec.input_size(r) // spec.patch_size for r in candidates})
    raise ConfigError(
        f"tokreg.vf_encoder={name} gives a {'/'.join(f'{g}x{g}' for g in grids)} patch grid but the latent grid "
        f"is {latent_side}x{latent_side}; pick an encoder/VAE pair whose grids match "
        f"(e.g. dinov2-vit-l with f16d32 at 256 px)"
    )
