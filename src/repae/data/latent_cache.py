"""Cached VAE latents: encode a dataset once with a frozen (E2E-)VAE (verb ``repae cache-latents``).

Stores the *raw* posterior moments (mean and std, EDM2-style raw latents, spec-repae.md 7.2) so
that the `ldm` recipe can resample ``z = mean + std * eps`` every step and the normalisation can
change without re-encoding. Output folder (renamed into place only when complete)::

    <out>/moments.npy   float16 [N, 2C, h, w]   (mean channels first, then std)
    <out>/labels.npy    int64 [N]
    <out>/meta.json     vae (+ vae_preset), data source, resolution, count, dtype

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


@torch.no_grad()
def cache_latents(tokenizer, dataset: Dataset, out: str | os.PathLike, *, batch_size: int = 64,
                  num_workers: int = 0, device: str = "cpu", meta: dict | None = None) -> Path:
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:  # any error (a bad image, a wrong dtype, Ctrl-C) leaves no half-written folder behind
        _write_cache(tokenizer, dataset, tmp, batch_size=batch_size, num_workers=num_workers, device=device,
                     meta=meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _write_cache(tokenizer, dataset: Dataset, tmp: Path, *, batch_size: int, num_workers: int, device: str,
                 meta: dict | None) -> None:
    """Encode ``dataset`` into ``tmp`` (moments.npy float16 [N, 2C, h, w], labels.npy, meta.json)."""
    from repae.conventions import uint8_to_unit

    tokenizer = tokenizer.to(device).eval()
    n = len(dataset)
    first = dataset[0][0]
    c, h, w = tokenizer.latent_shape((first.shape[-2], first.shape[-1]))
    moments = np.lib.format.open_memmap(tmp / "moments.npy", mode="w+", dtype=np.float16, shape=(n, 2 * c, h, w))
    labels = np.zeros(n, dtype=np.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    pos = 0
    for images, ys in tqdm(loader, desc="cache-latents", unit="batch"):
        posterior = tokenizer.encode(uint8_to_unit(images.to(device)))
        block = torch.cat([posterior.mean, posterior.std], dim=1)  # [b, 2C, h, w]
        moments[pos:pos + len(images)] = block.cpu().numpy().astype(np.float16)
        labels[pos:pos + len(images)] = ys.numpy()
        pos += len(images)
    moments.flush()
    del moments
    np.save(tmp / "labels.npy", labels)
    (tmp / "meta.json").write_text(json.dumps({**(meta or {}), "count": n, "latent_shape": [c, h, w],
                                               "dtype": "float16", "layout": "mean,std"}, indent=2))
