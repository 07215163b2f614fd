"""Array-backed datasets: in-memory arrays, ``.npz`` files and ``.h5`` files.

Every dataset here yields ``(image, label)`` with ``image`` a ``uint8`` tensor ``[3, H, W]`` and
``label`` an ``int64`` scalar tensor (see :mod:`repae.conventions`). Grayscale arrays are
replicated to three channels; when ``resolution`` differs from the stored size the image is
resized with the ADM centre crop (:func:`repae.data.images.center_crop_array`).

File layouts accepted
    ``.npz``  ``arr_0`` (ADM sample / reference batches) as NHWC or NCHW uint8, with an optional
              ``labels`` (or ``arr_1``) array; or this package's keys ``{split}_images`` /
              ``{split}_labels`` / ``class_names`` (the embedded Fashion-MNIST file); or plain
              ``images`` / ``labels``.
    ``.h5``   datasets ``images`` (uint8 ``[N, H, W, C]``, ``[N, C, H, W]`` or ``[N, H, W]``) and
              optional ``labels`` (int); optional attribute/dataset ``class_names``.

The ``.h5`` file is opened **lazily, once per process** (never in ``__init__``), so forked
DataLoader workers each get their own handle; a handle opened in one PID is never used in another.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from repae.errors import ConfigError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def to_chw3(img: np.ndarray) -> np.ndarray:
    """One image (HW, HWC or CHW, C in {1, 3, 4}) -> uint8 ``[3, H, W]``.

    A leading axis of size 1/3/4 that is smaller than the last axis is taken as channels-first.
    Alpha (4th channel) is dropped; arrays hold no compositing information beyond it.
    """
    if img.dtype != np.uint8:
        raise ConfigError(f"image arrays must be uint8, got {img.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    shape = img.shape
    if img.ndim == 2:
        img = img[None]  # [1, H, W]
    elif img.ndim == 3:
        if img.shape[-1] in (1, 3, 4) and img.shape[0] not in (1, 3, 4):
            img = img.transpose(2, 0, 1)  # HWC -> CHW
        elif img.shape[-1] in (1, 3, 4) and img.shape[0] in (1, 3, 4) and img.shape[-1] < img.shape[0]:
            img = img.transpose(2, 0, 1)
    else:
        raise ConfigError(f"expected an image of rank 2 or 3, got shape {img.shape}")
    c = img.shape[0]
    if c == 1:
        img = np.repeat(img, 3, axis=0)  # [3, H, W]
    elif c == 4:
        img = img[:3]
    elif c != 3:
        raise ConfigError(f"cannot read an image of shape {shape}: no first or last axis of size 1, 3 or 4 holds "
                          "its channels; store uint8 images as [N, H, W, 3] (RGB) or [N, H, W] (grey)")
    return np.ascontiguousarray(img)


def _resize_if_needed(img: np.ndarray, resolution: int | None) -> np.ndarray:
    """uint8 ``[3, h, w]`` -> ``[3, res, res]`` via the ADM centre crop (no-op when sizes match)."""
    if resolution is None or (img.shape[1] == resolution and img.shape[2] == resolution):
        return img
    from repae.data.images import center_crop_array

    return center_crop_array(img.transpose(1, 2, 0), resolution).transpose(2, 0, 1).copy()


def _item(img: np.ndarray, label: int, resolution: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    img = _resize_if_needed(to_chw3(img), resolution)
    return torch.from_numpy(img), torch.tensor(int(label), dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """In-memory uint8 images (``[N, H, W]``, NHWC or NCHW) with int labels.

    Args:
        images: uint8 array of N images.
        labels: int array ``[N]``; ``None`` gives label 0 everywhere.
        resolution: output size; ``None`` keeps the stored size.
        classes: class names (index = label); default ``["0", "1", ...]``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, *, resolution: int | None = None,
                 classes: Sequence[str] | None = None):
        if images.ndim not in (3, 4):
            raise ConfigError(f"expected images of shape [N,H,W], [N,H,W,C] or [N,C,H,W], got {images.shape}")
        self.images = images
        self.labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels).astype(np.int64)
        if len(self.labels) != len(images):
            raise ConfigError(f"{len(images)} images but {len(self.labels)} labels; they must match")
        self.resolution = resolution
        n_cls = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_cls)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _item(self.images[i], self.labels[i], self.resolution)


def _npz_arrays(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Pick images / labels / class names out of an ``.npz`` file (layouts in the module docstring)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is not an .npz archive; write one with numpy.savez (arr_0 = uint8 [N, H, W, 3])")
    try:
        return _npz_arrays_open(path, split)
    except ValueError as err:  # object arrays (pickles) are refused: allow_pickle=False
        raise ConfigError(f"{path}: {str(err).splitlines()[0][:120]}; store plain uint8 / int64 arrays") from None


def _npz_keys(keys: set[str], split: str) -> tuple[str, str | None] | None:
    """(image key, label key or None) of an ``.npz`` file with members ``keys``, or None when it holds no images."""
    for img_key, lab_keys in ((f"{split}_images", (f"{split}_labels",)), ("images", ("labels",)),
                              ("arr_0", ("labels", "arr_1"))):
        if img_key in keys:
            return img_key, next((k for k in lab_keys if k in keys), None)
    return None


def _npz_arrays_open(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        names = [str(s) for s in z["class_names"]] if "class_names" in keys else None
        found = _npz_keys(keys, split)
        if found is not None:
            img_key, lab_key = found
            return z[img_key], (z[lab_key] if lab_key else None), names
    raise ConfigError(f"{path}: no image array found (keys {sorted(keys)}); expected 'arr_0', 'images' or "
                      f"'{split}_images'")


def native_side(path: str | os.PathLike, split: str = "train") -> int | None:
    """Side length of the square images stored in an ``.npz`` or ``.h5`` file, read from the array header
    only (nothing is decompressed); None for another file, non-square or unreadable images.

    Verbs that are given such a file and no ``--resolution`` use it, so that a 32-pixel array is not
    upsampled to 256 (and a reference made from it matches samples of its own size)."""
    import zipfile

    path = Path(path)
    shape = None
    try:
        if path.suffix.lower() == ".npz" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                found = _npz_keys({n[:-4] for n in zf.namelist() if n.endswith(".npy")}, split)
                if found is None:
                    return None
                with zf.open(found[0] + ".npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape = read(f)[0]
        elif path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            if h5py.is_hdf5(path):
                with h5py.File(path, "r") as f:
                    shape = tuple(f["images"].shape) if "images" in f else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if not shape or len(shape) < 3:
        return None
    try:
        chw = to_chw3(np.zeros(shape[1:], np.uint8))  # [3, H, W] under the loaders' own layout rule
    except ConfigError:
        return None
    return int(chw.shape[1]) if chw.shape[1] == chw.shape[2] else None


def npz_dataset(path: str | os.PathLike, *, resolution: int | None, split: str = "train") -> ArrayDataset:
    """Dataset over an ``.npz`` file (ADM ``arr_0`` or this package's keys), loaded into memory."""
    images, labels, names = _npz_arrays(Path(path), split)
    if len(images):
        try:  # the layout of every image is the first one's: refuse a bad file now, naming it
            to_chw3(images[0])
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    if labels is not None and labels.ndim != 1:
        labels = None  # ADM 'arr_1' can be something else (e.g. spatial features); ignore it then
    return ArrayDataset(images, labels, resolution=resolution, classes=names)


class H5Dataset(Dataset):
    """Dataset over an ``.h5`` file with datasets ``images`` (uint8) and optional ``labels``.

    The file handle is opened on first access **in the current process** and reopened when the
    process id changes (forked DataLoader workers), so no handle is shared across processes.
    """

    def __init__(self, path: str | os.PathLike, *, resolution: int | None = None):
        import h5py

        self.path = Path(path)
        self.resolution = resolution
        # read metadata with a short-lived handle; nothing stays open after __init__
        if not h5py.is_hdf5(self.path):
            raise ConfigError(f"{self.path} is not an HDF5 file; write one with h5py (datasets 'images', 'labels')")
        with h5py.File(self.path, "r") as f:
            if "images" not in f:
                raise ConfigError(f"{self.path}: no 'images' dataset (found {sorted(f.keys())}); "
                                  "write uint8 images under 'images' and int labels under 'labels'")
            self._len = int(f["images"].shape[0])
            if f["images"].dtype != np.uint8:
                raise ConfigError(f"{self.path}: 'images' must be uint8, got {f['images'].dtype}")
            self.labels = np.asarray(f["labels"][()]).astype(np.int64) if "labels" in f else np.zeros(self._len, np.int64)
            raw = f["class_names"][()] if "class_names" in f else f.attrs.get("class_names")
        if raw is not None:
            self.classes = [s.decode() if isinstance(s, bytes) else str(s) for s in raw]
        else:
            self.classes = [str(i) for i in range(int(self.labels.max()) + 1 if self._len else 0)]
        self._file = None
        self._pid = None

    def _images(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")  # per-process handle (see class docstring)
            self._pid = os.getpid()
        return self._file["images"]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None  # never pickle/ship an open handle to a worker
        return state

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _item(self._images()[i], self.labels[i], self.resolution)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
