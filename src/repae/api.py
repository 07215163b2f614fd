"""The Python API: train a run, load a trained generator, load a tokenizer — the CLI's verbs as calls.

    import repae

    run = repae.train("fmnist", overrides=["train.max_steps=400"])        # -> Path of the run folder
    gen = repae.load(run)                                                 # EMA SiT + E2E-VAE, sampling ready
    images = gen([0, 1, 2], seeds=[0, 1, 2])                              # uint8 [3, 3, 32, 32]
    tok = repae.Tokenizer.from_pretrained(run / "e2e-vae")                # the exported E2E-VAE

This module sits at the top of the package (beside :mod:`repae.cli`): it assembles the default
hooks of a run (preview grids from :mod:`repae.sampling`) exactly as ``repae train`` does, so a
script and the command line produce the same run folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from repae.config import RunConfig, from_dict, load_config, parse_override


def default_hooks(cfg: RunConfig) -> list:
    """What ``repae train`` runs besides optimisation, in this order: latent-health diagnostics every
    ``train.diagnostics_every`` steps, preview grids every ``train.sample_every`` steps, the end-of-run
    sample metrics (``train.final_eval_samples``) and the HTML report at the end (``train.html_report``)."""
    from repae.analysis.health import LatentHealthHook
    from repae.analysis.report import ReportHook
    from repae.evaluation.final import FinalSamplesHook
    from repae.sampling.preview import SampleGridHook

    hooks = [LatentHealthHook(cfg.train.diagnostics_every), SampleGridHook(cfg.train.sample_every),
             FinalSamplesHook(cfg.train.final_eval_samples)]
    return hooks + ([ReportHook()] if cfg.train.html_report else [])


@dataclass
class TrainResult:
    """What :func:`run_training` did: the run folder, its last step and metrics, the export (or None)."""

    run_dir: Path
    step: int
    metrics: dict[str, float]
    seconds: float  # wall time of training, hooks included
    exported: Path | None
    is_main: bool  # rank 0 (the process that writes files)
    train_vae: bool


def _resolve(config: str | RunConfig | None, overrides: Sequence[str]) -> RunConfig:
    if isinstance(config, RunConfig):
        cfg = config
        for text in overrides:
            (section, key), value = parse_override(text)
            cfg = from_dict({section: {key: value}}, cfg)
        return cfg
    return load_config(config, list(overrides))


def run_training(config: str | RunConfig | None = "fmnist", *, overrides: Sequence[str] = (), export: bool = True,
                 hooks: list | None = None) -> TrainResult:
    """Train (or resume) a run, export its E2E-VAE when the recipe trains one; the one code path of
    :func:`train` and ``repae train`` (arguments as in :func:`train`)."""
    from repae.training.trainer import Trainer

    cfg = _resolve(config, overrides)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, hooks=default_hooks(cfg) if hooks is None else hooks)
    last = trainer.fit()
    seconds = time.perf_counter() - t0
    exported = None
    if export and trainer.recipe.train_vae and trainer.engine.is_main:
        from repae.training.export import export_vae

        exported = export_vae(cfg.run_dir, cfg.run_dir / "e2e-vae")
    trainer.engine.barrier()
    return TrainResult(cfg.run_dir, trainer.step, last, seconds, exported, trainer.engine.is_main,
                       trainer.recipe.train_vae)


def train(config: str | RunConfig | None = "fmnist", *, overrides: Sequence[str] = (), export: bool = True,
          hooks: list | None = None) -> Path:
    """Train (or resume) a run and return its folder; exports the E2E-VAE when the recipe trains one.

    Args:
        config: preset name, YAML path or a :class:`~repae.config.RunConfig`.
        overrides: dotted ``section.key=value`` strings, as on the command line.
        export: write ``<run>/e2e-vae`` (diffusers format + latent statistics) at the end.
        hooks: replaces :func:`default_hooks` (see :mod:`repae.training.hooks`).
    """
    return run_training(config, overrides=overrides, export=export, hooks=hooks).run_dir


def load(run_or_checkpoint: str | Path, *, ema: bool = True, device: str = "cpu"):
    """A :class:`~repae.sampling.generator.Generator` for a ``repae`` run or checkpoint folder.

    Call it with class labels (and optional per-sample ``seeds``, ``sampler``, ``num_steps``,
    ``cfg_scale``, ``guidance_interval``) to get uint8 images ``[N, 3, H, W]``. The run's own
    sampling settings (what ``repae sample`` uses for unset flags) are ``gen.sample_defaults``.
    """
    from repae.sampling.generator import Generator

    return Generator.from_checkpoint(run_or_checkpoint, ema=ema, map_location="cpu").to(device)
