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
