"""``repae analyze``'s engine: resolve runs / checkpoints / VAEs, measure them, write ``analysis/``.

Inputs (each ``RUN_OR_VAE``):

* a **run folder** (``checkpoints/step-*``): every complete checkpoint is measured (per-layer
  CKNNA and latent statistics against the step); the latest one also gets the full set of
  pictures;
* a **checkpoint folder** (``step-XXXXXXX`` with ``state.json``);
* an **exported / foreign VAE**: a folder written by ``repae export-vae`` / ``save_pretrained``, a
  diffusers ``AutoencoderKL`` folder, or an LDM / diffusers weights file (with ``vae_preset``).

What is measured (definitions in the ``repae.analysis`` modules and ``docs/analysis.md``): on ``n``
images (default 1000, a seeded subset of ``--data``) the posterior-mean latents give the DCT
spectra (with the RGB spectrum of the same images), spatial variance / total variation / image
variance (between images: catches a latent that is the same map for every image; raw, with
the normaliser statistics the SiT sees, and per-batch standardised; RGB area-downsampled to the
latent grid as reference), PCA views and reconstructions (PSNR). With a SiT and an encoder: CKNNA
(k = 10) between the SiT hidden state after every block (noised latent at ``t``, correct labels,
tokens averaged) and the encoder's pooled features of the clean image, and between the flattened
latent and the encoder. FD per checkpoint is read from evaluation JSON files in the run folder
(``repae evaluate --checkpoint RUN/checkpoints/step-... --out RUN/eval/step-....json``) or computed
by a callback the caller passes.

Everything is held in memory: ``n = 10 000`` images at 256 px are 2 GB of uint8.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from repae.errors import ConfigError

log = logging.getLogger("repae.analysis")

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")
STEP_RE = re.compile(r"step-(\d+)")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class Source:
    """One command-line input, resolved."""

    spec: str
    label: str
    kind: str  # "run" | "checkpoint" | "vae"
    path: Path
    checkpoints: list[Path] = field(default_factory=list)  # run: all, oldest first; checkpoint: [itself]
    config: Any = None  # RunConfig of runs / checkpoints


def _read_config(ckpt: Path):
    from repae.config import config_from_saved

    return config_from_saved(json.loads((ckpt / "state.json").read_text())["config"])


def resolve_source(spec: str) -> Source:
    """Classify ``spec``; raises :class:`ConfigError` (one line) for anything unusable."""
    from repae.training.checkpoint import list_checkpoints

    p = Path(spec)
    if not p.exists():
        raise ConfigError(f"'{spec}' does not exist: pass a run folder, a checkpoint folder (step-XXXXXXX), "
                          "an exported VAE folder or a VAE weights file")
    if p.is_dir() and (p / "state.json").is_file():
        return Source(spec, f"{p.parent.parent.name}@{p.name}", "checkpoint", p, [p], _read_config(p))
    if p.is_dir() and (p / "checkpoints").is_dir():
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise ConfigError(f"run '{spec}' has no complete checkpoint yet; train it first (or pass its e2e-vae/)")
        return Source(spec, p.name, "run", p, ckpts, _read_config(ckpts[-1]))
    if p.is_dir() and ((p / "config.json").is_file() or (p / "vae" / "config.json").is_file()):
        return Source(spec, p.name if p.name not in ("e2e-vae", "vae") else f"{p.parent.name}/{p.name}", "vae", p)
    if p.is_file() and p.suffix in VAE_SUFFIXES:
        return Source(spec, p.stem, "vae", p)
    raise ConfigError(f"'{spec}' is not a run folder, a checkpoint folder, a VAE folder (config.json) or a "
                      f"VAE weights file ({', '.join(VAE_SUFFIXES)}); pass one of those (repae train writes run "
                      "folders, repae export-vae VAE folders)")


def resolve_sources(specs: list[str]) -> list[Source]:
    sources = [resolve_source(s) for s in specs]
    seen: dict[str, int] = {}
    for s in sources:  # unique plot labels
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label} ({seen[s.label]})"
    return sources


def load_vae(source: Source, *, vae_preset: str | None = None):
    """Tokenizer of a VAE input: saved folder -> ``from_pretrained``; weights file -> preset + weights."""
    from repae.tokenizer.tokenizer import Tokenizer

    p = source.path
    from repae.tokenizer.rae import is_rae_folder

    if is_rae_folder(p):  # an RAE (export of an rae-decoder run): its encoder from the registry
        from repae.encoders.rae import load_rae_tokenizer

        return load_rae_tokenizer(p)
    if p.is_dir():
        folder = p if (p / "config.json").is_file() else p / "vae"
        return Tokenizer.from_pretrained(folder, require_stats=False)
    if vae_preset is None:
        raise ConfigError(f"'{source.spec}' is a weights file: pass --vae-preset (f8d4, f16d32, tiny-f4d4, tiny-f8d4)")
    tok = Tokenizer.from_preset(vae_preset)
    log.info("%s", tok.load_vae_weights(p))
    return tok


def checkpoint_step(path: Path) -> int:
    m = STEP_RE.search(path.name)
    return int(m.group(1)) if m else int(json.loads((path / "state.json").read_text())["step"])


def find_fd(run_dir: Path) -> dict[int, dict]:
    """``{step: evaluation result}`` from JSON files under ``run_dir`` that hold ``fid`` and name a
    checkpoint (``checkpoint`` containing ``step-XXXXXXX``, or a ``step`` key)."""
    found: dict[int, dict] = {}
    for f in sorted(Path(run_dir).rglob("*.json")):
        if any(part in ("checkpoints", "analysis", "e2e-vae") for part in f.relative_to(run_dir).parts[:-1]):
            continue
        try:
            obj = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("fid"), (int, float)):
            continue
        step = obj.get("step")
        if step is None and isinstance(obj.get("checkpoint"), str) and (m := STEP_RE.search(obj["checkpoint"])):
            step = int(m.group(1))
        if step is not None:
            found[int(step)] = {**obj, "file": str(f)}
    return found


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [n, 3, R, R]
    labels: torch.Tensor  # int64 [n]
    class_names: list[str] | None
    spec: str
    resolution: int


def load_images(spec: str, *, resolution: int, num_images: int, seed: int = 0, split: str = "test") -> ImageSet:
    """A seeded random subset of ``num_images`` images (all if fewer) of a dataset, read like training data."""
    from repae.data import build_dataset

    ds = build_dataset(spec, resolution=resolution, split=split)
    n = min(num_images, len(ds))
    if n < 2:
        raise ConfigError(f"data '{spec}' has {len(ds)} images; the analysis needs at least 2: pass a larger --data "
                          "and --num-images >= 2")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    items = [ds[i] for i in idx]
    images = torch.stack([torch.as_tensor(it[0]) for it in items])  # [n, 3, R, R] uint8
    labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)  # [n]
    if images.shape[-1] != resolution or images.shape[-2] != resolution:
        raise ConfigError(f"data '{spec}' gives {tuple(images.shape[-2:])} images, expected {resolution}x{resolution}")
    classes = getattr(ds, "classes", None)
    return ImageSet(images, labels, list(classes) if classes is not None else None, spec, resolution)


def _batches(n: int, batch_size: int):
    for s in range(0, n, batch_size):
        yield slice(s, min(s + batch_size, n))


# ---------------------------------------------------------------------------------------------
# Measurements of one model state
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def measure_vae(tokenizer, data: ImageSet, *, device: torch.device, batch_size: int = 64, grid: int = 8,
                full: bool = True) -> dict:
    """Latent statistics (always) and, with ``full``, DCT spectra, PCA views and reconstructions."""
    from repae.analysis.dct import combine_spectra, dct_spectrum
    from repae.analysis.latent_stats import latent_stats
    from repae.analysis.pca import pca_rgb
    from repae.conventions import uint8_to_unit

    tokenizer.eval().to(device)
    C, h, w = tokenizer.latent_shape(data.resolution)  # raises ConfigError on a resolution mismatch
    block = 8 if h % 8 == 0 and w % 8 == 0 else math.gcd(math.gcd(h, w), 8)
    zs, rgb_small, specs = [], [], {"latent": [], "latent_dc": [], "rgb": [], "rgb_dc": []}
    log_mse_sum, recon = 0.0, None
    n = data.images.shape[0]
    for sl in _batches(n, batch_size):
        x = uint8_to_unit(data.images[sl]).to(device)  # [b, 3, R, R]
        z = tokenizer.encode(x).mean.float()  # [b, C, h, w] posterior mean
        zs.append(z.cpu())
        rgb_small.append(F.interpolate(x, size=(h, w), mode="area").cpu())  # [b, 3, h, w]
        if full:
            specs["latent"].append(dct_spectrum(z, block=block, include_dc=False))
            specs["latent_dc"].append(dct_spectrum(z, block=block, include_dc=True))
            specs["rgb"].append(dct_spectrum(x, block=block, include_dc=False))
            specs["rgb_dc"].append(dct_spectrum(x, block=block, include_dc=True))
            x_rec = tokenizer.decode(z).float().clamp(-1, 1)  # [b, 3, R, R] decode of the mean
            log_mse_sum += float((x_rec - x).pow(2).flatten(1).mean(1).clamp_min(1e-12).log10().sum())
            have = 0 if recon is None else recon.shape[0]
            if have < grid:  # the first `grid` images, whatever the batch size
                more = x_rec[:grid - have].cpu()
                recon = more if recon is None else torch.cat([recon, more])
    z = torch.cat(zs)  # [n, C, h, w]
    mean, std = tokenizer.normalizer.statistics()
    out: dict[str, Any] = {
        "latent_shape": [C, h, w],
        "stats": {
            "raw": latent_stats(z).to_dict(),
            "normalizer": latent_stats(z, standardized=True, mean=mean, std=std,
                                       eps=tokenizer.normalizer.eps).to_dict(),
            "batch_standardized": latent_stats(z, standardized=True).to_dict(),
            "rgb_at_latent_grid": latent_stats(torch.cat(rgb_small)).to_dict(),
        },
        "normalizer": {"mean": mean.tolist(), "std": std.tolist()},
    }
    if full:
        spectra = {k: combine_spectra(v) for k, v in specs.items()}
        out["dct"] = {k: s.to_dict() for k, s in spectra.items()}
        # PSNR on [-1, 1] (data range 2): 10 log10(4 / MSE), averaged over images
        out["psnr"] = 10 * math.log10(4.0) - 10 * log_mse_sum / n
        g = min(grid, n)
        out["grid"] = {
            "inputs": data.images[:g],  # uint8 [g, 3, R, R]
            "recon": recon,  # float [-1, 1] [g, 3, R, R]
            "pca_joint": pca_rgb(z[:g], joint=True).images,  # [g, 3, h, w] in [0, 1]
            "pca_image": pca_rgb(z[:g], joint=False).images,
            "labels": data.labels[:g].tolist(),
        }
        pca_all = pca_rgb(z, joint=True)
        out["pca_explained_ratio"] = pca_all.explained_ratio.tolist()
    return out


def measure_alignment(sit, tokenizer, encoder, data: ImageSet, *, device: torch.device, t: float, path: str,
                      pool: str, k: int, batch_size: int = 64, seed: int = 0, objective=None):
    """Per-layer CKNNA (:func:`repae.analysis.cknna.layerwise_cknna`) of one model state (``objective``:
    the generator's, which makes its noised input; default flow matching on ``path``)."""
    from repae.analysis.cknna import collect_alignment_features, layerwise_cknna

    if sit is not None:
        sit.eval().to(device)
    tokenizer.eval().to(device)
    feats = collect_alignment_features(sit, tokenizer, encoder, (data.images, data.labels), t=t, path=path,
                                       objective=objective, pool=pool, batch_size=batch_size, seed=seed)
    return layerwise_cknna(feats, k=k, device=device)


# ---------------------------------------------------------------------------------------------
# The whole analysis
# ---------------------------------------------------------------------------------------------


@dataclass
class AnalysisOptions:
    num_images: int = 1000  # n: CKNNA kernels are n x n
    batch_size: int = 64
    t: float = 0.5  # noise level of the SiT input (0 data, 1 noise; a DiT: the timestep of the same noise level)
    pool: str = "mean"  # "mean" (published protocol) | "tokens"
    k: int = 10
    grid: int = 8  # images in the picture grids
    seed: int = 0
    checkpoints: str = "all"  # "all" | "latest": which checkpoints of a run are measured
    vae_preset: str | None = None  # architecture of a VAE weights file


def load_checkpoint_models(ckpt: Path, device: torch.device):
    """(tokenizer with EMA normaliser statistics, EMA SiT or None, config) of a checkpoint -- what sampling uses.

    Checkpoints of tokenizer-only recipes (no ``sit.*`` tensors) give ``sit=None``.
    """
    from safetensors import safe_open

    cfg = _read_config(ckpt)
    with safe_open(str(ckpt / "models.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    if any(k.startswith("sit.") for k in keys):
        from repae.sampling.generator import Generator

        gen = Generator.from_checkpoint(ckpt, ema=True, map_location="cpu")
        return gen.tokenizer.to(device).eval(), gen.model.to(device).eval(), cfg
    from repae.training.builders import build_tokenizer_arch

    tok = build_tokenizer_arch(cfg)
    norm = "ema.normalizer." if any(k.startswith("ema.normalizer.") for k in keys) else "normalizer."
    with safe_open(str(ckpt / "models.safetensors"), framework="pt") as f:
        tok.vae.load_state_dict({k[4:]: f.get_tensor(k) for k in keys if k.startswith("vae.")})
        tok.normalizer.load_state_dict({k[len(norm):]: f.get_tensor(k) for k in keys if k.startswith(norm)})
    return tok.to(device).eval(), None, cfg


def analyze(sources: list[Source], data: ImageSet, *, device: torch.device, options: AnalysisOptions,
            encoder=None, encoder_name: str | None = None,
            fd_fn: Callable[[Path], float | None] | None = None) -> dict:
    """Measure every source; returns a JSON-able dict plus the picture tensors under ``"grid"`` keys."""
    results = []
    for src in sources:
        entry: dict[str, Any] = {"label": src.label, "kind": src.kind, "path": str(src.path)}
        if src.kind == "vae":
            tok = load_vae(src, vae_preset=options.vae_preset)
            entry.update(measure_vae(tok, data, device=device, batch_size=options.batch_size, grid=options.grid))
            if encoder is not None:
                curve = measure_alignment(None, tok, encoder, data, device=device, t=options.t, path="linear",
                                          pool="mean", k=options.k, batch_size=options.batch_size, seed=options.seed)
                entry["latent_cknna"] = curve.latent_cknna
            results.append(entry)
            continue
        cfg = src.config
        entry.update(recipe=cfg.train.recipe, align_depth=cfg.align.depth, sit=cfg.model.preset)
        ckpts = src.checkpoints if options.checkpoints == "all" else src.checkpoints[-1:]
        fds = find_fd(src.path if src.kind == "run" else src.path.parent.parent)
        steps = []
        for i, ckpt in enumerate(ckpts):
            latest = i == len(ckpts) - 1
            tok, sit, _ = load_checkpoint_models(ckpt, device)
            step = checkpoint_step(ckpt)
            m = measure_vae(tok, data, device=device, batch_size=options.batch_size, grid=options.grid, full=latest)
            row: dict[str, Any] = {"step": step, "checkpoint": str(ckpt), "stats": m["stats"]}
            if encoder is not None:  # sit=None (tokenizer-only recipes): the latent-side value only
                from repae.training.builders import build_objective

                curve = measure_alignment(sit, tok, encoder, data, device=device, t=options.t,
                                          path=cfg.diffusion.path, pool=options.pool if sit is not None else "mean",
                                          k=options.k, batch_size=options.batch_size, seed=options.seed,
                                          objective=build_objective(cfg, sit))  # DiT: DDPM noising
                row["latent_cknna"] = curve.latent_cknna
                if curve.layers:
                    row["cknna"] = curve.to_dict()
                    row["cknna_at_depth"] = curve.at(min(cfg.align.depth, max(curve.layers)))
                    row["cknna_best_layer"], row["cknna_best"] = curve.best()
            fd = fds.get(step, {}).get("fid")
            if fd is None and fd_fn is not None:
                fd = fd_fn(ckpt)
            row["fd"] = fd
            steps.append(row)
            if latest:
                entry.update({k: v for k, v in m.items() if k != "stats"})
                entry["stats"] = m["stats"]
                entry["step"] = step
                for key in ("cknna", "cknna_at_depth", "latent_cknna", "fd"):
                    if key in row:
                        entry[key] = row[key]
            del tok, sit
        entry["checkpoints"] = steps
        results.append(entry)
    return {
        "settings": {
            "data": data.spec, "resolution": data.resolution, "num_images": int(data.images.shape[0]),
            "t": options.t, "pool": options.pool, "k": options.k, "seed": options.seed,
            "encoder": encoder_name, "latent": "posterior mean",
        },
        "inputs": results,
    }


def strip_tensors(obj):
    """The JSON-able part of :func:`analyze`'s result (picture tensors dropped)."""
    if isinstance(obj, dict):
        return {k: strip_tensors(v) for k, v in obj.items() if k != "grid"}
    if isinstance(obj, list):
        return [strip_tensors(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
