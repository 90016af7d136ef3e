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


def _option_names(parser: argparse.ArgumentParser, names: dict[str, str] | None = None) -> dict[str, str]:
    """dest -> how the user wrote it (its longest flag, or a positional's metavar), over every subcommand."""
    names = {} if names is None else names
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _option_names(sub, names)
        elif action.dest != argparse.SUPPRESS:
            names.setdefault(action.dest, max(action.option_strings, key=len) if action.option_strings
                             else action.metavar or action.dest)
    return names


def check_utf8(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """What is wrong with the first argument that was not valid UTF-8 on the command line, or None. Python
    keeps such bytes as lone surrogates, which no tokenizer, JSON or YAML file takes."""
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                where = f"a lone surrogate at character {e.start + 1}"
                if 0xDC80 <= ord(text[e.start]) <= 0xDCFF:  # a byte the command line gave that is not UTF-8
                    where = f"byte 0x{ord(text[e.start]) - 0xDC00:02x} at character {e.start + 1}"
                return f"{_option_names(parser).get(dest, dest)}: not valid UTF-8 ({where}); give text and paths in UTF-8"
    return None
