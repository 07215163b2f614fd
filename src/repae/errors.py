"""Errors raised for bad user input. Each message names the fix in one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any training starts."""


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file the user must supply is missing."""

    def __init__(self, what: str, hint: str):
        super().__init__(f"{what}: {hint}")
