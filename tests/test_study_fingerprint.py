"""A study's finished runs stay valid across versions that change no setting.

The fixture holds fingerprints written by the study of 2026-12-06 (code of 5e9d35d, and cf22a0d for
the RAE rows) and the config keys of 5e9d35d. Since then keys were added (RAE, DiT-DH, time shift,
collective timeout): each must be listed in ``repae.config.ADDED`` with its neutral value, and the
current code must accept every stored fingerprint, or a rerun of ``repae study`` would refuse (or
retrain) hours of finished runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from repae.config import ADDED, RENAMED, RENAMED_SECTIONS, RunConfig
from repae.errors import ConfigError
from repae.study.plan import DEFAULT_KINDS, EXTRAS, StudyConfig, build_plan
from repae.study.run import check_fingerprint, is_done
from repae.utils.io import write_json

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "study-fingerprints-2026-12-06.json").read_text())


def _plan(out: Path, **kw):
    cfg = StudyConfig(out=str(out), kinds=(*DEFAULT_KINDS, *EXTRAS["targets"], *EXTRAS["rae"]), **kw)
    return cfg, build_plan(cfg)


def _today(dotted: str) -> str:
    if dotted in RENAMED:
        return RENAMED[dotted]
    section, _, rest = dotted.partition(".")
    return f"{RENAMED_SECTIONS.get(section, section)}.{rest}"


def test_every_key_added_since_the_study_is_listed_with_its_neutral_value():
    then = {_today(k) for k in FIXTURE["config_keys_5e9d35d"]}
    run = RunConfig()
    now = {f"{s.name}.{f.name}" for s in dataclasses.fields(run) for f in dataclasses.fields(getattr(run, s.name))}
    added = sorted(now - then)
    assert added, "the fixture predates the RAE keys"
    missing = [k for k in added if k not in ADDED]
    assert not missing, f"list these new config keys in repae.config.ADDED with the value that changes nothing: {missing}"
    assert set(ADDED) <= now, f"ADDED names keys RunConfig no longer has: {sorted(set(ADDED) - now)}"
    for dotted, neutral in ADDED.items():  # the default is the neutral value: a fresh run behaves as before
        section, name = dotted.split(".")
        assert getattr(getattr(run, section), name) == neutral, dotted


@pytest.mark.parametrize("group", ["runs", "rae_runs"])
def test_finished_runs_of_the_study_are_still_done(tmp_path, group):
    cfg, plan = _plan(tmp_path / "study")
    for name, stored in FIXTURE[group].items():
        spec = plan.get(name)
        assert stored in spec.fingerprints(cfg), name
        folder = spec.run_dir(cfg.out) / "study"
        write_json(folder / "run.json", {"fingerprint": stored, "name": name, "settings": {}})
        write_json(folder / "done.json", {"fingerprint": stored, "name": name, "step": cfg.steps})
        check_fingerprint(spec, cfg)  # no error: resumable
        assert is_done(spec, cfg)
    # the primary fingerprint of the pre-RAE runs is today's: what new runs write
    assert all(plan.get(n).fingerprint(cfg) == fp for n, fp in FIXTURE["runs"].items())


def test_an_added_key_away_from_its_neutral_value_makes_a_run_stale(tmp_path):
    cfg, plan = _plan(tmp_path / "study", overrides=("model.dh_depth=2",))
    spec = plan.get("vanilla-s0")
    assert FIXTURE["runs"]["vanilla-s0"] not in spec.fingerprints(cfg)
    folder = spec.run_dir(cfg.out) / "study"
    write_json(folder / "run.json", {"fingerprint": FIXTURE["runs"]["vanilla-s0"], "name": "vanilla-s0",
                                     "settings": {"train.report": "false"}})
    with pytest.raises(ConfigError) as e:
        check_fingerprint(spec, cfg)
    msg = str(e.value)
    assert "made with other settings" in msg and "delete that run folder" in msg
    assert "train.report" not in msg  # an old key name is compared under its new name, not shown as a change
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------
# The weights files a run's settings name are recorded by content
# ---------------------------------------------------------------------------------------------


def _finish(spec, cfg, inputs=None):
    folder = spec.run_dir(cfg.out) / "study"
    mark = {"fingerprint": spec.fingerprint(cfg), "name": spec.name, "step": cfg.steps}
    if inputs is not None:
        mark["inputs"] = inputs
    write_json(folder / "run.json", {**mark, "settings": {}})
    write_json(folder / "done.json", mark)


def test_a_rebuilt_target_file_makes_the_runs_that_align_to_it_stale(tmp_path):
    from repae.encoders.registry import repae_cnn_p4_default_path
    from repae.study.run import record_inputs, run_inputs

    target = tmp_path / "cnn.safetensors"
    shutil.copy(repae_cnn_p4_default_path(), target)
    cfg, plan = _plan(tmp_path / "study", overrides=(f"align.encoder_weights=[{target}]",))
    repa, vanilla = plan.get("repa-s0"), plan.get("vanilla-s0")
    inputs = run_inputs(repa, cfg)
    assert set(inputs) == {"align.encoders[0] repae-cnn-p4", "tokenizer.weights"}
    assert "align.encoders[0] repae-cnn-p4" not in run_inputs(vanilla, cfg)  # vanilla reads no target
    _finish(repa, cfg, inputs)
    _finish(vanilla, cfg, run_inputs(vanilla, cfg))
    old = plan.get("repa-s1")
    _finish(old, cfg)  # finished before the record existed
    assert is_done(repa, cfg) and is_done(vanilla, cfg) and is_done(old, cfg)
    assert record_inputs(old, cfg) and not record_inputs(old, cfg)  # backfilled once, with today's files

    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same name, same size, other weights: e.g. scripts/make_encoder_asset.py --epochs 30
    target.write_bytes(bytes(data))
    for spec in (repa, old):
        assert not is_done(spec, cfg)
        with pytest.raises(ConfigError) as e:
            check_fingerprint(spec, cfg)
        assert "made with other weights (align.encoders[0] repae-cnn-p4" in str(e.value)
        assert "delete that run folder" in str(e.value)
    assert is_done(vanilla, cfg)
    check_fingerprint(vanilla, cfg)


def test_a_tokenizer_folder_is_compared_by_its_weights_and_configs_not_its_record(tmp_path):
    from repae.study.run import content_sha256
    from repae.tokenizer.registry import resolve_tokenizer_weights

    folder = tmp_path / "vae"
    shutil.copytree(resolve_tokenizer_weights("repae-vae-fmnist"), folder)
    before = content_sha256(folder)
    (folder / "record.json").write_text("{}")
    (folder / "NOTES.md").write_text("edited")
    assert content_sha256(folder) == before
    stats = json.loads((folder / "latent_stats.json").read_text())
    (folder / "latent_stats.json").write_text(json.dumps({**stats, "edited": True}))
    assert content_sha256(folder) != before
    assert content_sha256(tmp_path / "absent") is None
