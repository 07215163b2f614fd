"""`repae export-vae`: write the E2E-VAE of a run in diffusers format with its latent statistics.

The statistics come from the EMA normaliser (spec-repae.md 7.1: bias = EMA running mean,
scale = 1/sqrt(EMA running var)); the VAE weights are the live ones (REPA-E keeps no VAE EMA),
except for a `vae`-recipe run with ``tokreg.ema=true``, whose EMA tokenizer is exported. A VF
projection (VA-VAE, ``tokreg.vf_weight > 0``) is written next to it as ``tokreg.safetensors``.
The output folder loads with ``Tokenizer.from_pretrained`` and with
``diffusers.AutoencoderKL.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path


def export_vae(run_or_checkpoint: str | Path, out_dir: str | Path, *, ema_stats: bool = True) -> Path:
    from repae.config import from_dict
    from repae.training.builders import build_tokenizer_arch
    from repae.training.checkpoint import read_checkpoint

    models, _, state = read_checkpoint(run_or_checkpoint)
    cfg = from_dict(state["config"])
    tok = build_tokenizer_arch(cfg)
    ema_vae = ema_stats and state.get("recipe") == "vae" and "ema.model" in models  # tokenizer EMA
    tok.vae.load_state_dict(models["ema.model" if ema_vae else "vae"])
    tok.normalizer.load_state_dict(models["ema.normalizer" if ema_stats else "normalizer"])
    tok.save_pretrained(out_dir)
    from repae.utils.io import save_safetensors

    if "disc" in models:
        save_safetensors(Path(out_dir) / "discriminator.safetensors", models["disc"])
    if "tokreg" in models:
        save_safetensors(Path(out_dir) / "tokreg.safetensors", models["tokreg"])
    return Path(out_dir)
