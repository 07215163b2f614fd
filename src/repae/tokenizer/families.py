"""diffusers VAEs beyond the LDM design, as REPA-E tokenizers: any ``AutoencoderKL``, ``AutoencoderKLFlux2``
and ``AutoencoderKLQwenImage``.

The REPA-E authors' second release tunes the VAEs of current text-to-image models end to end
(``REPA-E/e2e-flux-vae``, ``e2e-sd3.5-vae``: ``AutoencoderKL``, 16 channels, no quant convs, a
``shift_factor``; ``e2e-qwenimage-vae``: ``AutoencoderKLQwenImage``, which has a frame axis). Those
VAEs are not the LDM design of :class:`repae.tokenizer.vae.VAEConfig`, so they are built here with
diffusers' own classes (``Class.from_config``), never copies, and one small adapter per class (a
:class:`VAEFamily`) says what the tokenizer needs of it:

* ``moments(vae, x)``: pixels [B, 3, H, W] -> posterior moments [B, 2C, h, w] (mean, logvar), the
  tensor :class:`~repae.tokenizer.vae.DiagonalGaussian` takes;
* ``decode(vae, z)``: raw latents [B, C, h, w] -> pixels [B, 3, H, W];
* ``folder_statistics(vae)``: the latent statistics the folder carries, which initialise repae's
  latent normaliser when there is no ``latent_stats.json``;
* ``export_statistics(...)``: where the tuned statistics go so that the family's own pipelines read
  them (``shift_factor`` / ``scaling_factor``, ``latents_mean`` / ``latents_std``, FLUX.2's BatchNorm).

Per family (docs/tokenizers.md has the full story):

===========================  ========================================  ==================================
class                        repae latent (what the SiT sees)          statistics read / written
===========================  ========================================  ==================================
``AutoencoderKL``            the VAE latent [C, H/f, W/f]              latents_mean/std if set, else
                                                                       shift_factor/scaling_factor, else
                                                                       scaling_factor (mean 0)
``AutoencoderKLFlux2``       the 2x2-patchified latent [4C, H/2f,      ``bn.running_mean/var`` (the
                             W/2f], what FLUX.2's transformer sees     BatchNorm over that latent)
``AutoencoderKLQwenImage``   the single frame [C, H/f, W/f] of the     latents_mean/latents_std
                             video latent [C, 1, H/f, W/f]
===========================  ========================================  ==================================

The LDM-design ``AutoencoderKL`` (quant convs, mid attention, symmetric level attention: SD-VAE,
the f8d4 / f16d32 / tiny presets) keeps its own path (:class:`~repae.tokenizer.vae.VAEConfig`);
:func:`arch_from_diffusers_config` picks it whenever a folder fits it, so those tokenizers are
unchanged bit for bit.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from repae.errors import ConfigError
from repae.tokenizer.vae import VAEConfig

log = logging.getLogger(__name__)

#: Config fields that never change the network: run-time switches (each family adds its statistics fields).
_RUNTIME_FIELDS = ("sample_size", "force_upcast")


@dataclass(frozen=True)
class FolderStatistics:
    """Latent statistics carried by a diffusers folder (initialise the latent normaliser)."""

    mean: torch.Tensor  # [C] float32
    var: torch.Tensor  # [C] float32 (what the normaliser's running_var holds)
    source: str  # where they came from, for the log line


def _vec(values, channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ConfigError(f"{what} has {t.numel()} values for a {channels}-channel latent; fix the folder's config.json")
    return t


def _pooled(mean: torch.Tensor, var: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the whole latent (all channels pooled) from per-channel moments: what one
    scalar shift / scale can represent (law of total variance)."""
    m = mean.double().mean()
    v = (var.double() + (mean.double() - m).pow(2)).mean()
    return float(m), float(v.sqrt())


class VAEFamily:
    """What the tokenizer needs of one diffusers VAE class (subclasses below; one instance each)."""

    class_name: str = ""
    #: config fields that hold latent statistics (not architecture)
    stats_fields: tuple[str, ...] = ()

    def vae_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.class_name)

    def init_fields(self) -> dict[str, Any]:
        """The constructor's arguments and their defaults (what ``config.json`` may hold)."""
        params = inspect.signature(self.vae_class().__init__).parameters
        return {k: p.default for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}

    def build(self, config: dict) -> nn.Module:
        """A randomly initialised diffusers VAE (``Class.from_config``)."""
        return self.vae_class().from_config(copy.deepcopy(dict(config)))

    def latent_channels(self, config: dict) -> int:
        raise NotImplementedError

    def downsample_factor(self, config: dict) -> int:
        raise NotImplementedError

    def moments(self, vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] -> posterior moments [B, 2C, h, w]."""
        return vae.encode(x).latent_dist.parameters  # [B, 2C, h, w]

    def decode(self, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, C, h, w] -> pixels [B, 3, H, W]."""
        return vae.decode(z).sample  # [B, 3, H, W]

    def folder_statistics(self, vae: nn.Module) -> FolderStatistics | None:
        raise NotImplementedError

    def export_statistics(self, config: dict, state: dict, mean: torch.Tensor, var: torch.Tensor) -> list[str]:
        """Write per-channel ``mean`` / ``var`` of the repae latent where this family's pipelines read
        them, into the ``config`` dict and / or the ``state`` dict (both copies, changed in place);
        return one line per field written (for the export note)."""
        raise NotImplementedError

    def normalizer_eps(self, config: dict) -> float:
        """eps of the latent normaliser for this VAE (REPA-E's 1e-4 unless the family has its own)."""
        return 1e-4

    def supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.vae_class(), "_supports_gradient_checkpointing", False))


def _levels(config: dict) -> int:
    return len(config["block_out_channels"])


class AutoencoderKLFamily(VAEFamily):
    """diffusers ``AutoencoderKL`` in any configuration (FLUX.1, SD3 / SD3.5, SDXL, ...)."""

    class_name = "AutoencoderKL"
    stats_fields = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")

    def latent_channels(self, config: dict) -> int:
        return int(config["latent_channels"])

    def downsample_factor(self, config: dict) -> int:
        return 2 ** (_levels(config) - 1)  # one stride-2 conv per level but the last

    def folder_statistics(self, vae: nn.Module) -> FolderStatistics | None:
        cfg, c = vae.config, self.latent_channels(vae.config)
        if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
            std = _vec(cfg["latents_std"], c, "latents_std")
            return FolderStatistics(_vec(cfg["latents_mean"], c, "latents_mean"), std.pow(2),
                                    "config.json latents_mean / latents_std (per channel)")
        scale = float(cfg.get("scaling_factor") or 1.0)
        if cfg.get("shift_factor") is not None:
            return FolderStatistics(_vec(float(cfg["shift_factor"]), c, "shift_factor"),
                                    torch.full((c,), (1.0 / scale) ** 2),
                                    f"config.json shift_factor={cfg['shift_factor']} / scaling_factor={scale} "
                                    "(mean shift_factor, std 1/scaling_factor, every channel)")
        return FolderStatistics(torch.zeros(c), torch.full((c,), (1.0 / scale) ** 2),
                                f"config.json scaling_factor={scale} (mean 0, std 1/scaling_factor, every channel)")

    def export_statistics(self, config: dict, state: dict, mean: torch.Tensor, var: torch.Tensor) -> list[str]:
        # The fields the folder already used decide the convention, so the export works in the same pipelines:
        # latents_mean/std (SDXL-style pipelines: (z - mean) * scaling_factor / std), else shift/scaling (FLUX.1,
        # SD3: (z - shift_factor) * scaling_factor), else scaling_factor alone (SD 1.x: z * scaling_factor).
        if config.get("latents_mean") is not None and config.get("latents_std") is not None:
            config["latents_mean"], config["latents_std"] = mean.tolist(), var.sqrt().tolist()
            return ["config.json latents_mean / latents_std: per-channel mean / std of the tuned latent "
                    f"(scaling_factor {config.get('scaling_factor')} unchanged)"]
        m, s = _pooled(mean, var)
        config["scaling_factor"] = 1.0 / s
        if config.get("shift_factor") is not None:
            config["shift_factor"] = m
            return [f"config.json shift_factor = {m:.6g}, scaling_factor = {1.0 / s:.6g}: mean and 1/std of the tuned "
                    "latent over all channels (FLUX.1 / SD3 pipelines apply one shift and scale; the per-channel "
                    "statistics are in latent_stats.json)"]
        return [f"config.json scaling_factor = {1.0 / s:.6g}: 1/std of the tuned latent over all channels (its mean, "
                f"{m:.6g}, has no field in this convention; per-channel statistics are in latent_stats.json)"]


def patchify(z: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, C*p*q, h/p, w/q], channel ``c*p*q + i*q + j`` holding offset (i, j) of channel c
    (FLUX.2's layout: ``Flux2Pipeline._patchify_latents``)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // p, p, w // q, q)  # [B, C, h/p, p, w/q, q]
    return z.permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * q, h // p, w // q)


def unpatchify(z: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, C*p*q, h, w] -> [B, C, h*p, w*q]."""
    b, cpq, h, w = z.shape
    z = z.reshape(b, cpq // (p * q), p, q, h, w)  # [B, C, p, q, h, w]
    return z.permute(0, 1, 4, 2, 5, 3).reshape(b, cpq // (p * q), h * p, w * q)


class AutoencoderKLFlux2Family(VAEFamily):
    """diffusers ``AutoencoderKLFlux2`` (FLUX.2): a KL-VAE whose latent FLUX.2 patchifies 2x2 and normalises with
    the VAE's own non-affine BatchNorm ``bn``. The repae latent is that patchified latent, so repae's latent
    normaliser plays exactly the role of ``bn`` (same channels, same eps): it is initialised from ``bn``'s running
    statistics and written back into them on export. ``bn`` itself never runs in repae."""

    class_name = "AutoencoderKLFlux2"
    stats_fields = ()  # FLUX.2 keeps its statistics in the weights (bn.running_mean / running_var)

    def _patch(self, config: dict) -> tuple[int, int]:
        p, q = (int(v) for v in config.get("patch_size", (2, 2)))
        if p != q:
            raise ConfigError(f"AutoencoderKLFlux2 patch_size {[p, q]}: only square patches are supported; use a FLUX.2 "
                              "VAE folder with a square patch_size (the released one has [2, 2])")
        return p, q

    def latent_channels(self, config: dict) -> int:
        return int(config["latent_channels"]) * math.prod(self._patch(config))

    def normalizer_eps(self, config: dict) -> float:
        return float(config.get("batch_norm_eps", 1e-4))  # the BatchNorm it stands in for

    def downsample_factor(self, config: dict) -> int:
        return 2 ** (_levels(config) - 1) * self._patch(config)[0]

    def moments(self, vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
        p, q = self._patch(vae.config)
        mean, logvar = vae.encode(x).latent_dist.parameters.chunk(2, dim=1)  # [B, C, h, w] each
        # a diagonal Gaussian patchifies channel by channel: patchify its mean and its logvar
        return torch.cat([patchify(mean, p, q), patchify(logvar, p, q)], dim=1)  # [B, 2*C*p*q, h/p, w/q]

    def decode(self, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return vae.decode(unpatchify(z, *self._patch(vae.config))).sample  # [B, 3, H, W]

    def folder_statistics(self, vae: nn.Module) -> FolderStatistics | None:
        bn = vae.bn
        tracked = int(bn.num_batches_tracked)
        mean, var = bn.running_mean.detach().float().clone(), bn.running_var.detach().float().clone()
        if tracked == 0 and not mean.any() and bool((var == 1).all()):
            return None  # a BatchNorm that never saw a batch says nothing about the latent
        return FolderStatistics(mean, var, f"the VAE's BatchNorm running statistics (bn.running_mean / running_var, "
                                           f"{tracked} batches tracked)")

    def export_statistics(self, config: dict, state: dict, mean: torch.Tensor, var: torch.Tensor) -> list[str]:
        state["bn.running_mean"] = mean.detach().to(state["bn.running_mean"].dtype).clone()
        state["bn.running_var"] = var.detach().to(state["bn.running_var"].dtype).clone()
        return ["diffusion_pytorch_model.safetensors bn.running_mean / bn.running_var: per-channel mean / variance "
                "of the tuned patchified latent (repae's latent normaliser, which replaced the BatchNorm in training; "
                f"Flux2 pipelines normalise with sqrt(var + batch_norm_eps={config.get('batch_norm_eps')}))"]


class AutoencoderKLQwenImageFamily(VAEFamily):
    """diffusers ``AutoencoderKLQwenImage`` (Qwen-Image; the Wan 2.1 video VAE design). Images go in as one frame
    ([B, 3, 1, H, W]) and the frame axis is dropped from the latent: [B, C, H/f, W/f]. Its decoder clamps to
    [-1, 1] (diffusers' forward), so reconstructions outside that range get no gradient."""

    class_name = "AutoencoderKLQwenImage"
    stats_fields = ("latents_mean", "latents_std")

    def latent_channels(self, config: dict) -> int:
        return int(config["z_dim"])

    def downsample_factor(self, config: dict) -> int:
        return 2 ** len(config["temperal_downsample"])  # diffusers' spatial_compression_ratio

    def moments(self, vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x[:, :, None]).latent_dist.parameters[:, :, 0]  # [B, 3, 1, H, W] -> [B, 2C, h, w]

    def decode(self, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z[:, :, None]).sample[:, :, 0]  # [B, C, 1, h, w] -> [B, 3, H, W]

    def folder_statistics(self, vae: nn.Module) -> FolderStatistics | None:
        cfg, c = vae.config, self.latent_channels(vae.config)
        if cfg.get("latents_mean") is None or cfg.get("latents_std") is None:
            return None
        std = _vec(cfg["latents_std"], c, "latents_std")
        return FolderStatistics(_vec(cfg["latents_mean"], c, "latents_mean"), std.pow(2),
                                "config.json latents_mean / latents_std (per channel)")

    def export_statistics(self, config: dict, state: dict, mean: torch.Tensor, var: torch.Tensor) -> list[str]:
        config["latents_mean"], config["latents_std"] = mean.tolist(), var.sqrt().tolist()
        return ["config.json latents_mean / latents_std: per-channel mean / std of the tuned latent "
                "(QwenImage pipelines: (z - latents_mean) / latents_std)"]


#: diffusers class name -> adapter (one table; no if/elif over names)
FAMILIES: dict[str, VAEFamily] = {f.class_name: f for f in (AutoencoderKLFamily(), AutoencoderKLFlux2Family(),
                                                            AutoencoderKLQwenImageFamily())}


def get_family(class_name: str) -> VAEFamily:
    try:
        return FAMILIES[class_name]
    except KeyError:
        raise ConfigError(f"diffusers VAE class {class_name!r} is not supported as a tokenizer; use a VAE of one "
                          f"of the supported classes: {', '.join(FAMILIES)}") from None


def _jsonable(value):
    return json.loads(json.dumps(value))  # tuples -> lists, so configs from presets and folders compare equal


@functools.lru_cache(maxsize=64)
def _completed(class_name: str, config_json: str) -> str:
    """``config`` completed with the class's defaults, without keys the class does not take (as JSON)."""
    known = get_family(class_name).init_fields()
    given = json.loads(config_json)
    unknown = sorted(set(given) - set(known))
    if unknown:
        log.debug("%s: ignoring config fields %s (not constructor arguments)", class_name, unknown)
    full = {k: v for k, v in known.items() if v is not inspect.Parameter.empty}
    full.update({k: v for k, v in given.items() if k in known})
    return json.dumps(_jsonable(full), sort_keys=True)


@dataclass(frozen=True, eq=False)
class DiffusersVAESpec:
    """A diffusers VAE architecture: the class name and its constructor arguments (``config.json``).

    :attr:`config` is completed with the class's defaults and cleaned of keys the class does not take
    (diffusers ignores them too) when first read, so two specs of the same network compare equal. The
    class is looked up lazily: defining a spec does not import diffusers' models.
    """

    class_name: str
    raw: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        get_family(self.class_name)  # unknown classes fail here, in one line
        object.__setattr__(self, "raw", _jsonable({k: v for k, v in dict(self.raw).items() if not k.startswith("_")}))

    @property
    def config(self) -> dict:
        """Every constructor argument of the class (a fresh dict)."""
        return json.loads(_completed(self.class_name, json.dumps(self.raw, sort_keys=True)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, DiffusersVAESpec):
            return NotImplemented
        return self.class_name == other.class_name and self.config == other.config

    def __hash__(self) -> int:
        return hash((self.class_name, json.dumps(self.config, sort_keys=True)))

    # ----------------------------------------------------------------------------- geometry
    @property
    def family(self) -> VAEFamily:
        return get_family(self.class_name)

    @property
    def latent_channels(self) -> int:
        return self.family.latent_channels(self.config)

    @property
    def downsample_factor(self) -> int:
        return self.family.downsample_factor(self.config)

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", self.config.get("input_channels", 3)))

    def architecture(self) -> dict:
        """The config without statistics and run-time fields: equal for two folders of the same network."""
        drop = set(self.family.stats_fields) | set(_RUNTIME_FIELDS)
        return {k: v for k, v in self.config.items() if k not in drop}

    def differences(self, other: DiffusersVAESpec) -> list[str]:
        """Architecture fields that differ from ``other`` ("field mine vs theirs")."""
        if self.class_name != other.class_name:
            return [f"class {self.class_name} vs {other.class_name}"]
        a, b = self.architecture(), other.architecture()
        return [f"{k} {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def to_dict(self) -> dict:
        """``config.json`` form: ``{"_class_name": ..., **config}`` (``tokenizer.arch`` records it)."""
        return {"_class_name": self.class_name, **copy.deepcopy(self.config)}

    def build(self) -> nn.Module:
        return self.family.build(self.config)

    def ldm_geometry(self) -> LDMGeometry | None:
        """For an ``AutoencoderKL`` in the LDM block design, quant convs on or off (FLUX.1's and SD3's
        original ``ae.safetensors`` / ``first_stage_model.*`` files): what the LDM key map needs
        (:func:`repae.interop.vae.key_map`). None for any other architecture (no LDM layout)."""
        if self.class_name != "AutoencoderKL":
            return None
        cfg = self.config
        try:  # the LDM design check, quant convs aside
            base = VAEConfig.from_diffusers_config(dict(cfg, use_quant_conv=True, use_post_quant_conv=True))
        except (ConfigError, KeyError, TypeError, ValueError):
            return None
        return LDMGeometry(base.block_out_channels, base.attention_levels, base.layers_per_block,
                           bool(cfg["use_quant_conv"]), bool(cfg["use_post_quant_conv"]))


@dataclass(frozen=True)
class LDMGeometry:
    """The LDM key-map geometry of an ``AutoencoderKL`` spec (:class:`repae.interop.vae.VAEGeometry` + quant flags)."""

    block_out_channels: tuple[int, ...]
    attention_levels: tuple[int, ...]
    layers_per_block: int
    use_quant_conv: bool
    use_post_quant_conv: bool

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)


def arch_from_diffusers_config(raw: dict, *, where: str = "config.json") -> VAEConfig | DiffusersVAESpec:
    """The tokenizer architecture of a diffusers VAE ``config.json`` dict.

    An ``AutoencoderKL`` in the LDM design gives a :class:`~repae.tokenizer.vae.VAEConfig` (the path the
    f8d4 / f16d32 / tiny presets take, unchanged); any other ``AutoencoderKL`` configuration, and the
    other supported classes (:data:`FAMILIES`), a :class:`DiffusersVAESpec`. The class comes from
    ``_class_name`` (``AutoencoderKL`` when absent, as in old folders).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a JSON object; point at a diffusers VAE folder")
    class_name = raw.get("_class_name", "AutoencoderKL")
    if class_name == "AutoencoderKL":
        try:
            return VAEConfig.from_diffusers_config(raw)
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            log.debug("%s is not the LDM design (%s): building diffusers' AutoencoderKL from it", where, err)
    try:
        return DiffusersVAESpec(class_name, raw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------------------------------------------
# Published architectures. Transcribed by hand (no network here) from the vae/config.json files of the model
# repositories named in each comment, as they stood when FLUX.2 was released; fields equal to the diffusers class
# defaults are written out all the same, so each preset reads like its file. Statistics fields are the published
# ones: they initialise the latent normaliser of a tokenizer built from a preset without a folder.
# ---------------------------------------------------------------------------------------------------------------
_KL_F8_BLOCKS = dict(
    in_channels=3, out_channels=3, act_fn="silu", norm_num_groups=32, layers_per_block=2,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    mid_block_add_attention=True,
)

DIFFUSERS_VAE_PRESETS: dict[str, DiffusersVAESpec] = {
    # black-forest-labs/FLUX.1-dev vae/config.json (FLUX.1-schnell ships the same VAE): 16 channels, f8,
    # no quant convs, latent (z - 0.1159) * 0.3611. REPA-E's e2e-flux-vae tunes this one.
    "flux1": DiffusersVAESpec("AutoencoderKL", dict(
        _KL_F8_BLOCKS, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
        latents_mean=None, latents_std=None, force_upcast=True, use_quant_conv=False, use_post_quant_conv=False,
    ), description="FLUX.1 VAE (AutoencoderKL, f8, 16 channels, no quant convs): 256px -> [16, 32, 32]"),
    # stabilityai/stable-diffusion-3.5-large vae/config.json (SD3-medium and SD3.5-medium share the
    # architecture): as FLUX.1 but latent (z - 0.0609) * 1.5305. REPA-E's e2e-sd3.5-vae tunes this one.
    "sd35": DiffusersVAESpec("AutoencoderKL", dict(
        _KL_F8_BLOCKS, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
        latents_mean=None, latents_std=None, force_upcast=True, use_quant_conv=False, use_post_quant_conv=False,
    ), description="SD3.5 VAE (AutoencoderKL, f8, 16 channels, no quant convs): 256px -> [16, 32, 32]"),
    # black-forest-labs/FLUX.2-dev vae/config.json: 32 channels, f8, quant convs, a non-affine BatchNorm over
    # the 2x2-patchified latent (eps 1e-4, momentum 0.1). The repae latent is the patchified one: f16, 128
    # channels. decoder_block_out_channels is left at the class default (the encoder's widths).
    "flux2": DiffusersVAESpec("AutoencoderKLFlux2", dict(
        _KL_F8_BLOCKS, latent_channels=32, sample_size=1024, use_quant_conv=True, use_post_quant_conv=True,
        batch_norm_eps=1e-4, batch_norm_momentum=0.1, patch_size=[2, 2],
    ), description="FLUX.2 VAE (AutoencoderKLFlux2, f8 x 2x2 patches, 32 channels): 256px -> [128, 16, 16]"),
    # Qwen/Qwen-Image vae/config.json (the Wan 2.1 VAE design; the statistics are Wan 2.1's): z_dim 16,
    # f8, causal 3-D convs over a frame axis that holds one frame for images. REPA-E's e2e-qwenimage-vae.
    "qwenimage": DiffusersVAESpec("AutoencoderKLQwenImage", dict(
        base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0,
        latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
        latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160],
    ), description="Qwen-Image VAE (AutoencoderKLQwenImage, f8, 16 channels, one frame): 256px -> [16, 32, 32]"),
}
