"""Build ``repae`` networks from published generator checkpoints (SiT, REPA, REPA-E, DiT, LightningDiT), strictly.

The file formats, layouts, layout detection, architecture inference and key converters are
:mod:`repae.interop.official` (reading through the one safe reader :func:`repae.interop.io.read_weights`:
no code from a checkpoint ever runs); the time conventions are :mod:`repae.models.time_convention`.
Here: :func:`build_official_model` (a preset built to the weights' architecture, then loaded after the
one strict key and shape check :func:`~repae.interop.io.check_state_dict`), :func:`load_official_weights`
(into an existing network, ``train.init_from``) and :func:`guess_presets` (for error messages).

The names that moved are re-exported, so ``from repae.models.official import KeyLayoutError,
load_official_file, ...`` keeps working (one class, one function: the same objects).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from repae.errors import ConfigError
from repae.interop.io import KeyLayoutError, check_state_dict, strip_wrappers
from repae.interop.official import (
    BN_KEYS,
    ENTRY_NAMES,
    LAYOUTS,
    SD_LATENT_SCALE,
    SIGMA_KEYS,
    Layout,
    architecture_key,
    detect_layout,
    infer_architecture,
    load_official_file,
    official_to_repae,
    repae_to_official,
    resolve_official_file,
    select_state_dict,
)
from repae.models.time_convention import TimeFlipped, flip_time_convention_

__all__ = [
    "BN_KEYS",
    "ENTRY_NAMES",
    "LAYOUTS",
    "SD_LATENT_SCALE",
    "SIGMA_KEYS",
    "KeyLayoutError",
    "Layout",
    "OfficialWeights",
    "TimeFlipped",
    "build_official_model",
    "check_state_dict",
    "detect_layout",
    "flip_time_convention_",
    "guess_presets",
    "infer_architecture",
    "load_official_file",
    "load_official_weights",
    "official_to_repae",
    "repae_to_official",
    "resolve_official_file",
    "select_state_dict",
    "strip_wrappers",
]


def guess_presets(state_dict: Mapping[str, Tensor], family: str | None = None) -> list[str]:
    """Model presets whose depth / hidden size / patch size match the weights (for error messages)."""
    from repae.models import MODEL_PRESETS

    key = architecture_key(state_dict)
    if key is None:
        return []
    depth, D, p = key
    return [name for name, a in MODEL_PRESETS.items()
            if a["depth"] == depth and a["hidden_size"] == D and a["patch_size"] == p
            and (family is None or name.startswith(family + "-"))]


@dataclass
class OfficialWeights:
    """What :func:`build_official_model` read: where the weights came from and what is not a network weight."""

    layout: str  # key of LAYOUTS
    entry: str  # "ema" | "model" | "bare" | ...
    preset: str
    architecture: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)  # bn / sigma / legacy_encoder_depth
    source: str = ""

    @property
    def time(self) -> str:
        return LAYOUTS[self.layout].time

    def describe(self) -> str:
        a = self.architecture
        return (f"{self.source or 'checkpoint'}: {self.layout} layout ({LAYOUTS[self.layout].source.split()[0]}), "
                f"entry '{self.entry}', {self.preset} on {a['in_channels']}x{a['input_size']}x{a['input_size']} "
                f"latents, time convention {self.time}")


def _family(preset: str) -> str:
    from repae.models import MODEL_PRESETS

    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    return "LightningDiT" if preset.startswith("LightningDiT-") else preset.split("-", 1)[0]


def build_official_model(checkpoint: Any, preset: str, *, num_classes: int = 1000, ema: bool = True,
                         layout: str | None = None, encoder_depth: int | None = None, source: str = "",
                         device: str | torch.device | None = None, load: bool = True) -> tuple[nn.Module, OfficialWeights]:
    """Build ``repae`` preset ``preset`` and load published weights into it, strictly.

    Args:
        checkpoint: what :func:`load_official_file` returned (a training checkpoint or a bare state dict).
        preset: a :data:`repae.models.MODEL_PRESETS` name (``SiT-XL/2``, ``DiT-XL/2``, ``LightningDiT-XL/1``);
            its depth / width / patch must match the weights. Channels, latent size, projector widths,
            QK-norm and the LightningDiT switches are read from the weights.
        num_classes: real classes; the label table must have ``num_classes + 1`` rows (null label) or
            ``num_classes``.
        ema: take the ``ema`` entry (default, as every official sampler) or ``model``.
        layout: force a layout (default: :func:`detect_layout`).
        encoder_depth: REPA block whose output the projectors read (default: the preset's, 8).
        device: build on this device (``"meta"`` checks keys and shapes without memory; then ``load``
            is ignored).
        load: copy the weights into the network (False: check only).

    Returns:
        ``(network, OfficialWeights)``; the network is in ``repae``'s time convention only for the
        ``repa`` / ``repa-e`` / ``dit`` layouts: wrap ``sit`` / ``lightningdit`` networks in
        :class:`TimeFlipped` (sampling) or call :func:`flip_time_convention_` (training).
    """
    from repae.models import MODEL_PRESETS, build_model

    family = _family(preset)
    sd_off, entry = select_state_dict(checkpoint, ema=ema)
    layout = layout or detect_layout(sd_off, family)
    if LAYOUTS[layout].family != family:
        raise ConfigError(f"layout {layout!r} holds a {LAYOUTS[layout].family}, but --model {preset} is a {family}: "
                          f"pass a --model {LAYOUTS[layout].family}-... preset")
    sd, extras = official_to_repae(sd_off, layout)
    arch = infer_architecture(sd, layout)
    want = MODEL_PRESETS[preset]
    got = {k: arch[k] for k in ("depth", "hidden_size", "patch_size")}
    if any(want[k] != got[k] for k in got):
        guesses = guess_presets(sd, family)
        raise ConfigError(f"{source or 'checkpoint'} has depth {got['depth']}, hidden {got['hidden_size']}, patch "
                          f"{got['patch_size']}, but {preset} has depth {want['depth']}, hidden {want['hidden_size']}, "
                          f"patch {want['patch_size']}"
                          + (f"; pass --model {' or '.join(guesses)}" if guesses else ""))
    rows = arch["label_rows"]
    if rows not in (num_classes, num_classes + 1):
        raise ConfigError(f"{source or 'checkpoint'} has {rows} label rows; it was trained with "
                          f"{rows - 1} classes (+ null label): pass --num-classes {rows - 1}")
    kwargs: dict[str, Any] = dict(
        input_size=arch["input_size"], in_channels=arch["in_channels"], num_classes=num_classes,
        z_dims=arch["z_dims"], class_dropout_prob=0.1 if rows == num_classes + 1 else 0.0, qk_norm=arch["qk_norm"],
        projector=arch["projector"],
    )
    if arch["projector_dim"]:  # the weights' MLP width (official files: 2048, whatever the preset's)
        kwargs["projector_dim"] = arch["projector_dim"]
    if encoder_depth is not None or "legacy_encoder_depth" in extras:
        kwargs["encoder_depth"] = int(encoder_depth if encoder_depth is not None else extras["legacy_encoder_depth"])
    if family == "DiT":
        C = arch["in_channels"]
        if arch["out_channels"] not in (C, 2 * C):
            raise KeyLayoutError(f"DiT head has {arch['out_channels']} channels, expected {C} or {2 * C}")
        kwargs["learn_sigma"] = arch["out_channels"] == 2 * C
    if family == "LightningDiT":
        kwargs.update(use_rmsnorm=arch["use_rmsnorm"], use_swiglu=arch["use_swiglu"], use_rope=arch["use_rope"])
    if device is not None:
        with torch.device(device):
            model = build_model(preset, **kwargs)
    else:
        model = build_model(preset, **kwargs)
    what = f"{source or 'checkpoint'} ({layout} layout, entry '{entry}') vs {preset}"
    check_state_dict(sd, model.state_dict(), what=what,
                     hint="; pass an unmodified official or repae-exported checkpoint of that preset")
    if load and str(device) != "meta":
        model.load_state_dict(sd, strict=True)
    info = OfficialWeights(layout=layout, entry=entry, preset=preset, architecture=arch, extras=extras, source=source)
    return model, info


def load_official_weights(model: nn.Module, path: str | os.PathLike, *, ema: bool = True,
                          layout: str | None = None, to_repae_time: bool = True) -> OfficialWeights:
    """Strictly load a published checkpoint into an existing ``repae`` network (``train.init_from``).

    ``path`` is a local file or a Hugging Face hub id in the local cache (:func:`resolve_official_file`).

    Keys and shapes must match exactly (projectors included: a network built with other target
    encoders fails naming ``projectors.*``). With ``to_repae_time`` a ``sit`` / ``lightningdit``
    checkpoint is rewritten into ``repae``'s time convention (:func:`flip_time_convention_`).
    """
    family = "LightningDiT" if type(model).__name__ == "LightningDiT" else (
        "DiT" if getattr(model, "objective_kind", "flow") == "ddpm" else "SiT")
    path = resolve_official_file(path)
    sd_off, entry = select_state_dict(load_official_file(path), ema=ema)
    layout = layout or detect_layout(sd_off, family)
    sd, extras = official_to_repae(sd_off, layout)
    check_state_dict(sd, model.state_dict(), what=f"{path} ({layout} layout, entry '{entry}')",
                     hint="; build the network as the checkpoint was trained (same model.preset, and align.encoders "
                     "for its projectors.*)")
    model.load_state_dict(sd, strict=True)
    if to_repae_time and LAYOUTS[layout].time == "transport":
        flip_time_convention_(model)
    arch = infer_architecture(sd, layout)
    return OfficialWeights(layout=layout, entry=entry, preset=type(model).__name__, architecture=arch,
                           extras=extras, source=str(path))
