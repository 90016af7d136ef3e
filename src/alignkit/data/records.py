"""Record types shared by every stage. Text is either a plain string or a list of chat messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}
Text = str | list[Message]


def response_text(t: Text) -> str:
    """A response as plain text: a string as it is, or the assistant contents of a message list, joined."""
    return t if isinstance(t, str) else "".join(m.get("content", "") for m in t if m.get("role") == "assistant")


@dataclass
class Where:
    """Where a record came from, for error messages: a file and 1-based line (or record index)."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass
class SFTExample:
    """A demonstration. Either `prompt` + `completion` (strings or messages), or a whole chat in `messages`
    whose assistant turns are the response."""

    prompt: Text | None = None
    completion: Text | None = None
    messages: list[Message] | None = None
    where: Where | None = None


@dataclass
class PreferencePair:
    """`chosen` preferred over `rejected` with probability `label` in [0.5, 1] (1.0 for a hard label).

    `prompt` is a string or a list of chat messages; `chosen`/`rejected` are the response only (a string or
    the assistant message list that follows the prompt). `margin` is an optional Bradley-Terry margin."""

    prompt: Text
    chosen: Text
    rejected: Text
    label: float = 1.0
    margin: float = 0.0
    where: Where | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class KTOExample:
    """An unpaired response judged on its own: `desirable` (thumbs up) or not (thumbs down). `prompt` and
    `completion` as in `PreferencePair`."""

    prompt: Text
    completion: Text
    desirable: bool
    where: Where | None = None


@dataclass
class Ranking:
    """A prompt with K >= 2 responses ordered best first."""

    prompt: Text
    responses: list[Text]
    where: Where | None = None

    def pairs(self) -> list[PreferencePair]:
        """All C(K,2) pairs (better, worse), hard-labelled."""
        r = self.responses
        return [
            PreferencePair(self.prompt, r[i], r[j], where=self.where)
            for i in range(len(r))
            for j in range(i + 1, len(r))
        ]


@dataclass
class LoadReport:
    """What happened while loading a file: counts of everything read, kept, skipped, flipped or changed."""

    source: str
    read: int = 0
    loaded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few skipped-record messages
    counts: dict[str, int] = field(default_factory=dict)  # e.g. flipped, hh_prompt_mismatch, truncated
    stats: dict[str, float] = field(default_factory=dict)  # e.g. annotator agreement

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def skip(self, error: Exception, keep: int = 20) -> None:
        """Count an invalid record that is skipped, keeping the first `keep` messages."""
        self.skipped += 1
        if len(self.errors) < keep:
            self.errors.append(str(error))

    def summary(self) -> str:
        parts = [f"{self.source}: {self.loaded} loaded of {self.read} read"]
        if self.skipped:
            parts.append(f"{self.skipped} invalid skipped")
        parts += [f"{k.replace('_', ' ')}: {v}" for k, v in sorted(self.counts.items())]
        parts += [f"{k.replace('_', ' ')}: {v:.3f}" for k, v in sorted(self.stats.items())]
        return "; ".join(parts)
