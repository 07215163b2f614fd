"""Generation pipeline: noise -> solver (+CFG) -> denormalise -> decode -> uint8 (REPA-E spec 6.3-6.4).

:class:`Generator` wraps a tokenizer and a velocity network::

    gen = Generator(tokenizer=tok, model=sit, path="linear", num_classes=1000, resolution=256)
    images = gen(torch.tensor([207, 360]), sampler="euler-maruyama", num_steps=250,
                 cfg_scale=1.8, guidance_interval=(0.0, 0.825), seeds=[0, 1])   # uint8 [2, 3, 256, 256]

Writing many samples to disk (PNG folder, ADM ``.npz``, several ranks) is
:mod:`repae.sampling.outputs`.

Reproducibility (deliberate departure from generate.py, whose per-rank seed
``((seed + rank) * world) // 2`` makes sample ``i`` depend on the world size, spec 6.4): sample
``i`` of a run with seed ``s`` uses its own ``torch.Generator`` seeded with
:func:`sample_seed` ``(s, i)`` for the initial noise and then the SDE noise, and its label is
:func:`sample_labels` ``(N, s, K)[i]``. Sample ``i`` is therefore identical whatever the batch
size, the order of generation, the number of processes, or a resume after interruption.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from repae.conventions import unit_to_uint8
from repae.errors import ConfigError
from repae.sampling.ddpm import DDPM_SAMPLERS, get_ddpm_sampler, guided_denoiser
from repae.sampling.guidance import guided_velocity, model_velocity_fn
from repae.sampling.solvers import get_solver

__all__ = ["Generator", "sample_labels", "sample_seed", "sample_seeds"]

# ---------------------------------------------------------------------------------------------
# counter-based per-index randomness (independent of N, batch size and world size)
# ---------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_STREAM_NOISE = 0x6E6F697365  # "noise"
_STREAM_LABEL = 0x6C6162656C  # "label"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014), vectorised on uint64 with wrap-around."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash(seed: int, indices: np.ndarray, stream: int) -> np.ndarray:
    key = _splitmix64(np.array([(int(seed) ^ stream) & _M64], dtype=np.uint64))  # [1]
    with np.errstate(over="ignore"):
        return _splitmix64(key + np.asarray(indices, dtype=np.uint64))  # [N]


def sample_seeds(seed: int, indices: Sequence[int] | np.ndarray) -> list[int]:
    """Per-sample RNG seeds (non-negative 63-bit ints), one per index; depend only on (seed, index)."""
    h = _hash(seed, np.asarray(indices, dtype=np.int64), _STREAM_NOISE) >> np.uint64(1)
    return [int(v) for v in h]


def sample_seed(seed: int, index: int) -> int:
    """The RNG seed of sample ``index`` in a run seeded with ``seed`` (see module docstring)."""
    return sample_seeds(seed, [index])[0]


def sample_labels(num_samples: int, seed: int, num_classes: int) -> torch.Tensor:
    """Uniform class labels [N] int64; label ``i`` depends only on (seed, i), not on ``num_samples``."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 (got {num_classes})")
    h = _hash(seed, np.arange(num_samples, dtype=np.int64), _STREAM_LABEL)  # [N] uint64
    return torch.from_numpy((h % np.uint64(num_classes)).astype(np.int64))  # [N]


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block and restore each submodule's training flag after."""
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


# network precision of sampling -> autocast dtype (None: no autocast)
SAMPLING_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Generator:
    """Class-conditional image generator: noise -> solver -> denormalise -> decode (spec 6.3).

    Args (keyword-only):
        tokenizer: object with ``latent_shape(resolution) -> (C, h, w)``,
            ``normalizer.denormalize(z)`` and ``decode(z_raw) -> float image in ~[-1, 1]``.
        model: velocity network ``model(x_t, t [B], y [B]) -> SiTOutput`` (``.prediction``) or a tensor.
        path: interpolant name for :func:`repae.diffusion.paths.get_path` or a path object; only
            the SDE sampler uses it (score from velocity). Default ``"linear"``.
        num_classes: number of classes K; the null label is K. Default: ``model.config.num_classes``.
        resolution: image side in pixels (default 256); latents have ``tokenizer.latent_shape(resolution)``.
        precision: ``"fp32"`` (default, like generate.py), ``"bf16"`` or ``"fp16"``: the network's
            forward and the VAE decode run under ``torch.autocast`` of that dtype and their outputs
            are cast back to float32, so the solver state stays float32/float64 and only the
            networks' arithmetic is reduced (issue 13). On GPUs with bf16 tensor cores and on CPUs
            with AMX-bf16 this is the large sampling speed-up; the samples differ from fp32 ones by
            the networks' rounding (docs/benchmarks.md has the figures).
        time_shift: RAE's time-shift factor alpha of the flow solvers' grid (1 = none; a run's own is
            ``diffusion.time_shift``, :mod:`repae.diffusion.shift`). DDPM samplers ignore it.

    Modules are switched to eval mode for each call and their flags restored afterwards.
    """

    def __init__(self, *, tokenizer: Any, model: torch.nn.Module, path: Any = "linear",
                 num_classes: int | None = None, resolution: int = 256, precision: str = "fp32",
                 time_shift: float = 1.0):
        if num_classes is None:
            num_classes = getattr(getattr(model, "config", None), "num_classes", None)
            if num_classes is None:
                raise ConfigError("Generator needs num_classes (the model has no config.num_classes); pass it")
        self.tokenizer = tokenizer
        self.model = model
        self.path = path
        self.num_classes = int(num_classes)
        self.resolution = int(resolution)
        self.latent_shape = tuple(int(s) for s in tokenizer.latent_shape(self.resolution))  # (C, h, w)
        self.sample_defaults = None  # a SampleConfig when built from a run (from_checkpoint / from_trainer)
        self.precision = precision
        self.time_shift = float(time_shift)

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in SAMPLING_PRECISIONS:
            raise ConfigError(f"sampling precision {value!r} is unknown; use one of: {', '.join(SAMPLING_PRECISIONS)}")
        self._precision = value

    def _network_fn(self):
        """``model_fn(x_t, t, y) -> v`` float32, the forward under autocast when ``precision`` is reduced."""
        fn = model_velocity_fn(self.model)
        dtype = SAMPLING_PRECISIONS[self.precision]
        if dtype is None:
            return fn
        device_type = self.device.type

        def reduced(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=device_type, dtype=dtype):
                out = fn(x_t, t, y)
            return out.float()  # [B, C, h, w]; the solver's arithmetic stays fp32 / fp64

        return reduced

    # -- construction from a run ----------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, ema: bool = True,
                        map_location: str | torch.device = "cpu") -> Generator:
        """Rebuild the sampling pipeline of a ``repae`` checkpoint (a run folder or ``step-XXXXXXX``).

        Live VAE + (EMA) SiT + (EMA) normaliser statistics, exactly as the trainer samples them.
        """
        from repae.config import config_from_saved
        from repae.training.builders import build_sit_for, build_tokenizer_arch, time_shift_of
        from repae.training.checkpoint import read_checkpoint

        models, _, state = read_checkpoint(path)
        cfg = config_from_saved(state["config"])
        if "sit" not in models:
            raise ConfigError(f"checkpoint '{path}' holds no diffusion model (recipe "
                              f"'{state.get('recipe')}'): sample from a run that trains one")
        tokenizer = build_tokenizer_arch(cfg)
        tokenizer.vae.load_state_dict(models["vae"])
        tokenizer.normalizer.load_state_dict(models["ema.normalizer" if ema else "normalizer"])
        sit = build_sit_for(cfg, tokenizer, z_dims=tuple(state.get("z_dims", ())))
        sit.load_state_dict(models["ema.model" if ema else "sit"])
        tokenizer.eval().to(map_location)
        sit.eval().to(map_location)
        gen = cls(tokenizer=tokenizer, model=sit, path=cfg.diffusion.path, num_classes=cfg.model.num_classes,
                  resolution=cfg.data.resolution, precision=cfg.sample.precision, time_shift=time_shift_of(cfg, sit))
        gen.sample_defaults = gen._resolved(cfg.sample)  # the run's own sampling settings (its preview grids')
        return gen

    @classmethod
    def from_trainer(cls, trainer: Any, *, ema: bool = True) -> Generator:
        """The pipeline on a live trainer's current weights (EMA SiT + EMA normaliser by default).

        The tokenizer is copied so that loading the EMA normaliser statistics never touches the
        training one.
        """
        import copy

        from repae.training.builders import time_shift_of

        tok = copy.deepcopy(trainer.tokenizer).eval()
        if ema:
            tok.normalizer.load_state_dict(trainer.ema.normalizer.state_dict())
        model = trainer.ema.model if ema else trainer.sit
        gen = cls(tokenizer=tok, model=model, path=trainer.cfg.diffusion.path,
                  num_classes=trainer.cfg.model.num_classes, resolution=trainer.cfg.data.resolution,
                  precision=trainer.cfg.sample.precision, time_shift=time_shift_of(trainer.cfg, model))
        gen.sample_defaults = gen._resolved(trainer.cfg.sample)
        return gen

    def _resolved(self, sample_cfg):
        """``sample_cfg`` with ``sampler=auto`` replaced by this model's sampler (configs of runs
        built by this version are resolved already; a hand-written one may not be)."""
        import dataclasses

        sampler = self.resolve_sampler(sample_cfg.sampler)
        return sample_cfg if sampler == sample_cfg.sampler else dataclasses.replace(sample_cfg, sampler=sampler)

    # -- device ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> Generator:
        """Move model and tokenizer to ``device``; returns self."""
        self.model.to(device)
        if isinstance(self.tokenizer, torch.nn.Module):
            self.tokenizer.to(device)
        return self

    # -- sampling -------------------------------------------------------------------------

    def _initial_noise(self, batch: int, seeds: Sequence[int] | torch.Tensor | None,
                       noise: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Generator] | None]:
        gens = None
        if seeds is not None:
            seeds = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
            if len(seeds) != batch:
                raise ConfigError(f"got {len(seeds)} seeds for {batch} labels; pass one seed per sample")
            # CPU generators: the same numbers on every device type, moved to the model's device
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        if noise is not None:
            if tuple(noise.shape) != (batch, *self.latent_shape):
                raise ConfigError(f"noise has shape {tuple(noise.shape)}, expected {(batch, *self.latent_shape)}")
            return noise.to(self.device, torch.float32), gens
        if gens is not None:
            rows = [torch.randn(self.latent_shape, generator=g) for g in gens]  # B x [C, h, w]
            return torch.stack(rows).to(self.device), gens  # [B, C, h, w]
        return torch.randn((batch, *self.latent_shape), device=self.device), None  # [B, C, h, w]

    @torch.no_grad()
    def latents(self, labels: torch.Tensor | Sequence[int], *, sampler: str = "auto", num_steps: int = 50,
                cfg_scale: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                seeds: Sequence[int] | torch.Tensor | None = None, noise: torch.Tensor | None = None,
                progress: bool = False) -> torch.Tensor:
        """Sample NORMALISED latents x_0 [B, C, h, w] float32 for ``labels`` [B] (spec 6.1-6.2).

        ``sampler``: a flow solver (SiT, LightningDiT) or a DDPM sampler (DiT); ``"auto"`` (default)
        is the model family's own (:meth:`resolve_sampler`: euler, or ddim for DiT).
        ``seeds`` [B]: per-sample seeds; sample i's initial noise (and SDE noise) comes from
        ``torch.Generator().manual_seed(seeds[i])`` only. ``noise`` [B, C, h, w]: explicit initial
        noise (the SDE noise then still comes from ``seeds`` if given, else the global RNG).
        """
        sampler = self.resolve_sampler(sampler)
        ddpm = self.check_sampler(sampler)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ConfigError(f"labels must lie in [0, {self.num_classes}); got range "
                              f"[{int(labels.min())}, {int(labels.max())}]")
        x1, gens = self._initial_noise(labels.numel(), seeds, noise)  # [B, C, h, w] float32
        with _eval_mode(self.model):
            if ddpm:  # DiT: eps + variance network, respaced DDPM / DDIM on the 1000-step process
                fn = guided_denoiser(self._network_fn(), labels.to(self.device), cfg_scale=cfg_scale,
                                     interval=guidance_interval, null_label=self.num_classes)
                return get_ddpm_sampler(sampler)(fn, x1, num_steps=num_steps, generator=gens,
                                                 progress=progress)  # [B, C, h, w]
            velocity_fn = guided_velocity(self._network_fn(), labels.to(self.device),
                                          cfg_scale=cfg_scale, interval=guidance_interval,
                                          null_label=self.num_classes)
            return get_solver(sampler)(velocity_fn, x1, num_steps=num_steps, generator=gens, progress=progress,
                                       path=self.path, time_shift=self.time_shift)  # [B, C, h, w]

    def resolve_sampler(self, sampler: str | None) -> str:
        """``sampler``, or for ``"auto"`` / ``None`` the model family's sampler (euler for a flow
        network, ddim for a DDPM one; :func:`repae.training.builders.default_sampler`)."""
        from repae.training.builders import AUTO_SAMPLER, default_sampler

        if sampler in (None, AUTO_SAMPLER):
            return default_sampler(getattr(self.model, "objective_kind", "flow"))
        return sampler

    def check_sampler(self, sampler: str) -> bool:
        """Whether ``sampler`` is a DDPM sampler; ConfigError when it cannot sample this model family."""
        sampler = self.resolve_sampler(sampler)
        ddpm_model = getattr(self.model, "objective_kind", "flow") == "ddpm"
        if ddpm_model:
            if sampler not in DDPM_SAMPLERS:
                raise ConfigError(f"sampler {sampler!r} cannot sample a DDPM model (DiT); use one of: "
                                  f"{', '.join(DDPM_SAMPLERS)}")
            return True
        get_solver(sampler)  # ConfigError listing the flow solvers
        return False

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, h, w] -> uint8 images [B, 3, H, W] (spec 6.3: denormalise, decode, truncate)."""
        modules = [self.tokenizer] if isinstance(self.tokenizer, torch.nn.Module) else []
        dtype = SAMPLING_PRECISIONS[self.precision]
        with _eval_mode(*modules):
            z_raw = self.tokenizer.normalizer.denormalize(z.float())  # [B, C, h, w]
            with torch.autocast(device_type=z_raw.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                image = self.tokenizer.decode(z_raw)  # [B, 3, H, W] ~[-1, 1]
        return unit_to_uint8(image.float())  # truncation, like generate.py (spec 11.24)

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor | Sequence[int], *, sampler: str = "auto", num_steps: int = 50,
                 cfg_scale: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                 seeds: Sequence[int] | torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Sample uint8 images [B, 3, H, W] for ``labels`` [B]; arguments as in :meth:`latents`."""
        z = self.latents(labels, sampler=sampler, num_steps=num_steps, cfg_scale=cfg_scale,
                         guidance_interval=guidance_interval, seeds=seeds, noise=noise, progress=progress)
        return self.decode(z)
