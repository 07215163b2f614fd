"""Training checkpoints: safetensors + JSON, written atomically, with automatic resume.

Layout of one checkpoint (a folder, renamed into place only when complete)::

    <run>/checkpoints/step-0000400/
        models.safetensors   sit.*, ema.model.*, ema.normalizer.*, vae.*, normalizer.*, disc.*
        optim.safetensors    tensors of the three optimizers (flattened)
        state.json           step, images seen, data-sampler position, optimizer hyper-parameters,
                             grad-scaler state, the resolved run config

No pickles: every tensor is in safetensors and everything else is JSON, so a checkpoint can be
inspected and loaded without executing code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, field = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[field] = value
    for idx, values in meta[name]["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})


def save_checkpoint(run_dir: str | Path, step: int, *, models: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-XXXXXXX`` atomically (temp folder + rename) and prune old checkpoints."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:07d}"
    tmp = ckpt_root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    flat = {f"{group}.{k}": v.detach().cpu().contiguous() for group, sd in models.items() for k, v in sd.items()}
    save_file(flat, str(tmp / "models.safetensors"))
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        _flatten_optimizer(name, opt, opt_tensors, opt_meta)
    save_file(opt_tensors, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizers": opt_meta}, indent=2, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (-> its latest checkpoint)."""
    p = Path(path)
    if (p / "state.json").exists():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in '{p}': pass a run folder with checkpoints/ or a step-XXXXXXX folder")
    return latest


def read_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor], dict]:
    """-> (models grouped by prefix, flat optimizer tensors, state dict)."""
    p = resolve_checkpoint(path)
    flat = load_file(str(p / "models.safetensors"))
    models: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, rest = key.split(".", 1)
        if group == "ema":
            sub, rest = rest.split(".", 1)
            group = f"ema.{sub}"
        models.setdefault(group, {})[rest] = value
    opt_tensors = load_file(str(p / "optim.safetensors"))
    state = json.loads((p / "state.json").read_text())
    return models, opt_tensors, state


def restore_optimizers(optimizers: dict[str, torch.optim.Optimizer], opt_tensors: dict, state: dict) -> None:
    for name, opt in optimizers.items():
        _unflatten_optimizer(name, opt, opt_tensors, state["optimizers"])
