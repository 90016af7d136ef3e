"""Messages to the person running a command: progress notes and summaries go to stderr, results to stdout."""

from __future__ import annotations

import sys


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quiet_model_libraries() -> None:
    """Keep transformers to errors, without its progress bars: the commands print their own progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
