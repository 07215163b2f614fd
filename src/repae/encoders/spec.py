"""What the encoder registry knows about an encoder without weights (:class:`EncoderSpec`), and what
loading weights reports (:class:`LoadReport`).

Its own module so that the registry (which lists the rows) and the loaders (which read a row) both
import it, and neither imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from repae.encoders.base import PixelPipeline, RepresentationEncoder
from repae.errors import ConfigError
from repae.interop import timm_vit as ck

Builder = Callable[..., RepresentationEncoder]  # (spec, *, resolution, device, arch_overrides, **options) -> encoder


@dataclass(frozen=True)
class LoadReport:
    """What a weights file contributed: kept for logs and for tests."""

    path: str
    format: str  # "meta" | "hf" | "timm" | "mocov3" | "mae" | "ijepa" | "dino" | "openai"
    num_tensors: int  # tensors loaded into the model (strict)
    dropped: tuple[str, ...] = field(default_factory=tuple)  # keys removed on purpose


@dataclass(frozen=True)
class EncoderSpec:
    """One registry row. Everything here is known without weights."""

    name: str  # canonical name, e.g. "dinov2-vit-b"
    family: str  # dinov2 | dinov1 | mocov3 | clip | mae | jepa | random | repae
    embed_dim: int  # token width D
    patch_size: int  # in model-input pixels
    input_size: Callable[[int], int]  # image resolution -> model input side
    pixels: PixelPipeline  # preprocessing constants and order
    builder: Builder  # (spec, *, resolution, device, arch_overrides, **options) -> encoder
    timm_arch: str | None = None  # timm.create_model name (None: VisionTransformer(**timm_kwargs))
    timm_kwargs: dict = field(default_factory=dict)  # overrides on top of the timm arch
    final_norm: bool = True  # token policy: apply the final LayerNorm?
    resolutions: tuple[int, ...] | None = (256,)  # allowed --resolution values (None: any)
    needs_weights: bool = True  # False only for `random`
    formats: tuple[str, ...] = ("timm",)  # accepted checkpoint layouts (docs + error hint)
    checkpoint_entries: tuple[str, ...] = ("state_dict", "model")  # training-checkpoint wrappers
    converter: ck.Converter = ck.convert_timm  # official layout -> timm keys
    drop_prefixes: tuple[str, ...] = ("head.",)  # keys removed on purpose before the strict load
    weights_file: str = "weights.pth"  # the file to supply (named in the error)
    default_weights: Callable[[], Path] | None = None  # packaged default file, if any
    missing_hint: str = ""  # extra advice appended to MissingWeightsError
    # (encoder, spec, path) -> LoadReport; None: the timm ViT loader (repae.encoders.vit_timm.load_timm_weights)
    loader: Callable[..., LoadReport] | None = None

    @property
    def env_var(self) -> str:
        """Environment variable holding the weights path, e.g. ``REPAE_DINOV2_VIT_B_WEIGHTS``."""
        return "REPAE_" + re.sub(r"[^A-Z0-9]+", "_", self.name.upper()) + "_WEIGHTS"

    def num_tokens(self, resolution: int = 256) -> int:
        """Patch tokens produced for images loaded at ``resolution`` (16x16 = 256 at 256)."""
        return (self.input_size(resolution) // self.patch_size) ** 2

    def check_resolution(self, resolution: int) -> None:
        if self.resolutions is not None and resolution not in self.resolutions:
            raise ConfigError(
                f"encoder {self.name} supports resolution {' or '.join(map(str, self.resolutions))}, "
                f"got {resolution}; change --resolution or pick another encoder"
            )
