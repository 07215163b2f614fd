"""Issue 14 item 6: every verb's bad input is one line (exit 2, or 1 for an unexpected failure), never a
traceback, and nothing half-written is left behind."""

from __future__ import annotations

import os

import numpy as np
import pytest

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
