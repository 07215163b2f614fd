"""Hugging Face hub ids as weight sources, read from the local hub cache only (never downloaded).

``tokenizer.weights=REPA-E/e2e-flux-vae`` (or ``--vae REPA-E/e2e-flux-vae``) resolves to the snapshot
folder of that repository in the huggingface_hub cache, exactly where ``huggingface-cli download`` or
``diffusers.<Class>.from_pretrained`` on a machine with network put it: ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when called, so a changed environment counts).
repae only ever looks the id up with ``local_files_only=True``, so it behaves the same with or without
``HF_HUB_OFFLINE=1``: nothing is fetched, and a repository that is not in the cache is one line naming the
id and the files to place (:func:`missing_hint`). A pipeline repository (e.g. FLUX.1-dev) works too: the
VAE readers look in its ``vae/`` folder.

Single weight files (LPIPS's VGG16, the FID Inception, published generator checkpoints, alignment encoders)
go through :func:`resolve_weights_file`: ``owner/name`` is the first of the loader's usual file names in the
cached snapshot, ``owner/name/path/in/repo.pt`` that very file; anything else (a local path) is unchanged.
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


def repo_file(spec) -> tuple[str, str] | None:
    """``("owner/name", "path/in/repo.ext")`` if ``spec`` reads as a file inside a hub repository
    (``owner/name/path/in/repo.ext``, a file suffix at the end) and is no existing local path, else None."""
    if not isinstance(spec, str):
        return None
    parts = spec.split("/")
    if (len(parts) < 3 or not _REPO_ID.match("/".join(parts[:2])) or not parts[-1].lower().endswith(_FILE_SUFFIXES)
            or any(p in ("", ".", "..") for p in parts[2:])):
        return None
    return None if Path(spec).expanduser().exists() else ("/".join(parts[:2]), "/".join(parts[2:]))


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


def missing_hint(repo: str, files: tuple[str, ...] = VAE_FILES, *, any_of: bool = False,
                 spec: str | None = None) -> str:
    """The one-line fix for hub repository ``repo`` missing from the cache (``files``: what to place; with
    ``any_of``, one of them is enough; ``spec``: what the user wrote, default ``repo``)."""
    what = " or ".join(files) if any_of else " and ".join(files)
    fetch = files[0] if any_of else " ".join(files)
    return (f"'{spec or repo}' is no local path, and the Hugging Face hub repository {repo} is not in the local cache "
            f"{cache_dir()} (repae never downloads): place its {what} there, e.g. "
            f"`huggingface-cli download {repo} {fetch}` on a machine with network and copy the cache folder "
            "(set HF_HUB_CACHE to it), or give a local path")


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


def resolve_weights_file(spec: str | os.PathLike | None, names: tuple[str, ...], what: str
                         ) -> str | os.PathLike | None:
    """The local file a weights argument names: ``spec`` unchanged unless it is a hub id with no such local path.

    ``owner/name`` -> the first of ``names`` in the cached snapshot of that repository; ``owner/name/path/in/repo.pt``
    -> that file of the cached snapshot. Only the local cache is read (never a download; ``HF_HUB_OFFLINE``
    changes nothing). ``what`` heads the error, e.g. ``"VGG16 weights for LPIPS"``.

    Raises:
        MissingWeightsError: the repository is not cached, or holds none of the files (one line naming the id,
            the files and the cache folder).
    """
    from repae.errors import MissingWeightsError

    inside = repo_file(spec)
    repo = inside[0] if inside else repo_id(spec)
    if repo is None:
        return spec
    names = (inside[1],) if inside else tuple(names)
    try:
        found = cached_file(repo, names)
    except FileNotFoundError as err:
        raise MissingWeightsError(what, f"{err}; place {'it' if len(names) == 1 else 'one of them'} there") from None
    if found is None:
        raise MissingWeightsError(what, missing_hint(repo, names, any_of=True, spec=str(spec)))
    return str(found)
