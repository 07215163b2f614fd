"""Every generator family trains with the REPA-E recipe and samples with its own samplers (issue 12)."""

from __future__ import annotations

import pytest
import torch

from repae.errors import ConfigError
from repae.sampling.generator import Generator
from test_training import batch, make_trainer


@pytest.mark.parametrize("preset,sampler,kind", [("DiT-T/1", "ddpm", "DDPMObjective"),
                                                 ("LightningDiT-T/1", "euler", "FlowMatching")])
def test_family_trains_with_repa_e_and_samples(tmp_path, preset, sampler, kind):
    tr = make_trainer(tmp_path, f"model.preset={preset}", f"sample.sampler={sampler}")
    assert type(tr.objective).__name__ == kind
    before = {k: v.clone() for k, v in tr.sit.state_dict().items()}
    for _ in range(2):
        metrics = tr.train_step(*batch(tr))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    assert float(metrics["proj_loss"]) < 0 and float(metrics["vae_align_loss"]) < 0  # REPA reaches both sides
    assert any(not torch.equal(before[k], v) for k, v in tr.sit.state_dict().items())
    images = Generator.from_trainer(tr)([0, 1], seeds=[0, 1], sampler=sampler, num_steps=3)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8


def test_dit_ddim_is_deterministic_and_flow_solver_is_refused(tmp_path):
    tr = make_trainer(tmp_path, "model.preset=DiT-T/1", "sample.sampler=ddpm")
    gen = Generator.from_trainer(tr)
    a = gen([3], seeds=[5], sampler="ddim", num_steps=3)
    assert torch.equal(a, gen([3], seeds=[5], sampler="ddim", num_steps=3))
    with pytest.raises(ConfigError, match="cannot sample a DDPM model"):
        gen([3], sampler="euler", num_steps=3)


def test_sampler_model_mismatch_fails_before_building(tmp_path):
    with pytest.raises(ConfigError, match=r"sample.sampler='euler' cannot sample DiT-T/1.*ddim, ddpm"):
        make_trainer(tmp_path, "model.preset=DiT-T/1", "sample.sampler=euler")
    with pytest.raises(ConfigError, match=r"sample.sampler='ddpm' cannot sample SiT-T/1"):
        make_trainer(tmp_path, "sample.sampler=ddpm")


@pytest.mark.parametrize("preset,sampler", [("SiT-T/1", "euler"), ("LightningDiT-T/1", "euler"), ("DiT-T/1", "ddim")])
def test_unset_sampler_follows_the_model(preset, sampler, capsys):
    from repae.cli import main
    from repae.config import load_config
    from repae.training.builders import validate_config

    cfg = load_config("tiny-fmnist", [f"model.preset={preset}"])
    assert cfg.sample.sampler == "auto"  # neither the dataclass nor the default preset names one
    validate_config(cfg)  # resolved in place: what the run saves in config.json and its checkpoints
    assert cfg.sample.sampler == sampler and cfg.sample.num_steps == 50
    assert main(["config", f"model.preset={preset}"]) == 0
    assert f'"sampler": "{sampler}"' in capsys.readouterr().out
    explicit = load_config("tiny-fmnist", [f"model.preset={preset}", "sample.sampler=heun" if sampler == "euler"
                                           else "sample.sampler=ddpm"])
    validate_config(explicit)  # a named sampler of the right family is kept
    assert explicit.sample.sampler == ("heun" if sampler == "euler" else "ddpm")


@pytest.mark.parametrize("projector,norm", [("conv", "spatial"), ("mlp", "spatial"), ("conv", "none")])
def test_irepa_options_train(tmp_path, projector, norm):
    tr = make_trainer(tmp_path, f"align.projector={projector}", f"align.target_norm={norm}")
    from repae.models.projectors import ConvProjector

    assert isinstance(tr.sit.projectors[0], ConvProjector) == (projector == "conv")
    metrics = tr.train_step(*batch(tr))
    assert torch.isfinite(torch.as_tensor(metrics["proj_loss"]))


def test_init_from_a_run_and_from_an_official_file(tmp_path):
    from repae.models.official import repae_to_official

    src = make_trainer(tmp_path / "a")
    src.train_step(*batch(src))
    src.save()
    ema = {k: v.clone() for k, v in src.ema.model.state_dict().items()}
    run_dir = src.cfg.run_dir
    b = make_trainer(tmp_path / "b", f"train.init_from={run_dir}")
    assert all(torch.equal(b.sit.state_dict()[k], v) for k, v in ema.items())
    path = tmp_path / "official.pt"
    official = repae_to_official(ema, "repa-e", bn=src.tokenizer.normalizer.state_dict())  # bn.* inside the SiT
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "ema": official}, path)
    c = make_trainer(tmp_path / "c", f"train.init_from={path}")
    assert all(torch.equal(c.sit.state_dict()[k], v) for k, v in ema.items())
    with pytest.raises(ConfigError, match="does not exist"):
        make_trainer(tmp_path / "d", f"train.init_from={tmp_path / 'nope.pt'}")
