"""Self-supervised pretraining loop for ``repae-vit-t4`` (library side of ``repae pretrain-encoder``).

``pretrain(images, cfg)`` trains the backbone with the chosen objective (see
:mod:`repae.ssl.objectives`) and returns its timm-format state dict plus the loss curve;
``save_encoder`` writes the weights (safetensors) and a JSON record next to them, atomically.

Determinism: the model init uses ``torch.manual_seed(seed)``; the epoch order uses a generator
seeded from ``(seed, epoch)``; every step's augmentations and masks use a generator seeded from
``(seed, step)`` (EDM2-style per-step reseeding), so a run is a pure function of its seed and
thread count (CPU reductions are order-dependent across thread counts).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from repae.conventions import uint8_to_unit
from repae.errors import ConfigError
from repae.ssl.objectives import OBJECTIVES
from repae.ssl.vit import build_vit_t4
from repae.utils.io import save_safetensors, write_json

DEFAULT_LR = {"mae": 8e-4, "dino": 1e-3}  # peak AdamW lr at batch 128 (chosen by a short sweep, see ssl/__init__)


@dataclass
class PretrainConfig:
    objective: str = "mae"                # "mae" (default) or "dino" (DINO + iBOT patch term)
    epochs: int = 40
    batch_size: int = 128
    lr: float | None = None               # peak lr; None -> DEFAULT_LR[objective]
    min_lr: float = 1e-5                  # cosine floor
    weight_decay: float = 0.05            # on matrices only (not biases / norms / tokens)
    warmup_epochs: float = 1.0            # linear warm-up length
    grad_clip: float = 3.0                # DINO's clip value
    seed: int = 0
    device: str = "cpu"
    arch_overrides: dict = field(default_factory=dict)       # tests only (e.g. depth=1)
    objective_overrides: dict = field(default_factory=dict)  # fields of MAEConfig / DINOConfig


@dataclass
class PretrainResult:
    state_dict: dict[str, torch.Tensor]   # backbone only, timm key layout
    epoch_losses: list[float]             # mean loss per epoch
    num_steps: int
    wall_s: float
    config: PretrainConfig


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * p))


def build_objective(cfg: PretrainConfig) -> torch.nn.Module:
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {cfg.objective!r}; choose one of {sorted(OBJECTIVES)}")
    cls, cfg_cls = OBJECTIVES[cfg.objective]
    torch.manual_seed(cfg.seed)
    backbone = build_vit_t4(dynamic_img_size=True, **cfg.arch_overrides)
    return cls(backbone, cfg_cls(**cfg.objective_overrides))


def pretrain(images: torch.Tensor, cfg: PretrainConfig, *, progress: bool = True) -> PretrainResult:
    """Train the encoder on uint8 images ``[N, 3, H, W]``; returns the backbone weights and losses."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError(f"expected uint8 images [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
    n = images.shape[0]
    if n < cfg.batch_size:
        raise ConfigError(f"{n} images is fewer than one batch of {cfg.batch_size}; lower --batch-size")
    device = torch.device(cfg.device)
    model = build_objective(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=0.0, betas=(0.9, 0.95))
    peak = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.objective]
    steps_per_epoch = n // cfg.batch_size  # drop_last
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    data = images.to(device)

    epoch_losses: list[float] = []
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"pretrain[{cfg.objective}]", disable=not progress, dynamic_ncols=True)
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 10_007 + epoch))
        running = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device)
            x = uint8_to_unit(data[idx])  # [B, 3, H, W] in [-1, 1]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, peak, cfg.min_lr)
            loss = model.loss(x, _step_generator(cfg.seed, step))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            model.after_step(step / total)
            running += loss.detach()
            bar.update(1)
            if i % 5 == 0 or i == steps_per_epoch - 1:
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        epoch_losses.append(float(running) / steps_per_epoch)
    bar.close()
    wall = time.perf_counter() - t0
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    return PretrainResult(state_dict=state, epoch_losses=epoch_losses, num_steps=step, wall_s=wall, config=cfg)


def record_path(weights_path: str | os.PathLike) -> str:
    """The JSON record that sits next to a weights file (same stem, ``.json``)."""
    root, _ = os.path.splitext(os.fspath(weights_path))
    return root + ".json"


def save_encoder(path: str | os.PathLike, result: PretrainResult, *, extra: dict | None = None) -> dict:
    """Write weights (safetensors, timm keys) and the JSON record; returns the record."""
    record = {
        "architecture": "repae-vit-t4",
        "objective": result.config.objective,
        "seed": result.config.seed,
        "epochs": result.config.epochs,
        "num_steps": result.num_steps,
        "wall_s": round(result.wall_s, 1),
        "loss_curve": [round(v, 5) for v in result.epoch_losses],
        "config": asdict(result.config),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **(extra or {}),
    }
    meta = {"architecture": "repae-vit-t4", "objective": result.config.objective, "seed": result.config.seed,
            "format": "timm VisionTransformer state dict"}
    save_safetensors(path, result.state_dict, metadata=meta)
    write_json(record_path(path), record)
    return record
