"""``repae export``: write a run in the official layouts, for the REPA-E / SiT / DiT / LightningDiT code or diffusers.

::

    repae export runs/repae-xl2 --out exps/repae-xl2                     # --format official (default)
    repae export runs/repae-xl2 --out exps/repae-xl2 --format diffusers  # E2E-VAE as a diffusers folder

Writes ``OUT/checkpoints/{step:07d}.pt`` (``{model, ema, vae, steps}``: live and EMA SiT, each with the
latent BatchNorm as ``bn.*``, and the VAE in LDM layout) plus ``OUT/args.json`` (what REPA-E's
``generate.py --exp-path OUT --train-steps STEP`` reads), and the E2E-VAE either as
``OUT/e2e-vae/e2e-vae.pt`` + ``e2e-vae-latents-stats.pt`` (``--format official``, what
``save_vae_weights.py`` writes) or as the diffusers ``AutoencoderKL`` folder ``OUT/e2e-vae-hf/``
(``--format diffusers``). The written checkpoint loads back with ``repae sample --checkpoint
OUT/checkpoints/STEP.pt --model PRESET``. See docs/official-checkpoints.md.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (uses its latest checkpoint) or a step-XXXXXXX checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, args.json, the E2E-VAE)")
    parser.add_argument("--format", choices=["official", "diffusers"], default="official",
                        help="E2E-VAE layout: official (LDM .pt + -latents-stats.pt) or diffusers (AutoencoderKL "
                        "folder); the generator is always written in its official layout (default official)")
    parser.add_argument("--vae-name", default="e2e-vae", help="name of the exported VAE files / folder (default e2e-vae)")


def run(args: argparse.Namespace) -> int:
    from repae.sampling.official import export_official
    from repae.utils.io import check_output_path

    check_output_path(args.out, folder=True, what="--out")
    written = export_official(args.run, args.out, vae_format=args.format, vae_name=args.vae_name)
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0
