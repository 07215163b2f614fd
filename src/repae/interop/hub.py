"""Hugging Face hub ids as weight sources, read from the local hub cache only (never downloaded).

``tokenizer.weights=REPA-E/e2e-flux-vae`` (or ``--vae REPA-E/e2e-flux-vae``) resolves to the snapshot
folder of that repository in the huggingface_hub cache, exactly where ``huggingface-cli download`` or
``diffusers.<Class>.from_pretrained`` on a machine with network put it: ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when called, so a changed environment counts).
repae only ever looks the id up with ``local_files_only=True``, so it behaves the same with or without
``HF_HUB_OFFLINE=1``: nothing is fetched, and a repository that is not in the cache is one line naming the
id and the files to place (:func:`missing_hint`). A pipeline repository (e.g. FLUX.1-dev) works too: the
VAE readers look in its ``vae/`` folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

#: "owner/name": what a hub repository id looks like (and a local path need not)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
#: names that are weight or config files, never repository ids
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".json", ".yaml", ".yml", ".npz")
#: the files a diffusers VAE repository must hold (the error names them)
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def repo_id(spec) -> str | None:
    """``spec`` if it reads as a hub repository id (``owner/name``) and is no existing local path, else None."""
    if not isinstance(spec, str) or not _REPO_ID.match(spec) or spec.lower().endswith(_FILE_SUFFIXES):
        return None
    return None if Path(spec).exists() else spec


def cache_dir() -> Path:
    """The huggingface_hub cache folder, from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder of hub repository ``repo`` (its ``main`` revision), or None if not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, cache_dir=cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError) as err:
        log.debug("hub id %s is not in the cache %s: %s", repo, cache_dir(), err)
        return None
    log.info("hub id %s -> cached snapshot %s", repo, folder)
    return folder


def missing_hint(repo: str, files: tuple[str, ...] = VAE_FILES, *, any_of: bool = False) -> str:
    """The one-line fix for hub repository ``repo`` missing from the cache (``files``: what to place; with
    ``any_of``, one of them is enough)."""
    what = " or ".join(files) if any_of else " and ".join(files)
    fetch = files[0] if any_of else " ".join(files)
    return (f"'{repo}' is no local path, and the Hugging Face hub repository {repo} is not in the local cache "
            f"{cache_dir()} (repae never downloads): place its {what} there, e.g. "
            f"`huggingface-cli download {repo} {fetch}` on a machine with network and copy the cache folder "
            "(set HF_HUB_CACHE to it), or give a local folder")


def cached_file(repo: str, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` in the cached snapshot of ``repo``; None when the repository is not cached.

    Raises:
        FileNotFoundError: the repository is cached but holds none of ``names`` (the message lists them).
    """
    folder = cached_snapshot(repo)
    if folder is None:
        return None
    for name in names:
        if (folder / name).is_file():
            return folder / name
    held = sorted(p.name for p in folder.iterdir())[:8]
    raise FileNotFoundError(f"the cached hub repository {repo} ({folder}) holds none of {', '.join(names)} "
                            f"(it has: {', '.join(held) or 'nothing'})")
