"""The study's report: ``report.html`` (self-contained), ``report.md`` (+ ``figures/*.png``) and ``results.json``.

Contents, from the finished runs only (:func:`repae.study.measure.collect_run`):

1. the settings and what the numbers are (offline ``evalnet-fmnist`` feature space at the small
   budget: NOT comparable with published FID);
2. the paper's claims (:data:`repae.study.claims.CLAIMS`), each marked holds / does not hold /
   inconclusive by :func:`repae.study.claims.mark` with the numbers behind the mark;
3. tables in the layout of the seed's tables (``../shared/seed/repa-e-presentation.txt``):
   generation at equal budget (system table), FD at each step ("100K / 200K / 400K Iterations"),
   the component ablation (paper Table 6), the naive end-to-end table (sec. 3.1), the drop-in
   tokenizer table ("The impact of end-to-end tuning", sec. 4.3) and the tokenizer table (rFID);
   with ``--extra targets`` the "REPA gain against target quality" table (each alignment target's
   linear-probe accuracy from :mod:`repae.study.targets` beside its FD); with ``--extra rae`` the RAE
   row (frozen-encoder tokenizer + DiT^DH generator) beside REPA-E's rows;
   every cell is the mean over seeds ``± sample standard deviation`` when there are several;
4. FD vs step of every row on one axis, and the latent PCA views of every row side by side; with
   ``--extra targets``, final FD against the target's probe accuracy (``figures/fd-vs-probe.png``).

Nothing here selects, reorders or drops numbers depending on their values.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from repae.study.claims import CLAIMS, FAILS, HOLDS, INCONCLUSIVE, evaluate_claims, mean_sd
from repae.study.measure import RESULT_KEYS, collect_run, read_json
from repae.study.plan import KINDS, RANDOM_TARGET_SEED, Plan, curve_points
from repae.study.targets import PIXELS, repa_row_target, target_kinds, target_probes
from repae.utils.io import write_json

# (key, header) of the sample-metric columns, as in the seed's tables
GEN_COLS = (("fid", "gFID↓"), ("sfid", "sFID↓"), ("inception_score", "IS↑"), ("precision", "Prec.↑"),
            ("recall", "Rec.↑"), ("class_accuracy", "class acc.↑"))
DIGITS = {"fid": 2, "sfid": 2, "inception_score": 2, "precision": 3, "recall": 3, "class_accuracy": 3, "rfid": 2,
          "psnr": 2, "ssim": 3, "latent_sv": 4, "latent_tv": 4, "latent_tv_sum": 1, "latent_sv_seen": 3,
          "latent_tv_over_sqrt_sv": 3, "cknna": 3, "latent_cknna": 3, "latent_image_variance": 4,
          "latent_image_variance_fraction": 3}
MARK_BADGE = {HOLDS: "✅ holds", FAILS: "❌ does not hold", INCONCLUSIVE: "➖ inconclusive"}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def gather(plan: Plan) -> dict[str, dict | None]:
    """``{run name: result}`` for every planned run (None: not finished)."""
    out = {}
    for r in plan.runs:
        out[r.name] = collect_run(r.run_dir(plan.config.out), final_step=plan.config.steps)
    return out


def row_values(plan: Plan, results: dict[str, dict | None]) -> dict[str, dict[str, list[float]]]:
    """``{metric: {kind: [value of each finished seed]}}``."""
    values: dict[str, dict[str, list[float]]] = {k: {} for k in RESULT_KEYS}
    for r in plan.runs:
        res = results.get(r.name)
        if not res:
            continue
        for k in RESULT_KEYS:
            v = res.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                values[k].setdefault(r.kind, []).append(float(v))
    return values


def curve_values(plan: Plan, results: dict[str, dict | None]) -> dict[str, dict[int, list[float]]]:
    """``{kind: {step: [FD of each seed]}}`` from the FD-vs-step curves."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in plan.runs:
        res = results.get(r.name)
        for step, fd in (res or {}).get("fd_curve", []):
            if isinstance(fd, (int, float)) and math.isfinite(fd):
                out.setdefault(r.kind, {}).setdefault(int(step), []).append(float(fd))
    return out


def summary(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    m, s = mean_sd(values)
    return {"mean": m, "sd": s, "n": len(values), "values": values}


def fmt(values: list[float] | None, key: str) -> str:
    """"12.34 ± 0.56" (several seeds), "12.34" (one), "–" (none)."""
    if not values:
        return "–"
    d = DIGITS.get(key, 3)
    m, s = mean_sd(values)
    return f"{m:.{d}f}" + (f" ± {s:.{d}f}" if s is not None else "")


# ---------------------------------------------------------------------------------------------
# Tables (data; rendered to markdown and HTML below)
# ---------------------------------------------------------------------------------------------


def _table(id_: str, title: str, source: str, columns: list[str], rows: list, note: str = "") -> dict:
    """A table as data; a section heading with no row under it (its rows are not in the study) is dropped."""
    kept = [r for i, r in enumerate(rows)
            if "cells" in r or (i + 1 < len(rows) and "cells" in rows[i + 1])]
    return {"id": id_, "title": title, "source": source, "columns": columns, "rows": kept, "note": note}


def build_tables(plan: Plan, results: dict[str, dict | None], probes: dict | None = None) -> list[dict]:
    """The report's tables; ``probes``: :func:`repae.study.targets.target_probes` (the targets table's
    probe column; None: not probed)."""
    cfg = plan.config
    values = row_values(plan, results)
    curves = curve_values(plan, results)
    kinds = {r.kind for r in plan.runs}
    sit = _sit_name(plan)

    def n(kind: str) -> str:
        got = len(values["fid"].get(kind, []))
        want = len(plan.by_kind().get(kind, []))
        return f"{got}/{want}"

    def cells(kind: str, keys) -> list[str]:
        return [fmt(values[k].get(kind), k) for k in keys]

    gen_keys = [k for k, _ in GEN_COLS]
    gen_heads = [h for _, h in GEN_COLS]
    tables = []
    # 1. system-level table: Method | Tokenizer | Steps | gFID | sFID | IS | Prec | Rec
    rows: list = [{"section": "Without End-to-End Tuning"}]
    rows += [{"cells": [KINDS[k].label, "VAE init. (frozen)", str(cfg.steps), n(k), *cells(k, gen_keys)]}
             for k in ("vanilla", "repa") if k in kinds]
    rows += [{"section": "With End-to-End Tuning"}]
    rows += [{"cells": [KINDS[k].label, "VAE init. -> E2E-VAE", str(cfg.steps), n(k), *cells(k, gen_keys)]}
             for k in ("repa-e",) if k in kinds]
    tables.append(_table("main", "Generation at equal budget", "seed 'Significantly improve generation performance "
                         "and training speed' (system-level comparison; paper sec. 4)",
                         ["Method", "Tokenizer", "Steps", "seeds", *gen_heads], rows))
    # 2. FD at each step: REPA / REPA-E (scratch) / REPA-E (VAE init.)
    order = [k for k in ("repa", "repa-e-scratch", "repa-e") if k in kinds]
    rows = []
    for step in curve_points(cfg):
        rows.append({"section": f"{step} steps ({step * cfg.batch_size:,} images), FD on {cfg.curve_n} samples"})
        rows += [{"cells": [KINDS[k].label, fmt(curves.get(k, {}).get(step), "fid"), "", "", "", ""]} for k in order]
    rows.append({"section": f"{cfg.steps} steps, final evaluation on {cfg.eval_samples} samples"})
    rows += [{"cells": [KINDS[k].label, *cells(k, gen_keys[:5])]} for k in order]
    tables.append(_table("iterations", "FD during training", "seed '100K / 200K / 400K Iterations' (REPA vs REPA-E "
                         "(scratch) vs REPA-E (VAE init.); paper sec. 4.2)", ["Method", *gen_heads[:5]], rows,
                         note="intermediate rows: FD only (the curve's sample count)"))
    # 3. component ablation (paper Table 6)
    order = [k for k in ("no-stopgrad", "no-normalizer", "no-lreg", "repa-e") if k in kinds]
    rows = [{"cells": [KINDS[k].label if k != "repa-e" else "REPA-E (Ours)", n(k), *cells(k, gen_keys[:5])]}
            for k in order]
    tables.append(_table("ablation", "Component ablation", "paper Table 6 (seed 'Component')",
                         ["Component", "seeds", *gen_heads[:5]], rows))
    # 4. naive end-to-end tuning (sec. 3.1)
    keys = ["latent_sv", "latent_tv", "latent_tv_sum", "latent_sv_seen", "latent_image_variance",
            "latent_image_variance_fraction", "cknna", "fid"]
    labels = {"repa": "w/o E2E Tuning", "repa-e": "E2E w/ REPA Loss", "e2e-diffusion": "E2E w/ Diff. Loss"}
    rows = [{"cells": [labels[k], n(k), *cells(k, keys)]} for k in ("repa", "repa-e", "e2e-diffusion") if k in kinds]
    tables.append(_table("collapse", "Naive end-to-end tuning", "seed 'Naive End-to-End Tuning is Ineffective' "
                         "(paper sec. 3.1: spatial variance 17.06 / 18.02 / 0.02, total variation 6627 / 5516 / 90)",
                         ["Training Strategy", "seeds", "Spatial Variance", "Total Variation", "TV (sum)",
                          "SV seen by SiT", "Image Variance", "IV / SV", "CKNNA", "gFID↓"], rows,
                         note="posterior mean on the analysis images; 'w/o E2E Tuning' = the frozen VAE init. "
                         "(measured in the REPA runs); image variance = the part of SV that changes between images "
                         "(0: the same map for every image; not in the paper); SV/TV/IV definitions: "
                         "repae.analysis.latent_stats"))
    # 5. drop-in: VAE | Diffusion model | REPA | gFID
    spec = [("vanilla", "VAE init.", "×"), ("dropin-vanilla", "E2E-VAE (Ours)", "×"),
            ("repa", "VAE init.", "✓"), ("dropin-repa", "E2E-VAE (Ours)", "✓"),
            ("dit", "VAE init.", "×"), ("dropin-dit", "E2E-VAE (Ours)", "×"),
            ("dit-repa", "VAE init.", "✓"), ("dropin-dit-repa", "E2E-VAE (Ours)", "✓")]
    rows = [{"cells": [vae, _model_name(plan, k, sit), repa, n(k),
                       *cells(k, ["fid", "sfid", "inception_score", "class_accuracy"])]}
            for k, vae, repa in spec if k in kinds]
    tables.append(_table("dropin", "The E2E-VAE as a drop-in tokenizer", "seed 'The impact of end-to-end tuning' "
                         "(paper sec. 4.3; a fresh diffusion model on each frozen tokenizer; DiT-XL: SD-VAE 19.82 / "
                         "E2E-VAE 6.75 without REPA, 12.29 / 4.20 with)",
                         ["VAE", "Diffusion model", "REPA", "seeds", "gFID↓", "sFID↓", "IS↑", "class acc.↑"], rows,
                         note="E2E-VAE = the tokenizer exported by the REPA-E (VAE init.) run of the same seed"
                         + ("; DiT rows: DDPM objective, sampled with DDIM (eta 0) at the study's step count"
                            if "dit" in kinds or "dropin-dit" in kinds else "")))
    # 7. tokenizer regularisers: a fresh vanilla SiT on each frozen tokenizer (--extra tokreg)
    spec = [("vanilla", "VAE init.", "none"), ("tokreg-base", "VAE init. + L_REG", f"{cfg.steps} steps"),
            ("tokreg-se", "VAE init. + L_REG + SE", f"{cfg.steps} steps"),
            ("tokreg-eq", "VAE init. + L_REG + EQ-VAE", f"{cfg.steps} steps"),
            ("tokreg-vf", "VAE init. + L_REG + VF loss", f"{cfg.steps} steps"),
            ("dropin-vanilla", "E2E-VAE (REPA-E)", f"{cfg.steps} steps")]
    keys = ["rfid", "psnr", "ssim", "latent_tv_over_sqrt_sv", "fid", "sfid", "class_accuracy"]
    rows = [{"cells": [tok, tune, n(k), *cells(k, keys)]} for k, tok, tune in spec if k in kinds]
    if any(k in kinds for k in ("tokreg-base", "tokreg-se", "tokreg-eq", "tokreg-vf")):
        tables.append(_table("tokreg", "Tokenizer regularisers", "seed 'Background' (SE, EQ-VAE, VA-VAE: make the "
                             "latent easier to diffuse); docs/tokenizer-regularisers.md",
                             ["Tokenizer", "Fine-tune", "seeds", "rFID↓", "PSNR↑", "SSIM↑", "TV/√SV", "gFID↓", "sFID↓",
                              "class acc.↑"], rows,
                             note="gFID etc.: a fresh vanilla SiT trained on the frozen tokenizer; rFID / PSNR / SSIM "
                             f"on {cfg.recon_data}; weights: SE 0.25, EQ p=0.5 (scales >= 0.75), VF 0.1 "
                             "(the docs' settings)"))
    # 9. RAE beside REPA-E (--extra rae): latent space against latent space, same data, budget and evaluation
    if "rae" in kinds or "rae-decoder" in kinds:
        spec = [("vanilla", "VAE init. (KL-VAE f4d4)", "SiT (vanilla)"),
                ("repa-e", "E2E-VAE (REPA-E, end-to-end)", "SiT + REPA (end-to-end)"),
                ("dropin-repa", "E2E-VAE (REPA-E, frozen)", "SiT + REPA"),
                ("rae", "RAE (frozen repae-vit-t4 + ViT-T decoder)", "SiT + DiT^DH head, dimension shift")]
        keys = ["rfid", "psnr", "latent_image_variance_fraction", "fid", "sfid", "class_accuracy"]
        rows = [{"cells": [tok, gen, n(k), *cells(k, keys)]} for k, tok, gen in spec if k in kinds]
        tables.append(_table("rae", "RAE beside REPA-E", "RAE (Zheng et al. 2025): a frozen representation encoder "
                             "as the tokenizer, only a decoder trained (ImageNet: RAE DiT^DH-XL 1.51 gFID without "
                             "guidance; REPA-E + E2E-VAE 1.12 with it)",
                             ["Tokenizer", "Generator", "seeds", "rFID↓", "PSNR↑", "IV / SV", "gFID↓", "sFID↓",
                              "class acc.↑"], rows,
                             note=f"RAE decoder trained {cfg.steps} steps (recipe rae-decoder, L1 + Laplacian "
                             "perceptual + PatchGAN, latent noise sigma ~ U(0, 0.8)), then a fresh SiT of the "
                             "study's size with a 2-block 384-wide DiT^DH head on its frozen [192, 8, 8] latents; "
                             f"rFID / PSNR on {cfg.recon_data}; all generators sampled alike (no CFG)"))
    # 8. REPA gain against the alignment target's linear-probe accuracy (--extra targets)
    if target_kinds(plan):
        tables.append(_targets_table(plan, results, probes, values, n))
    # 6. tokenizer quality with generation
    spec = [("repa", "VAE init.", "REPA"), ("dropin-repa", "E2E-VAE (Ours)", "REPA"),
            ("repa-e", "E2E-VAE (Ours)", "REPA-E (end-to-end)")]
    keys = ["rfid", "psnr", "fid", "sfid", "inception_score", "precision", "recall"]
    rows = [{"cells": [tok, method, str(cfg.steps), n(k), *cells(k, keys)]} for k, tok, method in spec if k in kinds]
    tables.append(_table("tokenizer", "Tokenizers", "seed system table, Tokenizer | Method | rFID | gFID columns "
                         "(SD-VAE rFID 0.61 vs E2E-VAE 0.28)",
                         ["Tokenizer", "Method", "Steps", "seeds", "rFID↓", "PSNR↑", "gFID↓", "sFID↓", "IS↑",
                          "Prec.↑", "Rec.↑"], rows, note=f"rFID / PSNR on {cfg.recon_data}"))
    return [t for t in tables if any("cells" in r for r in t["rows"])]


def _target_name(kind: str) -> str:
    """"REPA, MAE ViT target" -> "MAE ViT (repae-vit-t4)"."""
    return f"{KINDS[kind].label.removeprefix('REPA, ').removesuffix(' target')} ({KINDS[kind].target})"


def target_points(plan: Plan, results: dict[str, dict | None], probes: dict | None) -> list[dict]:
    """One entry per target row, in plan order, plus the default ``repa`` row right after the target it
    uses (:func:`repae.study.targets.repa_row_target`): ``{kind, name, encoder, weights, probe,
    train_probe, fid: [per seed], same_as}`` (``probe``: accuracy in [0, 1], None when not probed)."""
    values = row_values(plan, results)["fid"]
    entries = (probes or {}).get("targets", {})
    repa_as = repa_row_target(plan)
    out = []
    for k in target_kinds(plan):
        kind, entry = KINDS[k], entries.get(k) or {}
        weights = (f"random init. (seed {RANDOM_TARGET_SEED})" if kind.target_weights == "random" else "packaged")
        point = {"kind": k, "name": _target_name(k), "encoder": kind.target, "weights": weights,
                 "weights_path": entry.get("weights"), "probe": entry.get("accuracy"),
                 "train_probe": entry.get("train_accuracy"), "fid": values.get(k, []), "same_as": None}
        out.append(point)
        if k == repa_as:
            out.append({**point, "kind": "repa", "name": f"default REPA row ({kind.target})", "fid": values.get("repa", []),
                        "same_as": k})
    return out


def _targets_table(plan: Plan, results: dict[str, dict | None], probes: dict | None, values: dict, n) -> dict:
    cfg = plan.config
    entries = (probes or {}).get("targets", {})
    fids = values["fid"]
    vanilla = fids.get("vanilla") or []
    v_mean = mean_sd(vanilla)[0] if vanilla else None

    def pct(acc) -> str:
        return f"{100 * acc:.1f} %" if isinstance(acc, (int, float)) else "–"

    def gain(vals: list[float]) -> str:
        return f"{v_mean - mean_sd(vals)[0]:+.2f}" if v_mean is not None and vals else "–"

    def rest(kind: str) -> list[str]:
        return [fmt(values[k].get(kind), k) for k in ("sfid", "class_accuracy")]

    rows: list = []
    if "vanilla" in {r.kind for r in plan.runs}:
        rows.append({"cells": ["none (SiT vanilla)", "–", "–", n("vanilla"), fmt(vanilla, "fid"), "0 (reference)",
                               *rest("vanilla")]})
    for p in target_points(plan, results, probes):
        rows.append({"cells": [p["name"], p["weights"] if not p["same_as"] else f"packaged (same as {p['same_as']})",
                               pct(p["probe"]), n(p["kind"]), fmt(p["fid"], "fid"), gain(p["fid"]), *rest(p["kind"])]})
    rows.append({"cells": ["raw pixels (probe reference, not a target)", "–", pct(entries.get(PIXELS, {}).get("accuracy")),
                           "–", "–", "–", "–", "–"]})
    num_test = next((e.get("num_test") for e in entries.values() if isinstance(e, dict) and e.get("num_test")), None)
    note = ("linear probe: mean-pooled patch tokens, logistic regression (weight decay 1e-4), embedded train split -> "
            f"{num_test or 'the'} embedded test images (the protocol of `repae linear-probe`), once per study in "
            "targets.json; REPA gain = FD(vanilla) - FD(row), means over seeds (> 0: the target helps); every target "
            f"row is REPA on VAE init. with {min(cfg.ablation_seeds, cfg.seeds)} seed(s), its target set explicitly")
    if any(p["same_as"] for p in target_points(plan, results, probes)):
        note += "; the default REPA row trains the same setting as the target row it names, with the study's seeds"
    errors = (probes or {}).get("errors") or {}
    if errors:
        note += "; not probed: " + "; ".join(f"{k} ({why})" for k, why in errors.items())
    return _table("targets", "REPA gain against target quality", "REPA's 'better encoder, better generation' "
                  "(Yu et al. 2024: targets that probe better give a lower FID), at laptop scale (--extra targets)",
                  ["Alignment target", "Weights", "Linear probe↑", "seeds", "gFID↓", "REPA gain↑", "sFID↓",
                   "class acc.↑"], rows, note=note)


def _model_name(plan: Plan, kind: str, default: str) -> str:
    """``model.preset`` of the row's runs (DiT rows override the study's SiT)."""
    for r in plan.runs:
        if r.kind == kind:
            for o in reversed(r.overrides):
                if o.startswith("model.preset="):
                    return o.split("=", 1)[1]
            break
    return default


def _sit_name(plan: Plan) -> str:
    for r in plan.runs:
        c = read_json(r.run_dir(plan.config.out) / "config.json")
        if isinstance(c, dict):
            return str(c.get("model", {}).get("preset", "SiT"))
    for o in reversed(plan.runs[0].overrides if plan.runs else ()):
        if o.startswith("model.preset="):
            return o.split("=", 1)[1]
    return "SiT"


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------


def claim_verdicts(plan: Plan, results: dict[str, dict | None]) -> list:
    kinds = {r.kind for r in plan.runs}
    claims = [c for c in CLAIMS if c.a in kinds and c.b in kinds]
    return evaluate_claims(row_values(plan, results), claims)


def _claim_line(v) -> tuple[str, str]:
    """(headline, numbers) of one verdict."""
    c = v.claim
    d = DIGITS.get(c.metric, 3)

    def side(kind, mean, values, spread):
        if mean is None:
            return f"{KINDS[kind].label}: no result"
        sd = f" ± {spread:.{d}f}" if spread is not None and len(values) > 1 else (
            f" (spread {spread:.{d}f} pooled)" if spread is not None else "")
        return f"{KINDS[kind].label} {mean:.{d}f}{sd} ({len(values)} seed{'s' if len(values) != 1 else ''})"

    numbers = (f"{c.metric} ({c.better} is claimed for A): A = {side(c.a, v.a_mean, v.a_values, v.a_spread)}; "
               f"B = {side(c.b, v.b_mean, v.b_values, v.b_spread)}; {v.reason}")
    return f"{MARK_BADGE[v.mark]}: {c.text}", numbers


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def fd_curve_png(plan: Plan, results: dict[str, dict | None]) -> bytes | None:
    from repae.analysis.report import fig_png, pyplot

    curves = curve_values(plan, results)
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, kind in enumerate(k for k in KINDS if k in curves):
        color = cycle[i % len(cycle)]
        pts = sorted(curves[kind].items())
        steps = [s for s, _ in pts]
        means = [sum(v) / len(v) for _, v in pts]
        ax.plot(steps, means, marker="o", ms=4, lw=1.6, color=color, label=KINDS[kind].label,
                ls=("-", "--", ":")[(i // len(cycle)) % 3])
        for s, vals in pts:
            if len(vals) > 1:
                ax.scatter([s] * len(vals), vals, s=10, color=color, alpha=0.35)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel(f"FD ({plan.config.curve_n} samples)")
    ax.set_title("FD vs step, every row (line: mean over seeds, dots: seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig_png(fig)


def fd_probe_png(plan: Plan, results: dict[str, dict | None], probes: dict | None) -> bytes | None:
    """Final FD against the alignment target's linear-probe accuracy (REPA's "better encoder, better
    generation"): one point per target (mean; error bar: seed sd; dots: seeds), vanilla as a dashed line,
    the raw-pixel probe as a dotted line. None when no target has both a probe and a finished run."""
    from repae.analysis.report import fig_png, pyplot

    points = [p for p in target_points(plan, results, probes) if isinstance(p["probe"], (int, float)) and p["fid"]]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(points):
        color = cycle[i % len(cycle)]
        x = 100 * p["probe"]
        m, s = mean_sd(p["fid"])
        seeds = len(p["fid"])
        hollow = p["same_as"] is not None
        ax.errorbar([x], [m], yerr=[s] if s is not None else None, fmt="s" if hollow else "o", ms=8, capsize=4,
                    color=color, mfc="none" if hollow else color, lw=1.4,
                    label=f"{p['name']}: {m:.2f}" + (f" ± {s:.2f}" if s is not None else "")
                    + f" ({seeds} seed{'s' if seeds != 1 else ''})")
        if seeds > 1:
            ax.scatter([x] * seeds, p["fid"], s=12, color=color, alpha=0.4)
        ax.annotate(p["name"], (x, m), textcoords="offset points", xytext=(7, -13 if hollow else 6), fontsize=8,
                    color=color)
    vanilla = row_values(plan, results)["fid"].get("vanilla")
    if vanilla:
        vm, vs = mean_sd(vanilla)
        ax.axhline(vm, ls="--", color="0.35", lw=1.2,
                   label=f"vanilla SiT (no target): {vm:.2f}" + (f" ± {vs:.2f}" if vs is not None else ""))
        if vs:
            ax.axhspan(vm - vs, vm + vs, color="0.35", alpha=0.08)
    pix = ((probes or {}).get("targets", {}).get(PIXELS) or {}).get("accuracy")
    if isinstance(pix, (int, float)):
        ax.axvline(100 * pix, ls=":", color="0.1", lw=1.2, label=f"raw pixels, linear probe {100 * pix:.1f} %")
    ax.set_xlabel("linear-probe accuracy of the alignment target (%, embedded test split)")
    ax.set_ylabel(f"final FD ({plan.config.eval_samples} samples, {plan.config.steps} steps)")
    ax.set_title("REPA gain against target quality: final FD vs the target's linear-probe accuracy", fontsize=10)
    ax.margins(x=0.1, y=0.1)  # room for the point labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig_png(fig)


def pca_tokenizers(plan: Plan) -> list[tuple[str, list]]:
    """(label, runs) per distinct tokenizer: the frozen VAE init. once, then every row that trains its VAE
    (drop-in rows reuse the E2E-VAE of repa-e and are not repeated)."""
    by_kind = plan.by_kind()
    out = []
    frozen = [k for k in ("repa", "vanilla") if k in by_kind]
    if frozen:
        out.append(("VAE init. (frozen)", by_kind[frozen[0]]))
    for kind in KINDS:
        if kind not in by_kind or not KINDS[kind].family:
            continue
        src = KINDS[kind].source
        if KINDS[kind].recipe not in ("repa", "vanilla"):  # the row trains its VAE and was analysed
            out.append((f"{KINDS[kind].label}", by_kind[kind]))
        elif src and not KINDS[src].family:  # a tokenizer-only row, analysed through the SiT trained on it
            out.append((f"{KINDS[src].label}", by_kind[kind]))
    return out


def pca_png(plan: Plan, out_dir: Path) -> Path | None:
    """Latent PCA views of every distinct tokenizer (first finished seed) side by side, via repae.analysis.plots."""
    import torch

    from repae.analysis.plots import plot_pca_grid

    inputs, names = [], None
    for label, runs in pca_tokenizers(plan):
        for r in runs:
            f = r.run_dir(plan.config.out) / "study" / "grid.pt"
            if f.is_file():
                g = torch.load(f, map_location="cpu", weights_only=True)
                names = names or g.get("class_names")
                inputs.append({"label": f"{label}\n({r.name})", "grid": g,
                               "pca_explained_ratio": g.get("pca_explained_ratio") or []})
                break
    if not inputs:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_pca_grid({"inputs": inputs}, out_dir / "pca.png", class_names=names)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _md_table(t: dict) -> str:
    cols = t["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in t["rows"]:
        if "section" in r:
            lines.append("| **" + r["section"] + "** |" + " |" * (len(cols) - 1))
        else:
            lines.append("| " + " | ".join(r["cells"]) + " |")
    return "\n".join(lines)


def _html_table(t: dict) -> str:
    cols = t["columns"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in t["rows"]:
        if "section" in r:
            body.append(f"<tr><th colspan='{len(cols)}' style='background:#fafafa'>{html.escape(r['section'])}</th></tr>")
        else:
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r["cells"]) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _settings_lines(plan: Plan, results: dict) -> list[str]:
    from repae.study.run import is_done

    cfg = plan.config
    # a run without a sample evaluation (an RAE decoder, a tokenizer fine-tune) is finished by its done marker
    marks = {r.name: read_json(r.run_dir(cfg.out) / "study" / "done.json") for r in plan.runs if is_done(r, cfg)}
    done = [n for n, r in results.items() if r or n in marks]
    missing = [n for n in results if n not in done]
    space = next((r.get("feature_space") for r in results.values() if r and r.get("feature_space")), None)
    secs = sum((r.get("train_seconds") or 0) + (r.get("eval_seconds") or 0) for r in results.values() if r)
    secs += sum((m.get("train_seconds") or 0) + (m.get("eval_seconds") or 0) for n, m in marks.items() if not results.get(n))
    lines = [
        f"budget **{cfg.budget}**: every run {cfg.steps} steps x batch {cfg.batch_size} from preset `{cfg.preset}`"
        + (f" with `{' '.join(cfg.overrides)}`" if cfg.overrides else "") + f"; VAE init. = `{cfg.tokenizer}`",
        f"seeds: {cfg.seeds} for vanilla / REPA / REPA-E / drop-in rows, {min(cfg.ablation_seeds, cfg.seeds)} for the "
        "others (their seed spread is pooled from the multi-seed rows of the same metric)",
        f"evaluation: {cfg.eval_samples} samples per run ({cfg.sampler}, {cfg.sample_steps} steps, CFG {cfg.cfg_scale}, "
        f"the same labels and noise for every run) against `{cfg.reference}`; FD vs step on {cfg.curve_n} "
        f"samples every {cfg.eval_every} steps; rFID/PSNR on `{cfg.recon_data}`; SV/TV/CKNNA/PCA on "
        f"{cfg.analysis_images} images of `{cfg.analysis_data}`",
        f"feature space: {space or 'n/a'}"
        + (" -- offline network: FD/IS here are NOT comparable with published (Inception) numbers"
           if space and "inception" not in space.lower() else ""),
        f"finished runs: {len(done)}/{len(results)}" + (f" (not finished: {', '.join(missing)})" if missing else "")
        + (f"; compute recorded: {secs / 60:.1f} min" if secs else ""),
    ]
    return lines


def write_report(plan: Plan, *, log=print) -> dict[str, Path]:
    """Write ``<out>/report.html``, ``report.md``, ``results.json`` (+ ``figures/``); return the paths.

    With target rows (``--extra targets``) the targets' linear probes are read from ``<out>/targets.json``,
    and computed once (:func:`repae.study.targets.target_probes`) when missing and a target run has finished.
    """
    from repae.analysis.report import CSS, figure_html
    from repae.utils.io import atomic_path

    cfg = plan.config
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    results = gather(plan)
    probes = None
    if target_kinds(plan):
        probed = any(results.get(r.name) for r in plan.runs if KINDS[r.kind].target)
        probes = target_probes(plan, compute=probed, log=log)
    tables = build_tables(plan, results, probes)
    verdicts = claim_verdicts(plan, results)
    counts = {m: sum(v.mark == m for v in verdicts) for m in (HOLDS, FAILS, INCONCLUSIVE)}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    settings = _settings_lines(plan, results)

    figures: list[tuple[str, Path]] = []
    fd_png = fd_curve_png(plan, results)
    if fd_png is not None:
        fig_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(fig_dir / "fd_vs_step.png") as tmp:
            Path(tmp).write_bytes(fd_png)
        figures.append(("FD vs step of every row on one axis (mean over seeds; dots: individual seeds).",
                        fig_dir / "fd_vs_step.png"))
    probe_png = fd_probe_png(plan, results, probes) if probes is not None else None
    if probe_png is not None:
        fig_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(fig_dir / "fd-vs-probe.png") as tmp:
            Path(tmp).write_bytes(probe_png)
        figures.append(("REPA gain against target quality: final FD of REPA with each alignment target against that "
                        "target's linear-probe accuracy (error bars: seed sd); dashed: vanilla SiT without a target; "
                        "dotted: the linear probe of raw pixels.", fig_dir / "fd-vs-probe.png"))
    pca = pca_png(plan, fig_dir)
    if pca is not None:
        figures.append(("Latent PCA views (PC1-3 -> RGB) of every distinct tokenizer side by side, on the same images "
                        "(the frozen VAE init. once; the drop-in rows use the REPA-E row's E2E-VAE).", pca))

    values = row_values(plan, results)
    write_json(out / "results.json", {
        "generated": stamp,
        "settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}},
        "plan": [{"name": r.name, "kind": r.kind, "recipe": r.recipe, "seed": r.seed, "label": r.label,
                  "tables": list(r.tables), "depends_on": r.depends_on, "overrides": list(r.overrides)}
                 for r in plan.runs],
        "runs": results,
        "rows": {kind: {k: summary(values[k].get(kind, [])) for k in RESULT_KEYS}
                 for kind in KINDS if kind in {r.kind for r in plan.runs}},
        "claims": [v.to_dict() for v in verdicts],
        "claim_counts": counts,
        "tables": tables,
        **({"targets": {"probes": probes, "points": [{**p, "fid_summary": summary(p["fid"])}
                                                     for p in target_points(plan, results, probes)]}}
           if probes is not None else {}),
    })

    title = "repae study: REPA-E against its baselines and ablations at equal budget"
    tally = f"{counts[HOLDS]} hold, {counts[FAILS]} do not hold, {counts[INCONCLUSIVE]} inconclusive"
    rule = ("Marks come from the numbers only (repae.study.claims): a claim holds when the rows differ in the "
            "claimed direction by more than the sum of their seed standard deviations, does not hold when they "
            "differ by more in the other direction, and is inconclusive otherwise. The claims and the rule were "
            "fixed before any study ran, except the three image-variance claims, added after the first study but "
            "before the measure was computed on any trained run, and the two target-quality claims, added with the "
            "--extra targets rows before any of them ran (repae.study.claims); nothing is tuned toward a result.")

    md = [f"# {title}", "", f"Generated {stamp}.", ""] + [f"- {s}" for s in settings] + [
        "", f"## Claims ({tally})", "", rule, ""]
    for v in verdicts:
        head, numbers = _claim_line(v)
        md += [f"- **{head}** ({v.claim.id})", f"  - {numbers}", f"  - paper: {v.claim.source}"]
    for t in tables:
        md += ["", f"## {t['title']}", "", f"Layout of {t['source']}.", "", _md_table(t)]
        if t["note"]:
            md += ["", f"_{t['note']}_"]
    if figures:
        md += ["", "## Figures", ""]
        for caption, path in figures:
            md += [f"![{caption}]({path.relative_to(out).as_posix()})", "", f"_{caption}_", ""]
    with atomic_path(out / "report.md") as tmp:
        Path(tmp).write_text("\n".join(md) + "\n", encoding="utf-8")

    def esc(s: str) -> str:
        return html.escape(s).replace("**", "")

    claims_html = "".join(
        f"<li><b>{esc(_claim_line(v)[0])}</b> <code>{v.claim.id}</code><br><small>{esc(_claim_line(v)[1])}<br>"
        f"paper: {esc(v.claim.source)}</small></li>" for v in verdicts)
    sections = [("Settings", "<ul>" + "".join(f"<li>{esc(s).replace('`', '')}</li>" for s in settings) + "</ul>"),
                (f"Claims ({tally})", f"<p>{esc(rule)}</p><ul>{claims_html}</ul>")]
    for t in tables:
        sections.append((t["title"], f"<p class='sub'>Layout of {esc(t['source'])}.</p>{_html_table(t)}"
                         + (f"<p class='sub'>{esc(t['note'])}</p>" if t["note"] else "")))
    if figures:
        sections.append(("Figures", "".join(figure_html(p.read_bytes(), c) for c, p in figures)))
    nav = "".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(t)}</h2>{c}' for i, (t, c) in enumerate(sections))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='sub'>{stamp}, "
            f"{html.escape(str(out.resolve()))}</p><nav>{nav}</nav>{body}</body></html>\n")
    with atomic_path(out / "report.html") as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return {"html": out / "report.html", "md": out / "report.md", "json": out / "results.json"}


def load_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` of a study folder (or the file itself)."""
    p = Path(path)
    return json.loads((p / "results.json" if p.is_dir() else p).read_text())
