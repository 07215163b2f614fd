"""Generator pipeline, per-sample seeding, ADM npz output, resume, multi-process equality, CLI."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from repae.errors import ConfigError
from repae.sampling.generator import Generator, sample_labels, sample_seed, sample_seeds
from repae.sampling.outputs import sample_to_outputs, shard_indices, write_adm_npz

NUM_CLASSES = 5
RES = 8  # images 8x8, latents [4, 2, 2]


# ---------------------------------------------------------------------------------------------
# tiny stand-ins (module level so spawned processes can unpickle them)
# ---------------------------------------------------------------------------------------------


class ToyNormalizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, -0.2, 0.3, 0.0]).reshape(1, 4, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 1.5, 1.0, 2.0]).reshape(1, 4, 1, 1))

    def denormalize(self, z):
        return z * self.std + self.mean


class ToyTokenizer(nn.Module):
    """latent_shape / normalizer.denormalize / decode, like repae.tokenizer.Tokenizer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.normalizer = ToyNormalizer()
        self.proj = nn.Conv2d(4, 3, 1)

    def latent_shape(self, resolution):
        return (4, resolution // 4, resolution // 4)

    def decode(self, z):
        return torch.tanh(nn.functional.interpolate(self.proj(z), scale_factor=4))  # [B, 3, H, W]


class ToyModel(nn.Module):
    """Label-dependent velocity field returning an object with ``.prediction`` like SiT."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.config = SimpleNamespace(num_classes=NUM_CLASSES)
        self.table = nn.Parameter(torch.randn(NUM_CLASSES + 1, 4))
        self.mix = nn.Parameter(torch.randn(4, 4) * 0.3)

    def forward(self, x, t, y):
        mixed = torch.einsum("bchw,dc->bdhw", x, self.mix)  # [B, C, h, w]
        pred = mixed * (1 - t).reshape(-1, 1, 1, 1) + self.table[y][:, :, None, None] * t.reshape(-1, 1, 1, 1)
        return SimpleNamespace(prediction=pred)


def make_generator():
    return Generator(tokenizer=ToyTokenizer(), model=ToyModel(), path="linear", num_classes=NUM_CLASSES,
                     resolution=RES)


SETTINGS = dict(sampler="euler-maruyama", num_steps=4, cfg_scale=2.0, guidance_interval=(0.0, 0.7))


# ---------------------------------------------------------------------------------------------
# seeds and labels
# ---------------------------------------------------------------------------------------------


def test_sample_labels_and_seeds_depend_only_on_index():
    a, b = sample_labels(10, 3, 7), sample_labels(1000, 3, 7)
    assert a.dtype == torch.int64 and torch.equal(a, b[:10])
    assert b.min() >= 0 and b.max() < 7 and len(set(b.tolist())) == 7
    assert not torch.equal(b, sample_labels(1000, 4, 7))
    counts = torch.bincount(b, minlength=7).float()
    assert counts.min() > 100  # roughly uniform (expected 143 each)
    seeds = sample_seeds(3, range(50))
    assert seeds[17] == sample_seed(3, 17) and len(set(seeds)) == 50
    assert all(0 <= s < 2**63 for s in seeds) and sample_seed(3, 0) != sample_seed(4, 0)


def test_shard_indices_partition():
    for mode in ("round-robin", "contiguous"):
        parts = [shard_indices(11, r, 3, mode) for r in range(3)]
        assert sorted(sum(parts, [])) == list(range(11))
    assert shard_indices(11, 1, 3, "round-robin") == [1, 4, 7, 10]
    assert shard_indices(11, 2, 3, "contiguous") == [8, 9, 10]
    with pytest.raises(ConfigError):
        shard_indices(11, 0, 3, "random")


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-maruyama"])
def test_sample_i_is_independent_of_batch_composition(sampler):
    gen = make_generator()
    labels, seeds = torch.tensor([0, 3, 1, 4]), [11, 12, 13, 14]
    kw = dict(SETTINGS, sampler=sampler)
    together = gen(labels, seeds=seeds, **kw)
    assert together.shape == (4, 3, RES, RES) and together.dtype == torch.uint8
    one_by_one = torch.cat([gen(labels[i:i + 1], seeds=[seeds[i]], **kw) for i in range(4)])
    reversed_ = gen(labels.flip(0), seeds=seeds[::-1], **kw).flip(0)
    assert torch.equal(together, one_by_one) and torch.equal(together, reversed_)
    z1 = gen.latents(labels, seeds=seeds, **kw)
    z2 = torch.cat([gen.latents(labels[i:i + 1], seeds=[seeds[i]], **kw) for i in range(4)])
    torch.testing.assert_close(z1, z2, rtol=0, atol=1e-6)
    assert z1.shape == (4, 4, 2, 2) and z1.dtype == torch.float32
    assert not torch.equal(gen(labels, seeds=[1, 2, 3, 4], **kw), together)


def test_generator_pipeline_denormalises_and_decodes():
    gen = make_generator()
    noise = torch.randn(2, 4, 2, 2)
    z = gen.latents(torch.tensor([1, 2]), noise=noise, sampler="euler", num_steps=3)
    expected = gen.tokenizer.decode(gen.tokenizer.normalizer.denormalize(z))
    expected = ((expected + 1) * 127.5).clamp(0, 255).to(torch.uint8)  # truncation (spec 11.24)
    assert torch.equal(gen.decode(z), expected)
    assert torch.equal(gen(torch.tensor([1, 2]), noise=noise, sampler="euler", num_steps=3), expected)


def test_generator_restores_training_flags_and_validates():
    gen = make_generator()
    gen.model.train()
    gen(torch.tensor([0]), seeds=[0], num_steps=2)
    assert gen.model.training
    with pytest.raises(ConfigError, match="one seed per sample"):
        gen(torch.tensor([0, 1]), seeds=[0], num_steps=2)
    with pytest.raises(ConfigError, match="labels must lie"):
        gen(torch.tensor([NUM_CLASSES]), num_steps=2)
    with pytest.raises(ConfigError, match="unknown sampler"):
        gen(torch.tensor([0]), sampler="ddim")
    assert Generator(tokenizer=ToyTokenizer(), model=ToyModel(), resolution=RES).num_classes == NUM_CLASSES


def test_real_tiny_components():
    from repae.models import sit as sit_mod
    from repae.tokenizer import tokenizer as tok_mod

    tok = tok_mod.Tokenizer.from_preset("tiny-f4d4")
    c, h, _ = tok.latent_shape(32)
    sit = sit_mod.build_sit("SiT-T/2", input_size=h, in_channels=c, num_classes=NUM_CLASSES)
    with torch.no_grad():  # the SiT output is exactly 0 at init; make it label dependent
        for p in sit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    gen = Generator(tokenizer=tok, model=sit, num_classes=NUM_CLASSES, resolution=32)
    a = gen(torch.tensor([0, 1]), seeds=[5, 6], **SETTINGS)
    b = torch.cat([gen(torch.tensor([1]), seeds=[6], **SETTINGS), gen(torch.tensor([0]), seeds=[5], **SETTINGS)])
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.uint8
    assert (a.int() - b.flip(0).int()).abs().max() <= 1  # conv kernels may differ by 1 ULP with batch size


# ---------------------------------------------------------------------------------------------
# sample_to_outputs: ADM npz, PNG folder, resume
# ---------------------------------------------------------------------------------------------


def reference_images(gen, n, seed):
    labels = sample_labels(n, seed, NUM_CLASSES)
    imgs = torch.cat([gen(labels[i:i + 1], seeds=[sample_seed(seed, i)], **SETTINGS) for i in range(n)])
    return imgs.permute(0, 2, 3, 1).numpy(), labels.numpy()


def test_npz_adm_layout_in_memory_and_png_folder(tmp_path):
    gen = make_generator()
    ref, ref_labels = reference_images(gen, 5, seed=7)
    res = sample_to_outputs(gen, num_samples=5, batch_size=2, seed=7, out_npz=tmp_path / "a.npz", **SETTINGS)
    assert res.generated == 5 and res.npz == tmp_path / "a.npz"
    with np.load(tmp_path / "a.npz") as f:
        assert sorted(f.files) == ["arr_0", "labels"]
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (5, RES, RES, 3)
        assert f["labels"].dtype == np.int64
        np.testing.assert_array_equal(f["arr_0"], ref)
        np.testing.assert_array_equal(f["labels"], ref_labels)
    res = sample_to_outputs(gen, num_samples=5, batch_size=3, seed=7, out_npz=tmp_path / "b.npz",
                            out_dir=tmp_path / "png", **SETTINGS)
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == [f"{i:06d}.png" for i in range(5)] + ["sampling.json"]
    with np.load(tmp_path / "b.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], ref)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left nothing behind


def test_resume_keeps_existing_pngs_and_existing_npz(tmp_path):
    from PIL import Image

    gen = make_generator()
    out = tmp_path / "png"
    out.mkdir()
    marker = np.full((RES, RES, 3), 7, dtype=np.uint8)
    Image.fromarray(marker).save(out / "000002.png")
    res = sample_to_outputs(gen, num_samples=4, batch_size=2, seed=0, out_dir=out, out_npz=tmp_path / "s.npz",
                            **SETTINGS)
    assert (res.generated, res.skipped) == (3, 1)
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_array_equal(f["arr_0"][2], marker)  # not regenerated
        ref, _ = reference_images(gen, 4, seed=0)
        np.testing.assert_array_equal(f["arr_0"][[0, 1, 3]], ref[[0, 1, 3]])
    before = (tmp_path / "s.npz").stat().st_mtime_ns
    res = sample_to_outputs(gen, num_samples=4, batch_size=2, seed=0, out_dir=out, out_npz=tmp_path / "s.npz",
                            **SETTINGS)
    assert res.generated == 0 and (tmp_path / "s.npz").stat().st_mtime_ns == before
    # the folder remembers its settings: resuming with others would mix samples
    with pytest.raises(ConfigError, match="cfg_scale"):
        sample_to_outputs(gen, num_samples=4, batch_size=2, seed=0, out_dir=out, **dict(SETTINGS, cfg_scale=3.0))


def test_reduced_precision_runs_the_network_under_autocast_only(tmp_path):
    """precision='bf16': the network sees autocast, the solver state and the output stay float32, the
    samples are close to fp32 ones; a PNG folder remembers the precision; a bad name is refused."""
    seen = []

    class Recording(ToyModel):
        def forward(self, x, t, y):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            out = super().forward(x, t, y)
            return SimpleNamespace(prediction=out.prediction.bfloat16() if seen[-1] else out.prediction)

    tok = ToyTokenizer()
    fp32 = Generator(tokenizer=tok, model=Recording(), num_classes=NUM_CLASSES, resolution=RES)
    bf16 = Generator(tokenizer=tok, model=Recording(), num_classes=NUM_CLASSES, resolution=RES, precision="bf16")
    labels, seeds = [0, 3, 4], [5, 6, 7]
    want = fp32.latents(labels, seeds=seeds, **SETTINGS)
    assert set(seen) == {None}
    seen.clear()
    got = bf16.latents(labels, seeds=seeds, **SETTINGS)
    assert set(seen) == {torch.bfloat16} and got.dtype == torch.float32
    assert not torch.equal(got, want)  # the network's rounding changed something
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    decoded = []
    hook = tok.proj.register_forward_hook(lambda mod, inp, out: decoded.append(out.dtype))
    images = bf16.decode(want)  # the decode runs under the same autocast
    hook.remove()
    assert decoded == [torch.bfloat16] and images.dtype == torch.uint8
    assert (images.int() - fp32.decode(want).int()).abs().max() <= 4  # uint8 levels
    sample_to_outputs(bf16, num_samples=2, batch_size=2, out_dir=tmp_path / "png", **SETTINGS)
    import json

    assert json.loads((tmp_path / "png" / "sampling.json").read_text())["precision"] == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        sample_to_outputs(fp32, num_samples=2, batch_size=2, out_dir=tmp_path / "png", **SETTINGS)
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        bf16.precision = "int8"


def test_sample_to_outputs_validates(tmp_path):
    gen = make_generator()
    with pytest.raises(ConfigError, match="nothing to write"):
        sample_to_outputs(gen, num_samples=2, batch_size=1)
    with pytest.raises(ConfigError, match="cfg_scale"):
        sample_to_outputs(gen, num_samples=2, batch_size=1, out_npz=tmp_path / "x.npz", cfg_scale=0.5)
    with pytest.raises(ConfigError, match="out_dir"):
        sample_to_outputs(gen, num_samples=2, batch_size=1, out_npz=tmp_path / "x.npz", world_size=2)
    assert not (tmp_path / "x.npz").exists()


def test_write_adm_npz_checks_counts(tmp_path):
    imgs = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="expected 4"):
        write_adm_npz(tmp_path / "x.npz", iter(imgs), num_images=4, image_shape=(4, 4, 3))
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------
# two processes on gloo give exactly the one-process npz
# ---------------------------------------------------------------------------------------------


def _worker(rank, world, tmp):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        gen = make_generator()
        sample_to_outputs(gen, num_samples=5, batch_size=2, seed=9, out_npz=f"{tmp}/gather.npz",
                          rank=rank, world_size=world, progress=False, **SETTINGS)
        sample_to_outputs(gen, num_samples=5, batch_size=2, seed=9, out_npz=f"{tmp}/folder.npz",
                          out_dir=f"{tmp}/png", shard="contiguous", rank=rank, world_size=world,
                          progress=False, **SETTINGS)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~15 s on a loaded 2-core machine: two spawned interpreters import torch
def test_two_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = tmp_path / "single.npz"
    sample_to_outputs(make_generator(), num_samples=5, batch_size=3, seed=9, out_npz=single, **SETTINGS)
    with np.load(single) as s, np.load(tmp_path / "gather.npz") as g, np.load(tmp_path / "folder.npz") as f:
        for other in (g, f):
            np.testing.assert_array_equal(other["arr_0"], s["arr_0"])
            np.testing.assert_array_equal(other["labels"], s["labels"])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_sample(tmp_path, monkeypatch, capsys):
    from repae.cli import main

    calls = []

    def load_generator(path, *, ema=True, device="cpu"):
        calls.append((path, ema, str(device)))
        return make_generator()

    import repae.cli.sample as sample_cli

    monkeypatch.setattr(sample_cli, "load_generator", load_generator)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "s.npz"
    argv = ["sample", "--checkpoint", "runs/x", "--num-samples", "3", "--batch-size", "2", "--sampler", "heun",
            "--num-steps", "3", "--cfg-scale", "1.5", "--guidance-high", "0.8", "--seed", "4",
            "--out-npz", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert calls == [("runs/x", True, "cpu")]
    gen = make_generator()
    labels = sample_labels(3, 4, NUM_CLASSES)
    ref = gen(labels, seeds=sample_seeds(4, range(3)), sampler="heun", num_steps=3, cfg_scale=1.5,
              guidance_interval=(0.0, 0.8)).permute(0, 2, 3, 1).numpy()
    with np.load(out) as f:
        np.testing.assert_array_equal(f["arr_0"], ref)
    assert main(argv[:-4] + ["--out-dir", str(tmp_path / "png"), "--no-ema", "--device", "cpu"]) == 0
    assert calls[-1][1] is False and len(list((tmp_path / "png").glob("*.png"))) == 3
    assert main(argv[:-4]) == 2  # ConfigError -> one-line error naming the fix
    assert "--out-npz" in capsys.readouterr().err
