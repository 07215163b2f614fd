"""Networks: the SiT latent diffusion transformer (:mod:`repae.models.sit`) and its layers."""

from repae.models.sit import SIT_PRESETS, SiT, SiTConfig, SiTOutput, build_sit, sit_config

__all__ = ["SIT_PRESETS", "SiT", "SiTConfig", "SiTOutput", "build_sit", "sit_config"]
