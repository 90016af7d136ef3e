"""A disk cache of verdicts: one JSON line per judged presentation, appended and flushed as judgments arrive, so an
interrupted run resumes where it stopped and a rerun costs nothing. Keyed by the judge, the rubric, the request
and the two responses in the order shown."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alignkit.errors import AlignkitError


def verdict_key(judge_id: str, rubric: str, prompt, first: str, second: str) -> str:
    return hashlib.blake2b(json.dumps([judge_id, rubric, prompt, first, second]).encode(), digest_size=16).hexdigest()


class VerdictCache:
    """Verdicts by key: `p` (the probability that the first response shown is better, or None for a non-answer)
    and `mass` (the probability the judge put on the two answer letters, when known). A line cut short by a
    killed run is ignored and counted (`damaged`); the later copy of a key wins."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self.entries: dict[str, dict] = {}
        self.damaged = 0
        self._newline = False  # the file ends inside a line (a killed write): the next write starts a new one
        if self.path is None or not self.path.exists():
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AlignkitError(f"judgment cache '{self.path}' cannot be read: {e}") from e
        self._newline = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (ValueError, KeyError, TypeError):
                self.damaged += 1

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, entries: list[dict]) -> None:
        """Keep `entries` (each with `key`, `p`, `mass`), appending them to the file in one write."""
        for e in entries:
            self.entries[e["key"]] = e
        if self.path is None or not entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n" * self._newline + "".join(json.dumps(e) + "\n" for e in entries))
            self._newline = False
        except OSError as e:
            raise AlignkitError(f"judgment cache '{self.path}' cannot be written: {e}") from e
