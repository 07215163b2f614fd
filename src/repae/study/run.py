"""Execute a study plan resumably: each run is a ``repae`` run folder ``<out>/runs/<name>``.

* A finished run (``study/done.json``) is skipped; an interrupted one resumes from its latest
  checkpoint (the trainer's own resume: checkpoints every ``eval_every`` steps), so a killed study
  continues where it stopped when the same command is given again.
* Independent runs can be launched in parallel processes: ``--only NAME[,NAME]`` or ``--shard i/n``
  (:meth:`repae.study.plan.Plan.select`; a drop-in run lands in the shard of the repa-e run whose
  E2E-VAE it uses). Two processes never train one run folder (the trainer's run lock).
* Before each run one progress line names it, with the study's ETA; after it one line gives its
  time, FD and the remaining ETA (the cost model of :mod:`repae.study.plan`, rescaled by the
  measured/predicted ratio of the runs this process has finished).
* A finished run whose latent analysis predates the image-variance measure gets it added
  (:func:`repae.study.measure.backfill_image_variance`; the run is not trained or sampled again).
* ``--extra targets``: before any run starts, the random alignment target's weights are written
  once into ``<out>/targets/`` and the other targets' weights are checked
  (:func:`repae.study.targets.prepare_targets`).
* Each invocation ends by writing the report of everything finished so far
  (:func:`repae.study.report.write_report`).

A run's folder records the fingerprint of the settings it was made with (``study/run.json``); the
same ``--out`` with other settings is an error naming the fix, never a silent mix. The settings name
weights files (``align.encoders=repae-cnn-p4`` resolves to a packaged file that
``scripts/make_encoder_asset.py`` rewrites), so the run also records the sha256 of every weights file it
reads from outside its own folder (:func:`run_inputs`); a changed file makes the run stale in the same way.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from repae.errors import ConfigError
from repae.study.measure import FDCurveHook, StudyEvaluator, backfill_image_variance, evaluate_run, read_json
from repae.study.plan import KINDS, Plan, RunSpec, StudyConfig, build_plan, estimate_seconds
from repae.study.targets import prepare_targets
from repae.utils.io import file_sha256, write_json


def is_done(spec: RunSpec, cfg: StudyConfig) -> bool:
    done = read_json(spec.run_dir(cfg.out) / "study" / "done.json")
    return (isinstance(done, dict) and done.get("fingerprint") in spec.fingerprints(cfg)
            and not changed_inputs(done.get("inputs"), run_inputs(spec, cfg)))


# ---------------------------------------------------------------------------------------------
# The weights files a run reads, by content
# ---------------------------------------------------------------------------------------------

_SHA_CACHE: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


#: the files of a tokenizer folder that decide what it computes (its record.json or export note do not)
_FOLDER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json")
_FOLDER_IGNORED = ("record.json",)


def content_sha256(path: str | Path) -> str | None:
    """sha256 of a file, or of a folder (relative paths and contents of its weights and config files, sorted);
    None if absent."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _FOLDER_SUFFIXES
                    and p.name not in _FOLDER_IGNORED):
        h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n".encode())
    return h.hexdigest()


def run_inputs(spec: RunSpec, cfg: StudyConfig) -> dict[str, str]:
    """``{what: sha256}`` of the weights files the run reads that its settings name but do not pin:
    the alignment targets (recipes that align), the tokenizer it starts from (unless from scratch) and an
    RAE tokenizer's frozen encoder. A file that cannot be resolved (yet: a drop-in row before the E2E-VAE
    it uses is exported) is left out; the run itself fails on it with the loader's message."""
    from repae.config import load_config
    from repae.encoders.registry import encoder_spec, resolve_weights
    from repae.tokenizer.registry import RAE_PRESET, resolve_tokenizer_weights
    from repae.training.recipes import get_recipe

    run_cfg = load_config(cfg.preset, [o for o in spec.overrides if not o.startswith("train.output_dir=")])
    recipe = get_recipe(spec.recipe)
    wanted: dict[str, Callable[[], Path | str | None]] = {}

    def encoder(name: str, weights: str | None) -> Callable[[], Path]:
        return lambda: resolve_weights(encoder_spec(name), weights)

    if recipe.sit_align or recipe.vae_align:
        given = list(run_cfg.align.encoder_weights or [])
        for i, name in enumerate(run_cfg.align.encoders or []):
            wanted[f"align.encoders[{i}] {name}"] = encoder(name, given[i] if i < len(given) else None)
    if not recipe.vae_random_init and run_cfg.tokenizer.weights:
        wanted["tokenizer.weights"] = lambda: resolve_tokenizer_weights(run_cfg.tokenizer.weights)
    if run_cfg.tokenizer.preset == RAE_PRESET:
        wanted[f"tokenizer.rae_encoder {run_cfg.tokenizer.rae_encoder}"] = encoder(
            run_cfg.tokenizer.rae_encoder, run_cfg.tokenizer.rae_encoder_weights)
    out = {}
    for what, resolve in wanted.items():
        try:
            sha = content_sha256(resolve())
        except (OSError, ValueError, TypeError):  # MissingWeightsError, ConfigError: the run reports it itself
            sha = None
        if sha is not None:
            out[what] = sha
    return out


def changed_inputs(recorded, current: dict[str, str]) -> list[str]:
    """The inputs whose recorded content differs from today's (a run that recorded none: nothing)."""
    if not isinstance(recorded, dict):
        return []
    return sorted(k for k, sha in recorded.items() if k in current and current[k] != sha)


def record_inputs(spec: RunSpec, cfg: StudyConfig) -> bool:
    """Add today's :func:`run_inputs` to a finished run that predates the record (2026-12-06 (4)); True if
    written. Such a run was made with the files present when the record was introduced."""
    path = spec.run_dir(cfg.out) / "study" / "done.json"
    done = read_json(path)
    if not isinstance(done, dict) or "inputs" in done:
        return False
    write_json(path, {**done, "inputs": run_inputs(spec, cfg)})
    return True


def check_fingerprint(spec: RunSpec, cfg: StudyConfig) -> None:
    """A run folder made with other settings, or with other contents of the weights files its settings
    name, is an error (one line naming the fix)."""
    marker = read_json(spec.run_dir(cfg.out) / "study" / "run.json")
    for name in ("done.json", "run.json"):
        recorded = read_json(spec.run_dir(cfg.out) / "study" / name)
        changed = changed_inputs(recorded.get("inputs") if isinstance(recorded, dict) else None,
                                 run_inputs(spec, cfg))
        if changed:
            raise ConfigError(f"{spec.run_dir(cfg.out)} was made with other weights ({'; '.join(changed)}: the "
                              f"file's content changed since): restore it, pass another --out or delete that "
                              f"run folder")
    if isinstance(marker, dict) and marker.get("fingerprint") not in spec.fingerprints(cfg):
        from repae.config import _renamed

        old = {(_renamed(k) or k): v for k, v in marker.get("settings", {}).items()}  # keys under today's names
        new = _run_settings(spec, cfg)
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        what = "; ".join(diff[:3]) or f"the resolved preset {cfg.preset!r} changed (a default or a new key)"
        raise ConfigError(f"{spec.run_dir(cfg.out)} was made with other settings ({what}): "
                          f"pass another --out or delete that run folder")


def _run_settings(spec: RunSpec, cfg: StudyConfig) -> dict:
    d = {"preset": cfg.preset, **{f"eval.{k}": v for k, v in cfg.settings().items() if k != "overrides"}}
    for o in spec.overrides:
        key, _, value = o.partition("=")
        if key not in ("train.output_dir", "train.threads"):
            d[key] = value
    return d


def check_tokenizer(cfg: StudyConfig, plan: Plan) -> None:
    """The "VAE init." tokenizer exists (one line naming the fix otherwise), before anything is trained."""
    from repae.tokenizer.registry import SHIPPED_TOKENIZERS, resolve_tokenizer_weights

    if not any(KINDS[r.kind].tokenizer == "init" for r in plan.runs):
        return
    if cfg.tokenizer in SHIPPED_TOKENIZERS:
        from repae.errors import MissingWeightsError

        try:
            resolve_tokenizer_weights(cfg.tokenizer)
        except MissingWeightsError as err:
            raise ConfigError(f"{err}; or pass --tokenizer FOLDER (a tokenizer saved by export-vae / "
                              "save_pretrained)") from None
    elif not Path(cfg.tokenizer).exists():
        raise ConfigError(f"--tokenizer {cfg.tokenizer!r} does not exist: pass a tokenizer folder (export-vae / "
                          f"save_pretrained), a VAE weights file, or a shipped name ({', '.join(SHIPPED_TOKENIZERS)})")


class Progress:
    """One line before and after every run, with the study's ETA."""

    def __init__(self, runs: list[RunSpec], cfg: StudyConfig, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.runs = runs
        self.predicted = {r.name: estimate_seconds(r, cfg)["total"] for r in runs}
        self.measured: list[tuple[float, float]] = []  # (predicted, actual) of runs done in this process
        self.pending = [r.name for r in runs]
        self.t0 = time.perf_counter()

    def _scale(self) -> float:
        if not self.measured:
            return 1.0
        return sum(a for _, a in self.measured) / max(sum(p for p, _ in self.measured), 1e-9)

    def eta_minutes(self) -> float:
        return self._scale() * sum(self.predicted[n] for n in self.pending) / 60

    def _prefix(self, spec: RunSpec) -> str:
        i = [r.name for r in self.runs].index(spec.name) + 1
        return f"study [{i}/{len(self.runs)}] {spec.name}"

    def _basis(self) -> str:
        return "measured" if self.measured else "estimated"

    def start(self, spec: RunSpec) -> None:
        elapsed = (time.perf_counter() - self.t0) / 60
        self.log(f"{self._prefix(spec)} ({spec.recipe}, seed {spec.seed}, {self.cfg.steps} steps x "
                 f"{self.cfg.batch_size}): start | elapsed {elapsed:.1f} min, study ETA {self.eta_minutes():.1f} min "
                 f"({self._basis()})")

    def finish(self, spec: RunSpec, seconds: float, result: dict | None) -> None:
        self.pending.remove(spec.name)
        self.measured.append((self.predicted[spec.name], seconds))
        fd = (result or {}).get("fid")
        acc = (result or {}).get("class_accuracy")
        numbers = (f"FD {fd:.2f}" if isinstance(fd, (int, float)) else "FD n/a") + (
            f", class acc {acc:.3f}" if isinstance(acc, (int, float)) else "")
        self.log(f"{self._prefix(spec)}: done in {seconds / 60:.1f} min ({numbers}) | {len(self.pending)} runs left, "
                 f"ETA {self.eta_minutes():.1f} min ({self._basis()})")

    def skip(self, spec: RunSpec, why: str) -> None:
        self.pending.remove(spec.name)
        self.log(f"{self._prefix(spec)}: {why}")


def _export(run_dir: Path) -> None:
    from repae.training.export import export_vae

    target = run_dir / "e2e-vae"
    tmp = run_dir / "e2e-vae.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_vae(run_dir, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def run_one(spec: RunSpec, cfg: StudyConfig, evaluator: StudyEvaluator) -> dict:
    """Train (or resume) one run, export its VAE if it trains one, evaluate it, mark it done."""
    from repae.config import load_config
    from repae.training.trainer import Trainer

    run_dir = spec.run_dir(cfg.out)
    check_fingerprint(spec, cfg)
    (run_dir / "study").mkdir(parents=True, exist_ok=True)
    inputs = run_inputs(spec, cfg)
    write_json(run_dir / "study" / "run.json", {"fingerprint": spec.fingerprint(cfg), "name": spec.name,
                                                "kind": spec.kind, "settings": _run_settings(spec, cfg),
                                                "overrides": list(spec.overrides), "inputs": inputs})
    run_cfg = load_config(cfg.preset, list(spec.overrides))
    generates = KINDS[spec.kind].family != ""  # "": a tokenizer-only row (its SiT row evaluates it)
    t0 = time.perf_counter()
    hooks = [FDCurveHook(evaluator, every=cfg.eval_every, num_samples=cfg.curve_n,
                         path=run_dir / "study" / "fd_curve.json")] if generates else []
    trainer = Trainer(run_cfg, hooks=hooks)
    trainer.fit()
    train_vae = trainer.recipe.train_vae
    del trainer
    if train_vae and _stale(run_dir):
        _export(run_dir)
    t1 = time.perf_counter()
    result = evaluate_run(run_dir, evaluator) if generates else {}
    t2 = time.perf_counter()
    write_json(run_dir / "study" / "done.json", {  # written last: the run's "finished" marker
        "fingerprint": spec.fingerprint(cfg), "name": spec.name, "step": result.get("step") if result else None,
        "train_seconds": round(t1 - t0, 1),  # this process's share when the run was resumed
        "eval_seconds": round(t2 - t1, 1),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "inputs": run_inputs(spec, cfg),  # after training: a drop-in row's E2E-VAE exists by now
    })
    result = result or {}
    result.update(train_seconds=round(t1 - t0, 1), eval_seconds=round(t2 - t1, 1))
    return result


def _stale(run_dir: Path) -> bool:
    """No exported E2E-VAE yet, or one older than the latest checkpoint (a run continued after an export)."""
    from repae.training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    cfg_file = run_dir / "e2e-vae" / "config.json"
    return ckpt is not None and (not cfg_file.is_file() or cfg_file.stat().st_mtime < ckpt.stat().st_mtime)


def run_study(cfg: StudyConfig, *, only: list[str] | None = None, shard: tuple[int, int] | None = None,
              report: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (the selected part of) the study, then write its report. Returns ``{"ran", "skipped", "waiting",
    "report"}`` (run names and report paths)."""
    plan = build_plan(cfg)
    selected = plan.select(only, shard)
    names = {r.name for r in selected}
    if only:
        for r in selected:
            if r.depends_on and r.depends_on not in names and not is_done(plan.get(r.depends_on), cfg):
                raise ConfigError(f"{r.name} trains on the tokenizer of {r.depends_on}, which is not finished: "
                                  f"run it first (--only {r.depends_on}) or together (--only {r.depends_on},{r.name})")
    check_tokenizer(cfg, plan)
    for r in selected:  # fail on a mixed-up --out before hours of training, not in the middle
        check_fingerprint(r, cfg)
        record_inputs(r, cfg)  # a run finished before the record: the files it was made with are today's
    # --extra targets: the random target's weights file (once, seeded) and the other targets' weights exist
    prepare_targets(plan, [r for r in selected if not is_done(r, cfg)], log=log)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    evaluator = StudyEvaluator(cfg, device)
    progress = Progress(selected, cfg, log)
    ran, skipped, waiting = [], [], []
    for spec in selected:
        if is_done(spec, cfg):
            added = backfill_image_variance(spec.run_dir(cfg.out), evaluator)  # analyses older than the measure
            progress.skip(spec, "finished earlier, skipped" + (" (image variance added to its analysis)" if added
                                                               else ""))
            skipped.append(spec.name)
            continue
        if spec.depends_on and not is_done(plan.get(spec.depends_on), cfg):
            progress.skip(spec, f"waiting for {spec.depends_on} (its tokenizer); rerun when it has finished")
            waiting.append(spec.name)
            continue
        progress.start(spec)
        t0 = time.perf_counter()
        result = run_one(spec, cfg, evaluator)
        progress.finish(spec, time.perf_counter() - t0, result)
        ran.append(spec.name)
    paths = {}
    if report:
        from repae.study.report import write_report

        paths = write_report(plan, log=log)
        log(f"study: report -> {paths['html']} ({paths['md'].name}, {paths['json'].name})")
    return {"ran": ran, "skipped": skipped, "waiting": waiting, "report": paths}
