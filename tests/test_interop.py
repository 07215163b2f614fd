"""repae.interop: the one safe weights reader, the one strict key check, the one KeyLayoutError (issue 25 item 2)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from repae.errors import ConfigError, MissingWeightsError
from repae.interop.io import (
    DEFAULT_LAYOUT_HINT,
    KeyLayoutError,
    check_keys,
    check_state_dict,
    read_weights,
    strip_wrappers,
    unwrap_entries,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "repae"


class _Touch:
    """Unpickling this object would run code: it creates ``marker`` (getattr(PosixPath, "touch")(marker))."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class _Exec:
    """Unpickling this object would run code: ``exec`` of a string that creates ``marker``."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('x')",))


def _evil(tmp_path: Path, *, zip_format: bool = True, kind: type = _Touch) -> tuple[Path, Path]:
    marker = tmp_path / "ran"
    payload = kind()
    payload.marker = str(marker)
    path = tmp_path / ("evil.pt" if zip_format else "evil-legacy.pt")
    torch.save({"weight": torch.ones(2), "payload": payload}, path, _use_new_zipfile_serialization=zip_format)
    return path, marker


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_with_code_is_refused_in_one_line(tmp_path, zip_format):
    path, marker = _evil(tmp_path, zip_format=zip_format)
    with pytest.raises(ConfigError) as err:
        read_weights(path, what="test weights file")
    msg = str(err.value)
    assert not marker.exists()
    assert "\n" not in msg and str(path) in msg and "is not a readable test weights file" in msg
    assert re.search(r"it pickles '(builtins\.)?getattr'", msg) and "no code from a weights file is ever run" in msg
    assert "torch.save(model.state_dict(), path)" in msg  # and the fix


def test_inert_mode_reads_the_tensors_and_runs_nothing(tmp_path):
    path, marker = _evil(tmp_path, kind=_Exec)
    obj = read_weights(path, inert=True)
    assert not marker.exists()
    assert torch.equal(obj["weight"], torch.ones(2)) and "inert" in repr(obj["payload"])
    # a call chain (getattr(...)(...)) cannot be rebuilt from placeholders: still refused, still nothing run
    path, marker = _evil(tmp_path, kind=_Touch)
    with pytest.raises(ConfigError, match="refused, no code from a weights file is ever run"):
        read_weights(path, inert=True)
    assert not marker.exists()


def test_reads_safetensors_and_weights_only_pickles(tmp_path):
    sd = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.zeros(2)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    save_file(sd, str(tmp_path / "w.bin"))  # safetensors content under another suffix: found by its header
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4), "step": 3}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.bin"):
        got = read_weights(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    obj = read_weights(tmp_path / "w.pt", mmap=True)
    assert isinstance(obj["args"], argparse.Namespace) and obj["args"].lr == 1e-4 and obj["step"] == 3
    assert torch.equal(obj["model"]["a.weight"], sd["a.weight"])


def test_missing_and_corrupt_files_are_one_line(tmp_path):
    with pytest.raises(MissingWeightsError, match="VAE weights not found at .*never downloaded"):
        read_weights(tmp_path / "nope.pt", what="VAE weights")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    zipped = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(64)}, zipped)
    zipped.write_bytes(zipped.read_bytes()[:200])  # truncated
    save_file({"w": torch.ones(64)}, str(tmp_path / "cut.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:100])
    for name in ("junk.pt", "cut.pt", "cut.safetensors"):
        with pytest.raises(ConfigError) as err:
            read_weights(tmp_path / name, fix="pass the released file")
        msg = str(err.value)
        assert "\n" not in msg and f"{name} is not a readable weights file" in msg, msg
        assert msg.endswith("; pass the released file"), msg


# ---------------------------------------------------------------------------------------------
# unwrapping
# ---------------------------------------------------------------------------------------------


def test_unwrap_entries_and_strip_wrappers():
    sd = {"w": torch.zeros(1)}
    assert unwrap_entries({"state_dict": {"model": sd}}, ("state_dict", "model"), levels=2) is sd
    assert unwrap_entries({"state_dict": {"model": sd}}, ("state_dict", "model")) == {"model": sd}  # one level
    assert unwrap_entries(sd, ("state_dict",)) is sd  # a bare state dict is returned as is
    assert unwrap_entries({"ema": sd, "model": {}}, ("ema", "model")) is sd  # order of entries decides
    assert list(strip_wrappers({"module._orig_mod.a.w": 1, "b._orig_mod.c": 2})) == ["a.w", "b.c"]
    with pytest.raises(KeyLayoutError, match="collides"):
        strip_wrappers({"module.a": 1, "a": 2})


# ---------------------------------------------------------------------------------------------
# the strict check
# ---------------------------------------------------------------------------------------------


def test_strict_key_check_message():
    expected = {f"k{i}": torch.zeros(2) for i in range(10)}
    found = {f"k{i}": torch.zeros(2) for i in range(3)} | {"x1": torch.zeros(1), "x2": torch.zeros(1)}
    with pytest.raises(KeyLayoutError) as err:
        check_state_dict(found, expected, what="w.pt vs tiny", hint="; pass the tiny preset")
    msg = str(err.value)
    assert msg == ("w.pt vs tiny: 7 missing key(s) 'k3', 'k4', 'k5', 'k6', 'k7', ... (+2); "
                   "2 unexpected key(s) 'x1', 'x2'; pass the tiny preset")
    # without a caller's hint the message still ends with a fix: the default one
    with pytest.raises(KeyLayoutError, match=r"^w: 1 tensor\(s\) with the wrong shape \('k1' \(3,\) vs \(2,\)\)"
                       + re.escape(DEFAULT_LAYOUT_HINT) + "$"):
        check_state_dict(dict(expected, k1=torch.zeros(3)), expected, what="w")
    with pytest.raises(KeyLayoutError, match="holds a Tensor, not a state dict"):
        check_state_dict(torch.zeros(1), expected, what="w")
    # keys only (e.g. a key map), and suffixes that may be absent
    check_keys(["a.weight"], ["a.weight", "bn.num_batches_tracked"], what="w", may_miss=("num_batches_tracked",))
    with pytest.raises(KeyLayoutError, match=r"^w: 1 missing key\(s\) 'bn.running_mean'" + re.escape(DEFAULT_LAYOUT_HINT)
                       + "$"):
        check_keys(["a.weight"], ["a.weight", "bn.running_mean"], what="w", may_miss=("num_batches_tracked",))
    check_state_dict(expected, {k: v.to("meta") for k, v in expected.items()}, what="meta")  # meta shapes work


# ---------------------------------------------------------------------------------------------
# one class, one reader
# ---------------------------------------------------------------------------------------------


def test_exactly_one_key_layout_error():
    from repae.interop import KeyLayoutError as package_level
    from repae.models.official import KeyLayoutError as official
    from repae.tokenizer import KeyLayoutError as tokenizer
    from repae.tokenizer.convert import KeyLayoutError as convert

    assert official is convert is tokenizer is package_level is KeyLayoutError
    assert issubclass(KeyLayoutError, ConfigError)
    defined = [p for p in SRC.rglob("*.py") if re.search(r"^class KeyLayoutError\b", p.read_text(), re.M)]
    assert [p.relative_to(SRC).as_posix() for p in defined] == ["interop/io.py"]


# Files that may read tensors without read_weights: the reader itself, training-checkpoint resume IO
# (safetensors + JSON, verified by its own manifest), the CLIP TorchScript branch, and two readers of
# files the package itself wrote that are not weights (analysis grid, training-checkpoint key listing).
ALLOWED_DIRECT_READS = {
    "interop/io.py", "interop/timm_vit.py", "training/checkpoint.py", "analysis/pipeline.py", "study/report.py",
    "ssl/train.py",  # its own per-epoch resume state (weights_only=True), like training/checkpoint.py
}


def test_every_weights_loader_uses_the_one_reader():
    direct = re.compile(r"(?<![`\w.])(torch\.load|load_file|safe_open|torch\.jit\.load)\(")  # code, not ``docs``
    offenders = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
                       if direct.search(p.read_text()) and p.relative_to(SRC).as_posix() not in ALLOWED_DIRECT_READS)
    assert not offenders, f"read weights through repae.interop.io.read_weights: {offenders}"
