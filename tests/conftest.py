"""Shared test set-up: no network, deterministic torch, small thread count."""

from __future__ import annotations

import socket

import pytest
import torch

# One thread: tiny test shapes gain nothing from more, and oversubscribed OpenMP threads on a busy
# 2-core machine slow small ops down by an order of magnitude.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail fast if a test reaches for a non-local address (weights must come from local files)."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family == socket.AF_UNIX:  # local IPC (DataLoader workers, torch.multiprocessing)
            return real_connect(self, address)
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1", "0.0.0.0")):
            raise RuntimeError(f"test tried to reach the network ({address}); use a local file instead")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@pytest.fixture(autouse=True)
def _one_thread_again():
    """A verb run in process may set torch's thread count (`repae linear-probe` defaults to 2 threads): put it
    back, or a later test computes with another summation order (a 2-process cache then differed from the
    1-process one in one float, in the slow suite)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    with torch.device("meta"):  # skip allocating the 120M-parameter classifier
        features = torchvision.models.vgg16(weights=None).features
    features = features.to_empty(device="cpu")
    for m in features:
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    # full-VGG key layout ("features.*"), plus a tiny classifier entry that must be ignored
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(sd, path)  # about 59 MB, once per session
    return path, features
