"""The FID InceptionV3 loader on random weights of the exact architecture (no real weights offline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import inception as tv

from repae.errors import MissingWeightsError
from repae.evaluation import inception as inc
from repae.evaluation.features import InceptionExtractor, get_extractor


@pytest.fixture(scope="session")
def fake_weights(tmp_path_factory):
    """A random state dict in the pt_inception-2015-12-05 layout (~96 MB), written once per session."""
    torch.manual_seed(0)
    model = inc.FIDInceptionV3()
    for m in model.modules():  # non-trivial BN statistics so a wrong load would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("inception") / inc.WEIGHTS_FILENAME
    state = model.state_dict()
    torch.save(state, path)
    return path, state


def test_key_layout_is_the_ported_file():
    state = inc.FIDInceptionV3().state_dict()
    assert len(state) == 566  # offline-assets.md: 566 tensors
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")
               and "running" not in k) == 23_850_960
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in state)


def test_loader_is_strict_and_outputs_adm_dims(fake_weights):
    path, state = fake_weights
    model = inc.load_inception(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    pool, spatial, logits = model(x)
    assert pool.shape == (2, inc.POOL_DIM) == (2, 2048)
    assert spatial.shape == (2, inc.SPATIAL_DIM) == (2, 2023)
    assert logits.shape == (2, 1008)


def test_outputs_follow_adm_definitions(fake_weights):
    """spatial = Mixed_6d.branch1x1 (post-ReLU) first 7 channels in NHWC order; logits have no bias."""
    model = inc.load_inception(fake_weights[0])
    captured = {}
    hook = model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.setdefault("b", o))
    x = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    pool, spatial, logits = model(x)
    hook.remove()
    b = captured["b"]  # [1, 192, 17, 17]
    assert b.shape == (1, 192, 17, 17) and (b >= 0).all()
    assert torch.equal(spatial, b[:, :7].permute(0, 2, 3, 1).reshape(1, -1))
    assert torch.allclose(logits, pool @ model.fc.weight.T)
    assert not torch.allclose(logits, model.fc(pool))  # the bias is NOT added (random bias is non-zero)


def test_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingWeightsError) as err:
        inc.load_inception(None)
    msg = str(err.value)
    for needle in (inc.WEIGHTS_FILENAME, "--inception-weights", inc.WEIGHTS_ENV, "evalnet-fmnist"):
        assert needle in msg
    assert "\n" not in msg
    with pytest.raises(MissingWeightsError, match="looked for"):
        inc.load_inception(tmp_path / "nope.pth")


def test_wrong_layout_is_rejected(tmp_path):
    tv_model = tv.Inception3(num_classes=1000, aux_logits=True, init_weights=False)  # torchvision ImageNet layout
    path = tmp_path / "tv.pth"
    torch.save(tv_model.state_dict(), path)
    with pytest.raises((ValueError, RuntimeError)):
        inc.load_inception(path)


def test_num_batches_tracked_may_be_absent(fake_weights, tmp_path):
    _, state = fake_weights
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "trimmed.pth"
    torch.save(trimmed, path)
    assert len(trimmed) < len(state)  # the fixture has the counters: something was removed
    loaded = inc.load_inception(path).state_dict()
    assert set(loaded) == set(state)  # the counters are still there (left at their defaults) ...
    for k, v in trimmed.items():  # ... and every tensor that was in the file was loaded
        assert torch.equal(loaded[k], v), k


def test_env_var_selects_inception(fake_weights, monkeypatch):
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(fake_weights[0]))
    ext = get_extractor(None, device="cpu")
    assert isinstance(ext, InceptionExtractor)
    fb = ext(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    assert fb.pool.shape == (1, 2048) and fb.spatial.shape == (1, 2023) and fb.logits.shape == (1, 1008)


def test_fid_blocks_differ_from_torchvision_only_in_pooling():
    torch.manual_seed(0)
    x = torch.rand(1, 2048, 4, 4)
    e2 = inc.FIDInceptionE(2048, pool=inc._max_pool_same).eval()
    ref = tv.InceptionE(2048).eval()
    ref.load_state_dict(e2.state_dict())
    with torch.no_grad():
        ours, theirs = e2._forward(x), ref._forward(x)
        for a, b in zip(ours[:3], theirs[:3]):
            assert torch.allclose(a, b)
        assert torch.allclose(ours[3], e2.branch_pool(F.max_pool2d(x, 3, 1, 1)))
        assert not torch.allclose(ours[3], theirs[3])
    a = inc.FIDInceptionA(8, pool_features=4).eval()
    with torch.no_grad():
        y = torch.rand(1, 8, 5, 5)
        assert torch.allclose(a._forward(y)[3], a.branch_pool(F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)))


def test_tf1_resize():
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    up = inc.resize_bilinear_tf1(ramp, 8)
    assert up[0, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]  # no half-pixel offset
    x = torch.rand(2, 3, 7, 7)
    assert torch.equal(inc.resize_bilinear_tf1(x, 7), x)
    down = inc.resize_bilinear_tf1(torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8), 4)
    assert down[0, 0, 0].tolist() == [0.0, 2.0, 4.0, 6.0]  # samples at i * in / out


def test_preprocess_modes():
    u = torch.full((1, 3, 299, 299), 255, dtype=torch.uint8)
    assert inc._preprocess(u, "tf1").max().item() == pytest.approx(127 / 128)
    assert inc._preprocess(u, "pytorch-fid").max().item() == pytest.approx(1.0)
    with pytest.raises(TypeError):
        inc._preprocess(u.float(), "tf1")
