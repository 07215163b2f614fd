"""Tokenizers shipped with the package, loadable by name: ``tokenizer.weights=repae-vae-fmnist``; hub ids
(``tokenizer.weights=REPA-E/e2e-flux-vae``) from the local Hugging Face cache; ``tokenizer.preset=auto``.

Each entry is a folder under ``src/repae/assets`` in :meth:`Tokenizer.save_pretrained` layout
(diffusers config + safetensors weights + ``latent_stats.json``) with a ``record.json`` that gives
the exact command, seed and loss curve that produced it (``scripts/make_vae_asset.py``).
"""

from __future__ import annotations

import os

from repae.errors import ConfigError, MissingWeightsError
from repae.utils.assets import asset

#: name -> (asset folder, VAE preset it was trained as, what it is)
SHIPPED_TOKENIZERS: dict[str, tuple[str, str, str]] = {
    "repae-vae-fmnist": ("repae-vae-fmnist", "tiny-f4d4",
                         "tiny f4d4 KL-VAE pretrained with the `vae` recipe on the embedded training split "
                         "(the embedded analogue of SD-VAE, the paper's 'VAE init.')"),
}


def resolve_tokenizer_weights(spec: str | os.PathLike | None) -> str | os.PathLike | None:
    """A shipped tokenizer's name -> its folder; a Hugging Face hub id (``REPA-E/e2e-flux-vae``) that is no local
    path -> its snapshot folder in the local hub cache (:mod:`repae.interop.hub`; never downloaded); anything
    else (an uncached hub id too: the loaders' missing-weights error names the files to place) unchanged."""
    from repae.interop import hub

    repo = hub.repo_id(spec)
    if repo is not None:
        return hub.cached_snapshot(repo) or spec
    if spec is None or str(spec) not in SHIPPED_TOKENIZERS:
        return spec
    folder = asset(SHIPPED_TOKENIZERS[str(spec)][0])
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"shipped tokenizer '{spec}' is missing at {folder}",
                                  "reinstall repae, or rebuild it with scripts/make_vae_asset.py")
    return folder


def shipped_preset(spec: str | os.PathLike | None) -> str | None:
    """The VAE preset of a shipped tokenizer name (None for anything else)."""
    entry = SHIPPED_TOKENIZERS.get(str(spec)) if spec is not None else None
    return entry[1] if entry else None


#: ``tokenizer.preset`` value that takes the architecture from the diffusers folder in ``tokenizer.weights``.
AUTO_PRESET = "auto"
#: ``tokenizer.preset`` value of a representation autoencoder (:mod:`repae.tokenizer.rae`); its architecture is
#: resolved from the encoder registry into ``tokenizer.arch`` when a run is built (repae.training.builders).
RAE_PRESET = "rae"


def read_folder_arch(weights: str | os.PathLike):
    """The architecture of a diffusers VAE folder (``config.json``; a pipeline folder's ``vae/`` too), or
    None when ``weights`` is no such folder. ConfigError for a config that is no supported VAE."""
    import json
    from pathlib import Path

    from repae.tokenizer.families import arch_from_diffusers_config
    from repae.tokenizer.rae import is_rae_folder

    p = Path(resolve_tokenizer_weights(weights))
    if is_rae_folder(p):
        return None  # an RAE folder is no diffusers VAE: the RAE loader checks it (tokenizer.preset=rae)
    for folder in (p, p / "vae"):
        if (folder / "config.json").is_file():
            try:
                raw = json.loads((folder / "config.json").read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ConfigError(f"{folder / 'config.json'} is not JSON ({err}); point at a diffusers VAE folder") from None
            return raw, arch_from_diffusers_config(raw, where=str(folder / "config.json"))
    return None


def tokenizer_arch(tok_cfg):
    """The VAE architecture a :class:`~repae.config.TokenizerConfig` stands for: its preset (an LDM
    :class:`~repae.tokenizer.vae.VAEConfig` or a published ``DiffusersVAESpec``), or with ``preset=auto`` the
    recorded ``arch`` (else the ``weights`` folder's ``config.json``). One line naming the fix otherwise."""
    from repae.tokenizer.families import arch_from_diffusers_config
    from repae.tokenizer.vae import get_vae_config

    if tok_cfg.preset == RAE_PRESET:
        from repae.tokenizer.rae import RAESpec

        if not isinstance(tok_cfg.arch, dict):
            raise ConfigError("tokenizer.preset=rae: the RAE architecture (tokenizer.arch) is resolved from the encoder "
                              "registry when the run is built (repae.training.builders.resolve_rae_arch)")
        return RAESpec.from_dict(tok_cfg.arch)
    if tok_cfg.preset != AUTO_PRESET:
        return get_vae_config(tok_cfg.preset)
    if tok_cfg.arch is not None:
        if not isinstance(tok_cfg.arch, dict):
            raise ConfigError(f"tokenizer.arch must be a diffusers VAE config mapping, got {tok_cfg.arch!r}")
        return arch_from_diffusers_config(tok_cfg.arch, where="tokenizer.arch")
    found = read_folder_arch(tok_cfg.weights) if tok_cfg.weights else None
    if found is None:
        from repae.interop import hub

        repo = hub.repo_id(tok_cfg.weights)
        if repo is not None:
            raise MissingWeightsError(f"tokenizer.weights={repo}", hub.missing_hint(repo))
        from repae.tokenizer.rae import is_rae_folder

        if tok_cfg.weights and is_rae_folder(resolve_tokenizer_weights(tok_cfg.weights)):
            raise ConfigError(f"tokenizer.weights={tok_cfg.weights} is an RAE folder: set tokenizer.preset=rae")
        raise ConfigError(f"tokenizer.preset=auto takes the architecture from a diffusers VAE folder in tokenizer.weights "
                          f"(got {tok_cfg.weights!r}): give such a folder, or name a preset")
    return found[1]


def resolve_tokenizer_arch(tok_cfg) -> None:
    """``preset=auto``: record the ``weights`` folder's diffusers config in ``arch`` (in place; idempotent)."""
    if tok_cfg.preset != AUTO_PRESET or tok_cfg.arch is not None:
        return
    tokenizer_arch(tok_cfg)  # one-line error for a missing or unsupported folder
    raw, _ = read_folder_arch(tok_cfg.weights)
    tok_cfg.arch = {k: v for k, v in raw.items() if not k.startswith("_") or k == "_class_name"}
