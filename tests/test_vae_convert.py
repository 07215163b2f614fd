"""LDM <-> diffusers VAE layout conversion and the strict weight loader (spec 11.27)."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from repae.errors import ConfigError, MissingWeightsError
from repae.tokenizer import (
    VAE_PRESETS,
    KeyLayoutError,
    Tokenizer,
    build_vae,
    detect_layout,
    diffusers_to_ldm,
    ldm_to_diffusers,
)
from repae.tokenizer.convert import key_map


def _meta_state_dict(name):
    with torch.device("meta"):
        return build_vae(VAE_PRESETS[name]).state_dict()


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_vae(VAE_PRESETS["tiny-f8d4"]).state_dict().items()}


@pytest.mark.parametrize("name", list(VAE_PRESETS))
def test_key_map_covers_the_diffusers_model_exactly(name):
    sd = _meta_state_dict(name)
    pairs = key_map(VAE_PRESETS[name])
    assert {b for _, b, _ in pairs} == set(sd)
    assert len({a for a, _, _ in pairs}) == len(pairs) == len(sd)  # one-to-one
    assert all(sd[b].dim() == 2 for _, b, lin in pairs if lin)


@pytest.mark.parametrize("name", list(VAE_PRESETS))
def test_real_key_sets_round_trip_on_meta(name):
    sd = _meta_state_dict(name)
    ldm = diffusers_to_ldm(sd, VAE_PRESETS[name])
    assert detect_layout(ldm) == "ldm" and detect_layout(sd) == "diffusers"
    back = ldm_to_diffusers(ldm, VAE_PRESETS[name])
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in sd.items()}


def test_f8d4_ldm_keys_are_the_sd_kl_f8_layout():
    ldm = diffusers_to_ldm(_meta_state_dict("f8d4"), VAE_PRESETS["f8d4"])
    assert len(ldm) == 248  # Stable Diffusion first_stage_model tensor count
    expect = {
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.block.1.conv2.weight": (512, 512, 3, 3),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.block_2.norm1.bias": (512,),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),  # lowest resolution = LDM index 3
        "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
    }
    assert {k: tuple(ldm[k].shape) for k in expect} == expect
    assert not any(k.startswith("decoder.up.0.upsample") or k.startswith("encoder.down.3.downsample") for k in ldm)


def test_f16d32_level_attention_keys():
    ldm = diffusers_to_ldm(_meta_state_dict("f16d32"), VAE_PRESETS["f16d32"])
    enc_attn = sorted({k.rsplit(".", 2)[0] for k in ldm if ".attn." in k and k.startswith("encoder")})
    dec_attn = sorted({k.rsplit(".", 2)[0] for k in ldm if ".attn." in k and k.startswith("decoder")})
    assert enc_attn == ["encoder.down.4.attn.0", "encoder.down.4.attn.1"]
    assert dec_attn == ["decoder.up.4.attn.0", "decoder.up.4.attn.1", "decoder.up.4.attn.2"]
    assert tuple(ldm["decoder.up.4.attn.2.proj_out.weight"].shape) == (512, 512, 1, 1)
    assert tuple(ldm["encoder.conv_out.weight"].shape) == (64, 512, 3, 3)


def test_round_trip_random_weights_bit_exact(tiny_sd):
    cfg = VAE_PRESETS["tiny-f8d4"]
    ldm = diffusers_to_ldm(tiny_sd, cfg)
    assert ldm["encoder.down.3.attn.0.q.weight"].dim() == 4
    back = ldm_to_diffusers(ldm, cfg)
    assert set(back) == set(tiny_sd) and all(torch.equal(back[k], tiny_sd[k]) for k in tiny_sd)


@pytest.mark.parametrize("name", ["tiny-f4d4", "f8d4"])
def test_agrees_with_diffusers_own_ldm_converter(name):
    """Independent oracle: diffusers' single-file converter (handles mid attention only)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    torch.manual_seed(1)
    with torch.device("meta" if name == "f8d4" else "cpu"):
        model = build_vae(VAE_PRESETS[name])
    sd = model.state_dict()
    theirs = convert_ldm_vae_checkpoint(dict(diffusers_to_ldm(sd, VAE_PRESETS[name])), dict(model.config))
    assert set(theirs) == set(sd)
    for k, v in theirs.items():
        assert v.reshape(sd[k].shape).shape == sd[k].shape
        if name != "f8d4":
            assert torch.equal(v.reshape(sd[k].shape), sd[k]), k


def test_strict_conversion_errors(tiny_sd):
    cfg = VAE_PRESETS["tiny-f8d4"]
    ldm = diffusers_to_ldm(tiny_sd, cfg)
    short = dict(ldm)
    short.pop("encoder.mid.attn_1.k.bias")
    with pytest.raises(KeyLayoutError, match=r"1 missing key\(s\) 'encoder.mid.attn_1.k.bias'"):
        ldm_to_diffusers(short, cfg)
    with pytest.raises(KeyLayoutError, match="1 unexpected key.*'encoder.extra.weight'"):
        ldm_to_diffusers({**ldm, "encoder.extra.weight": torch.zeros(1)}, cfg)
    with pytest.raises(KeyLayoutError, match="missing"):  # f4 weights into an f8 geometry
        ldm_to_diffusers(diffusers_to_ldm(build_vae(VAE_PRESETS["tiny-f4d4"]).state_dict(),
                                          VAE_PRESETS["tiny-f4d4"]), cfg)
    with pytest.raises(KeyLayoutError, match="not a VAE state dict"):
        detect_layout({"blocks.0.weight": torch.zeros(1)})
    assert issubclass(KeyLayoutError, ConfigError)


# ------------------------------------------------------------------------------ loaders
def _assert_loaded(tok: Tokenizer, sd: dict):
    own = tok.vae.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], sd[k]) for k in sd)


def test_load_diffusers_folder_written_by_diffusers(tmp_path, tiny_sd):
    model = build_vae(VAE_PRESETS["tiny-f8d4"])
    model.load_state_dict(tiny_sd)
    model.save_pretrained(tmp_path / "vae")  # diffusers' own writer
    tok = Tokenizer.from_preset("tiny-f8d4")
    report = tok.load_vae_weights(tmp_path / "vae")
    assert report.layout == "diffusers" and report.num_loaded == len(tiny_sd) == 210
    _assert_loaded(tok, tiny_sd)
    # a whole pipeline folder with the VAE under vae/
    tok2 = Tokenizer.from_preset("tiny-f8d4", weights=tmp_path)
    _assert_loaded(tok2, tiny_sd)


def test_load_ldm_pt_with_state_dict_and_sd_prefix(tmp_path, tiny_sd):
    ldm = diffusers_to_ldm(tiny_sd, VAE_PRESETS["tiny-f8d4"])
    ckpt = {
        "state_dict": {
            **{f"first_stage_model.{k}": v for k, v in ldm.items()},
            "model.diffusion_model.out.weight": torch.zeros(3),  # the rest of an SD checkpoint
            "cond_stage_model.proj": torch.zeros(2),
        },
        "global_step": 10,
    }
    torch.save(ckpt, tmp_path / "sd.ckpt")
    tok = Tokenizer.from_preset("tiny-f8d4")
    report = tok.load_vae_weights(tmp_path / "sd.ckpt")
    assert report.layout == "ldm" and report.num_loaded == len(tiny_sd)
    _assert_loaded(tok, tiny_sd)


def test_load_repae_style_checkpoint_and_ldm_loss_keys(tmp_path, tiny_sd):
    ldm = diffusers_to_ldm(tiny_sd, VAE_PRESETS["tiny-f8d4"])
    full = {"model": {"x_embedder.weight": torch.zeros(2)}, "vae": dict(ldm), "args": argparse.Namespace(a=1)}
    torch.save(full, tmp_path / "0400000.pt")
    tok = Tokenizer.from_preset("tiny-f8d4", weights=tmp_path / "0400000.pt")
    _assert_loaded(tok, tiny_sd)
    torch.save({"state_dict": {**ldm, "loss.discriminator.main.0.weight": torch.zeros(2)}}, tmp_path / "kl.ckpt")
    report = Tokenizer.from_preset("tiny-f8d4").load_vae_weights(tmp_path / "kl.ckpt")
    assert report.num_dropped == 1 and "ignored 1" in str(report)


def test_load_safetensors_both_layouts_and_bin(tmp_path, tiny_sd):
    ldm = diffusers_to_ldm(tiny_sd, VAE_PRESETS["tiny-f8d4"])
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "ldm.safetensors"))
    save_file(tiny_sd, str(tmp_path / "dif.safetensors"))
    torch.save(tiny_sd, tmp_path / "dif.bin")
    for name in ("ldm.safetensors", "dif.safetensors", "dif.bin"):
        tok = Tokenizer.from_preset("tiny-f8d4")
        tok.load_vae_weights(tmp_path / name)
        _assert_loaded(tok, tiny_sd)


def test_legacy_diffusers_attention_names(tmp_path, tiny_sd):
    legacy = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in tiny_sd.items()}
    assert any(".query." in k for k in legacy)
    torch.save(legacy, tmp_path / "old.bin")
    tok = Tokenizer.from_preset("tiny-f8d4", weights=tmp_path / "old.bin")
    _assert_loaded(tok, tiny_sd)


def test_loader_errors(tmp_path, tiny_sd):
    with pytest.raises(MissingWeightsError, match="never downloaded"):
        Tokenizer.from_preset("tiny-f8d4", weights=tmp_path / "nope.pt")
    with pytest.raises(MissingWeightsError):
        Tokenizer.from_preset("tiny-f8d4", weights=tmp_path)  # empty folder
    torch.save(tiny_sd, tmp_path / "f8.pt")
    with pytest.raises(ConfigError, match=r"missing .*unexpected"):  # wrong preset: f8 weights into f4
        Tokenizer.from_preset("tiny-f4d4", weights=tmp_path / "f8.pt")
    wrong = dict(tiny_sd)
    wrong["quant_conv.bias"] = torch.zeros(5)
    torch.save(wrong, tmp_path / "bad_shape.pt")
    with pytest.raises(ConfigError, match="wrong shape"):
        Tokenizer.from_preset("tiny-f8d4", weights=tmp_path / "bad_shape.pt")
