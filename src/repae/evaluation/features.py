"""Feature extractors for evaluation and streaming feature computation over image sources.

A :class:`FeatureExtractor` maps a uint8 batch ``[B, 3, H, W]`` to a :class:`FeatureBatch` of
``pool`` (FID, precision/recall), ``spatial`` (sFID) and ``logits`` (IS, class accuracy). Two are
registered in :data:`EXTRACTORS`:

* ``"inception"``: the TF-ported FID InceptionV3 (``inception.py``) -> 2048 / 2023 / 1008; needs
  the user's ``pt_inception-2015-12-05-6726825d.pth`` (``--inception-weights`` or
  ``$REPAE_INCEPTION_WEIGHTS``). Numbers comparable with ADM / REPA-E tables.
* ``"evalnet-fmnist"``: the shipped offline evaluation CNN (``offline_net.py``) -> 256 / 512 / 10.
  Always available; its numbers are labelled NOT comparable with published FID.

``compute_features(source, extractor)`` streams any image source through an extractor without
writing anything to disk. A *source* is one of: an ADM ``.npz`` (``arr_0`` uint8 NHWC, read in
chunks), a folder of PNG/JPEG files, ``"embedded[:split]"`` / ``"full[:split]"`` (Fashion-MNIST),
a uint8 array/tensor (NCHW or NHWC), or an iterable of uint8 batches (e.g. a sampler).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from repae.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# ---------------------------------------------------------------------------------------------
# Outputs and the extractor protocol
# ---------------------------------------------------------------------------------------------


@dataclass
class FeatureBatch:
    """Features of one batch (float32, on the extractor's device)."""

    pool: torch.Tensor  # [B, D_pool]
    spatial: torch.Tensor  # [B, D_spatial]
    logits: torch.Tensor  # [B, K]


@dataclass
class Features:
    """Features of a whole image set (numpy float32, CPU)."""

    pool: np.ndarray  # [N, D_pool]
    spatial: np.ndarray  # [N, D_spatial]
    logits: np.ndarray  # [N, K]
    feature_space: str
    images: np.ndarray | None = None  # the first ``keep_images`` images, uint8 NHWC (ADM arr_0 layout)

    def __len__(self) -> int:
        return len(self.pool)


class FeatureExtractor(Protocol):
    """``name``, ``feature_space`` (label written next to every number) and a uint8 -> features call."""

    name: str
    feature_space: str
    device: torch.device

    def __call__(self, images: torch.Tensor) -> FeatureBatch: ...


class _ModuleExtractor:
    """Wraps a module whose forward returns ``(pool, spatial, logits)`` from uint8 images."""

    name = ""
    feature_space = ""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> FeatureBatch:
        pool, spatial, logits = self.module(images.to(self.device))
        return FeatureBatch(pool.float(), spatial.float(), logits.float())


def _default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


class InceptionExtractor(_ModuleExtractor):
    """ADM's Inception features (2048 pool_3 / 2023 mixed_6/conv / 1008 bias-free logits)."""

    name = "inception"

    def __init__(self, *, weights: str | os.PathLike | None = None, resize: str = "tf1",
                 device: str | torch.device | None = None) -> None:
        from repae.evaluation.inception import FEATURE_SPACE, load_inception

        self.feature_space = FEATURE_SPACE
        super().__init__(load_inception(weights, resize=resize), _default_device(device))


class EvalNetExtractor(_ModuleExtractor):
    """The offline ``repae-evalnet-fmnist`` features (256 pool / 512 spatial / 10 logits)."""

    name = "evalnet-fmnist"

    def __init__(self, *, weights: str | os.PathLike | None = None, device: str | torch.device | None = None) -> None:
        from repae.evaluation.offline_net import FEATURE_SPACE, load_evalnet

        self.feature_space = FEATURE_SPACE
        super().__init__(load_evalnet(weights), _default_device(device))


# name -> constructor (keyword-only ``weights`` and ``device``). One table; no if/elif chains.
EXTRACTORS: dict[str, type[_ModuleExtractor]] = {
    "inception": InceptionExtractor,
    "evalnet-fmnist": EvalNetExtractor,
}


def get_extractor(name: str | None = None, *, inception_weights: str | os.PathLike | None = None,
                  device: str | torch.device | None = None) -> FeatureExtractor:
    """Build an extractor by name.

    ``name=None`` picks ``"inception"`` when weights are given (argument or
    ``$REPAE_INCEPTION_WEIGHTS``), else ``"evalnet-fmnist"`` with a logged warning that the
    numbers are not comparable with published FID.
    """
    from repae.evaluation.inception import WEIGHTS_ENV, resolve_weights_path

    if name is None:
        if resolve_weights_path(inception_weights) is not None:
            name = "inception"
        else:
            name = "evalnet-fmnist"
            log.warning("no FID Inception weights (--inception-weights or %s): using the offline evaluation "
                        "network 'evalnet-fmnist'; its FID/IS are NOT comparable with published numbers",
                        WEIGHTS_ENV)
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    weights = inception_weights if name == "inception" else None
    return EXTRACTORS[name](weights=weights, device=device)


# ---------------------------------------------------------------------------------------------
# Image sources -> uint8 NCHW batches
# ---------------------------------------------------------------------------------------------


def to_nchw_uint8(batch: Any) -> torch.Tensor:
    """A uint8 batch (array or tensor; NCHW, or NHWC as in ADM ``.npz``; 1 or 3 channels) -> NCHW RGB."""
    if isinstance(batch, (tuple, list)):  # (images, labels) from a dataset / loader
        batch = batch[0]
    x = torch.as_tensor(np.asarray(batch)) if not isinstance(batch, torch.Tensor) else batch
    if x.dtype != torch.uint8:
        raise TypeError(f"evaluation needs uint8 images in [0, 255], got {x.dtype}; convert with "
                        "repae.conventions.unit_to_uint8")
    if x.ndim == 3:  # [N, H, W] grayscale
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W] or [N, H, W, C], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(x.shape)}")
    return x.contiguous()


def _npz_member_reader(path: Path, key: str = "arr_0"):
    """Open ``key`` of an ``.npz`` for streaming: returns (file object, shape, dtype); checks the layout."""
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is not an .npz archive; write samples with numpy.savez (arr_0 = uint8 [N, H, W, 3])")
    zf = zipfile.ZipFile(path)
    name = f"{key}.npy"
    if name not in zf.namelist():
        zf.close()
        raise ConfigError(f"{path} has no '{key}' array; write the images as arr_0 = uint8 [N, H, W, 3] "
                          "(np.savez(path, arr_0=images), the ADM sample/reference layout)")
    f = zf.open(name)
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        f.close()
        zf.close()
        raise ConfigError(f"{path}:{key} uses .npy format {version}; re-save it with np.savez (v1/v2)")
    shape, fortran, dtype = readers[version](f)
    bad = None
    if fortran:
        bad = "is Fortran-ordered; re-save it with np.savez"
    elif dtype.hasobject:
        bad = "holds Python objects (a pickle), which are never loaded; store uint8 images"
    elif dtype != np.uint8:
        bad = f"has dtype {dtype}; evaluation needs uint8 images in [0, 255]: convert with repae.conventions.unit_to_uint8"
    elif len(shape) not in (3, 4) or (len(shape) == 4 and 1 not in (shape[1], shape[3]) and 3 not in (shape[1], shape[3])):
        bad = f"has shape {tuple(shape)}; expected uint8 [N, H, W, 3] (or [N, 3, H, W], [N, H, W])"
    if bad:
        f.close()
        zf.close()
        raise ConfigError(f"{path}:{key} {bad}")
    return zf, f, shape, dtype


def _iter_npz(path: Path, batch_size: int) -> Iterator[torch.Tensor]:
    """Stream ``arr_0`` of an ADM ``.npz`` in chunks (works for compressed and plain archives)."""
    zf, f, shape, dtype = _npz_member_reader(path)
    try:
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            buf = f.read(n * row)
            yield to_nchw_uint8(np.frombuffer(bytearray(buf), dtype=dtype).reshape((n, *shape[1:])))  # writable copy
    finally:
        f.close()
        zf.close()


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{folder} contains no PNG/JPEG images; pass a folder of {'/'.join(IMAGE_SUFFIXES)} files or an ADM .npz")
    return files


def _iter_folder(folder: Path, batch_size: int) -> Iterator[torch.Tensor]:
    from PIL import Image

    files = _image_files(folder)
    for start in range(0, len(files), batch_size):
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files[start:start + batch_size]]
        yield to_nchw_uint8(np.stack(arrays))  # [b, 3, H, W]


def _fashion_mnist(spec: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``"embedded"``, ``"embedded:test"``, ``"full:train"`` -> Fashion-MNIST arrays; else None."""
    source, _, split = spec.partition(":")
    if source not in ("embedded", "full"):
        return None
    from repae.data.embedded import load_fashion_mnist

    return load_fashion_mnist(split or "train", source=source)


def count_images(source: Any) -> int | None:
    """Number of images in ``source`` when known without reading it (for the progress bar)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".npz" and path.is_file():
            zf, f, shape, _ = _npz_member_reader(path)
            f.close()
            zf.close()
            return int(shape[0])
        if path.is_dir():
            return len(_image_files(path))
        arrays = _fashion_mnist(str(source))
        return len(arrays[0]) if arrays is not None else None
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return int(source.shape[0])
    if isinstance(source, Dataset):
        return len(source)
    return None


def iter_uint8_batches(source: Any, *, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Yield uint8 ``[b, 3, H, W]`` batches from any supported source (see the module docstring)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".npz":
            if not path.is_file():
                raise ConfigError(f"sample/reference file {path} does not exist; check the path (repae sample --out-npz "
                                  "writes samples, repae reference --out a reference batch)")
            yield from _iter_npz(path, batch_size)
            return
        if path.is_dir():
            yield from _iter_folder(path, batch_size)
            return
        arrays = _fashion_mnist(str(source))
        if arrays is None:
            raise ConfigError(f"image source {source!r} is neither an .npz, a folder of images, nor "
                              "'embedded[:split]' / 'full[:split]': pass an existing file or folder, or one of those names")
        source = arrays[0]
    if isinstance(source, (np.ndarray, torch.Tensor)):
        for start in range(0, source.shape[0], batch_size):
            yield to_nchw_uint8(source[start:start + batch_size])
        return
    if isinstance(source, Dataset):  # repae.data.build_dataset output: (uint8 [3, H, W], label) items
        for images, _ in DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=0):
            yield to_nchw_uint8(images)
        return
    for batch in source:  # an iterable of batches (e.g. a sampler): re-chunking is not needed
        yield to_nchw_uint8(batch)


def read_npz_labels(path: str | os.PathLike) -> np.ndarray | None:
    """Class labels of a sample ``.npz``: ``labels`` (written by ``repae sample``) or ``arr_1``
    (ADM's labelled batches), else None."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return None
    with np.load(path) as z:
        key = next((k for k in ("labels", "arr_1") if k in z.files), None)
        if key is None:
            return None
        labels = z[key]
    zf, f, shape, _ = _npz_member_reader(path)  # the image count, from the header only
    f.close()
    zf.close()
    fix = f"store one integer class label per image (np.savez(path, arr_0=images, {key}=labels)) or leave '{key}' out"
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise ConfigError(f"{path}:{key} has dtype {labels.dtype} and shape {labels.shape}; {fix}")
    if labels.shape[0] != shape[0]:
        raise ConfigError(f"{path}:{key} has {labels.shape[0]} labels for {shape[0]} images; {fix}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Streaming feature computation
# ---------------------------------------------------------------------------------------------


def compute_features(source: Any, extractor: FeatureExtractor, *, batch_size: int = 64, progress: bool = True,
                     max_images: int | None = None, keep_images: int = 0) -> Features:
    """Run ``extractor`` over ``source`` batch by batch; nothing is written to disk.

    Args:
        source: an image source (module docstring).
        extractor: a :class:`FeatureExtractor`.
        batch_size: images per forward (ADM: 64).
        progress: show a tqdm bar.
        max_images: stop after this many images (None: all).
        keep_images: also return the first this-many images as uint8 NHWC (reference ``arr_0``).
    """
    from tqdm import tqdm

    total = count_images(source)
    if max_images is not None:
        total = min(total, max_images) if total is not None else max_images
    pools, spatials, logits, kept = [], [], [], []
    n = n_kept = 0
    bar = tqdm(total=total, desc=f"features ({extractor.name})", unit="img", disable=not progress)
    for batch in iter_uint8_batches(source, batch_size=batch_size):
        if max_images is not None and n + len(batch) > max_images:
            batch = batch[:max_images - n]
        if len(batch) == 0:
            break
        fb = extractor(batch)
        pools.append(fb.pool.cpu().numpy())
        spatials.append(fb.spatial.cpu().numpy())
        logits.append(fb.logits.cpu().numpy())
        if n_kept < keep_images:
            take = batch[:keep_images - n_kept]
            kept.append(take.permute(0, 2, 3, 1).cpu().numpy())  # NHWC like ADM's arr_0
            n_kept += len(take)
        n += len(batch)
        bar.update(len(batch))
        if max_images is not None and n >= max_images:
            break
    bar.close()
    if n == 0:
        raise ConfigError(f"image source {source!r} yielded no images; pass a non-empty .npz, image folder or dataset")
    return Features(
        pool=np.concatenate(pools), spatial=np.concatenate(spatials), logits=np.concatenate(logits),
        feature_space=extractor.feature_space, images=np.concatenate(kept) if kept else None,
    )
