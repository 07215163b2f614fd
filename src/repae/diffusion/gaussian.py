"""Discrete-time Gaussian diffusion (DDPM) as DiT trains it: linear betas, eps-MSE + VLB for Sigma.

This is the objective of DiT (Peebles & Xie 2023, sec. 3.1), which takes it from improved DDPM
(Nichol & Dhariwal 2021, "IDDPM"); it lives beside the flow-matching objective
(:mod:`repae.diffusion.objective`) and, like it, holds no model.

Time convention (DDPM's own, consistent in direction with :mod:`repae.conventions`): integer
timesteps ``t in {0, ..., T-1}``, ``t = 0`` is the least noisy step and ``t = T-1`` nearly pure
noise. The forward process is ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` (DDPM eq. 4)
with ``abar_t = prod_{s <= t} (1 - beta_s)``.

Contents:

* :func:`linear_betas` - DDPM's linear schedule ``1e-4 -> 0.02`` over 1000 steps (DDPM sec. 4),
  rescaled by ``1000 / T`` for other step counts (IDDPM ``get_named_beta_schedule``).
* :func:`space_timesteps` - IDDPM's respacing rule (sec. 4 "Improving sampling speed"): a set of
  kept timesteps from per-section counts ("250", "10,15,20") or DDIM's stride rule ("ddim50").
* :class:`GaussianDiffusion` - schedule tensors (float64), ``q_sample``, the closed-form posterior
  ``q(x_{t-1} | x_t, x_0)`` (DDPM eq. 6-7), the model's ``p(x_{t-1} | x_t)`` with the learned
  range variance (IDDPM eq. 15), the VLB terms in bits/dim (IDDPM eq. 4-6), and :meth:`respace`.
* :class:`DDPMObjective` - what the training step calls, mirroring :class:`FlowMatching`:
  ``draw`` (t uniform over the T timesteps, eps ~ N(0, I)) and ``loss`` (hybrid loss
  ``L_simple + L_vlb``, IDDPM eq. 16 with lambda = 1 as in DiT, the VLB term only training Sigma),
  plus the shared :class:`~repae.diffusion.objective.DiffusionObjective` methods ``noisy_input``
  (``q_sample``) and ``time_at`` (noise level -> timestep).

Precision: schedule tensors are float64; coefficients are gathered and cast to the dtype of the
tensor they multiply (float32 in training, float64 in the samplers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from repae.diffusion.objective import NoisedBatch, check_noise_level, draw_t_and_noise, fp32_region
from repae.errors import ConfigError

__all__ = [
    "linear_betas",
    "space_timesteps",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "PosteriorMeanVariance",
    "ModelPrediction",
    "GaussianDiffusion",
    "DiscreteUniformTime",
    "DDPMLoss",
    "DDPMBatch",
    "DDPMObjective",
]


# ----------------------------------------------------------------------------------------------
# Schedules and respacing
# ----------------------------------------------------------------------------------------------


def linear_betas(num_timesteps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear beta schedule (DDPM sec. 4), float64 ``[T]``.

    For ``T != 1000`` both ends are scaled by ``1000 / T`` so that the schedule keeps the same total
    noise (IDDPM ``get_named_beta_schedule("linear")``).
    """
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be >= 1 (got {num_timesteps}); DiT uses 1000")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)  # [T]


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Sorted timesteps to keep when respacing a ``num_timesteps`` process (IDDPM sec. 4).

    ``section_counts``: an int or ``"250"`` -> that many steps spread evenly; ``"10,15,20"`` or a
    list -> the process is cut into equal sections with that many steps each; ``"ddimN"`` -> the
    stride ``s`` with ``len(range(0, T, s)) == N`` (DDIM's uniform skipping, DDIM sec. 4.2).

    Within a section of ``size`` steps, ``n`` steps are taken at ``round(k * (size - 1) / (n - 1))``
    (one step -> the section start), so every even spacing keeps ``t = 0`` and ``t = T - 1``.
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            want = int(text[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(
                f"no integer stride gives exactly {want} DDIM steps out of {num_timesteps}; pick another step count"
            )
        counts = [int(c) for c in text.split(",") if c.strip()]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"respacing {section_counts!r} must ask for at least one step per section")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(f"cannot take {count} steps from a section of {size}; ask for fewer sampling steps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept.extend(start + round(k * stride) for k in range(count))
        start += size
    return sorted(set(kept))


# ----------------------------------------------------------------------------------------------
# Gaussian helpers (IDDPM losses.py formulas, written from the definitions)
# ----------------------------------------------------------------------------------------------


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` elementwise, in nats.

    ``= 0.5 * (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^(-logvar2))``.
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation ``0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` used by IDDPM (kept for fidelity)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats) of ``x`` in ``[-1, 1]`` under a Gaussian discretised to 256 bins (DDPM sec. 3.3).

    Bin ``[x - 1/255, x + 1/255]``; the edge bins extend to ``-inf`` (``x < -0.999``) and ``+inf``
    (``x > 0.999``). DiT applies this decoder term to (normalised) latents as well; it only enters
    the VLB at ``t = 0``.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)  # [B]


# ----------------------------------------------------------------------------------------------
# Diffusion
# ----------------------------------------------------------------------------------------------


@dataclass
class PosteriorMeanVariance:
    """``q(x_{t-1} | x_t, x_0) = N(mean, variance)``; ``log_variance`` is clipped at t = 0 (DDPM eq. 7)."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor


@dataclass
class ModelPrediction:
    """The model's reverse step ``p(x_{t-1} | x_t) = N(mean, e^log_variance)`` and its estimates."""

    mean: Tensor  # [B, C, h, w]
    variance: Tensor  # [B, C, h, w] (or broadcastable)
    log_variance: Tensor  # [B, C, h, w] (or broadcastable)
    pred_x0: Tensor  # [B, C, h, w] data estimate from eps
    eps: Tensor  # [B, C, h, w] noise estimate


class GaussianDiffusion:
    """A discrete Gaussian diffusion with ``T`` steps (DDPM; IDDPM sec. 2-4).

    Args:
        betas: noise schedule ``[T]`` (float64 after conversion); default :func:`linear_betas`.
        timestep_map: for a respaced process, the original timestep of each of its ``T`` steps
            (what the network is conditioned on); default ``0..T-1``.
        original_num_timesteps: ``T`` of the process this one was respaced from (default ``T``).

    Every schedule tensor below is float64 ``[T]``:
    ``betas``, ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev`` (abar_{t-1}, 1 at t = 0),
    ``alphas_cumprod_next`` (abar_{t+1}, 0 at t = T-1), ``posterior_variance``
    (``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)``, DDPM eq. 7),
    ``posterior_log_variance_clipped`` (log beta~ with ``beta~_0`` replaced by ``beta~_1``, since
    ``beta~_0 = 0``), ``posterior_mean_coef1`` / ``coef2`` (DDPM eq. 7).
    """

    def __init__(self, betas: Tensor | None = None, *, timestep_map: Sequence[int] | None = None,
                 original_num_timesteps: int | None = None):
        betas = linear_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("betas must be a 1-D schedule with every beta in (0, 1]; use linear_betas()")
        T = betas.numel()
        self.num_timesteps = T
        self.original_num_timesteps = int(original_num_timesteps or T)
        tm = list(range(T)) if timestep_map is None else [int(s) for s in timestep_map]
        if len(tm) != T:
            raise ConfigError(f"timestep_map has {len(tm)} entries for {T} steps; give one original timestep per step")
        self.timestep_map = torch.tensor(tm, dtype=torch.long)  # [T]
        self.betas = betas  # [T]
        alphas = 1.0 - betas  # [T]
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)  # [T]
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])  # [T]
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], zero])  # [T]
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)  # [T]
        clip_from = self.posterior_variance[1:2] if T > 1 else self.betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([clip_from, self.posterior_variance[1:]]))  # [T]
        self.posterior_mean_coef1 = betas * torch.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)  # [T]
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def linear(cls, num_timesteps: int = 1000) -> GaussianDiffusion:
        """DiT's process: :func:`linear_betas` over ``num_timesteps`` (1000)."""
        return cls(linear_betas(num_timesteps))

    def respace(self, use_timesteps: str | int | Sequence[int]) -> GaussianDiffusion:
        """A process on a subset of this one's timesteps with the same ``abar`` there (IDDPM sec. 4).

        ``use_timesteps`` is a section spec for :func:`space_timesteps` (``"250"``, ``"ddim50"``,
        ``25``) or an explicit list of kept timesteps. The new betas are
        ``1 - abar_{s_i} / abar_{s_{i-1}}``, so ``q(x_{s_i} | x_0)`` is unchanged; ``timestep_map``
        maps each new step to the original timestep the network expects.
        """
        if isinstance(use_timesteps, (str, int)):
            kept = space_timesteps(self.num_timesteps, use_timesteps)
        else:
            kept = sorted(set(int(s) for s in use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ConfigError(f"kept timesteps must lie in 0..{self.num_timesteps - 1}")
        abar = self.alphas_cumprod[torch.tensor(kept)]  # [S]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])  # [S]
        new_map = self.timestep_map[torch.tensor(kept)].tolist()
        return GaussianDiffusion(1.0 - abar / prev, timestep_map=new_map,
                                 original_num_timesteps=self.original_num_timesteps)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _extract(arr: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``arr[t]`` cast to ``like``'s dtype/device and shaped ``[B, 1, ..., 1]``."""
        out = arr.to(like.device)[t.to(like.device).long()].to(like.dtype)  # [B]
        return out.reshape(-1, *([1] * (like.ndim - 1)))  # [B, 1, 1, 1]

    def _check_t(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t).long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in 0..{self.num_timesteps - 1}")
        return t

    # -- forward process and posterior --------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4)."""
        t = self._check_t(t)
        return (self._extract(self.alphas_cumprod.sqrt(), t, x0) * x0
                + self._extract((1.0 - self.alphas_cumprod).sqrt(), t, x0) * noise)  # [B, C, h, w]

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> PosteriorMeanVariance:
        """Closed-form ``q(x_{t-1} | x_t, x_0)`` (DDPM eq. 6-7): mean ``c1 x_0 + c2 x_t``, variance ``beta~_t``."""
        t = self._check_t(t)
        mean = self._extract(self.posterior_mean_coef1, t, x_t) * x0 + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        var = self._extract(self.posterior_variance, t, x_t)  # [B, 1, 1, 1]
        logvar = self._extract(self.posterior_log_variance_clipped, t, x_t)  # [B, 1, 1, 1]
        return PosteriorMeanVariance(mean=mean, variance=var, log_variance=logvar)

    def pred_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (inverse of DDPM eq. 4)."""
        t = self._check_t(t)
        return (self._extract((1.0 / self.alphas_cumprod).sqrt(), t, x_t) * x_t
                - self._extract((1.0 / self.alphas_cumprod - 1.0).sqrt(), t, x_t) * eps)

    def eps_from_pred_x0(self, x_t: Tensor, t: Tensor, pred_x0: Tensor) -> Tensor:
        """``eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)``."""
        t = self._check_t(t)
        return ((self._extract((1.0 / self.alphas_cumprod).sqrt(), t, x_t) * x_t - pred_x0)
                / self._extract((1.0 / self.alphas_cumprod - 1.0).sqrt(), t, x_t))

    # -- reverse process ----------------------------------------------------------------------

    def p_mean_variance(self, output: Tensor, x_t: Tensor, t: Tensor, *, clip_denoised: bool = False,
                        fixed_variance: str = "small") -> ModelPrediction:
        """The model's ``p(x_{t-1} | x_t)`` from the network output (IDDPM sec. 3.1).

        ``output`` is ``[B, 2C, h, w]`` = (eps, v) with the *learned range* variance
        ``log Sigma = frac * log beta_t + (1 - frac) * log beta~_t``, ``frac = (v + 1) / 2``
        (IDDPM eq. 15), or ``[B, C, h, w]`` = eps with a fixed variance: ``fixed_variance="small"``
        -> ``beta~_t`` (clipped), ``"large"`` -> ``beta_t`` (with ``beta~_1`` at t = 0; DDPM sec. 3.2).
        The mean is the posterior mean at ``pred_x0`` (DDPM eq. 11 in x_0 form); ``clip_denoised``
        clamps ``pred_x0`` to ``[-1, 1]`` (off for latents, as in DiT).
        """
        t = self._check_t(t)
        C = x_t.shape[1]
        if output.shape[1] == 2 * C:
            eps, v = output[:, :C], output[:, C:]  # [B, C, h, w] each
            min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)  # [B, 1, 1, 1]
            max_log = self._extract(self.betas.log(), t, x_t)  # [B, 1, 1, 1]
            frac = (v + 1.0) / 2.0  # [B, C, h, w]
            log_var = frac * max_log + (1.0 - frac) * min_log  # [B, C, h, w]
            var = torch.exp(log_var)
        elif output.shape[1] == C:
            eps = output
            if fixed_variance == "small":
                log_var = self._extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
            elif fixed_variance == "large":
                large = torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if self.num_timesteps > 1 else self.betas
                log_var = self._extract(large.log(), t, x_t).expand_as(x_t)
            else:
                raise ConfigError(f"fixed_variance must be 'small' or 'large' (got {fixed_variance!r})")
            var = torch.exp(log_var)
        else:
            raise ValueError(
                f"model output has {output.shape[1]} channels for a {C}-channel latent; expected {C} (eps) "
                f"or {2 * C} (eps and learned variance)"
            )
        pred_x0 = self.pred_x0_from_eps(x_t, t, eps)  # [B, C, h, w]
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean = self.q_posterior(pred_x0, x_t, t).mean  # [B, C, h, w]
        return ModelPrediction(mean=mean, variance=var, log_variance=log_var, pred_x0=pred_x0, eps=eps)

    def vb_terms_bpd(self, output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term in bits/dim ``[B]`` (IDDPM eq. 4-6).

        ``t > 0``: ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``; ``t = 0``:
        ``L_0 = -log p(x_0 | x_1)`` with the discretised Gaussian decoder. Both averaged over
        dimensions and divided by ``ln 2``. Its minimum over the model is 0 for ``t > 0`` (the model
        equals the posterior) and the decoder's bin mass at the posterior mean for ``t = 0``.
        """
        t = self._check_t(t)
        true = self.q_posterior(x0, x_t, t)
        model = self.p_mean_variance(output, x_t, t)
        kl = _mean_flat(normal_kl(true.mean, true.log_variance, model.mean, model.log_variance)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, means=model.mean, log_scales=0.5 * model.log_variance)
        nll = _mean_flat(nll) / math.log(2.0)  # [B]
        return torch.where(t.to(kl.device) == 0, nll, kl)  # [B]

    def __repr__(self) -> str:
        return f"GaussianDiffusion(num_timesteps={self.num_timesteps}, original={self.original_num_timesteps})"


# ----------------------------------------------------------------------------------------------
# Training objective
# ----------------------------------------------------------------------------------------------


class DiscreteUniformTime:
    """``t ~ U{0, ..., T-1}`` returned as float32 ``[n]`` (DiT ``torch.randint(0, T, (n,))``).

    Same interface as :class:`repae.diffusion.timesteps.TimeSampler` so a training step that
    draws time with ``sample(n, generator=...)`` works unchanged; the values are whole numbers.
    """

    name = "ddpm-uniform"

    def __init__(self, num_timesteps: int = 1000):
        self.num_timesteps = int(num_timesteps)  # T

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        draw_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=draw_device)  # [n] int64
        t = t.to(torch.float32)  # [n]
        return t.to(device) if device is not None else t

    def __repr__(self) -> str:
        return f"DiscreteUniformTime({self.num_timesteps})"


@dataclass
class DDPMBatch(NoisedBatch):
    """A :class:`NoisedBatch` plus the clean latent: ``t`` float32 ``[B]`` holds whole timesteps,
    ``target`` is the noise (eps prediction), ``x0`` is the normalised clean latent."""

    x0: Tensor | None = None


@dataclass
class DDPMLoss:
    """Per-sample terms ``[B]`` (fp32): ``loss = mse + vb`` (``vb`` is 0 without a learned variance)."""

    loss: Tensor
    mse: Tensor
    vb: Tensor


class DDPMObjective:
    """DiT's training objective (DiT sec. 3.1; IDDPM eq. 16 with lambda = 1, ``LossType.MSE``).

    ``draw`` mirrors :meth:`repae.diffusion.objective.FlowMatching.draw`; ``loss`` takes the whole
    batch because the VLB term needs ``x_0``, ``x_t`` and ``t``::

        obj = DDPMObjective()                                   # 1000 linear steps, learned Sigma
        nb = obj.draw(x0)                                       # DDPMBatch(t, noise, x_t, target=noise, x0)
        pred = model(nb.x_t, nb.t, y).prediction                # [B, 2C, h, w]
        loss = obj.loss(pred, nb).mean()

    Terms: ``mse = mean((eps - eps_theta)^2)``; with ``learn_sigma`` also
    ``vb = L_vlb(stopgrad(eps_theta), v)`` in bits/dim, so the VLB trains only the variance
    (IDDPM sec. 3.1 "we apply a stop-gradient to mu_theta"). DiT does not rescale ``vb``.
    """

    def __init__(self, diffusion: GaussianDiffusion | None = None, *, learn_sigma: bool = True):
        self.diffusion = diffusion if diffusion is not None else GaussianDiffusion.linear(1000)
        self.learn_sigma = learn_sigma  # True: prediction is [B, 2C, h, w] (eps, v); False: eps only
        self.time_sampler = DiscreteUniformTime(self.diffusion.num_timesteps)

    def draw(self, x0: Tensor, *, generator: torch.Generator | None = None, t: Tensor | None = None,
             noise: Tensor | None = None) -> DDPMBatch:
        """Sample (or reuse) timesteps and noise; ``x_t = q_sample(x_0, t, eps)``, target ``eps``."""
        t, noise = draw_t_and_noise(self.time_sampler, x0, generator=generator, t=t, noise=noise)  # [B], [B, C, h, w]
        x_t = self.noisy_input(x0, noise, t)  # [B, C, h, w]
        return DDPMBatch(t=t, noise=noise, x_t=x_t, target=noise, x0=x0)

    def noisy_input(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = q_sample(x_0, t, eps) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; ``t`` whole timesteps ``[B]``."""
        t = torch.as_tensor(t)
        if not bool((t == t.round()).all()):
            raise ValueError("DDPM timesteps must be whole numbers in 0..T-1; draw them with DDPMObjective.time_sampler "
                             "or pick one with DDPMObjective.time_at")
        return self.diffusion.q_sample(x0, t.long(), noise)  # [B, C, h, w]

    def time_at(self, u: float) -> float:
        """The timestep whose input has the noise level of the linear flow path at time ``u``.

        Matched on the noise-to-signal ratio, ``sqrt((1 - abar_t) / abar_t) = u / (1 - u)``, i.e.
        ``abar_t = (1 - u)^2 / ((1 - u)^2 + u^2)`` (the nearest of the T timesteps): ``u = 0.5`` is
        the timestep with equal signal and noise (``abar_t = 1/2``; t = 258 of DiT's 1000 linear
        steps), as flow time 0.5 is on either flow path; ``u = 0`` -> 0, ``u = 1`` -> T - 1.
        Returned as a float holding a whole number, like the times of :attr:`time_sampler`.
        """
        u = check_noise_level(u)
        target = (1.0 - u) ** 2 / ((1.0 - u) ** 2 + u**2)  # abar with noise/signal = u / (1 - u)
        return float(int((self.diffusion.alphas_cumprod - target).abs().argmin()))

    def loss_terms(self, prediction: Tensor, batch: DDPMBatch) -> DDPMLoss:
        """The hybrid loss of DiT per sample, in float32 (autocast off)."""
        C = batch.x_t.shape[1]
        want = 2 * C if self.learn_sigma else C
        if prediction.shape[1] != want:
            raise ValueError(
                f"DDPM objective expects {want} output channels (learn_sigma={self.learn_sigma}) for a {C}-channel "
                f"latent, got {prediction.shape[1]}; build the DiT with learn_sigma={prediction.shape[1] == 2 * C}"
            )
        if batch.x0 is None:
            raise ValueError("DDPMBatch.x0 is missing; build the batch with DDPMObjective.draw")
        with fp32_region(prediction.device):
            pred = prediction.float()  # [B, want, h, w]
            eps = pred[:, :C]  # [B, C, h, w]
            mse = _mean_flat((batch.noise.float() - eps) ** 2)  # [B]
            if self.learn_sigma:
                frozen = torch.cat([eps.detach(), pred[:, C:]], dim=1)  # [B, 2C, h, w]: VLB only trains Sigma
                vb = self.diffusion.vb_terms_bpd(frozen, batch.x0.float(), batch.x_t.float(), batch.t.long())  # [B]
            else:
                vb = torch.zeros_like(mse)
        return DDPMLoss(loss=mse + vb, mse=mse, vb=vb)

    def loss(self, prediction: Tensor, batch: DDPMBatch) -> Tensor:
        """Per-sample loss ``[B]`` = ``mse + vb`` (see :meth:`loss_terms`)."""
        return self.loss_terms(prediction, batch).loss

    batch_loss = loss  # the interface shared with FlowMatching.batch_loss

    def __repr__(self) -> str:
        return f"DDPMObjective({self.diffusion!r}, learn_sigma={self.learn_sigma})"
