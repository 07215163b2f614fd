"""Issue 14 item 6: every verb's bad input is one line (exit 2, or 1 for an unexpected failure), never a
traceback, and nothing half-written is left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import repae
from repae.cli import main

pytestmark = pytest.mark.slow  # 25 real verb runs, about a minute; CI runs them once


@pytest.fixture
def files(tmp_path):
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))  # wrong dtype
    np.savez(tmp_path / "rank2.npz", arr_0=np.zeros((4, 8), np.uint8))  # wrong rank
    np.savez(tmp_path / "chan5.npz", arr_0=np.zeros((4, 8, 8, 5), np.uint8))  # wrong channel count
    np.savez(tmp_path / "object.npz", arr_0=np.array([None, 1], dtype=object))  # object array (pickle)
    np.savez(tmp_path / "nokey.npz", images=np.zeros((4, 8, 8, 3), np.uint8))  # no arr_0
    np.savez(tmp_path / "chan2.npz", arr_0=np.zeros((4, 8, 8, 2), np.uint8))  # 2 channels
    np.savez(tmp_path / "fewlabels.npz", arr_0=np.zeros((16, 8, 8, 3), np.uint8), labels=np.arange(5))  # 16 vs 5
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "000000.png").write_bytes(b"not a png")  # undecodable image
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    (tmp_path / "junk.h5").write_bytes(b"this is not hdf5")
    (tmp_path / "empty").mkdir()
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    yield tmp_path
    ro.chmod(0o700)


CASES = [
    (["evaluate", "--samples", "{t}/float.npz", "--device", "cpu", "--no-progress"], "uint8"),
    (["evaluate", "--samples", "{t}/rank2.npz", "--device", "cpu", "--no-progress"], "rank2.npz"),
    (["evaluate", "--samples", "{t}/chan5.npz", "--device", "cpu", "--no-progress"], "chan5.npz"),
    (["evaluate", "--samples", "{t}/object.npz", "--device", "cpu", "--no-progress"], "object.npz"),
    (["evaluate", "--samples", "{t}/nokey.npz", "--device", "cpu", "--no-progress"], "arr_0"),
    (["evaluate", "--samples", "{t}/junk.npz", "--device", "cpu", "--no-progress"], "junk.npz"),
    (["evaluate", "--samples", "{t}/missing.npz", "--device", "cpu", "--no-progress"], "missing.npz"),
    (["evaluate", "--samples", "{t}/empty", "--device", "cpu", "--no-progress"], "empty"),
    (["evaluate", "--recon", "{t}/nothing-here", "--device", "cpu", "--no-progress"], "nothing-here"),
    (["evaluate", "--checkpoint", "{t}/no-run", "--device", "cpu", "--no-progress"], "no-run"),
    (["reference", "--source", "{t}/junk.h5", "--out", "{t}/ref.npz", "--device", "cpu", "--no-progress"],
     "junk.h5"),
    (["reference", "--source", "{t}/empty", "--out", "{t}/ref.npz", "--device", "cpu", "--no-progress"], "empty"),
    (["reference", "--source", "embedded:test", "--out", "{t}/readonly/ref.npz", "--device", "cpu",
      "--no-progress", "--max-images", "8"], "readonly"),
    (["latent-stats", "--data", "{t}/junk.npz", "--device", "cpu"], "junk.npz"),
    (["latent-stats", "--data", "embedded:valid"], "train or test"),
    (["cache-latents", "--vae", "{t}/no-vae", "--out", "{t}/cache"], "no-vae"),
    (["cache-latents", "--vae", "repae-vae-fmnist", "--data", "{t}/float.npz", "--out", "{t}/cache"], "float.npz"),
    (["cache-latents", "--vae", "repae-vae-fmnist", "--data", "{t}/chan2.npz", "--out", "{t}/cache"], "chan2.npz"),
    (["cache-latents", "--vae", "repae-vae-fmnist", "--data", "{t}/pngs", "--out", "{t}/cache"], "no readable images"),
    (["evaluate", "--samples", "{t}/fewlabels.npz", "--device", "cpu", "--no-progress"], "5 labels for 16 images"),
    (["reference", "--source", "{t}/fewlabels.npz", "--out", "{t}/ref.npz", "--device", "cpu", "--no-progress"],
     "5 labels for 16 images"),
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}/s.npz"], "no-run"),
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}/s.npz", "--cfg-scale", "0.5"], "--cfg-scale"),
    (["export-vae", "{t}/no-run", "--out", "{t}/vae-out"], "no-run"),
    (["analyze", "{t}/no-run"], "no-run"),
    (["report", "{t}/no-run"], "no-run"),
    (["train", "train.output_dir={t}/runs", "optim.ema_decay=2"], "ema_decay"),
    (["train", "train.output_dir={t}/runs", "data.source={t}/junk.npz"], "junk.npz"),
    (["train", "train.output_dir={t}/runs", "train.mixed_precision=fp8"], "mixed_precision"),
    (["config", "--config", "no-such-preset"], "no-such-preset"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(c[0][:3]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line(files, capsys, argv, needle):
    if needle == "readonly" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    argv = [a.format(t=files) for a in argv]
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.startswith("repae ")]  # tqdm / logging lines are not the error
    assert rc in (1, 2), rc
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in capsys.readouterr().err
    leftovers = [p.name for p in files.iterdir() if p.name.startswith(".") or p.name in ("ref.npz", "s.npz", "cache",
                                                                                          "vae-out")]
    assert not leftovers, leftovers


# --- second hostile-user pass: config values, output paths, devices, non-finite numbers ------------------------


@pytest.fixture
def more_files(files):
    (files / "afile").write_text("a file where a folder is expected")
    (files / "bad.yaml").write_text("train: [\n")  # YAML syntax error
    (files / "list.yaml").write_text("- 1\n")  # a list, not a mapping of sections
    np.savez(files / "one.npz", arr_0=np.zeros((1, 8, 8, 3), np.uint8))  # one image: no covariance
    vae = files / "damaged-vae"  # the shipped tokenizer folder with its weights cut short (a broken copy)
    shutil.copytree(Path(repae.__file__).parent / "assets" / "repae-vae-fmnist", vae)
    weights = vae / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return files


MORE_CASES = [
    (["config", "train.batch_size="], "train.batch_size cannot be empty"),  # was TypeError deep in training
    (["config", "optim.betas=5"], "optim.betas expects a list of 2 numbers"),  # was TypeError
    (["config", "optim.betas=[a,b]"], "optim.betas expects a number"),  # was ValueError
    (["config", "tokreg.se_factors=[x]"], "tokreg.se_factors expects an integer"),  # was kept as a string
    (["config", "train.batch_size=["], "not valid YAML"),  # was yaml ParserError
    (["config", "--config", "{t}/bad.yaml"], "bad.yaml cannot be read as YAML"),
    (["config", "--config", "{t}/list.yaml"], "must be a mapping of sections"),  # was TypeError
    (["config", "sample.num_steps=0"], "sample.num_steps=0 is out of range"),  # was printed as valid
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}"], "is a folder"),  # was rc 0, nothing written
    (["sample", "--checkpoint", "{t}/no-run", "--out-dir", "{t}/afile"], "is a file"),  # was FileExistsError
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}/afile/s.npz"], "is a file, not a folder"),
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}/s.npz", "--device", "nope"], "--device"),
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}/s.npz", "--num-classes", "3"],
     "apply to official checkpoint files"),  # was silently ignored for a run folder
    (["export-vae", "{t}/no-run", "--out", ""], "--out is empty"),  # wrote the VAE into the working folder
    (["export-vae", "{t}/no-run", "--out", "{t}/afile"], "is a file"),
    (["export", "{t}/no-run", "--out", "{t}/vae-out", "--vae-name", "../escape"], "--vae-name"),  # wrote outside --out
    (["evaluate", "--samples", "{t}/float.npz", "--out", "{t}", "--device", "cpu", "--no-progress"], "is a folder"),
    (["evaluate", "--samples", "{t}/one.npz", "--device", "cpu", "--no-progress"], "at least 2 images"),
    (["evaluate", "--samples", "{t}/float.npz", "--reference", "{t}/junk.npz", "--device", "cpu", "--no-progress"],
     "not a readable .npz"),  # was BadZipFile
    (["reference", "--source", "embedded:test", "--out", "{t}/empty", "--device", "cpu", "--no-progress"],
     "is a folder"),
    (["latent-stats", "--device", "gpu"], "--device 'gpu' is not a torch device"),
    (["latent-stats", "--out", "{t}/afile/stats.json", "--device", "cpu"], "is a file, not a folder"),
    (["analyze", "{t}/no-run", "--t", "2"], "--t must be in [0, 1]"),  # was accepted
    (["pretrain-encoder", "--lr", "-1", "--epochs", "1", "--out", "{t}/enc.safetensors", "--no-probe"],
     "--lr must be a finite number > 0"),  # trained with a negative lr
    (["study", "--set", "train.batch_size=abc", "--dry-run"], "--set: train.batch_size expects an integer"),
    (["train", "tokenizer.weights={t}/damaged-vae", "train.output_dir={t}/run", "train.max_steps=1"],
     "damaged"),  # a truncated tokenizer: one line, no run folder
    (["sample", "--checkpoint", "{t}/no-run", "--out-npz", "{t}/s.txt"], "must end in .npz"),  # evaluate could not read it
    (["reference", "--source", "embedded:test", "--out", "{t}/ref", "--device", "cpu", "--no-progress"],
     "must end in .npz"),  # was refused only after the features were extracted
    (["pretrain-encoder", "--epochs", "1", "--out", "{t}/enc.json", "--no-probe"],
     "must end in .safetensors"),  # the record (same stem, .json) overwrote the weights
]


@pytest.mark.parametrize("argv,needle", MORE_CASES, ids=[" ".join(c[0][:3]) + f" #{i}" for i, c in enumerate(MORE_CASES)])
def test_more_bad_input_is_one_line(more_files, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(more_files)
    argv = [a.format(t=more_files) for a in argv]
    before = sorted(p.name for p in more_files.iterdir())
    rc = main(argv)
    captured = capsys.readouterr()
    err = [line for line in captured.err.strip().splitlines() if line.startswith("repae ")]
    assert rc == 2, (rc, err)
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in more_files.iterdir()) == before  # nothing written, not even in the cwd


ARGPARSE_CASES = [
    (["sample", "--checkpoint", "x", "--out-npz", "s.npz", "--cfg-scale", "nan"], "--cfg-scale"),  # sampled NaNs
    (["sample", "--checkpoint", "x", "--out-npz", "s.npz", "--cfg-scale", "inf"], "--cfg-scale"),  # black images
    (["latent-stats", "--batch-size", "0"], "--batch-size"),  # was DataLoader's ValueError
    (["latent-stats", "--max-images", "-5"], "--max-images"),  # silently used 59 images
    (["latent-stats", "--resolution", "0"], "--resolution"),  # silently used the default
    (["cache-latents", "--vae", "v", "--out", "o", "--num-workers", "-1"], "--num-workers"),
    (["reference", "--source", "s", "--out", "o.npz", "--batch-size", "-1"], "--batch-size"),
    (["bench", "--threads", "-1"], "--threads"),  # was torch's RuntimeError
]


@pytest.mark.parametrize("argv,flag", ARGPARSE_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in ARGPARSE_CASES])
def test_bad_number_is_argparse_usage_error(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"repae {argv[0]}: error: argument {flag}"), err[-1]


def test_config_lists_and_optional_keys():
    from repae.config import load_config

    cfg = load_config("tiny-fmnist", ["tokreg.se_factors=2,4", "align.encoders=[]", "train.init_from=",
                                      "optim.betas=[0.9, 0.95]"])
    assert cfg.tokreg.se_factors == [2, 4] and cfg.align.encoders == [] and cfg.train.init_from is None
    assert cfg.optim.betas == (0.9, 0.95)


def test_labels_outside_the_networks_classes_leave_class_accuracy_out(files, capsys):
    np.savez(files / "labbig.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8), labels=np.array([5000, 1, 2, 3]))
    with pytest.warns(UserWarning, match="class accuracy left out"):
        rc = main(["evaluate", "--samples", str(files / "labbig.npz"), "--device", "cpu", "--no-progress"])
    assert rc == 0 and "class_acc" not in capsys.readouterr().out  # was a silent class accuracy of 0
