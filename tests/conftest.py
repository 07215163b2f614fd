"""Shared test set-up: no network, deterministic torch, small thread count."""

from __future__ import annotations

import socket

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail fast if a test reaches for a non-local address (weights must come from local files)."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1", "0.0.0.0")):
            raise RuntimeError(f"test tried to reach the network ({address}); use a local file instead")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield
