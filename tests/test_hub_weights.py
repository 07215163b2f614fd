"""Single weight files by Hugging Face hub id (issue 22 item 6): LPIPS's VGG16, the FID Inception and published
generator checkpoints resolve through a fake huggingface_hub cache in a temp folder, load exactly as the same
file given by path, and an uncached id is one line naming the id, the files and the cache folder. Nothing here
touches the network (conftest's socket guard fails any attempt), with or without ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from repae.errors import MissingWeightsError
from repae.interop.hub import resolve_weights_file
from test_official_checkpoints import NUM_CLASSES, official_shapes, random_state, save_training_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_repo(tmp_path: Path, monkeypatch, repo: str, files: dict[str, Path | bytes]) -> Path:
    """The huggingface_hub cache layout (``models--owner--name/{refs/main, blobs/, snapshots/<commit>/}``,
    snapshot entries are relative links to blobs) in ``tmp_path/hf-cache``, holding ``files`` (a source file,
    linked rather than copied, or bytes) as repository ``repo``; returns the snapshot folder."""
    cache = tmp_path / "hf-cache"
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(COMMIT)
    (entry / "blobs").mkdir(exist_ok=True)
    snapshot = entry / "snapshots" / COMMIT
    for i, (name, src) in enumerate(files.items()):
        blob = entry / "blobs" / f"blob{i:040d}"
        if isinstance(src, bytes):
            blob.write_bytes(src)
        else:
            blob.symlink_to(Path(src).resolve())
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local path of the id's name
    return snapshot


# ---------------------------------------------------------------------------------------------
# the helper itself
# ---------------------------------------------------------------------------------------------


def test_local_paths_and_non_ids_pass_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    names = ("model.safetensors",)
    local = tmp_path / "owner" / "name" / "w.pth"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"x")
    for spec in (None, Path("someone/repo"), "owner/name/w.pth", "weights/vgg16.pth", "/abs/a/b.pt", "a/b/../c.pt",
                 "./a/b/c.pt", "~/a/b.pt", "a/b/c"):
        assert resolve_weights_file(spec, names, "w") is spec
    (tmp_path / "someone" / "repo").mkdir(parents=True)
    assert resolve_weights_file("someone/repo", names, "w") == "someone/repo"  # a local folder wins


# ---------------------------------------------------------------------------------------------
# VGG16 for LPIPS (lreg.vgg_weights, --lpips-vgg-weights, $REPAE_VGG16_WEIGHTS)
# ---------------------------------------------------------------------------------------------


def test_vgg_hub_id_loads_as_the_file(vgg_file, tmp_path, monkeypatch):
    from repae.losses.perceptual import VGG16_ENV, build_vgg16_features, resolve_vgg_weights

    path, _ = vgg_file
    snapshot = hub_repo(tmp_path, monkeypatch, "someone/vgg16", {"vgg16-397923af.pth": path, "README.md": b"hi"})
    assert resolve_vgg_weights("someone/vgg16") == snapshot / "vgg16-397923af.pth"
    assert resolve_vgg_weights("someone/vgg16/vgg16-397923af.pth") == snapshot / "vgg16-397923af.pth"
    monkeypatch.setenv(VGG16_ENV, "someone/vgg16")
    assert resolve_vgg_weights(None) == snapshot / "vgg16-397923af.pth"
    by_id, by_path = build_vgg16_features("someone/vgg16").state_dict(), build_vgg16_features(path).state_dict()
    assert set(by_id) == set(by_path) and all(torch.equal(v, by_path[k]) for k, v in by_id.items())


# ---------------------------------------------------------------------------------------------
# FID Inception (repae evaluate/reference/analyze --inception-weights, $REPAE_INCEPTION_WEIGHTS)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from repae.evaluation import inception as inc

    torch.manual_seed(0)
    state = inc.FIDInceptionV3().state_dict()
    path = tmp_path_factory.mktemp("inception") / inc.WEIGHTS_FILENAME
    torch.save(state, path)  # ~96 MB
    return path, state


def test_inception_hub_id_loads_as_the_file(inception_file, tmp_path, monkeypatch):
    from repae.evaluation import inception as inc
    from repae.evaluation.features import InceptionExtractor, get_extractor

    path, state = inception_file
    snapshot = hub_repo(tmp_path, monkeypatch, "someone/fid-inception", {inc.WEIGHTS_FILENAME: path})
    assert inc.resolve_weights_path("someone/fid-inception") == snapshot / inc.WEIGHTS_FILENAME
    assert inc.resolve_weights_path(f"someone/fid-inception/{inc.WEIGHTS_FILENAME}") == snapshot / inc.WEIGHTS_FILENAME
    monkeypatch.setenv(inc.WEIGHTS_ENV, "someone/fid-inception")
    ext = get_extractor(None, device="cpu")  # the env var names a cached id: the real Inception is picked
    assert isinstance(ext, InceptionExtractor)
    loaded = ext.module.state_dict()
    by_path = inc.load_inception(path).state_dict()
    assert set(loaded) == set(by_path) and all(torch.equal(v, by_path[k]) for k, v in loaded.items())
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


# ---------------------------------------------------------------------------------------------
# published checkpoints (train.init_from, repae sample/evaluate --checkpoint, load_official_weights)
# ---------------------------------------------------------------------------------------------


def test_checkpoint_hub_id_loads_as_the_file(tmp_path, monkeypatch):
    from repae.cli.common import load_generator
    from repae.errors import ConfigError
    from repae.models import build_model
    from repae.models.official import load_official_weights
    from repae.training.builders import init_generator_weights

    sd = random_state(official_shapes("repa", z_dims=(32,)), seed=8)
    path = tmp_path / "c.pt"
    save_training_checkpoint(path, sd, sd)
    # the REPA-E generator repositories keep the file in checkpoints/
    snapshot = hub_repo(tmp_path, monkeypatch, "someone/sit-repa", {"checkpoints/0400000.pt": path})

    def fresh():
        return build_model("SiT-T/1", input_size=8, in_channels=4, num_classes=NUM_CLASSES, z_dims=(32,))

    by_path, by_id, by_file = fresh(), fresh(), fresh()
    load_official_weights(by_path, path)
    info = load_official_weights(by_id, "someone/sit-repa")
    assert info.source == str(snapshot / "checkpoints" / "0400000.pt") and info.layout == "repa"
    note = init_generator_weights(SimpleNamespace(train=SimpleNamespace(init_from="someone/sit-repa/checkpoints/"
                                                                                  "0400000.pt")), by_file)
    assert note.startswith("initialised the generator from someone/sit-repa/checkpoints/0400000.pt (repa layout")
    want = by_path.state_dict()
    for model in (by_id, by_file):
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # repae sample / evaluate --checkpoint: the id reaches the file (which then asks for --model)
    with pytest.raises(ConfigError, match=r"0400000\.pt is a checkpoint file, not a repae run: pass --model"):
        load_generator("someone/sit-repa", ema=True, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# not cached / cached without the file: one line, never the network
# ---------------------------------------------------------------------------------------------


def _vgg(spec):
    from repae.losses.perceptual import build_vgg16_features

    return build_vgg16_features(spec)


def _inception(spec):
    from repae.evaluation.inception import load_inception

    return load_inception(spec)


def _checkpoint(spec):
    from repae.cli.common import load_generator

    return load_generator(spec, ema=True, device=torch.device("cpu"))


@pytest.mark.parametrize("offline", ["1", None])
@pytest.mark.parametrize("load, files", [
    (_vgg, "vgg16-397923af.pth or model.safetensors or pytorch_model.bin"),
    (_inception, "pt_inception-2015-12-05-6726825d.pth or model.safetensors"),
    (_checkpoint, "model.safetensors or pytorch_model.bin or last.pt"),
], ids=["vgg", "inception", "checkpoint"])
def test_uncached_id_is_one_line(load, files, offline, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        load("someone/weights")
    text = str(err.value)
    assert "\n" not in text and "'someone/weights' is no local path" in text and "never downloads" in text
    assert files in text and str(tmp_path / "empty-cache") in text
    with pytest.raises(MissingWeightsError) as err:  # a file inside the repository: that file is named
        load("someone/weights/sub/w.safetensors")
    text = str(err.value)
    assert "\n" not in text and "'someone/weights/sub/w.safetensors' is no local path" in text
    assert "huggingface-cli download someone/weights sub/w.safetensors" in text


@pytest.mark.parametrize("load", [_vgg, _inception, _checkpoint], ids=["vgg", "inception", "checkpoint"])
def test_cached_repo_without_the_file_names_what_it_has(load, tmp_path, monkeypatch):
    hub_repo(tmp_path, monkeypatch, "someone/other", {"README.md": b"no weights", "config.json": b"{}"})
    for spec, missing in (("someone/other", "holds none of "), ("someone/other/w.pt", "holds none of w.pt")):
        with pytest.raises(MissingWeightsError) as err:
            load(spec)
        text = str(err.value)
        assert "\n" not in text and missing in text and "README.md, config.json" in text and "someone/other" in text
