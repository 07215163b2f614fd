"""Arguments shared by several verbs, defined once so that their names and meanings never drift.

Sampling flags (``repae sample``, ``repae evaluate --checkpoint``, ``repae analyze``): every flag
defaults to *unset*, and unset flags take the value of the run's own ``sample`` config (the
``sample:`` section of the preset the checkpoint was trained with, which is also what the
in-training preview grids use). One checkpoint therefore samples the same way in every verb
unless a flag says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import torch

from repae.cli.argtypes import finite_float, positive_int
from repae.config import SampleConfig
from repae.errors import ConfigError

SAMPLING_FLAGS = ("--sampler", "--num-steps", "--cfg-scale", "--guidance-low", "--guidance-high", "--seed",
                  "--no-ema")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The one sampling argument group; unset flags fall back to the checkpoint's ``sample`` config."""
    from repae.sampling.ddpm import DDPM_SAMPLERS
    from repae.sampling.solvers import SOLVERS

    g = parser.add_argument_group("sampling (unset flags: the run's own `sample` config)")
    g.add_argument("--sampler", choices=[*SOLVERS, *DDPM_SAMPLERS], default=None,
                   help=f"flow models (SiT, LightningDiT): {', '.join(SOLVERS)} (published REPA-E numbers: "
                   f"euler-maruyama, 250 steps); DDPM models (DiT): {', '.join(DDPM_SAMPLERS)} (DiT: ddpm, 250)")
    g.add_argument("--num-steps", type=positive_int, default=None, help="solver steps")
    g.add_argument("--cfg-scale", type=finite_float, default=None, help="classifier-free guidance scale >= 1 (1 = off)")
    g.add_argument("--guidance-low", type=finite_float, default=None, help="CFG applied for t >= this")
    g.add_argument("--guidance-high", type=finite_float, default=None, help="CFG applied for t <= this")
    g.add_argument("--seed", type=int, default=0, help="labels and per-sample seeds derive from it (default 0)")
    g.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="arithmetic of the network and the VAE decode (autocast; the solver state stays "
                        "fp32/fp64). Unset: the run's sample.precision (fp32 for official files, as generate.py); "
                        "bf16 is the fast path on GPUs and on CPUs with AVX512-BF16/AMX (docs/benchmarks.md)")
    return g


def resolve_sampling(args: argparse.Namespace, defaults: SampleConfig | None) -> dict[str, Any]:
    """Keyword arguments of ``Generator.__call__``: flags given on the command line over the run's config."""
    d = defaults if defaults is not None else SampleConfig()
    pick = {f.name: getattr(d, f.name) for f in dataclasses.fields(SampleConfig)}
    for key in ("sampler", "num_steps", "cfg_scale", "guidance_low", "guidance_high"):
        value = getattr(args, key, None)
        if value is not None:
            pick[key] = value
    if not 1.0 <= pick["cfg_scale"] < float("inf"):  # nan / inf sample NaN or black images
        raise ConfigError(f"--cfg-scale must be a finite number >= 1 (got {pick['cfg_scale']}); "
                          "use 1.0 for no guidance")
    if pick["num_steps"] < 1:
        raise ConfigError(f"--num-steps must be >= 1 (got {pick['num_steps']})")
    if not 0.0 <= pick["guidance_low"] <= pick["guidance_high"] <= 1.0:
        raise ConfigError(f"the guidance interval must satisfy 0 <= --guidance-low <= --guidance-high <= 1 "
                          f"(got {pick['guidance_low']}, {pick['guidance_high']})")
    return {"sampler": pick["sampler"], "num_steps": int(pick["num_steps"]), "cfg_scale": float(pick["cfg_scale"]),
            "guidance_interval": (float(pick["guidance_low"]), float(pick["guidance_high"]))}


def load_generator(path: str, *, ema: bool, device: torch.device, model_preset: str | None = None,
                   vae: str | None = None, vae_preset: str | None = None, stats: str | None = None,
                   resolution: int | None = None, num_classes: int | None = None):
    """A :class:`~repae.sampling.generator.Generator` on ``device`` for a ``repae`` run / checkpoint folder, or
    for an official checkpoint FILE (REPA-E / REPA / SiT / DiT / LightningDiT) with ``model_preset`` (``--model``)
    and optionally ``vae``, ``vae_preset``, ``stats``, ``resolution`` (default 256), ``num_classes`` (1000);
    see :func:`repae.sampling.official.generator_from_official`."""
    from pathlib import Path

    from repae.interop.official import resolve_official_file
    from repae.sampling.generator import Generator

    path = str(resolve_official_file(path))  # a hub id (owner/name[/file.pt]) -> its file in the local cache
    if Path(path).is_file():
        if model_preset is None:
            from repae.interop.official import load_official_file, select_state_dict
            from repae.models.official import guess_presets

            try:
                guesses = guess_presets(select_state_dict(load_official_file(path))[0])
            except ConfigError:
                guesses = []
            raise ConfigError(f"{path} is a checkpoint file, not a repae run: pass --model PRESET (its architecture"
                              + (f", e.g. --model {guesses[0]}" if guesses else ", e.g. --model SiT-XL/2") + ")")
        from repae.sampling.official import generator_from_official
        from repae.tokenizer.registry import resolve_tokenizer_weights, shipped_preset

        vae_preset = vae_preset or shipped_preset(vae)  # --vae as everywhere: shipped names too
        vae = resolve_tokenizer_weights(vae)
        gen = generator_from_official(path, model_preset=model_preset, vae=vae, vae_preset=vae_preset, stats=stats,
                                      resolution=resolution or 256, num_classes=num_classes or 1000, ema=ema)
        print(f"{gen.official.describe()}; VAE: {gen.official_vae}; latent statistics: {gen.official_stats.source}")
        return gen.to(device)
    given = [flag for flag, v in (("--model", model_preset), ("--vae", vae), ("--vae-preset", vae_preset),
                                  ("--stats", stats)) if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to official checkpoint files; {path} is a repae run or "
                          "checkpoint folder, which records its own model, VAE and statistics: drop them")
    return Generator.from_checkpoint(path, ema=ema, map_location="cpu").to(device)


def add_official_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--model``, ``--vae``, ``--vae-preset``, ``--stats``: what an official checkpoint file does not record.

    ``--vae`` means what it means everywhere (:func:`add_vae_argument`): a tokenizer folder, a weights file
    or a preset name; here it is optional (a REPA-E training checkpoint carries its own VAE).
    """
    g = parser.add_argument_group("official checkpoint files (REPA-E / REPA / SiT / DiT / LightningDiT .pt)")
    g.add_argument("--model", dest="model_preset", default=None,
                   help="architecture of an official --checkpoint file, e.g. SiT-XL/2, SiT-XL/1, DiT-XL/2, "
                   "LightningDiT-XL/1 (see docs/official-checkpoints.md)")
    g.add_argument("--vae", default=None,
                   help="tokenizer: a folder written by export-vae / save_pretrained (or a diffusers AutoencoderKL "
                   "folder), an LDM/official .pt/.ckpt/.safetensors file (with --vae-preset), or a preset name; "
                   "default: the 'vae' entry of a REPA-E checkpoint")
    g.add_argument("--vae-preset", default=None,
                   help="architecture of a --vae weights file (f8d4, f16d32, tiny-f4d4, tiny-f8d4; default from the "
                   "latent channels: 4 -> f8d4, 32 -> f16d32)")
    g.add_argument("--stats", default=None,
                   help="latent statistics: REPA-E *-latents-stats.pt, VA-VAE latents_stats.pt or repae JSON "
                   "(default: the checkpoint's latent BatchNorm, SD-VAE's 0.18215, or the VAE's own)")
    return g


def official_kwargs(args: argparse.Namespace) -> dict:
    """The official-file keyword arguments of :func:`load_generator` that were given on the command line."""
    keys = ("model_preset", "vae", "vae_preset", "stats", "resolution", "num_classes")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def default_device(name: str | None) -> torch.device:
    """``--device``: the named torch device (checked: one line naming the fix for a typo or a missing GPU), or
    cuda when available, else cpu."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here; "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def distributed_setup() -> tuple[int, int, torch.device]:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun / accelerate) and init gloo (CPU) or nccl (CUDA)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return rank, world, device


def add_data_arguments(parser: argparse.ArgumentParser, *, flag: str = "--data", default: str | None = "embedded:test",
                       what: str = "images") -> None:
    """``--data`` (or another flag name) + ``--resolution`` + ``--strict``, read like training data."""
    parser.add_argument(flag, default=default, required=default is None,
                        help=f"{what}, read by repae.data.build_dataset exactly like training data: an image folder "
                        "(class sub-folders or flat; ADM centre crop; unreadable files skipped), .npz, .h5, "
                        f"embedded[:split] or fashion-mnist[:split]" + (f" (default {default})" if default else ""))
    parser.add_argument("--resolution", type=positive_int, default=None,
                        help="image side (default: 32 for Fashion-MNIST, the stored side of square .npz/.h5 images, 256 otherwise)")
    parser.add_argument("--strict", action="store_true",
                        help="image folders: stop at the first unreadable image instead of skipping it")


def image_source(spec: str, *, resolution: int | None, split: str = "test", strict: bool = False):
    """An evaluation image source: ADM ``.npz`` files stream as they are; anything else is a dataset.

    Everything that is not an ``.npz`` goes through :func:`repae.data.build_dataset` (class folders,
    ADM centre crop at ``resolution``, the bad-file policy), so evaluation reads images exactly as
    training does.
    """
    from pathlib import Path

    from repae.data import build_dataset, default_resolution

    if str(spec).endswith(".npz") and Path(spec).is_file():
        return spec
    return build_dataset(spec, resolution=resolution or default_resolution(spec), split=split, strict=strict)


def add_vae_argument(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """``--vae`` means the same in every verb: a preset name, a saved tokenizer folder or a weights file."""
    parser.add_argument("--vae", default=default, required=default is None,
                        help="tokenizer: a folder written by export-vae / save_pretrained, or a diffusers VAE folder "
                        "(AutoencoderKL in any configuration, AutoencoderKLFlux2, AutoencoderKLQwenImage), an RAE "
                        "folder (export-vae of an rae-decoder run), an "
                        "LDM/official .pt/.ckpt/.safetensors file (with --vae-preset), or a preset name for a randomly "
                        "initialised VAE" + (f" (default {default})" if default else ""))
    parser.add_argument("--vae-preset", default=None,
                        help="architecture of a --vae weights file (f8d4, f16d32, tiny-f4d4, tiny-f8d4, flux1, sd35, "
                        "flux2, qwenimage; default f8d4)")


def load_tokenizer(spec: str, *, preset: str | None = None):
    """Resolve ``--vae``: folder (or a hub id in the local Hugging Face cache) -> ``from_pretrained``; preset name ->
    random init; file -> preset + weights."""
    from pathlib import Path

    from repae.interop.hub import repo_id as hub_repo_id
    from repae.tokenizer.registry import resolve_tokenizer_weights
    from repae.tokenizer.tokenizer import Tokenizer
    from repae.tokenizer.vae import preset_names

    path = Path(resolve_tokenizer_weights(spec))
    from repae.tokenizer.rae import is_rae_folder

    if is_rae_folder(path):  # an RAE (repae export-vae of an rae-decoder run): encoder from the registry
        from repae.encoders.rae import load_rae_tokenizer

        return load_rae_tokenizer(path)
    if path.is_dir():
        return Tokenizer.from_pretrained(path, require_stats=False)  # statistics are not needed to encode
    if path.is_file():
        tok = Tokenizer.from_preset(preset or "f8d4")
        print(tok.load_vae_weights(path))
        return tok
    if spec in preset_names():
        print(f"warning: --vae {spec} is a preset name: a randomly initialised VAE")
        return Tokenizer.from_preset(spec)
    from repae.interop.vae import missing_vae_weights

    if hub_repo_id(spec) is not None:
        raise missing_vae_weights(spec)  # a hub id that is not in the local cache: names the files to place
    raise ConfigError(f"--vae {spec!r} is neither a folder, a weights file nor a preset: pass an existing VAE folder or "
                      f"weights file, or one of the presets {', '.join(preset_names())}")
