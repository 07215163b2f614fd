"""Writing many samples: a PNG folder (resumable) and/or an ADM ``.npz``, split over ranks (spec 6.4).

:func:`sample_to_outputs` draws N samples with a :class:`~repae.sampling.generator.Generator` into
``{index:06d}.png`` files and/or an ADM-format ``.npz`` (``arr_0`` uint8 [N, H, W, 3] + ``labels`` int64
[N]). Sample ``i`` has its own seed and label (:func:`~repae.sampling.generator.sample_seed`,
:func:`~repae.sampling.generator.sample_labels`), so the files do not depend on the batch size, the
number of processes or a resume. Kept apart from the Generator: this module is file IO and the
distributed job; the Generator only turns labels and seeds into images.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from repae.errors import ConfigError
from repae.sampling.generator import Generator, sample_labels, sample_seeds
from repae.sampling.guidance import guidance_active
from repae.utils.io import atomic_path, check_output_path, write_json

__all__ = ["SampleOutputs", "sample_to_outputs", "shard_indices", "write_adm_npz"]

# ---------------------------------------------------------------------------------------------
# writing many samples: PNG folder and ADM npz
# ---------------------------------------------------------------------------------------------

SHARDING = ("round-robin", "contiguous")


def shard_indices(num_samples: int, rank: int, world_size: int, mode: str = "round-robin") -> list[int]:
    """Indices of ``range(num_samples)`` handled by ``rank``: ``rank::world`` or a contiguous block."""
    if mode not in SHARDING:
        raise ConfigError(f"unknown sharding {mode!r}; choose one of: {', '.join(SHARDING)}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} outside world of size {world_size}; pass 0 <= rank < world_size")
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
    npz_path = check_output_path(out_npz, folder=False, what="out_npz", suffix=".npz") if out_npz is not None else None
    folder = check_output_path(out_dir, folder=True, what="out_dir") if out_dir is not None else None
    if npz_path is not None and npz_path.exists():
        return SampleOutputs(num_samples, 0, 0, npz_path if rank == 0 else None, folder)
    custom_labels = labels is not None
    if labels is None:
        labels = sample_labels(num_samples, seed, generator.num_classes)  # [N]
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != num_samples:
        raise ConfigError(f"got {labels.numel()} labels for num_samples={num_samples}; pass one label per sample "
                          "or leave labels unset")
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
