"""``repae report``: one self-contained HTML page per run (images base64-embedded, no network).

Sections, each present when the run has the data for it:

0. what the run made: the labelled final grid and the end-of-run sample metrics (FD beside the
   FD of real held-out images, class accuracy; ``final-samples.json`` / ``.png`` written by
   :class:`repae.evaluation.final.FinalSamplesHook`), else the latest preview grid;
1. summary (recipe, step, images seen, last logged values) and the resolved config;
2. training curves from ``metrics.jsonl`` (losses, latent-health diagnostics, gradient norms);
3. sample grids (``samples/step-*.png`` written by the preview hook; drawn from the latest
   checkpoint if there is none), cut into cells, upscaled and labelled with class names;
4. the reconstruction grid and the other ``analysis/`` figures (a quick analysis of
   ``quick_images`` images is run first when ``analysis/analysis.json`` is missing);
5. evaluation results: JSON files in the run folder holding ``fid`` / ``rfid`` / ``psnr``.

:class:`ReportHook` writes the page at the end of training.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from repae.errors import ConfigError
from repae.training.hooks import TrainHook

log = logging.getLogger("repae.report")

__all__ = ["build_report", "ReportHook", "read_metrics", "class_names_of", "labelled_grid_png", "final_samples_paths",
           "CSS", "figure_html", "fig_png", "pyplot"]


def final_samples_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """``(json, png)`` of the end-of-run sample measurement in a run folder (``train.final_eval_samples``)."""
    run = Path(run_dir)
    return run / "final-samples.json", run / "final-samples.png"


def headline_section(run_dir: Path, samples: list[tuple[str, bytes]]) -> str:
    """The first thing the page shows: the final labelled grid and its sample metrics beside the floor."""
    json_path, png_path = final_samples_paths(run_dir)
    if not json_path.is_file() or not png_path.is_file():
        if not samples:
            return "<p>No samples yet.</p>"
        title, png = samples[-1]
        return figure_html(png, title) + (
            "<p>No end-of-run measurement (set <code>train.final_eval_samples=1000</code> "
            "or run <code>repae evaluate --checkpoint RUN</code>).</p>")
    r = json.loads(json_path.read_text())
    n, space = r.get("num_samples", "?"), r.get("feature_space", "evalnet-fmnist")
    rows = [("", "samples", f"real test images (the floor, {r.get('num_real', n)})"),
            ("FD", r.get("fid"), r.get("real_fid")),
            ("class accuracy", r.get("class_accuracy"), r.get("real_class_accuracy")),
            ("precision", r.get("precision"), r.get("real_precision")),
            ("recall", r.get("recall"), r.get("real_recall"))]
    body = "".join("<tr>" + "".join(f"<{'th' if i == 0 or k == 0 else 'td'}>{_fmt(v) if v is not None else '-'}"
                                    f"</{'th' if i == 0 or k == 0 else 'td'}>" for k, v in enumerate(row)) + "</tr>"
                   for i, row in enumerate(rows))
    caption = (f"{n} EMA samples at step {r.get('step', '?')} ({r.get('sampler')}, {r.get('num_steps')} steps, "
               f"CFG {r.get('cfg_scale')}) against {r.get('reference')}, in {space} feature space "
               "(not comparable with published FID). Class accuracy: how often the evaluation network "
               "names the conditioning label.")
    return (figure_html(png_path.read_bytes(), "final EMA samples, titled with their conditioning class")
            + f"<table>{body}</table><p class='sub'>{html.escape(caption)}</p>")

FIGURE_CAPTIONS = {  # analysis/ figure -> caption, in page order
    "recon_grid": "Reconstructions of the posterior mean: input | reconstruction | absolute error.",
    "pca_grid": "Latent PCA views (PC1-3 -> RGB; joint fit over the shown images and per-image fit).",
    "dct_spectra": "Blockwise 8x8 DCT spectra of the latent (per channel) and of RGB, fraction of AC energy.",
    "latent_stats": "Spatial variance, total variation and TV/sqrt(SV) of the posterior mean (RGB as reference).",
    "cknna_layers": "CKNNA between SiT hidden states after each block and the frozen encoder's features.",
    "checkpoints": "Alignment and latent statistics over the run's checkpoints.",
    "fd_vs_cknna": "FD against CKNNA at the alignment depth, one point per checkpoint.",
}
EVAL_KEYS = ("fid", "sfid", "inception_score", "precision", "recall", "class_accuracy", "rfid", "psnr", "ssim",
             "lpips")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of ``metrics.jsonl`` (unparsable lines, e.g. a line cut by a crash, are skipped)."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def class_names_of(cfg) -> list[str] | None:
    """Class names of a run's data without reading its images (folders: sorted sub-folder names)."""
    source = str(cfg.data.source)
    name = source.partition(":")[0]
    if name in ("embedded", "fashion-mnist", "full"):
        from repae.data.embedded import CLASS_NAMES

        return list(CLASS_NAMES)
    p = Path(source)
    if p.is_dir():
        subdirs = sorted(d.name for d in p.iterdir() if d.is_dir())
        return subdirs or None
    try:
        from repae.data import build_dataset

        classes = getattr(build_dataset(source, resolution=cfg.data.resolution), "classes", None)
        return list(classes) if classes is not None else None
    except Exception:  # noqa: BLE001 - names are decoration; a page without them is still useful
        return None


def _png_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def fig_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (100 dpi, tight box); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (unless a backend is already chosen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------
# Figures made for the page
# ---------------------------------------------------------------------------------------------


CURVE_GROUPS = (  # (title, predicate on the metric name)
    ("Losses", lambda k: k.endswith("_loss") or k in ("d_loss",)),
    ("Latent health (held-out batch)", lambda k: k.startswith("health/")),
    ("Gradient norms and throughput", lambda k: k.startswith("grad_norm") or k == "img_per_s"),
)


LOG_CURVES = ("health/spatial_variance", "health/total_variation", "health/spatial_variance_normalized",
              "health/sv_drop", "health/image_variance", "health/image_variance_drop")


def curve_figures(rows: list[dict]) -> list[tuple[str, bytes]]:
    """One PNG per metric group: a small panel per metric against the step."""
    if not rows:
        return []
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    out = []
    for title, pred in CURVE_GROUPS:
        mine = [k for k in keys if pred(k)]
        if not mine:
            continue
        ncol = min(4, len(mine))
        nrow = math.ceil(len(mine) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.6 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, mine):
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts), lw=1.0 if len(pts) > 50 else 1.2, marker="o" if len(pts) < 30 else None, ms=3,
                        alpha=0.5 if len(pts) > 50 else 1.0)
            vals = [p[1] for p in pts]
            if k in LOG_CURVES and vals and min(vals) > 0 and max(vals) / min(vals) > 20:  # a collapse spans decades
                ax.set_yscale("log")
            if len(pts) > 50:  # noisy per-step logs: add a running mean
                w = max(2, len(pts) // 25)
                sm = torch.tensor(vals, dtype=torch.float64).unfold(0, w, 1).mean(1).tolist()
                ax.plot([p[0] for p in pts][w - 1:], sm, lw=1.6, color="k", alpha=0.7, label=f"mean of {w}")
                ax.legend(fontsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(mine):]:
            ax.axis("off")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        out.append((title, fig_png(fig)))
    return out


def split_grid(grid: torch.Tensor, cell: int, padding: int = 2) -> list[torch.Tensor]:
    """Cells ``[3, cell, cell]`` of a ``torchvision.utils.make_grid`` image ``[3, H, W]``, row-major."""
    _, H, W = grid.shape
    nrow, ncol = (H - padding) // (cell + padding), (W - padding) // (cell + padding)
    cells = []
    for r in range(nrow):
        for c in range(ncol):
            y, x = padding + r * (cell + padding), padding + c * (cell + padding)
            cells.append(grid[:, y:y + cell, x:x + cell])
    return cells


def labelled_grid_png(images: list[torch.Tensor], labels: list[int], class_names: list[str] | None,
                      title: str, *, ncol: int | None = None) -> bytes:
    """uint8 images ``[3, R, R]`` upscaled (nearest) in a grid, each titled with its class name."""
    plt = pyplot()
    n = len(images)
    ncol = ncol or min(8, max(1, round(math.sqrt(n))))
    nrow = math.ceil(n / ncol)
    side = 1.5
    fig, axes = plt.subplots(nrow, ncol, figsize=(side * ncol, side * nrow + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, y in zip(axes.flat, images, labels):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        name = class_names[y] if class_names and 0 <= y < len(class_names) else f"class {y}"
        ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig_png(fig)


def sample_sections(run_dir: Path, cfg, class_names, *, draw_if_missing: bool, device) -> list[tuple[str, bytes]]:
    """Labelled sample grids: the first and the latest preview grid, or freshly drawn samples."""
    import numpy as np
    from PIL import Image

    grids = sorted((run_dir / "samples").glob("step-*.png")) if (run_dir / "samples").is_dir() else []
    res, num_classes = cfg.data.resolution, cfg.model.num_classes
    out = []
    for path in dict.fromkeys([grids[0], grids[-1]] if grids else []):
        grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)  # [3, H, W]
        cells = split_grid(grid, res)[: cfg.sample.num_images]
        labels = [i % num_classes for i in range(len(cells))]  # the preview hook cycles through the classes
        ncol = (grid.shape[2] - 2) // (res + 2)
        title = (f"EMA samples at {path.stem} ({cfg.sample.sampler}, {cfg.sample.num_steps} steps, "
                 f"CFG {cfg.sample.cfg_scale})")
        out.append((title, labelled_grid_png(cells, labels, class_names, title, ncol=ncol)))
    if out or not draw_if_missing:
        return out
    from repae.sampling.generator import Generator
    from repae.training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return out
    gen = Generator.from_checkpoint(ckpt, ema=True, map_location="cpu").to(device)
    n = min(num_classes, 10) * 2
    labels = [i % min(num_classes, 10) for i in range(n)]
    sc = cfg.sample
    images = gen(torch.tensor(labels, device=gen.device), sampler=sc.sampler, num_steps=sc.num_steps,
                 cfg_scale=sc.cfg_scale, guidance_interval=(sc.guidance_low, sc.guidance_high),
                 seeds=list(range(n))).cpu()  # uint8 [n, 3, R, R]
    title = f"EMA samples at {ckpt.name} ({sc.sampler}, {sc.num_steps} steps, CFG {sc.cfg_scale})"
    out.append((title, labelled_grid_png(list(images), labels, class_names, title, ncol=min(num_classes, 10))))
    return out


def evaluation_rows(run_dir: Path) -> list[dict]:
    """Evaluation JSONs in the run folder (``repae evaluate --out``), newest last."""
    rows = []
    for f in sorted(run_dir.rglob("*.json")):
        rel = f.relative_to(run_dir).parts
        if rel[0] in ("checkpoints", "analysis", "e2e-vae") or f.name == "config.json":
            continue
        try:
            obj = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and any(isinstance(obj.get(k), (int, float)) for k in EVAL_KEYS):
            rows.append({"file": str(f.relative_to(run_dir)), **obj})
    return rows


def quick_analysis(run_dir: Path, out_dir: Path, *, num_images: int, device) -> Path | None:
    """``repae analyze RUN --checkpoints latest --num-images N`` in-process (figures into ``out_dir``)."""
    from repae.analysis.pipeline import AnalysisOptions, analyze, load_images, resolve_sources, strip_tensors
    from repae.analysis.plots import write_figures
    from repae.encoders import load_encoder
    from repae.errors import MissingWeightsError
    from repae.utils.io import write_json

    sources = resolve_sources([str(run_dir)])
    cfg = sources[0].config
    data = load_images(cfg.data.source, resolution=cfg.data.resolution, num_images=num_images)
    encoder, name = None, None
    if cfg.align.encoders:
        weights = cfg.align.encoder_weights[0] if cfg.align.encoder_weights else None
        try:
            name = cfg.align.encoders[0]
            encoder = load_encoder(name, weights=weights, resolution=cfg.data.resolution, device=device)
        except (MissingWeightsError, ConfigError) as err:
            log.warning("report: CKNNA skipped (%s)", err)
            name = None
    opts = AnalysisOptions(num_images=num_images, checkpoints="latest")
    result = analyze(sources, data, device=device, options=opts, encoder=encoder, encoder_name=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "analysis.json", strip_tensors(result))
    write_figures(result, out_dir, class_names=data.class_names)
    return out_dir


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
.sub{color:#666;margin-top:4px}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.8em;max-height:480px}
nav a{margin-right:12px}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png_b64(png)}">'


def figure_html(png: bytes, caption: str) -> str:
    """A ``<figure>`` with the PNG inlined (base64) and ``caption`` under it, both HTML-escaped."""
    return f"<figure>{_img(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def build_report(run_dir: str | Path, *, out: str | Path | None = None, analyze_if_missing: bool = True,
                 quick_images: int = 256, draw_samples: bool = True, device: str | torch.device = "cpu") -> Path:
    """Write ``RUN/report.html`` (or ``out``) and return its path. See the module docstring."""
    from repae.config import config_from_saved
    from repae.training.checkpoint import latest_checkpoint

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise ConfigError(f"'{run}' is not a run folder (no config.json); pass the folder given to repae train")
    cfg = config_from_saved(json.loads((run / "config.json").read_text()))
    device = torch.device(device)
    ckpt = latest_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text()) if ckpt is not None else {}
    rows = read_metrics(run / "metrics.jsonl")
    names = class_names_of(cfg)
    sections: list[tuple[str, str]] = []

    last = rows[-1] if rows else {}
    summary = [("run", run.name), ("recipe", cfg.train.recipe), ("SiT", cfg.model.preset),
               ("VAE", cfg.tokenizer.preset), ("data", f"{cfg.data.source} @ {cfg.data.resolution}px"),
               ("alignment encoders", ", ".join(cfg.align.encoders) or "none"),
               ("alignment depth", cfg.align.depth), ("batch size", cfg.train.batch_size),
               ("latest checkpoint", ckpt.name if ckpt else "none"), ("step", state.get("step", last.get("step", 0))),
               ("images seen", state.get("images_seen", "?"))]
    summary += [(k, v) for k, v in sorted(last.items()) if k != "step" and isinstance(v, (int, float))]
    sections.append(("Summary", _table(summary) + "<details><summary>resolved config (config.json)</summary><pre>"
                     + html.escape(json.dumps(cfg.to_dict(), indent=2)) + "</pre></details>"))

    try:
        samples = sample_sections(run, cfg, names, draw_if_missing=draw_samples, device=device)
    except Exception as err:  # noqa: BLE001 - a page without samples is still useful
        log.warning("report: samples skipped (%s)", err)
        samples = []
    sections.insert(0, ("What this run made", headline_section(run, samples)))

    curves = curve_figures(rows)
    sections.append(("Training curves", "".join(figure_html(png, t) for t, png in curves)
                     or "<p>No metrics.jsonl rows yet.</p>"))

    sections.append(("Samples", "".join(figure_html(png, t) for t, png in samples) or "<p>No sample grid.</p>"))

    analysis_dir = run / "analysis"
    if analyze_if_missing and ckpt is not None and not (analysis_dir / "analysis.json").is_file():
        try:
            quick_analysis(run, analysis_dir, num_images=quick_images, device=device)
        except Exception as err:  # noqa: BLE001
            log.warning("report: quick analysis skipped (%s)", err)
    figs = []
    for name, caption in FIGURE_CAPTIONS.items():
        png = analysis_dir / f"{name}.png"
        if png.is_file():
            figs.append(figure_html(png.read_bytes(), caption))
    settings = ""
    if (analysis_dir / "analysis.json").is_file():
        s = json.loads((analysis_dir / "analysis.json").read_text()).get("settings", {})
        settings = "<p>" + html.escape(", ".join(f"{k} = {v}" for k, v in s.items())) + "</p>"
    sections.append(("Latent analysis", settings + ("".join(figs) or "<p>No analysis/ figures "
                                                     "(run <code>repae analyze RUN</code>).</p>")))

    evals = evaluation_rows(run)
    if evals:
        keys = [k for k in EVAL_KEYS if any(isinstance(e.get(k), (int, float)) for e in evals)]
        head = "".join(f"<th>{k}</th>" for k in ["file", *keys, "feature_space"])
        body = "".join("<tr>" + "".join(f"<td>{_fmt(e.get(k, ''))}</td>" for k in ["file", *keys, "feature_space"])
                       + "</tr>" for e in evals)
        sections.append(("Evaluation", f"<table><tr>{head}</tr>{body}</table>"))

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(t)}</h2>{content}' for i, (t, content) in enumerate(sections))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>repae report: {html.escape(run.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(run.name)}</h1>"
            f"<p class='sub'>repae run report, {stamp}, {html.escape(str(run.resolve()))}</p><nav>{nav}</nav>"
            f"{body}</body></html>\n")
    target = Path(out) if out is not None else run / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    from repae.utils.io import atomic_path

    with atomic_path(target) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return target


class ReportHook(TrainHook):
    """Write ``RUN/report.html`` once training ends (main process only).

    Args:
        analyze_if_missing: run a quick analysis (``quick_images`` images) when ``analysis/`` is empty.
    """

    every = 0  # no on_step work

    def __init__(self, *, analyze_if_missing: bool = True, quick_images: int = 256):
        self.analyze_if_missing = analyze_if_missing
        self.quick_images = int(quick_images)

    def on_end(self, trainer) -> None:
        if not trainer.engine.is_main:
            return None
        try:
            path = build_report(trainer.cfg.run_dir, analyze_if_missing=self.analyze_if_missing,
                                quick_images=self.quick_images, device=trainer.engine.device)
            log.info("wrote %s", path)
        except Exception as err:  # noqa: BLE001 - a report must never fail a finished training run
            log.warning("report not written (%s)", err)
        return None
