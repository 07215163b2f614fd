"""Tests for repae.data: folder policy, ADM crop, npz/h5 round trips, embedded set, sampler."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from repae.data import build_dataset, build_loader, load_fashion_mnist
from repae.data.embedded import CLASS_NAMES, EMBEDDED_PATH, expected_sha256, file_sha256
from repae.data.images import BadImageError, ImageFolderDataset, center_crop_pil
from repae.data.loader import ResumableSampler
from repae.errors import ConfigError

_REAL_CONNECT = socket.socket.connect  # captured before conftest's autouse network guard patches it


def _allow_unix_sockets(monkeypatch):
    """DataLoader workers hand tensors back over AF_UNIX sockets; conftest's guard only knows AF_INET."""
    guarded = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return _REAL_CONNECT(self, address)
        return guarded(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)

# --------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes with one of every kind of file the policy covers."""
    rng = np.random.default_rng(0)
    a, b = tmp_path / "b_class", tmp_path / "a_class"  # sorted: a_class=0, b_class=1
    a.mkdir(), b.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(a / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(a / "photo.jpg", quality=90)
    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(b / "gray.png")
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black -> white after compositing
    Image.fromarray(rgba, mode="RGBA").save(b / "rgba.png")
    Image.fromarray(np.full((32, 32), 257 * 100, np.uint16)).save(b / "deep16.png")  # 16-bit gray
    good = tmp_path / "tmp_good.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    good.unlink()
    (a / "truncated.png").write_bytes(data[: len(data) // 2])
    jpg = tmp_path / "tmp.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpg, quality=90)
    data = jpg.read_bytes()
    jpg.unlink()
    (b / "cut.jpg").write_bytes(data[: len(data) // 2])
    (a / "empty.png").write_bytes(b"")
    (a / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_skip_policy_counts_and_logs(messy_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="repae.data.images"):
        ds = build_dataset(str(messy_folder), resolution=32)
    assert len(ds) == 5 and ds.classes == ["a_class", "b_class"]
    assert sorted(p.name for p, _ in ds.skipped) == ["cut.jpg", "empty.png", "truncated.png"]
    assert "skipped 3 unreadable" in caplog.text and "empty.png" in caplog.text
    names = [p.name for p in ds.files]
    assert "notes.txt" not in names
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and y.dtype == torch.int64
    by_name = {p.name: i for i, p in enumerate(ds.files)}
    assert int(ds[by_name["gray.png"]][1]) == 0 and int(ds[by_name["rgb.png"]][1]) == 1
    assert (ds[by_name["gray.png"]][0] == 77).all()  # replicated grayscale
    assert (ds[by_name["rgba.png"]][0] == 255).all()  # composited on white
    assert (ds[by_name["deep16.png"]][0] == 100).all()  # 16-bit scaled by 1/257


def test_folder_strict_names_the_file(messy_folder):
    with pytest.raises(BadImageError, match=r"(empty\.png|truncated\.png|cut\.jpg)"):
        ImageFolderDataset(messy_folder, resolution=32, strict=True)


def test_decode_failure_after_scan_names_the_file(tmp_path):
    (tmp_path / "c").mkdir()
    path = tmp_path / "c" / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    ds = ImageFolderDataset(tmp_path, resolution=8)
    path.write_bytes(b"garbage")
    with pytest.raises(BadImageError, match="x.png"):
        ds[0]


def test_empty_folder_and_bad_specs(tmp_path):
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(ConfigError, match="no readable images"):
        build_dataset(str(tmp_path), resolution=32)
    with pytest.raises(ConfigError, match="embedded"):
        build_dataset("no-such-thing", resolution=32)
    with pytest.raises(ConfigError, match="does not exist"):
        build_dataset(str(tmp_path / "missing.npz"), resolution=32)


# --------------------------------------------------------------------------------------------
# ADM centre crop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100, 60), (60, 100), (32, 32), (33, 500), (20, 20)])
def test_center_crop_output_size(size):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    assert center_crop_pil(img, 32).size == (32, 32)


def test_center_crop_halves_a_2x_image_with_box():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = np.asarray(center_crop_pil(Image.fromarray(arr), 32)).astype(np.int32)
    box = arr.reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))  # 2x2 block means
    assert np.abs(out - box).max() <= 1  # BOX halving, then a no-op bicubic at scale 1


def test_center_crop_offsets_floor():
    arr = np.zeros((10, 13, 3), np.uint8)  # H=10, W=13 -> bicubic keeps size at res=10
    arr[:, 1] = 255  # column 1 is the first kept column (offset floor(3/2) = 1)
    out = np.asarray(center_crop_pil(Image.fromarray(arr), 10))
    assert out.shape == (10, 10, 3) and (out[:, 0] == 255).all() and (out[:, 1:] == 0).all()


# --------------------------------------------------------------------------------------------
# npz / h5
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "gray"])
def test_npz_round_trip(tmp_path, layout):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(6) % 3
    stored = {"nhwc": imgs, "nchw": imgs.transpose(0, 3, 1, 2), "gray": imgs[..., 0]}[layout]
    np.savez(tmp_path / "a.npz", arr_0=stored, labels=labels)
    ds = build_dataset(str(tmp_path / "a.npz"), resolution=16)
    assert len(ds) == 6
    for i in range(6):
        x, y = ds[i]
        want = imgs[i].transpose(2, 0, 1) if layout != "gray" else np.repeat(imgs[i, None, :, :, 0], 3, 0)
        assert np.array_equal(x.numpy(), want) and int(y) == labels[i]


def test_npz_resize_changes_resolution(tmp_path):
    np.savez(tmp_path / "b.npz", arr_0=np.zeros((2, 64, 64, 3), np.uint8))
    x, y = build_dataset(str(tmp_path / "b.npz"), resolution=32)[1]
    assert x.shape == (3, 32, 32) and int(y) == 0


def _write_h5(path, n=24):
    import h5py

    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n) % 4
    with h5py.File(path, "w") as f:
        f["images"] = imgs
        f["labels"] = labels
    return imgs, labels


def test_h5_round_trip_and_lazy_handle(tmp_path):
    imgs, labels = _write_h5(tmp_path / "d.h5")
    ds = build_dataset(str(tmp_path / "d.h5"), resolution=8)
    assert ds._file is None  # nothing open after construction
    for i in (0, 5, 23):
        x, y = ds[i]
        assert np.array_equal(x.numpy(), imgs[i].transpose(2, 0, 1)) and int(y) == labels[i]
    import pickle

    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no open handle
    assert clone._file is None and np.array_equal(clone[3][0].numpy(), imgs[3].transpose(2, 0, 1))
    ds.close()


def test_loader_two_workers_on_h5(tmp_path, monkeypatch):
    _allow_unix_sockets(monkeypatch)
    imgs, labels = _write_h5(tmp_path / "e.h5")
    ds = build_dataset(str(tmp_path / "e.h5"), resolution=8)
    ds[0]  # open a handle in the parent first: workers must not reuse it
    loader = build_loader(ds, batch_size=4, shuffle=True, seed=1, num_workers=2)
    seen_x, seen_y = [], []
    for x, y in loader:
        seen_x.append(x), seen_y.append(y)
    order = loader.sampler.permutation(0)
    got = torch.cat(seen_x)
    assert got.shape == (24, 3, 8, 8)
    assert torch.equal(got, torch.from_numpy(imgs[order.numpy()]).permute(0, 3, 1, 2))
    assert torch.equal(torch.cat(seen_y), torch.from_numpy(labels[order.numpy()]))


# --------------------------------------------------------------------------------------------
# embedded Fashion-MNIST
# --------------------------------------------------------------------------------------------


def test_embedded_checksum_matches_committed():
    assert file_sha256(EMBEDDED_PATH) == expected_sha256()


@pytest.mark.parametrize("split,per_class", [("train", 500), ("test", 100)])
def test_embedded_shapes_labels_balance(split, per_class):
    x, y = load_fashion_mnist(split)
    assert x.dtype == np.uint8 and x.shape == (10 * per_class, 3, 32, 32) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [per_class] * 10
    assert (x[:, 0] == x[:, 1]).all() and (x[:, 0] == x[:, 2]).all()  # grayscale replicated
    assert x[:, :, :2].max() == 0 and x[:, :, :, -2:].max() == 0  # 2-px zero padding
    assert x.mean() > 40  # real clothes, not blank images


def test_embedded_dataset_items_and_resize():
    ds = build_dataset("embedded", resolution=32, split="test")
    assert len(ds) == 1000 and list(ds.classes) == list(CLASS_NAMES)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    x64, _ = build_dataset("embedded", resolution=64, split="test")[0]
    assert x64.shape == (3, 64, 64)


def test_full_fashion_mnist_missing_names_apt(monkeypatch, tmp_path):
    import repae.data.embedded as emb

    monkeypatch.setattr(emb, "DEBIAN_DIR", tmp_path)
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", resolution=32, split="test")


def test_full_fashion_mnist_test_split_if_installed():
    from repae.data.embedded import DEBIAN_DIR

    if not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist not installed")
    x, y = load_fashion_mnist("test", source="full")
    assert x.shape == (10000, 3, 32, 32) and np.bincount(y).tolist() == [1000] * 10
    xe, ye = load_fashion_mnist("test")  # the embedded subset is the first 100 per class of it
    first = np.sort(np.concatenate([np.flatnonzero(y == c)[:100] for c in range(10)]))
    assert np.array_equal(x[first], xe) and np.array_equal(y[first], ye)


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------


def _batches(sampler, n_batches=None):
    it, out = iter(sampler), []
    while n_batches is None or len(out) < n_batches:
        chunk = [i for _, i in zip(range(sampler.batch_size), it)]
        if not chunk:
            break
        out.append(chunk)
    return out


def test_sampler_order_depends_only_on_seed_and_epoch():
    a = ResumableSampler(50, batch_size=5, seed=3)
    b = ResumableSampler(50, batch_size=5, seed=3)
    assert list(a) == list(b)  # epoch 0
    assert list(a) == list(b)  # epoch 1 (auto-advanced)
    assert list(ResumableSampler(50, batch_size=5, seed=4)) != list(ResumableSampler(50, batch_size=5, seed=3))
    c = ResumableSampler(50, batch_size=5, seed=3)
    c.set_epoch(1)
    d = ResumableSampler(50, batch_size=5, seed=3)
    list(d)
    assert list(c) == list(d)


def test_sampler_resume_equals_uninterrupted():
    full = ResumableSampler(53, batch_size=4, seed=7)
    ref = _batches(full) + _batches(full)  # two epochs, drop_last
    assert len(ref) == 2 * 13
    first = ResumableSampler(53, batch_size=4, seed=7)
    head = _batches(first, 5)
    state = first.state_dict()
    assert state["position"] == 5
    resumed = ResumableSampler(53, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    tail = _batches(resumed) + _batches(resumed)
    assert head + tail[:len(ref) - 5] == ref


def test_sampler_rank_sharding_matches_single_process():
    single = _batches(ResumableSampler(40, batch_size=8, seed=2))  # global batch 8
    ranks = [_batches(ResumableSampler(40, batch_size=4, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(single)
    for k, global_batch in enumerate(single):
        assert ranks[0][k] + ranks[1][k] == global_batch  # contiguous slices of the same global batch


def test_sampler_micro_batches_follow_the_global_micro_batches():
    """With accumulation, micro-batch m of every rank is its slice of global micro-batch m."""
    from repae.data import ResumableSampler

    one = list(ResumableSampler(32, batch_size=8, seed=3, micro_batches=2))
    ranks = [list(ResumableSampler(32, batch_size=4, seed=3, rank=r, world_size=2, micro_batches=2)) for r in (0, 1)]
    for k in range(4):  # global batches of 8 = 2 micro-batches of 4 = 2 ranks x 2 items
        g = one[8 * k:8 * (k + 1)]
        for m in range(2):
            assert g[4 * m:4 * m + 2] == ranks[0][4 * k + 2 * m:4 * k + 2 * m + 2]
            assert g[4 * m + 2:4 * m + 4] == ranks[1][4 * k + 2 * m:4 * k + 2 * m + 2]


@pytest.mark.parametrize("layout", ["nhwc", "nhw", "nchw"])
def test_default_resolution_of_an_array_file_is_its_stored_side(tmp_path, layout):
    """A 28-pixel .npz given without --resolution is read at 28, not upsampled to 256."""
    from repae.data import default_resolution

    rng = np.random.default_rng(0)
    shape = {"nhwc": (5, 28, 28, 3), "nhw": (5, 28, 28), "nchw": (5, 3, 28, 28)}[layout]
    imgs = rng.integers(0, 256, shape, dtype=np.uint8)
    plain, compressed = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(plain, arr_0=imgs)
    np.savez_compressed(compressed, train_images=imgs, train_labels=np.zeros(5, np.int64))
    assert default_resolution(str(plain)) == 28
    assert default_resolution(str(compressed)) == 28
    ds = build_dataset(str(plain), resolution=default_resolution(str(plain)))
    assert ds[0][0].shape == (3, 28, 28)


def test_default_resolution_falls_back_to_256(tmp_path):
    from repae.data import default_resolution

    rect = tmp_path / "rect.npz"
    np.savez(rect, arr_0=np.zeros((2, 16, 24, 3), np.uint8))  # not square: resized like a folder
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "nokey.npz", other=np.zeros(3))
    for name in ("rect.npz", "junk.npz", "nokey.npz", "missing.npz"):
        assert default_resolution(str(tmp_path / name)) == 256, name
    assert default_resolution("embedded") == 32 and default_resolution("embedded:test") == 32
    assert default_resolution(str(tmp_path)) == 256  # an image folder


def test_default_resolution_of_an_h5_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    from repae.data import default_resolution

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"] = np.zeros((3, 40, 40, 3), np.uint8)
    assert default_resolution(str(tmp_path / "d.h5")) == 40
