"""fp32 vs bf16 vs fp16: the main job's losses over its first steps (issue 24 item 3).

Trains ``repae train --config fmnist`` (the README's main job: REPA-E, VAE init., SiT-XS/1) for
``--steps`` steps under each ``train.mixed_precision`` and each seed, logging every step, and
prints, per precision:

* the mean of each loss over the last ``--tail`` steps (mean ± sd over seeds);
* the mean |loss - fp32 loss| over all logged steps, same seed (how far the trajectory drifts from
  fp32), beside the fp32 seed-to-seed spread of that loss (what "far" means);
* optimizer updates the fp16 GradScalers skipped (``fp16_overflows``) and the median img/s.

Nothing here is a pass/fail test: the figures go to docs/benchmarks.md. Runs are resumable (a
finished run is read back, not retrained; an interrupted one resumes from its last quarter).
On a CPU without native fp16 arithmetic (e.g. AVX512-BF16 but no AVX512-FP16) fp16 autocast runs
~20x slower than fp32: there, fp16 runs dominate the wall time.

    .venv/bin/python scripts/precision_compare.py --out runs/precision --threads 1
    .venv/bin/python scripts/precision_compare.py --out runs/prec-vanilla --precisions no bf16 \
        --config fmnist --set train.recipe=vanilla train.batch_size=32 --seeds 0 1 2

fp32 (``no``) is always run: it is the reference of the drift. The settings (preset, ``--set``,
steps) are written to ``<out>/settings.json``; reusing an ``--out`` with other settings is an error,
so finished runs of another setting are never read back into the comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from repae.cli import main as repae_main

LOSSES = ("denoising_loss", "proj_loss", "vae_loss", "reconstruction_loss", "vae_align_loss", "d_loss")
PRECISIONS = ("no", "bf16", "fp16")  # "no" = fp32


def run_one(out: Path, precision: str, seed: int, steps: int, threads: int, config: str = "fmnist",
            extra: tuple[str, ...] = ()) -> list[dict]:
    name = f"{'fp32' if precision == 'no' else precision}-s{seed}"
    metrics = out / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    if not rows or rows[-1].get("step", 0) < steps:
        code = repae_main(["train", "--config", config, *extra, f"train.max_steps={steps}",
                           f"train.mixed_precision={precision}",
                           f"train.seed={seed}", "train.log_every=1", "train.final_eval_samples=0", "train.html_report=false",
                           "train.sample_every=0", "train.diagnostics_every=0", f"train.checkpoint_every={max(1, steps // 4)}",
                           f"train.output_dir={out}", f"train.exp_name={name}", f"train.threads={threads}",
                           "train.report_to=none"])
        if code:
            sys.exit(f"run {name} failed (exit {code})")
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r for r in rows if "step" in r and LOSSES[0] in r]


def check_settings(out: Path, settings: dict) -> None:
    """``<out>/settings.json`` holds the settings of the runs in ``out``; other settings are an error."""
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            diff = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                             if old.get(k) != settings.get(k))
            sys.exit(f"{out} holds runs made with other settings ({diff}): pass another --out or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.4f} ± {sd:.4f}"


def summarise(runs: dict[tuple[str, int], list[dict]], seeds: list[int], tail: int,
              precisions: tuple[str, ...] = PRECISIONS) -> dict:
    summary: dict = {}
    losses = [k for k in LOSSES if all(k in r for s in seeds for r in runs["no", s])]  # what the recipe logs
    for prec in precisions:
        entry: dict = {}
        for loss in losses:
            tails = [statistics.mean(r[loss] for r in runs[prec, s][-tail:]) for s in seeds]
            drift = [statistics.mean(abs(a[loss] - b[loss]) for a, b in zip(runs[prec, s], runs["no", s], strict=True))
                     for s in seeds]
            # fp32 seed-to-seed spread at each step (mean |difference| over seed pairs): the scale of "far"
            pairs = [(s, t) for i, s in enumerate(seeds) for t in seeds[i + 1:]]
            spread = statistics.mean(statistics.mean(abs(a[loss] - b[loss]) for a, b in zip(runs["no", s], runs["no", t]))
                                     for s, t in pairs) if pairs else float("nan")
            entry[loss] = {"tail_mean": tails, "drift_vs_fp32": drift, "fp32_seed_spread": spread}
        entry["fp16_overflows"] = [runs[prec, s][-1].get("fp16_overflows", 0) for s in seeds]
        entry["img_per_s_median"] = statistics.median(r["img_per_s"] for s in seeds for r in runs[prec, s] if "img_per_s" in r)
        summary["fp32" if prec == "no" else prec] = entry
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/precision")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tail", type=int, default=20, help="steps averaged at the end")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="fmnist", help="preset trained (default fmnist, the README's main job)")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="train.mixed_precision values compared (no = fp32, always run as the reference)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides on top of the preset, e.g. train.batch_size=32 train.recipe=repa")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.tail < 1 or not args.seeds:
        ap.error("--steps and --tail must be positive and --seeds non-empty")
    bad = [o for o in args.set if "=" not in o]
    if bad:
        ap.error(f"--set takes KEY=VALUE pairs, got {bad}")
    precisions = tuple(p for p in PRECISIONS if p == "no" or p in args.precisions)  # fp16 last: slowest on a CPU
    out = Path(args.out)
    check_settings(out, {"config": args.config, "set": list(args.set), "steps": args.steps})
    runs = {(p, s): run_one(out, p, s, args.steps, args.threads, args.config, tuple(args.set))
            for p in precisions for s in args.seeds}
    summary = summarise(runs, args.seeds, args.tail, precisions)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{args.steps} steps of {args.config} {' '.join(args.set)}, seeds {args.seeds}; losses: mean of the last {args.tail} "
          f"steps (mean ± sd over seeds) | mean |x - fp32| per step, same seed (fp32 seed-to-seed spread)")
    for loss in next(iter(summary.values())):
        if loss in ("fp16_overflows", "img_per_s_median"):
            continue
        print(f"\n{loss}")
        for prec, entry in summary.items():
            e = entry[loss]
            print(f"  {prec:5s} {_ms(e['tail_mean'])} | drift {statistics.mean(e['drift_vs_fp32']):.4f} "
                  f"(fp32 seed spread {e['fp32_seed_spread']:.4f})")
    print()
    for prec, entry in summary.items():
        print(f"{prec:5s} fp16_overflows {entry['fp16_overflows']}  median img/s {entry['img_per_s_median']:.1f}")
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
