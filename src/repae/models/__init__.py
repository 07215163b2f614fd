"""Networks: the generators SiT (:mod:`repae.models.sit`), DiT (:mod:`repae.models.dit`) and
LightningDiT (:mod:`repae.models.lightningdit`), their layers and REPA projector heads.

Every generator has the same forward ``model(x_t, t, y, *, hidden_at, stop_at_hidden) -> SiTOutput``
and ``project(hidden)``; :func:`build_model` picks the family from the preset name
(``SiT-XL/2``, ``DiT-XL/2``, ``LightningDiT-XL/1``). :func:`objective_kind` says what trains it:
``"flow"`` (SiT, LightningDiT; :mod:`repae.diffusion.objective`) or ``"ddpm"`` (DiT;
:mod:`repae.diffusion.gaussian`).
"""

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

#: Every preset name of every generator family -> its architecture entry.
MODEL_PRESETS: dict[str, dict[str, int]] = {**SIT_PRESETS, **DIT_PRESETS, **LIGHTNINGDIT_PRESETS}

_BUILDERS = {"LightningDiT-": build_lightningdit, "DiT-": build_dit, "SiT-": build_sit}


def build_model(name: str, **kwargs) -> SiT:
    """Build generator preset ``name`` (a key of :data:`MODEL_PRESETS`); kwargs as :func:`build_sit`
    (``input_size``, ``in_channels``, ``num_classes``, ``z_dims``, ``encoder_depth``,
    ``class_dropout_prob``, ``qk_norm``, ``projector``) plus the family's own switches."""
    for prefix, builder in _BUILDERS.items():
        if name.startswith(prefix) and name in MODEL_PRESETS:
            return builder(name, **kwargs)
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")


def model_config(name: str, **kwargs):
    """The validated config of generator preset ``name`` without building it (cheap checks first):
    the one place ``encoder_depth``, patch divisibility and label dropout are checked."""
    from repae.models.dit import dit_config
    from repae.models.lightningdit import lightningdit_config

    configs = {"LightningDiT-": lightningdit_config, "DiT-": dit_config, "SiT-": sit_config}
    for prefix, make in configs.items():
        if name.startswith(prefix) and name in MODEL_PRESETS:
            return make(name, **kwargs)
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")


def objective_kind(model) -> str:
    """``"ddpm"`` for DiT (eps + learned variance, :mod:`repae.diffusion.gaussian`), else ``"flow"``."""
    return getattr(model, "objective_kind", "flow")

__all__ = [
    "DIT_PRESETS",
    "LIGHTNINGDIT_PRESETS",
    "MODEL_PRESETS",
    "SIT_PRESETS",
    "DiT",
    "DiTConfig",
    "LightningDiT",
    "LightningDiTConfig",
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
    "objective_kind",
    "sit_config",
]
