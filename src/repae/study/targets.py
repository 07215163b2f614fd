"""``repae study --extra targets``: REPA's gain against the linear-probe accuracy of its alignment target.

REPA (Yu et al. 2024) reports "better encoder, better generation": alignment targets whose features
probe better give a lower FID. The ``target-*`` rows of :data:`repae.study.plan.KINDS` train the
study's REPA recipe with three targets -- a random ``repae-vit-t4`` (same architecture, seeded init),
the shipped MAE ``repae-vit-t4`` and the shipped SimCLR ``repae-cnn-p4`` -- and this module supplies
what those rows need besides training:

* :func:`prepare_targets` writes the random target's weights once into ``<out>/targets/`` before any
  run starts (:func:`random_target_state`: :func:`repae.encoders.registry.repae_vit_t4_model` under
  a fixed seed, so the file's content -- and the fingerprint of the runs that name it -- never
  changes), and checks that every other target's weights exist (one line naming the fix);
* :func:`target_probes` gives each target's linear-probe accuracy with the protocol of
  ``repae linear-probe`` (mean-pooled patch tokens, logistic regression with weight decay 1e-4,
  embedded train split -> 1,000 embedded test images; :mod:`repae.ssl.probe`), plus raw pixels as the
  reference every target should beat. The numbers are cached in ``<out>/targets.json``: a target is
  probed again only when its entry is missing or its weights file changed (sha256). Probing takes
  about a minute per encoder on the CPU, so it happens once per study, when the report is written
  and some target run has finished;
* :func:`repa_row_target` says whether the default ``repa`` row (the preset's ``align.encoders``)
  uses one of the targets, read from its run's saved config, so the report can show it beside that
  target (it is the same training setting with more seeds, not a separate target).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repae.study.plan import KINDS, RANDOM_TARGET_SEED, Kind, Plan, RunSpec, target_weights_path
from repae.utils.io import file_sha256, write_json

#: how every target is probed (the defaults of ``repae linear-probe``); a cached entry made otherwise is redone
PROTOCOL = {"train_data": "embedded", "test_data": "embedded", "resolution": 32, "weight_decay": 1e-4,
            "features": "mean-pooled patch tokens (pixels: the grey values)", "head": "logistic regression (L-BFGS)"}
PIXELS = "pixels"  # the reference entry of targets.json (not a target)
PROBE_FILE = "targets.json"


def target_kinds(plan: Plan) -> list[str]:
    """The plan's target rows, in :data:`KINDS` order."""
    present = {r.kind for r in plan.runs}
    return [k for k, kind in KINDS.items() if kind.target and k in present]


# ---------------------------------------------------------------------------------------------
# The random target's weights
# ---------------------------------------------------------------------------------------------


def random_target_state(seed: int = RANDOM_TARGET_SEED) -> dict:
    """State dict of a randomly initialised ``repae-vit-t4`` (timm layout), a pure function of ``seed``.

    The global RNG is left as it was (``fork_rng``)."""
    import torch

    from repae.encoders.registry import repae_vit_t4_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = repae_vit_t4_model()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_random_target(path: str | Path, seed: int = RANDOM_TARGET_SEED) -> bool:
    """Write the random target's weights to ``path`` unless the file exists; True if it was written."""
    from repae.utils.io import save_safetensors

    path = Path(path)
    if path.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # one metadata entry: safetensors writes a metadata map in no fixed order, and the file must be byte-stable
    save_safetensors(path, random_target_state(seed), metadata={"repae": f"repae-vit-t4, random init., seed {seed}"})
    return True


def _weights(plan: Plan, kind: Kind) -> Path:
    """The weights file a target row's encoder loads (MissingWeightsError, one line, when there is none)."""
    from repae.encoders.registry import encoder_spec, resolve_weights

    path = target_weights_path(plan.config, kind)
    return path if path is not None else resolve_weights(encoder_spec(kind.target))


def prepare_targets(plan: Plan, runs: list[RunSpec] | None = None, *, log: Callable[[str], None] = print) -> None:
    """Before training: write the random target's weights (once) and check the other targets' weights exist.

    ``runs``: the runs this process will train (default: the whole plan); only their targets are checked.
    """
    for r in plan.runs if runs is None else runs:
        kind = KINDS[r.kind]
        if not kind.target:
            continue
        path = target_weights_path(plan.config, kind)
        if path is not None:
            if write_random_target(path):
                log(f"study: wrote the random alignment target {path} (seed {RANDOM_TARGET_SEED})")
        else:
            _weights(plan, kind)


# ---------------------------------------------------------------------------------------------
# Linear probes, cached in <out>/targets.json
# ---------------------------------------------------------------------------------------------


def probe_targets(specs: dict[str, tuple[str, str | None]], *, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Linear-probe each ``{id: (encoder, weights)}`` with :data:`PROTOCOL` -> ``{id: ProbeResult fields}``.

    ``encoder`` is a registry name or ``"pixels"``; the data are loaded once for all of them.
    """
    from dataclasses import asdict

    from repae.data import build_dataset, dataset_to_tensor
    from repae.ssl.probe import extract_features, linear_probe
    from repae.ssl.probe_encoders import token_function

    res = PROTOCOL["resolution"]
    xtr, ytr = dataset_to_tensor(build_dataset(PROTOCOL["train_data"], resolution=res, split="train"))
    xte, yte = dataset_to_tensor(build_dataset(PROTOCOL["test_data"], resolution=res, split="test"))
    out = {}
    for id_, (encoder, weights) in specs.items():
        log(f"study: linear probe of {id_} ({encoder}{', ' + str(weights) if weights else ''})")
        fn = token_function(encoder, weights=weights, resolution=res)
        ftr = extract_features(fn, xtr, progress=False)
        fte = extract_features(fn, xte, progress=False)
        out[id_] = asdict(linear_probe(ftr, ytr, fte, yte, weight_decay=PROTOCOL["weight_decay"]))
    return out


def _read(path: Path) -> dict:
    from repae.study.measure import read_json

    obj = read_json(path)
    return obj if isinstance(obj, dict) and isinstance(obj.get("targets"), dict) else {"targets": {}}


def _valid(entry: Any, want: dict) -> bool:
    return (isinstance(entry, dict) and all(entry.get(k) == v for k, v in want.items())
            and isinstance(entry.get("accuracy"), (int, float)) and math.isfinite(entry["accuracy"]))


def target_probes(plan: Plan, *, compute: bool = True, log: Callable[[str], None] = print) -> dict:
    """``{"protocol", "targets": {id: {encoder, weights, weights_sha256, accuracy, train_accuracy, ...}},
    "errors": {id: message}}`` for every target row of the plan and raw pixels (id ``"pixels"``).

    Entries come from ``<out>/targets.json``; with ``compute`` the missing or outdated ones (another
    weights file, changed file content, another protocol) are probed (:func:`probe_targets`) and the
    file is rewritten. A target whose weights cannot be found is reported under ``errors`` (and
    probed on a later call)."""
    kinds = target_kinds(plan)
    file = Path(plan.config.out) / PROBE_FILE
    cached = _read(file)["targets"]
    wanted: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for k in kinds:
        kind = KINDS[k]
        try:
            if target_weights_path(plan.config, kind) is not None and compute:
                write_random_target(target_weights_path(plan.config, kind))  # deterministic: same file
            path = _weights(plan, kind)
            sha = file_sha256(path) if path.is_file() else None
        except (OSError, ValueError) as err:  # MissingWeightsError, ConfigError
            errors[k] = str(err)
            continue
        wanted[k] = {"encoder": kind.target, "weights": str(path), "weights_sha256": sha, "protocol": PROTOCOL}
    if kinds:
        wanted[PIXELS] = {"encoder": PIXELS, "weights": None, "weights_sha256": None, "protocol": PROTOCOL}
    entries = {k: cached[k] for k, want in wanted.items() if _valid(cached.get(k), want)}
    todo = {k: (w["encoder"], w["weights"]) for k, w in wanted.items() if k not in entries}
    if compute and todo:
        for k, result in probe_targets(todo, log=log).items():  # a module global: tests replace it
            entries[k] = {**wanted[k], **result}
        merged = {**{k: v for k, v in cached.items() if k not in wanted}, **entries}
        write_json(file, {"protocol": PROTOCOL, "targets": merged})
    for k in todo:
        if k not in entries:
            errors.setdefault(k, "not probed yet (probed when the report is written after a target run finished)")
    return {"protocol": PROTOCOL, "targets": entries, "errors": errors}


# ---------------------------------------------------------------------------------------------
# The default repa row
# ---------------------------------------------------------------------------------------------


def run_alignment(plan: Plan, run: RunSpec) -> tuple[list[str], list[str | None]]:
    """``(align.encoders, align.encoder_weights)`` of a run: its saved ``config.json`` when it has started
    (what it was trained with), else its overrides resolved on the preset (what it will be trained with)."""
    from repae.study.measure import read_json

    saved = read_json(run.run_dir(plan.config.out) / "config.json")
    align = saved.get("align") if isinstance(saved, dict) else None
    if isinstance(align, dict) and isinstance(align.get("encoders"), list):
        return list(align["encoders"]), list(align.get("encoder_weights") or [])
    from repae.config import load_config

    cfg = load_config(plan.config.preset, list(run.overrides))
    return list(cfg.align.encoders), list(cfg.align.encoder_weights)


def repa_row_target(plan: Plan) -> str | None:
    """The target row whose alignment target the default ``repa`` row uses (the preset's encoder with its
    packaged weights), or None (no repa row, another encoder, or explicit weights)."""
    runs = plan.by_kind().get("repa")
    if not runs:
        return None
    encoders, weights = run_alignment(plan, runs[0])
    if any(weights):
        return None
    for k in target_kinds(plan):
        kind = KINDS[k]
        if not kind.target_weights and encoders == [kind.target]:
            return k
    return None
