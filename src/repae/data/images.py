"""Image-folder datasets and the ADM centre crop.

``ImageFolderDataset(root, resolution=...)`` indexes every image file under ``root`` (recursively,
**sorted** paths, spec section 7.4); the label of a file is the index of its top-level sub-folder
name among the sorted sub-folder names (files directly in ``root`` form the class ``""``). Each
item is decoded with Pillow, converted to RGB, ADM-centre-cropped to ``resolution`` and returned as
``(uint8 [3, res, res], int64 label)``.

ADM centre crop (spec section 7.4): while the short side is >= 2*res, halve both sides with a BOX
filter; then resize with BICUBIC so the short side equals res (new size = round(side * scale));
then crop res x res at offsets floor((H - res) / 2), floor((W - res) / 2).

Bad-file policy
    * Grayscale (``L``, ``1``) -> replicated to RGB.
    * Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) -> alpha-composited on
      white, then RGB. Other palette / CMYK / YCbCr images -> converted to RGB.
    * 16-bit and 32-bit grayscale (``I;16*``, ``I``, ``F``) -> scaled to 8 bits (divided by 257 when
      values exceed 255, i.e. 65535 -> 255), then replicated to RGB.
    * Files whose extension is not an image extension are ignored silently.
    * Zero-byte, truncated or corrupt images are found at **scan** time (a cheap header/structure
      check: ``PIL.Image.verify``, or a 1/8-scale draft decode for JPEG; with a progress bar on big folders) and skipped; the count and
      the first few names are logged through :mod:`logging`. With ``strict=True`` the first such
      file raises :class:`BadImageError` naming it.
    * If a file still fails to decode later (e.g. it changed after the scan, or its damage is in
      pixel data that ``verify`` does not read), ``__getitem__`` raises :class:`BadImageError`
      naming the file -- never an anonymous crash mid-epoch.
    * A folder without any image -> :class:`repae.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from repae.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                              ".pbm", ".jfif"})
PROGRESS_MIN_FILES = 1000  # show a scan progress bar from this many candidate files
LOG_FIRST_BAD = 5


class BadImageError(ConfigError):
    """An image file that cannot be decoded; the message names the file."""


# --------------------------------------------------------------------------------------------
# pixel conversion and the ADM centre crop
# --------------------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB following the bad-file policy in the module docstring."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range -> 8-bit (65535 -> 255)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def center_crop_pil(img: Image.Image, resolution: int) -> Image.Image:
    """ADM centre crop (spec section 7.4) of an RGB image to ``resolution x resolution``."""
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def center_crop_array(arr: np.ndarray, resolution: int) -> np.ndarray:
    """ADM centre crop of a uint8 ``[H, W, 3]`` array -> ``[res, res, 3]``."""
    return np.asarray(center_crop_pil(Image.fromarray(arr), resolution))


# --------------------------------------------------------------------------------------------
# folder scan
# --------------------------------------------------------------------------------------------


def _check_image(path: Path) -> str | None:
    """``None`` if the file looks like a readable image, else a short reason (cheap: no full decode)."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            if im.format == "JPEG":
                # verify() does not read JPEG scan data; a 1/8-scale draft decode is cheap and
                # catches truncation ("image file is truncated")
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            else:
                im.verify()  # structure / checksum check (PNG CRCs, missing end chunks, ...)
    except Exception as e:  # noqa: BLE001 -- any failure means "unreadable"; the reason is reported
        return f"{type(e).__name__}: {e}"
    return None


def scan_folder(root: str | os.PathLike, *, strict: bool = False, progress: bool | None = None
                ) -> tuple[list[Path], list[str], list[tuple[Path, str]]]:
    """Index ``root``: (sorted good image paths, their class keys, skipped (path, reason) pairs)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; pass an image folder, a .npz / .h5 file or 'embedded'")
    candidates = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    show = len(candidates) >= PROGRESS_MIN_FILES if progress is None else progress
    good, keys, bad = [], [], []
    for p in tqdm(candidates, desc=f"scanning {root.name}", disable=not show):
        reason = _check_image(p)
        if reason is not None:
            if strict:
                raise BadImageError(f"unreadable image {p} ({reason}); fix or delete it, or drop strict mode")
            bad.append((p, reason))
            continue
        rel = p.relative_to(root)
        good.append(p)
        keys.append(rel.parts[0] if len(rel.parts) > 1 else "")
    if bad:
        first = ", ".join(f"{p.relative_to(root)} ({r})" for p, r in bad[:LOG_FIRST_BAD])
        log.warning("skipped %d unreadable image(s) in %s; first: %s", len(bad), root, first)
    if not good:
        raise ConfigError(f"no readable images in {root} (extensions {sorted(IMAGE_EXTENSIONS)}); check the path")
    return good, keys, bad


class ImageFolderDataset(Dataset):
    """Images under ``root`` with labels from sorted top-level sub-folder names, ADM-cropped.

    Args:
        root: folder to index recursively.
        resolution: output side (ADM centre crop).
        strict: raise on the first unreadable file instead of skipping it (see module docstring).
        progress: force the scan progress bar on/off (default: on for >= 1000 files).

    Attributes:
        classes: sorted class names; ``skipped``: ``[(path, reason)]`` of files left out at scan time.
    """

    def __init__(self, root: str | os.PathLike, *, resolution: int, strict: bool = False,
                 progress: bool | None = None):
        self.root = Path(root)
        self.resolution = resolution
        self.files, keys, self.skipped = scan_folder(self.root, strict=strict, progress=progress)
        self.classes = sorted(set(keys))
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = np.array([index[k] for k in keys], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> np.ndarray:
        """uint8 ``[res, res, 3]`` of item ``i`` (decode, RGB policy, ADM crop)."""
        path = self.files[i]
        try:
            with Image.open(path) as im:
                im.load()
                rgb = to_rgb(im)
        except Exception as e:  # noqa: BLE001 -- re-raised with the file name
            raise BadImageError(f"cannot decode image {path} ({type(e).__name__}: {e}); "
                                "delete or replace it and restart") from e
        return np.asarray(center_crop_pil(rgb, self.resolution))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr = self.load_image(i)  # [res, res, 3]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), torch.tensor(self.labels[i])
