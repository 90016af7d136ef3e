"""Errors a user can cause. The CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations


def not_unicode(text: str) -> str | None:
    """What is wrong with a string that cannot be written as UTF-8 (a lone surrogate, from JSON or YAML such as
    "\\ud800"), or None: no tokenizer, database or file takes such a string."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"text holds a lone surrogate \\u{ord(text[e.start]):04x} at character {e.start + 1}, which is not valid Unicode"
    return None


class AlignkitError(Exception):
    """A problem with the user's input (data, config, model path), not a bug in alignkit."""


class DataError(AlignkitError):
    """A bad record: names the file, the line (1-based, or record index for in-memory data) and the field."""

    def __init__(self, source: str, line: int | None, field: str | None, message: str):
        self.source, self.line, self.field, self.message = source, line, field, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.message}"


class ConfigError(AlignkitError, ValueError):
    """A bad configuration value or file."""
