"""In-training latent health: cheap diagnostics on a fixed held-out batch, logged like the losses.

REPA-E (section 3) shows that back-propagating the diffusion loss into the VAE collapses the
latent (spatial variance 17.06 -> 0.02). :class:`LatentHealthHook` makes such a collapse visible
while it happens: every ``every`` steps it measures, on the same held-out images each time and
without touching any training state,

* ``health/spatial_variance``, ``health/total_variation``, ``health/tv_over_sqrt_sv`` of the raw
  posterior mean (definitions: :mod:`repae.analysis.latent_stats`), and
  ``health/spatial_variance_normalized`` after the normaliser (what the SiT sees);
* ``health/image_variance`` and ``health/image_variance_fraction`` of the raw posterior mean over
  the held-out images: the part of the spatial variance that changes from image to image, absolute
  and as a share of SV (:func:`repae.analysis.latent_stats.image_variance`). Both fall to 0 when
  every image maps to the same fixed pattern, a collapse SV misses; IV also falls with a flat latent;
* normaliser statistics: ``health/norm_mean_abs`` (mean ``|running_mean|``), ``health/norm_std_mean``
  and ``health/norm_std_min`` (``sqrt(running_var)``), and ``health/norm_batch_over_running_std``
  (held-out batch std / running std, averaged over channels: 1 when the running statistics keep
  up with the latent, far from 1 when the latent drifts faster than the momentum follows);
* alignment, as the mean token cosine similarity ``-L_REPA`` (1 = aligned) of the SiT projector at
  the alignment depth with the encoder tokens, once as the VAE pass computes it (normaliser
  running statistics: ``health/align_cos_vae``) and once as the SiT pass does (held-out batch
  statistics: ``health/align_cos_sit``), at fixed per-image times and noise drawn once from the
  run's time sampler -- only for recipes that train a projector;
* ``health/cknna`` (SiT hidden state after the alignment depth at noise level ``t = 0.5``, i.e. equal
  signal and noise, ``objective.time_at(0.5)`` in the objective's own time; tokens averaged, vs
  the encoder's pooled features; k = min(10, n - 1)) and ``health/latent_cknna`` (flattened
  normalised latent vs the encoder), whenever an encoder is available;
* ``health/sv_drop``: first measured spatial variance / current one. When it exceeds
  ``collapse_factor`` (100) a warning is logged once.
* ``health/image_variance_drop``: first measured image variance / current one. When it exceeds
  ``collapse_factor``, or the image-variance fraction falls below ``min_image_fraction`` (0.05)
  from a first value above it, a second warning (image-independent collapse) is logged once.

The held-out batch is the first ``num_images`` images of a seeded permutation of the data's
``test`` split for the named datasets (``embedded``, ``fashion-mnist``); other sources have no
split and use the training images (then the batch is fixed, not held out). Every rank computes the
same numbers (no collectives), so the trainer's cross-rank mean leaves them unchanged.
"""

from __future__ import annotations

import logging
import math

import torch

from repae.training.hooks import TrainHook

log = logging.getLogger("repae.health")

__all__ = ["LatentHealthHook"]


def _held_out(cfg, num_images: int, seed: int):
    from repae.data import build_dataset

    name = str(cfg.data.source).partition(":")[0]
    split = "test" if name in ("embedded", "fashion-mnist", "full") else "train"
    ds = build_dataset(cfg.data.source, resolution=cfg.data.resolution, split=split)
    n = min(num_images, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = [ds[i] for i in idx]
    images = torch.stack([torch.as_tensor(it[0]) for it in items])  # uint8 [n, 3, R, R]
    labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)  # [n]
    return images, labels


class LatentHealthHook(TrainHook):
    """Latent-health scalars every ``every`` steps (see the module docstring for each one).

    Args:
        every: period in optimiser steps (``train.diagnostics_every``); 0 disables the hook.
        num_images: held-out images (CKNNA needs > 10 for k = 10; default 128).
        t: noise level of the CKNNA input in ``[0, 1]`` (0 data, 1 noise), turned into the
            objective's own time by ``objective.time_at``: the flow time itself, for DDPM (DiT) the
            timestep with the same noise-to-signal ratio (0.5 -> equal signal and noise).
        seed: held-out subset, noise and times.
        collapse_factor: warn when the spatial variance (or, separately, the image variance) fell by
            this factor from its first value.
        min_image_fraction: warn when the image-variance fraction fell below this from a first value
            above it (healthy: 0.61 for the shipped ``repae-vae-fmnist``, ``(n-1)/n`` for i.i.d. noise).
        encoder: optional frozen encoder for CKNNA when the recipe has none (default: load
            ``align.encoders[0]`` of the config, skipped with a warning if its weights are missing).
    """

    def __init__(self, every: int, *, num_images: int = 128, t: float = 0.5, seed: int = 0,
                 collapse_factor: float = 100.0, min_image_fraction: float = 0.05, encoder=None):
        self.every = int(every)
        self.num_images = int(num_images)
        self.t = float(t)
        self.seed = int(seed)
        self.collapse_factor = float(collapse_factor)
        self.encoder = encoder
        self.first: tuple[int, float] | None = None  # (step, spatial variance) of the first measurement
        self.warned = False
        self.min_image_fraction = float(min_image_fraction)
        self.first_image: tuple[int, float, float] | None = None  # (step, image variance, fraction), first
        self.warned_image = False
        self._batch = None

    # -- set-up ---------------------------------------------------------------------------------

    def on_start(self, trainer) -> None:
        if self.every <= 0:
            return None
        cfg, dev = trainer.cfg, trainer.engine.device
        images, labels = _held_out(cfg, self.num_images, self.seed)
        C, h, w = trainer.latent_shape
        g = torch.Generator().manual_seed(self.seed)
        eps = torch.randn((images.shape[0], C, h, w), generator=g)  # [n, C, h, w] posterior noise
        objective = getattr(trainer, "objective", None)  # absent for tokenizer-only recipes
        t = (objective.time_sampler.sample(images.shape[0], generator=g) if objective is not None
             else torch.rand(images.shape[0], generator=g))  # [n] like training
        noise = torch.randn((images.shape[0], C, h, w), generator=g)  # [n, C, h, w] diffusion noise
        self._batch = {k: v.to(dev) for k, v in
                       dict(images=images, labels=labels, eps=eps, t=t.float(), noise=noise).items()}
        if self.encoder is None and not trainer.encoders and cfg.align.encoders:
            from repae.encoders import load_encoder
            from repae.errors import ConfigError, MissingWeightsError

            weights = cfg.align.encoder_weights[0] if cfg.align.encoder_weights else None
            try:
                self.encoder = load_encoder(cfg.align.encoders[0], weights=weights, resolution=cfg.data.resolution,
                                            device=dev)
            except (MissingWeightsError, ConfigError) as err:
                log.warning("latent health: no encoder for CKNNA (%s)", err)
        return None

    # -- measurement ----------------------------------------------------------------------------

    @torch.no_grad()
    def measure(self, trainer) -> dict[str, float]:
        """All health scalars of the current weights (training state untouched)."""
        from repae.analysis.cknna import cknna, sit_hidden_states
        from repae.analysis.latent_stats import latent_stats
        from repae.conventions import uint8_to_unit
        from repae.losses.alignment import repa_loss_per_sample

        b = self._batch
        tok, sit, norm = trainer.tokenizer, getattr(trainer, "sit", None), trainer.tokenizer.normalizer
        modes = [(m, m.training) for m in (tok, sit) if m is not None]
        for m, _ in modes:
            m.eval()
        try:
            posterior = tok.encode(uint8_to_unit(b["images"]))
            mean = posterior.mean.float()  # [n, C, h, w]
            z = mean + posterior.std.float() * b["eps"]  # [n, C, h, w] posterior sample, as in training
            run_mean, run_std = norm.statistics()  # [C] each
            raw = latent_stats(mean)
            out = {
                "health/spatial_variance": raw.spatial_variance,
                "health/total_variation": raw.total_variation,
                "health/tv_over_sqrt_sv": raw.tv_over_sqrt_sv,
                "health/image_variance": raw.image_variance,
                "health/image_variance_fraction": raw.image_variance_fraction,
                "health/spatial_variance_normalized": latent_stats(
                    mean, standardized=True, mean=run_mean, std=run_std, eps=norm.eps).spatial_variance,
                "health/norm_mean_abs": float(run_mean.abs().mean()),
                "health/norm_std_mean": float(run_std.mean()),
                "health/norm_std_min": float(run_std.min()),
            }
            batch_mean, batch_var, _ = norm.batch_statistics(z)  # [C], [C] biased, no running update
            out["health/norm_batch_over_running_std"] = float((batch_var.sqrt() / run_std.clamp_min(1e-12)).mean())
            z_run = norm.normalize(z, update=False)  # [n, C, h, w] as the VAE pass sees it
            z_batch = (z - batch_mean[None, :, None, None]) * torch.rsqrt(batch_var + norm.eps)[None, :, None, None]
            encoders = list(trainer.encoders) or ([self.encoder] if self.encoder is not None else [])
            targets = [enc(b["images"]).float() for enc in encoders]  # each [n, N, D_enc]
            depth = trainer.cfg.align.depth
            if sit is not None and trainer.encoders and len(getattr(sit, "projectors", [])) == len(targets):
                targets_n = self._normalized_targets(trainer, targets)
                for key, zn in (("health/align_cos_vae", z_run), ("health/align_cos_sit", z_batch)):
                    x_t = trainer.objective.noisy_input(zn, b["noise"], b["t"])  # [n, C, h, w]
                    hidden = sit(x_t, b["t"], b["labels"], hidden_at=depth, stop_at_hidden=True).hidden  # [n, T, D]
                    out[key] = -float(repa_loss_per_sample(sit.project(hidden), targets_n).mean())
            if targets:
                n = targets[0].shape[0]
                k = min(10, n - 1)
                enc_pooled = targets[0].mean(1)  # [n, D_enc]
                if n >= 4:
                    out["health/latent_cknna"] = cknna(z_run.flatten(1), enc_pooled, k=k)
                    if sit is not None and getattr(trainer, "objective", None) is not None:
                        tt = torch.full((n,), trainer.objective.time_at(self.t), device=z.device)  # [n] own time
                        x_t = trainer.objective.noisy_input(norm.normalize(mean, update=False), b["noise"], tt)
                        h = sit_hidden_states(sit, x_t, tt, b["labels"], layers=[depth])[depth]  # [n, T, D]
                        out["health/cknna"] = cknna(h.float().mean(1), enc_pooled, k=k)
        finally:
            for m, was_training in modes:
                m.train(was_training)
        return out

    @staticmethod
    def _normalized_targets(trainer, targets):
        mode = getattr(trainer.cfg.align, "target_norm", "none")
        if mode == "none":
            return targets
        from repae.models.projectors import normalize_targets

        return normalize_targets(targets, mode)

    def on_step(self, trainer, step: int, metrics: dict) -> dict[str, float] | None:
        if self._batch is None:
            self.on_start(trainer)
        out = self.measure(trainer)
        sv = out["health/spatial_variance"]
        if self.first is None:
            self.first = (step, sv)
        first_step, first_sv = self.first
        drop = first_sv / sv if sv > 0 else math.inf
        out["health/sv_drop"] = drop if math.isfinite(drop) else 1e12
        if drop >= self.collapse_factor and not self.warned:
            self.warned = True
            log.warning("latent spatial variance fell %.0fx since step %d (%.4g -> %.4g): the latent is collapsing "
                        "(typical of the diffusion loss reaching the VAE, REPA-E section 3)", drop, first_step,
                        first_sv, sv)
        iv, frac = out["health/image_variance"], out["health/image_variance_fraction"]
        if self.first_image is None:
            self.first_image = (step, iv, frac)
        first_step, first_iv, first_frac = self.first_image
        iv_drop = first_iv / iv if iv > 0 else (math.inf if first_iv > 0 else 1.0)
        out["health/image_variance_drop"] = iv_drop if math.isfinite(iv_drop) else 1e12
        fixed = frac < self.min_image_fraction <= first_frac  # NaN (one image) compares False
        if (iv_drop >= self.collapse_factor or fixed) and not self.warned_image:
            self.warned_image = True
            log.warning("latent image variance fell %.0fx since step %d (%.4g -> %.4g) and its share of the spatial "
                        "variance is %.3g (was %.3g): every image is mapped to nearly the same latent (fixed-pattern "
                        "or flat collapse, REPA-E section 3)", iv_drop, first_step, first_iv, iv, frac, first_frac)
        return out
