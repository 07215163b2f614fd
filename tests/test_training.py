"""Trainer tests: gradient routing per phase and recipe, losses decrease, exact resume,
bad configs fail before training."""

from __future__ import annotations

import pytest
import torch

from repae.config import load_config
from repae.errors import ConfigError, MissingWeightsError
from repae.training import phases
from repae.training.trainer import Trainer

TINY = [
    "data.source=embedded",
    "align.encoders=[repae-vit-t4]",
    "model.preset=SiT-T/1", "tokenizer.stats_images=32",
    "align.depth=2",
    "train.batch_size=8",
    "train.report_to=none",
    "train.log_every=1",
    "train.checkpoint_every=1000",
    "train.sample_every=1000",
    "sample.num_images=4",
    "sample.num_steps=2",
]


def make_trainer(tmp_path, *extra: str) -> Trainer:
    cfg = load_config("tiny-fmnist", [*TINY, f"train.output_dir={tmp_path}", *extra])
    return Trainer(cfg, random_encoders=True)  # real encoder architecture, random weights


def batch(trainer: Trainer, n: int = 8):
    items = [trainer.dataset[i] for i in range(n)]
    return torch.stack([i[0] for i in items]), torch.stack([torch.as_tensor(i[1]) for i in items])


def grads(module) -> dict[str, bool]:
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in module.named_parameters()}


def prepare(trainer: Trainer):
    images, labels = batch(trainer)
    rnd = phases.StepRandomness.draw(
        generator=torch.Generator().manual_seed(0), global_batch=8, rows=slice(0, 8),
        latent_shape=trainer.latent_shape, time_sampler=trainer.objective.time_sampler, drop_prob=0.1, device="cpu",
    )
    with torch.no_grad():
        targets = [enc(images).float() for enc in trainer.encoders]
    return images, labels, targets, rnd


def test_vae_phase_reaches_vae_only(tmp_path):
    tr = make_trainer(tmp_path)
    images, labels, targets, rnd = prepare(tr)
    stats_before = tr.tokenizer.normalizer.state_dict()
    stats_before = {k: v.clone() for k, v in stats_before.items()}
    out = phases.vae_phase(tr.ctx, images, labels, targets, rnd, step=0)
    out.loss.backward()
    assert all(p.grad is None for p in tr.sit.parameters()), "REPA-E: the VAE-alignment pass must not train the SiT"
    assert all(p.grad is None for p in tr.lreg.discriminator.parameters()), "generator loss must not train D"
    assert any(grads(tr.tokenizer.vae.encoder).values()) and any(grads(tr.tokenizer.vae.decoder).values())
    for k, v in tr.tokenizer.normalizer.state_dict().items():  # eval-mode normaliser: no statistics update
        assert torch.equal(v, stats_before[k]), k


def test_alignment_alone_reaches_encoder_not_decoder(tmp_path):
    tr = make_trainer(tmp_path, "train.recipe=no-lreg")
    images, labels, targets, rnd = prepare(tr)
    out = phases.vae_phase(tr.ctx, images, labels, targets, rnd, step=0)
    out.loss.backward()
    assert any(grads(tr.tokenizer.vae.encoder).values())
    assert all(p.grad is None for p in tr.tokenizer.vae.decoder.parameters())
    assert all(p.grad is None for p in tr.sit.parameters())


@pytest.mark.parametrize("recipe,reaches_vae", [("repa-e", False), ("e2e-diffusion", True), ("no-stopgrad", True)])
def test_sit_phase_stop_gradient(tmp_path, recipe, reaches_vae):
    tr = make_trainer(tmp_path, f"train.recipe={recipe}")
    images, labels, targets, rnd = prepare(tr)
    vout = phases.vae_phase(tr.ctx, images, labels, targets, rnd, step=0)
    tr.tokenizer.vae.zero_grad(set_to_none=True)
    sout = phases.sit_phase(tr.ctx, vout.z, labels, targets, rnd)
    sout.loss.backward()
    # adaLN-Zero: at initialisation many SiT gradients are exactly zero, but every one exists
    assert all(p.grad is not None for p in tr.sit.parameters())
    assert any(grads(tr.sit).values())
    vae_has = any(p.grad is not None for p in tr.tokenizer.vae.parameters())
    assert vae_has == reaches_vae


def test_discriminator_phase_reaches_discriminator_only(tmp_path):
    tr = make_trainer(tmp_path)
    images, labels, targets, rnd = prepare(tr)
    vout = phases.vae_phase(tr.ctx, images, labels, targets, rnd, step=0)
    out = phases.discriminator_phase(tr.ctx, images, vout.recon, step=0)
    out.loss.backward()
    assert any(grads(tr.lreg.discriminator).values())
    assert all(p.grad is None for p in tr.tokenizer.vae.parameters())
    assert all(p.grad is None for p in tr.sit.parameters())


def test_frozen_vae_recipes_have_no_vae_optimizer(tmp_path):
    for recipe in ("repa", "vanilla"):
        tr = make_trainer(tmp_path / recipe, f"train.recipe={recipe}")
        assert set(tr.optimizers) == {"opt_sit"}
        before = {k: v.clone() for k, v in tr.tokenizer.state_dict().items()}
        tr.train_step(*batch(tr))
        for k, v in tr.tokenizer.state_dict().items():
            assert torch.equal(v, before[k]), f"{recipe} changed the frozen tokenizer ({k})"


def test_overfit_lowers_every_loss(tmp_path):
    tr = make_trainer(tmp_path, "optim.lr=2e-3", "optim.vae_lr=1e-3", "train.batch_size=4")
    images, labels = batch(tr, 4)
    history = [tr.train_step(images, labels) for _ in range(20)]
    for key in ("denoising_loss", "proj_loss", "reconstruction_loss", "vae_align_loss"):
        first = sum(h[key] for h in history[:3]) / 3
        last = sum(h[key] for h in history[-3:]) / 3
        assert last < first, f"{key} did not decrease: {first:.4f} -> {last:.4f}"


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    flat = {f"{g}.{k}": v for g, sd in tr.model_state().items() for k, v in sd.items()}
    for name, opt in tr.optimizers.items():
        for idx, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                flat[f"{name}.{idx}.{k}"] = torch.as_tensor(v)
    return flat


def test_resume_is_bit_exact(tmp_path):
    common = ["train.max_steps=4", "train.checkpoint_every=2"]
    straight = make_trainer(tmp_path / "a", *common)
    straight.fit()
    interrupted = make_trainer(tmp_path / "b", *common)
    interrupted.fit(max_steps=2)  # "killed" after the step-2 checkpoint
    resumed = make_trainer(tmp_path / "b", *common)
    resumed.fit()
    assert resumed.step == straight.step == 4
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"resume diverged at {k}"


@pytest.mark.parametrize(
    "override,exc,needle",
    [
        ("align.depth=9", ConfigError, "align.depth"),
        ("data.resolution=30", ConfigError, "divisible"),
        ("train.recipe=nope", ConfigError, "unknown recipe"),
        ("tokenizer.weights=/nonexistent/vae.safetensors", MissingWeightsError, "vae"),
    ],
)
def test_bad_configs_fail_before_training(tmp_path, override, exc, needle):
    with pytest.raises(exc) as info:
        make_trainer(tmp_path, override)
    assert needle.lower() in str(info.value).lower()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "repae-tiny-fmnist" / "checkpoints").exists()


def test_missing_encoder_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("REPAE_DINOV2_VIT_B_WEIGHTS", raising=False)
    cfg = load_config("tiny-fmnist", [*TINY, f"train.output_dir={tmp_path}", "align.encoders=[dinov2-vit-b]",
                                      "data.resolution=256"])
    with pytest.raises(MissingWeightsError) as info:
        Trainer(cfg)
    assert "\n" not in str(info.value)


def test_ldm_recipe_trains_on_cached_latents(tmp_path):
    """export a tokenizer -> cache its latents -> `ldm` recipe trains only the SiT on them."""
    from repae.data import build_dataset
    from repae.data.latent_cache import cache_latents
    from repae.tokenizer import Tokenizer

    tok = Tokenizer.from_preset("tiny-f4d4")
    tok.normalizer.set_statistics(torch.zeros(4), torch.ones(4))
    tok.save_pretrained(tmp_path / "vae")
    data = torch.utils.data.Subset(build_dataset("embedded", resolution=32), range(16))
    cache = cache_latents(tok, data, tmp_path / "latents", batch_size=8)
    assert (cache / "moments.npy").exists()

    cfg = load_config("tiny-fmnist", [*TINY, f"train.output_dir={tmp_path}", "train.recipe=ldm",
                                      f"tokenizer.weights={tmp_path / 'vae'}", f"data.latents={cache}"])
    tr = Trainer(cfg, random_encoders=True, dataset=data)
    assert set(tr.optimizers) == {"opt_sit"}
    images, labels, moments = (torch.stack(x) for x in zip(*[tr.dataset[i] for i in range(8)]))
    metrics = tr.train_step(images, labels, moments)
    assert set(metrics) >= {"denoising_loss", "proj_loss"}
    torch.testing.assert_close(tr.tokenizer.normalizer.running_var, torch.ones(4))  # frozen statistics


def test_ldm_takes_its_vae_from_the_latent_cache(tmp_path):
    """`repae cache-latents` records its VAE in meta.json, so `train.recipe=ldm data.latents=DIR` needs no
    tokenizer.weights; a tokenizer.weights naming another VAE is one line naming both."""
    import json

    import numpy as np

    from repae.cli import main
    from repae.data import build_dataset
    from repae.tokenizer import Tokenizer

    ds = build_dataset("embedded", resolution=32, split="train")
    npz = tmp_path / "subset.npz"
    np.savez(npz, arr_0=np.stack([ds[i][0].numpy().transpose(1, 2, 0) for i in range(8)]),
             labels=np.array([int(ds[i][1]) for i in range(8)], dtype=np.int64))
    cache = tmp_path / "latents"
    assert main(["cache-latents", "--vae", "repae-vae-fmnist", "--data", str(npz), "--resolution", "32",
                 "--out", str(cache), "--device", "cpu", "--batch-size", "8"]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert (meta["vae"], meta["vae_preset"]) == ("repae-vae-fmnist", "tiny-f4d4")

    ldm = [*TINY, "train.recipe=ldm", f"data.source={npz}", f"data.latents={cache}", "train.batch_size=4",
           "train.max_steps=1", "tokenizer.stats_images=8", "train.diagnostics_every=0", "train.sample_every=0",
           "train.html_report=false", f"train.output_dir={tmp_path / 'runs'}"]
    assert main(["train", "--config", "tiny-fmnist", "--no-export", *ldm]) == 0  # no tokenizer.weights
    saved = json.loads((tmp_path / "runs" / "repae-tiny-fmnist" / "config.json").read_text())
    assert saved["tokenizer"]["weights"] == "repae-vae-fmnist"  # the run records the VAE it used

    other = Tokenizer.from_preset("tiny-f4d4")
    other.normalizer.set_statistics(torch.zeros(4), torch.ones(4))
    other.save_pretrained(tmp_path / "other-vae")
    with pytest.raises(ConfigError) as info:
        Trainer(load_config("tiny-fmnist", [*ldm, f"tokenizer.weights={tmp_path / 'other-vae'}"]))
    message = str(info.value)
    assert "other-vae" in message and "repae-vae-fmnist" in message and "\n" not in message


def test_wandb_writer_imports_wandb_only_when_made(tmp_path, monkeypatch):
    """train.report_to=wandb: the writer forwards the loop's two SummaryWriter calls to a wandb run."""
    import sys
    import types

    from repae.training.trainer import WandbWriter

    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw["project"], kw["name"])) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config("tiny-fmnist", [f"train.output_dir={tmp_path}", "train.report_to=wandb"])
    writer = WandbWriter(cfg)
    writer.add_scalar("sit_loss", 1.5, 3)
    writer.close()
    assert calls == [("init", "repae", "repae-tiny-fmnist"), ("log", {"sit_loss": 1.5}, 3), ("finish",)]
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: `import wandb` raises ImportError
    with pytest.raises(ConfigError, match="pip install wandb"):
        WandbWriter(cfg)


def test_vae_checkpointing_gives_the_same_step(tmp_path):
    plain = make_trainer(tmp_path / "a")
    ckpt = make_trainer(tmp_path / "b", "train.vae_checkpointing=true")
    images, labels = batch(plain)
    a, b = plain.train_step(images, labels), ckpt.train_step(images, labels)
    for key in ("vae_loss", "sit_loss", "grad_norm_vae"):
        assert abs(a[key] - b[key]) < 1e-5 * max(1.0, abs(a[key])), key
    for (name, p), q in zip(plain.tokenizer.vae.named_parameters(), ckpt.tokenizer.vae.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_channels_last_auto_means_on_for_a_cpu():
    from repae.config import resolve_channels_last

    assert resolve_channels_last("auto", "cpu") and not resolve_channels_last("auto", "cuda")
    assert resolve_channels_last("yes", "cuda") and not resolve_channels_last(False, "cpu")
    with pytest.raises(ConfigError, match="true, false or auto"):
        resolve_channels_last("nchw", "cpu")
    from repae.config import load_config

    with pytest.raises(ConfigError, match="train.channels_last expects true, false or auto, got 'nchw'"):
        load_config(None, ["train.channels_last=nchw"])


def test_channels_last_gives_the_same_step_and_resumes(tmp_path):
    plain = make_trainer(tmp_path / "a", "train.channels_last=false")
    nhwc = make_trainer(tmp_path / "b")  # auto: on for a CPU
    for trainer, want in ((nhwc, True), (plain, False)):
        conv = next(m for m in trainer.tokenizer.vae.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == want
    images, labels = batch(plain)
    for _ in range(2):
        a, b = plain.train_step(images, labels), nhwc.train_step(images, labels)
        for key in ("vae_loss", "sit_loss", "d_loss", "grad_norm_vae"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])), key
    # Adam moves an element by ~lr whatever its gradient's size, so near-zero gradients that differ
    # in the last bits (NHWC sums in another order) may move differently: at most 2 lr per step
    lr = plain.cfg.optim.vae_lr
    for (name, p), q in zip(plain.tokenizer.vae.named_parameters(), nhwc.tokenizer.vae.parameters()):
        assert (p - q).abs().max() <= 2 * 2 * lr + 1e-7, name
    common = ["train.channels_last=true", "train.max_steps=4", "train.checkpoint_every=2"]
    straight = make_trainer(tmp_path / "c", *common)
    straight.fit()
    make_trainer(tmp_path / "d", *common).fit(max_steps=2)  # "killed" after the step-2 checkpoint
    resumed = make_trainer(tmp_path / "d", *common)
    resumed.fit()
    a, b = _state(straight), _state(resumed)
    assert resumed.step == 4 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"channels_last resume diverged at {k}"


@pytest.mark.slow
def test_torch_compile_matches_eager(tmp_path):
    eager = make_trainer(tmp_path / "eager")
    compiled = make_trainer(tmp_path / "compiled", "train.compile=true")
    images, labels = batch(eager)
    for _ in range(2):
        a, b = eager.train_step(images, labels), compiled.train_step(images, labels)
        for key in ("vae_loss", "sit_loss", "denoising_loss", "d_loss"):
            assert abs(a[key] - b[key]) < 1e-3 * max(1.0, abs(a[key])), (key, a[key], b[key])


def test_several_encoders_get_one_projector_each(tmp_path):
    tr = make_trainer(tmp_path, "align.encoders=[repae-vit-t4,repae-vit-t4]")
    assert len(tr.sit.projectors) == 2 and len(tr.encoders) == 2
    metrics = tr.train_step(*batch(tr))
    assert -1.0 <= metrics["proj_loss"] <= 1.0 and -1.0 <= metrics["vae_align_loss"] <= 1.0
