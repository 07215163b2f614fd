"""Measurements of the study: the same evaluation for every run, and the per-run results read back.

For each run (a ``repae`` run folder) the study writes, in the layouts the other verbs use:

* ``study/fd_curve.json`` -- ``{step: {fid, class_accuracy, num_samples}}`` measured during training by
  :class:`FDCurveHook` on ``curve_samples`` samples of the EMA model (the FD-vs-step plot);
* ``eval/step-XXXXXXX.json`` -- FD / sFID / IS / precision / recall / class accuracy of
  ``eval_samples`` samples of the final EMA checkpoint (``repae evaluate --checkpoint --out`` layout);
* ``eval/recon.json`` -- rFID / PSNR / SSIM of the run's tokenizer on ``recon_data``
  (``repae evaluate --recon --out`` layout; for frozen-VAE runs this is the frozen tokenizer);
* ``analysis/analysis.json`` -- spatial variance, total variation, image variance (between images,
  :mod:`repae.analysis.latent_stats`), CKNNA of the final checkpoint (``repae analyze RUN
  --checkpoints latest`` layout) and ``study/grid.pt`` (its PCA views). Runs analysed before image
  variance existed get it added by :func:`backfill_image_variance` (same images, nothing else rewritten).

Every run is sampled with the same labels, per-sample seeds, sampler, steps and guidance
(``StudyConfig.eval_seed`` etc.), against one reference, in the offline ``evalnet-fmnist``
feature space (numbers NOT comparable with published Inception FID).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from repae.study.plan import StudyConfig
from repae.training.hooks import TrainHook
from repae.utils.io import write_json

#: per-run result keys (collect_run): eval/step-*.json, eval/recon.json, analysis/analysis.json
RESULT_KEYS = ("fid", "sfid", "inception_score", "precision", "recall", "class_accuracy", "rfid", "psnr", "ssim",
               "latent_sv", "latent_tv", "latent_tv_sum", "latent_sv_seen", "latent_tv_over_sqrt_sv", "cknna",
               "latent_cknna", "latent_image_variance", "latent_image_variance_fraction")

#: latent_stats fields added after the first studies ran (backfill_image_variance adds them to old analyses)
IMAGE_VARIANCE_FIELDS = ("image_variance", "pattern_variance", "image_variance_fraction")


def _clean(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


#: how DDPM networks (the DiT rows) are sampled: DDIM (eta 0) with the study's step count, the
#: deterministic counterpart of the flow rows' ODE solver (respaced DDPM at 25 steps is far worse)
DDPM_EVAL_SAMPLER = "ddim"


def eval_sampler(cfg: StudyConfig, gen) -> str:
    """The study's sampler for a flow network, :data:`DDPM_EVAL_SAMPLER` for a DDPM one (DiT)."""
    from repae.models import objective_kind

    return DDPM_EVAL_SAMPLER if objective_kind(gen.model) == "ddpm" else cfg.sampler


class StudyEvaluator:
    """One feature network and one reference for the whole study (built on first use)."""

    def __init__(self, cfg: StudyConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self._extractor = None
        self._reference = None
        self._images: dict[int, Any] = {}
        self._encoders: dict[tuple, Any] = {}

    @property
    def extractor(self):
        if self._extractor is None:
            from repae.evaluation.features import get_extractor

            self._extractor = get_extractor("evalnet-fmnist", device=self.device)
        return self._extractor

    @property
    def reference(self):
        """Reference statistics of ``cfg.reference``, cached as ``<out>/reference-<hash>.npz``."""
        if self._reference is None:
            from repae.evaluation.reference import build_reference, load_reference

            spec = self.cfg.reference
            if str(spec).endswith(".npz"):
                self._reference = load_reference(spec, self.extractor, progress=False)
            else:
                tag = hashlib.sha256(f"{spec}|{self.extractor.feature_space}".encode()).hexdigest()[:10]
                cache = Path(self.cfg.out) / f"reference-{tag}.npz"
                if cache.is_file():
                    self._reference = load_reference(cache, self.extractor, progress=False)
                else:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    self._reference = build_reference(spec, self.extractor, cache, batch_size=256, progress=False)
        return self._reference

    @torch.no_grad()
    def sample_metrics(self, gen, num_samples: int) -> dict:
        """Offline FD / sFID / IS / P / R / class accuracy of ``num_samples`` samples of ``gen``."""
        from repae.evaluation.reference import evaluate_samples
        from repae.sampling.generator import sample_labels, sample_seeds

        cfg = self.cfg
        labels = sample_labels(num_samples, cfg.eval_seed, gen.num_classes)  # [N], identical for every run
        kwargs = dict(sampler=eval_sampler(cfg, gen), num_steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale)

        def stream(batch: int = 250):
            for start in range(0, num_samples, batch):
                idx = list(range(start, min(start + batch, num_samples)))
                yield gen(labels[idx], seeds=sample_seeds(cfg.eval_seed, idx), **kwargs)  # uint8 [b, 3, H, W]

        out = evaluate_samples(stream(), self.reference, self.extractor, batch_size=250, labels=labels.numpy(),
                               progress=False)
        out.update(seed=cfg.eval_seed, **kwargs)
        return out

    def recon_metrics(self, tokenizer) -> dict:
        from repae.evaluation.reference import evaluate_reconstruction

        tokenizer = tokenizer.to(self.device).eval()
        out = evaluate_reconstruction(tokenizer, self.cfg.recon_data, self.extractor, batch_size=250,
                                      max_images=self.cfg.eval_samples, progress=False)
        out["data"] = self.cfg.recon_data
        return out

    def analysis_images(self, resolution: int):
        if resolution not in self._images:
            from repae.analysis.pipeline import load_images

            self._images[resolution] = load_images(self.cfg.analysis_data, resolution=resolution,
                                                   num_images=self.cfg.analysis_images, seed=0)
        return self._images[resolution]

    def encoder(self, run_cfg):
        """The run's first alignment encoder (CKNNA target), also for vanilla runs (None without one)."""
        if not run_cfg.align.encoders:
            return None, None
        name = run_cfg.align.encoders[0]
        weights = run_cfg.align.encoder_weights[0] if run_cfg.align.encoder_weights else None
        key = (name, weights, run_cfg.data.resolution)
        if key not in self._encoders:
            from repae.encoders import load_encoder

            self._encoders[key] = load_encoder(name, weights=weights, resolution=run_cfg.data.resolution,
                                               device=self.device)
        return self._encoders[key], name


class FDCurveHook(TrainHook):
    """FD of the EMA model every ``every`` steps (and at the last step), on ``num_samples`` samples.

    Appends to ``path`` (a JSON object keyed by step, rewritten atomically), so a resumed run keeps
    the points measured before it was killed; a recomputed step gives the same number (resume is
    bit-exact on CPU and the evaluation samples are seeded per sample).
    """

    def __init__(self, evaluator: StudyEvaluator, *, every: int, num_samples: int, path: Path):
        self.evaluator = evaluator
        self.every = int(every)
        self.num_samples = int(num_samples)
        self.path = Path(path)

    def on_step(self, trainer, step: int, metrics: dict) -> dict | None:
        if not trainer.engine.is_main:
            return None
        from repae.sampling.generator import Generator

        gen = Generator.from_trainer(trainer, ema=True)
        m = self.evaluator.sample_metrics(gen, self.num_samples)
        curve = read_json(self.path) or {}
        curve[str(step)] = _clean({k: m.get(k) for k in ("fid", "sfid", "class_accuracy", "num_samples")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, curve)
        return {"study/fd": float(m["fid"]), "study/class_accuracy": float(m.get("class_accuracy", math.nan))}


def evaluate_run(run_dir: Path, evaluator: StudyEvaluator) -> dict:
    """The final evaluation of a trained run (files: see the module docstring); returns :func:`collect_run`."""
    from repae.analysis.pipeline import AnalysisOptions, analyze, load_checkpoint_models, resolve_source, strip_tensors
    from repae.sampling.generator import Generator
    from repae.training.checkpoint import latest_checkpoint, step_of

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RuntimeError(f"run {run_dir} has no complete checkpoint after training")
    step = step_of(ckpt)
    dev = evaluator.device
    gen = Generator.from_checkpoint(ckpt, ema=True, map_location="cpu").to(dev)
    sm = evaluator.sample_metrics(gen, evaluator.cfg.eval_samples)
    sm.update(checkpoint=str(ckpt), step=step)
    write_json(run_dir / "eval" / f"step-{step:07d}.json", _clean(sm))
    del gen

    tok, _, run_cfg = load_checkpoint_models(ckpt, dev)
    rm = evaluator.recon_metrics(tok)
    rm["vae_checkpoint"] = str(ckpt)
    write_json(run_dir / "eval" / "recon.json", _clean(rm))
    del tok

    src = resolve_source(str(run_dir))
    data = evaluator.analysis_images(run_cfg.data.resolution)
    encoder, enc_name = evaluator.encoder(run_cfg)
    opts = AnalysisOptions(num_images=evaluator.cfg.analysis_images, checkpoints="latest")
    result = analyze([src], data, device=dev, options=opts, encoder=encoder, encoder_name=enc_name)
    write_json(run_dir / "analysis" / "analysis.json", strip_tensors(result))
    grid = result["inputs"][0].get("grid")
    if grid is not None:
        torch.save({**grid, "pca_explained_ratio": result["inputs"][0].get("pca_explained_ratio"),
                    "class_names": data.class_names}, run_dir / "study" / "grid.pt")
    return collect_run(run_dir)


def backfill_image_variance(run_dir: Path, evaluator: StudyEvaluator) -> bool:
    """Add the image-variance fields to a finished run's ``analysis/analysis.json`` that lacks them.

    The latest checkpoint's tokenizer encodes the study's analysis images again (the same seeded
    subset :func:`evaluate_run` used) and only the missing fields of each ``stats`` variant are
    written; every number already in the file stays as it is. Returns whether the file changed
    (False: no analysis, or nothing missing).
    """
    from repae.analysis.pipeline import load_checkpoint_models, measure_vae
    from repae.training.checkpoint import latest_checkpoint

    path = Path(run_dir) / "analysis" / "analysis.json"
    analysis = read_json(path)
    entry = (analysis.get("inputs") or [None])[0] if isinstance(analysis, dict) else None
    stats = entry.get("stats") if isinstance(entry, dict) else None
    if not isinstance(stats, dict) or all(f in (stats.get("raw") or {}) for f in IMAGE_VARIANCE_FIELDS):
        return False
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return False
    tok, _, run_cfg = load_checkpoint_models(ckpt, evaluator.device)
    data = evaluator.analysis_images(run_cfg.data.resolution)
    fresh = measure_vae(tok, data, device=evaluator.device, full=False)["stats"]
    for variant, values in fresh.items():
        old = stats.setdefault(variant, {})
        old.update({f: values[f] for f in IMAGE_VARIANCE_FIELDS if f not in old})
    entry["image_variance_backfilled"] = {"checkpoint": str(ckpt), "num_images": int(data.images.shape[0])}
    write_json(path, _clean(analysis))
    return True


def collect_run(run_dir: Path, *, final_step: int | None = None) -> dict | None:
    """The flat per-run result (``RESULT_KEYS`` + ``step`` + ``fd_curve``) from the files in a run folder.

    ``None`` when the run has no final sample evaluation yet (``eval/step-<final_step>.json``; any step
    when ``final_step`` is None). Works on folders made by ``repae study`` and on paper-scale folders
    evaluated with the printed ``repae evaluate`` / ``repae analyze`` commands.
    """
    run_dir = Path(run_dir)
    evals = {}
    for f in sorted((run_dir / "eval").glob("step-*.json")):
        obj = read_json(f)
        if isinstance(obj, dict) and isinstance(obj.get("fid"), (int, float)):
            evals[int(obj.get("step", f.stem.split("-")[-1]))] = obj
    if not evals:
        return None
    step = max(evals) if final_step is None else final_step
    if step not in evals:
        return None
    final = evals[step]
    out: dict[str, Any] = {k: final.get(k) for k in ("fid", "sfid", "inception_score", "precision", "recall",
                                                     "class_accuracy", "num_samples", "feature_space")}
    out["step"] = step
    recon = read_json(run_dir / "eval" / "recon.json") or {}
    out.update({k: recon.get(k) for k in ("rfid", "psnr", "ssim")})
    analysis = read_json(run_dir / "analysis" / "analysis.json") or {}
    entry = (analysis.get("inputs") or [{}])[0]
    stats = entry.get("stats") or {}
    raw, seen = stats.get("raw") or {}, stats.get("normalizer") or {}
    out.update(latent_sv=raw.get("spatial_variance"), latent_tv=raw.get("total_variation"),
               latent_tv_sum=raw.get("tv_sum"), latent_tv_over_sqrt_sv=raw.get("tv_over_sqrt_sv"),
               latent_sv_seen=seen.get("spatial_variance"), cknna=entry.get("cknna_at_depth"),
               latent_cknna=entry.get("latent_cknna"), latent_image_variance=raw.get("image_variance"),
               latent_image_variance_fraction=raw.get("image_variance_fraction"))
    curve = read_json(run_dir / "study" / "fd_curve.json")
    if isinstance(curve, dict) and curve:
        points = sorted((int(s), v.get("fid")) for s, v in curve.items() if isinstance(v, dict))
    else:  # paper-scale folders: one evaluation JSON per evaluated checkpoint
        points = sorted((s, e.get("fid")) for s, e in evals.items())
    out["fd_curve"] = [[s, f] for s, f in points if isinstance(f, (int, float))]
    out["curve_samples"] = next((v.get("num_samples") for v in (curve or {}).values() if isinstance(v, dict)), None)
    done = read_json(run_dir / "study" / "done.json") or {}
    out.update({k: done.get(k) for k in ("train_seconds", "eval_seconds")})
    return _clean(out)
