"""Tokenizers shipped with the package, loadable by name: ``tokenizer.weights=repae-vae-fmnist``.

Each entry is a folder under ``src/repae/assets`` in :meth:`Tokenizer.save_pretrained` layout
(diffusers config + safetensors weights + ``latent_stats.json``) with a ``record.json`` that gives
the exact command, seed and loss curve that produced it (``scripts/make_vae_asset.sh``).
"""

from __future__ import annotations

import os

from repae.errors import MissingWeightsError
from repae.utils.assets import asset

#: name -> (asset folder, VAE preset it was trained as, what it is)
SHIPPED_TOKENIZERS: dict[str, tuple[str, str, str]] = {
    "repae-vae-fmnist": ("repae-vae-fmnist", "tiny-f4d4",
                         "tiny f4d4 KL-VAE pretrained with the `vae` recipe on the embedded training split "
                         "(the embedded analogue of SD-VAE, the paper's 'VAE init.')"),
}


def resolve_tokenizer_weights(spec: str | os.PathLike | None) -> str | os.PathLike | None:
    """A shipped tokenizer's name -> its folder; anything else is returned unchanged."""
    if spec is None or str(spec) not in SHIPPED_TOKENIZERS:
        return spec
    folder = asset(SHIPPED_TOKENIZERS[str(spec)][0])
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"shipped tokenizer '{spec}' is missing at {folder}",
                                  "reinstall repae, or rebuild it with scripts/make_vae_asset.sh")
    return folder


def shipped_preset(spec: str | os.PathLike | None) -> str | None:
    """The VAE preset of a shipped tokenizer name (None for anything else)."""
    entry = SHIPPED_TOKENIZERS.get(str(spec)) if spec is not None else None
    return entry[1] if entry else None
