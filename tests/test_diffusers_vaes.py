"""Any diffusers VAE as the tokenizer, handed back drop-in (issue 22, items 1 and 3).

For each family -- ``AutoencoderKL`` with a FLUX.1-like and an SD3.5-like config, ``AutoencoderKLFlux2``,
``AutoencoderKLQwenImage`` -- a random-weight TINY instance with the published structure (tiny widths)
is saved as a diffusers folder, loaded with ``repae.Tokenizer.from_pretrained``, trained for a few
REPA-E steps (the real trainer, on the embedded 32 px data), exported with ``repae export-vae``, and
loaded back with the SAME diffusers class: it must encode and decode as repae's tokenizer does, and
the latent statistics must be in the fields the family's pipelines read.

Tolerances: encoding is bit-identical (same modules, same ops), and so is Qwen-Image's decoding. Decoding
with diffusers' 2-D ``Decoder`` (``AutoencoderKL``, ``AutoencoderKLFlux2``) differs only by float summation
order, because repae folds its nearest-x2 + conv3x3 upsampling into one transposed conv
(repae.tokenizer.upsample): the test allows 1e-5 absolute on pixels in [-1, 1] (measured, printed by the
test: at most 2.5e-6 on these tiny VAEs); with the fold switched off the decode is bit-identical too.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from repae.config import load_config
from repae.errors import ConfigError, MissingWeightsError
from repae.tokenizer import Tokenizer
from repae.tokenizer.families import (
    DIFFUSERS_VAE_PRESETS,
    FAMILIES,
    DiffusersVAESpec,
    arch_from_diffusers_config,
    patchify,
    unpatchify,
)
from repae.tokenizer.upsample import set_folded_upsampling
from repae.tokenizer.vae import VAEConfig

DECODE_ATOL = 1e-5  # folded transposed-conv upsampling vs diffusers' interpolate + conv (summation order only)


def tiny(name: str, *, levels: int = 3) -> DiffusersVAESpec:
    """The published preset ``name`` with tiny widths: ``levels`` resolution levels (factor 2**(levels-1))."""
    spec = DIFFUSERS_VAE_PRESETS[name]
    cfg = dict(spec.raw)
    if spec.class_name == "AutoencoderKLQwenImage":
        cfg.update(base_dim=8, dim_mult=[1, 2, 2][:levels], num_res_blocks=1,
                   temperal_downsample=[False, True][: levels - 1])
    else:
        cfg.update(block_out_channels=[8, 16, 16][:levels], norm_num_groups=4, layers_per_block=1, sample_size=32,
                   down_block_types=cfg["down_block_types"][:levels], up_block_types=cfg["up_block_types"][:levels])
    return DiffusersVAESpec(spec.class_name, cfg)


FAMILY_CASES = ["flux1", "sd35", "flux2", "qwenimage"]
# resolution levels of each tiny VAE: repae latent factor 4 (8x8 latents at 32 px, the 64 tokens of SiT-T/1 and
# repae-vit-t4); FLUX.2's 2x2 patches add a factor 2, so it gets one level fewer
LEVELS = {"flux1": 3, "sd35": 3, "flux2": 2, "qwenimage": 3}


def save_random_folder(tmp_path, name: str, *, levels: int | None = None, seed: int = 0):
    """A diffusers folder (``Class.save_pretrained``) of a random-weight tiny VAE; FLUX.2's BatchNorm gets
    statistics (as a trained FLUX.2 VAE has)."""
    torch.manual_seed(seed)
    spec = tiny(name, levels=levels or LEVELS[name])
    vae = spec.build()
    if spec.class_name == "AutoencoderKLFlux2":
        with torch.no_grad():
            vae.bn.running_mean.uniform_(-0.5, 0.5)
            vae.bn.running_var.uniform_(0.5, 2.0)
            vae.bn.num_batches_tracked.fill_(1000)
    folder = tmp_path / f"{name}-vae"
    vae.save_pretrained(folder)
    return folder, vae


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------- presets
def test_presets_are_published_fields_only_and_instantiate_on_meta():
    """Every preset field is a constructor argument of its class (nothing invented), and each builds with
    diffusers' ``from_config`` (on the meta device: no memory, no forward at full size)."""
    expected = {  # name: (class, repae latent channels, factor, parameters measured on meta)
        "flux1": ("AutoencoderKL", 16, 8, 83_819_683),
        "sd35": ("AutoencoderKL", 16, 8, 83_819_683),
        "flux2": ("AutoencoderKLFlux2", 128, 16, 84_046_115),
        "qwenimage": ("AutoencoderKLQwenImage", 16, 8, 126_892_531),
    }
    assert set(DIFFUSERS_VAE_PRESETS) == set(expected)
    for name, (cls, channels, factor, params) in expected.items():
        spec = DIFFUSERS_VAE_PRESETS[name]
        assert spec.class_name == cls
        assert set(spec.raw) <= set(FAMILIES[cls].init_fields()), f"{name}: fields diffusers does not accept"
        with torch.device("meta"):
            tok = Tokenizer.from_preset(name)
        assert type(tok.vae).__name__ == cls and tok.preset == name
        assert (tok.latent_channels, tok.downsample_factor) == (channels, factor)
        assert tok.latent_shape(256) == (channels, 256 // factor, 256 // factor)
        assert sum(p.numel() for p in tok.vae.parameters()) == params
    flux1 = DIFFUSERS_VAE_PRESETS["flux1"].config
    assert (flux1["shift_factor"], flux1["scaling_factor"], flux1["use_quant_conv"]) == (0.1159, 0.3611, False)
    sd35 = DIFFUSERS_VAE_PRESETS["sd35"].config
    assert (sd35["shift_factor"], sd35["scaling_factor"], sd35["use_post_quant_conv"]) == (0.0609, 1.5305, False)


def test_folder_architecture_selection():
    # an LDM-design AutoencoderKL keeps the LDM path (the presets' outputs do not change)
    ldm = Tokenizer.from_preset("tiny-f4d4").vae.config
    assert isinstance(arch_from_diffusers_config(dict(ldm, _class_name="AutoencoderKL")), VAEConfig)
    # the same without quant convs, or another class, is a diffusers spec
    assert isinstance(arch_from_diffusers_config(dict(ldm, use_quant_conv=False)), DiffusersVAESpec)
    assert arch_from_diffusers_config({"_class_name": "AutoencoderKLQwenImage", "z_dim": 4}).latent_channels == 4
    with pytest.raises(ConfigError, match="AutoencoderKLWan.*supported"):
        arch_from_diffusers_config({"_class_name": "AutoencoderKLWan"})
    # equal architectures compare equal whatever their statistics fields or key order
    a = tiny("flux1")
    b = DiffusersVAESpec("AutoencoderKL", dict(reversed(list(a.raw.items()))))
    assert a == b and not tiny("sd35").differences(a) and tiny("sd35") != a  # stats differ, architecture does not
    assert tiny("flux1", levels=2).differences(a) == ["block_out_channels [8, 16] vs [8, 16, 16]",
                                                      "down_block_types ['DownEncoderBlock2D', 'DownEncoderBlock2D'] "
                                                      "vs ['DownEncoderBlock2D', 'DownEncoderBlock2D', "
                                                      "'DownEncoderBlock2D']",
                                                      "up_block_types ['UpDecoderBlock2D', 'UpDecoderBlock2D'] vs "
                                                      "['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D']"]


def test_patchify_is_flux2_layout_and_inverts():
    z = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patchify(z, 2, 2)
    assert p.shape == (2, 12, 2, 3)
    # channel c*4 + i*2 + j holds offset (i, j) of channel c (Flux2Pipeline._patchify_latents)
    assert torch.equal(p[:, 1 * 4 + 1 * 2 + 0], z[:, 1, 1::2, 0::2])
    assert torch.equal(unpatchify(p, 2, 2), z)


# ------------------------------------------------------------------------- loading: folders and stats
@pytest.mark.parametrize("name", FAMILY_CASES)
def test_from_pretrained_matches_diffusers_and_takes_folder_statistics(tmp_path, name, caplog):
    folder, vae = save_random_folder(tmp_path, name)
    with caplog.at_level(logging.INFO, logger="repae.tokenizer.tokenizer"):
        tok = Tokenizer.from_pretrained(folder)
    assert type(tok.vae) is type(vae) and tok.preset == "auto"
    expected_source = {"flux1": "shift_factor=0.1159 / scaling_factor=0.3611", "sd35": "shift_factor=0.0609",
                       "flux2": "BatchNorm running statistics", "qwenimage": "latents_mean / latents_std"}[name]
    assert expected_source in tok.stats_source
    assert any(expected_source in r.getMessage() and "latent_stats.json" in r.getMessage() for r in caplog.records)
    x = images()
    vae.eval()
    tok.eval()
    with torch.no_grad():
        post = tok.encode(x)
        ref = vae.encode(x[:, :, None] if name == "qwenimage" else x).latent_dist
        mean = ref.mean[:, :, 0] if name == "qwenimage" else ref.mean
        if name == "flux2":
            mean = patchify(mean, 2, 2)
        assert torch.equal(post.mean, mean)
        assert post.mean.shape == (2, *tok.latent_shape(32))
    # the statistics are the folder's, in the normaliser's terms
    if name in ("flux1", "sd35"):
        cfg = vae.config
        assert torch.equal(tok.normalizer.running_mean, torch.full((16,), cfg.shift_factor))
        torch.testing.assert_close(tok.normalizer.running_var, torch.full((16,), cfg.scaling_factor ** -2))
    elif name == "flux2":
        assert torch.equal(tok.normalizer.running_mean, vae.bn.running_mean)
        assert torch.equal(tok.normalizer.running_var, vae.bn.running_var)
        assert tok.normalizer.eps == vae.config.batch_norm_eps
    else:
        assert tok.normalizer.running_mean.tolist() == pytest.approx(vae.config.latents_mean)
        torch.testing.assert_close(tok.normalizer.running_var.sqrt(), torch.tensor(vae.config.latents_std))


def test_folder_without_statistics_says_so(tmp_path, caplog):
    """A FLUX.2 folder whose BatchNorm never saw a batch carries no statistics: one line, or mean 0 / std 1."""
    torch.manual_seed(0)
    folder = tmp_path / "flux2-untrained"
    tiny("flux2").build().save_pretrained(folder)
    with pytest.raises(MissingWeightsError, match="carries no latent statistics"):
        Tokenizer.from_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="repae.tokenizer.tokenizer"):
        tok = Tokenizer.from_pretrained(folder, require_stats=False)
    assert tok.stats_source is None and "mean 0 / std 1" in caplog.text


def test_ldm_layout_file_loads_into_a_flux1_like_spec(tmp_path):
    """FLUX.1's original ae.safetensors is in the LDM layout without quant convs: it converts strictly."""
    from repae.interop.vae import diffusers_to_ldm
    from repae.utils.io import save_safetensors

    torch.manual_seed(0)
    spec = tiny("flux1")
    src = Tokenizer(spec)
    ldm = diffusers_to_ldm(src.vae.state_dict(), spec.ldm_geometry())
    assert not any("quant_conv" in k for k in ldm)
    save_safetensors(tmp_path / "ae.safetensors", ldm)
    dst = Tokenizer(spec)
    report = dst.load_vae_weights(tmp_path / "ae.safetensors")
    assert report.layout == "ldm"
    assert all(torch.equal(v, dst.vae.state_dict()[k]) for k, v in src.vae.state_dict().items())
    with pytest.raises(ConfigError, match="no LDM layout"):
        Tokenizer(tiny("qwenimage")).load_vae_weights(tmp_path / "ae.safetensors")


# ---------------------------------------------------------------- train (REPA-E), export, load in diffusers
TRAIN = [
    "data.source=embedded", "align.encoders=[repae-vit-t4]", "model.preset=SiT-T/1", "align.depth=2",
    "train.batch_size=4", "train.report_to=none", "train.log_every=1", "train.checkpoint_every=2",
    "train.sample_every=0", "train.diagnostics_every=0", "train.final_eval_samples=0", "train.html_report=false",
    "train.max_steps=2", "sample.num_images=2", "sample.num_steps=2", "tokenizer.stats_images=8",
    "train.mixed_precision=no", "train.channels_last=false", "lreg.disc_start=0",
    "model.check_width=false",  # SiT-T (64 wide) on the tiny FLUX.2's 128-channel tokens: RAE's width rule waived
]


def _compare_with_diffusers(tok: Tokenizer, out, name: str) -> float:
    """``diffusers.<Class>.from_pretrained(out)`` encodes and decodes as ``tok``; returns the max decode error."""
    import diffusers

    ref = getattr(diffusers, tok.class_name).from_pretrained(out).eval()
    tok.eval()
    x = images(2, 32, seed=1)
    frame = name == "qwenimage"
    with torch.no_grad():
        mode = ref.encode(x[:, :, None] if frame else x).latent_dist.mode()
        mode = mode[:, :, 0] if frame else mode
        if name == "flux2":
            mode = patchify(mode, 2, 2)
        assert torch.equal(tok.encode(x).mode(), mode)  # encoding: bit-identical
        z = tok.encode(x).mode()
        raw = unpatchify(z, 2, 2) if name == "flux2" else z
        dec = ref.decode(raw[:, :, None] if frame else raw).sample
        dec = dec[:, :, 0] if frame else dec
        mine = tok.decode(z)
        err = float((mine - dec).abs().max())
        assert err <= DECODE_ATOL
        set_folded_upsampling(tok.vae, False)  # diffusers' own upsampling: bit-identical
        assert torch.equal(tok.decode(z), dec)
        set_folded_upsampling(tok.vae, True)
    return err


def _pipeline_statistics(out, name: str, tok: Tokenizer):
    """What the family's pipelines read from the exported folder equals repae's tuned normaliser."""
    import diffusers

    cfg = json.loads((out / "config.json").read_text())
    mean, var = tok.normalizer.running_mean.double(), tok.normalizer.running_var.double()
    if name in ("flux1", "sd35"):  # FluxPipeline / StableDiffusion3Pipeline: (z - shift_factor) * scaling_factor
        assert cfg["latents_mean"] is None and cfg["latents_std"] is None
        pooled_mean = mean.mean()
        pooled_std = (var + (mean - pooled_mean) ** 2).mean().sqrt()
        assert cfg["shift_factor"] == pytest.approx(float(pooled_mean), rel=1e-6, abs=1e-9)
        assert cfg["scaling_factor"] == pytest.approx(1 / float(pooled_std), rel=1e-6)
    elif name == "flux2":  # Flux2Pipeline: (patchify(z) - bn.running_mean) / sqrt(bn.running_var + eps)
        ref = diffusers.AutoencoderKLFlux2.from_pretrained(out)
        assert torch.equal(ref.bn.running_mean, tok.normalizer.running_mean)
        assert torch.equal(ref.bn.running_var, tok.normalizer.running_var)
        assert ref.config.batch_norm_eps == tok.normalizer.eps
    else:  # QwenImagePipeline: (z - latents_mean) / latents_std
        assert cfg["latents_mean"] == tok.normalizer.running_mean.tolist()
        assert cfg["latents_std"] == tok.normalizer.running_var.sqrt().tolist()


@pytest.mark.parametrize("name", FAMILY_CASES)
def test_repae_steps_export_and_diffusers_round_trip(tmp_path, name):
    """tokenizer.preset=auto + tokenizer.weights=<diffusers folder> -> 2 REPA-E steps (VAE, SiT, discriminator
    updated) -> export-vae -> diffusers.<Class>.from_pretrained encodes and decodes as repae does."""
    from repae.cli import main
    from repae.training.trainer import Trainer

    folder, vae = save_random_folder(tmp_path, name)
    cfg = load_config("tiny-fmnist", [*TRAIN, f"train.output_dir={tmp_path / 'runs'}", "train.exp_name=e2e",
                                      "tokenizer.preset=auto", f"tokenizer.weights={folder}"])
    tr = Trainer(cfg, random_encoders=True)
    assert type(tr.tokenizer.vae) is type(vae) and tr.cfg.tokenizer.arch["_class_name"] == type(vae).__name__
    start = {k: v.clone() for k, v in tr.tokenizer.vae.state_dict().items()}
    stats0 = tr.tokenizer.normalizer.running_mean.clone()
    tr.fit()
    moved = [k for k, v in tr.tokenizer.vae.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("decoder.") for k in moved)
    assert not torch.equal(tr.tokenizer.normalizer.running_mean, stats0)  # the normaliser tracked the batches
    saved = json.loads((cfg.run_dir / "config.json").read_text())["tokenizer"]
    assert saved["preset"] == "auto" and saved["arch"]["_class_name"] == type(vae).__name__
    if name == "flux2":  # resuming re-resolves the folder's architecture: it equals the recorded one
        more = load_config("tiny-fmnist", [*TRAIN, f"train.output_dir={tmp_path / 'runs'}", "train.exp_name=e2e",
                                           "tokenizer.preset=auto", f"tokenizer.weights={folder}",
                                           "train.max_steps=3", "train.checkpoint_every=3"])
        again = Trainer(more, random_encoders=True)
        again.fit()  # resumes from step 2
        steps = [json.loads(x)["step"] for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert again.step == 3 and steps == [1, 2, 3]

    out = tmp_path / "exported"
    folder.rename(tmp_path / "moved-away")  # the recorded arch rebuilds the VAE without the source folder
    assert main(["export-vae", str(cfg.run_dir), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "latent_stats.json", "REPAE_EXPORT.md"} <= names
    assert json.loads((out / "config.json").read_text())["_class_name"] == type(vae).__name__
    note = (out / "REPAE_EXPORT.md").read_text()
    assert type(vae).__name__ in note and f"step {3 if name == 'flux2' else 2}" in note

    tok = Tokenizer.from_pretrained(out)  # bit-exact: latent_stats.json
    assert tok.stats_source.endswith("latent_stats.json")
    from repae.training.checkpoint import read_checkpoint

    models, _, _ = read_checkpoint(cfg.run_dir)
    assert all(torch.equal(v, models["vae"][k]) for k, v in tok.vae.state_dict().items()
               if not k.startswith("bn."))  # FLUX.2's bn buffers now hold the tuned statistics
    assert torch.equal(tok.normalizer.running_var, models["ema.normalizer"]["running_var"])
    err = _compare_with_diffusers(tok, out, name)
    print(f"{name}: max |repae decode - diffusers decode| = {err:.3g}")
    _pipeline_statistics(out, name, tok)


def test_preflight_checks_named_presets_against_folders(tmp_path):
    from repae.training.preflight import check_tokenizer_weights

    folder, _ = save_random_folder(tmp_path, "flux1", levels=2)
    cfg = load_config("tiny-fmnist", ["tokenizer.preset=flux1", f"tokenizer.weights={folder}"])
    with pytest.raises(ConfigError, match="not a 'flux1' VAE.*block_out_channels.*tokenizer.preset=auto"):
        check_tokenizer_weights(cfg)
    cfg = load_config("tiny-fmnist", [f"tokenizer.weights={folder}"])  # preset tiny-f4d4 (LDM) vs FLUX-like
    with pytest.raises(ConfigError, match="not the LDM design vs the LDM design"):
        check_tokenizer_weights(cfg)
    cfg = load_config("tiny-fmnist", ["tokenizer.preset=auto"])
    with pytest.raises(ConfigError, match="tokenizer.preset=auto takes the architecture"):
        check_tokenizer_weights(cfg)
    cfg = load_config("tiny-fmnist", ["tokenizer.preset=auto", f"tokenizer.weights={folder}"])
    check_tokenizer_weights(cfg)


def test_qwen_has_no_gradient_checkpointing(tmp_path):
    from repae.training.builders import validate_config

    folder, _ = save_random_folder(tmp_path, "qwenimage")
    cfg = load_config("tiny-fmnist", ["tokenizer.preset=auto", f"tokenizer.weights={folder}",
                                      "train.vae_checkpointing=true"])
    with pytest.raises(ConfigError, match="AutoencoderKLQwenImage has no gradient checkpointing"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------- Hugging Face hub ids
def fake_hub_cache(tmp_path, monkeypatch, repo: str, folder) -> None:
    """A huggingface_hub cache in ``tmp_path`` holding ``folder``'s files as repository ``repo`` (revision main)."""
    import shutil

    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(folder, entry / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_id_resolves_through_the_local_cache(tmp_path, monkeypatch):
    from repae.cli.common import load_tokenizer
    from repae.tokenizer.registry import resolve_tokenizer_weights
    from repae.training.preflight import check_tokenizer_weights

    folder, vae = save_random_folder(tmp_path, "flux1")
    fake_hub_cache(tmp_path, monkeypatch, "REPA-E/e2e-flux-vae", folder)
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    snapshot = resolve_tokenizer_weights("REPA-E/e2e-flux-vae")
    assert str(snapshot).startswith(str(tmp_path / "hf-cache")) and (snapshot / "config.json").is_file()
    tok = load_tokenizer("REPA-E/e2e-flux-vae")
    assert type(tok.vae) is type(vae) and all(torch.equal(v, tok.vae.state_dict()[k])
                                               for k, v in vae.state_dict().items())
    assert Tokenizer.from_pretrained("REPA-E/e2e-flux-vae").stats_source.endswith("scaling_factor=0.3611 "
                                                                                  "(mean shift_factor, std "
                                                                                  "1/scaling_factor, every channel)")
    cfg = load_config("tiny-fmnist", ["tokenizer.preset=auto", "tokenizer.weights=REPA-E/e2e-flux-vae"])
    check_tokenizer_weights(cfg)
    from repae.training.builders import resolve_config

    assert resolve_config(cfg).tokenizer.arch["_class_name"] == "AutoencoderKL"
    # a local path of the same shape wins over the hub
    (tmp_path / "REPA-E" / "e2e-flux-vae").mkdir(parents=True)
    assert resolve_tokenizer_weights("REPA-E/e2e-flux-vae") == "REPA-E/e2e-flux-vae"


def test_uncached_hub_id_is_one_line_naming_id_and_files(tmp_path, monkeypatch):
    from repae.cli.common import load_tokenizer
    from repae.training.preflight import check_tokenizer_weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # cache-only whatever HF_HUB_OFFLINE says
    monkeypatch.chdir(tmp_path)
    for call in (lambda: load_tokenizer("REPA-E/e2e-qwenimage-vae"),
                 lambda: check_tokenizer_weights(load_config("tiny-fmnist", [
                     "tokenizer.preset=auto", "tokenizer.weights=REPA-E/e2e-qwenimage-vae"])),
                 lambda: Tokenizer(tiny("qwenimage")).load_vae_weights("REPA-E/e2e-qwenimage-vae"),
                 lambda: Tokenizer.from_pretrained("REPA-E/e2e-qwenimage-vae")):
        with pytest.raises(MissingWeightsError) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and "REPA-E/e2e-qwenimage-vae" in text and str(tmp_path / "empty-cache") in text
        assert "config.json and diffusion_pytorch_model.safetensors" in text and "never downloads" in text


def test_encoder_hub_id_resolves_through_the_local_cache(tmp_path, monkeypatch):
    """--encoder-weights / align.encoder_weights take a hub id too (issue 22 item 6): the cached
    snapshot's model.safetensors loads exactly as the same file given by path."""
    from repae.encoders import load_encoder
    from repae.encoders.registry import repae_vit_t4_default_path

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(repae_vit_t4_default_path().read_bytes())
    (folder / "config.json").write_text("{}")
    fake_hub_cache(tmp_path, monkeypatch, "someone/repae-vit-t4", folder)
    monkeypatch.chdir(tmp_path)
    enc = load_encoder("repae-vit-t4", weights="someone/repae-vit-t4", resolution=32)
    assert enc.load_report.path.startswith(str(tmp_path / "hf-cache")) and enc.load_report.path.endswith(
        "model.safetensors")
    ref = load_encoder("repae-vit-t4", resolution=32)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(enc(x), ref(x))


def test_encoder_hub_id_missing_or_without_weights_is_one_line(tmp_path, monkeypatch):
    from repae.encoders import load_encoder

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        load_encoder("dinov2-vit-b", weights="timm/vit_base_patch14_dinov2.lvd142m")
    text = str(err.value)
    assert "\n" not in text and "timm/vit_base_patch14_dinov2.lvd142m" in text and "never downloads" in text
    assert "model.safetensors or pytorch_model.bin" in text and str(tmp_path / "empty-cache") in text
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("no weights")
    fake_hub_cache(tmp_path, monkeypatch, "someone/empty", folder)
    with pytest.raises(MissingWeightsError) as err:
        load_encoder("repae-vit-t4", weights="someone/empty", resolution=32)
    text = str(err.value)
    assert "\n" not in text and "holds none of model.safetensors" in text and "README.md" in text
