"""`repae export-vae`: write the E2E-VAE of a run in diffusers format with its latent statistics.

The statistics come from the EMA normaliser (spec-repae.md 7.1: bias = EMA running mean,
scale = 1/sqrt(EMA running var)); the VAE weights are the live ones (REPA-E keeps no VAE EMA).
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
    tok.vae.load_state_dict(models["vae"])
    tok.normalizer.load_state_dict(models["ema.normalizer" if ema_stats else "normalizer"])
    tok.save_pretrained(out_dir)
    if "disc" in models:
        from repae.utils.io import save_safetensors

        save_safetensors(Path(out_dir) / "discriminator.safetensors", models["disc"])
    return Path(out_dir)
