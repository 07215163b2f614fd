"""Generation pipeline: noise -> solver (+CFG) -> denormalise -> decode -> uint8 (REPA-E spec 6.3-6.4).

:class:`Generator` wraps a tokenizer and a velocity network::

    gen = Generator(tokenizer=tok, model=sit, path="linear", num_classes=1000, resolution=256)
    images = gen(torch.tensor([207, 360]), sampler="euler-maruyama", num_steps=250,
                 cfg_scale=1.8, guidance_interval=(0.0, 0.825), seeds=[0, 1])   # uint8 [2, 3, 256, 256]

:func:`sample_to_outputs` draws N samples (optionally across ranks) into ``{index:06d}.png`` files
and/or an ADM-format ``.npz`` (``arr_0`` uint8 [N, H, W, 3] + ``labels`` int64 [N]).

Reproducibility (deliberate departure from generate.py, whose per-rank seed
``((seed + rank) * world) // 2`` makes sample ``i`` depend on the world size, spec 6.4): sample
``i`` of a run with seed ``s`` uses its own ``torch.Generator`` seeded with
:func:`sample_seed` ``(s, i)`` for the initial noise and then the SDE noise, and its label is
:func:`sample_labels` ``(N, s, K)[i]``. Sample ``i`` is therefore identical whatever the batch
size, the order of generation, the number of processes, or a resume after interruption.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from repae.conventions import unit_to_uint8
from repae.errors import ConfigError
from repae.sampling.ddpm import DDPM_SAMPLERS, get_ddpm_sampler, guided_denoiser
from repae.sampling.guidance import guidance_active, guided_velocity, model_velocity_fn
from repae.sampling.solvers import get_solver
from repae.utils.io import atomic_path

__all__ = [
    "Generator",
    "SampleOutputs",
    "sample_labels",
    "sample_seed",
    "sample_seeds",
    "sample_to_outputs",
    "shard_indices",
    "write_adm_npz",
]

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

    Modules are switched to eval mode for each call and their flags restored afterwards.
    """

    def __init__(self, *, tokenizer: Any, model: torch.nn.Module, path: Any = "linear",
                 num_classes: int | None = None, resolution: int = 256, precision: str = "fp32"):
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
        from repae.config import from_dict
        from repae.training.builders import build_sit_for, build_tokenizer_arch
        from repae.training.checkpoint import read_checkpoint

        models, _, state = read_checkpoint(path)
        cfg = from_dict(state["config"])
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
                  resolution=cfg.data.resolution, precision=cfg.sample.precision)
        gen.sample_defaults = gen._resolved(cfg.sample)  # the run's own sampling settings (its preview grids')
        return gen

    @classmethod
    def from_trainer(cls, trainer: Any, *, ema: bool = True) -> Generator:
        """The pipeline on a live trainer's current weights (EMA SiT + EMA normaliser by default).

        The tokenizer is copied so that loading the EMA normaliser statistics never touches the
        training one.
        """
        import copy

        tok = copy.deepcopy(trainer.tokenizer).eval()
        if ema:
            tok.normalizer.load_state_dict(trainer.ema.normalizer.state_dict())
        model = trainer.ema.model if ema else trainer.sit
        gen = cls(tokenizer=tok, model=model, path=trainer.cfg.diffusion.path,
                  num_classes=trainer.cfg.model.num_classes, resolution=trainer.cfg.data.resolution,
                  precision=trainer.cfg.sample.precision)
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
                                       path=self.path)  # [B, C, h, w]

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


# ---------------------------------------------------------------------------------------------
# writing many samples: PNG folder and ADM npz
# ---------------------------------------------------------------------------------------------

SHARDING = ("round-robin", "contiguous")


def shard_indices(num_samples: int, rank: int, world_size: int, mode: str = "round-robin") -> list[int]:
    """Indices of ``range(num_samples)`` handled by ``rank``: ``rank::world`` or a contiguous block."""
    if mode not in SHARDING:
        raise ConfigError(f"unknown sharding {mode!r}; choose one of: {', '.join(SHARDING)}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} outside world of size {world_size}")
    if mode == "round-robin":
        return list(range(rank, num_samples, world_size))
    per = math.ceil(num_samples / world_size)
    return list(range(rank * per, min(num_samples, (rank + 1) * per)))


def write_adm_npz(path: str | os.PathLike, images: Iterable[np.ndarray], *, num_images: int,
                  image_shape: tuple[int, int, int], labels: np.ndarray | torch.Tensor | None = None) -> Path:
    """Stream ``num_images`` uint8 HWC images into an ADM-layout npz, atomically.

    Layout (spec-related-methods 5.5): ``arr_0`` uint8 [N, H, W, 3] and optionally ``labels``
    int64 [N], stored uncompressed like ``np.savez``. Images are written one at a time, so N x H x
    W x 3 bytes never need to be in memory at once (50K x 256^2 x 3 = 9.8 GB).
    """
    path = Path(path)
    shape = (int(num_images), *(int(s) for s in image_shape))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    count = 0
    with atomic_path(path) as tmp:
        # atomic_path hands a '.tmp' name: write through ZipFile so numpy does not append '.npz'
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for img in images:
                    img = np.ascontiguousarray(img, dtype=np.uint8)
                    if img.shape != shape[1:]:
                        raise ValueError(f"image {count} has shape {img.shape}, expected {shape[1:]}")
                    f.write(img.tobytes())
                    count += 1
                if count != shape[0]:
                    raise ValueError(f"got {count} images, expected {shape[0]}")
            if labels is not None:
                lab = np.asarray(labels, dtype=np.int64).reshape(-1)
                if lab.shape[0] != shape[0]:
                    raise ValueError(f"got {lab.shape[0]} labels for {shape[0]} images")
                with zf.open("labels.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, lab, allow_pickle=False)
    return path


def _png_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"{index:06d}.png"


def _save_png(path: Path, image_hwc: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image_hwc).save(tmp, format="PNG")


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # [H, W, 3] uint8


SETTINGS_FILE = "sampling.json"


def _check_folder_settings(folder: Path, settings: dict, rank: int) -> None:
    """Refuse to resume into a PNG folder drawn with other settings (would silently mix samples)."""
    import json

    from repae.utils.io import write_json

    record = folder / SETTINGS_FILE
    if record.exists():
        old = json.loads(record.read_text())
        if old != json.loads(json.dumps(settings)):
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise ConfigError(f"{folder} holds samples drawn with other settings {diff}; pick another out_dir")
    elif rank == 0:
        write_json(record, settings)


@dataclass
class SampleOutputs:
    """What :func:`sample_to_outputs` did on this rank."""

    num_samples: int  # N, over all ranks
    generated: int  # images generated by this rank
    skipped: int  # images of this rank already present as PNG (resume)
    npz: Path | None  # written npz (rank 0), else None
    out_dir: Path | None


def _dist_ready(world_size: int) -> bool:
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def sample_to_outputs(generator: Generator, *, num_samples: int, batch_size: int, seed: int = 0,
                      out_npz: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                      rank: int = 0, world_size: int = 1, labels: torch.Tensor | None = None,
                      shard: str = "round-robin", sampler: str = "auto", num_steps: int = 50,
                      cfg_scale: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                      progress: bool = True) -> SampleOutputs:
    """Draw ``num_samples`` images (spec 6.4) into PNGs and/or an ADM npz, split over ranks.

    Args (keyword-only besides ``generator``):
        num_samples: N, exactly (not rounded up to the global batch as generate.py does).
        batch_size: images per forward pass on each rank.
        seed: run seed; sample i uses :func:`sample_seed` (seed, i) and label
            :func:`sample_labels` (N, seed, K)[i] unless ``labels`` [N] is given.
        out_npz: ADM npz (``arr_0`` uint8 [N,H,W,3], ``labels`` int64 [N]) written by rank 0.
            If it already exists nothing is done (npz files are written atomically).
        out_dir: folder of ``{index:06d}.png``; existing PNGs are not regenerated (resume).
            Without ``out_dir`` images are kept in memory and, for ``world_size > 1``, gathered to
            rank 0 with ``torch.distributed.gather_object`` (requires an initialised process group).
        rank, world_size: this process and the number of processes.
        shard: ``"round-robin"`` (index i on rank i % world) or ``"contiguous"`` blocks.
        sampler, num_steps, cfg_scale, guidance_interval: as in :meth:`Generator.__call__`.
        progress: tqdm bar on rank 0.
    """
    if out_npz is None and out_dir is None:
        raise ConfigError("nothing to write; pass out_npz (ADM .npz) and/or out_dir (PNG folder)")
    if num_samples < 1 or batch_size < 1:
        raise ConfigError(f"num_samples and batch_size must be >= 1 (got {num_samples}, {batch_size})")
    sampler = generator.resolve_sampler(sampler)  # "auto" -> the model's own; what the PNG folder records
    generator.check_sampler(sampler)  # fail on bad settings before any work
    guidance_active(0.0, cfg_scale=cfg_scale, interval=guidance_interval)
    distributed = _dist_ready(world_size)
    if world_size > 1 and not distributed and out_dir is None:
        raise ConfigError("world_size > 1 without out_dir needs torch.distributed initialised; "
                          "pass out_dir (a folder all ranks can write) or init the process group")
    npz_path = Path(out_npz) if out_npz is not None else None
    folder = Path(out_dir) if out_dir is not None else None
    if npz_path is not None and npz_path.exists():
        return SampleOutputs(num_samples, 0, 0, npz_path if rank == 0 else None, folder)
    custom_labels = labels is not None
    if labels is None:
        labels = sample_labels(num_samples, seed, generator.num_classes)  # [N]
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != num_samples:
        raise ConfigError(f"got {labels.numel()} labels for num_samples={num_samples}")
    job = _SamplingJob(generator, labels, seed, batch_size, rank, world_size, distributed,
                       shard_indices(num_samples, rank, world_size, shard), show=progress and rank == 0,
                       sample_kw=dict(sampler=sampler, num_steps=num_steps, cfg_scale=cfg_scale,
                                      guidance_interval=guidance_interval))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        settings = dict(job.sample_kw, guidance_interval=list(guidance_interval), seed=seed,
                        labels="custom" if custom_labels else "sample_labels")
        if generator.precision != "fp32":  # fp32 folders keep the record they always had
            settings["precision"] = generator.precision
        _check_folder_settings(folder, settings, rank)
        return job.to_folder(folder, npz_path)
    return job.in_memory(npz_path)


@dataclass
class _SamplingJob:
    """One rank's share of :func:`sample_to_outputs` (validated inputs; two ways to store the images)."""

    generator: Generator
    labels: torch.Tensor  # [N]
    seed: int
    batch_size: int
    rank: int
    world_size: int
    distributed: bool
    mine: list[int]  # this rank's sample indices
    show: bool
    sample_kw: dict

    @property
    def num_samples(self) -> int:
        return int(self.labels.numel())

    def run_batch(self, idx: list[int]) -> np.ndarray:
        imgs = self.generator(self.labels[idx], seeds=sample_seeds(self.seed, idx), **self.sample_kw)  # [b, 3, H, W]
        return imgs.permute(0, 2, 3, 1).cpu().numpy()  # [b, H, W, 3] uint8

    def _barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def to_folder(self, folder: Path, npz_path: Path | None) -> SampleOutputs:
        """PNG per index (existing ones kept: resume); rank 0 then packs them into the npz."""
        pending = [i for i in self.mine if not _png_path(folder, i).exists()]
        with tqdm(total=len(pending), desc="sampling", unit="img", disable=not self.show) as bar:
            for start in range(0, len(pending), self.batch_size):
                idx = pending[start:start + self.batch_size]
                for i, img in zip(idx, self.run_batch(idx)):
                    _save_png(_png_path(folder, i), img)
                bar.update(len(idx))
        self._barrier()
        written = None
        if self.rank == 0 and npz_path is not None:
            n = self.num_samples
            missing = [i for i in range(n) if not _png_path(folder, i).exists()]
            if missing:
                raise RuntimeError(f"{len(missing)} PNGs missing in {folder} (e.g. {missing[0]:06d}.png); "
                                   "rerun to resume")
            first = _load_png(_png_path(folder, 0))
            images = (_load_png(_png_path(folder, i)) for i in range(n))
            written = write_adm_npz(npz_path, images, num_images=n, image_shape=first.shape,
                                    labels=self.labels.numpy())
        self._barrier()
        return SampleOutputs(self.num_samples, len(pending), len(self.mine) - len(pending), written, folder)

    def in_memory(self, npz_path: Path) -> SampleOutputs:
        """Gather to rank 0; every rank runs the same number of rounds so gather_object stays in lockstep."""
        n, world = self.num_samples, self.world_size
        rounds = math.ceil(math.ceil(n / world) / self.batch_size)  # longest shard, both sharding modes
        store: np.ndarray | None = None
        with tqdm(total=n, desc="sampling", unit="img", disable=not self.show) as bar:
            for r in range(rounds):
                idx = self.mine[r * self.batch_size:(r + 1) * self.batch_size]
                payload = (idx, self.run_batch(idx) if idx else None)
                gathered: list | None = [payload]
                if self.distributed:
                    gathered = [None] * world if self.rank == 0 else None
                    torch.distributed.gather_object(payload, gathered, dst=0)
                for got_idx, got_imgs in (gathered if self.rank == 0 else []):
                    if got_idx:
                        if store is None:
                            store = np.empty((n, *got_imgs.shape[1:]), dtype=np.uint8)
                        store[got_idx] = got_imgs
                        bar.update(len(got_idx))
        written = None
        if self.rank == 0:
            written = write_adm_npz(npz_path, iter(store), num_images=n, image_shape=store.shape[1:],
                                    labels=self.labels.numpy())
        self._barrier()
        return SampleOutputs(n, len(self.mine), 0, written, None)
