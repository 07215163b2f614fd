"""The ``repae`` command line. Each verb is a thin wrapper over the library.

Every verb lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
the module is imported only when its verb is used, so ``repae --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help). One table; no if/elif chains.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("repae.cli.train", "train REPA-E / REPA / vanilla / ablations / LDM (default: REPA-E on the embedded data)"),
    "bench": ("repae.cli.bench", "print seconds/step, img/s and peak memory of a training step"),
    "export-vae": ("repae.cli.export_vae", "write the E2E-VAE of a run (diffusers format + latent statistics)"),
    "export": ("repae.cli.export", "write a run's SiT (+EMA) and E2E-VAE in the official REPA-E / diffusers layouts"),
    "cache-latents": ("repae.cli.cache_latents", "encode a dataset with a frozen VAE into cached posterior mean/std"),
    "latent-stats": ("repae.cli.latent_stats", "compute per-channel latent statistics of a VAE over a dataset"),
    "pretrain-encoder": ("repae.cli.pretrain_encoder", "self-supervised pretraining of a small ViT alignment encoder"),
    "linear-probe": ("repae.cli.linear_probe", "linear-probe accuracy of an encoder's features on a labelled dataset"),
    "sample": ("repae.cli.sample", "draw N samples from a checkpoint into an ADM .npz and/or PNG folder"),
    "evaluate": ("repae.cli.evaluate", "gFID/sFID/IS/precision/recall of samples, or rFID/PSNR/SSIM/LPIPS of a VAE"),
    "reference": ("repae.cli.reference", "build an ADM-layout reference batch (features + statistics)"),
    "config": ("repae.cli.config", "print the resolved configuration of a preset with overrides"),
    "analyze": ("repae.cli.analyze", "DCT spectra, latent SV/TV, PCA views, reconstructions and CKNNA of runs or VAEs"),
    "report": ("repae.cli.report", "one self-contained HTML page of a run: config, curves, samples, analysis"),
    "study": ("repae.cli.study", "REPA-E vs baselines and ablations at equal budget, with a report of the paper's claims"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(v) for v in VERBS)
    verbs = "\n".join(f"  {name.ljust(width)}  {help_}" for name, (_, help_) in VERBS.items())
    return argparse.ArgumentParser(
        prog="repae",
        description="End-to-end latent diffusion (REPA-E) training, sampling and evaluation.",
        epilog=f"verbs:\n{verbs}\n\nRun 'repae VERB --help' for the options of a verb.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Bad input exits 2 with one line naming the fix; any other failure exits 1 with
    one line (``--debug`` anywhere on the command line shows the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    top = _top_parser()
    top.add_argument("--version", action="store_true", help="print the version and exit")
    top.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        from repae import __version__

        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose one of: {', '.join(VERBS)}")
    module_name, help_ = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"repae {verb}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from repae.errors import ConfigError, MissingWeightsError

    try:
        return int(module.run(args) or 0)
    except (ConfigError, MissingWeightsError) as err:  # bad input: one line that names the fix
        if debug:
            raise
        print(f"repae {verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"repae {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"repae {verb}: error: {type(err).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
