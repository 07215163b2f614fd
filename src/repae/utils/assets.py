"""The package's shipped files (``src/repae/assets``): embedded data, small weights, their records."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset(name: str) -> Path:
    """Path of a shipped file, e.g. ``asset("repae-vit-t4-fmnist.safetensors")``."""
    return ASSETS / name
