"""`repae export-vae`: write the E2E-VAE of a run in diffusers format with its latent statistics.

The statistics come from the EMA normaliser (spec-repae.md 7.1: bias = EMA running mean,
scale = 1/sqrt(EMA running var)); the VAE weights are the live ones (REPA-E keeps no VAE EMA),
except for a `vae`-recipe run with ``train.vae_ema=true``, whose EMA tokenizer is exported. A VF
projection (VA-VAE, ``tokreg.vf_weight > 0``) is written next to it as ``tokreg.safetensors``.

The output folder loads with ``Tokenizer.from_pretrained`` and with the VAE's own diffusers class
(``diffusers.AutoencoderKL`` / ``AutoencoderKLFlux2`` / ``AutoencoderKLQwenImage.from_pretrained``), the
statistics written where that family's pipelines read them (docs/tokenizers.md); ``REPAE_EXPORT.md``
says what was tuned and where the statistics went.
"""

from __future__ import annotations

from pathlib import Path

NOTE_NAME = "REPAE_EXPORT.md"


def export_vae(run_or_checkpoint: str | Path, out_dir: str | Path, *, ema_stats: bool = True) -> Path:
    from repae.config import config_from_saved
    from repae.training.builders import build_tokenizer_arch
    from repae.training.checkpoint import read_checkpoint
    from repae.utils.io import check_output_path

    check_output_path(out_dir, folder=True, what="out_dir")
    models, _, state = read_checkpoint(run_or_checkpoint)
    cfg = config_from_saved(state["config"])
    tok = build_tokenizer_arch(cfg)
    ema_vae = ema_stats and state.get("recipe") == "vae" and "ema.model" in models  # tokenizer EMA
    tok.vae.load_state_dict(models["ema.model" if ema_vae else "vae"])
    tok.normalizer.load_state_dict(models["ema.normalizer" if ema_stats else "normalizer"])
    tok.save_pretrained(out_dir)
    from repae.utils.io import atomic_path, save_safetensors

    if "disc" in models:
        save_safetensors(Path(out_dir) / "discriminator.safetensors", models["disc"])
    if "tokreg" in models:
        save_safetensors(Path(out_dir) / "tokreg.safetensors", models["tokreg"])
    with atomic_path(Path(out_dir) / NOTE_NAME) as tmp:
        tmp.write_text(export_note(tok, cfg, state, run_or_checkpoint, ema_vae=ema_vae, ema_stats=ema_stats))
    return Path(out_dir)


def export_note(tok, cfg, state: dict, source, *, ema_vae: bool, ema_stats: bool) -> str:
    """The short ``REPAE_EXPORT.md``: what was tuned, from what, and where the latent statistics went."""
    start = cfg.tokenizer.weights or f"random weights ({cfg.tokenizer.preset})"
    stats = "EMA of the latent normaliser" if ema_stats else "the live latent normaliser"
    load = (f"- diffusers class: `{tok.class_name}` (load with `diffusers.{tok.class_name}.from_pretrained(<this "
            "folder>)` or `repae.Tokenizer.from_pretrained(<this folder>)`)")
    if getattr(tok, "preset", None) == "rae":  # repae's RAE folder: the decoder is diffusers' RAEDecoder
        load = ("- representation autoencoder (RAE; frozen encoder `" + tok.spec.encoder + "`, decoder: diffusers' "
                "RAEDecoder, AutoencoderRAE's decoder.* keys): load with "
                "`repae.encoders.rae.load_rae_tokenizer(<this folder>)`")
    lines = [
        "# E2E-VAE exported by repae",
        "",
        load,
        f"- source: `{source}`, step {state.get('step')}, recipe `{state.get('recipe')}`",
        f"- started from: `{start}` (tokenizer.preset `{cfg.tokenizer.preset}`)",
        f"- weights: {'the tokenizer EMA' if ema_vae else 'the trained VAE'} (every tensor may have changed)",
        f"- latent: {tok.latent_channels} channels, downsample factor {tok.downsample_factor}",
        f"- latent statistics ({stats}) written to:",
        *[f"  - {line}" for line in tok.export_fields()],
        "  - latent_stats.json: per-channel mean, std and exact running variance (repae reloads them bit-exactly)",
        "",
    ]
    return "\n".join(lines)
