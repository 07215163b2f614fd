"""Representation autoencoders in the trainer (RAE, Zheng et al. 2025; docs/tokenizers.md): the
``tokenizer.preset=rae`` side of :mod:`repae.training.builders` — record the architecture, check what an
RAE allows, build it for a recipe.

The tokenizer itself is :mod:`repae.tokenizer.rae`; the registry side (which encoder, its weights) is
:mod:`repae.encoders.rae`.
"""

from __future__ import annotations

from repae.config import RunConfig
from repae.errors import ConfigError
from repae.training.recipes import Recipe

__all__ = ["resolve_rae_arch", "validate_rae", "build_rae"]


def resolve_rae_arch(cfg: RunConfig) -> None:
    """``tokenizer.preset=rae``: record the RAE architecture of ``tokenizer.rae_encoder`` / ``rae_decoder`` at
    ``data.resolution`` in ``tokenizer.arch`` (in place; idempotent), so ``config.json`` and every checkpoint
    rebuild it. An ``arch`` already recorded (a resumed run, a run's config) must be that architecture."""
    from repae.tokenizer.registry import RAE_PRESET

    tc = cfg.tokenizer
    if tc.preset != RAE_PRESET:
        return
    from repae.encoders.rae import rae_spec
    from repae.tokenizer.rae import RAESpec

    spec = rae_spec(tc.rae_encoder, resolution=cfg.data.resolution, decoder=tc.rae_decoder)
    if isinstance(tc.arch, dict):
        diff = RAESpec.from_dict(tc.arch).differences(spec)
        if diff:
            raise ConfigError(f"tokenizer.arch is another RAE than tokenizer.rae_encoder / tokenizer.rae_decoder at "
                              f"data.resolution ({'; '.join(diff)}): drop tokenizer.arch or set the keys it was made with")
    tc.arch = spec.to_dict()


def validate_rae(cfg: RunConfig, recipe: Recipe) -> None:
    """What an RAE tokenizer (``tokenizer.preset=rae``) allows: ``rae-decoder`` (its decoder, with L_REG
    without KL) or a generator on its frozen latents (``ldm`` / ``repa`` / ``vanilla``); ``rae-decoder`` needs one."""
    from repae.losses.tokenizer_reg import is_active
    from repae.tokenizer.registry import RAE_PRESET
    from repae.training.recipes import RAE_GENERATOR_RECIPES

    name = cfg.train.recipe
    if cfg.tokenizer.preset != RAE_PRESET:
        if name == "rae-decoder":
            raise ConfigError("train.recipe=rae-decoder trains the decoder of an RAE: set tokenizer.preset=rae")
        return
    if name != "rae-decoder" and name not in RAE_GENERATOR_RECIPES:
        raise ConfigError(f"train.recipe={name} cannot train an RAE (its encoder is frozen): use rae-decoder for its "
                          f"decoder, or {', '.join(RAE_GENERATOR_RECIPES)} for a generator on its latents")
    if recipe.l_reg and cfg.lreg.kl_weight != 0:
        raise ConfigError(f"lreg.kl_weight={cfg.lreg.kl_weight}: an RAE latent has no posterior to regularise; "
                          "set lreg.kl_weight=0")
    if cfg.train.vae_checkpointing:
        raise ConfigError("train.vae_checkpointing=true: the RAE decoder has no gradient checkpointing here; "
                          "set train.vae_checkpointing=false")
    if is_active(cfg.tokreg):
        raise ConfigError("the tokenizer regularisers (tokreg.*) act on a VAE encoder; an RAE's is frozen: set "
                          "their weights / probabilities to 0")


def build_rae(cfg: RunConfig, recipe: Recipe, weights) -> tuple:
    """``(RAE tokenizer, has statistics)``: from an RAE folder in ``tokenizer.weights`` (its architecture must
    be ``tokenizer.arch``), else the registry encoder with a random decoder (``rae-decoder`` from scratch).
    Augmentation noise on when the recipe trains the decoder; seeded by ``train.seed``."""
    from repae.encoders.rae import build_rae_tokenizer, load_rae_tokenizer
    from repae.tokenizer.rae import RAESpec, is_rae_folder, read_rae_spec

    spec = RAESpec.from_dict(cfg.tokenizer.arch)
    if weights is not None:
        if not is_rae_folder(weights):
            raise ConfigError(f"tokenizer.weights={cfg.tokenizer.weights} is no RAE folder (what `repae export-vae` "
                              "writes for an rae-decoder run); give one, or leave it unset to train a decoder")
        diff = read_rae_spec(weights).differences(spec)
        if diff:
            raise ConfigError(f"tokenizer.weights={cfg.tokenizer.weights} is another RAE than tokenizer.rae_encoder / "
                              f"tokenizer.rae_decoder ({'; '.join(diff)}): set them to the folder's")
        tok = load_rae_tokenizer(weights)
        tok.normalizer.momentum = cfg.tokenizer.bn_momentum
        tok.vae.noise.tau = cfg.tokenizer.rae_noise_tau
    else:
        tok = build_rae_tokenizer(spec, encoder_weights=cfg.tokenizer.rae_encoder_weights,
                                  momentum=cfg.tokenizer.bn_momentum, noise_tau=cfg.tokenizer.rae_noise_tau)
    tok.noise_augment = recipe.train_vae
    tok.vae.noise.seed = cfg.train.seed
    return tok, tok.stats_source is not None
