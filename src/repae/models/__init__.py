"""Networks: the generators SiT (:mod:`repae.models.sit`), DiT (:mod:`repae.models.dit`) and
LightningDiT (:mod:`repae.models.lightningdit`), their layers and REPA projector heads.

Every generator has the same forward ``model(x_t, t, y, *, hidden_at, stop_at_hidden) -> SiTOutput``
and ``project(hidden)``; :func:`build_model` picks the family from the preset name
(``SiT-XL/2``, ``DiT-XL/2``, ``LightningDiT-XL/1``). :func:`objective_kind` says what trains it:
``"flow"`` (SiT, LightningDiT; :mod:`repae.diffusion.objective`) or ``"ddpm"`` (DiT;
:mod:`repae.diffusion.gaussian`). :data:`MODEL_FAMILIES` is the registry of families (a family
added there is built, validated and tested like the others); :func:`preset_objective_kind` gives
the objective of a preset name without building it.
"""

from collections.abc import Callable
from dataclasses import dataclass

from repae.errors import ConfigError
from repae.models.dit import DIT_PRESETS, DiT, DiTConfig, build_dit, dit_config
from repae.models.lightningdit import (
    LIGHTNINGDIT_PRESETS,
    LightningDiT,
    LightningDiTConfig,
    build_lightningdit,
    lightningdit_config,
)
from repae.models.sit import SIT_PRESETS, SiT, SiTConfig, SiTOutput, build_sit, sit_config


@dataclass(frozen=True)
class ModelFamily:
    """One generator family: its presets, builder, config maker and the objective that trains it."""

    name: str  # "SiT", "DiT", "LightningDiT": presets are named "<name>-<size>/<patch>"
    presets: dict[str, dict[str, int]]  # preset name -> architecture entry
    build: Callable[..., SiT]  # build(name, **kwargs) -> network
    config: Callable[..., object]  # config(name, **kwargs) -> validated config, nothing built
    objective: str  # "flow" (repae.diffusion.objective) | "ddpm" (repae.diffusion.gaussian)


#: The generator families, by name; every other table here is derived from it.
MODEL_FAMILIES: dict[str, ModelFamily] = {
    "SiT": ModelFamily("SiT", SIT_PRESETS, build_sit, sit_config, "flow"),
    "DiT": ModelFamily("DiT", DIT_PRESETS, build_dit, dit_config, DiT.objective_kind),
    "LightningDiT": ModelFamily("LightningDiT", LIGHTNINGDIT_PRESETS, build_lightningdit, lightningdit_config,
                                LightningDiT.objective_kind),
}

#: Every preset name of every generator family -> its architecture entry.
MODEL_PRESETS: dict[str, dict[str, int]] = {k: v for f in MODEL_FAMILIES.values() for k, v in f.presets.items()}


def model_family(name: str) -> ModelFamily:
    """The family of generator preset ``name`` (a key of :data:`MODEL_PRESETS`)."""
    for family in MODEL_FAMILIES.values():
        if name in family.presets:
            return family
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")


def build_model(name: str, **kwargs) -> SiT:
    """Build generator preset ``name`` (a key of :data:`MODEL_PRESETS`); kwargs as :func:`build_sit`
    (``input_size``, ``in_channels``, ``num_classes``, ``z_dims``, ``encoder_depth``,
    ``class_dropout_prob``, ``qk_norm``, ``projector``) plus the family's own switches."""
    return model_family(name).build(name, **kwargs)


def model_config(name: str, **kwargs):
    """The validated config of generator preset ``name`` without building it (cheap checks first):
    the one place ``encoder_depth``, patch divisibility and label dropout are checked."""
    return model_family(name).config(name, **kwargs)


def objective_kind(model) -> str:
    """``"ddpm"`` for DiT (eps + learned variance, :mod:`repae.diffusion.gaussian`), else ``"flow"``."""
    return getattr(model, "objective_kind", "flow")


def preset_objective_kind(name: str) -> str:
    """:func:`objective_kind` of generator preset ``name`` without building it (``"flow"`` | ``"ddpm"``)."""
    return model_family(name).objective

__all__ = [
    "DIT_PRESETS",
    "LIGHTNINGDIT_PRESETS",
    "MODEL_FAMILIES",
    "MODEL_PRESETS",
    "SIT_PRESETS",
    "DiT",
    "DiTConfig",
    "LightningDiT",
    "LightningDiTConfig",
    "ModelFamily",
    "SiT",
    "SiTConfig",
    "SiTOutput",
    "build_dit",
    "build_lightningdit",
    "build_model",
    "build_sit",
    "dit_config",
    "lightningdit_config",
    "model_config",
    "model_family",
    "objective_kind",
    "preset_objective_kind",
    "sit_config",
]
