"""Figures of ``repae analyze``: one PNG (matplotlib, Agg) + one JSON of the plotted numbers each.

Every figure draws all inputs on the same axes (one colour per input, same order everywhere).
Picture grids show latent-resolution images with nearest-neighbour upscaling, so one latent
position stays one visible square.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_figures", "FIGURES"]

FIGURES = ("dct_spectra", "latent_stats", "pca_grid", "recon_grid", "cknna_layers", "checkpoints", "fd_vs_cknna")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _plt()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: Path) -> Path:
    from repae.utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _write_json(path: Path, obj: Any) -> None:
    from repae.analysis.pipeline import strip_tensors
    from repae.utils.io import write_json

    write_json(path, strip_tensors(obj))


# ---------------------------------------------------------------------------------------------
# Spectra and statistics
# ---------------------------------------------------------------------------------------------


def plot_dct(result: dict, path: Path) -> Path | None:
    inputs = [r for r in result["inputs"] if "dct" in r]
    if not inputs:
        return None
    plt = _plt()
    fig, (ax_z, ax_b) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = _colors(len(inputs))
    data = {}
    for r, c in zip(inputs, colors):
        lat = r["dct"]["latent"]
        prof = torch.tensor(lat["profile"])  # [C, n^2]
        x = range(1, prof.shape[1])  # AC coefficients only (DC is 0 in an AC profile)
        if len(inputs) == 1:  # one thin line per latent channel
            for ch in range(prof.shape[0]):
                ax_z.semilogy(x, prof[ch, 1:].clamp_min(1e-12), color=c, alpha=0.25, lw=0.8)
        ax_z.semilogy(x, prof.mean(0)[1:].clamp_min(1e-12), color=c, lw=2,
                      label=f"{r['label']} latent ({prof.shape[0]} ch, mean)")
        bands = torch.tensor(lat["mean_bands"])
        ax_b.semilogy(range(1, len(bands)), bands[1:].clamp_min(1e-12), color=c, lw=2, marker="o", ms=3,
                      label=f"{r['label']} latent")
        data[r["label"]] = {"latent_mean_profile": lat["mean_profile"], "latent_profile": lat["profile"],
                            "latent_mean_bands": lat["mean_bands"]}
    rgb = inputs[0]["dct"]["rgb"]  # the same images for every input
    rp = torch.tensor(rgb["mean_profile"])
    ax_z.semilogy(range(1, len(rp)), rp[1:].clamp_min(1e-12), "k--", lw=2, label="RGB (mean of 3 channels)")
    rb = torch.tensor(rgb["mean_bands"])
    ax_b.semilogy(range(1, len(rb)), rb[1:].clamp_min(1e-12), "k--", lw=2, marker="s", ms=3, label="RGB")
    data["rgb"] = {"mean_profile": rgb["mean_profile"], "mean_bands": rgb["mean_bands"]}
    n = rgb["block"]
    ax_z.set_xlabel(f"zigzag frequency index (1 = lowest AC, {n * n - 1} = highest)")
    ax_z.set_ylabel("fraction of AC energy (DC excluded)")
    ax_z.set_title(f"Blockwise {n}x{n} DCT-II energy, per coefficient")
    ax_b.set_xlabel("diagonal band u + v")
    ax_b.set_ylabel("fraction of AC energy")
    ax_b.set_title("Per diagonal band (flatter = more high frequency)")
    for ax in (ax_z, ax_b):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _write_json(path.with_suffix(".json"), {"block": n, "normalisation": "fraction of AC energy", **data})
    return _save(fig, path)


def plot_latent_stats(result: dict, path: Path) -> Path | None:
    inputs = [r for r in result["inputs"] if "stats" in r]
    if not inputs:
        return None
    plt = _plt()
    labels = [r["label"] for r in inputs] + ["RGB @ latent grid"]
    rows = [r["stats"] for r in inputs]
    rgb = inputs[0]["stats"]["rgb_at_latent_grid"]
    panels = [
        ("spatial variance (raw latent)", [s["raw"]["spatial_variance"] for s in rows] + [rgb["spatial_variance"]], True),
        ("total variation (raw latent)", [s["raw"]["total_variation"] for s in rows] + [rgb["total_variation"]], True),
        ("TV / sqrt(SV) (scale-free)", [s["raw"]["tv_over_sqrt_sv"] for s in rows] + [rgb["tv_over_sqrt_sv"]], False),
        ("spatial variance (normalised as the SiT sees it)", [s["normalizer"]["spatial_variance"] for s in rows], True),
        ("image variance (raw; between images)", [s["raw"].get("image_variance") for s in rows]
         + [rgb.get("image_variance")], True),
        ("image variance / SV (0 = same map for every image)", [s["raw"].get("image_variance_fraction") for s in rows]
         + [rgb.get("image_variance_fraction")], False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    axes[5].set_ylim(0, 1.05)
    colors = _colors(len(inputs)) + ["0.4"]
    for ax, (title, values, log) in zip(axes, panels):
        vals = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        ax.bar(range(len(vals)), vals, color=colors[:len(vals)])
        for i, v in enumerate(values):
            if v is not None and math.isfinite(v):
                ax.annotate(f"{v:.3g}", (i, vals[i]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(vals)), labels[:len(vals)], rotation=30, ha="right", fontsize=8)
        if log and min(vals) > 0 and max(vals) / min(vals) > 50:  # e.g. a collapsed latent next to a healthy one
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[2].axhline(4 / math.sqrt(math.pi), color="k", ls=":", lw=1, label="i.i.d. noise (2.26)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Latent statistics (posterior mean, n = {result['settings']['num_images']} images)")
    _write_json(path.with_suffix(".json"), {"labels": labels, "panels": {t: v for t, v, _ in panels}})
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Picture grids
# ---------------------------------------------------------------------------------------------


def _to_hwc(x: torch.Tensor) -> Any:
    """[3, h, w] in [0, 1] (or uint8) -> numpy HWC float for imshow."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def _grid_figure(rows: list[tuple[str, list]], col_titles: list[str], *, cmap_rows: set[int] = frozenset()):
    plt = _plt()
    nr, nc = len(rows), max(len(r[1]) for r in rows)
    height = 1.35 * nr + 0.4  # inches
    fig, axes = plt.subplots(nr, nc, figsize=(1.35 * nc + 1.6, height), squeeze=False)
    for i, (name, images) in enumerate(rows):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                img = images[j]
                if i in cmap_rows:
                    ax.imshow(img, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
                else:
                    ax.imshow(img, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=7)
    # margins in inches, not figure fractions: a tall grid (many rows) keeps a thin band for the titles
    fig.subplots_adjust(wspace=0.05, hspace=0.08, top=1 - 0.5 / height, bottom=0.1 / height)
    return fig


def _col_titles(r: dict, class_names: list[str] | None) -> list[str]:
    labels = r["grid"]["labels"]
    return [class_names[y] if class_names and 0 <= y < len(class_names) else str(y) for y in labels]


def plot_pca_grid(result: dict, path: Path, class_names: list[str] | None = None) -> Path | None:
    inputs = [r for r in result["inputs"] if "grid" in r]
    if not inputs:
        return None
    rows = [("input", [_to_hwc(x) for x in inputs[0]["grid"]["inputs"]])]
    for r in inputs:
        g, ratio = r["grid"], r.get("pca_explained_ratio", [])
        share = f"\nvar {'/'.join(f'{100 * v:.0f}' for v in ratio)} %" if ratio else ""
        rows.append((f"{r['label']}\nPCA joint{share}", [_to_hwc(x) for x in g["pca_joint"]]))
        rows.append((f"{r['label']}\nPCA per image", [_to_hwc(x) for x in g["pca_image"]]))
    fig = _grid_figure(rows, _col_titles(inputs[0], class_names))
    fig.suptitle("Latent PCA -> RGB (PC1 = R, PC2 = G, PC3 = B; sign: largest loading positive)", fontsize=9,
                 y=1 - 0.1 / fig.get_figheight())
    _write_json(path.with_suffix(".json"), {r["label"]: {"explained_ratio": r.get("pca_explained_ratio"),
                                                          "latent_shape": r.get("latent_shape")} for r in inputs})
    return _save(fig, path)


def plot_recon_grid(result: dict, path: Path, class_names: list[str] | None = None) -> Path | None:
    inputs = [r for r in result["inputs"] if "grid" in r and r["grid"].get("recon") is not None]
    if not inputs:
        return None
    x = inputs[0]["grid"]["inputs"].float() / 127.5 - 1  # [g, 3, R, R] in [-1, 1]
    rows = [("input", [_to_hwc(u) for u in inputs[0]["grid"]["inputs"]])]
    cmap_rows = set()
    for r in inputs:
        rec = r["grid"]["recon"]  # [g, 3, R, R] in [-1, 1]
        rows.append((f"{r['label']}\nreconstruction\nPSNR {r['psnr']:.2f} dB", [_to_hwc((v + 1) / 2) for v in rec]))
        err = ((rec - x).abs() / 2).mean(1)  # [g, R, R] in [0, 1] (fraction of the pixel range)
        cmap_rows.add(len(rows))
        rows.append((f"{r['label']}\n|error| (0-1)", [e.numpy() for e in err]))
    fig = _grid_figure(rows, _col_titles(inputs[0], class_names), cmap_rows=cmap_rows)
    fig.suptitle("Reconstructions of the posterior mean (input | reconstruction | abs error, magma 0-1)", fontsize=9)
    _write_json(path.with_suffix(".json"), {r["label"]: {"psnr_db": r["psnr"]} for r in inputs})
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def plot_cknna_layers(result: dict, path: Path) -> Path | None:
    inputs = [r for r in result["inputs"] if r.get("cknna") or r.get("latent_cknna") is not None]
    if not inputs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    data = {}
    for r, c in zip(inputs, _colors(len(inputs))):
        curve = r.get("cknna")
        if curve:
            ax.plot(curve["layers"], curve["values"], color=c, marker="o", ms=4, label=f"{r['label']} SiT blocks")
            d = r.get("align_depth", r.get("encoder_depth"))  # encoder_depth: analyses before 2026-12-06 (2)
            if d in curve["layers"]:
                ax.plot([d], [curve["values"][curve["layers"].index(d)]], marker="*", ms=14, color=c, ls="none")
            data[r["label"]] = {"layers": curve["layers"], "values": curve["values"], "align_depth": d}
        if r.get("latent_cknna") is not None:
            ax.plot([0], [r["latent_cknna"]], marker="D", ms=7, color=c, ls="none",
                    label=f"{r['label']} VAE latent (x = 0)")
            data.setdefault(r["label"], {})["latent"] = r["latent_cknna"]
    s = result["settings"]
    ax.xaxis.set_major_locator(_integer_locator())
    ax.set_xlabel("SiT block (0 = the VAE latent itself; star = alignment depth)")
    ax.set_ylabel(f"CKNNA (k = {s['k']})")
    ax.set_title(f"CKNNA vs {s['encoder']} features of the clean image "
                 f"(n = {s['num_images']}, t = {s['t']}, {s['pool']}-pooled)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _write_json(path.with_suffix(".json"), {"settings": s, "curves": data})
    return _save(fig, path)


def plot_checkpoints(result: dict, path: Path) -> Path | None:
    runs = [r for r in result["inputs"] if len(r.get("checkpoints", [])) >= 1 and r["kind"] != "vae"]
    if not runs:
        return None
    plt = _plt()
    has_fd = any(row.get("fd") is not None for r in runs for row in r["checkpoints"])
    has_ck = any("cknna_at_depth" in row for r in runs for row in r["checkpoints"])
    panels = ([("cknna_at_depth", "CKNNA at the alignment depth")] if has_ck else []) + [
        ("sv", "spatial variance (raw latent)"), ("ratio", "TV / sqrt(SV)"),
        ("ivf", "image variance / SV (raw latent)")] + (
        [("fd", "FD (from evaluation)")] if has_fd else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    data = {}
    for r, c in zip(runs, _colors(len(runs))):
        steps = [row["step"] for row in r["checkpoints"]]
        series = {
            "cknna_at_depth": [row.get("cknna_at_depth") for row in r["checkpoints"]],
            "sv": [row["stats"]["raw"]["spatial_variance"] for row in r["checkpoints"]],
            "ratio": [row["stats"]["raw"]["tv_over_sqrt_sv"] for row in r["checkpoints"]],
            "ivf": [row["stats"]["raw"].get("image_variance_fraction") for row in r["checkpoints"]],
            "fd": [row.get("fd") for row in r["checkpoints"]],
        }
        data[r["label"]] = {"steps": steps, **series}
        for ax, (key, title) in zip(axes[0], panels):
            pts = [(s, v) for s, v in zip(steps, series[key]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), color=c, marker="o", label=r["label"])
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("training step")
            ax.xaxis.set_major_locator(_integer_locator())
            ax.grid(alpha=0.3)
    for ax, (key, _) in zip(axes[0], panels):
        if key == "sv":
            ax.set_yscale("log")
        if key == "ivf":
            ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    _write_json(path.with_suffix(".json"), data)
    return _save(fig, path)


def plot_fd_vs_cknna(result: dict, path: Path) -> Path | None:
    pts = [(r["label"], row["step"], row["cknna_at_depth"], row["fd"]) for r in result["inputs"]
           for row in r.get("checkpoints", []) if row.get("fd") is not None and row.get("cknna_at_depth") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    labels = list(dict.fromkeys(p[0] for p in pts))
    for lab, c in zip(labels, _colors(len(labels))):
        mine = [p for p in pts if p[0] == lab]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], color=c, label=lab)
        for p in mine:
            ax.annotate(f"{p[1]}", (p[2], p[3]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("CKNNA at the alignment depth")
    ax.set_ylabel("FD")
    ax.set_title("FD vs CKNNA (points labelled by step)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _write_json(path.with_suffix(".json"), [dict(zip(("label", "step", "cknna", "fd"), p)) for p in pts])
    return _save(fig, path)


def write_figures(result: dict, out_dir: str | Path, *, class_names: list[str] | None = None) -> list[Path]:
    """All figures that the result has data for, as ``out_dir/<name>.png`` + ``<name>.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = [
        plot_dct(result, out / "dct_spectra.png"),
        plot_latent_stats(result, out / "latent_stats.png"),
        plot_pca_grid(result, out / "pca_grid.png", class_names),
        plot_recon_grid(result, out / "recon_grid.png", class_names),
        plot_cknna_layers(result, out / "cknna_layers.png"),
        plot_checkpoints(result, out / "checkpoints.png"),
        plot_fd_vs_cknna(result, out / "fd_vs_cknna.png"),
    ]
    return [p for p in made if p is not None]
