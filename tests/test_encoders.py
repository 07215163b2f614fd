"""Tests for repae.encoders: registry contract, real loaders on shape-faithful fakes, pixels.

Fakes are written by hand in each family's *official* key layout (not produced by timm), saved
to a tmp dir, and read back through the production loader. Towers are shrunk with
``arch_overrides`` (depth, and width for the ViT-L/H families) to keep the file fast.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from repae.conventions import uint8_to_unit
from repae.encoders import (
    ENCODERS,
    available_encoders,
    build_encoder,
    encoder_spec,
    load_encoder,
    load_encoders,
    preprocess_pixels,
    registry,
    repae_vit_t4_model,
)
from repae.encoders.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from repae.encoders.checkpoints import convert_mocov3
from repae.errors import ConfigError, MissingWeightsError
from repae.utils.io import save_safetensors

GEN = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=GEN)


def images(b=1, res=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, res, res), generator=g, dtype=torch.uint8)


def vit_layout(dim, depth, patch, pos_len, *, cls=True, layerscale=False, patch_bias=True):
    """Official ViT key layout shared by DINOv2 (Meta), DINO, MAE, MoCo-v3 and I-JEPA."""
    sd = {"pos_embed": rnd(1, pos_len, dim), "patch_embed.proj.weight": rnd(dim, 3, patch, patch)}
    if cls:
        sd["cls_token"] = rnd(1, 1, dim)
    if patch_bias:
        sd["patch_embed.proj.bias"] = rnd(dim)
    for i in range(depth):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[b + n + ".weight"], sd[b + n + ".bias"] = rnd(dim), rnd(dim)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = rnd(3 * dim, dim), rnd(3 * dim)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = rnd(dim, dim), rnd(dim)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = rnd(4 * dim, dim), rnd(4 * dim)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = rnd(dim, 4 * dim), rnd(dim)
        if layerscale:
            sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = rnd(dim), rnd(dim)
    sd["norm.weight"], sd["norm.bias"] = rnd(dim), rnd(dim)
    return sd


def assert_loaded(enc, expected: dict, *, tokens: int = 256):
    """Every expected tensor landed unchanged; the load was complete; output shape is right."""
    state = enc.model.state_dict()
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    assert enc.load_report.num_tensors == len(state)
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(images())
    assert out.shape == (1, tokens, enc.embed_dim)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    return out


def grid_resample(pos, prefix, size=16):
    return resample_abs_pos_embed(pos, new_size=[size, size], num_prefix_tokens=prefix)


# ---------------------------------------------------------------------------------------------
# Contract over every registry entry
# ---------------------------------------------------------------------------------------------

EXPECTED_DIMS = {
    "dinov2-vit-s": 384, "dinov2-vit-b": 768, "dinov2-vit-l": 1024, "dinov2-vit-g": 1536,
    "dinov1-vit-b": 768, "mocov3-vit-s": 384, "mocov3-vit-b": 768, "mocov3-vit-l": 1024,
    "clip-vit-L": 1024, "mae-vit-l": 1024, "jepa-vit-h": 1280, "random": 64, "repae-vit-t4": 192,
    "repae-cnn-p4": 512,
}  # fmt: skip


@pytest.mark.parametrize("name", available_encoders())
def test_contract_every_entry(name):
    spec = encoder_spec(name)
    assert spec.embed_dim == EXPECTED_DIMS[name.replace("-reg", "")]
    tokens = 64 if name.startswith("repae-") else 256
    assert spec.num_tokens(256) == tokens
    # shallow build on meta (ViTs: one block): width, patch size and token count come from the real config
    enc = build_encoder(name, device="meta", arch_overrides=None if name == "repae-cnn-p4" else {"depth": 1})
    assert (enc.name, enc.embed_dim, enc.patch_size) == (spec.name, spec.embed_dim, spec.patch_size)
    assert enc.num_tokens() == tokens
    out = enc(torch.empty(2, 3, 256, 256, dtype=torch.uint8, device="meta"))
    assert out.shape == (2, tokens, spec.embed_dim)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert enc.train().training is False  # stays frozen even when a parent calls .train()


def test_full_size_architectures_on_meta():
    """Real depth/width: parameter counts of the towers (no pos-embed/cls) match the papers."""
    def blocks_params(name):
        enc = build_encoder(name, device="meta")
        return sum(p.numel() for k, p in enc.model.named_parameters() if k.startswith("blocks."))

    # 12 * D^2 (+ biases, norms, layer-scale) per block
    assert blocks_params("dinov2-vit-b") == 12 * (12 * 768**2 + 9 * 768 + 4 * 768 + 2 * 768)  # biases, 2 LN, 2 LayerScale
    assert blocks_params("jepa-vit-h") == 32 * (12 * 1280**2 + 9 * 1280 + 4 * 1280)
    enc = build_encoder("dinov2-vit-g-reg", device="meta")
    assert enc.model.num_prefix_tokens == 5 and len(enc.model.blocks) == 40
    assert build_encoder("mocov3-vit-s", device="meta").model.blocks[0].attn.num_heads == 12


def test_resolution_rules():
    assert encoder_spec("dinov2-vit-b").num_tokens(512) == 1024
    assert build_encoder("dinov2-vit-b", resolution=512, device="meta", arch_overrides={"depth": 1}).input_resolution == 448
    with pytest.raises(ConfigError, match="supports resolution 256"):
        build_encoder("mocov3-vit-b", resolution=512, device="meta")


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError) as err:
        encoder_spec("dinov3-vit-b")
    assert "dinov2-vit-b" in str(err.value) and "repae-vit-t4" in str(err.value)
    assert encoder_spec("CLIP-VIT-L").name == "clip-vit-L"


# ---------------------------------------------------------------------------------------------
# Real loaders on fakes, one per family and format
# ---------------------------------------------------------------------------------------------

SMALL = {"depth": 2}
NARROW = {"depth": 2, "embed_dim": 128}  # ViT-L/H families: same key layout, tiny width


def test_dinov2_meta_format(tmp_path):
    sd = vit_layout(384, 2, 14, 1 + 37 * 37, layerscale=True)
    sd["mask_token"] = rnd(1, 384)
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    enc = load_encoder("dinov2-vit-s", weights=tmp_path / "dinov2_vits14_pretrain.pth", arch_overrides=SMALL)
    assert enc.load_report.format == "meta"
    expected = {k: v for k, v in sd.items() if k not in ("pos_embed", "mask_token")}
    expected["pos_embed"] = grid_resample(sd["pos_embed"], 1)  # 37x37 -> 16x16, CLS kept
    assert_loaded(enc, expected)


def test_dinov2_vit_s_full_size_meta_format(tmp_path):
    """The real ViT-S/14 (12 blocks, 22M parameters) through the production path, no overrides."""
    sd = vit_layout(384, 12, 14, 1 + 37 * 37, layerscale=True)
    sd["mask_token"] = rnd(1, 384)
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    enc = load_encoder("dinov2-vit-s", weights=tmp_path / "dinov2_vits14_pretrain.pth")
    assert enc.load_report.num_tensors == len(sd) - 1  # everything but mask_token
    assert_loaded(enc, {"blocks.11.ls2.gamma": sd["blocks.11.ls2.gamma"], "norm.bias": sd["norm.bias"]})


def test_dinov2_reg_meta_format(tmp_path):
    sd = vit_layout(384, 2, 14, 1 + 37 * 37, layerscale=True)
    sd["mask_token"], sd["register_tokens"] = rnd(1, 384), rnd(1, 4, 384)
    torch.save(sd, tmp_path / "reg.pth")
    enc = load_encoder("dinov2-vit-s-reg", weights=str(tmp_path / "reg.pth"), arch_overrides=SMALL)
    # registers carry no pos-embed; the CLS pos-embed is folded into the CLS token (same forward)
    assert torch.equal(enc.model.reg_token, sd["register_tokens"])
    assert torch.equal(enc.model.cls_token, sd["cls_token"] + sd["pos_embed"][:, :1])
    grid = resample_abs_pos_embed(sd["pos_embed"][:, 1:], new_size=[16, 16], num_prefix_tokens=0)
    assert_loaded(enc, {"pos_embed": grid, "blocks.1.ls2.gamma": sd["blocks.1.ls2.gamma"]})


def test_dinov2_hf_folder_and_timm_roundtrip(tmp_path):
    dim, depth = 384, 2
    meta = vit_layout(dim, depth, 14, 1 + 37 * 37, layerscale=True)
    hf = {
        "embeddings.cls_token": meta["cls_token"],
        "embeddings.mask_token": rnd(1, dim),
        "embeddings.position_embeddings": meta["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": meta["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": meta["patch_embed.proj.bias"],
        "layernorm.weight": meta["norm.weight"],
        "layernorm.bias": meta["norm.bias"],
    }
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = meta[b + "attn.qkv." + kind].chunk(3, 0)
            hf[h + f"attention.attention.query.{kind}"] = q.clone()
            hf[h + f"attention.attention.key.{kind}"] = k.clone()
            hf[h + f"attention.attention.value.{kind}"] = v.clone()
            hf[h + f"attention.output.dense.{kind}"] = meta[b + "attn.proj." + kind]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hf[h + f"{n}.{kind}"] = meta[b + f"{n}.{kind}"]
        hf[h + "layer_scale1.lambda1"], hf[h + "layer_scale2.lambda1"] = meta[b + "ls1.gamma"], meta[b + "ls2.gamma"]
    folder = tmp_path / "dinov2-small"
    folder.mkdir()
    save_file(hf, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2", "hidden_size": dim}))
    enc = load_encoder("dinov2-vit-s", weights=folder, arch_overrides=SMALL)
    assert enc.load_report.format == "hf"
    expected = {k: v for k, v in meta.items() if k != "pos_embed"}
    expected["pos_embed"] = grid_resample(meta["pos_embed"], 1)
    out = assert_loaded(enc, expected)

    # timm format (what we would export): safetensors round trip is bit-identical
    save_safetensors(tmp_path / "timm.safetensors", enc.model.state_dict())
    enc2 = load_encoder("dinov2-vit-s", weights=tmp_path / "timm.safetensors", arch_overrides=SMALL)
    assert enc2.load_report.format == "timm"
    assert torch.equal(enc2(images()), out)


def test_dinov2_giant_swiglu_and_hf_register_names():
    """Giant's packed SwiGLU (Meta w12/w3, HF weights_in/weights_out) maps onto timm fc1/fc2."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from repae.encoders.checkpoints import hf_dinov2_to_meta

    hf = {
        "embeddings.register_tokens": torch.zeros(1, 4, 8),
        "embeddings.mask_token": torch.zeros(1, 8),
        "encoder.layer.3.mlp.weights_in.weight": torch.zeros(2),
        "encoder.layer.3.mlp.weights_out.bias": torch.zeros(2),
    }
    meta = hf_dinov2_to_meta(hf, {})
    assert set(meta) == {"register_tokens", "mask_token", "blocks.3.mlp.w12.weight", "blocks.3.mlp.w3.bias"}
    enc = build_encoder("dinov2-vit-g", device="meta", arch_overrides={"depth": 1})
    # shapes of the released ViT-g/14: w12 [8192, 1536], w3 [1536, 4096]
    assert enc.model.blocks[0].mlp.fc1.weight.shape == (8192, 1536)
    assert enc.model.blocks[0].mlp.fc2.weight.shape == (1536, 4096)
    fake = {"mask_token": torch.zeros(1, 1536), "blocks.0.mlp.w12.weight": torch.zeros(8192, 1536)}
    assert "blocks.0.mlp.fc1.weight" in checkpoint_filter_fn(fake, enc.model)


def test_mocov3_official_format(tmp_path):
    base = vit_layout(384, 2, 16, 1 + 14 * 14)  # released at 224 -> resampled to 16x16 for 256
    ckpt = {f"module.base_encoder.{k}": v for k, v in base.items()}
    ckpt["module.base_encoder.head.0.weight"] = rnd(4096, 384)  # projection MLP: dropped
    ckpt["module.predictor.0.weight"] = rnd(4096, 256)  # other sub-networks: ignored
    ckpt["module.momentum_encoder.cls_token"] = rnd(1, 1, 384)
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": ckpt}, tmp_path / "mocov3_vits.pth")
    enc = load_encoder("mocov3-vit-s", weights=tmp_path / "mocov3_vits.pth", arch_overrides=SMALL)
    assert enc.load_report.format == "mocov3" and enc.input_resolution == 256
    expected = {k: v for k, v in base.items() if k != "pos_embed"}
    expected["pos_embed"] = grid_resample(base["pos_embed"], 1)
    assert_loaded(enc, expected)


def test_mocov3_block_name_repair():
    sd = {
        "module.base_encoder.blocks.13.norm13.weight": torch.ones(1),
        "module.base_encoder.blocks.13.mlp.fc13.bias": torch.ones(1),
        "module.base_encoder.blocks.14.norm14.bias": torch.ones(1),
        "module.base_encoder.blocks.14.mlp.fc14.weight": torch.ones(1),
        "module.base_encoder.blocks.13.attn.qkv.weight": torch.ones(1),
    }
    out, fmt = convert_mocov3(sd, {})
    assert fmt == "mocov3"
    assert set(out) == {
        "blocks.13.norm1.weight", "blocks.13.mlp.fc1.bias", "blocks.14.norm2.bias",
        "blocks.14.mlp.fc2.weight", "blocks.13.attn.qkv.weight",
    }  # fmt: skip


def test_dinov1_backbone_and_teacher_formats(tmp_path):
    sd = vit_layout(768, 2, 16, 1 + 14 * 14)
    torch.save(sd, tmp_path / "dino_vitbase16_pretrain.pth")
    enc = load_encoder("dinov1-vit-b", weights=tmp_path / "dino_vitbase16_pretrain.pth", arch_overrides=SMALL)
    expected = {k: v for k, v in sd.items() if k != "pos_embed"}
    expected["pos_embed"] = grid_resample(sd["pos_embed"], 1)
    out = assert_loaded(enc, expected)
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["head.mlp.0.weight"] = rnd(8, 768)
    torch.save({"teacher": teacher, "student": {}, "epoch": 1}, tmp_path / "checkpoint.pth")
    enc2 = load_encoder("dinov1-vit-b", weights=tmp_path / "checkpoint.pth", arch_overrides=SMALL)
    assert enc2.load_report.format == "dino"
    assert torch.equal(enc2(images()), out)


def test_mae_official_format_has_no_final_norm(tmp_path):
    dim = NARROW["embed_dim"]
    sd = vit_layout(dim, 2, 16, 1 + 14 * 14)
    full = dict(sd, mask_token=rnd(1, 1, 64), decoder_embed_weight=rnd(64, dim))
    full["decoder_blocks.0.norm1.weight"], full["decoder_norm.weight"] = rnd(64), rnd(64)
    full = {k.replace("decoder_embed_weight", "decoder_embed.weight"): v for k, v in full.items()}
    torch.save({"model": full}, tmp_path / "mae_vitl.pth")
    enc = load_encoder("mae-vit-l", weights=tmp_path / "mae_vitl.pth", arch_overrides=NARROW)
    assert enc.load_report.format == "mae"
    assert "norm.weight" in enc.load_report.dropped and "mask_token" in enc.load_report.dropped
    assert isinstance(enc.model.norm, torch.nn.Identity)  # tokens after the blocks, no final norm
    expected = {k: v for k, v in sd.items() if not k.startswith(("pos_embed", "norm."))}
    expected["pos_embed"] = grid_resample(sd["pos_embed"], 1)
    assert_loaded(enc, expected)


def test_jepa_official_format(tmp_path):
    dim = NARROW["embed_dim"]
    sd = vit_layout(dim, 2, 14, 16 * 16, cls=False)  # no CLS token, 224/14 = 16x16 grid
    ckpt = {"encoder": {f"module.{k}": v for k, v in sd.items()}, "predictor": {"module.x": rnd(2)}, "epoch": 300}
    torch.save(ckpt, tmp_path / "ijepa_vith.pth")
    enc = load_encoder("jepa-vit-h", weights=tmp_path / "ijepa_vith.pth", arch_overrides=NARROW)
    assert enc.load_report.format == "ijepa" and enc.model.num_prefix_tokens == 0
    assert not isinstance(enc.model.norm, torch.nn.Identity)  # all tokens after final LN
    assert_loaded(enc, sd)


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _save_torchscript(flat: dict, path):
    """Save ``flat`` as a TorchScript archive with the same parameter names (like OpenAI's .pt)."""
    root = _Holder()
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, _Holder())
            mod = getattr(mod, p)
        mod.register_parameter(leaf, torch.nn.Parameter(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.script(root).save(str(path))


@pytest.mark.parametrize("torchscript", [False, True])
def test_clip_openai_format(tmp_path, torchscript):
    dim, depth = NARROW["embed_dim"], NARROW["depth"]
    v = {
        "visual.conv1.weight": rnd(dim, 3, 14, 14),  # no bias in CLIP's patch conv
        "visual.class_embedding": rnd(dim),
        "visual.positional_embedding": rnd(1 + 16 * 16, dim),
        "visual.ln_pre.weight": rnd(dim), "visual.ln_pre.bias": rnd(dim),
        "visual.ln_post.weight": rnd(dim), "visual.ln_post.bias": rnd(dim),
        "visual.proj": rnd(dim, 768),
    }  # fmt: skip
    for i in range(depth):
        r = f"visual.transformer.resblocks.{i}."
        v[r + "attn.in_proj_weight"], v[r + "attn.in_proj_bias"] = rnd(3 * dim, dim), rnd(3 * dim)
        v[r + "attn.out_proj.weight"], v[r + "attn.out_proj.bias"] = rnd(dim, dim), rnd(dim)
        for n in ("ln_1", "ln_2"):
            v[r + n + ".weight"], v[r + n + ".bias"] = rnd(dim), rnd(dim)
        v[r + "mlp.c_fc.weight"], v[r + "mlp.c_fc.bias"] = rnd(4 * dim, dim), rnd(4 * dim)
        v[r + "mlp.c_proj.weight"], v[r + "mlp.c_proj.bias"] = rnd(dim, 4 * dim), rnd(dim)
    text = {"token_embedding.weight": rnd(10, 8), "positional_embedding": rnd(77, 8), "logit_scale": rnd(())}
    if torchscript:
        _save_torchscript({**v, **text}, tmp_path / "ViT-L-14.pt")
    else:
        torch.save({**v, **text}, tmp_path / "ViT-L-14.pt")
    enc = load_encoder("clip-vit-L", weights=tmp_path / "ViT-L-14.pt", arch_overrides=NARROW)
    assert enc.load_report.format == "openai"
    assert {"norm.weight", "head.weight"} <= set(enc.load_report.dropped)  # ln_post and proj unused
    assert isinstance(enc.model.norm, torch.nn.Identity)
    expected = {
        "patch_embed.proj.weight": v["visual.conv1.weight"],
        "cls_token": v["visual.class_embedding"].view(1, 1, dim),
        "pos_embed": v["visual.positional_embedding"][None],
        "norm_pre.weight": v["visual.ln_pre.weight"],
        "blocks.1.attn.qkv.weight": v["visual.transformer.resblocks.1.attn.in_proj_weight"],
        "blocks.1.mlp.fc2.bias": v["visual.transformer.resblocks.1.mlp.c_proj.bias"],
    }
    assert_loaded(enc, expected)


def test_wrong_size_checkpoint_is_a_config_error(tmp_path):
    sd = vit_layout(384, 2, 14, 1 + 37 * 37, layerscale=True)
    sd["mask_token"] = rnd(1, 384)
    torch.save(sd, tmp_path / "s.pth")
    with pytest.raises(ConfigError) as err:
        load_encoder("dinov2-vit-b", weights=tmp_path / "s.pth", arch_overrides=SMALL)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Weights-path resolution
# ---------------------------------------------------------------------------------------------


def test_missing_weights_one_line_message(monkeypatch):
    monkeypatch.delenv("REPAE_DINOV2_VIT_B_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as err:
        load_encoder("dinov2-vit-b")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("dinov2_vitb14_pretrain.pth", "--encoder-weights", "REPAE_DINOV2_VIT_B_WEIGHTS"):
        assert part in msg
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_encoder("dinov2-vit-b", weights="/nonexistent/x.pth")


def test_env_var_supplies_weights(tmp_path, monkeypatch):
    sd = vit_layout(384, 2, 16, 1 + 16 * 16)
    torch.save({"state_dict": {f"module.base_encoder.{k}": v for k, v in sd.items()}}, tmp_path / "m.pth")
    monkeypatch.setenv("REPAE_MOCOV3_VIT_S_WEIGHTS", str(tmp_path / "m.pth"))
    enc = load_encoder("mocov3-vit-s", arch_overrides=SMALL)
    assert enc.load_report.path == str(tmp_path / "m.pth")
    assert torch.equal(enc.model.pos_embed, sd["pos_embed"])  # already 16x16: untouched


# ---------------------------------------------------------------------------------------------
# repae-vit-t4 and random
# ---------------------------------------------------------------------------------------------


def _t4_without_default(monkeypatch, path):
    spec = dataclasses.replace(ENCODERS["repae-vit-t4"], default_weights=lambda: path)
    monkeypatch.setitem(ENCODERS, "repae-vit-t4", spec)


def test_repae_vit_t4_missing_says_pretrain(tmp_path, monkeypatch):
    monkeypatch.delenv(encoder_spec("repae-vit-t4").env_var, raising=False)
    _t4_without_default(monkeypatch, tmp_path / "absent.safetensors")
    with pytest.raises(MissingWeightsError, match="repae pretrain-encoder"):
        load_encoder("repae-vit-t4")


def test_repae_vit_t4_loads_explicit_and_default(tmp_path, monkeypatch):
    model = repae_vit_t4_model()
    assert sum(p.numel() for p in model.parameters()) > 2_000_000
    save_safetensors(tmp_path / "t4.safetensors", model.state_dict())
    enc = load_encoder("repae-vit-t4", weights=tmp_path / "t4.safetensors")
    x = images(2, 32)
    out = enc(x)
    assert out.shape == (2, 64, 192)
    with torch.no_grad():
        ref = model.forward_features(uint8_to_unit(x))[:, 1:]  # after final norm, CLS dropped
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # 64x64 input is resized to 32x32 first
    assert enc(images(1, 64)).shape == (1, 64, 192)
    # the packaged default location is used when no path is given
    monkeypatch.delenv(encoder_spec("repae-vit-t4").env_var, raising=False)
    _t4_without_default(monkeypatch, tmp_path / "t4.safetensors")
    assert torch.equal(load_encoder("repae-vit-t4")(x), out)


def test_repae_cnn_p4_loads_strictly_and_matches_its_network(tmp_path, monkeypatch):
    from repae.encoders.convnet import build_cnn_p4

    torch.manual_seed(0)
    model = build_cnn_p4().eval()
    save_safetensors(tmp_path / "c.safetensors", model.state_dict())
    enc = load_encoder("repae-cnn-p4", weights=tmp_path / "c.safetensors")
    x = images(3, 32)
    out = enc(x)
    assert out.shape == (3, 64, 512)
    with torch.no_grad():
        ref = model.feature_map(uint8_to_unit(x)).flatten(2).transpose(1, 2)  # [3, 64, 512] row-major tokens
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert enc(images(1, 64)).shape == (1, 64, 512)  # resized to 32x32 first
    # a ViT file, or a CNN of another width, is refused in one line naming the encoder
    save_safetensors(tmp_path / "vit.safetensors", repae_vit_t4_model().state_dict())
    with pytest.raises(ConfigError, match="repae-cnn-p4"):
        load_encoder("repae-cnn-p4", weights=tmp_path / "vit.safetensors")
    save_safetensors(tmp_path / "narrow.safetensors", build_cnn_p4(width=8).state_dict())
    with pytest.raises(ConfigError, match="does not fit repae-cnn-p4"):
        load_encoder("repae-cnn-p4", weights=tmp_path / "narrow.safetensors")
    spec = dataclasses.replace(ENCODERS["repae-cnn-p4"], default_weights=lambda: tmp_path / "absent.safetensors")
    monkeypatch.setitem(ENCODERS, "repae-cnn-p4", spec)
    monkeypatch.delenv(spec.env_var, raising=False)
    with pytest.raises(MissingWeightsError, match="make_encoder_asset"):
        load_encoder("repae-cnn-p4")


def test_random_encoder_needs_no_file_and_is_seeded():
    state = torch.random.get_rng_state()
    a = load_encoder("random", resolution=64)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = load_encoder("random", resolution=64)
    c = load_encoder("random", resolution=64, seed=1)
    x = images(2, 64)
    assert a(x).shape == (2, 16, 64)
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    assert encoder_spec("random-32").embed_dim == 32
    assert load_encoder("random-32", resolution=32, patch_size=4)(images(1, 32)).shape == (1, 64, 32)
    assert load_encoder("random", resolution=32, embed_dim=48).embed_dim == 48


def test_load_encoders_comma_separated():
    encs = load_encoders("random, random-32", resolution=32)
    assert [e.embed_dim for e in encs] == [64, 32]
    with pytest.raises(ConfigError, match="one path per encoder"):
        load_encoders("random,random-32", weights="a.pth")


# ---------------------------------------------------------------------------------------------
# Pixel preprocessing (spec 5.2)
# ---------------------------------------------------------------------------------------------


def _norm(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _bicubic(x, size):
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


@pytest.mark.parametrize(
    "name, order",
    [("dinov2-vit-b", "normalize_resize"), ("jepa-vit-h", "normalize_resize"), ("clip-vit-L", "resize_normalize")],
)
def test_preprocess_order(name, order):
    spec = encoder_spec(name)
    mean, std = (CLIP_MEAN, CLIP_STD) if "clip" in name else (IMAGENET_MEAN, IMAGENET_STD)
    x = images(2, 256, seed=3)
    u = x.float() / 255.0
    norm_first = _bicubic(_norm(u, mean, std), 224)
    resize_first = _norm(_bicubic(u, 224), mean, std)
    got = preprocess_pixels(x, spec.input_size(256), spec.pixels)
    right, wrong = (norm_first, resize_first) if order == "normalize_resize" else (resize_first, norm_first)
    assert got.shape == (2, 3, 224, 224)
    assert torch.equal(got, right)
    assert not torch.equal(got, wrong)  # the orders agree only up to float rounding
    torch.testing.assert_close(got, wrong, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["mocov3-vit-b", "mae-vit-l", "dinov1-vit-b"])
def test_preprocess_no_resize_families(name):
    x = images(1, 256)
    got = preprocess_pixels(x, encoder_spec(name).input_size(256), encoder_spec(name).pixels)
    assert torch.equal(got, _norm(x.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD))


def test_preprocess_rejects_float_and_t4_uses_unit_range():
    with pytest.raises(TypeError):
        preprocess_pixels(torch.zeros(1, 3, 32, 32), 32, encoder_spec("repae-vit-t4").pixels)
    x = images(1, 32)
    enc = build_encoder("repae-vit-t4")
    assert torch.equal(enc.preprocess(x), uint8_to_unit(x))
    assert registry.fixed_32(512) == 32


def test_packaged_repae_vit_t4_asset_loads(monkeypatch):
    monkeypatch.delenv(encoder_spec("repae-vit-t4").env_var, raising=False)
    enc = load_encoder("repae-vit-t4")
    assert enc.load_report.num_tensors == len(enc.model.state_dict())
    out = enc(images(2, 32))
    assert out.shape == (2, 64, 192) and torch.isfinite(out).all()
