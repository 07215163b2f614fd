"""argparse ``type`` functions for numeric flags: a bad value is argparse's one-line usage error naming the
flag and the range (exit 2), never a traceback or a silently odd run. No torch import (verbs' --help stays fast)."""

from __future__ import annotations

import argparse


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (else argparse's one-line usage error naming the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {value})")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)  # batch sizes, image counts, resolutions, steps
nonneg_int = int_at_least(0)  # workers, threads (0 = default), counts where 0 means "off"


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite number (nan / inf refused with argparse's one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
    return value
