"""Linear-probe feature functions for encoders (used by ``repae linear-probe``).

    repae linear-probe                                   # shipped repae-vit-t4, embedded train -> test
    repae linear-probe --encoder random                  # same architecture, random init (baseline)
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


def _random_fn(weights, seed: int, device: str):
    from repae.ssl.vit import build_vit_t4

    torch.manual_seed(seed)
    return _vit_t4_fn(build_vit_t4().to(device))


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


def token_function(name: str, *, weights=None, seed: int = 0, resolution: int = 32, device: str = "cpu"):
    if name == "random":
        return _random_fn(weights, seed, device)
    return _registry_fn(name, weights, resolution, device)


# --------------------------------------------------------------------------------------------
# probing
# --------------------------------------------------------------------------------------------


def _data(spec: str, split: str, resolution: int):
    from repae.data import build_dataset, dataset_to_tensor

    return dataset_to_tensor(build_dataset(spec, resolution=resolution, split=split))


def probe_encoders(state_dicts: dict, *, seed: int = 0, device: str = "cpu", weight_decay: float = 1e-4,
                   train_data: str = "embedded", test_data: str = "embedded", include_random: bool = True) -> dict:
    """Probe in-memory ``repae-vit-t4`` state dicts (and a random encoder) -> ``{name: ProbeResult}``."""
    from repae.ssl.probe import extract_features, linear_probe
    from repae.ssl.vit import build_vit_t4

    xtr, ytr = _data(train_data, "train", 32)
    xte, yte = _data(test_data, "test", 32)
    fns = {}
    for name, sd in state_dicts.items():
        model = build_vit_t4()
        model.load_state_dict(sd, strict=True)
        fns[name] = _vit_t4_fn(model.to(device))
    if include_random:
        fns["random"] = _random_fn(None, seed, device)
    out = {}
    for name, fn in fns.items():
        ftr = extract_features(fn, xtr, device=device)
        fte = extract_features(fn, xte, device=device)
        out[name] = linear_probe(ftr, ytr, fte, yte, weight_decay=weight_decay)
    return out
