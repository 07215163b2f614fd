"""Datasets and loaders: every dataset yields ``(uint8 [3, H, W], int64 label)``.

``build_dataset(spec, resolution=..., split=...)`` understands:

    "embedded"       the shipped Fashion-MNIST subset (5000 train / 1000 test, 32x32; no install)
    "fashion-mnist"  all 60000 / 10000 from the Debian package ``dataset-fashion-mnist``
    NAME:SPLIT       either of the two with an explicit split ("embedded:test"; "full" = "fashion-mnist")
    DIR              an image folder (labels = sorted sub-folder names; ADM centre crop)
    FILE.npz         ADM ``arr_0`` (NHWC/NCHW uint8, optional ``labels``) or this package's keys
    FILE.h5          datasets ``images`` (uint8) + ``labels``; opened lazily per worker process

Class names are on ``dataset.classes``. ``build_loader`` wraps a dataset with the deterministic,
resumable, rank-sharded :class:`ResumableSampler`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from repae.errors import ConfigError

__all__ = ["build_dataset", "default_resolution", "build_loader", "load_fashion_mnist", "ResumableSampler", "dataset_to_tensor"]


def _embedded(spec: str, resolution: int, split: str, **_) -> Dataset:
    from repae.data.embedded import fashion_mnist_dataset

    return fashion_mnist_dataset(split, source="embedded", resolution=resolution)


def _full_fmnist(spec: str, resolution: int, split: str, **_) -> Dataset:
    from repae.data.embedded import fashion_mnist_dataset

    return fashion_mnist_dataset(split, source="full", resolution=resolution)


def _folder(spec: str, resolution: int, split: str, **kw) -> Dataset:
    from repae.data.images import ImageFolderDataset

    return ImageFolderDataset(spec, resolution=resolution, **kw)


def _npz(spec: str, resolution: int, split: str, **_) -> Dataset:
    from repae.data.arrays import npz_dataset

    return npz_dataset(spec, resolution=resolution, split=split)


def _h5(spec: str, resolution: int, split: str, **_) -> Dataset:
    from repae.data.arrays import H5Dataset

    return H5Dataset(spec, resolution=resolution)


NAMED: dict[str, Callable[..., Dataset]] = {"embedded": _embedded, "fashion-mnist": _full_fmnist}
BY_SUFFIX: dict[str, Callable[..., Dataset]] = {".npz": _npz, ".h5": _h5, ".hdf5": _h5}


def build_dataset(spec: str, *, resolution: int, split: str = "train", strict: bool = False) -> Dataset:
    """Dataset from a name (``embedded``, ``fashion-mnist``), a folder, or an ``.npz`` / ``.h5`` file.

    Args:
        spec: see the module docstring.
        resolution: output side length (images are ``[3, resolution, resolution]``).
        split: ``train`` / ``test`` for the named datasets and for ``.npz`` files with split keys.
        strict: folders only -- raise on the first unreadable image instead of skipping it.
    """
    spec = os.fspath(spec)
    name, sep, named_split = spec.partition(":")
    if sep and name in NAMED | {"full": _full_fmnist}:  # "embedded:test", "fashion-mnist:train"
        if named_split not in ("train", "test"):
            raise ConfigError(f"data '{spec}': the split after ':' must be train or test")
        spec, split = ("fashion-mnist" if name == "full" else name), named_split
    if spec in NAMED:
        return NAMED[spec](spec, resolution, split)
    path = Path(spec)
    if path.is_dir():
        return _folder(spec, resolution, split, strict=strict)
    if path.suffix.lower() in BY_SUFFIX:
        if not path.exists():
            raise ConfigError(f"data file {spec} does not exist; check the path given to --data (repae train: data.source)")
        return BY_SUFFIX[path.suffix.lower()](spec, resolution, split)
    raise ConfigError(f"cannot read data {spec!r}: use 'embedded', 'fashion-mnist', an image folder, "
                      "or a .npz / .h5 file")


def default_resolution(spec: str) -> int:
    """Image side used when a verb is not given ``--resolution``: 32 for Fashion-MNIST, the stored side of
    the square images of an ``.npz`` / ``.h5`` file (:func:`repae.data.arrays.native_side`), else 256."""
    name = os.fspath(spec).partition(":")[0]
    if name in ("embedded", "fashion-mnist", "full"):
        return 32
    path = Path(os.fspath(spec))
    if path.suffix.lower() in (".npz", ".h5", ".hdf5"):
        from repae.data.arrays import native_side

        side = native_side(path)  # a file's split keys (train_images / test_images) share one side
        if side:
            return side
    return 256


def __getattr__(name: str):  # lazy re-exports keep `import repae.data` cheap
    if name == "load_fashion_mnist":
        from repae.data.embedded import load_fashion_mnist

        return load_fashion_mnist
    if name in ("build_loader", "ResumableSampler", "dataset_to_tensor"):
        from repae.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'repae.data' has no attribute {name!r}")
