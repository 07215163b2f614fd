"""Checks a training run makes before it builds anything: a config that cannot be silently wrong.

:func:`preflight` raises :class:`~repae.errors.ConfigError` with one line naming the key and the
fix for out-of-range values (:func:`repae.config.check_ranges`) and for a ``tokenizer.weights``
folder whose architecture is not ``tokenizer.preset`` (the folder's ``config.json`` would
otherwise silently win). It reads at most two small JSON files (with a latent cache, its ``meta.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from repae.config import RunConfig, check_ranges
from repae.errors import ConfigError

# VAEConfig fields that define the architecture (sample_size only tunes tiled decoding)
_GEOMETRY = ("block_out_channels", "attention_levels", "latent_channels", "layers_per_block", "norm_num_groups",
             "in_channels")


def check_tokenizer_weights(cfg: RunConfig) -> None:
    """A diffusers folder in ``tokenizer.weights`` must have the geometry of ``tokenizer.preset``."""
    from repae.tokenizer.tokenizer import CONFIG_NAME
    from repae.tokenizer.vae import VAEConfig, get_vae_config

    weights = cfg.tokenizer.weights
    if not weights or not (Path(weights) / CONFIG_NAME).is_file():
        return  # a file (or missing path): the strict shape check of load_vae_weights applies
    try:
        found = VAEConfig.from_diffusers_config(json.loads((Path(weights) / CONFIG_NAME).read_text()))
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"tokenizer.weights: {Path(weights) / CONFIG_NAME} is not a diffusers VAE config "
                          f"({type(err).__name__}: {err}); point tokenizer.weights at a VAE folder") from None
    want = get_vae_config(cfg.tokenizer.preset)
    diff = [f"{f} {getattr(found, f)} vs {getattr(want, f)}" for f in _GEOMETRY
            if _norm(getattr(found, f)) != _norm(getattr(want, f))]
    if diff:
        raise ConfigError(f"tokenizer.weights={weights} is not a '{cfg.tokenizer.preset}' VAE ({'; '.join(diff)}): "
                          "set tokenizer.preset to the folder's architecture or use matching weights")


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
