"""The command line: every verb has --help, bad input gives one line and exit code 2."""

from __future__ import annotations

import pytest

from repae.cli import VERBS, main


def test_top_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert f"repae {verb}" in capsys.readouterr().out


def test_unknown_verb_errors(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "unknown verb" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override",
    ["align.depth=9", "train.recipe=nope", "data.resolution=30", "train.nonexistent_key=1"],
)
def test_bad_train_config_is_one_line(override, tmp_path, capsys):
    code = main(["train", f"train.output_dir={tmp_path}", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "error" in err
    assert not any(tmp_path.iterdir())


def test_config_prints_resolved_overrides(capsys):
    assert main(["config", "train.batch_size=12", "model.preset=SiT-B/2"]) == 0
    out = capsys.readouterr().out
    assert '"batch_size": 12' in out and '"SiT-B/2"' in out
