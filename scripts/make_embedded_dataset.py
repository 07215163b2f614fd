"""Build ``src/repae/assets/fashion_mnist_subset.npz``: the embedded default dataset.

Reads the Debian package files ``/usr/share/datasets/fashion-mnist/*.gz``
(``apt-get install dataset-fashion-mnist``) with numpy + gzip, keeps the first 500 images of each
class of the train split and the first 100 of each class of the test split (in file order, so the
subset is deterministic and class-balanced), zero-pads 28x28 -> 32x32 and writes them with
``np.savez_compressed``; the file's sha256 goes to ``fashion_mnist_subset.sha256`` next to it.

    python scripts/make_embedded_dataset.py [--source-dir DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from repae.data.embedded import CLASS_NAMES, EMBEDDED_PATH, file_sha256, pad_to_32, read_debian_split
from repae.utils.io import atomic_path

PER_CLASS = {"train": 500, "test": 100}


def balanced_first_k(labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``k`` items of every class, returned in increasing (file) order."""
    picked = [np.flatnonzero(labels == c)[:k] for c in range(num_classes)]
    for c, idx in enumerate(picked):
        if len(idx) < k:
            raise SystemExit(f"class {c} has only {len(idx)} images, need {k}")
    return np.sort(np.concatenate(picked))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(EMBEDDED_PATH))
    args = p.parse_args(argv)

    arrays: dict[str, np.ndarray] = {}
    for split, k in PER_CLASS.items():
        images, labels = read_debian_split(split, args.source_dir)
        idx = balanced_first_k(labels, k, len(CLASS_NAMES))
        arrays[f"{split}_images"] = pad_to_32(images[idx])  # [N, 32, 32] uint8
        arrays[f"{split}_labels"] = labels[idx].astype(np.int64)  # [N]
    arrays["class_names"] = np.array(CLASS_NAMES)

    out = Path(args.out)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending '.npz' to the temp name
            np.savez_compressed(f, **arrays)
    digest = file_sha256(out)
    with atomic_path(out.with_suffix(".sha256")) as tmp:
        tmp.write_text(f"{digest}  {out.name}\n")
    print(f"wrote {out} ({out.stat().st_size:,} bytes) sha256 {digest}")
    for k, v in arrays.items():
        print(f"  {k}: {v.dtype} {list(v.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
