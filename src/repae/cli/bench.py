"""``repae bench``: seconds per training step, images per second and peak memory (see :mod:`repae.training.bench`).

``--profile`` adds a profile of one extra step (top ops, host syncs, graph breaks); ``--sweep
KEY=V1,V2,...`` runs the bench once per value, each on a fresh trainer in this process, and prints
a markdown cost table (an out-of-memory value is an ``OOM`` row and the sweep goes on).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch

from repae.cli.argtypes import finite_float, nonneg_int
from repae.config import load_config
from repae.errors import ConfigError
from repae.training.bench import _random_vgg, bench, reset_peak_rss

_SWEEP_HELP = "--sweep KEY=V1,V2,... (e.g. --sweep train.batch_size=8,16,32)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="fmnist", help="preset name or YAML path")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile, allocator)")
    parser.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--json", default=None,
                        help="also write the figures to this JSON file (with --sweep: the list of rows)")
    parser.add_argument("--flops", action="store_true",
                        help="count the FLOPs of one step (torch.utils.flop_counter) and report achieved TFLOP/s")
    parser.add_argument("--peak-tflops", type=finite_float, default=0.0,
                        help="accelerator peak (e.g. 989 for H100 bf16 dense) to report MFU = achieved / peak")
    parser.add_argument("--profile", action="store_true",
                        help="profile one extra step (torch.profiler): top ops by self time, host syncs per "
                             "step, torch.compile graph breaks; the timed steps are not profiled")
    parser.add_argument("--profile-top", type=int, default=15, help="ops listed by --profile (default 15)")
    parser.add_argument("--sweep", action="append", default=None, metavar="KEY=V1,V2,...",
                        help="run the bench once per value of one config key (fresh trainer each) and print "
                             "a markdown table, e.g. --sweep train.batch_size=8,16,32")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="bench sampling instead of training: seconds per batch of N images (solver with the "
                             "config's sample.* settings, then decode), median of --steps batches")
    parser.add_argument("--sample-precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="with --sample: the network's autocast precision (as `repae sample --precision`)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides (model.preset=SiT-B/2 ...)")


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so list values stay whole: ``[a,b],[c]`` -> ``[a,b]``, ``[c]``."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [*values, current]


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``section.key=v1,v2`` -> (key, [v1, v2]); one line naming the fix otherwise."""
    if "=" not in text:
        raise ConfigError(f"--sweep '{text}' has no '=': write {_SWEEP_HELP}")
    key, raw = (part.strip() for part in text.split("=", 1))
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--sweep key '{key}' must be section.key: write {_SWEEP_HELP}")
    values = [v.strip() for v in _split_values(raw)]
    if not raw or not all(values):
        raise ConfigError(f"--sweep '{text}' has an empty value: give comma-separated values, {_SWEEP_HELP}")
    return key, values


def _check_args(args: argparse.Namespace) -> None:
    if args.profile_top < 1:
        raise ConfigError(f"--profile-top {args.profile_top} must be >= 1 (the number of ops to list)")
    if args.steps < 1:
        raise ConfigError(f"--steps {args.steps} must be >= 1 (the timed steps)")
    if args.warmup < 0:
        raise ConfigError(f"--warmup {args.warmup} must be >= 0")
    if args.sample < 0:
        raise ConfigError(f"--sample {args.sample} must be >= 1 (images per batch), or leave it out to bench training")
    if args.sample and (args.profile or args.flops):
        raise ConfigError("--profile and --flops measure a training step; leave them out with --sample")
    if args.sweep and len(args.sweep) > 1:
        raise ConfigError("--sweep given more than once: sweep one key per run (--sweep KEY=V1,V2,...)")


def _config(args: argparse.Namespace, tmp: Path, extra: list[str]):
    tmp.mkdir(parents=True, exist_ok=True)
    overrides = [f"train.output_dir={tmp}", "train.resume=false", "train.report_to=none", *args.overrides, *extra]
    cfg = load_config(args.config, overrides)
    cfg.align.encoder_weights = []
    if cfg.lreg.perceptual == "lpips" and not cfg.lreg.vgg_weights and not getattr(args, "sample", 0):
        cfg.lreg.vgg_weights = _random_vgg(tmp)
    return cfg


def _bench(cfg, args: argparse.Namespace) -> dict:
    if args.sample:
        from repae.sampling.bench import bench_sampling

        return bench_sampling(cfg, batch=args.sample, steps=args.steps, warmup=args.warmup, device=args.device,
                              precision=args.sample_precision, channels_last=cfg.train.channels_last)  # true/false/auto
    return bench(cfg, steps=args.steps, warmup=args.warmup, device=args.device, count_flops=args.flops,
                 peak_tflops=args.peak_tflops, profile=args.profile, profile_top=args.profile_top)


def _line(result: dict) -> str:
    """The ``key=value`` line of the scalar figures (the profile's lists are printed as a table)."""
    return " ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (list, dict)))


def format_profile(result: dict) -> str:
    """The profile of a bench result as an aligned table plus the host-sync and graph-break lines."""
    rows = result["profile_top_ops"]
    gpu = any("self_cpu_ms" in r for r in rows)
    head = ["op", "self GPU ms" if gpu else "self ms", "% step", *(["self CPU ms"] if gpu else []), "calls"]
    table = [[r["op"][:70], f"{r['self_ms']:.3f}", f"{r['pct']:.2f}",
              *([f"{r['self_cpu_ms']:.3f}"] if gpu else []), str(r["calls"])] for r in rows]
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [f"profile of one extra step: {result['profile_step_ms']:.1f} ms wall (profiler overhead included), "
             f"{result['profile_ops_pct']:.1f} % of it in ops (the rest: Python, untraced work); "
             f"top {len(rows)} by {result['profile_sort']}:",
             fmt(head), fmt(["-" * w for w in widths]), *map(fmt, table)]
    syncs = ", ".join(f"{k} {v}" for k, v in result["host_syncs"].items()) or "none"
    where = ("" if result["device"].startswith("cuda") else
             " (cpu: the item()/nonzero reads that would synchronise on a GPU; .tolist()/.cpu() reads are"
             " not visible on a cpu)")
    lines.append(f"host syncs per step: {result['host_syncs_per_step']}{where} [{syncs}]")
    if result.get("host_reads_in_optimizer"):
        lines.append(f"  + {result['host_reads_in_optimizer']} item() reads of the optimizers' CPU step counters "
                     "(torch.optim, not capturable: never a device sync, not counted)")
    if result["graph_breaks"] is None:
        lines.append("graph breaks: n/a (compile off)")
    else:
        lines.append(f"graph breaks: {result['graph_breaks']}")
        lines += [f"  - {reason}" for reason in result["graph_break_reasons"]]
    return "\n".join(lines)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else "–"


def sweep_table(key: str, rows: list[dict], *, gpu: bool, flops: bool, sample: bool = False) -> list[str]:
    """The markdown cost table of a sweep: one line per value, ``OOM`` where a value ran out of memory."""
    timing = ["s/batch", "solver s", "decode s"] if sample else ["s/step"]
    head = [key, *timing, "img/s", "peak RSS GB", *(["peak GPU GB"] if gpu else []),
            *(["TFLOP/step", "achieved TFLOP/s", "MFU"] if flops else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = ("sec_per_batch", "solver_s", "decode_s") if sample else ("sec_per_step",)
    for row in rows:
        if row.get("oom"):
            cells = ["OOM"] + [""] * (len(head) - 2)
        else:
            cells = [*(_cell(row, k, ".4f") for k in keys), _cell(row, "img_per_s", ".2f"),
                     _cell(row, "peak_rss_gb", ".2f"), *([_cell(row, "peak_gpu_mem_gb", ".2f")] if gpu else []),
                     *([_cell(row, "tflop_per_step", ".3f"), _cell(row, "achieved_tflops", ".2f"),
                        f"{100 * row['mfu']:.1f} %" if row.get("mfu") is not None else "–"] if flops else [])]
        lines.append("| " + " | ".join([row["sweep_value"], *cells]) + " |")
    return lines


def _run_sweep(args: argparse.Namespace, tmp: Path) -> list[dict]:
    key, values = parse_sweep(args.sweep[0])
    for value in values:  # every value must resolve before the first (possibly long) bench starts
        load_config(args.config, [*args.overrides, f"{key}={value}"])
    rows, rss_reset, gpu = [], True, False
    for i, value in enumerate(values):
        cfg = _config(args, tmp / f"value-{i}", [f"{key}={value}"])
        rss_reset = reset_peak_rss() and rss_reset
        row: dict = {"sweep_key": key, "sweep_value": value}
        error = None
        try:
            row.update(_bench(cfg, args))
        except Exception as err:  # noqa: BLE001 - only an out-of-memory is a measurement; the rest re-raise
            if not _is_oom(err):
                raise
            error = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        del cfg
        gc.collect()  # the failed trainer's tensors go with the exception's frames
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if error is not None:
            row.update(oom=True, error=error)
            print(f"[{key}={value}] OOM: {error}")
        else:
            gpu = gpu or row["device"].startswith("cuda")
            print(f"[{key}={value}] {_line({k: v for k, v in row.items() if not k.startswith('sweep_')})}")
            if args.profile:
                print(format_profile(row))
        rows.append(row)
    done = [r for r in rows if not r.get("oom")]
    where = done[0]["device"] if done else (args.device or "default device")
    what = (f"median of {args.steps} batches of {args.sample} images after {args.warmup} warm-up; a fresh "
            "generator per value" if args.sample else
            f"median of {args.steps} steps after {args.warmup} warm-up; a fresh trainer per value")
    print(f"\n{key} sweep ({args.config}, {where}, threads={done[0]['threads'] if done else '?'}; {what}, "
          "one process)")
    if rss_reset:
        print("peak RSS: process peak during each value (the mark is reset before each one via "
              "/proc/self/clear_refs; memory the allocator kept from earlier values still counts)")
    else:
        print("peak RSS: process high-water mark since start (getrusage; it never goes down, so a value's "
              "figure includes the peaks of the values before it)")
    print()
    print("\n".join(sweep_table(key, rows, gpu=gpu, flops=args.flops, sample=bool(args.sample))))
    return rows


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.json:
        from repae.utils.io import check_output_path

        check_output_path(args.json, folder=False, what="--json")  # before the bench, not after it
    if args.sweep:
        parse_sweep(args.sweep[0])  # bad input fails before torch threads or temp folders
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sweep:
            result: dict | list[dict] = _run_sweep(args, Path(tmp))
        else:
            result = _bench(_config(args, Path(tmp), []), args)
            print(_line(result))
            if args.profile:
                print(format_profile(result))
    if args.json:
        from repae.utils.io import write_json

        write_json(args.json, result)
    return 0
