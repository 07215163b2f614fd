"""Cached VAE latents: encode a dataset once with a frozen (E2E-)VAE (verb ``repae cache-latents``).

Stores the *raw* posterior moments (mean and std, EDM2-style raw latents, spec-repae.md 7.2) so
that the `ldm` recipe can resample ``z = mean + std * eps`` every step and the normalisation can
change without re-encoding. Nothing is sampled here, so the cache does not depend on a seed or on the
number of processes. Output folder (renamed into place only when complete)::

    <out>/moments.npy   float16 [N, 2C, h, w]   (mean channels first, then std)
    <out>/labels.npy    int64 [N]
    <out>/meta.json     vae (+ vae_preset), data source, resolution, count, dtype

``torchrun --nproc_per_node N -m repae.cli cache-latents ...`` shards the work over N processes and an
interrupted run resumes from its finished chunks (:func:`cache_latents`).

Train on it with ``repae train --config ... train.recipe=ldm data.latents=<out>``: the VAE (and its
preset) come from ``meta.json`` (:func:`repae.training.builders.resolve_cached_latents_vae`); the raw
images are still read for the encoder targets.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from repae.errors import ConfigError


def read_cache_meta(folder: str | os.PathLike) -> dict:
    """The ``meta.json`` of a latent cache folder; a folder without one is a one-line ConfigError."""
    meta_path = Path(folder) / "meta.json"
    if not meta_path.is_file():
        raise ConfigError(f"'{folder}' is not a latent cache: run `repae cache-latents --out {folder}` first")
    return json.loads(meta_path.read_text())


class CachedLatentDataset(Dataset):
    """Pairs an image dataset with cached moments: ``(image uint8, label, moments [2C, h, w])``.

    The moments file is memory-mapped lazily in each worker (no handle crosses a fork).
    """

    def __init__(self, images: Dataset, folder: str | os.PathLike):
        self.images = images
        self.folder = Path(folder)
        self.meta = read_cache_meta(folder)
        if self.meta["count"] != len(images):
            raise ConfigError(
                f"latent cache holds {self.meta['count']} items but the dataset has {len(images)}: "
                "cache the same data.source and resolution"
            )
        self._moments = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self._moments is None:
            self._moments = np.load(self.folder / "moments.npy", mmap_mode="r")
        image, label = self.images[i]
        return image, label, torch.from_numpy(np.asarray(self._moments[i], dtype=np.float32))


CHUNK_BATCHES = 16  # default resume unit: this many batches


@torch.no_grad()
def cache_latents(tokenizer, dataset: Dataset, out: str | os.PathLike, *, batch_size: int = 64,
                  num_workers: int = 0, device: str | torch.device = "cpu", meta: dict | None = None,
                  chunk_size: int | None = None, progress: bool = True) -> Path:
    """Encode ``dataset`` into the latent cache folder ``out``; resumable, and sharded over processes.

    **Several processes.** With ``torch.distributed`` initialised (``torchrun --nproc_per_node N -m repae.cli
    cache-latents ...``), the dataset is cut into chunks of ``chunk_size`` consecutive images (default
    ``CHUNK_BATCHES`` batches; a multiple of ``batch_size``) and the chunks still missing are dealt round-robin
    (the i-th missing chunk to rank ``i % N``). Every process encodes its chunks in exactly the batches one
    process would use, so N processes write the 1-process folder byte for byte (same device, dtype and
    thread settings; ``meta.json`` records no process count). Nothing random enters: the encoder runs in eval
    mode under ``no_grad`` and the posterior is *not* sampled: its mean and std are stored, and the ``ldm``
    recipe draws ``z = mean + std * eps`` with the training step's generator.

    **Resume.** The work lives in ``<parent>/.<name>.partial/``: ``work.json`` (what is being cached) and one
    ``chunks/<k>.npz`` per finished chunk, written to a temporary name, fsync'd and renamed, so a chunk file is
    complete or absent. A run killed at any point and started again with the same arguments (with any number of
    processes) encodes only the missing chunks; half-written temporaries and unreadable chunk files are
    discarded. Other arguments are a one-line ConfigError (rerun with the first ones, or delete the folder).
    When every chunk exists, rank 0 assembles ``moments.npy``, ``labels.npy`` and ``meta.json`` and renames
    the folder to ``out`` (replacing a cache already there): the cache appears complete or not at all. The
    other ranks return once all chunks exist, without waiting for the assembly. Disk: about twice the cache
    while assembling.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    chunk_size = chunk_size or CHUNK_BATCHES * batch_size
    if batch_size < 1 or chunk_size < 1 or chunk_size % batch_size:
        raise ConfigError(f"--chunk-size {chunk_size} must be a multiple of --batch-size {batch_size} (>= 1), so that "
                          "every process encodes the batches one process would")
    out = Path(out)
    work = out.parent / f".{out.name}.partial"
    tokenizer = tokenizer.to(device).eval()
    n = len(dataset)
    first = dataset[0][0]
    c, h, w = tokenizer.latent_shape((first.shape[-2], first.shape[-1]))
    plan = json.loads(json.dumps({"meta": meta or {}, "count": n, "latent_shape": [c, h, w], "dtype": "float16",
                                  "batch_size": batch_size, "chunk_size": chunk_size}))  # as work.json reads back
    num_chunks = -(-n // chunk_size)

    status: list = [None]
    fresh, failure = False, None
    if rank == 0:
        try:
            fresh = not (work / "work.json").is_file()
            status[0] = ("ok", _prepare_work(work, plan, num_chunks))
        except Exception as err:  # every rank stops with rank 0's message
            status[0], failure = ("error", type(err).__name__, str(err)), err
    if distributed:
        dist.broadcast_object_list(status, src=0)
    if failure is not None:
        raise failure
    if status[0][0] == "error":
        _, kind, message = status[0]
        raise (ConfigError if kind == "ConfigError" else RuntimeError)(message)
    missing = status[0][1]
    if rank == 0 and missing and len(missing) < num_chunks:
        print(f"cache-latents: resuming {work}: {num_chunks - len(missing)} of {num_chunks} chunks already encoded")

    mine = missing[rank::world]
    try:
        _encode_chunks(tokenizer, dataset, work / "chunks", mine, n=n, chunk_size=chunk_size, batch_size=batch_size,
                       num_workers=num_workers, device=device, shape=(2 * c, h, w),
                       progress=progress and rank == 0, world=world)
    except BaseException:
        if rank == 0 and not distributed and fresh and not any((work / "chunks").glob("*.npz")):
            shutil.rmtree(work, ignore_errors=True)  # failed before its first chunk (a bad image): leave nothing
        raise
    if distributed:
        dist.barrier()  # every chunk is on disk
    if rank == 0:
        _assemble(work, out, plan, num_chunks)
    return out


def _chunk_path(chunks: Path, k: int) -> Path:
    return chunks / f"{k:06d}.npz"


def _prepare_work(work: Path, plan: dict, num_chunks: int) -> list[int]:
    """Rank 0: create or check the partial folder, drop what a killed run left half-written; the missing chunks."""
    plan_file = work / "work.json"
    if work.exists() and not plan_file.is_file():
        shutil.rmtree(work)  # killed before the plan was written: nothing in it is usable
    if work.exists():
        before = json.loads(plan_file.read_text())
        if before != plan:
            diff = ", ".join(f"{k}: {_short(before.get(k))} then, {_short(plan.get(k))} now"
                             for k in sorted(set(before) | set(plan)) if before.get(k) != plan.get(k))
            raise ConfigError(f"{work} holds a partial cache made with other arguments ({diff}): rerun with the "
                              f"first arguments to finish it, or delete {work} to start over")
    else:
        (work / "chunks").mkdir(parents=True)
        tmp = work / "work.json.tmp"
        tmp.write_text(json.dumps(plan, indent=2, sort_keys=True))
        os.replace(tmp, plan_file)
    shutil.rmtree(work / "assembled", ignore_errors=True)
    for stale in (work / "chunks").glob("*.tmp*"):  # a chunk a killed process was writing
        stale.unlink()
    c2, h, w = 2 * plan["latent_shape"][0], plan["latent_shape"][1], plan["latent_shape"][2]
    missing = []
    for k in range(num_chunks):
        path = _chunk_path(work / "chunks", k)
        rows = min(plan["chunk_size"], plan["count"] - k * plan["chunk_size"])
        if path.is_file() and not _chunk_ok(path, (rows, c2, h, w)):
            print(f"cache-latents: {path} is unreadable or of another shape; encoding it again")
            path.unlink()
        if not path.is_file():
            missing.append(k)
    return missing


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _chunk_ok(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether a chunk file holds both arrays with the expected shapes (reads the array headers only)."""
    import zipfile

    expected = {"moments.npy": (shape, np.dtype(np.float16)), "labels.npy": (shape[:1], np.dtype(np.int64))}
    try:
        with zipfile.ZipFile(path) as z:
            for name, (want_shape, want_dtype) in expected.items():
                with z.open(name) as f:
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
                    got_shape, _, dtype = read(f)
                if (got_shape, dtype) != (want_shape, want_dtype):
                    return False
        return True
    except Exception:  # a truncated or foreign file: encode the chunk again
        return False


def _encode_chunks(tokenizer, dataset: Dataset, chunks: Path, mine: list[int], *, n: int, chunk_size: int,
                   batch_size: int, num_workers: int, device, shape: tuple[int, int, int], progress: bool,
                   world: int) -> None:
    """Encode chunks ``mine`` batch by batch (the 1-process batches) and write each as ``chunks/<k>.npz``."""
    from repae.conventions import uint8_to_unit

    if not mine:
        return
    bounds = {k: (k * chunk_size, min(n, (k + 1) * chunk_size)) for k in mine}
    batches = [list(range(b, min(b + batch_size, bounds[k][1]))) for k in mine
               for b in range(bounds[k][0], bounds[k][1], batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    total = sum(end - start for start, end in bounds.values())
    desc = "cache-latents" if world == 1 else f"cache-latents (rank 0 of {world})"
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    todo = iter(mine)
    k = next(todo)
    start, end = bounds[k]
    moments = np.empty((end - start, *shape), dtype=np.float16)
    labels = np.empty(end - start, dtype=np.int64)
    pos = start
    for images, ys in loader:
        posterior = tokenizer.encode(uint8_to_unit(images.to(device)))
        block = torch.cat([posterior.mean, posterior.std], dim=1)  # [b, 2C, h, w]
        moments[pos - start:pos - start + len(images)] = block.cpu().numpy().astype(np.float16)
        labels[pos - start:pos - start + len(images)] = ys.numpy()
        pos += len(images)
        bar.update(len(images))
        if pos == end:
            _write_chunk(_chunk_path(chunks, k), moments, labels)
            k = next(todo, None)
            if k is not None:
                start, end = bounds[k]
                moments = np.empty((end - start, *shape), dtype=np.float16)
                labels = np.empty(end - start, dtype=np.int64)
                pos = start
    bar.close()


def _write_chunk(path: Path, moments: np.ndarray, labels: np.ndarray) -> None:
    """One finished chunk, atomically: temporary name, fsync, rename (never visible half-written)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, moments=moments, labels=labels)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _assemble(work: Path, out: Path, plan: dict, num_chunks: int) -> None:
    """Rank 0: the chunks -> ``moments.npy`` [N, 2C, h, w] float16, ``labels.npy``, ``meta.json``; rename to ``out``."""
    c, h, w = plan["latent_shape"]
    n, chunk_size = plan["count"], plan["chunk_size"]
    missing = [k for k in range(num_chunks) if not _chunk_path(work / "chunks", k).is_file()]
    if missing:
        raise RuntimeError(f"cache-latents: chunks {missing[:5]} of {work} are missing after every process finished; "
                           "run the same command again to encode them")
    final = work / "assembled"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    moments = np.lib.format.open_memmap(final / "moments.npy", mode="w+", dtype=np.float16, shape=(n, 2 * c, h, w))
    labels = np.zeros(n, dtype=np.int64)
    for k in range(num_chunks):
        with np.load(_chunk_path(work / "chunks", k)) as z:
            moments[k * chunk_size:k * chunk_size + len(z["labels"])] = z["moments"]
            labels[k * chunk_size:k * chunk_size + len(z["labels"])] = z["labels"]
    moments.flush()
    del moments
    np.save(final / "labels.npy", labels)
    (final / "meta.json").write_text(json.dumps({**plan["meta"], "count": n, "latent_shape": [c, h, w],
                                                 "dtype": "float16", "layout": "mean,std"}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(work)
