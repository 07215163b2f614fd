"""Published checkpoints in and out: sample the released SiT / REPA / REPA-E / DiT / LightningDiT weights, and
export a ``repae`` run in the official REPA-E layout.

In::

    gen = generator_from_official("pretrained/sit-repae-sdvae/checkpoints/0400000.pt", model_preset="SiT-XL/2")
    gen = generator_from_official("SiT-XL-2-256x256.pt", model_preset="SiT-XL/2", vae="sd-vae-ft-ema/")
    gen = generator_from_official("lightningdit-xl-imagenet256-800ep.pt", model_preset="LightningDiT-XL/1",
                                  vae="vavae-imagenet256-f16d32-dinov2.pt", vae_preset="f16d32",
                                  stats="latents_stats.pt")
    images = gen(labels, seeds=..., **gen.sample_defaults_kwargs)

The file is read and its layout converted by :mod:`repae.interop.official` and the network is built and
loaded strictly by :mod:`repae.models.official`; networks in SiT's ``transport`` time convention
(``sit``, ``lightningdit`` layouts) are wrapped in :class:`~repae.models.time_convention.TimeFlipped`
so every ``repae`` solver, guidance interval and the SDE score see ``repae``'s convention (t = 1 noise).

Latent statistics, first match wins (``Generator.official_stats`` says which was used):

1. ``stats``: a REPA-E ``*-latents-stats.pt``, a VA-VAE ``latents_stats.pt`` or a ``repae`` JSON;
2. REPA-E layout: the latent BatchNorm saved inside the SiT entry that is loaded (``ema``: the EMA
   statistics, exactly what ``generate.py`` uses);
3. the VAE's own statistics: the sidecar ``<vae>-latents-stats.pt`` of a VAE file (REPA-E's naming),
   a tokenizer folder's ``latent_stats.json``, or a diffusers config's ``latents_mean`` / ``latents_std``;
4. for REPA / SiT / DiT on 4-channel latents (SD-VAE latents times 0.18215, e.g. with the diffusers
   ``sd-vae-ft-ema`` folder, which has none of the above): mean 0, std 1 / 0.18215; else an error
   (LightningDiT: pass its ``latents_stats.pt``).

Out: :func:`export_official` writes a run's SiT (live ``model`` + ``ema``, each with the latent
BatchNorm as ``bn.*``) and E2E-VAE in the layout ``generate.py`` of REPA-E reads.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repae.config import SampleConfig
from repae.errors import ConfigError
from repae.interop.official import (
    LAYOUTS,
    SD_LATENT_SCALE,
    load_official_file,
    repae_to_official,
    resolve_official_file,
)
from repae.models.official import OfficialWeights, build_official_model
from repae.models.time_convention import TimeFlipped, flip_time_convention_
from repae.sampling.generator import Generator

__all__ = ["OfficialStats", "default_sample_config", "export_official", "generator_from_official"]

log = logging.getLogger(__name__)

#: VAE architecture of a latent with this many channels when no --vae-preset is given.
VAE_PRESET_BY_CHANNELS = {4: "f8d4", 32: "f16d32"}


@dataclass(frozen=True)
class OfficialStats:
    """Where the latent statistics of an official generator came from."""

    source: str
    mean: torch.Tensor  # [C]
    var: torch.Tensor  # [C] (the normaliser's running_var; std = sqrt(var))


def default_sample_config(layout: str) -> SampleConfig:
    """How each release was evaluated: SDE 250 steps (REPA / REPA-E / SiT), Euler 250 (LightningDiT), DDPM 250 (DiT).

    CFG is off (scale 1); pass ``--cfg-scale`` and the guidance interval of the model card.
    """
    sampler = {"dit": "ddpm", "lightningdit": "euler"}.get(layout, "euler-maruyama")
    return SampleConfig(sampler=sampler, num_steps=250, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0)


# ---------------------------------------------------------------------------------------------
# tokenizer and statistics
# ---------------------------------------------------------------------------------------------


def _vae_preset(vae_preset: str | None, channels: int) -> str:
    if vae_preset is not None:
        return vae_preset
    if channels not in VAE_PRESET_BY_CHANNELS:
        raise ConfigError(f"the generator works on {channels}-channel latents: pass --vae-preset for its VAE")
    return VAE_PRESET_BY_CHANNELS[channels]


def _tokenizer(vae: Any, vae_preset: str | None, checkpoint: Any, channels: int, model_file: Path):
    """(tokenizer, description, candidate statistics from the VAE side or None)."""
    from repae.tokenizer.tokenizer import Tokenizer
    from repae.tokenizer.vae import VAE_PRESETS

    if vae is None:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("vae"), dict):
            tok = Tokenizer.from_preset(_vae_preset(vae_preset, channels))
            _, n, _ = tok.load_vae_state(checkpoint, what=f"'vae' entry of {model_file}",
                                         hint="; pass the matching --vae-preset")
            return tok, f"'vae' entry of the checkpoint ({n} tensors, {tok.preset})", None
        raise ConfigError(f"{model_file} holds no VAE: pass --vae (a tokenizer folder, a diffusers AutoencoderKL "
                          "folder or an LDM/official .pt with --vae-preset)")
    if isinstance(vae, Tokenizer):
        return vae, "given tokenizer", None
    path = Path(vae)
    if path.is_dir():
        tok = Tokenizer.from_pretrained(path, require_stats=False)
        stats = None
        if (path / "latent_stats.json").is_file():
            stats = (f"{path / 'latent_stats.json'}", tok.normalizer.running_mean.clone(),
                     tok.normalizer.running_var.clone())
        else:
            cfg = json.loads((path / "config.json").read_text())
            if cfg.get("latents_mean") and cfg.get("latents_std"):
                std = torch.tensor(cfg["latents_std"], dtype=torch.float32)
                stats = (f"{path / 'config.json'} latents_mean/latents_std",
                         torch.tensor(cfg["latents_mean"], dtype=torch.float32), std.pow(2))
        return tok, f"tokenizer folder {path}", stats
    if path.is_file():
        tok = Tokenizer.from_preset(_vae_preset(vae_preset, channels))
        report = tok.load_vae_weights(path)
        sidecar = path.with_name(path.stem + "-latents-stats.pt")
        stats = None
        if sidecar.is_file():
            from repae.tokenizer.stats import load_stats

            mean, std = load_stats(sidecar)
            stats = (str(sidecar), mean, std.pow(2))
        return tok, f"{report} ({tok.preset})", stats
    if str(vae) in VAE_PRESETS:
        log.warning("--vae %s is a preset name: a randomly initialised VAE", vae)
        return Tokenizer.from_preset(str(vae)), f"randomly initialised {vae} (preset name)", None
    raise ConfigError(f"--vae {vae!r} is neither a folder, a weights file nor a preset: pass an existing VAE folder or "
                      f"weights file, or one of the presets {', '.join(VAE_PRESETS)}")


def _statistics(stats: Any, info: OfficialWeights, vae_stats, channels: int) -> OfficialStats:
    if stats is not None:
        if isinstance(stats, (tuple, list)) and len(stats) == 2:
            mean, std = (torch.as_tensor(s, dtype=torch.float32).reshape(-1) for s in stats)
            return OfficialStats("given (mean, std)", mean, std.pow(2))
        from repae.tokenizer.stats import load_stats

        mean, std = load_stats(stats)
        return OfficialStats(str(stats), mean, std.pow(2))
    if "bn" in info.extras:
        bn = info.extras["bn"]
        return OfficialStats(f"latent BatchNorm of the '{info.entry}' entry (bn.running_mean / bn.running_var)",
                             bn["running_mean"].float().reshape(-1), bn["running_var"].float().reshape(-1))
    if vae_stats is not None:
        source, mean, var = vae_stats
        return OfficialStats(source, mean.float().reshape(-1), var.float().reshape(-1))
    if info.layout in ("repa", "sit", "dit") and channels == 4:
        std = torch.full((channels,), 1.0 / SD_LATENT_SCALE)
        return OfficialStats(f"SD-VAE scale {SD_LATENT_SCALE} (mean 0, std 1/{SD_LATENT_SCALE}), as "
                             f"{info.layout.upper()}'s sampler", torch.zeros(channels), std.pow(2))
    raise ConfigError(f"no latent statistics for this {LAYOUTS[info.layout].family} checkpoint: pass --stats "
                      "(e.g. LightningDiT's latents_stats.pt or a REPA-E *-latents-stats.pt)")


# ---------------------------------------------------------------------------------------------
# in
# ---------------------------------------------------------------------------------------------


def generator_from_official(model_file: str | os.PathLike, *, model_preset: str, vae: Any = None,
                            vae_preset: str | None = None, stats: Any = None, resolution: int = 256,
                            num_classes: int = 1000, ema: bool = True, layout: str | None = None,
                            encoder_depth: int | None = None) -> Generator:
    """A :class:`~repae.sampling.generator.Generator` for a published generator checkpoint.

    Args:
        model_file: the checkpoint (``.pt`` / ``.safetensors``; ``{model, ema, ...}`` or a bare state dict), or a
            Hugging Face hub id in the local cache (:func:`~repae.interop.official.resolve_official_file`).
        model_preset: its architecture, a ``repae`` preset (``SiT-XL/2``, ``SiT-XL/1``, ``DiT-XL/2``,
            ``LightningDiT-XL/1``); must match the weights.
        vae: tokenizer: a folder (``repae`` / diffusers), an LDM / official VAE file (with ``vae_preset``),
            a preset name (random VAE), or a :class:`~repae.tokenizer.tokenizer.Tokenizer`. ``None``: the
            ``vae`` entry of a REPA-E training checkpoint.
        vae_preset: architecture of a VAE file (default from the latent channels: 4 -> f8d4, 32 -> f16d32).
        stats: latent statistics file or ``(mean, std)``; default: see the module docstring.
        resolution: image side (the latent grid of the weights must equal the tokenizer's at it).
        num_classes: real classes (null label = ``num_classes``).
        ema: the ``ema`` entry (default) or ``model``.
        layout: force a layout of :data:`repae.interop.official.LAYOUTS` (default: detected).
        encoder_depth: REPA projector block (only matters for alignment, not for sampling).

    The returned generator has ``sample_defaults`` (how the release was evaluated, CFG off),
    ``official`` (:class:`~repae.models.official.OfficialWeights`), ``official_stats`` and ``official_vae``.
    """
    model_file = Path(resolve_official_file(model_file))
    checkpoint = load_official_file(model_file)
    net, info = build_official_model(checkpoint, model_preset, num_classes=num_classes, ema=ema, layout=layout,
                                     encoder_depth=encoder_depth, source=str(model_file))
    arch = info.architecture
    C, side = arch["in_channels"], arch["input_size"]
    tok, vae_note, vae_stats = _tokenizer(vae, vae_preset, checkpoint, C, model_file)
    del checkpoint
    shape = tuple(tok.latent_shape(resolution))
    if shape != (C, side, side):
        raise ConfigError(f"{model_preset} weights expect {C}x{side}x{side} latents, the tokenizer gives "
                          f"{shape[0]}x{shape[1]}x{shape[2]} at {resolution} px; check --vae / --vae-preset / "
                          "--resolution")
    st = _statistics(stats, info, vae_stats, C)
    if st.mean.numel() != C or st.var.numel() != C:
        raise ConfigError(f"latent statistics from {st.source} have {st.mean.numel()} channels, the latents {C}; "
                          "pass --stats of this VAE (e.g. from repae latent-stats)")
    with torch.no_grad():
        tok.normalizer.running_mean.copy_(st.mean)
        tok.normalizer.running_var.copy_(st.var)
    model = TimeFlipped(net) if info.time == "transport" else net
    gen = Generator(tokenizer=tok.eval(), model=model.eval(), path="linear", num_classes=num_classes,
                    resolution=resolution)
    gen.sample_defaults = default_sample_config(info.layout)
    gen.official, gen.official_stats, gen.official_vae = info, st, vae_note
    return gen


# ---------------------------------------------------------------------------------------------
# out
# ---------------------------------------------------------------------------------------------


def _save_pt(path: Path, obj: Any) -> None:
    from repae.utils.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


EXPORT_FORMATS = ("official", "diffusers")


def export_official(run: str | os.PathLike, out_dir: str | os.PathLike, *, vae_format: str = "official",
                    vae_name: str = "e2e-vae") -> dict[str, Path]:
    """Write a ``repae`` run in the official layouts; returns ``{what: path}``.

    ``out_dir/checkpoints/{step:07d}.pt`` + ``out_dir/args.json`` (the files REPA-E's ``generate.py
    --exp-path out_dir --train-steps step`` reads): SiT runs in the ``repa-e`` layout ``{model, ema, vae,
    steps}`` with the live / EMA latent BatchNorm as ``bn.*`` and the VAE in LDM layout; DiT runs in
    DiT's layout ``{model, ema, steps}`` (REPA projectors dropped); LightningDiT runs in LightningDiT's
    layout ``{model, ema, steps}`` converted to its time convention (:func:`flip_time_convention_`).
    The E2E-VAE goes to ``out_dir/{vae_name}/{vae_name}.pt`` + ``{vae_name}-latents-stats.pt`` (EMA
    statistics; ``vae_format="official"``, what ``save_vae_weights.py`` writes) or to a diffusers
    ``AutoencoderKL`` folder ``out_dir/{vae_name}-hf/`` (``vae_format="diffusers"``).
    """
    from repae.config import config_from_saved
    from repae.interop.vae import diffusers_to_ldm
    from repae.tokenizer.stats import to_scale_bias
    from repae.training.builders import build_sit_for, build_tokenizer_arch
    from repae.training.checkpoint import read_checkpoint
    from repae.utils.io import write_json

    if vae_format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {vae_format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if not vae_name or vae_name.startswith(".") or "/" in vae_name or "\\" in vae_name or vae_name != vae_name.strip():
        raise ConfigError(f"--vae-name {vae_name!r} must be a plain file name (no folders, not empty, not starting with "
                          "'.'), e.g. e2e-vae")
    from repae.utils.io import check_output_path

    check_output_path(out_dir, folder=True, what="out_dir")
    models, _, state = read_checkpoint(run)
    cfg = config_from_saved(state["config"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = int(state.get("step", 0))
    written: dict[str, Path] = {}
    tok = build_tokenizer_arch(cfg)
    vae_sd = models["vae"]
    live_bn = models.get("normalizer", tok.normalizer.state_dict())
    ema_bn = models.get("ema.normalizer", live_bn)
    ldm_vae = _contiguous(diffusers_to_ldm(vae_sd, tok.config))

    if "sit" in models:
        preset = cfg.model.preset
        family = "LightningDiT" if preset.startswith("LightningDiT-") else preset.split("-", 1)[0]
        layout = {"SiT": "repa-e", "DiT": "dit", "LightningDiT": "lightningdit"}[family]
        entries: dict[str, Any] = {}
        for entry, group, bn in (("model", "sit", live_bn), ("ema", "ema.model", ema_bn)):
            sd = models.get(group, models["sit"])
            if LAYOUTS[layout].time == "transport":  # rewrite the weights into the official time direction
                net = build_sit_for(cfg, tok, z_dims=tuple(state.get("z_dims", ())))
                net.load_state_dict(sd)
                sd = flip_time_convention_(net).state_dict()
            entries[entry] = _contiguous(repae_to_official(sd, layout, bn=bn))
        ckpt: dict[str, Any] = {**entries, "steps": step}
        if layout == "repa-e":
            ckpt["vae"] = ldm_vae
        path = out / "checkpoints" / f"{step:07d}.pt"
        _save_pt(path, ckpt)
        written["checkpoint"] = path
        args = {
            "model": preset, "vae": cfg.tokenizer.preset, "resolution": cfg.data.resolution,
            "num_classes": cfg.model.num_classes, "cfg_prob": cfg.model.class_dropout_prob,
            "encoder_depth": cfg.align.depth, "enc_type": ",".join(cfg.align.encoders) or "None",
            "proj_coeff": cfg.align.sit_coeff, "vae_align_proj_coeff": cfg.align.vae_coeff,
            "bn_momentum": cfg.tokenizer.bn_momentum, "qk_norm": cfg.model.qk_norm, "fused_attn": False,
            "path_type": cfg.diffusion.path, "prediction": "v", "weighting": cfg.diffusion.time_sampler,
            "exp_name": out.name, "exported_by": "repae export", "layout": layout,
            "time_convention": LAYOUTS[layout].time,
        }
        write_json(out / "args.json", args)
        written["args"] = out / "args.json"

    mean = ema_bn["running_mean"].float()
    std = ema_bn["running_var"].float().sqrt()
    if vae_format == "official":
        vae_path = out / vae_name / f"{vae_name}.pt"
        _save_pt(vae_path, ldm_vae)
        stats_path = out / vae_name / f"{vae_name}-latents-stats.pt"
        _save_pt(stats_path, to_scale_bias(mean, std))
        written.update(vae=vae_path, stats=stats_path)
    else:
        tok.vae.load_state_dict(vae_sd)
        tok.normalizer.load_state_dict(ema_bn)
        written["vae"] = tok.save_pretrained(out / f"{vae_name}-hf")
    return written
