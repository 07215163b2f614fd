"""``repae study``: REPA-E against its baselines and the paper's ablations at equal budget, with an honest report.

Trains (resumably) vanilla, REPA, REPA-E (VAE init.), REPA-E (scratch), naive end-to-end, the three
ablations of paper Table 6 and a fresh SiT on each frozen tokenizer (drop-in), evaluates every run
the same way and writes ``<out>/report.html``, ``report.md`` and ``results.json`` (see
:mod:`repae.study` and ``docs/study.md``)::

    repae study                               # the small study (measured: 43 min as two 1-thread shards)
    repae study --dry-run                     # the plan, the overrides of each run and the time estimate
    repae study --shard 1/2 --threads 1 &  repae study --shard 2/2 --threads 1   # two processes
    repae study --only repa-e-s0,repa-s0      # some runs; the report covers whatever is finished
    repae study --report-only                 # rebuild the report from the finished runs
    repae study --budget paper                # print the ImageNet command lines of the same study
"""

from __future__ import annotations

import argparse
import logging

from repae.cli.argtypes import nonneg_int, positive_int
from repae.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", choices=["small", "paper"], default="small",
                        help="small: run the study here (embedded data; see docs/study.md for the measured cost); paper: print the "
                        "ImageNet torchrun command lines of the same study instead of running it")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="seeds of the REPA-E / REPA / vanilla / drop-in rows (small: 3, paper: 1)")
    parser.add_argument("--out", default=None, help="study folder (small: study, paper: study-imagenet)")
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps of every run (small: 960, paper: 100000)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="global batch of every run (small: 64, paper: 256)")
    parser.add_argument("--tokenizer", default=None,
                        help="'VAE init.': shipped name, tokenizer folder or weights file (small: repae-vae-fmnist, "
                        "paper: pretrained/sd-vae-ft-mse)")
    parser.add_argument("--extra", action="append", default=None, metavar="PART[,PART]",
                        help="add rows to the default study: 'dit' (the DiT half of the drop-in table), 'tokreg' "
                        "(SE / EQ-VAE / VF-loss fine-tunes of VAE init., a fresh SiT on each), 'targets' (REPA with a "
                        "random / MAE ViT / SimCLR CNN alignment target; FD against each target's linear probe); one "
                        "seed each; finished default runs are reused")
    parser.add_argument("--only", action="append", default=None, metavar="NAME[,NAME]",
                        help="run only these runs (names: see --dry-run); repeatable")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="run the i-th of n shards (1-based), e.g. --shard 1/2 and --shard 2/2 in two processes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override for every run, e.g. --set optim.vae_lr=1e-4 (repeatable; a different study: use another --out)")
    parser.add_argument("--eval-samples", type=positive_int, default=None,
                        help="samples of the final evaluation and images for rFID (small: 1000)")
    parser.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads of this process (0 = default)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (or the paper commands) and exit")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the report from finished runs")


def _config(args: argparse.Namespace):
    from repae.study.plan import StudyConfig, paper_config

    changes = dict(seeds=args.seeds, out=args.out, steps=args.steps, batch_size=args.batch_size,
                   tokenizer=args.tokenizer, eval_samples=args.eval_samples)
    if args.overrides:
        changes["overrides"] = tuple(args.overrides)
    if args.extra:
        from repae.study.plan import DEFAULT_KINDS, EXTRAS

        parts = [p.strip() for item in args.extra for p in item.split(",") if p.strip()]
        unknown = [p for p in parts if p not in EXTRAS]
        if unknown:
            raise ConfigError(f"--extra {','.join(unknown)}: choose from {', '.join(EXTRAS)}")
        changes["kinds"] = (*DEFAULT_KINDS, *(k for p in parts for k in EXTRAS[p]))
    if args.budget == "paper":
        if args.overrides:
            from repae.study.plan import PAPER

            changes["overrides"] = (*PAPER["overrides"], *args.overrides)
        return paper_config(**changes)
    return StudyConfig(**{k: v for k, v in changes.items() if v is not None}, threads=args.threads)


def _print_plan(cfg) -> None:
    from repae.study.plan import build_plan, estimate_seconds

    plan = build_plan(cfg)
    common = set(plan.runs[0].overrides) if plan.runs else set()
    for r in plan.runs:
        common &= set(r.overrides)
    total = {"train": 0.0, "sample": 0.0, "other": 0.0, "total": 0.0}
    print(f"study plan: {len(plan.runs)} runs in {cfg.out}/runs, preset {cfg.preset}; every run: "
          + " ".join(o for o in plan.runs[0].overrides if o in common))
    for r in plan.runs:
        est = estimate_seconds(r, cfg)
        for k in total:
            total[k] += est[k]
        own = " ".join(o for o in r.overrides if o not in common)
        print(f"  {r.name:<20} {r.label:<26} ~{est['total'] / 60:4.1f} min  tables: {','.join(r.tables):<34} {own}")
    print(f"estimated time (2-core reference machine, repae.study.plan cost model): {total['total'] / 60:.0f} min "
          f"= training {total['train'] / 60:.0f} + sampling {total['sample'] / 60:.0f} + other "
          f"{total['other'] / 60:.0f}")
    for i, names in enumerate(plan.shards(2), 1):
        est = sum(estimate_seconds(plan.get(n), cfg)["total"] for n in names) / 60
        print(f"  --shard {i}/2: {len(names)} runs, ~{est:.0f} min")


def run(args: argparse.Namespace) -> int:
    from repae.study.plan import build_plan, paper_commands, parse_shard

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    cfg = _config(args)
    shard = parse_shard(args.shard)
    plan = build_plan(cfg)  # ConfigError (one line) on bad values
    if args.only:
        plan.select(args.only)  # a bad name is one line listing the valid ones
    if args.report_only:
        from repae.study.report import write_report

        paths = write_report(plan)
        print(f"study: report -> {paths['html']} ({paths['md'].name}, {paths['json'].name})")
        return 0
    if cfg.budget == "paper":
        if shard is not None or args.only:
            raise ConfigError("--only / --shard select runs to execute; --budget paper only prints commands: drop "
                              "--only / --shard, or use --budget small to execute runs")
        print("\n".join(paper_commands(cfg)))
        return 0
    if args.dry_run:
        _print_plan(cfg)
        return 0
    from repae.study.run import run_study

    result = run_study(cfg, only=args.only, shard=shard)
    if result["waiting"]:
        print(f"study: {len(result['waiting'])} run(s) wait for another shard: {', '.join(result['waiting'])}; "
              "rerun the same command when it has finished")
    return 0
