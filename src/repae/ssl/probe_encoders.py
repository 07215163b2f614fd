"""Linear-probe feature functions for encoders (used by ``repae linear-probe``).

    repae linear-probe                                   # shipped repae-vit-t4, embedded train -> test
    repae linear-probe --encoder random                  # same architecture, random init (baseline)
    repae linear-probe --encoder pixels                  # raw grey values (the floor a target must beat)
    repae linear-probe --encoder repae-cnn-p4            # the shipped SimCLR CNN
    repae linear-probe --encoder repae-vit-t4 --encoder-weights runs/encoder/repae-vit-t4.safetensors

Prints the accuracy and writes a JSON ``{accuracy, train_accuracy, ...}`` (``--out``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _vit_t4_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    from repae.ssl.vit import patch_tokens, preprocess

    model.eval().requires_grad_(False)
    return lambda u: patch_tokens(model, preprocess(u))  # [B, 64, D]


def _registry_fn(name: str, weights, resolution: int, device: str):
    """Encoders from ``repae.encoders`` (another module); ``repae-vit-t4`` falls back to a local loader."""
    try:
        from repae.encoders import load_encoder
    except ImportError:
        load_encoder = None
    if load_encoder is not None:
        enc = load_encoder(name, weights=weights, resolution=resolution, device=device)
        return lambda u: enc(u)  # uint8 -> [B, N, D]
    if name == "repae-vit-t4":
        from repae.ssl.vit import load_vit_t4

        return _vit_t4_fn(load_vit_t4(weights).to(device))
    from repae.errors import ConfigError

    raise ConfigError(f"encoder {name!r} needs repae.encoders; use 'repae-vit-t4' or 'random'")


def _pixels_fn(u: torch.Tensor) -> torch.Tensor:
    """The baseline every encoder must beat: the grey values themselves as one token ``[B, 1, H*W]``."""
    return u[:, :1].flatten(1).float()[:, None] / 255.0  # [B, 1, H*W]


def token_function(name: str, *, weights=None, seed: int = 0, resolution: int = 32, device: str = "cpu"):
    if name == "pixels":
        return _pixels_fn
    if name == "random":
        return _state_dict_fn("vit-t4", None, seed, device, {})
    return _registry_fn(name, weights, resolution, device)


# --------------------------------------------------------------------------------------------
# probing
# --------------------------------------------------------------------------------------------


def _data(spec: str, split: str, resolution: int):
    from repae.data import build_dataset, dataset_to_tensor

    return dataset_to_tensor(build_dataset(spec, resolution=resolution, split=split))


def _state_dict_fn(architecture: str, state_dict: dict | None, seed: int, device: str, arch_overrides: dict):
    """Token function of an in-memory ``vit-t4`` / ``cnn-p4`` state dict (``None``: seeded random init)."""
    from repae.conventions import uint8_to_unit
    from repae.ssl.train import ARCHITECTURES

    torch.manual_seed(seed)
    model = ARCHITECTURES[architecture][0](**arch_overrides)  # the pretraining builder: same state dict
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    if architecture == "vit-t4":
        return _vit_t4_fn(model.to(device))
    model = model.to(device).eval().requires_grad_(False)
    return lambda u: model(uint8_to_unit(u))  # [B, 64, D]


def probe_encoders(state_dicts: dict, *, seed: int = 0, device: str = "cpu", weight_decay: float = 1e-4,
                   train_data: str = "embedded", test_data: str = "embedded", include_random: bool = True,
                   architecture: str = "vit-t4", arch_overrides: dict | None = None) -> dict:
    """Probe in-memory state dicts of one architecture (and a random one of its shape) -> ``{name: ProbeResult}``."""
    from repae.ssl.probe import extract_features, linear_probe

    xtr, ytr = _data(train_data, "train", 32)
    xte, yte = _data(test_data, "test", 32)
    over = dict(arch_overrides or {})
    fns = {name: _state_dict_fn(architecture, sd, seed, device, over) for name, sd in state_dicts.items()}
    if include_random:
        fns["random"] = _state_dict_fn(architecture, None, seed, device, over)
    out = {}
    for name, fn in fns.items():
        ftr = extract_features(fn, xtr, device=device)
        fte = extract_features(fn, xte, device=device)
        out[name] = linear_probe(ftr, ytr, fte, yte, weight_decay=weight_decay)
    return out
