"""Renamed config keys (issue 25 item 4, CHANGELOG 2026-12-06 (2)): an old name in a preset, a config
file or an override is a one-line error naming the new key; a config saved by a run or checkpoint
before the rename is translated, so an old run folder resumes (fixture written by git rev b914b2f:
tests/fixtures/make_old_run.py) and its checkpoints load; the key facts (choices, ranges, resume
behaviour) live in one table (field metadata) that covers every key the old hand-written tables did."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from repae.cli import main
from repae.config import (
    CHOICES,
    RANGES,
    RENAMED,
    RENAMED_SECTIONS,
    RunConfig,
    config_from_json,
    config_from_saved,
    key_facts,
    load_config,
    migrate_config_dict,
)
from repae.errors import ConfigError
from repae.training import resume

FIXTURE = Path(__file__).parent / "fixtures" / "old-run-b914b2f"
MESSAGE = "config key '{old}' was renamed '{new}' (CHANGELOG.md, 2026-12-06): use the new name"
# every renamed key, and one key of each renamed section
RENAMES = [*RENAMED.items(), *((f"{o}.kl_weight", f"{n}.kl_weight") for o, n in RENAMED_SECTIONS.items())]


def _new_default(new: str):
    section, name = new.split(".")
    return getattr(getattr(RunConfig(), section), name)


def _old(dotted: str) -> str:
    """The name a key had before the rename (inverse of RENAMED / RENAMED_SECTIONS)."""
    back = {n: o for o, n in RENAMED.items()}
    section, _, rest = dotted.partition(".")
    sections = {n: o for o, n in RENAMED_SECTIONS.items()}
    return back.get(dotted) or (f"{sections[section]}.{rest}" if section in sections else dotted)


def _new(dotted: str) -> str:
    section, _, rest = dotted.partition(".")
    return RENAMED.get(dotted) or (f"{RENAMED_SECTIONS[section]}.{rest}" if section in RENAMED_SECTIONS else dotted)


def _old_dict(new: dict) -> dict:
    out: dict = {}
    for section, values in new.items():
        for name, value in values.items():
            osec, oname = _old(f"{section}.{name}").split(".")
            out.setdefault(osec, {})[oname] = value
    return out


# --- old names are one-line errors --------------------------------------------------------------


@pytest.mark.parametrize("old,new", RENAMES)
def test_old_name_in_an_override_is_one_line(old, new):
    value = json.dumps(_new_default(new))
    with pytest.raises(ConfigError) as err:
        load_config("tiny-fmnist", [f"{old}={value}"])
    assert str(err.value) == MESSAGE.format(old=old, new=new)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("old,new", RENAMES)
def test_old_name_in_a_preset_file_is_one_line(old, new, suffix, tmp_path):
    section, name = old.split(".")
    raw = {"extends": "tiny-fmnist", section: {name: _new_default(new)}}
    path = tmp_path / f"mine{suffix}"
    path.write_text(json.dumps(raw))  # JSON is YAML too
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == MESSAGE.format(old=old, new=new)


def test_old_section_alone_names_the_section(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("loss: {}\n")
    want = r"^config section 'loss' was renamed 'lreg' \(CHANGELOG.md, 2026-12-06\): use the new name$"
    with pytest.raises(ConfigError, match=want):
        load_config(str(path))


def test_old_name_on_the_command_line_is_one_line(tmp_path, capsys):
    code = main(["train", f"train.output_dir={tmp_path}", "align.proj_coeff=0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert MESSAGE.format(old="align.proj_coeff", new="align.sit_coeff") in err
    assert not any(tmp_path.iterdir())


def test_changelog_lists_every_rename():
    text = (Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    part = text.split("### Config keys renamed (issue 25)", 1)[1].split("\n## ", 1)[0]
    for old, new in RENAMED.items():
        assert f"`{old}` | `{new}`" in part
    for old, new in RENAMED_SECTIONS.items():
        assert f"`{old}.*` (section) | `{new}.*`" in part


# --- saved configs are translated ---------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny-fmnist", "fmnist", "imagenet-repae-sit-xl2", "imagenet-eqvae-f8d4-finetune"])
def test_migrate_gives_the_new_named_config(preset):
    cfg = load_config(preset)
    new = json.loads(json.dumps(cfg.to_dict()))  # as config.json stores it
    old = _old_dict(new)
    assert "loss" in old and "encoder_depth" in old["model"] and "ema" in old["tokreg"]
    frozen = json.dumps(old, sort_keys=True)
    assert migrate_config_dict(old) == new
    assert json.dumps(old, sort_keys=True) == frozen  # the input is not changed
    assert migrate_config_dict(new) == new  # new names pass unchanged
    assert config_from_saved(old) == cfg
    with pytest.raises(ConfigError, match="was renamed"):  # a user's file gets no translation
        from repae.config import from_dict

        from_dict(old)


def test_fixture_config_translates():
    cfg = config_from_json(FIXTURE / "config.json")
    raw = json.loads((FIXTURE / "config.json").read_text())
    assert cfg.align.depth == raw["model"]["encoder_depth"] == 2
    assert cfg.align.sit_coeff == raw["align"]["proj_coeff"] and cfg.align.vae_coeff == raw["align"]["vae_align_coeff"]
    assert cfg.lreg.kl_weight == raw["loss"]["kl_weight"]
    assert cfg.train.vae_ema is raw["tokreg"]["ema"] and cfg.train.html_report is raw["train"]["report"]


def test_resume_comparison_works_across_the_rename():
    saved = json.loads((FIXTURE / "config.json").read_text())
    current = config_from_saved(saved)
    assert resume.config_changes(saved, current.to_dict()) == {}
    current.align.sit_coeff = 0.7
    current.lreg.kl_weight = 0.5
    changes = resume.config_changes(saved, current.to_dict())
    assert changes == {"align.sit_coeff": (0.5, 0.7), "lreg.kl_weight": (1e-6, 0.5)}


# --- an old run folder resumes, and its checkpoint loads ------------------------------------------


def _fixture_overrides() -> list[str]:
    """The overrides tests/fixtures/make_old_run.py trained the fixture with, under the new names."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_old_run", FIXTURE.parent / "make_old_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = []
    for text in mod.OVERRIDES:
        name, _, value = text.partition("=")
        out.append(f"{_new(name)}={value}")
    return out


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "runs" / FIXTURE.name
    shutil.copytree(FIXTURE, run)
    return run


def test_old_run_resumes_with_new_names(old_run, caplog):
    overrides = _fixture_overrides()
    assert "train.html_report=false" in overrides
    with caplog.at_level(logging.INFO):
        code = main(["train", "--config", "tiny-fmnist", "--no-export", *overrides,
                     f"train.output_dir={old_run.parent}", "train.max_steps=4"])
    assert code == 0
    assert any("resumed from" in r.getMessage() and "step-0000002" in r.getMessage() for r in caplog.records)
    # the same settings: nothing but bookkeeping differs from the checkpoint
    assert not [r for r in caplog.records if "differ from an uninterrupted one" in r.getMessage()]
    steps = [json.loads(line)["step"] for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]  # continued from step 2, not from scratch
    assert (old_run / "checkpoints" / "step-0000004").is_dir()
    for saved in (json.loads((old_run / "config.json").read_text()),
                  json.loads((old_run / "checkpoints" / "step-0000004" / "state.json").read_text())["config"]):
        assert "loss" not in saved and saved["lreg"]["kl_weight"] == 1e-6
        assert "encoder_depth" not in saved["model"] and saved["align"]["depth"] == 2
        assert saved["align"]["sit_coeff"] == 0.5 and saved["align"]["vae_coeff"] == 1.5
        assert "proj_coeff" not in saved["align"] and "ema" not in saved["tokreg"]
        assert saved["train"]["html_report"] is False and "report" not in saved["train"]
        assert saved["train"]["vae_ema"] is False and saved["train"]["max_steps"] == 4


def test_old_checkpoint_loads_for_sample_and_export(old_run, tmp_path):
    from repae.analysis.pipeline import resolve_source
    from repae.sampling.generator import Generator
    from repae.training.export import export_vae

    ckpt = old_run / "checkpoints" / "step-0000002"
    gen = Generator.from_checkpoint(ckpt)
    torch.manual_seed(0)
    images = gen([0, 1], num_steps=2, cfg_scale=1.0)
    assert images.shape[0] == 2 and torch.isfinite(images.float()).all()
    assert resolve_source(str(old_run)).config == config_from_json(old_run / "config.json")
    export_vae(ckpt, tmp_path / "vae")  # repae export-vae
    assert (tmp_path / "vae" / "config.json").is_file()


# --- one key table ------------------------------------------------------------------------------

# The hand-written tables as they stood at git rev b914b2f (old names).
OLD_CHOICES = {
    "train.mixed_precision": ("no", "bf16", "fp16"), "sample.precision": ("fp32", "bf16", "fp16"),
    "train.report_to": ("tensorboard", "wandb", "none"), "diffusion.path": ("linear", "cosine"),
    "diffusion.time_sampler": ("uniform", "lognormal"), "loss.perceptual": ("lpips", "laplacian", "none"),
    "tokreg.vf_pixels": ("encoder", "vavae"),
}
_P, _N, _U, _UO = "> 0", ">= 0", "in [0, 1]", "in [0, 1)"
OLD_RANGES = {
    "data.resolution": _P, "data.num_workers": _N,
    "tokenizer.bn_momentum": _U, "tokenizer.stats_images": _P, "tokenizer.rae_noise_tau": _N,
    "model.num_classes": _P, "model.class_dropout_prob": _UO, "model.encoder_depth": _P,
    "model.projector_dim": _N, "model.dh_depth": _N, "model.dh_width": _P, "model.dh_heads": _P,
    "diffusion.time_shift_base": _P,
    "align.proj_coeff": _N, "align.vae_align_coeff": _N,
    "loss.reconstruction_weight": _N, "loss.perceptual_weight": _N, "loss.kl_weight": _N,
    "loss.disc_weight": _N, "loss.disc_start": _N, "loss.lecam_weight": _N,
    "tokreg.se_weight": _N, "tokreg.eq_prob": _U, "tokreg.eq_lowres_prob": _U,
    "tokreg.eq_scale_den": _N, "tokreg.eq_min_scale": _P, "tokreg.vf_weight": _N,
    "tokreg.vf_cos_weight": _N, "tokreg.vf_distmat_weight": _N,
    "optim.lr": _N, "optim.vae_lr": _N, "optim.disc_lr": _N, "optim.betas": _UO,
    "optim.weight_decay": _N, "optim.eps": _P, "optim.max_grad_norm": _P, "optim.ema_decay": _UO,
    "train.batch_size": _P, "train.grad_accum": _P, "train.max_steps": _P, "train.log_every": _P,
    "train.checkpoint_every": _P, "train.keep_checkpoints": _N, "train.sample_every": _N,
    "train.threads": _N, "train.diagnostics_every": _N, "train.final_eval_samples": _N,
    "train.max_nonfinite_skips": _P, "train.dist_timeout_min": _P,
    # sample.cfg_scale was ">= 0" until 2026-12-06 (4): the samplers refuse < 1, so the config does too
    "sample.num_images": _P, "sample.num_steps": _P, "sample.cfg_scale": ">= 1 (1 = no guidance)",
    "sample.guidance_low": _U, "sample.guidance_high": _U,
}
OLD_OVERRIDDEN = ("optim.lr", "optim.vae_lr", "optim.disc_lr", "optim.betas", "optim.weight_decay", "optim.eps")
OLD_ARCHITECTURE = ("data.resolution", "tokenizer.preset", "model.preset", "model.num_classes", "model.qk_norm",
                    "model.learn_pos_embed", "model.projector_dim", "align.encoders", "align.projector", "train.recipe",
                    "tokenizer.arch")
OLD_HARMLESS = ("train.max_steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
                "train.keep_checkpoints", "train.resume", "train.threads", "train.report_to", "train.output_dir",
                "train.exp_name", "train.compile", "train.vae_checkpointing", "train.allow_tf32",
                "train.max_nonfinite_skips", "train.dist_timeout_min", "train.final_eval_samples", "train.report",
                "train.diagnostics_every", "data.num_workers",
                *(f"sample.{k}" for k in RunConfig().sample.__dataclass_fields__))  # was the prefix "sample."


def test_key_table_covers_the_old_tables():
    assert CHOICES == {_new(k): v for k, v in OLD_CHOICES.items()}
    assert {k: must for k, (_, must) in RANGES.items()} == {_new(k): v for k, v in OLD_RANGES.items()}
    assert set(resume.OVERRIDDEN) == {_new(k) for k in OLD_OVERRIDDEN}
    assert set(resume.ARCHITECTURE) == {_new(k) for k in OLD_ARCHITECTURE}
    assert set(resume.HARMLESS) == {_new(k) for k in OLD_HARMLESS}
    facts = key_facts()
    assert set(facts) == {f"{s}.{k}" for s, v in RunConfig().to_dict().items() for k in v}
    assert [k for k, m in facts.items() if m.get("infinite")] == ["optim.max_grad_norm"]


def test_ranges_still_checked_under_new_names():
    from repae.config import check_ranges

    with pytest.raises(ConfigError, match=r"^align\.depth=0 is out of range: it must be > 0$"):
        check_ranges(load_config("tiny-fmnist", ["align.depth=0"]))
    with pytest.raises(ConfigError, match=r"^lreg\.perceptual='vgg' is not one of: lpips, laplacian, none$"):
        load_config("tiny-fmnist", ["lreg.perceptual=vgg"])
