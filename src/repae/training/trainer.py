"""One trainer for every recipe (REPA-E, REPA, vanilla, naive end-to-end, ablations, LDM).

Usage::

    from repae.config import load_config
    from repae.training.trainer import Trainer
    Trainer(load_config("tiny-fmnist", ["train.max_steps=50"])).fit()

The loop counts optimisation steps; every step draws its randomness from a generator seeded by
(seed, step) (:func:`repae.training.engine.step_generator`) and the data sampler position is
checkpointed, so a resumed run is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from repae.config import RunConfig, resolve_channels_last
from repae.errors import ConfigError
from repae.models.projectors import normalize_targets
from repae.training import phases
from repae.training.builders import (
    build_encoders,
    build_objective,
    build_sit_for,
    build_tokenizer,
    check_token_counts,
    encoder_dims,
    init_generator_weights,
    validate_config,
)
from repae.training.checkpoint import read_checkpoint, restore_optimizers, save_checkpoint
from repae.training.ema import EMA
from repae.training.engine import abort_distributed, setup_distributed, step_generator
from repae.training.guard import NonFiniteGuard, loss_scalers
from repae.training.hooks import due
from repae.training.resume import prepare_run, resume_run
from repae.training.runlock import acquire_run_lock
from repae.training.step import MicroBatch, StepTools, step_for
from repae.utils.io import write_json

log = logging.getLogger("repae.train")


class WandbWriter:
    """The two ``SummaryWriter`` calls the training loop uses (``add_scalar``, ``close``), sent to a
    wandb run (``train.report_to=wandb``). wandb is imported only when a writer is made."""

    def __init__(self, cfg: RunConfig):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.report_to=wandb needs `pip install wandb` (or use tensorboard)") from None
        self.run = wandb.init(project="repae", name=cfg.train.exp_name, config=cfg.to_dict(), dir=str(cfg.run_dir))

    def add_scalar(self, key, value, step):
        self.run.log({key: value}, step=step)

    def close(self):
        self.run.finish()


class Trainer:
    def __init__(self, cfg: RunConfig, *, engine=None, random_encoders: bool = False, dataset=None,
                 hooks: list | None = None):
        self.cfg = cfg
        self.hooks = list(hooks or [])  # sample grids, diagnostics, reports: see repae.training.hooks
        self.recipe = validate_config(cfg)  # every config check in one pass: fail before anything is built
        self.engine = engine or setup_distributed(cfg.train.mixed_precision, timeout_min=cfg.train.dist_timeout_min)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.engine.device.type == "cuda" and cfg.train.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.train.batch_size % (self.engine.world_size * cfg.train.grad_accum):
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} must be divisible by processes x grad_accum "
                f"= {self.engine.world_size} x {cfg.train.grad_accum}"
            )
        self.step = 0
        self._random_encoders = random_encoders  # benchmarks: real architectures, random weights
        self._dataset = dataset  # optional in-memory dataset (benchmarks); default: cfg.data.source
        self._sampler = None
        self._build()

    # --- construction --------------------------------------------------------------------------

    def _build(self) -> None:
        """Build everything in a fixed order (the RNG draws of initialisation depend on it)."""
        torch.manual_seed(self.cfg.train.seed)  # model initialisation is identical on every rank
        self._build_models()
        self._build_objective_and_data()
        self._build_losses()
        self._build_engine_parts()

    def _build_models(self) -> None:
        """Alignment encoders, tokenizer (weights + statistics) and the generator."""
        cfg, recipe, dev = self.cfg, self.recipe, self.engine.device
        aligns = recipe.sit_align or recipe.vae_align
        self.encoders = build_encoders(cfg, dev, random_init=self._random_encoders) if aligns else []
        self.z_dims = encoder_dims(cfg) if self.encoders else ()
        self.tokenizer, self._has_stats = build_tokenizer(cfg, recipe)
        self.tokenizer.to(dev)
        self.sit = build_sit_for(cfg, self.tokenizer, z_dims=self.z_dims).to(dev) if recipe.build_sit else None
        if self.sit is not None and (note := init_generator_weights(cfg, self.sit)):
            log.info(note)
        if self.sit is not None:
            check_token_counts(cfg, self.sit, self.encoders)
        self.latent_shape = self.tokenizer.latent_shape(cfg.data.resolution)

    def _build_objective_and_data(self) -> None:
        """The generator's objective, the training dataset and (without statistics) the normaliser init."""
        cfg, recipe = self.cfg, self.recipe
        from repae.data import build_dataset

        self.objective = build_objective(cfg, self.sit)  # DiT: DDPM; SiT, LightningDiT (and no SiT): flow matching
        self.dataset = self._dataset if self._dataset is not None else build_dataset(
            cfg.data.source, resolution=cfg.data.resolution, split="train")
        if recipe.cached_latents:
            from repae.data.latent_cache import CachedLatentDataset

            self.dataset = CachedLatentDataset(self.dataset, cfg.data.latents)
            if tuple(self.dataset.meta["latent_shape"]) != tuple(self.latent_shape):
                raise ConfigError(
                    f"cached latents have shape {self.dataset.meta['latent_shape']} but the tokenizer gives "
                    f"{list(self.latent_shape)}: cache with the same VAE and resolution"
                )
        if not self._has_stats:
            self._init_normalizer_from_data()

    def _build_losses(self) -> None:
        """L_REG (+ discriminator), the tokenizer regularisers and the VF foundation model."""
        cfg, recipe, dev = self.cfg, self.recipe, self.engine.device
        self.lreg = None
        if recipe.l_reg:
            from repae.losses.regularization import VAERegularizationLoss

            lc = cfg.lreg
            self.lreg = VAERegularizationLoss(
                reconstruction_weight=lc.reconstruction_weight, perceptual=lc.perceptual,
                perceptual_weight=lc.perceptual_weight, kl_weight=lc.kl_weight, disc_weight=lc.disc_weight,
                disc_start=lc.disc_start, lecam_weight=lc.lecam_weight, adaptive_disc_weight=lc.adaptive_disc_weight,
                vgg_weights=lc.vgg_weights, disc_weights=lc.disc_weights,
            ).to(dev)
        from repae.training.builders import build_tokreg, build_vf_encoder

        self.tokreg = build_tokreg(cfg, self.latent_shape)  # SE / EQ-VAE / VF; None when all are off
        self.vf_encoder = None
        if self.tokreg is not None:
            self.tokreg.to(dev)
            if self.tokreg.vf_weight > 0:  # frozen, its patch grid = the latent grid
                self.vf_encoder = build_vf_encoder(cfg, self.latent_shape[1], dev, random_init=self._random_encoders)
        if not recipe.train_vae:
            self.tokenizer.requires_grad_(False)
        elif cfg.train.vae_checkpointing:
            self.tokenizer.vae.enable_gradient_checkpointing()  # diffusers: per-block recomputation
        if resolve_channels_last(cfg.train.channels_last, dev.type):
            # NHWC weights make every conv of these nets run NHWC (oneDNN / cuDNN pick the layout from
            # the weight); the values are the same up to summation order, checkpoints are saved
            # contiguous (standard layout) and load back into either layout
            # (a VAE with 3-D convolutions, e.g. Qwen-Image's, has 5-D weights that have no NHWC layout: left as is)
            for net in (self.tokenizer.vae, self.lreg):
                if net is not None and not any(isinstance(m, torch.nn.Conv3d) for m in net.modules()):
                    net.to(memory_format=torch.channels_last)

    def _build_engine_parts(self) -> None:
        """EMA, DDP wrappers, compile, optimizers, the non-finite guard and the phase context."""
        cfg, recipe = self.cfg, self.recipe
        self.aligned = phases.AlignedSiT(self.sit) if self.sit is not None else None
        # the EMA follows the SiT; in the tokenizer-only recipe the VAE (train.vae_ema) or nothing
        # (only the normaliser statistics, which export-vae reads)
        ema_model = self.sit if self.sit is not None else (
            self.tokenizer.vae if cfg.train.vae_ema else torch.nn.Module())
        self.ema = EMA(model=ema_model, normalizer=self.tokenizer.normalizer, decay=cfg.optim.ema_decay)
        wrap = self.engine.wrap
        self.sit_ddp = wrap(self.aligned) if self.aligned is not None else None
        self.vae_ddp = (wrap(phases.VAEForward(self.tokenizer, decode=recipe.l_reg, tokreg=self.tokreg),
                             find_unused=not recipe.l_reg) if recipe.train_vae else None)
        self.disc_ddp = wrap(phases.DiscriminatorLoss(self.lreg)) if self.lreg is not None else None
        if cfg.train.compile:
            if self.sit_ddp is not None:
                self.sit_ddp = torch.compile(self.sit_ddp)
            if self.vae_ddp is not None:
                self.vae_ddp = torch.compile(self.vae_ddp)

        oc = cfg.optim
        adam = dict(betas=tuple(oc.betas), weight_decay=oc.weight_decay, eps=oc.eps)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.sit is not None:
            self.optimizers["opt_sit"] = torch.optim.AdamW([p for p in self.sit.parameters() if p.requires_grad],
                                                           lr=oc.lr, **adam)
        if recipe.train_vae:  # the VF projection trains with the VAE (spec-related-methods 1.3)
            self.optimizers["opt_vae"] = torch.optim.AdamW(self._vae_params(), lr=oc.vae_lr, **adam)
        if self.lreg is not None:
            self.optimizers["opt_disc"] = torch.optim.AdamW(self.lreg.discriminator.parameters(), lr=oc.disc_lr, **adam)
        self.scalers = loss_scalers(self.optimizers, self.engine.device.type,
                                    enabled=self.engine.mixed_precision == "fp16",
                                    joint=recipe.train_vae and not recipe.stop_grad)
        self.guard = NonFiniteGuard(  # clips, then applies or skips each step's updates
            optimizers=self.optimizers, scalers=self.scalers, ema=self.ema, ema_model=ema_model,
            normalizer=self.tokenizer.normalizer, stateful=[self.tokenizer.normalizer, self.lreg, self.tokreg],
            engine=self.engine, max_grad_norm=oc.max_grad_norm, max_consecutive=cfg.train.max_nonfinite_skips,
            run_dir=cfg.run_dir)
        self.tools = StepTools(autocast=self.engine.autocast, scalers=self.scalers, grad_accum=cfg.train.grad_accum,
                               guard=self.guard)

        self.ctx = phases.PhaseContext(
            recipe=recipe, tokenizer=self.tokenizer, vae_forward=self.vae_ddp, sit=self.sit_ddp,
            sit_unwrapped=self.aligned, objective=self.objective, lreg=self.lreg, disc_loss=self.disc_ddp,
            align_depth=cfg.align.depth, sit_coeff=cfg.align.sit_coeff,
            vae_coeff=cfg.align.vae_coeff, tokreg=self.tokreg, vf_encoder=self.vf_encoder,
        )
        if cfg.train.compile:  # the pass outside the DDP-wrapped modules: the frozen SiT
            # (the perceptual net stays eager: compiling it measured no gain on the CPU reference
            # step, and the Laplacian pyramid's replicate-pad backward on an NHWC input trips an
            # Inductor stride assertion in torch 2.14)
            self.ctx.frozen_sit = torch.compile(phases.frozen_projections)

    def _vae_params(self) -> list[torch.nn.Parameter]:
        """What the VAE optimizer updates: the VAE and the tokenizer regularisers' parameters."""
        extra = list(self.tokreg.parameters()) if self.tokreg is not None else []
        return list(self.tokenizer.vae.parameters()) + extra

    @property
    def sampler(self):
        """Deterministic, resumable, rank-sharded order over the dataset (built on first use)."""
        if self._sampler is None:
            from repae.data import ResumableSampler

            self._sampler = ResumableSampler(len(self.dataset), batch_size=self.local_batch,
                                             seed=self.cfg.train.seed, rank=self.engine.rank,
                                             world_size=self.engine.world_size,
                                             micro_batches=self.cfg.train.grad_accum)
            if self._sampler.batches_per_epoch() == 0:
                raise ConfigError(f"the dataset has {len(self.dataset)} images, fewer than one global batch of "
                                  f"{self.cfg.train.batch_size}: lower train.batch_size")
        return self._sampler

    @property
    def local_batch(self) -> int:
        return self.cfg.train.batch_size // self.engine.world_size

    def _data_position(self) -> dict:
        """Where the data stream stands after ``self.step`` global batches (prefetch-proof)."""
        epoch, position = divmod(self.step, self.sampler.batches_per_epoch())
        return {"epoch": epoch, "position": position, "seed": self.cfg.train.seed}

    @torch.no_grad()
    def _init_normalizer_from_data(self) -> None:
        """No statistics given: initialise the latent BatchNorm from posterior samples of the data
        (the role of the `-latents-stats.pt` files, spec 3.6)."""
        from repae.tokenizer.stats import compute_latent_stats

        n = min(self.cfg.tokenizer.stats_images, len(self.dataset))
        g = torch.Generator().manual_seed(self.cfg.train.seed)
        idx = torch.randperm(len(self.dataset), generator=g)[:n].tolist()
        batches = (torch.stack([self.dataset[i][0] for i in idx[s:s + 64]]).to(self.engine.device)
                   for s in range(0, n, 64))
        # every rank encodes the same images with the same seed (sync=False): the statistics do not
        # depend on the number of processes
        mean, std = compute_latent_stats(self.tokenizer, batches, progress=False, seed=self.cfg.train.seed,
                                         sync=False)
        self.tokenizer.normalizer.set_statistics(mean, std)

    # --- one step --------------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, moments: torch.Tensor | None = None
                   ) -> dict[str, float]:
        """One optimisation step on this rank's part of the global batch (uint8 images, labels and,
        for the `ldm` recipe, cached posterior moments [b, 2C, h, w]).

        The routing of each recipe (spec 1.3, paper Table 6) is one of three step shapes of
        :mod:`repae.training.step`: REPA-E's stop-gradient order (:func:`~repae.training.step.repae_step`),
        the joint backward of the no-stop-gradient ablations, or the frozen VAE. Gradients of every
        phase are computed first; the guard then clips and steps all optimizers and the EMA after
        one device-to-host read, or skips the step if anything is non-finite.
        """
        micro = self._micro_batches(images, labels, moments)
        self.tokenizer.train()
        if self.sit is not None:
            self.sit.train()
        values = step_for(self.recipe)(self.ctx, micro, self.tools, self.step)
        self.step += 1
        return values

    def _micro_batches(self, images, labels, moments) -> list[MicroBatch]:
        """This rank's micro-batches on the device, with their randomness and encoder targets."""
        cfg, eng = self.cfg, self.engine
        accum = cfg.train.grad_accum
        local = images.shape[0] // accum
        global_micro = cfg.train.batch_size // accum
        rows = slice(eng.rank * local, (eng.rank + 1) * local)
        micro = []
        for m in range(accum):
            part = slice(m * local, (m + 1) * local)
            imgs = images[part].to(eng.device, non_blocking=True)  # [b, 3, H, W] uint8
            ys = labels[part].to(eng.device, non_blocking=True)  # [b]
            mom = None if moments is None else moments[part].to(eng.device, non_blocking=True)
            rnd = phases.StepRandomness.draw(
                generator=step_generator(cfg.train.seed, self.step, m), global_batch=global_micro, rows=rows,
                latent_shape=self.latent_shape, time_sampler=self.objective.time_sampler,
                drop_prob=self.sit.config.class_dropout_prob if self.sit is not None else 0.0, device=eng.device,
                tokreg=self.tokreg,
            )
            with torch.no_grad(), eng.autocast():
                targets = normalize_targets([enc(imgs).float() for enc in self.encoders],
                                            cfg.align.target_norm)  # each [b, N, D_enc]
            micro.append(MicroBatch(images=imgs, labels=ys, targets=targets, randomness=rnd, moments=mom))
        return micro

    # --- state -----------------------------------------------------------------------------------

    def model_state(self) -> dict[str, dict[str, torch.Tensor]]:
        models = {
            "vae": self.tokenizer.vae.state_dict(),
            "normalizer": self.tokenizer.normalizer.state_dict(),
            "ema": self.ema.state_dict(),
        }
        if self.sit is not None:
            models["sit"] = self.sit.state_dict()
        if self.lreg is not None:
            models["disc"] = self.lreg.discriminator.state_dict()
        if self.tokreg is not None and len(self.tokreg.state_dict()):
            models["tokreg"] = self.tokreg.state_dict()  # the VF projection (saved with the VAE)
        return models

    def save(self) -> Path:
        state = {
            "step": self.step,
            "images_seen": self.step * self.cfg.train.batch_size,
            "sampler": self._data_position(),
            "scalers": {name: {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in sc.state_dict().items()}
                        for name, sc in self.scalers.items()},
            "config": self.cfg.to_dict(),
            "z_dims": list(self.z_dims),
            "recipe": self.cfg.train.recipe,
            "nonfinite": self.guard.state_dict(),
        }
        return save_checkpoint(self.cfg.run_dir, self.step, models=self.model_state(), optimizers=self.optimizers,
                               state=state, keep=self.cfg.train.keep_checkpoints)

    def load(self, path: str | Path) -> None:
        models, opt_tensors, state = read_checkpoint(path)
        if self.sit is not None:
            self.sit.load_state_dict(models["sit"])
        self.tokenizer.vae.load_state_dict(models["vae"])
        self.tokenizer.normalizer.load_state_dict(models["normalizer"])
        if self.tokreg is not None and "tokreg" in models:
            self.tokreg.load_state_dict(models["tokreg"])
        self.ema.load_state_dict({**{f"model.{k}": v for k, v in models.get("ema.model", {}).items()},
                                  **{f"normalizer.{k}": v for k, v in models["ema.normalizer"].items()}})
        if self.lreg is not None and "disc" in models:
            self.lreg.discriminator.load_state_dict(models["disc"])
        restore_optimizers(self.optimizers, opt_tensors, state)
        saved = state.get("scalers") or {name: state.get("scaler") for name in self.scalers}  # older: one scaler
        for name, scaler in self.scalers.items():
            if saved.get(name):
                scaler.load_state_dict(saved[name])
        self.step = int(state["step"])
        self.guard.load_state_dict(state.get("nonfinite", {}))

    # --- loop ------------------------------------------------------------------------------------

    def _batches(self):
        """Yield this rank's (images, labels[, moments]) per global batch, from the resumable sampler."""
        from torch.utils.data import DataLoader

        self.sampler.load_state_dict(self._data_position())
        loader = DataLoader(self.dataset, batch_size=self.local_batch, sampler=self.sampler, drop_last=False,
                            num_workers=self.cfg.data.num_workers, pin_memory=self.engine.device.type == "cuda")
        while True:
            yield from loader

    def fit(self, max_steps: int | None = None) -> dict[str, float]:
        """Train to ``max_steps`` (default ``train.max_steps``), resuming first; the last logged metrics.
        With several processes a rank that fails (an exception, a checkpoint refused, Ctrl-C) tears the
        process group down before re-raising, so the other ranks stop at their next collective."""
        try:
            return self._fit(max_steps)
        except BaseException as err:
            if self.engine.distributed:
                abort_distributed(err)
            raise

    def _fit(self, max_steps: int | None) -> dict[str, float]:
        cfg, eng = self.cfg, self.engine
        run_dir = cfg.run_dir
        self.run_lock = acquire_run_lock(run_dir, eng)  # one writer per run folder; clears its dead temporaries
        if eng.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", cfg.to_dict())
        if cfg.train.resume and (ckpt := resume_run(run_dir, cfg.to_dict(), self.load)) is not None:  # newest that verifies
            log.info("resumed from %s (step %d)", ckpt, self.step)
        prepare_run(run_dir, step=self.step, resume=cfg.train.resume, is_main=eng.is_main,  # metrics.jsonl cut back;
                    models=self.model_state(), optimizers=self.optimizers)  # room for one checkpoint (all ranks)
        total = cfg.train.max_steps if max_steps is None else max_steps
        writer = self._writer() if eng.is_main else None
        metrics_file = run_dir / "metrics.jsonl"
        bar = tqdm(total=total, initial=self.step, disable=not eng.is_main, desc=f"train {cfg.train.recipe}",
                   unit="step", dynamic_ncols=True)
        last: dict[str, float] = {}
        t0, n0 = time.perf_counter(), self.step
        for hook in self.hooks:
            hook.on_start(self)
        batches = self._batches()
        while self.step < total:
            metrics = self.train_step(*next(batches))
            for hook in self.hooks:
                if due(hook, self.step, total):
                    metrics.update(hook.on_step(self, self.step, metrics) or {})
            if self.step % cfg.train.log_every == 0 or self.step == total:
                last = eng.mean_scalars(metrics)
                elapsed = time.perf_counter() - t0
                ips = (self.step - n0) * cfg.train.batch_size / max(elapsed, 1e-9)
                last["img_per_s"] = ips
                if eng.is_main:
                    with open(metrics_file, "a") as f:
                        f.write(json.dumps({"step": self.step, **last}) + "\n")
                    if writer is not None:
                        for k, v in last.items():
                            writer.add_scalar(k, v, self.step)
                    bar.set_postfix(img_s=f"{ips:.1f}", **{name: f"{last[key]:.3f}" for name, key in
                                                           (("sit", "sit_loss"), ("vae", "vae_loss")) if key in last})
            if self.step % cfg.train.checkpoint_every == 0 or self.step == total:
                if eng.is_main:
                    self.save()
                eng.barrier()
            bar.update(1)
        bar.close()
        for hook in self.hooks:
            hook.on_end(self)
        if writer is not None:
            writer.close()
        self.run_lock.release()
        return last

    def _writer(self):
        if self.cfg.train.report_to == "none":
            return None
        if self.cfg.train.report_to == "wandb":
            return WandbWriter(self.cfg)
        if self.cfg.train.report_to != "tensorboard":
            raise ConfigError(f"train.report_to must be tensorboard, wandb or none, got '{self.cfg.train.report_to}'")
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.cfg.run_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None)
