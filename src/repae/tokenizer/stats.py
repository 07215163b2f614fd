"""Per-channel latent statistics of a VAE over a dataset (spec 3.6, 11.28), and their file formats.

No official script computes the statistics of the initial VAEs (spec 11.28). We compute the
per-channel mean and standard deviation of **posterior samples** z = mean + std * eps (not of the
posterior means) over every spatial position of every image: samples are what the latent
normaliser sees during REPA-E training (spec 11.6), so their variance -- which includes the
posterior variance -- is the right initial ``running_var``. ``use_mean=True`` gives the
statistics of the means instead. The REPA-E normaliser keeps adapting these during training.

Sums are streamed in float64 (sum, sum of squares, count per channel), which is exact enough
for any realistic dataset size, and all-reduced across processes when torch.distributed is up.

File formats:
  * JSON ``{"mean": [C], "std": [C], ...}`` (ours; also the content of ``latent_stats.json``);
  * REPA-E ``*-latents-stats.pt``: ``{"latents_scale": [1,C,1,1] = 1/std, "latents_bias": [1,C,1,1] = mean}``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

from repae.conventions import uint8_to_unit
from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import read_weights
from repae.utils.io import atomic_path, write_json


def _images_of(batch) -> torch.Tensor:
    """A batch may be an image tensor or an (images, labels, ...) tuple/list/dict."""
    if isinstance(batch, dict):
        batch = batch.get("image", batch.get("images"))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not torch.is_tensor(batch):
        raise TypeError(f"expected image batches [B, 3, H, W] (or (images, labels)), got {type(batch).__name__}")
    if batch.dim() == 3:
        batch = batch[None]
    return uint8_to_unit(batch) if batch.dtype == torch.uint8 else batch.float()


@torch.no_grad()
def compute_latent_stats(
    tokenizer,
    images_iterable: Iterable,
    *,
    use_mean: bool = False,
    max_images: int | None = None,
    progress: bool = True,
    seed: int = 0,
    sync: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean [C], std [C]) of raw latents over ``images_iterable``.

    Args:
        tokenizer: a :class:`~repae.tokenizer.tokenizer.Tokenizer` (its device is used).
        images_iterable: batches of uint8 [B, 3, H, W] (or float in [-1, 1]), optionally as
            (images, labels) tuples -- e.g. a DataLoader.
        use_mean: statistics of posterior means instead of posterior samples (default samples).
        max_images: stop after this many images in total (split evenly across processes).
        progress: show a tqdm bar (rank 0 only).
        seed: seed of the posterior-sampling generator (offset by rank), for reproducibility.
        sync: pool the statistics over processes (each rank passing its own shard). ``None``: when
            torch.distributed is initialised. ``False``: this process alone, no rank offset — every
            rank passing the same images then gets the same result as a 1-process run.

    Returns:
        float32 (mean, std) with std the population standard deviation (biased), on CPU.
    """
    from tqdm.auto import tqdm

    if sync is None:
        sync = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if sync else (0, 1)
    device = next(tokenizer.parameters()).device
    limit = None if max_images is None else math.ceil(max_images / world)
    gen = torch.Generator(device=device).manual_seed(seed + rank)
    C = tokenizer.latent_channels
    acc = torch.zeros(3, C, dtype=torch.float64, device=device)  # [sum, sum of squares, count]
    was_training = tokenizer.training
    tokenizer.eval()
    seen = 0
    bar = tqdm(total=limit, desc="latent stats", unit="img", disable=not progress or rank != 0)
    try:
        for batch in images_iterable:
            x = _images_of(batch).to(device)  # [B, 3, H, W]
            if limit is not None:
                x = x[: limit - seen]
            if len(x) == 0:
                break
            post = tokenizer.encode(x)
            z = (post.mode() if use_mean else post.sample(gen)).double()  # [B, C, h, w]
            acc[0] += z.sum((0, 2, 3))
            acc[1] += z.pow(2).sum((0, 2, 3))
            acc[2] += z.numel() // C
            seen += len(x)
            bar.update(len(x))
            if limit is not None and seen >= limit:
                break
    finally:
        bar.close()
        tokenizer.train(was_training)
    if world > 1:
        dist.all_reduce(acc)
    n = acc[2]
    if float(n.min()) == 0:
        raise ConfigError("no images were seen while computing latent statistics; check the dataset / --max-images")
    mean = acc[0] / n
    var = (acc[1] / n - mean.pow(2)).clamp_min(0.0)
    return mean.float().cpu(), var.sqrt().float().cpu()


def save_stats(path: str | os.PathLike, mean: torch.Tensor, std: torch.Tensor, **extra) -> None:
    """Write statistics atomically: ``.pt`` -> REPA-E {latents_scale, latents_bias} [1,C,1,1]; else JSON."""
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    p = Path(path)
    if p.suffix == ".pt":
        with atomic_path(p) as tmp:
            torch.save(to_scale_bias(mean, std), tmp)
    else:
        write_json(p, {"mean": mean.tolist(), "std": std.tolist(), **extra})


def to_scale_bias(mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    """REPA-E stats-file dict: latents_bias = mean, latents_scale = 1/std, both [1, C, 1, 1] (spec 3.6)."""
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return {"latents_scale": 1.0 / std, "latents_bias": mean}


def load_stats(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read (mean [C], std [C]) from any of the layouts users have on disk.

    * ``repae``: JSON ``{mean, std, ...}`` (``repae latent-stats``), or a saved tokenizer folder;
    * REPA-E ``*-latents-stats.pt``: ``{latents_scale [1, C, 1, 1], latents_bias [1, C, 1, 1]}`` with
      bias = mean and scale = 1/std (spec-repae.md 3.6);
    * VA-VAE / LightningDiT ``latents_stats.pt``: ``{mean [1, C, 1, 1], std [1, C, 1, 1]}``
      (spec-related-methods.md 1.5).

    ``.pt`` files are read with :func:`repae.interop.io.read_weights` (``weights_only``): no pickled code can run.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "latent_stats.json"
    if not p.is_file():
        raise MissingWeightsError(f"latent statistics not found at {p}",
                                  "run 'repae latent-stats --out FILE' or pass an existing stats file")
    if p.suffix in (".pt", ".pth", ".bin"):
        d = read_weights(p, what="torch statistics file",
                         fix="expected a REPA-E -latents-stats.pt or a VA-VAE latents_stats.pt")
        if isinstance(d, dict) and {"latents_scale", "latents_bias"} <= set(d):
            return d["latents_bias"].float().reshape(-1), (1.0 / d["latents_scale"].float()).reshape(-1)
        if isinstance(d, dict) and {"mean", "std"} <= set(d):
            return torch.as_tensor(d["mean"]).float().reshape(-1), torch.as_tensor(d["std"]).float().reshape(-1)
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ConfigError(f"{p} holds {keys}; expected {{latents_scale, latents_bias}} (REPA-E) or "
                          "{mean, std} (VA-VAE)")
    try:
        d = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{p} is not JSON; pass a .json written by 'repae latent-stats' or a REPA-E / VA-VAE "
                          ".pt statistics file") from None
    d = json.loads(p.read_text())
    if not {"mean", "std"} <= set(d):
        raise ConfigError(f"{p} lacks 'mean'/'std'; expected a JSON written by 'repae latent-stats'")
    return torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32)
