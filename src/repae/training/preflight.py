"""Checks a training run makes before it builds anything: a config that cannot be silently wrong.

:func:`preflight` raises :class:`~repae.errors.ConfigError` with one line naming the key and the
fix for out-of-range values (:func:`repae.config.check_ranges`) and for a ``tokenizer.weights``
folder whose architecture is not ``tokenizer.preset`` (the folder's ``config.json`` would
otherwise silently win; ``tokenizer.preset=auto`` takes the folder's architecture on purpose). It reads at most two small JSON files (with a latent cache, its ``meta.json``).
"""

from __future__ import annotations

from repae.config import RunConfig, check_ranges
from repae.errors import ConfigError

# VAEConfig fields that define the architecture (sample_size only tunes tiled decoding)
_GEOMETRY = ("block_out_channels", "attention_levels", "latent_channels", "layers_per_block", "norm_num_groups",
             "in_channels")


def check_tokenizer_weights(cfg: RunConfig) -> None:
    """A diffusers folder in ``tokenizer.weights`` must have the architecture of ``tokenizer.preset``
    (``tokenizer.preset=auto`` takes the folder's; ``tokenizer.arch``, once recorded, must still match it)."""
    from repae.tokenizer.families import DiffusersVAESpec
    from repae.tokenizer.registry import AUTO_PRESET, read_folder_arch, tokenizer_arch
    from repae.tokenizer.vae import VAEConfig

    weights = cfg.tokenizer.weights
    if cfg.tokenizer.preset == AUTO_PRESET and cfg.tokenizer.arch is None:
        tokenizer_arch(cfg.tokenizer)  # needs a supported folder: one line otherwise
        return
    try:
        found = read_folder_arch(weights) if weights else None
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"tokenizer.weights: {weights}/config.json is not a diffusers VAE config "
                          f"({type(err).__name__}: {err}); point tokenizer.weights at a VAE folder") from None
    if found is None:
        return  # a file (or missing path): the strict shape check of load_vae_weights applies
    found = found[1]
    want = tokenizer_arch(cfg.tokenizer)
    name = cfg.tokenizer.preset if cfg.tokenizer.preset != AUTO_PRESET else "tokenizer.arch"
    if isinstance(found, VAEConfig) and isinstance(want, VAEConfig):
        diff = [f"{f} {getattr(found, f)} vs {getattr(want, f)}" for f in _GEOMETRY
                if _norm(getattr(found, f)) != _norm(getattr(want, f))]
    elif isinstance(found, DiffusersVAESpec) and isinstance(want, DiffusersVAESpec):
        diff = found.differences(want)
    else:
        kind = {True: "the LDM design", False: "not the LDM design"}
        diff = [f"{kind[isinstance(found, VAEConfig)]} vs {kind[isinstance(want, VAEConfig)]}"]
    if diff:
        raise ConfigError(f"tokenizer.weights={weights} is not a '{name}' VAE ({'; '.join(diff)}): set "
                          "tokenizer.preset to the folder's architecture (tokenizer.preset=auto takes it from the "
                          "folder) or use matching weights")


def _norm(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def preflight(cfg: RunConfig) -> None:
    """All checks above, in order; cheap (no weights are read). First the VAE of a cached-latent run
    is taken from its cache (:func:`~repae.training.builders.resolve_cached_latents_vae`), so the
    checks see the tokenizer that will be built."""
    from repae.training.builders import resolve_cached_latents_vae

    resolve_cached_latents_vae(cfg)
    check_ranges(cfg)
    check_tokenizer_weights(cfg)
