"""Messages to the person running a command: progress notes and summaries go to stderr, results to stdout."""

from __future__ import annotations

import sys


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
