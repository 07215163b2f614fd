"""What a run made, measured when it ends: sample FD and class accuracy beside the real-data floor.

:class:`FinalSamplesHook` (``train.final_eval_samples`` > 0) draws N class-conditional samples
from the final EMA generator with the run's own ``sample:`` settings -- the same labels and
per-sample seeds as ``repae evaluate --checkpoint RUN --num-samples N`` -- and measures them in
the offline ``evalnet-fmnist`` feature space against the embedded training split:

* ``fid`` (and sFID, IS, precision, recall) of the samples,
* ``class_accuracy``: how often the evaluation network assigns the conditioning label,
* ``real_fid`` / ``real_class_accuracy``: the same measures for N real held-out *test* images --
  the floor a perfect generator would reach with N images (FD is biased upwards at small N).

It writes ``RUN/final-samples.json`` and a labelled grid ``RUN/final-samples.png`` (first 40
samples, class names as titles), which ``report.html`` shows first. The evaluation network only
*measures*: it never enters training or sampling (no classifier guidance).

Only for 32x32 Fashion-MNIST data (``embedded``, ``fashion-mnist``), the classes the evaluation
network knows; for other data the hook logs why it is skipped.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from repae.training.hooks import TrainHook

log = logging.getLogger("repae.final")

__all__ = ["FinalSamplesHook", "evaluate_final_samples"]

REFERENCE = "embedded:train"  # what `repae evaluate --checkpoint` uses by default with evalnet-fmnist
FMNIST_SOURCES = ("embedded", "fashion-mnist", "full")


def _real_test_images(cfg, n: int):
    from repae.data import build_dataset, dataset_to_tensor

    name = str(cfg.data.source).partition(":")[0]
    spec = "fashion-mnist" if name in ("fashion-mnist", "full") else "embedded"
    images, labels = dataset_to_tensor(build_dataset(spec, resolution=cfg.data.resolution, split="test"))
    return images[:n], labels[:n]  # uint8 [n, 3, R, R], int64 [n]


@torch.no_grad()
def evaluate_final_samples(gen, cfg, num_samples: int, *, seed: int = 0, batch_size: int = 100,
                           device: str | torch.device = "cpu", progress: bool = False) -> tuple[dict, torch.Tensor,
                                                                                                  torch.Tensor]:
    """Sample ``num_samples`` images with the run's sampling settings and measure them and the floor.

    Returns ``(result, first_images, first_labels)``: the metrics dict and the first 40 samples.
    """
    from repae.evaluation.features import get_extractor
    from repae.evaluation.reference import compute_reference, evaluate_samples
    from repae.sampling.generator import sample_labels, sample_seeds

    sc = cfg.sample
    extractor = get_extractor("evalnet-fmnist", device=device)
    ref = compute_reference(REFERENCE, extractor, progress=progress)
    labels = sample_labels(num_samples, seed, cfg.model.num_classes)  # [N], as repae evaluate --checkpoint
    kwargs = dict(sampler=sc.sampler, num_steps=sc.num_steps, cfg_scale=sc.cfg_scale,
                  guidance_interval=(sc.guidance_low, sc.guidance_high))
    batches = []
    for start in range(0, num_samples, batch_size):
        idx = list(range(start, min(start + batch_size, num_samples)))
        batches.append(gen(labels[idx].to(device), seeds=sample_seeds(seed, idx), **kwargs).cpu())  # uint8 [b,3,R,R]
    samples = torch.cat(batches)  # uint8 [N, 3, R, R]
    result = evaluate_samples(samples, ref, extractor, labels=labels.numpy(), progress=progress)
    real, real_labels = _real_test_images(cfg, num_samples)
    floor = evaluate_samples(real, ref, extractor, labels=real_labels.numpy(), progress=progress)
    result.update({f"real_{k}": floor[k] for k in ("fid", "class_accuracy", "precision", "recall") if k in floor})
    result.update(num_samples=num_samples, num_real=len(real), reference=REFERENCE, seed=seed, sampler=sc.sampler,
                  num_steps=sc.num_steps, cfg_scale=sc.cfg_scale, guidance_low=sc.guidance_low,
                  guidance_high=sc.guidance_high, ema=True)
    return result, samples[:40], labels[:40]


def _measured_step(path: Path) -> int | None:
    import json

    try:
        return int(json.loads(path.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FinalSamplesHook(TrainHook):
    """At the end of training: ``RUN/final-samples.json`` + ``.png`` (see the module docstring).

    Args:
        num_samples: samples (and real test images for the floor); 0 disables the hook.
        seed: label and noise seed (``repae evaluate --seed``).
    """

    every = 0  # no on_step work

    def __init__(self, num_samples: int, *, seed: int = 0):
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def on_end(self, trainer) -> None:
        cfg = trainer.cfg
        if self.num_samples <= 0 or not trainer.engine.is_main or getattr(trainer, "sit", None) is None:
            return None
        if str(cfg.data.source).partition(":")[0] not in FMNIST_SOURCES or cfg.data.resolution != 32:
            log.info("final samples: skipped (the evaluation network knows only 32x32 Fashion-MNIST; "
                     "run 'repae evaluate --checkpoint %s' with Inception weights instead)", cfg.run_dir)
            return None
        from repae.analysis.report import final_samples_paths

        json_path, png_path = final_samples_paths(cfg.run_dir)
        if _measured_step(json_path) == trainer.step:
            return None  # a resumed run with no step left: already measured
        from repae.analysis.report import class_names_of, labelled_grid_png
        from repae.sampling.generator import Generator
        from repae.utils.io import atomic_path, write_json

        gen = Generator.from_trainer(trainer)
        try:
            result, images, labels = evaluate_final_samples(gen, cfg, self.num_samples, seed=self.seed,
                                                            device=trainer.engine.device)
        except Exception as err:  # noqa: BLE001 - the trained checkpoints stand; say how to measure them
            log.warning("final samples not measured (%s); run 'repae evaluate --checkpoint %s --num-samples %d'",
                        err, cfg.run_dir, self.num_samples)
            return None
        result["step"] = int(trainer.step)
        title = (f"final EMA samples, step {trainer.step} ({cfg.sample.sampler}, {cfg.sample.num_steps} steps, "
                 f"CFG {cfg.sample.cfg_scale})")
        png = labelled_grid_png(list(images), labels.tolist(), class_names_of(cfg), title, ncol=10)
        with atomic_path(png_path) as tmp:
            Path(tmp).write_bytes(png)
        write_json(json_path, {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()})
        log.info("final samples (%d, %s): FD %.2f (real test images: %.2f), class accuracy %.3f (real: %.3f)",
                 self.num_samples, result.get("feature_space", "evalnet-fmnist"), result["fid"],
                 result.get("real_fid", math.nan), result.get("class_accuracy", math.nan),
                 result.get("real_class_accuracy", math.nan))
        return None
