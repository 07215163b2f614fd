"""Feature sources, reference batches, sample / reconstruction evaluation, the offline net and the CLIs."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from repae.cli import main
from repae.data.embedded import load_fashion_mnist
from repae.errors import ConfigError, MissingWeightsError
from repae.evaluation import features as feat
from repae.evaluation import metrics, offline_net
from repae.evaluation import reference as refmod


@pytest.fixture(scope="module")
def evalnet():
    return feat.get_extractor("evalnet-fmnist", device="cpu")


@pytest.fixture(scope="module")
def fmnist_test():
    x, y = load_fashion_mnist("test")  # uint8 [1000, 3, 32, 32], int64 [1000]
    return x, y


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------
# Offline evaluation network
# ---------------------------------------------------------------------------------------------


def test_shipped_evalnet_reaches_recorded_accuracy(fmnist_test):
    record = json.loads(offline_net.DEFAULT_RECORD.read_text())
    for key in ("command", "seed", "test_accuracy", "feature_space"):
        assert key in record
    assert offline_net.DEFAULT_WEIGHTS.stat().st_size < 4 * 2 ** 20
    x, y = fmnist_test
    acc = offline_net.class_accuracy(x, y)
    assert acc == pytest.approx(record["test_accuracy"], abs=0.005)
    assert acc > 0.85


def test_evalnet_output_dims_and_label(evalnet):
    fb = evalnet(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert fb.pool.shape == (2, 256) and fb.spatial.shape == (2, 512) and fb.logits.shape == (2, 10)
    assert "NOT comparable with published FID" in evalnet.feature_space
    fb64 = evalnet(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))  # other sizes are resized
    assert fb64.pool.shape == (1, 256)


def test_evalnet_missing_file(tmp_path):
    with pytest.raises(MissingWeightsError):
        offline_net.load_evalnet(tmp_path / "missing.safetensors")


def test_evalnet_training_step_runs():
    model = offline_net.EvalNet()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    loss = torch.nn.functional.cross_entropy(model.forward_unit(offline_net._augment(x, torch.Generator()))[2],
                                             torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Extractor registry
# ---------------------------------------------------------------------------------------------


def test_get_extractor_defaults_to_offline_net_with_warning(monkeypatch, caplog):
    monkeypatch.delenv("REPAE_INCEPTION_WEIGHTS", raising=False)
    with caplog.at_level(logging.WARNING):
        ext = feat.get_extractor(None, device="cpu")
    assert ext.name == "evalnet-fmnist"
    assert "NOT comparable" in caplog.text
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        feat.get_extractor("clip", device="cpu")
    with pytest.raises(MissingWeightsError):
        feat.get_extractor("inception", device="cpu")


@pytest.mark.parametrize("name", sorted(feat.EXTRACTORS))
def test_every_extractor_has_name_and_space(name):
    cls = feat.EXTRACTORS[name]
    assert cls.name == name


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def test_sources_yield_identical_batches(tmp_path, fmnist_test):
    from PIL import Image

    x = fmnist_test[0][:23]  # NCHW uint8
    np.savez(tmp_path / "plain.npz", arr_0=_nhwc(x))
    np.savez_compressed(tmp_path / "packed.npz", arr_0=_nhwc(x))
    folder = tmp_path / "png"
    folder.mkdir()
    for i, img in enumerate(_nhwc(x)):
        Image.fromarray(img).save(folder / f"{i:06d}.png")
    expected = torch.from_numpy(x)
    sources = [tmp_path / "plain.npz", str(tmp_path / "packed.npz"), folder, x, _nhwc(x), torch.from_numpy(x),
               x[:, 0], [x[:10], x[10:]], ((torch.from_numpy(x[:10]), 0), (torch.from_numpy(x[10:]), 1))]
    for src in sources:
        got = torch.cat(list(feat.iter_uint8_batches(src, batch_size=5)))
        assert torch.equal(got, expected), type(src)
    assert feat.count_images(tmp_path / "plain.npz") == 23
    assert feat.count_images(folder) == 23
    emb = next(feat.iter_uint8_batches("embedded:test", batch_size=7))
    assert torch.equal(emb, expected[:7])


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError):
        list(feat.iter_uint8_batches(tmp_path / "none.npz"))
    with pytest.raises(ConfigError):
        list(feat.iter_uint8_batches("imagenet"))
    with pytest.raises(TypeError, match="uint8"):
        list(feat.iter_uint8_batches(np.zeros((2, 3, 8, 8), np.float32)))
    np.savez(tmp_path / "nokey.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="arr_0"):
        list(feat.iter_uint8_batches(tmp_path / "nokey.npz"))


def test_compute_features_limits_and_keeps(evalnet, fmnist_test):
    x = fmnist_test[0][:50]
    f = feat.compute_features(x, evalnet, batch_size=16, progress=False, max_images=37, keep_images=20)
    assert len(f) == 37 and f.pool.shape == (37, 256) and f.spatial.shape == (37, 512)
    assert f.images.shape == (20, 32, 32, 3) and np.array_equal(f.images, _nhwc(x[:20]))
    full = feat.compute_features(x, evalnet, batch_size=50, progress=False)
    np.testing.assert_allclose(f.pool, full.pool[:37], rtol=1e-4, atol=1e-5)  # batching does not matter


# ---------------------------------------------------------------------------------------------
# Reference batches
# ---------------------------------------------------------------------------------------------


def test_reference_npz_round_trip_in_adm_layout(tmp_path, evalnet, fmnist_test):
    x = fmnist_test[0][:60]
    out = tmp_path / "ref.npz"
    ref = refmod.build_reference(x, evalnet, out, batch_size=32, pr_images=40, progress=False)
    with np.load(out) as z:
        assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s", "pool_features", "feature_space"} <= set(z.files)
        assert z["arr_0"].shape == (40, 32, 32, 3) and z["arr_0"].dtype == np.uint8
        assert z["mu"].shape == (256,) and z["sigma"].shape == (256, 256) and z["sigma_s"].shape == (512, 512)
    loaded = refmod.load_reference(out, evalnet)
    for k in ("mu", "sigma", "mu_s", "sigma_s", "pool_features"):
        np.testing.assert_array_equal(getattr(loaded, k), getattr(ref, k))
    assert loaded.num_images == 60 and loaded.feature_space == evalnet.feature_space
    assert not list(tmp_path.glob(".ref.npz.*"))  # no temporary left behind


def test_adm_reference_uses_stored_statistics(tmp_path, evalnet, fmnist_test):
    x = fmnist_test[0][:30]
    marker = np.full(256, 7.0)
    path = tmp_path / "adm.npz"
    np.savez(path, arr_0=_nhwc(x), mu=marker, sigma=np.eye(256), mu_s=np.zeros(512), sigma_s=np.eye(512))
    # an ADM batch is Inception space: the offline net must refuse it
    with pytest.raises(ConfigError, match="feature space"):
        refmod.load_reference(path, evalnet)

    class FakeInceptionSpace:  # same features, but claims to be the Inception extractor
        name, feature_space, device = "inception", "fake", torch.device("cpu")

        def __call__(self, images):
            return evalnet(images)

    ref = refmod.load_reference(path, FakeInceptionSpace(), progress=False)
    np.testing.assert_array_equal(ref.mu, marker)  # stored mu, not recomputed
    assert ref.pool_features.shape == (30, 256)  # arr_0 features computed for P/R


def test_images_only_reference_gets_statistics(tmp_path, evalnet, fmnist_test):
    x = fmnist_test[0][:30]
    path = tmp_path / "imgs.npz"
    np.savez(path, arr_0=_nhwc(x))

    class Claim:  # images-only batch without a label is treated as Inception space
        name, feature_space, device = "inception", "fake", torch.device("cpu")

        def __call__(self, images):
            return evalnet(images)

    ref = refmod.load_reference(path, Claim(), progress=False)
    f = feat.compute_features(x, evalnet, progress=False)
    mu, sigma = metrics.feature_statistics(f.pool)
    np.testing.assert_allclose(ref.mu, mu, rtol=1e-5, atol=1e-6)
    assert ref.num_images == 30


# ---------------------------------------------------------------------------------------------
# evaluate_samples / evaluate_reconstruction
# ---------------------------------------------------------------------------------------------


def test_evaluate_samples_against_itself(tmp_path, evalnet, fmnist_test):
    x, y = fmnist_test[0][:80], fmnist_test[1][:80]
    ref = refmod.compute_reference(x, evalnet, progress=False)
    np.savez(tmp_path / "s.npz", arr_0=_nhwc(x), arr_1=y)
    res = refmod.evaluate_samples(tmp_path / "s.npz", ref, evalnet, progress=False)
    assert abs(res["fid"]) < 1e-3 and abs(res["sfid"]) < 1e-3  # N < D: singular covariances
    assert res["precision"] == 1.0 and res["recall"] == 1.0
    assert res["class_accuracy"] > 0.8  # arr_1 labels picked up automatically
    assert 1.0 < res["inception_score"] <= 10.0
    assert res["feature_space"] == evalnet.feature_space and res["num_samples"] == 80
    noise = np.random.default_rng(0).integers(0, 256, (80, 3, 32, 32), dtype=np.uint8)
    bad = refmod.evaluate_samples(noise, ref, evalnet, progress=False)
    assert bad["fid"] > 10 * max(res["fid"], 1e-3) and bad["precision"] < 0.5


class _ScaleTokenizer(torch.nn.Module):
    """encode(x) -> posterior with mode()/sample(); decode(z) = scale * z (a known distortion)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale), requires_grad=False)

    def encode(self, x):
        return types.SimpleNamespace(mode=lambda: x, sample=lambda: x)

    def decode(self, z):
        return self.scale * z


def test_evaluate_reconstruction(evalnet, fmnist_test):
    x = fmnist_test[0][:40]
    perfect = refmod.evaluate_reconstruction(_ScaleTokenizer(1.0), x, evalnet, batch_size=16, progress=False,
                                             lpips=lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)))
    assert abs(perfect["rfid"]) < 1e-4 and perfect["ssim"] == pytest.approx(1.0) and perfect["lpips"] == 0.0
    lossy = refmod.evaluate_reconstruction(_ScaleTokenizer(0.8), x, evalnet, batch_size=16, max_images=33,
                                           progress=False)
    xt = torch.from_numpy(x[:33]).float() / 127.5 - 1
    assert lossy["psnr"] == pytest.approx(metrics.psnr(xt, 0.8 * xt).mean().item(), rel=1e-5)
    assert lossy["num_images"] == 33 and lossy["rfid"] > 0 and lossy["ssim"] < 1 and "lpips" not in lossy


# ---------------------------------------------------------------------------------------------
# CLIs
# ---------------------------------------------------------------------------------------------


def test_cli_reference_and_evaluate(tmp_path, capsys, fmnist_test):
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    np.savez(tmp_path / "imgs.npz", arr_0=_nhwc(x), arr_1=y)
    ref = tmp_path / "ref.npz"
    assert main(["reference", "--source", str(tmp_path / "imgs.npz"), "--out", str(ref), "--device", "cpu",
                 "--no-progress", "--extractor", "evalnet-fmnist"]) == 0
    assert ref.is_file()
    capsys.readouterr()
    out = tmp_path / "m.json"
    assert main(["evaluate", "--samples", str(tmp_path / "imgs.npz"), "--reference", str(ref), "--out", str(out),
                 "--device", "cpu", "--no-progress", "--extractor", "evalnet-fmnist"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("fid ") and "NOT comparable" in line
    res = json.loads(out.read_text())
    assert abs(res["fid"]) < 1e-3 and res["precision"] == 1.0 and "class_accuracy" in res


def test_cli_evaluate_streams_from_checkpoint(tmp_path, monkeypatch, capsys, fmnist_test):
    x, y = fmnist_test
    by_class = {c: torch.from_numpy(x[y == c]) for c in range(10)}
    calls = []

    class FakeGenerator:
        num_classes = 10

        def __call__(self, labels, *, seeds, **kw):
            calls.append((len(labels), seeds[0], kw))
            return torch.stack([by_class[int(c)][s % 100] for c, s in zip(labels, seeds)])  # uint8 [b, 3, 32, 32]

    import repae.cli.evaluate as evaluate_cli

    monkeypatch.setattr(evaluate_cli, "load_generator", lambda path, **kw: FakeGenerator())
    out = tmp_path / "g.json"
    assert main(["evaluate", "--checkpoint", "runs/x", "--num-samples", "50", "--batch-size", "20",
                 "--reference", "embedded:test", "--cfg-scale", "1.5", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--extractor", "evalnet-fmnist"]) == 0
    res = json.loads(out.read_text())
    assert res["num_samples"] == 50 and res["class_accuracy"] > 0.8 and res["cfg_scale"] == 1.5
    assert [c[0] for c in calls] == [20, 20, 10] and calls[0][2]["cfg_scale"] == 1.5
    assert calls[0][2]["sampler"] == "auto"  # unset flags: the default sample config (the model picks)
    assert "fid" in capsys.readouterr().out


def test_cli_inception_requires_reference(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(feat, "get_extractor", lambda *a, **k: types.SimpleNamespace(name="inception"))
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["evaluate", "--samples", str(tmp_path / "s.npz"), "--device", "cpu"]) == 2
    assert "--reference is required" in capsys.readouterr().err


def test_module_files_exist():
    root = Path(feat.__file__).parent
    for name in ("metrics", "inception", "features", "reference", "offline_net"):
        assert (root / f"{name}.py").is_file()


def test_evaluate_reconstruction_with_the_real_tokenizer_api(evalnet):
    from repae.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f4d4").eval()  # untrained: only the plumbing is checked
    res = refmod.evaluate_reconstruction(tok, "embedded:test", evalnet, batch_size=4, max_images=8, progress=False)
    assert res["num_images"] == 8 and np.isfinite(res["rfid"]) and -1 <= res["ssim"] <= 1
