"""argparse types for the commands whose options are not a typed config (eval, sample, chat, label,
make-tiny-model): a value out of range is refused while the arguments are parsed, with argparse's one-line error
and exit code 2, before any work."""

from __future__ import annotations

import argparse
import math


def int_at_least(low: int, multiple_of: int = 1):
    """An integer >= `low` (and a multiple of `multiple_of`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple_of}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = True):
    """A finite number in (low, high] (or [low, high] with low_open=False)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            left = "(" if low_open else "["
            right = "]" if math.isfinite(high) else ")"
            raise argparse.ArgumentTypeError(f"must be in {left}{low:g}, {high:g}{right}, got {text}")
        return value

    parse.__name__ = "float"
    return parse
