"""Self-supervised pretraining loop for ``repae-vit-t4`` (library side of ``repae pretrain-encoder``).

``pretrain(images, cfg)`` trains the backbone with the chosen objective (see
:mod:`repae.ssl.objectives`) and returns its timm-format state dict plus the loss curve;
``save_encoder`` writes the weights (safetensors) and a JSON record next to them, atomically.

Determinism: the model init uses ``torch.manual_seed(seed)``; the epoch order uses a generator
seeded from ``(seed, epoch)``; every step's augmentations and masks use a generator seeded from
``(seed, step)`` (EDM2-style per-step reseeding), so a run is a pure function of its seed and
thread count (CPU reductions are order-dependent across thread counts).

Resume: with ``state_path`` set, the full training state (backbone, projection head / teacher,
optimizer, losses so far) is written atomically after every epoch, and a rerun with the same
config continues from the last finished epoch. Because the data order and the augmentations are
functions of ``(seed, epoch)`` and ``(seed, step)``, a resumed run is bit-identical to one never
interrupted (tested). A state written by a different config is refused, not silently mixed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from repae.conventions import uint8_to_unit
from repae.encoders.convnet import build_cnn_p4
from repae.errors import ConfigError
from repae.ssl.objectives import OBJECTIVES, VIT_ONLY
from repae.ssl.vit import build_vit_t4
from repae.utils.io import atomic_path, save_safetensors, write_json

# peak AdamW lr (mae/dino at batch 128, chosen by a short sweep, see ssl/__init__; simclr at batch 256)
DEFAULT_LR = {"mae": 8e-4, "dino": 1e-3, "simclr": 2e-3}
# architecture name -> (builder of the trainable backbone, registry name of the frozen encoder)
ARCHITECTURES = {
    "vit-t4": (lambda **o: build_vit_t4(dynamic_img_size=True, **o), "repae-vit-t4"),
    "cnn-p4": (build_cnn_p4, "repae-cnn-p4"),
}
DEFAULT_WD = {"mae": 0.05, "dino": 0.05, "simclr": 1e-4}  # AdamW decoupled weight decay
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class PretrainConfig:
    objective: str = "mae"                # "mae" (default), "dino" (DINO + iBOT patch term) or "simclr"
    architecture: str = "vit-t4"          # "vit-t4" (repae-vit-t4) or "cnn-p4" (repae-cnn-p4; simclr only)
    precision: str = "fp32"               # "fp32" or "bf16" (autocast of the forward; weights and optimizer fp32)
    epochs: int = 40
    batch_size: int = 128
    lr: float | None = None               # peak lr; None -> DEFAULT_LR[objective]
    min_lr: float = 1e-5                  # cosine floor
    weight_decay: float | None = None     # on matrices only (not biases / norms / tokens); None -> DEFAULT_WD
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


def check_config(cfg: PretrainConfig) -> None:
    """One-line errors for names that do not exist or do not fit together."""
    for what, value, table in (("objective", cfg.objective, OBJECTIVES), ("architecture", cfg.architecture, ARCHITECTURES),
                               ("precision", cfg.precision, PRECISIONS)):
        if value not in table:
            raise ConfigError(f"unknown {what} {value!r}; choose one of {sorted(table)}")
    if cfg.objective in VIT_ONLY and cfg.architecture != "vit-t4":
        raise ConfigError(f"objective {cfg.objective} masks ViT patch tokens and needs --architecture vit-t4; "
                          f"use --objective simclr for {cfg.architecture}")
    if cfg.lr is not None and not 0 < cfg.lr < float("inf"):  # a negative lr ascends the loss, silently
        raise ConfigError(f"--lr must be a finite number > 0 (got {cfg.lr}); leave it out for the objective's default")


def build_objective(cfg: PretrainConfig) -> torch.nn.Module:
    check_config(cfg)
    cls, cfg_cls = OBJECTIVES[cfg.objective]
    torch.manual_seed(cfg.seed)
    backbone = ARCHITECTURES[cfg.architecture][0](**cfg.arch_overrides)
    return cls(backbone, cfg_cls(**cfg.objective_overrides))


def _load_state(path: str | os.PathLike | None, cfg: PretrainConfig, model: torch.nn.Module,
                opt: torch.optim.Optimizer) -> tuple[int, list[float], float]:
    """Restore a per-epoch state if ``path`` holds one; returns (epochs done, epoch losses, wall so far)."""
    if path is None or not os.path.exists(path):
        return 0, [], 0.0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ConfigError(f"cannot read the pretraining state {path} ({type(err).__name__}: {err}); "
                          f"delete it to start over") from None
    if state.get("config") != asdict(cfg):
        raise ConfigError(f"the pretraining state {path} was written by another config "
                          f"({state.get('config')}); delete it or pass the same flags to resume")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state["epoch_losses"]), float(state["wall_s"])


def _save_state(path: str | os.PathLike, cfg: PretrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
                epoch: int, epoch_losses: list[float], wall_s: float) -> None:
    state = {"config": asdict(cfg), "epoch": epoch, "epoch_losses": epoch_losses, "wall_s": wall_s,
             "model": model.state_dict(), "optimizer": opt.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def pretrain(images: torch.Tensor, cfg: PretrainConfig, *, progress: bool = True,
             state_path: str | os.PathLike | None = None) -> PretrainResult:
    """Train the encoder on uint8 images ``[N, 3, H, W]``; returns the backbone weights and losses.

    ``state_path``: where the per-epoch resume state lives (see the module docstring); None = no resume.
    """
    check_config(cfg)
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
    wd = cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WD[cfg.objective]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                             {"params": no_decay, "weight_decay": 0.0}], lr=0.0, betas=(0.9, 0.95))
    peak = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.objective]
    steps_per_epoch = n // cfg.batch_size  # drop_last
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    data = images.to(device)

    first_epoch, epoch_losses, wall_before = _load_state(state_path, cfg, model, opt)
    step = first_epoch * steps_per_epoch
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"pretrain[{cfg.objective}]", disable=not progress, dynamic_ncols=True)
    model.train()
    for epoch in range(first_epoch, cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 10_007 + epoch))
        running = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device)
            x = uint8_to_unit(data[idx])  # [B, 3, H, W] in [-1, 1]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, peak, cfg.min_lr)
            with torch.autocast(device.type, dtype=PRECISIONS[cfg.precision] or torch.float32,
                                enabled=PRECISIONS[cfg.precision] is not None):
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
        if state_path is not None:
            _save_state(state_path, cfg, model, opt, epoch + 1, epoch_losses, wall_before + time.perf_counter() - t0)
    bar.close()
    wall = wall_before + time.perf_counter() - t0
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    return PretrainResult(state_dict=state, epoch_losses=epoch_losses, num_steps=step, wall_s=wall, config=cfg)


def record_path(weights_path: str | os.PathLike) -> str:
    """The JSON record that sits next to a weights file (same stem, ``.json``)."""
    root, _ = os.path.splitext(os.fspath(weights_path))
    return root + ".json"


def save_encoder(path: str | os.PathLike, result: PretrainResult, *, extra: dict | None = None) -> dict:
    """Write weights (safetensors, timm keys) and the JSON record; returns the record."""
    name = ARCHITECTURES[result.config.architecture][1]
    record = {
        "architecture": name,
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
    meta = {"architecture": name, "objective": result.config.objective, "seed": result.config.seed,
            "format": "timm VisionTransformer state dict" if name == "repae-vit-t4" else "repae ConvTokenNet state dict"}
    save_safetensors(path, result.state_dict, metadata=meta)
    write_json(record_path(path), record)
    return record
