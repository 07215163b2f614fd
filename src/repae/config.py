"""Run configuration: dataclasses, YAML presets and dotted overrides.

A run is fully described by one :class:`RunConfig`. Presets are YAML files in
``repae/configs/`` (named without extension, e.g. ``tiny-fmnist``) or any YAML path; overrides
are dotted ``section.key=value`` strings parsed as YAML scalars (``train.batch_size=256``,
``align.encoders=[dinov2-vit-b]``). The resolved config is saved as ``config.json`` in every
run folder and inside every checkpoint, so a checkpoint can rebuild its own models.

Defaults are those of the embedded CPU job; the ImageNet presets set the paper's values
(spec-repae.md section 1.1).

Each key's facts are written once, beside its default, by :func:`key`: the values it may take
(``choices``), its numeric range (``range``) and what a changed value means when a run resumes
(``resume``). The tables the checks read (:data:`CHOICES`, :data:`RANGES`, and
:func:`resume_keys` for :mod:`repae.training.resume`) are computed from those fields.

Renamed keys (:data:`RENAMED`, :data:`RENAMED_SECTIONS`; CHANGELOG.md) are one-line errors in a
preset, a config file or an override; a config saved by a run or checkpoint is translated by
:func:`migrate_config_dict` (:func:`config_from_saved`), so old run folders still resume.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repae.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

# --- facts about a key ---------------------------------------------------------------------------

# numeric ranges: (test, "must be ..."), checked by check_ranges before a run builds anything
_POS, _NONNEG = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0")
_UNIT, _UNIT_OPEN = (lambda v: 0 <= v <= 1, "in [0, 1]"), (lambda v: 0 <= v < 1, "in [0, 1)")
_CFG = (lambda v: v >= 1, ">= 1 (1 = no guidance)")

#: what a changed value means when a run resumes (repae.training.resume); a key with none of these
#: changes training, and resuming with another value is warned about
ARCH = "architecture"  # fixes tensor shapes: resuming with another value cannot load the weights
OVERRIDDEN = "overridden"  # an optimizer hyper-parameter: the checkpoint's value is used
HARMLESS = "harmless"  # changes nothing about the trained weights (bookkeeping): only noted
_RESUME = (ARCH, OVERRIDDEN, HARMLESS)


def key(default: Any = MISSING, *, factory: Any = MISSING, choices: tuple[str, ...] | None = None,
        range: tuple | None = None, infinite: bool = False, resume: str | None = None) -> Any:  # noqa: A002
    """A config field and its facts (dataclass field metadata), the one place they are written.

    Args:
        default / factory: the default value (``factory`` for a mutable one, as ``default_factory``).
        choices: the values a fixed-choice key may take (:func:`check_choices`).
        range: ``(test, "must be ...")`` every numeric value of the key passes (:func:`check_ranges`).
        infinite: ``.inf`` is allowed besides the range (``optim.max_grad_norm``: no clipping).
        resume: :data:`ARCH`, :data:`OVERRIDDEN` or :data:`HARMLESS` (what a change means on resume).
    """
    if resume is not None and resume not in _RESUME:
        raise ValueError(f"resume={resume!r} is not one of {_RESUME}")
    meta = {"choices": choices, "range": range, "infinite": infinite, "resume": resume}
    meta = {k: v for k, v in meta.items() if v}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    source: str = "embedded"  # "embedded" | "fashion-mnist" | folder | .npz | .h5
    resolution: int = key(32, range=_POS, resume=ARCH)  # image side in pixels (ADM centre crop for folders)
    num_workers: int = key(0, range=_NONNEG, resume=HARMLESS)  # DataLoader workers (files are opened lazily per worker)
    latents: str | None = None  # cached-latent file for the `ldm` recipe (repae cache-latents)


@dataclass
class TokenizerConfig:
    # VAE architecture: f8d4 | f16d32 | tiny-f4d4 | tiny-f8d4 (LDM design) | flux1 | sd35 | flux2 | qwenimage
    # (published diffusers VAEs) | auto (the architecture of the diffusers folder in `weights`; docs/tokenizers.md)
    preset: str = key("tiny-f4d4", resume=ARCH)
    weights: str | None = None  # diffusers VAE folder / safetensors / LDM .pt; None = random init
    stats: str | None = None  # JSON {mean, std} initialising the latent normaliser
    bn_momentum: float = key(0.1, range=_UNIT)  # momentum of the latent BatchNorm (spec 2.6)
    # without `stats`: images whose posterior samples initialise the normaliser
    stats_images: int = key(512, range=_POS)
    # preset=auto: the folder's diffusers config ({"_class_name": ..., ...}), filled in from `weights` when the
    # run is built and recorded in config.json, so a checkpoint rebuilds its VAE without the folder
    # (preset=rae: the RAE architecture, resolved from the rae_* keys and the encoder registry)
    arch: dict[str, Any] | None = key(None, resume=ARCH)  # a dict: any of its fields
    # preset=rae: a representation autoencoder (RAE, Zheng et al. 2025; docs/tokenizers.md): the latent is a
    # FROZEN encoder's patch tokens [D, h, w]; a ViT decoder is trained by the `rae-decoder` recipe, and
    # `weights` is then an RAE folder (what that run exports)
    rae_encoder: str = "repae-vit-t4"  # registry name of the frozen encoder (RAE: dinov2-vit-b-reg)
    rae_encoder_weights: str | None = None  # its weights file (default: $REPAE_<NAME>_WEIGHTS / packaged)
    rae_decoder: str = "ViT-T"  # decoder preset: ViT-T | ViT-S | ViT-B | ViT-L | ViT-XL (RAE: ViT-XL)
    # decoder training adds N(0, sigma^2) to the latent, sigma ~ U(0, tau) (RAE 0.8)
    rae_noise_tau: float = key(0.8, range=_NONNEG)


@dataclass
class ModelConfig:
    preset: str = key("SiT-T/1", resume=ARCH)  # SiT-{S,B,L,XL}/{1,2,4,8}, SiT-T/{1,2}
    num_classes: int = key(10, range=_POS, resume=ARCH)
    class_dropout_prob: float = key(0.1, range=_UNIT_OPEN)  # label dropout for CFG (spec 2.2)
    qk_norm: bool = key(False, resume=ARCH)
    # true = train the sin-cos table, as the official code does by accident
    learn_pos_embed: bool = key(False, resume=ARCH)
    projector_dim: int = key(0, range=_NONNEG, resume=ARCH)  # REPA MLP head width; 0 = the preset's (2048, spec 2.5)
    # DiT^DH (RAE sec. 5, repae.models.dh): a wide shallow head replacing the final layer, SiT / LightningDiT
    # only; 0 = none. DiT^DH-XL: 2 blocks, 2048 wide, 16 heads
    dh_depth: int = key(0, range=_NONNEG)
    dh_width: int = key(2048, range=_POS)
    dh_heads: int = key(16, range=_POS)
    # RAE sec. 4.1: the layers that make the prediction (the DH head if any, else the model) must be at least
    # as wide as a latent token (C * patch^2); false lets a run break that rule on purpose
    check_width: bool = True


@dataclass
class AlignConfig:
    encoders: list[str] = key(factory=lambda: ["repae-vit-t4"], resume=ARCH)  # alignment targets
    encoder_weights: list[str | None] = field(default_factory=list)  # one path per encoder (or none)
    depth: int = key(2, range=_POS)  # 1-based SiT block whose output is projected and aligned (paper: 8)
    sit_coeff: float = key(0.5, range=_NONNEG)  # lambda_g: REPA weight in the SiT update
    vae_coeff: float = key(1.5, range=_NONNEG)  # lambda_v: REPA weight in the VAE update (through the frozen SiT)
    projector: str = key("mlp", resume=ARCH)  # REPA head: mlp (REPA) | conv (iREPA 3x3 conv); repae.models.projectors
    target_norm: str = "none"  # encoder-token normalisation: none (REPA) | spatial (iREPA, gamma 0.7)


@dataclass
class DiffusionConfig:
    path: str = key("linear", choices=("linear", "cosine"))  # linear | cosine
    time_sampler: str = key("uniform", choices=("uniform", "lognormal"))  # uniform | lognormal
    # RAE's dimension-dependent shift t' = a t / (1 + (a - 1) t) of training times and sampling grids
    # (repae.diffusion.shift): none | dimension (a = sqrt(C*h*w / time_shift_base)) | a number a
    time_shift: str = "none"
    time_shift_base: int = key(4096, range=_POS)  # n of the dimension shift (RAE: 4096)


@dataclass
class LRegConfig:
    """L_REG of the VAE (spec section 4): reconstruction + perceptual + KL + GAN (section ``lreg``)."""

    reconstruction_weight: float = key(1.0, range=_NONNEG)
    perceptual: str = key("laplacian", choices=("lpips", "laplacian", "none"))  # lpips needs VGG16 weights
    perceptual_weight: float = key(1.0, range=_NONNEG)
    vgg_weights: str | None = None
    kl_weight: float = key(1e-6, range=_NONNEG)
    disc_weight: float = key(0.1, range=_NONNEG)
    disc_start: int = key(0, range=_NONNEG)
    lecam_weight: float = key(0.0, range=_NONNEG)
    adaptive_disc_weight: bool = False
    disc_weights: str | None = None  # optional pretrained discriminator (safetensors/.pt)


@dataclass
class TokRegConfig:
    """Tokenizer regularisers SE / EQ-VAE / VA-VAE VF (repae.losses.tokenizer_reg,
    docs/tokenizer-regularisers.md). Weights / probabilities 0 = off (the default in every recipe)."""

    se_weight: float = key(0.0, range=_NONNEG)  # SE alpha (Skorokhodov et al. 2025); paper 0.25 [unverified]
    se_factors: list[int] = field(default_factory=lambda: [2, 4])  # one drawn per step [unverified]
    se_terms: list[str] = field(default_factory=lambda: ["l1", "perceptual"])  # SE distance d: l1|perceptual|gan
    eq_prob: float = key(0.0, range=_UNIT)  # EQ-VAE equivariance-step probability (upstream 0.5)
    eq_lowres_prob: float = key(0.25, range=_UNIT)  # low-resolution share of the other (prior-preservation) steps
    # EQ scales k/den; 0 = the latent side (32 for SD-VAE at 256 px, as upstream)
    eq_scale_den: int = key(0, range=_NONNEG)
    eq_min_scale: float = key(0.25, range=_POS)  # smallest EQ scale (upstream 8/32)
    eq_rotate: bool = True  # compose with rot90 by k*90 deg, k in {1,2,3}
    eq_anisotropic: bool = False  # independent height/width scales
    vf_weight: float = key(0.0, range=_NONNEG)  # VA-VAE w_hyper (0.1)
    vf_encoder: str = "repae-vit-t4"  # foundation model (registry name; VA-VAE: dinov2-vit-l)
    vf_encoder_weights: str | None = None  # its weights (default: env var / packaged)
    # encoder (its own normalisation) | vavae ([-1, 1], bilinear, as upstream)
    vf_pixels: str = key("encoder", choices=("encoder", "vavae"))
    vf_cos_margin: float = 0.5  # m1
    vf_distmat_margin: float = 0.25  # m2
    vf_cos_weight: float = key(1.0, range=_NONNEG)
    vf_distmat_weight: float = key(1.0, range=_NONNEG)
    vf_adaptive: bool = True  # adaptive weight ||grad nll|| / (||grad vf|| + 1e-4) on the encoder's last conv


@dataclass
class OptimConfig:
    lr: float = key(1e-4, range=_NONNEG, resume=OVERRIDDEN)  # SiT
    vae_lr: float = key(1e-4, range=_NONNEG, resume=OVERRIDDEN)
    disc_lr: float = key(1e-4, range=_NONNEG, resume=OVERRIDDEN)
    betas: tuple[float, float] = key((0.9, 0.999), range=_UNIT_OPEN, resume=OVERRIDDEN)
    weight_decay: float = key(0.0, range=_NONNEG, resume=OVERRIDDEN)
    eps: float = key(1e-8, range=_POS, resume=OVERRIDDEN)
    max_grad_norm: float = key(1.0, range=_POS, infinite=True)  # clipped separately for SiT, VAE and discriminator
    ema_decay: float = key(0.9999, range=_UNIT_OPEN)


@dataclass
class TrainConfig:
    recipe: str = key("repa-e", resume=ARCH)  # see repae.training.recipes.RECIPES
    batch_size: int = key(64, range=_POS)  # global batch
    grad_accum: int = key(1, range=_POS)
    max_steps: int = key(400, range=_POS, resume=HARMLESS)
    mixed_precision: str = key("no", choices=("no", "bf16", "fp16"))  # no | bf16 | fp16
    compile: bool = key(False, resume=HARMLESS)
    # recompute VAE activations in backward (fits 32 img/GPU at 256 px)
    vae_checkpointing: bool = key(False, resume=HARMLESS)
    # NHWC memory format for the VAE, LPIPS-VGG and PatchGAN convolutions: true | false | auto
    # (auto = on for a CPU, where it was measured faster, off on CUDA until measured there)
    channels_last: bool | str = "auto"
    allow_tf32: bool = key(True, resume=HARMLESS)
    seed: int = 0
    output_dir: str = key("runs", resume=HARMLESS)
    exp_name: str = key("repae-tiny-fmnist", resume=HARMLESS)
    log_every: int = key(10, range=_POS, resume=HARMLESS)
    checkpoint_every: int = key(200, range=_POS, resume=HARMLESS)
    keep_checkpoints: int = key(2, range=_NONNEG, resume=HARMLESS)
    sample_every: int = key(200, range=_NONNEG, resume=HARMLESS)
    init_from: str | None = None  # generator init: a repae run/checkpoint or an official .pt/.safetensors (EMA)
    resume: bool = key(True, resume=HARMLESS)  # resume from the latest complete checkpoint of the run folder
    threads: int = key(0, range=_NONNEG, resume=HARMLESS)  # torch CPU threads (0 = torch default)
    report_to: str = key("tensorboard", choices=("tensorboard", "wandb", "none"), resume=HARMLESS)  # metrics logger
    # latent-health scalars (SV, TV, CKNNA, ...) on a held-out batch; 0 = off
    diagnostics_every: int = key(50, range=_NONNEG, resume=HARMLESS)
    html_report: bool = key(True, resume=HARMLESS)  # write RUN/report.html (repae report) when the run ends
    # end of run: FD + class accuracy of N EMA samples beside N real test images (evalnet-fmnist,
    # 32x32 Fashion-MNIST only; RUN/final-samples.json + .png, shown first in report.html); 0 = off
    final_eval_samples: int = key(0, range=_NONNEG, resume=HARMLESS)
    # consecutive NaN/inf steps (each skipped, nothing updated) before the run halts
    max_nonfinite_skips: int = key(3, range=_POS, resume=HARMLESS)
    # several processes: a collective (gradient all-reduce, barrier) waits at most this long for a silent
    # rank before every rank stops (torch's default is 30 min of idle, billed GPUs); a rank that fails
    # tells the others at once
    dist_timeout_min: float = key(10.0, range=_POS, resume=HARMLESS)
    vae_ema: bool = False  # recipe vae: EMA of the tokenizer (decay optim.ema_decay), exported by export-vae


@dataclass
class SampleConfig:
    """In-training preview grids and the defaults of `repae sample`."""

    num_images: int = key(64, range=_POS, resume=HARMLESS)
    # auto = the generator family's sampler: euler for flow models (SiT, LightningDiT), ddim for DDPM
    # ones (DiT); resolved when a run is built, so a run's config.json names the sampler it used
    sampler: str = key("auto", resume=HARMLESS)  # auto | euler | heun | euler-maruyama | ddim | ddpm
    num_steps: int = key(50, range=_POS, resume=HARMLESS)
    cfg_scale: float = key(4.0, range=_CFG, resume=HARMLESS)
    guidance_low: float = key(0.0, range=_UNIT, resume=HARMLESS)
    guidance_high: float = key(1.0, range=_UNIT, resume=HARMLESS)
    # network + VAE decode arithmetic (autocast; solver state fp32/fp64): fp32 as generate.py, bf16 the
    # fast path (the embedded presets: 2.7x faster on an AVX512-BF16 CPU, docs/benchmarks.md)
    precision: str = key("fp32", choices=("fp32", "bf16", "fp16"), resume=HARMLESS)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    lreg: LRegConfig = field(default_factory=LRegConfig)
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
        if text.endswith("| None"):  # an optional key: null / an empty override means "none"
            return None
        empty = " ([] for an empty list)" if text.startswith(("list", "tuple")) else ""
        raise ConfigError(f"{where} cannot be empty (null): give it a value{empty}; `repae config` shows the default")
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
    if text.startswith("tuple"):  # tuple[float, float] (optim.betas)
        arity = text.count("float")
        if not isinstance(value, (list, tuple)) or len(value) != arity:
            raise ConfigError(f"{where} expects a list of {arity} numbers, e.g. [0.9, 0.999], got {value!r}")
        return tuple(_coerce(v, float, where) for v in value)
    if origin is list or text.startswith("list"):
        inner = text[len("list["):-1] if text.startswith("list[") else None
        if isinstance(value, str):  # a,b (an override without brackets); numbers read as numbers
            value = [v.strip() if inner in (None, "str", "str | None") else yaml_load(v)
                     for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} expects a list, e.g. [a, b] or a,b, got {value!r}")
        return [_coerce(v, inner, where) for v in value] if inner else list(value)
    return value


# --- renamed keys (CHANGELOG.md) ------------------------------------------------------------------

RENAMED_ON = "2026-12-06"  # the CHANGELOG.md heading that lists the renames
#: old dotted key -> the key that replaced it (issue 25: names that say what each key is)
RENAMED: dict[str, str] = {
    "model.encoder_depth": "align.depth",  # the SiT block aligned, not the VAE encoder nor align.encoders
    "align.proj_coeff": "align.sit_coeff",  # lambda_g
    "align.vae_align_coeff": "align.vae_coeff",  # lambda_v
    "tokreg.ema": "train.vae_ema",  # the VAE's EMA (recipe vae), not a regulariser
    "train.report": "train.html_report",  # RUN/report.html; train.report_to names the metrics logger
}
#: old section -> new section, every key inside unchanged
RENAMED_SECTIONS: dict[str, str] = {"loss": "lreg"}  # only the VAE's L_REG

# --- keys added after the first studies ----------------------------------------------------------
#: dotted key (current name) -> the value at which the key changes nothing, i.e. what every run did
#: before the key existed. A study run's fingerprint (repae.study.plan) leaves a key out while it
#: has this value, so adding a switch whose default is neutral keeps an older study's finished runs
#: valid, and setting it to anything else still makes them stale. A key added to RunConfig must be
#: listed here (tests/test_study_fingerprint.py fails otherwise).
ADDED: dict[str, Any] = {
    "diffusion.time_shift": "none",  # RAE's dimension-dependent schedule shift: off
    "diffusion.time_shift_base": 4096,  # read only when time_shift=dimension
    "model.check_width": True,  # a check that refuses a too-narrow generator; changes no number
    "model.dh_depth": 0,  # no DiT-DH head
    "model.dh_heads": 16,  # read only when dh_depth > 0
    "model.dh_width": 2048,  # read only when dh_depth > 0
    "tokenizer.arch": None,  # filled in only for tokenizer.preset=auto / rae
    "tokenizer.rae_decoder": "ViT-T",  # read only when tokenizer.preset=rae
    "tokenizer.rae_encoder": "repae-vit-t4",
    "tokenizer.rae_encoder_weights": None,
    "tokenizer.rae_noise_tau": 0.8,
    "train.dist_timeout_min": 10.0,  # collective timeout: changes no trained value
}


def _renamed(dotted: str) -> str | None:
    """The key that replaced ``dotted`` (``section.key``), or None when it was not renamed."""
    if dotted in RENAMED:
        return RENAMED[dotted]
    section, _, rest = dotted.partition(".")
    return f"{RENAMED_SECTIONS[section]}.{rest}" if section in RENAMED_SECTIONS else None


def _renamed_error(old: str, new: str, what: str = "key") -> ConfigError:
    return ConfigError(f"config {what} '{old}' was renamed '{new}' (CHANGELOG.md, {RENAMED_ON}): use the new name")


def migrate_config_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved by an older version (a run's ``config.json``, a checkpoint's ``state.json``
    config) with every renamed key under its new name (:data:`RENAMED`, :data:`RENAMED_SECTIONS`).

    Only for configs a run or checkpoint wrote: a user's preset or override with an old name is an
    error (:func:`from_dict`). Returns a new dict; ``raw`` is not changed. A dict with the new names
    comes back equal.
    """
    out = copy.deepcopy(dict(raw or {}))
    for old, new in RENAMED_SECTIONS.items():
        if isinstance(out.get(old), dict):
            moved = out.pop(old)
            out[new] = {**moved, **out[new]} if isinstance(out.get(new), dict) else moved
    for old, new in RENAMED.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if isinstance(out.get(osec), dict) and okey in out[osec]:
            value = out[osec].pop(okey)
            target = out.setdefault(nsec, {})
            if isinstance(target, dict):
                target.setdefault(nkey, value)
    return out


def _apply(section_obj: Any, updates: dict[str, Any], prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section_obj)}
    for name, value in updates.items():
        if name not in fields:
            if (new := _renamed(f"{prefix}{name}")) is not None:
                raise _renamed_error(f"{prefix}{name}", new)
            raise ConfigError(
                f"unknown config key '{prefix}{name}'; valid keys in '{prefix.rstrip('.')}': {', '.join(fields)}"
            )
        setattr(section_obj, name, _coerce(value, fields[name].type, f"{prefix}{name}"))


def from_dict(raw: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Build a RunConfig from a nested dict (unknown keys are errors; a renamed key is a one-line error
    naming its new name: a saved config goes through :func:`config_from_saved` instead)."""
    cfg = base or RunConfig()
    for section, values in (raw or {}).items():
        if section in RENAMED_SECTIONS and not hasattr(cfg, section):
            first = next(iter(values), None) if isinstance(values, dict) else None
            new = RENAMED_SECTIONS[section]
            raise (_renamed_error(f"{section}.{first}", f"{new}.{first}") if first is not None
                   else _renamed_error(section, new, "section"))
        if not hasattr(cfg, section) or not dataclasses.is_dataclass(getattr(cfg, section)):
            raise ConfigError(
                f"unknown config section '{section}'; valid: {', '.join(f.name for f in dataclasses.fields(cfg))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        _apply(getattr(cfg, section), values, f"{section}.")
    return cfg


def config_from_saved(raw: dict[str, Any]) -> RunConfig:
    """The RunConfig of a config dict a run or checkpoint saved (old key names translated:
    :func:`migrate_config_dict`)."""
    return from_dict(migrate_config_dict(raw))


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


def key_facts() -> dict[str, dict[str, Any]]:
    """``{"section.key": metadata}`` of every config key, in declaration order (the one key table)."""
    return {f"{sec.name}.{f.name}": dict(f.metadata) for sec in dataclasses.fields(RunConfig)
            for f in dataclasses.fields(sec.default_factory)}


def resume_keys(kind: str) -> tuple[str, ...]:
    """The keys whose ``resume`` fact is ``kind`` (:data:`ARCH`, :data:`OVERRIDDEN` or :data:`HARMLESS`)."""
    if kind not in _RESUME:
        raise ValueError(f"kind={kind!r} is not one of {_RESUME}")
    return tuple(k for k, m in key_facts().items() if m.get("resume") == kind)


# Keys whose value is one of a fixed set; registry-valued keys (recipe, presets, sampler, encoders) are
# checked against their registries when a run is built.
CHOICES: dict[str, tuple[str, ...]] = {k: m["choices"] for k, m in key_facts().items() if "choices" in m}


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
RANGES: dict[str, tuple] = {k: m["range"] for k, m in key_facts().items() if "range" in m}
_MAY_BE_INFINITE = tuple(k for k, m in key_facts().items() if m.get("infinite"))  # .inf = no clipping


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
    try:
        return parts, yaml_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(err).splitlines()[0]}); "
                          "quote it or fix its brackets") from None


def _load_preset(preset: str, cfg: RunConfig, *, seen: tuple[str, ...]) -> RunConfig:
    """A preset file on top of ``cfg``; ``extends: OTHER`` applies OTHER first (presets as small diffs)."""
    path = _preset_path(preset)
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml_load(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:  # JSONDecodeError is a ValueError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config {path} cannot be read as {'JSON' if path.suffix == '.json' else 'YAML'} "
                          f"({first}): fix the file or give a preset name") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections (data:, model:, train: ...), "
                          f"not a {type(raw).__name__}")
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
    """The RunConfig of a run's saved ``config.json`` (old key names translated)."""
    return config_from_saved(json.loads(Path(path).read_text()))
