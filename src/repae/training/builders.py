"""Build and validate everything a run needs from a :class:`~repae.config.RunConfig`.

``validate_config`` and the builders raise :class:`~repae.errors.ConfigError` /
:class:`~repae.errors.MissingWeightsError` before any training step, with one line naming the fix.
``validate_config`` also resolves the settings a config may leave to the model
(:func:`resolve_config`: ``sample.sampler=auto``, ``tokenizer.preset=auto``), so the saved ``config.json``
holds what was used.
"""

from __future__ import annotations

import logging
from pathlib import Path

from repae.config import RunConfig, resolve_channels_last
from repae.errors import ConfigError
from repae.losses.tokenizer_reg import (
    LPIPS_MIN_SIDE,
    TokenizerRegularizer,
    check_grid,
    check_values,
    eq_numerators,
    is_active,
    matched_encoder_resolution,
    patchgan_min_side,
)
from repae.training.rae import build_rae, resolve_rae_arch, validate_rae
from repae.training.recipes import RECIPES, Recipe, get_recipe

log = logging.getLogger("repae.train")


def validate_config(cfg: RunConfig) -> Recipe:
    """Every check of a run config, in one pass, before anything is built (no weights are read).

    In order: the preflight (value ranges, the latent cache's VAE, a ``tokenizer.weights`` folder
    against ``tokenizer.preset``: :func:`repae.training.preflight.preflight`), the recipe, the
    tokenizer and generator architectures, the sampler, alignment and batch keys, then the
    tokenizer regularisers (:func:`validate_tokreg`). Each failure is one line naming the fix."""
    from repae.models import MODEL_PRESETS
    from repae.tokenizer.registry import tokenizer_arch
    from repae.training.preflight import preflight

    preflight(cfg)
    recipe = get_recipe(cfg.train.recipe)
    resolve_channels_last(cfg.train.channels_last, "cpu")  # true / false / auto, else one line naming them
    resolve_rae_arch(cfg)  # tokenizer.preset=rae: its architecture from the encoder registry
    validate_rae(cfg, recipe)
    vae_cfg = tokenizer_arch(cfg.tokenizer)  # a preset, or (preset=auto) the tokenizer.weights folder's
    if cfg.train.vae_checkpointing and not _supports_checkpointing(vae_cfg):
        raise ConfigError(f"train.vae_checkpointing=true: diffusers' {vae_cfg.class_name} has no gradient "
                          "checkpointing; set train.vae_checkpointing=false")
    if cfg.model.preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model.preset '{cfg.model.preset}'; choose one of: {', '.join(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[cfg.model.preset]
    resolve_config(cfg)  # sample.sampler=auto -> the generator family's sampler
    check_sampler_matches_model(cfg.model.preset, cfg.sample.sampler, "sample.sampler")
    patch = preset["patch_size"] if recipe.build_sit else 1  # `vae`: no SiT
    factor = vae_cfg.downsample_factor * patch
    if cfg.data.resolution % factor:
        raise ConfigError(
            f"data.resolution={cfg.data.resolution} is not divisible by VAE factor x patch = "
            f"{vae_cfg.downsample_factor} x {patch}; pick a resolution that is a multiple of {factor}"
        )
    needs_align = recipe.sit_align or recipe.vae_align
    if recipe.build_sit:  # align.depth (its encoder_depth), patch and label-dropout checks live in the model's config
        from repae.models import model_config

        mc = model_config(cfg.model.preset, input_size=cfg.data.resolution // vae_cfg.downsample_factor,
                          in_channels=vae_cfg.latent_channels, num_classes=cfg.model.num_classes,
                          encoder_depth=cfg.align.depth, class_dropout_prob=cfg.model.class_dropout_prob,
                          **head_kwargs(cfg))
        check_generator_width(cfg, mc)
        time_shift_of(cfg, mc)  # a bad diffusion.time_shift, or one on a DDPM model: one line
    if needs_align and not cfg.align.encoders:
        raise ConfigError(f"recipe '{cfg.train.recipe}' aligns to an encoder: set align.encoders (e.g. [repae-vit-t4])")
    if cfg.align.encoder_weights and len(cfg.align.encoder_weights) != len(cfg.align.encoders):
        raise ConfigError("align.encoder_weights must list one path (or null) per entry of align.encoders")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError("train.batch_size must be divisible by train.grad_accum")
    if recipe.cached_latents and not cfg.data.latents:
        raise ConfigError("recipe 'ldm' trains on cached latents: set data.latents (made by `repae cache-latents`)")
    validate_tokreg(cfg, recipe)  # SE / EQ-VAE / VF keys (tokreg.*)
    return recipe


def _supports_checkpointing(arch) -> bool:
    from repae.tokenizer.families import DiffusersVAESpec

    return not isinstance(arch, DiffusersVAESpec) or arch.family.supports_gradient_checkpointing()


def build_tokenizer_arch(cfg: RunConfig):
    """The tokenizer architecture with random weights (checkpoints fill it)."""
    from repae.tokenizer.registry import AUTO_PRESET, RAE_PRESET, tokenizer_arch
    from repae.tokenizer.tokenizer import Tokenizer

    if cfg.tokenizer.preset == RAE_PRESET:  # encoder and decoder weights both come from the checkpoint
        from repae.encoders.rae import build_rae_tokenizer

        resolve_rae_arch(cfg)
        return build_rae_tokenizer(tokenizer_arch(cfg.tokenizer), load_weights=False,
                                   momentum=cfg.tokenizer.bn_momentum, noise_tau=cfg.tokenizer.rae_noise_tau)

    if cfg.tokenizer.preset != AUTO_PRESET:
        return Tokenizer.from_preset(cfg.tokenizer.preset, momentum=cfg.tokenizer.bn_momentum)
    return Tokenizer(tokenizer_arch(cfg.tokenizer), momentum=cfg.tokenizer.bn_momentum, preset=AUTO_PRESET)


def build_tokenizer(cfg: RunConfig, recipe: Recipe):
    """Tokenizer with weights (unless the recipe starts from scratch) and normaliser statistics.

    A diffusers folder of a non-LDM architecture (FLUX.1, SD3.5, FLUX.2, Qwen-Image, ...) loads with
    ``Tokenizer.from_pretrained``, whose statistics come from ``latent_stats.json`` or, without it, from what
    the folder carries (logged); an LDM-design folder needs ``latent_stats.json`` for that, as before.
    """
    from repae.tokenizer.families import DiffusersVAESpec
    from repae.tokenizer.registry import AUTO_PRESET, RAE_PRESET, resolve_tokenizer_weights, tokenizer_arch
    from repae.tokenizer.tokenizer import Tokenizer

    weights = None if recipe.vae_random_init else resolve_tokenizer_weights(cfg.tokenizer.weights)
    folder = Path(weights) if weights and Path(weights).is_dir() else None
    diffusers_folder = folder is not None and isinstance(tokenizer_arch(cfg.tokenizer), DiffusersVAESpec)
    if cfg.tokenizer.preset == RAE_PRESET:
        tok, has_stats = build_rae(cfg, recipe, weights)
    elif folder is not None and (diffusers_folder or (folder / "latent_stats.json").exists()):
        tok = Tokenizer.from_pretrained(folder, require_stats=False)
        tok.normalizer.momentum = cfg.tokenizer.bn_momentum
        has_stats = tok.stats_source is not None
    elif weights is None and cfg.tokenizer.preset == AUTO_PRESET:
        tok, has_stats = build_tokenizer_arch(cfg), False
    else:
        tok = Tokenizer.from_preset(cfg.tokenizer.preset, weights=weights, momentum=cfg.tokenizer.bn_momentum)
        has_stats = False
    if cfg.tokenizer.stats:
        from repae.tokenizer.stats import load_stats  # repae JSON, REPA-E and VA-VAE .pt layouts

        mean, std = load_stats(cfg.tokenizer.stats)
        if mean.numel() != tok.latent_channels:
            raise ConfigError(f"tokenizer.stats={cfg.tokenizer.stats} has {mean.numel()} channels but the tokenizer "
                              f"has {tok.latent_channels}: give the statistics of the same VAE")
        tok.normalizer.set_statistics(mean, std)
        log.info("latent statistics from tokenizer.stats=%s%s", cfg.tokenizer.stats,
                 f" (replacing {tok.stats_source})" if tok.stats_source else "")
        has_stats = True
    return tok, has_stats


def encoder_weights(cfg: RunConfig) -> list[str | None]:
    return list(cfg.align.encoder_weights) or [None] * len(cfg.align.encoders)


def build_encoders(cfg: RunConfig, device, *, random_init: bool = False) -> list:
    """Frozen alignment encoders; ``random_init`` builds the real architectures with random
    weights (benchmarks only — the features are meaningless)."""
    from repae.encoders import build_encoder, load_encoder

    if random_init:
        return [build_encoder(name, resolution=cfg.data.resolution, device=device) for name in cfg.align.encoders]
    return [
        load_encoder(name, weights=w, resolution=cfg.data.resolution, device=device)
        for name, w in zip(cfg.align.encoders, encoder_weights(cfg))
    ]


def encoder_dims(cfg: RunConfig) -> tuple[int, ...]:
    from repae.encoders import encoder_spec

    return tuple(encoder_spec(name).embed_dim for name in cfg.align.encoders)


def build_sit_for(cfg: RunConfig, tokenizer, *, z_dims: tuple[int, ...]):
    from repae.models import build_model

    channels, h, _ = tokenizer.latent_shape(cfg.data.resolution)
    return build_model(
        cfg.model.preset,
        input_size=h,
        in_channels=channels,
        num_classes=cfg.model.num_classes,
        z_dims=z_dims,
        encoder_depth=cfg.align.depth,
        class_dropout_prob=cfg.model.class_dropout_prob,
        qk_norm=cfg.model.qk_norm,
        learn_pos_embed=cfg.model.learn_pos_embed,
        projector=cfg.align.projector,
        **({"projector_dim": cfg.model.projector_dim} if cfg.model.projector_dim else {}),
        **head_kwargs(cfg),
    )


def head_kwargs(cfg: RunConfig) -> dict:
    """The DiT^DH head of ``model.dh_depth`` / ``dh_width`` / ``dh_heads`` as generator-config fields (nothing when ``model.dh_depth=0``, so the
    configs of runs without a head are unchanged)."""
    if not cfg.model.dh_depth:
        return {}
    return {"head_depth": cfg.model.dh_depth, "head_hidden_size": cfg.model.dh_width,
            "head_num_heads": cfg.model.dh_heads}


def check_generator_width(cfg: RunConfig, model_cfg) -> None:
    """RAE sec. 4.1: the layers that make the prediction (the DiT^DH head if any, else the generator) must be at
    least as wide as one latent token, ``C * p^2`` values; ``model.check_width=false`` lets a run break it."""
    token = model_cfg.in_channels * model_cfg.patch_size ** 2
    if cfg.model.check_width and model_cfg.width < token:
        raise ConfigError(f"{cfg.model.preset} is {model_cfg.width} wide but a latent token has {token} values (C x "
                          f"patch^2): a generator narrower than its tokens cannot fit them (RAE sec. 4.1); use a wider "
                          "model, a DiT^DH head (model.dh_depth=2), or model.check_width=false")


def time_shift_of(cfg: RunConfig, model) -> float:
    """``diffusion.time_shift`` as the factor alpha for ``model`` (a generator or its config): RAE's dimension
    shift uses its latent ``C x h x w``; 1 without a generator. ConfigError for a shift on a DDPM model (DiT)."""
    from repae.diffusion.shift import resolve_time_shift

    if model is None:
        return 1.0
    mc = getattr(model, "config", model)
    alpha = resolve_time_shift(cfg.diffusion.time_shift, (mc.in_channels, mc.input_size, mc.input_size),
                               cfg.diffusion.time_shift_base)
    if alpha != 1.0:
        from repae.models import preset_objective_kind

        if preset_objective_kind(cfg.model.preset) == "ddpm":
            raise ConfigError(f"diffusion.time_shift={cfg.diffusion.time_shift} shifts a flow schedule; "
                              f"{cfg.model.preset} is a DDPM model: set diffusion.time_shift=none")
    return alpha


#: ``sample.sampler`` value (the default) that leaves the sampler to the generator family.
AUTO_SAMPLER = "auto"
#: The samplers of each objective kind (:func:`repae.models.objective_kind`); the first is what
#: ``auto`` picks. DDPM networks (DiT) get DDIM (eta 0): the deterministic counterpart of the flow
#: networks' Euler ODE, good at the default 50 steps (DDIM sec. 5), where ancestral DDPM needs
#: about 250 (DiT's own setting) to reach its quality.
SAMPLERS: dict[str, tuple[str, ...]] = {"flow": ("euler", "heun", "euler-maruyama"), "ddpm": ("ddim", "ddpm")}


def default_sampler(kind: str) -> str:
    """The sampler ``auto`` stands for with an objective kind (``"flow"`` -> euler, ``"ddpm"`` -> ddim)."""
    return SAMPLERS[kind][0]


def resolve_sampler(preset: str, sampler: str | None) -> str:
    """``sampler`` unless it is ``auto`` (or unset): then the sampler of generator preset ``preset``."""
    if sampler in (None, AUTO_SAMPLER):
        from repae.models import preset_objective_kind

        return default_sampler(preset_objective_kind(preset))
    return sampler


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Replace, in place, the settings left to the model by what it gets: ``sample.sampler=auto``
    -> the family's sampler (:func:`default_sampler`). Idempotent; returns ``cfg``."""
    from repae.models import MODEL_PRESETS

    if cfg.model.preset in MODEL_PRESETS:  # an unknown preset is validate_config's one-line error
        cfg.sample.sampler = resolve_sampler(cfg.model.preset, cfg.sample.sampler)
    resolve_cached_latents_vae(cfg)
    resolve_rae_arch(cfg)
    from repae.tokenizer.registry import resolve_tokenizer_arch

    resolve_tokenizer_arch(cfg.tokenizer)  # tokenizer.preset=auto -> record the folder's architecture
    return cfg


def resolve_cached_latents_vae(cfg: RunConfig) -> RunConfig:
    """The VAE of a recipe that trains on cached latents (``ldm``) is the one that made ``data.latents``.

    The cache's ``meta.json`` records it (``repae cache-latents``: ``vae``, ``vae_preset``). With
    ``tokenizer.weights`` unset, set it (and ``tokenizer.preset``, when recorded) from there, in
    place; a ``tokenizer.weights`` naming another VAE is a ConfigError, since latents decoded by
    another decoder would be silently wrong. Other recipes, or no ``data.latents``: unchanged.
    Idempotent; returns ``cfg``. The one place that maps a latent cache to its tokenizer.
    """
    from repae.data.latent_cache import read_cache_meta

    recipe = RECIPES.get(cfg.train.recipe)  # an unknown recipe is validate_config's one-line error
    if recipe is None or not recipe.cached_latents or not cfg.data.latents:
        return cfg
    from repae.tokenizer.registry import resolve_tokenizer_weights, shipped_preset

    latents = cfg.data.latents
    meta = read_cache_meta(latents)
    vae = meta.get("vae")
    if cfg.tokenizer.weights:
        if vae and not _same_vae(cfg.tokenizer.weights, vae):
            raise ConfigError(f"tokenizer.weights={cfg.tokenizer.weights} is not the VAE that made "
                              f"data.latents={latents} ({vae}): set tokenizer.weights=null (also when the preset sets it, "
                              "as fmnist does; the cache's VAE is then used) or cache again with it")
        return cfg
    if not vae:
        raise ConfigError(f"data.latents={latents}: meta.json does not name the VAE that made it; "
                          "set tokenizer.weights to that VAE")
    if not Path(resolve_tokenizer_weights(vae)).exists():
        raise ConfigError(f"data.latents={latents} was made by --vae {vae}, which is no VAE folder or weights file "
                          "here (moved? a preset name, i.e. random weights?): set tokenizer.weights to that VAE")
    cfg.tokenizer.weights = vae
    preset = meta.get("vae_preset") or shipped_preset(vae)
    if preset and preset != cfg.tokenizer.preset:
        log.info("tokenizer.preset=%s (the VAE of data.latents=%s) replaces %s", preset, latents, cfg.tokenizer.preset)
        cfg.tokenizer.preset = preset
    return cfg


def _same_vae(a: str, b: str) -> bool:
    """Whether ``tokenizer.weights`` ``a`` and the cache's recorded VAE ``b`` (shipped names or paths) are
    the same VAE. A path that does not exist here cannot be checked and counts as the same: a missing
    ``a`` is the loader's one-line error, a missing ``b`` (a relative path recorded elsewhere) a warning."""
    from repae.tokenizer.registry import resolve_tokenizer_weights

    pa, pb = Path(resolve_tokenizer_weights(a)), Path(resolve_tokenizer_weights(b))
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    if pa.exists():
        log.warning("cannot check tokenizer.weights=%s against the latent cache's VAE %s: not found here", a, b)
    return True


def check_sampler_matches_model(preset: str, sampler: str, where: str) -> None:
    """DiT is an eps/DDPM network (samplers ddim, ddpm); SiT and LightningDiT are flow networks
    (euler, heun, euler-maruyama). A mismatch is one line naming the key, before any work."""
    from repae.models import preset_objective_kind

    kind = preset_objective_kind(preset)
    allowed = SAMPLERS[kind]
    if sampler not in allowed:
        raise ConfigError(f"{where}={sampler!r} cannot sample {preset} ({'a DDPM' if kind == 'ddpm' else 'a flow'} "
                          f"model); use one of: {', '.join(allowed)} (or leave it unset: {default_sampler(kind)})")


def build_objective(cfg: RunConfig, model):
    """The objective that trains ``model``: DDPM (eps + learned Sigma, 1000 steps) for DiT, flow
    matching on ``diffusion.path`` / ``diffusion.time_sampler`` for SiT and LightningDiT. Both have
    the :class:`~repae.diffusion.objective.DiffusionObjective` interface."""
    from repae.diffusion.gaussian import DDPMObjective
    from repae.diffusion.objective import FlowMatching
    from repae.diffusion.paths import get_path
    from repae.diffusion.timesteps import get_time_sampler
    from repae.models import objective_kind

    if model is not None and objective_kind(model) == "ddpm":
        return DDPMObjective(learn_sigma=model.config.learn_sigma)
    sampler = get_time_sampler(cfg.diffusion.time_sampler, cfg.diffusion.path)
    alpha = time_shift_of(cfg, model)
    if alpha != 1.0:  # RAE's dimension-dependent shift of the training times (repae.diffusion.shift)
        from repae.diffusion.shift import ShiftedTime

        sampler = ShiftedTime(sampler, alpha)
    return FlowMatching(get_path(cfg.diffusion.path), sampler)


def check_token_counts(cfg: RunConfig, sit, encoders) -> None:
    tokens = sit.num_tokens if hasattr(sit, "num_tokens") else (sit.config.input_size // sit.config.patch_size) ** 2
    for name, enc in zip(cfg.align.encoders, encoders):
        n = enc.num_tokens(cfg.data.resolution)
        if n != tokens:
            raise ConfigError(
                f"encoder '{name}' gives {n} tokens at {cfg.data.resolution}px but {cfg.model.preset} has {tokens}; "
                "choose the SiT patch size (or VAE) so the token grids match"
            )


def init_generator_weights(cfg: RunConfig, model) -> str | None:
    """``train.init_from``: start the generator from a ``repae`` run / checkpoint folder (its EMA
    weights) or a published checkpoint file (REPA-E / REPA / SiT / DiT / LightningDiT layouts, strict
    key matching, converted to ``repae``'s time convention), also as a Hugging Face hub id in the local cache
    (``owner/name`` or ``owner/name/path/in/repo.pt``). Resuming a run overrides it."""
    src = cfg.train.init_from
    if not src:
        return None
    from repae.interop.official import resolve_official_file

    path = Path(resolve_official_file(src))  # a hub id (owner/name[/file.pt]) -> its file in the local cache
    if path.is_dir():
        from repae.training.checkpoint import read_checkpoint

        models, _, _ = read_checkpoint(path)
        if "ema.model" not in models:
            raise ConfigError(f"train.init_from={src} holds no generator (recipe without one?); pass a run that has one")
        from repae.models.official import check_state_dict

        check_state_dict(models["ema.model"], model.state_dict(), what=f"train.init_from={src}")
        model.load_state_dict(models["ema.model"], strict=True)
        return f"initialised the generator from the EMA weights of {src}"
    if not path.is_file():
        raise ConfigError(f"train.init_from={src} does not exist: give a repae run folder or a checkpoint file")
    from repae.models.official import load_official_weights

    info = load_official_weights(model, path)
    return f"initialised the generator from {src} ({info.layout} layout, entry '{info.entry}')"


# ---------------------------------------------------------------------------------------------
# Tokenizer regularisers (SE / EQ-VAE / VF): checks and builders from the run config; the
# losses themselves are in repae.losses.tokenizer_reg
# ---------------------------------------------------------------------------------------------


def validate_tokreg(cfg: RunConfig, recipe: Recipe) -> None:
    """Every tokreg check that needs no weights (called by ``validate_config`` before building)."""
    from repae.encoders import encoder_spec
    from repae.tokenizer.registry import tokenizer_arch

    tc = cfg.tokreg
    check_values(se_weight=tc.se_weight, se_factors=tc.se_factors, se_terms=tc.se_terms, eq_prob=tc.eq_prob,
                 eq_lowres_prob=tc.eq_lowres_prob, eq_min_scale=tc.eq_min_scale, vf_weight=tc.vf_weight,
                 vf_cos_margin=tc.vf_cos_margin, vf_distmat_margin=tc.vf_distmat_margin,
                 vf_cos_weight=tc.vf_cos_weight, vf_distmat_weight=tc.vf_distmat_weight, vf_pixels=tc.vf_pixels)
    if cfg.train.vae_ema and cfg.train.recipe != "vae":
        raise ConfigError(f"train.vae_ema (tokenizer EMA) applies to train.recipe=vae only, not '{cfg.train.recipe}'; "
                          "set train.vae_ema=false or train.recipe=vae")
    if not is_active(tc):
        return
    if not (recipe.train_vae and recipe.l_reg):
        raise ConfigError(f"tokenizer regularisers need a recipe that trains the VAE with L_REG, not "
                          f"'{cfg.train.recipe}'; use train.recipe=vae or repa-e, or set the tokreg weights to 0")
    f = tokenizer_arch(cfg.tokenizer).downsample_factor
    side = cfg.data.resolution // f
    den = tc.eq_scale_den or side
    check_grid((side, side), se_factors=tc.se_factors if tc.se_weight > 0 else (),
               eq_scale_den=den if tc.eq_prob > 0 else None)
    # every image a loss term sees must be large enough for the discriminator / LPIPS; the
    # discriminator phase scores the EQ pair whatever lreg.disc_weight is
    if tc.eq_prob > 0:
        ks = eq_numerators(den, tc.eq_min_scale)
        if not ks:
            raise ConfigError(f"tokreg.eq_min_scale={tc.eq_min_scale} leaves no scale k/{den} < 1; lower it")
        smallest = side * ks[0] // den * f
        _check_side(smallest, "tokreg.eq_min_scale", "raise tokreg.eq_min_scale", gan=True,
                    lpips=cfg.lreg.perceptual == "lpips")
    if tc.se_weight > 0:
        smallest = cfg.data.resolution // max(tc.se_factors)
        _check_side(smallest, "tokreg.se_factors", "use smaller tokreg.se_factors or drop gan from tokreg.se_terms",
                    gan=cfg.lreg.disc_weight > 0 and "gan" in tc.se_terms,
                    lpips=cfg.lreg.perceptual == "lpips" and "perceptual" in tc.se_terms)
    if tc.vf_weight > 0:
        encoder_spec(tc.vf_encoder)  # unknown name -> ConfigError listing the choices
        matched_encoder_resolution(tc.vf_encoder, side, cfg.data.resolution)


def _check_side(side: int, key: str, fix: str, *, gan: bool, lpips: bool) -> None:
    if gan and side < patchgan_min_side():
        raise ConfigError(f"{key} makes {side}px images but the PatchGAN needs >= {patchgan_min_side()}px; {fix}")
    if lpips and side < LPIPS_MIN_SIDE:
        raise ConfigError(f"{key} makes {side}px images but LPIPS needs >= {LPIPS_MIN_SIDE}px; {fix}")


def build_tokreg(cfg: RunConfig, latent_shape: tuple[int, int, int]) -> TokenizerRegularizer | None:
    """The run's :class:`TokenizerRegularizer`, or None when every regulariser is off."""
    tc = cfg.tokreg
    if not is_active(tc):
        return None
    vf_dim = None
    if tc.vf_weight > 0:
        from repae.encoders import encoder_spec

        vf_dim = encoder_spec(tc.vf_encoder).embed_dim
    c, h, w = latent_shape
    return TokenizerRegularizer(
        latent_channels=c, latent_hw=(h, w), se_weight=tc.se_weight, se_factors=tuple(tc.se_factors),
        se_terms=tuple(tc.se_terms), eq_prob=tc.eq_prob, eq_lowres_prob=tc.eq_lowres_prob,
        eq_scale_den=tc.eq_scale_den or h, eq_min_scale=tc.eq_min_scale, eq_rotate=tc.eq_rotate,
        eq_anisotropic=tc.eq_anisotropic, vf_weight=tc.vf_weight, vf_dim=vf_dim, vf_cos_margin=tc.vf_cos_margin,
        vf_distmat_margin=tc.vf_distmat_margin, vf_cos_weight=tc.vf_cos_weight,
        vf_distmat_weight=tc.vf_distmat_weight, vf_adaptive=tc.vf_adaptive, vf_pixels=tc.vf_pixels,
    )


def build_vf_encoder(cfg: RunConfig, latent_side: int, device, *, random_init: bool = False):
    """The frozen foundation model of the VF loss, built so its patch grid is the latent grid."""
    from repae.encoders import build_encoder, load_encoder

    tc = cfg.tokreg
    r = matched_encoder_resolution(tc.vf_encoder, latent_side, cfg.data.resolution)
    if random_init:
        return build_encoder(tc.vf_encoder, resolution=r, device=device)
    return load_encoder(tc.vf_encoder, weights=tc.vf_encoder_weights, resolution=r, device=device)
