"""Fashion-MNIST: the embedded 6,000-image default subset and the full Debian-packaged set.

The package ships ``repae/assets/fashion_mnist_subset.npz`` (offline-assets.md section 4(a)): a
class-balanced, deterministic subset of Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, (c) Zalando SE,
MIT licence; see ``assets/NOTICE-fashion-mnist.txt``), made by ``scripts/make_embedded_dataset.py``
from the Debian package ``dataset-fashion-mnist``:

    train_images  uint8 [5000, 32, 32]   the first 500 images of each class in the official train file
    train_labels  int64 [5000]
    test_images   uint8 [1000, 32, 32]   the first 100 images of each class in the official test file
    test_labels   int64 [1000]
    class_names   str   [10]

Images are the 28x28 originals zero-padded by 2 pixels on each side (black background, like the
originals). Its sha256 is stored in ``fashion_mnist_subset.sha256`` and checked on load.

``source="full"`` reads all 60,000 / 10,000 images from ``/usr/share/datasets/fashion-mnist``
(``apt-get install dataset-fashion-mnist``) with plain numpy + gzip; the same 32x32 padding applies.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from repae.errors import ConfigError
from repae.utils.assets import ASSETS
from repae.utils.io import file_sha256  # noqa: F401  (re-exported: repae.data.embedded.file_sha256)

EMBEDDED_PATH = ASSETS / "fashion_mnist_subset.npz"
EMBEDDED_SHA256_PATH = ASSETS / "fashion_mnist_subset.sha256"
DEBIAN_DIR = Path(os.environ.get("REPAE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PAD = 2  # 28 + 2 * 2 = 32
SPLIT_FILES = {  # split -> (images file, labels file) in the official naming
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLITS = tuple(SPLIT_FILES)


def read_idx_gz(path: str | os.PathLike) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format: big-endian magic, dims, then raw uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ConfigError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex()}); replace it with the original "
                          "Fashion-MNIST *-ubyte.gz file, or use '--data embedded'")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims).copy()


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> [N, 32, 32], zero (black) border of ``PAD`` pixels."""
    return np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)), mode="constant")


def read_debian_split(split: str, directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The full official split as (uint8 [N, 28, 28], int64 [N]) from the Debian package files."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    directory = Path(directory) if directory is not None else DEBIAN_DIR
    img_file, lab_file = (directory / name for name in SPLIT_FILES[split])
    if not img_file.exists() or not lab_file.exists():
        raise ConfigError(f"full Fashion-MNIST not found in {directory}; run 'apt-get install dataset-fashion-mnist' "
                          "(or set REPAE_FASHION_MNIST_DIR), or use '--data embedded'")
    return read_idx_gz(img_file), read_idx_gz(lab_file).astype(np.int64)


def expected_sha256() -> str:
    """The committed checksum of the embedded subset (first token of the .sha256 file)."""
    return EMBEDDED_SHA256_PATH.read_text().split()[0]


@functools.lru_cache(maxsize=1)
def _embedded_arrays(verify: bool = True) -> dict[str, np.ndarray]:
    if not EMBEDDED_PATH.exists():
        raise ConfigError(f"embedded dataset missing at {EMBEDDED_PATH}; regenerate it with "
                          "'python scripts/make_embedded_dataset.py'")
    if verify and EMBEDDED_SHA256_PATH.exists() and file_sha256(EMBEDDED_PATH) != expected_sha256():
        raise ConfigError(f"{EMBEDDED_PATH} does not match its sha256; regenerate it with "
                          "'python scripts/make_embedded_dataset.py'")
    with np.load(EMBEDDED_PATH, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_fashion_mnist(split: str = "train", *, source: str = "embedded") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as arrays: (uint8 [N, 3, 32, 32], int64 [N]).

    Args:
        split: ``"train"`` or ``"test"``.
        source: ``"embedded"`` (the shipped 5000/1000 subset) or ``"full"`` (60000/10000 from the
            Debian package ``dataset-fashion-mnist``).
    """
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    gray, labels = _gray_split(split, source)
    return np.repeat(gray[:, None], 3, axis=1), labels  # [N, 3, 32, 32]


def _gray_split(split: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32], int64 [N]) for one split of one source."""
    if source == "embedded":
        z = _embedded_arrays()
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)
    if source == "full":
        images, labels = read_debian_split(split)
        return pad_to_32(images), labels
    raise ConfigError(f"unknown Fashion-MNIST source {source!r}; choose 'embedded' or 'full'")


def fashion_mnist_dataset(split: str = "train", *, source: str = "embedded", resolution: int = 32):
    """A :class:`~repae.data.arrays.ArrayDataset` over Fashion-MNIST (grayscale -> 3 channels)."""
    from repae.data.arrays import ArrayDataset

    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    gray, labels = _gray_split(split, source)  # [N, 32, 32]; replicated per item (3x less memory)
    return ArrayDataset(gray, labels, resolution=resolution, classes=CLASS_NAMES)
