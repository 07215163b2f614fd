"""Run configuration: dataclasses, YAML presets and dotted overrides.

A run is fully described by one :class:`RunConfig`. Presets are YAML files in
``repae/configs/`` (named without extension, e.g. ``tiny-fmnist``) or any YAML path; overrides
are dotted ``section.key=value`` strings parsed as YAML scalars (``train.batch_size=256``,
``align.encoders=[dinov2-vit-b]``). The resolved config is saved as ``config.json`` in every
run folder and inside every checkpoint, so a checkpoint can rebuild its own models.

Defaults are those of the embedded CPU job; the ImageNet presets set the paper's values
(spec-repae.md section 1.1).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repae.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    source: str = "embedded"  # "embedded" | "fashion-mnist" | folder | .npz | .h5
    resolution: int = 32  # image side in pixels (ADM centre crop for folders)
    num_workers: int = 0  # DataLoader workers (files are opened lazily per worker)
    latents: str | None = None  # cached-latent file for the `ldm` recipe (repae cache-latents)


@dataclass
class TokenizerConfig:
    # VAE architecture: f8d4 | f16d32 | tiny-f4d4 | tiny-f8d4 (LDM design) | flux1 | sd35 | flux2 | qwenimage
    # (published diffusers VAEs) | auto (the architecture of the diffusers folder in `weights`; docs/tokenizers.md)
    preset: str = "tiny-f4d4"
    weights: str | None = None  # diffusers VAE folder / safetensors / LDM .pt; None = random init
    stats: str | None = None  # JSON {mean, std} initialising the latent normaliser
    bn_momentum: float = 0.1  # momentum of the latent BatchNorm (spec 2.6)
    stats_images: int = 512  # without `stats`: images whose posterior samples initialise the normaliser
    # preset=auto: the folder's diffusers config ({"_class_name": ..., ...}), filled in from `weights` when the
    # run is built and recorded in config.json, so a checkpoint rebuilds its VAE without the folder
    # (preset=rae: the RAE architecture, resolved from the rae_* keys and the encoder registry)
    arch: dict[str, Any] | None = None
    # preset=rae: a representation autoencoder (RAE, Zheng et al. 2025; docs/tokenizers.md): the latent is a
    # FROZEN encoder's patch tokens [D, h, w]; a ViT decoder is trained by the `rae-decoder` recipe, and
    # `weights` is then an RAE folder (what that run exports)
    rae_encoder: str = "repae-vit-t4"  # registry name of the frozen encoder (RAE: dinov2-vit-b-reg)
    rae_encoder_weights: str | None = None  # its weights file (default: $REPAE_<NAME>_WEIGHTS / packaged)
    rae_decoder: str = "ViT-T"  # decoder preset: ViT-T | ViT-S | ViT-B | ViT-L | ViT-XL (RAE: ViT-XL)
    rae_noise_tau: float = 0.8  # decoder training adds N(0, sigma^2) to the latent, sigma ~ U(0, tau) (RAE 0.8)


@dataclass
class ModelConfig:
    preset: str = "SiT-T/1"  # SiT-{S,B,L,XL}/{1,2,4,8}, SiT-T/{1,2}
    num_classes: int = 10
    class_dropout_prob: float = 0.1  # label dropout for CFG (spec 2.2)
    encoder_depth: int = 2  # 1-based SiT block whose output is projected (paper: 8)
    qk_norm: bool = False
    learn_pos_embed: bool = False  # true = train the sin-cos table, as the official code does by accident
    projector_dim: int = 0  # REPA MLP head width; 0 = the preset's (2048, spec 2.5)
    # DiT^DH (RAE sec. 5, repae.models.dh): a wide shallow head replacing the final layer, SiT / LightningDiT
    # only; 0 = none. DiT^DH-XL: 2 blocks, 2048 wide, 16 heads
    dh_depth: int = 0
    dh_width: int = 2048
    dh_heads: int = 16
    # RAE sec. 4.1: the layers that make the prediction (the DH head if any, else the model) must be at least
    # as wide as a latent token (C * patch^2); false lets a run break that rule on purpose
    check_width: bool = True


@dataclass
class AlignConfig:
    encoders: list[str] = field(default_factory=lambda: ["repae-vit-t4"])  # alignment targets
    encoder_weights: list[str | None] = field(default_factory=list)  # one path per encoder (or none)
    proj_coeff: float = 0.5  # lambda_g: REPA weight in the SiT update
    vae_align_coeff: float = 1.5  # lambda_v: REPA weight in the VAE update
    projector: str = "mlp"  # REPA head: mlp (REPA) | conv (iREPA 3x3 conv); repae.models.projectors
    target_norm: str = "none"  # encoder-token normalisation: none (REPA) | spatial (iREPA, gamma 0.7)


@dataclass
class DiffusionConfig:
    path: str = "linear"  # linear | cosine
    time_sampler: str = "uniform"  # uniform | lognormal
    # RAE's dimension-dependent shift t' = a t / (1 + (a - 1) t) of training times and sampling grids
    # (repae.diffusion.shift): none | dimension (a = sqrt(C*h*w / time_shift_base)) | a number a
    time_shift: str = "none"
    time_shift_base: int = 4096  # n of the dimension shift (RAE: 4096)


@dataclass
class LossConfig:
    """L_REG of the VAE (spec section 4)."""

    reconstruction_weight: float = 1.0
    perceptual: str = "laplacian"  # lpips (needs VGG16 weights) | laplacian | none
    perceptual_weight: float = 1.0
    vgg_weights: str | None = None
    kl_weight: float = 1e-6
    disc_weight: float = 0.1
    disc_start: int = 0
    lecam_weight: float = 0.0
    adaptive_disc_weight: bool = False
    disc_weights: str | None = None  # optional pretrained discriminator (safetensors/.pt)


@dataclass
class TokRegConfig:
    """Tokenizer regularisers SE / EQ-VAE / VA-VAE VF (repae.losses.tokenizer_reg,
    docs/tokenizer-regularisers.md). Weights / probabilities 0 = off (the default in every recipe)."""

    se_weight: float = 0.0  # SE alpha (Skorokhodov et al. 2025); paper 0.25 [unverified]
    se_factors: list[int] = field(default_factory=lambda: [2, 4])  # one drawn per step [unverified]
    se_terms: list[str] = field(default_factory=lambda: ["l1", "perceptual"])  # SE distance d: l1|perceptual|gan
    eq_prob: float = 0.0  # EQ-VAE equivariance-step probability (upstream 0.5)
    eq_lowres_prob: float = 0.25  # low-resolution share of the other (prior-preservation) steps
    eq_scale_den: int = 0  # EQ scales k/den; 0 = the latent side (32 for SD-VAE at 256 px, as upstream)
    eq_min_scale: float = 0.25  # smallest EQ scale (upstream 8/32)
    eq_rotate: bool = True  # compose with rot90 by k*90 deg, k in {1,2,3}
    eq_anisotropic: bool = False  # independent height/width scales
    vf_weight: float = 0.0  # VA-VAE w_hyper (0.1)
    vf_encoder: str = "repae-vit-t4"  # foundation model (registry name; VA-VAE: dinov2-vit-l)
    vf_encoder_weights: str | None = None  # its weights (default: env var / packaged)
    vf_pixels: str = "encoder"  # encoder (its own normalisation) | vavae ([-1, 1], bilinear, as upstream)
    vf_cos_margin: float = 0.5  # m1
    vf_distmat_margin: float = 0.25  # m2
    vf_cos_weight: float = 1.0
    vf_distmat_weight: float = 1.0
    vf_adaptive: bool = True  # adaptive weight ||grad nll|| / (||grad vf|| + 1e-4) on the encoder's last conv
    ema: bool = False  # recipe vae: EMA of the tokenizer (decay optim.ema_decay), exported by export-vae


@dataclass
class OptimConfig:
    lr: float = 1e-4  # SiT
    vae_lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # clipped separately for SiT, VAE and discriminator
    ema_decay: float = 0.9999


@dataclass
class TrainConfig:
    recipe: str = "repa-e"  # see repae.training.recipes.RECIPES
    batch_size: int = 64  # global batch
    grad_accum: int = 1
    max_steps: int = 400
    mixed_precision: str = "no"  # no | bf16 | fp16
    compile: bool = False
    vae_checkpointing: bool = False  # recompute VAE activations in backward (fits 32 img/GPU at 256 px)
    # NHWC memory format for the VAE, LPIPS-VGG and PatchGAN convolutions: true | false | auto
    # (auto = on for a CPU, where it was measured faster, off on CUDA until measured there)
    channels_last: bool | str = "auto"
    allow_tf32: bool = True
    seed: int = 0
    output_dir: str = "runs"
    exp_name: str = "repae-tiny-fmnist"
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 200
    init_from: str | None = None  # generator init: a repae run/checkpoint or an official .pt/.safetensors (EMA)
    resume: bool = True  # resume from the latest complete checkpoint of the run folder
    threads: int = 0  # torch CPU threads (0 = torch default)
    report_to: str = "tensorboard"  # tensorboard | wandb | none
    diagnostics_every: int = 50  # latent-health scalars (SV, TV, CKNNA, ...) on a held-out batch; 0 = off
    report: bool = True  # write RUN/report.html (repae report) when the run ends
    # end of run: FD + class accuracy of N EMA samples beside N real test images (evalnet-fmnist,
    # 32x32 Fashion-MNIST only; RUN/final-samples.json + .png, shown first in report.html); 0 = off
    final_eval_samples: int = 0
    max_nonfinite_skips: int = 3  # consecutive NaN/inf steps (each skipped, nothing updated) before the run halts
    # several processes: a collective (gradient all-reduce, barrier) waits at most this long for a silent
    # rank before every rank stops (torch's default is 30 min of idle, billed GPUs); a rank that fails
    # tells the others at once
    dist_timeout_min: float = 10.0


@dataclass
class SampleConfig:
    """In-training preview grids and the defaults of `repae sample`."""

    num_images: int = 64
    # auto = the generator family's sampler: euler for flow models (SiT, LightningDiT), ddim for DDPM
    # ones (DiT); resolved when a run is built, so a run's config.json names the sampler it used
    sampler: str = "auto"  # auto | euler | heun | euler-maruyama | ddim | ddpm
    num_steps: int = 50
    cfg_scale: float = 4.0
    guidance_low: float = 0.0
    guidance_high: float = 1.0
    # network + VAE decode arithmetic (autocast; solver state fp32/fp64): fp32 as generate.py, bf16 the
    # fast path (the embedded presets: 2.7x faster on an AVX512-BF16 CPU, docs/benchmarks.md)
    precision: str = "fp32"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tokreg: TokRegConfig = field(default_factory=TokRegConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir) / self.train.exp_name


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _coerce(value: Any, target_type: Any, where: str) -> Any:
    """Coerce a YAML/JSON value to the annotated field type (best effort, strict on numbers)."""
    origin = getattr(target_type, "__origin__", None)
    text = str(target_type)
    if value is None:
        return None
    if target_type is bool or text == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        raise ConfigError(f"{where} expects true/false, got {value!r}")
    if text == "bool | str":  # a switch with "auto" (train.channels_last)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if value == "auto":
            return value
        raise ConfigError(f"{where} expects true, false or auto, got {value!r}")
    if target_type is int or text == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        return int(value)
    if target_type is float or text == "float":
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} expects a number, got {value!r}")
        return float(value)
    if text in ("str", "str | None") or target_type is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return str(value)
    if text.startswith("tuple"):
        return tuple(float(v) for v in value)
    if origin is list or text.startswith("list"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return list(value)
    return value


def _apply(section_obj: Any, updates: dict[str, Any], prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section_obj)}
    for key, value in updates.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; valid keys in '{prefix.rstrip('.')}': {', '.join(fields)}"
            )
        setattr(section_obj, key, _coerce(value, fields[key].type, f"{prefix}{key}"))


def from_dict(raw: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from a nested dict (unknown keys are errors)."""
    cfg = base or RunConfig()
    for section, values in (raw or {}).items():
        if not hasattr(cfg, section) or not dataclasses.is_dataclass(getattr(cfg, section)):
            raise ConfigError(
                f"unknown config section '{section}'; valid: {', '.join(f.name for f in dataclasses.fields(cfg))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        _apply(getattr(cfg, section), values, f"{section}.")
    return cfg


def resolve_channels_last(value: bool | str, device_type: str) -> bool:
    """``train.channels_last`` (true / false / auto) for a device type; ConfigError naming the values."""
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        value = _BOOL_WORDS[value.lower()]
    if isinstance(value, bool):
        return value
    if value == "auto":
        return device_type == "cpu"
    raise ConfigError(f"train.channels_last must be true, false or auto, got {value!r}")


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") and p.exists():
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        f"config '{name_or_path}' not found: give a YAML path or one of the presets {', '.join(available_presets())}"
    )


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false are booleans, so ``mixed_precision: no`` stays the string "no".

    PyYAML follows YAML 1.1, which also reads yes/no/on/off as booleans; every documented string
    value of a key must reach the config unchanged from a preset file and from the command line.
    """


_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# Keys whose value is one of a fixed set, named once; registry-valued keys (recipe, presets, sampler,
# encoders) are checked against their registries when a run is built.
CHOICES: dict[str, tuple[str, ...]] = {
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "sample.precision": ("fp32", "bf16", "fp16"),
    "train.report_to": ("tensorboard", "wandb", "none"),
    "diffusion.path": ("linear", "cosine"),
    "diffusion.time_sampler": ("uniform", "lognormal"),
    "loss.perceptual": ("lpips", "laplacian", "none"),
    "tokreg.vf_pixels": ("encoder", "vavae"),
}


def check_choices(cfg: RunConfig) -> None:
    """Every fixed-choice key holds one of its values (one line naming the key and the choices otherwise)."""
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        if not hasattr(getattr(cfg, section), key):
            continue
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted}={value!r} is not one of: {', '.join(choices)}")


# Numeric ranges, checked by check_ranges before a run builds anything: key -> (test, "must be ...").
_POS, _NONNEG = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0")
_UNIT, _UNIT_OPEN = (lambda v: 0 <= v <= 1, "in [0, 1]"), (lambda v: 0 <= v < 1, "in [0, 1)")
RANGES: dict[str, tuple] = {
    "data.resolution": _POS, "data.num_workers": _NONNEG,
    "tokenizer.bn_momentum": _UNIT, "tokenizer.stats_images": _POS, "tokenizer.rae_noise_tau": _NONNEG,
    "model.num_classes": _POS, "model.class_dropout_prob": _UNIT_OPEN, "model.encoder_depth": _POS,
    "model.projector_dim": _NONNEG, "model.dh_depth": _NONNEG, "model.dh_width": _POS, "model.dh_heads": _POS,
    "diffusion.time_shift_base": _POS,
    "align.proj_coeff": _NONNEG, "align.vae_align_coeff": _NONNEG,
    "loss.reconstruction_weight": _NONNEG, "loss.perceptual_weight": _NONNEG, "loss.kl_weight": _NONNEG,
    "loss.disc_weight": _NONNEG, "loss.disc_start": _NONNEG, "loss.lecam_weight": _NONNEG,
    "tokreg.se_weight": _NONNEG, "tokreg.eq_prob": _UNIT, "tokreg.eq_lowres_prob": _UNIT,
    "tokreg.eq_scale_den": _NONNEG, "tokreg.eq_min_scale": _POS, "tokreg.vf_weight": _NONNEG,
    "tokreg.vf_cos_weight": _NONNEG, "tokreg.vf_distmat_weight": _NONNEG,
    "optim.lr": _NONNEG, "optim.vae_lr": _NONNEG, "optim.disc_lr": _NONNEG, "optim.betas": _UNIT_OPEN,
    "optim.weight_decay": _NONNEG, "optim.eps": _POS, "optim.max_grad_norm": _POS, "optim.ema_decay": _UNIT_OPEN,
    "train.batch_size": _POS, "train.grad_accum": _POS, "train.max_steps": _POS, "train.log_every": _POS,
    "train.checkpoint_every": _POS, "train.keep_checkpoints": _NONNEG, "train.sample_every": _NONNEG,
    "train.threads": _NONNEG, "train.diagnostics_every": _NONNEG, "train.final_eval_samples": _NONNEG, "train.max_nonfinite_skips": _POS,
    "train.dist_timeout_min": _POS,
    "sample.num_images": _POS, "sample.num_steps": _POS, "sample.cfg_scale": _NONNEG,
    "sample.guidance_low": _UNIT, "sample.guidance_high": _UNIT,
}
_MAY_BE_INFINITE = ("optim.max_grad_norm",)  # .inf = no clipping


def check_ranges(cfg: RunConfig) -> None:
    """Every numeric setting is finite and in its range (:data:`RANGES`); else one line naming the key.

    Run before anything is built, so ``optim.ema_decay=2`` or ``train.log_every=0`` fails at once
    instead of training silently wrong or crashing after hours.
    """
    for dotted, (ok, must) in RANGES.items():
        section, key = dotted.split(".")
        if not hasattr(getattr(cfg, section), key):
            continue
        value = getattr(getattr(cfg, section), key)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            finite = v == v and (abs(v) != float("inf") or dotted in _MAY_BE_INFINITE)
            if not finite or not ok(v):
                raise ConfigError(f"{dotted}={value!r} is out of range: it must be {must}"
                                  + ("" if finite else " and finite"))
    if cfg.sample.guidance_low > cfg.sample.guidance_high:
        raise ConfigError(f"sample.guidance_low={cfg.sample.guidance_low} is above sample.guidance_high="
                          f"{cfg.sample.guidance_high}: the guidance interval must be low <= high")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"override key '{key}' must be section.key (e.g. train.batch_size=256)")
    return parts, yaml_load(value) if value.strip() else None


def _load_preset(preset: str, cfg: RunConfig, *, seen: tuple[str, ...]) -> RunConfig:
    """A preset file on top of ``cfg``; ``extends: OTHER`` applies OTHER first (presets as small diffs)."""
    path = _preset_path(preset)
    raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml_load(path.read_text())
    raw = dict(raw or {})
    base = raw.pop("extends", None)
    if base is not None:
        if base in seen or base == preset:
            raise ConfigError(f"preset '{preset}' extends '{base}', which extends it back: break the cycle")
        cfg = _load_preset(str(base), cfg, seen=(*seen, preset))
    return from_dict(raw, cfg)


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a preset (name or YAML path; None = the embedded default) plus dotted overrides."""
    cfg = RunConfig()
    if preset is not None:
        cfg = _load_preset(preset, cfg, seen=())
    for text in overrides or []:
        (section, key), value = parse_override(text)
        cfg = from_dict({section: {key: value}}, cfg)
    check_choices(cfg)
    return cfg


def config_from_json(path: str | Path) -> RunConfig:
    return from_dict(json.loads(Path(path).read_text()))
