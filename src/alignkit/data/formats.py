"""Turn raw records into alignkit record types, validating every field on the way.

Loaders (each returns `(records, LoadReport)`; `source` is anything `readers.iter_raw` accepts):

- `load_sft(source)`: `SFTExample`s from `prompt` + `completion`, or `messages` (a chat with at least one
  assistant turn). When a record has `messages`, that shape wins and other keys are ignored.
- `load_pairs(source, format=...)`: `PreferencePair`s from one of the formats below.
- `load_rankings(source)`: `Ranking`s from `prompt` + `responses` (>= 2 distinct texts, best first).
- `load_kto(source, format=...)`: unpaired `KTOExample`s from `prompt`, `completion`, `label` (true:
  desirable, false: undesirable; JSON booleans only), or derived from any preference format (`unpaired`).

Preference formats (`load_pairs(format=...)`):

- "pairs": `prompt`, `chosen`, `rejected`; optional `label` = P(chosen preferred), a number in [0, 1]
  (absent or null: 1.0, a hard label), and optional `margin` (a finite number, kept as given).
- "hh": Anthropic HH-RLHF transcripts, `chosen` and `rejected` only. The prompt is the transcript up to
  and including its last "\\n\\nAssistant:"; the response is the rest (it begins with a space, " Sure, ...").
- "alpaca_eval": `instruction`, `output_1`, `output_2`, `preference` in [1, 2], where
  preference = 1 + P(output_2 preferred). We set chosen = output_1, rejected = output_2 and
  label = P(output_1 preferred) = 2 - preference, then apply the usual flip when that is below 0.5: so
  preference 1.2 gives chosen = output_1 with label 0.8, and preference 1.9 gives chosen = output_2 with
  label 0.9. `generator_1`, `generator_2` and `dataset` are kept in `meta`. Annotations whose two outputs
  are identical (26 in the AlpacaEval 2 file, all judged 1.5) carry no preference: they are left out and
  counted in `counts["identical_outputs_dropped"]`, not treated as errors.
- "votes": `prompt`, `response_a`, `response_b`, `votes` (see `votes.py` for the labels and tie policy).
  The report gets `counts["votes"]` (all votes), `counts["vote_ties"]` (pairs kept with label 0.5) and
  `stats["pairwise_agreement"]`, `stats["fleiss_kappa"]` (over the categories a, b, tie).
- "rankings": `prompt`, `responses`; each ranking of K responses becomes its C(K, 2) hard pairs. Here
  `report.loaded` counts pairs and `counts["rankings"]` counts rankings.
- "auto" (default) picks one format for the whole file from the keys of its first record that is a JSON
  object: `votes` → votes; `responses` → rankings; `instruction` + `output_1` + `output_2` + `preference`
  → alpaca_eval; `prompt` + `chosen` + `rejected` → pairs; `chosen` + `rejected` without `prompt` → hh when
  `chosen` is a string, pairs (full conversations, see below) when it is a list of messages. Anything else
  raises DataError naming that record's line and the keys each format expects, even with skip_invalid.

Soft labels. Every pair ends up with P(chosen preferred) in [0.5, 1]: a label below 0.5 is flipped on
load (chosen and rejected swapped, label = 1 - label; `margin` is kept as given), counted in
`counts["flipped"]` and marked `meta["flipped"] = True`. A label of exactly 0.5 is kept as it is and counted
in `counts["label_half"]`; such a pair carries no preference, so hard-label losses should filter it out.

HH prompt mismatch (`hh_mismatch`). In a few HH-RLHF pairs (5 of the 2,312 in harmless-base test) the text
up to the last "\\n\\nAssistant:" is not the same in chosen and rejected: earlier turns differ.

- "common-prefix" (default): the prompt is the longest common beginning of the two transcripts that ends
  right after a "\\n\\nAssistant:"; chosen and rejected are what follows, so they may hold several turns.
  Counted in `counts["hh_prompt_mismatch"]`. When the common beginning holds no "\\n\\nAssistant:" the
  record is invalid (field "chosen").
- "drop": such pairs are left out (not an error), counted in `counts["hh_prompt_mismatch_dropped"]`.

A transcript without any "\\n\\nAssistant:" is invalid. An HH response that is empty or only whitespace after
the split is kept (the annotator preferred saying nothing over the other answer; 4 such chosen responses in
harmless-base test) and counted in `counts["hh_empty_response"]`.

Chat form. Text is either a string or a list of messages, each `{"role": "system" | "user" | "assistant",
"content": str}` (other keys are dropped; user and assistant content must not be blank). A response given
as messages must start and end with an assistant message, a prompt given as messages must not end with
one (the model writes the reply), and within one record the prompt and its
responses must be both strings or both message lists. For pairs, `chosen`/`rejected` may also be whole
conversations (message lists that do not start with an assistant message, with or without a `prompt`,
which is then ignored, as in UltraFeedback-binarized): the prompt is their longest common run of leading
messages, shortened until it ends with a non-assistant message, and chosen/rejected are the remaining
messages, which must then start and end with an assistant message (so the two conversations must differ
in an assistant turn).

Validation. Every rejected record raises `DataError(file, line, field, message)`: a required field
missing or null, a wrong type ("expected a string or a list of messages, got int"), empty or
whitespace-only text, text that is not valid Unicode (a lone surrogate), chosen identical to rejected, a
label that is not a number, NaN or outside [0, 1], a margin that is not finite. With `skip_invalid=False`
(default) the first invalid record raises; with `skip_invalid=True` invalid records (unreadable lines
included) are skipped, counted in `report.skipped`, and the first 20 messages kept in `report.errors`; if no
record at all is valid, DataError is raised.
`report.read` counts records read (valid or not), `report.loaded` records returned.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from alignkit.data.readers import DEFAULT_MAX_RECORD_BYTES, read_records
from alignkit.data.records import (
    KTOExample,
    LoadReport,
    Message,
    PreferencePair,
    Ranking,
    SFTExample,
    Text,
    Where,
)
from alignkit.data.votes import agreement_report, check_vote_options, normalize_votes, pair_from_votes
from alignkit.errors import ConfigError, DataError, not_unicode

PAIR_FORMATS = ("auto", "pairs", "hh", "alpaca_eval", "votes", "rankings")
KTO_FORMATS = ("auto", "kto", *PAIR_FORMATS[1:])
HH_MISMATCH_POLICIES = ("common-prefix", "drop")
HH_MARKER = "\n\nAssistant:"
ROLES = ("system", "user", "assistant")
MAX_ERRORS = 20

_EXPECTED_KEYS = (
    "prompt/chosen/rejected (pairs), chosen/rejected (hh), instruction/output_1/output_2/preference "
    "(alpaca_eval), prompt/response_a/response_b/votes (votes) or prompt/responses (rankings)"
)


# ----------------------------------------------------------------------------------------------------------
# One record under validation


class _Record:
    """A raw record and where it came from; every check raises a DataError naming the field."""

    def __init__(self, raw: dict[str, Any], where: Where):
        self.raw, self.where = raw, where

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(self.where.source, self.where.line, field, message)

    def required(self, key: str) -> Any:
        value = self.raw.get(key)
        if value is None:
            raise self.error(
                key, "required field is null" if key in self.raw else "required field is missing"
            )
        return value

    def text(self, key: str) -> Text:
        """A required string or message list."""
        return _check_text(self, key, self.required(key))

    def prompt(self) -> Text:
        """The required `prompt`: given as messages, it ends where the model's reply starts, so not with an
        assistant message (the reply would be a second assistant turn in a row)."""
        prompt = self.text("prompt")
        if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
            raise self.error("prompt", f"message {len(prompt)}, the last, is from the assistant; a prompt must end "
                                       "with a user or system message, since the model writes the reply")
        return prompt

    def string(self, key: str) -> str:
        """A required non-blank string (formats that have no chat form)."""
        value = self.required(key)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_kind(value)}")
        return _check_text(self, key, value)

    def number(self, key: str, what: str) -> float | None:
        """An optional finite number (None when absent or null)."""
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"{what} must be a number, got {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise self.error(key, f"{what} must be a finite number, got an integer too large for a float") from None
        if not math.isfinite(number):
            raise self.error(key, f"{what} must be a finite number, got {value}")
        return number


def _kind(value: Any) -> str:
    """A short type name for messages: 'int', 'list', 'dict', ..."""
    return type(value).__name__


def _check_text(rec: _Record, field: str, value: Any, what: str = "") -> Text:
    """A non-blank string, or a valid non-empty message list (returned with role and content only)."""
    prefix = f"{what}: " if what else ""
    if isinstance(value, str):
        if not value:
            raise rec.error(field, f"{prefix}text is empty")
        if not value.strip():
            raise rec.error(field, f"{prefix}text is only whitespace")
        if problem := not_unicode(value):
            raise rec.error(field, f"{prefix}{problem}")
        return value
    if isinstance(value, list):
        return _check_messages(rec, field, value, prefix)
    raise rec.error(field, f"{prefix}expected a string or a list of messages, got {_kind(value)}")


def _check_messages(rec: _Record, field: str, value: Any, prefix: str = "") -> list[Message]:
    if not isinstance(value, list):
        raise rec.error(field, f"{prefix}expected a list of messages, got {_kind(value)}")
    if not value:
        raise rec.error(field, f"{prefix}the list of messages is empty")
    messages = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise rec.error(
                field, f"{prefix}message {i} must be an object with 'role' and 'content', got {_kind(m)}"
            )
        role, content = m.get("role"), m.get("content")
        if role is None:
            missing = "is null" if "role" in m else "is missing"
            raise rec.error(field, f"{prefix}message {i}: required field 'role' {missing}")
        if role not in ROLES:
            raise rec.error(
                field, f"{prefix}message {i} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if content is None:
            missing = "is null" if "content" in m else "is missing"
            raise rec.error(field, f"{prefix}message {i} ({role}): required field 'content' {missing}")
        if not isinstance(content, str):
            raise rec.error(
                field, f"{prefix}message {i} ({role}) must have a string 'content', got {_kind(content)}"
            )
        if role != "system" and not content.strip():
            raise rec.error(field, f"{prefix}message {i} ({role}) has empty content")
        if problem := not_unicode(content):
            raise rec.error(field, f"{prefix}message {i} ({role}): {problem}")
        messages.append({"role": role, "content": content})
    return messages


def _check_response(rec: _Record, field: str, prompt: Text, value: Any, what: str = "") -> Text:
    """A response: a string (after a message prompt it is the assistant's reply), or messages that start
    and end with an assistant turn (only after a message prompt)."""
    response = _check_text(rec, field, value, what)
    prefix = f"{what}: " if what else ""
    if isinstance(prompt, str) and isinstance(response, list):
        raise rec.error(
            field, f"{prefix}the prompt is a string, so this must be one too, got a list of messages"
        )
    if isinstance(response, list):
        _check_assistant_ends(rec, field, response, prefix)
    return response


def _check_assistant_ends(rec: _Record, field: str, messages: list[Message], prefix: str = "") -> None:
    """A response given as messages must start and end with an assistant turn (model output both ends)."""
    for end, message in (("start", messages[0]), ("end", messages[-1])):
        if message["role"] != "assistant":
            raise rec.error(
                field, f"{prefix}a response must {end} with an assistant message, got {message['role']!r}"
            )


def _oriented(
    prompt: Text,
    chosen: Text,
    rejected: Text,
    label: float,
    margin: float,
    rec: _Record,
    meta: dict[str, Any],
    notes: Counter,
) -> PreferencePair:
    """A pair with its label in [0.5, 1]: flipped when the label is below 0.5; 0.5 counted."""
    if label < 0.5:
        chosen, rejected, label = rejected, chosen, 1.0 - label
        meta = {**meta, "flipped": True}
        notes["flipped"] += 1
    elif label == 0.5:
        notes["label_half"] += 1
    return PreferencePair(prompt, chosen, rejected, label, margin, rec.where, meta)


# ----------------------------------------------------------------------------------------------------------
# One converter per record shape: (record, notes) -> records; notes are counts, kept only when it succeeds


def _pair_from_pairs(rec: _Record, notes: Counter) -> list[PreferencePair]:
    chosen = _check_text(rec, "chosen", rec.required("chosen"))
    rejected = _check_text(rec, "rejected", rec.required("rejected"))
    if (
        isinstance(chosen, list)
        and isinstance(rejected, list)
        and (rec.raw.get("prompt") is None or chosen[0]["role"] != "assistant")
    ):
        prompt, chosen, rejected = _split_conversations(rec, chosen, rejected)
    else:
        prompt = rec.prompt()
        chosen = _check_response(rec, "chosen", prompt, chosen)
        rejected = _check_response(rec, "rejected", prompt, rejected)
        if chosen == rejected:
            raise rec.error("rejected", "chosen and rejected are identical")
    label = rec.number("label", "soft label")
    if label is None:
        label = 1.0
    elif not 0.0 <= label <= 1.0:
        raise rec.error("label", f"soft label {rec.raw['label']} is outside [0, 1]")
    margin = rec.number("margin", "margin") or 0.0
    return [_oriented(prompt, chosen, rejected, label, margin, rec, {"format": "pairs"}, notes)]


def _split_conversations(
    rec: _Record, chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """Split two whole conversations into their shared prompt and the two differing continuations."""
    if chosen == rejected:
        raise rec.error("rejected", "chosen and rejected are identical")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and chosen[k - 1]["role"] == "assistant":
        k -= 1
    if k == 0:
        raise rec.error(
            "chosen",
            "chosen and rejected are conversations with no common prompt (they share no leading "
            "user or system message)",
        )
    for field, conversation in (("chosen", chosen), ("rejected", rejected)):
        if len(conversation) == k:
            raise rec.error(
                field, f"{field} ends with the {k} leading message(s) it shares with the other one"
            )
        _check_assistant_ends(rec, field, conversation[k:], f"after the {k} shared leading message(s): ")
    return chosen[:k], chosen[k:], rejected[k:]


def _pair_from_hh(rec: _Record, notes: Counter, hh_mismatch: str) -> list[PreferencePair]:
    chosen, rejected = rec.string("chosen"), rec.string("rejected")
    if chosen == rejected:
        raise rec.error("rejected", "chosen and rejected are identical")
    cuts = {}
    for field, transcript in (("chosen", chosen), ("rejected", rejected)):
        i = transcript.rfind(HH_MARKER)
        if i < 0:
            raise rec.error(
                field, "no '\\n\\nAssistant:' turn, so the transcript has no response to split off"
            )
        cuts[field] = i + len(HH_MARKER)
    prompt = chosen[: cuts["chosen"]]
    if prompt != rejected[: cuts["rejected"]]:
        if hh_mismatch == "drop":
            notes["hh_prompt_mismatch_dropped"] += 1
            return []
        common = len(os.path.commonprefix([chosen, rejected]))
        i = chosen.rfind(HH_MARKER, 0, common)
        if i < 0:
            raise rec.error(
                "chosen",
                "chosen and rejected have different prompts and their common beginning holds no "
                "'\\n\\nAssistant:' to split at",
            )
        prompt = chosen[: i + len(HH_MARKER)]
        notes["hh_prompt_mismatch"] += 1
    chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]
    if not chosen.strip() or not rejected.strip():
        notes["hh_empty_response"] += 1
    return [PreferencePair(prompt, chosen, rejected, 1.0, 0.0, rec.where, {"format": "hh"})]


def _pair_from_alpaca_eval(rec: _Record, notes: Counter) -> list[PreferencePair]:
    instruction = rec.string("instruction")
    output_1, output_2 = rec.string("output_1"), rec.string("output_2")
    rec.required("preference")
    preference = rec.number("preference", "preference")
    if not 1.0 <= preference <= 2.0:
        raise rec.error("preference", f"preference {rec.raw['preference']} is outside [1, 2]")
    if output_1 == output_2:  # a judge's tie between identical outputs: no preference to learn
        notes["identical_outputs_dropped"] += 1
        return []
    meta = {"format": "alpaca_eval"}
    meta.update(
        {k: rec.raw[k] for k in ("generator_1", "generator_2", "dataset") if rec.raw.get(k) is not None}
    )
    return [_oriented(instruction, output_1, output_2, 2.0 - preference, 0.0, rec, meta, notes)]


def _pair_from_votes(
    rec: _Record, notes: Counter, tie_policy: str, smoothing: float, voted: list[list[str]]
) -> list[PreferencePair]:
    prompt = rec.prompt()
    response_a = _check_response(rec, "response_a", prompt, rec.required("response_a"))
    response_b = _check_response(rec, "response_b", prompt, rec.required("response_b"))
    if response_a == response_b:
        raise rec.error("response_b", "response_a and response_b are identical")
    try:
        votes = normalize_votes(rec.required("votes"))
    except ValueError as e:
        raise rec.error("votes", str(e)) from None
    if not votes:
        raise rec.error("votes", "the list of votes is empty")
    pair = pair_from_votes(
        prompt, response_a, response_b, votes, tie_policy=tie_policy, smoothing=smoothing, where=rec.where
    )
    notes["votes"] += len(votes)
    voted.append(votes)
    if pair is None:
        notes["vote_all_ties_dropped"] += 1
        return []
    if pair.label == 0.5:
        notes["vote_ties"] += 1
    return [pair]


def _ranking(rec: _Record) -> Ranking:
    prompt = rec.prompt()
    responses = rec.required("responses")
    if not isinstance(responses, list):
        raise rec.error("responses", f"expected a list of responses (best first), got {_kind(responses)}")
    if len(responses) < 2:
        raise rec.error("responses", f"a ranking needs at least 2 responses, got {len(responses)}")
    checked = [
        _check_response(rec, "responses", prompt, r, f"response {i}") for i, r in enumerate(responses, 1)
    ]
    for i in range(len(checked)):
        for j in range(i + 1, len(checked)):
            if checked[i] == checked[j]:
                raise rec.error("responses", f"responses {i + 1} and {j + 1} are identical")
    return Ranking(prompt, checked, rec.where)


def _pairs_from_ranking(rec: _Record, notes: Counter) -> list[PreferencePair]:
    pairs = _ranking(rec).pairs()
    for pair in pairs:
        pair.meta["format"] = "rankings"
    notes["rankings"] += 1
    return pairs


def _kto(rec: _Record) -> KTOExample:
    prompt = rec.prompt()
    completion = _check_response(rec, "completion", prompt, rec.required("completion"))
    label = rec.required("label")
    if not isinstance(label, bool):
        shown = repr(label) if isinstance(label, int | float) else _kind(label)
        raise rec.error("label", f"must be true (desirable) or false (undesirable), got {shown}")
    return KTOExample(prompt, completion, label, rec.where)


def unpaired(pairs: list[PreferencePair], report: LoadReport) -> list[KTOExample]:
    """Pairs as unpaired examples: each distinct response of a prompt is desirable when it was chosen in more of
    its pairs than it was rejected in, undesirable when rejected more often. So plain pairs give chosen →
    desirable and rejected → undesirable, and a panel's votes on every pair of K samples split them into good and
    bad ones. Responses chosen and rejected equally often, and pairs without a preference (label 0.5), are
    left out and counted (`unpaired_ties_dropped`, `no_preference_dropped`)."""
    balance: dict[tuple[str, str], list] = {}  # (prompt, response) -> [prompt, response, wins - losses, where]
    for p in pairs:
        if p.label == 0.5:
            report.count("no_preference_dropped")
            continue
        for response, sign in ((p.chosen, 1), (p.rejected, -1)):
            key = (json.dumps(p.prompt), json.dumps(response))
            entry = balance.setdefault(key, [p.prompt, response, 0, p.where])
            entry[2] += sign
    out = [KTOExample(prompt, response, net > 0, where) for prompt, response, net, where in balance.values() if net]
    if len(out) < len(balance):
        report.count("unpaired_ties_dropped", len(balance) - len(out))
    report.count("pairs_read", len(pairs))
    return out


def _sft(rec: _Record) -> SFTExample:
    if rec.raw.get("messages") is not None:
        messages = _check_messages(rec, "messages", rec.raw["messages"])
        if not any(m["role"] == "assistant" for m in messages):
            raise rec.error("messages", "no assistant message, so nothing to learn from")
        return SFTExample(messages=messages, where=rec.where)
    if "prompt" not in rec.raw and "completion" not in rec.raw:
        raise rec.error(
            "messages",
            "required field is missing (an SFT record needs 'messages', or 'prompt' and 'completion')",
        )
    prompt = rec.prompt()
    completion = _check_response(rec, "completion", prompt, rec.required("completion"))
    return SFTExample(prompt=prompt, completion=completion, where=rec.where)


# ----------------------------------------------------------------------------------------------------------
# The loading loop and the public loaders


def _load(
    source: Any,
    convert: Callable[[_Record, Counter], list],
    *,
    skip_invalid: bool,
    max_record_bytes: int,
    on_first: Callable[[_Record], None] | None = None,
) -> tuple[list, LoadReport]:
    """Read every record, convert it, and either raise on the first invalid one or skip and count it.

    `on_first` sees the first record that is a JSON object before it is converted (format detection); what
    it raises is never skipped."""
    name, items = read_records(source, max_record_bytes=max_record_bytes)
    report = LoadReport(name)
    out: list = []
    for where, raw in items:
        report.read += 1
        notes: Counter = Counter()
        if on_first is not None and not isinstance(raw, DataError):
            on_first(_Record(raw, where))
            on_first = None
        try:
            if isinstance(raw, DataError):
                raise raw
            got = convert(_Record(raw, where), notes)
        except DataError as e:
            if not skip_invalid:
                raise
            report.skip(e, MAX_ERRORS)
            continue
        for key, n in notes.items():
            report.count(key, n)
        out.extend(got)
    report.loaded = len(out)
    if report.skipped and report.skipped == report.read:
        raise DataError(
            name,
            None,
            None,
            f"no valid records: all {report.read} records are invalid; the first: {report.errors[0]}",
        )
    return out, report


def detect_format(raw: dict[str, Any]) -> str | None:
    """The preference format a record's keys suggest (see "auto" in the module docstring), or None."""
    keys = {k for k, v in raw.items() if v is not None}
    if "votes" in keys:
        return "votes"
    if "responses" in keys:
        return "rankings"
    if {"instruction", "output_1", "output_2", "preference"} <= keys:
        return "alpaca_eval"
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys or isinstance(raw["chosen"], list):
            return "pairs"
        return "hh"
    if {"completion", "label"} <= keys:
        return "kto"
    return None


def load_pairs(
    source: Any,
    *,
    format: str = "auto",
    skip_invalid: bool = False,
    hh_mismatch: str = "common-prefix",
    tie_policy: str = "half",
    smoothing: float = 0.0,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> tuple[list[PreferencePair], LoadReport]:
    """Load preference pairs (labels in [0.5, 1]) from any preference format; see the module docstring.

    `hh_mismatch` is the HH prompt-mismatch policy ("common-prefix" or "drop"); `tie_policy` ("half" or
    "ignore") and `smoothing` (α >= 0) apply to the "votes" format."""
    if format not in PAIR_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(PAIR_FORMATS)}, got {format!r}")
    if hh_mismatch not in HH_MISMATCH_POLICIES:
        raise ConfigError(
            f"hh_mismatch must be one of {', '.join(HH_MISMATCH_POLICIES)}, got {hh_mismatch!r}"
        )
    check_vote_options(tie_policy, smoothing)

    chosen_format = [None if format == "auto" else format]
    vote_lists: list[list[str]] = []  # the votes of every valid votes record

    def detect(rec: _Record) -> None:
        found = detect_format(rec.raw)
        if found is None:
            raise rec.error(
                None,
                f"cannot tell the data format from the keys {sorted(rec.raw)}; expected {_EXPECTED_KEYS}",
            )
        if found == "kto":
            raise rec.error(None, "this is unpaired data (prompt, completion, label), not preference pairs; "
                                  "train on it with `alignkit kto`")
        chosen_format[0] = found

    def convert(rec: _Record, notes: Counter) -> list[PreferencePair]:
        fmt = chosen_format[0]
        if fmt == "pairs":
            return _pair_from_pairs(rec, notes)
        if fmt == "hh":
            return _pair_from_hh(rec, notes, hh_mismatch)
        if fmt == "alpaca_eval":
            return _pair_from_alpaca_eval(rec, notes)
        if fmt == "votes":
            return _pair_from_votes(rec, notes, tie_policy, smoothing, vote_lists)
        return _pairs_from_ranking(rec, notes)

    pairs, report = _load(
        source,
        convert,
        skip_invalid=skip_invalid,
        max_record_bytes=max_record_bytes,
        on_first=detect if format == "auto" else None,
    )
    if vote_lists:
        agreement = agreement_report(vote_lists)
        for key in ("pairwise_agreement", "fleiss_kappa"):
            if math.isfinite(agreement[key]):
                report.stats[key] = agreement[key]
    return pairs, report


def load_kto(
    source: Any, *, format: str = "auto", skip_invalid: bool = False,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> tuple[list[KTOExample], LoadReport]:
    """Load unpaired examples: the "kto" format (`prompt`, `completion`, boolean `label`), or any preference
    format turned into unpaired examples by `unpaired`. "auto" reads the first record's keys. The report counts
    `desirable` and `undesirable`."""
    if format not in KTO_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(KTO_FORMATS)}, got {format!r}")
    if format == "auto":
        for _, raw in read_records(source, max_record_bytes=max_record_bytes)[1]:  # the first record decides
            if isinstance(raw, dict) and detect_format(raw) == "kto":
                format = "kto"
            break
    if format == "kto":
        examples, report = _load(source, lambda rec, notes: [_kto(rec)], skip_invalid=skip_invalid,
                                 max_record_bytes=max_record_bytes)
    else:
        pairs, report = load_pairs(source, format=format, skip_invalid=skip_invalid,
                                   max_record_bytes=max_record_bytes)
        examples = unpaired(pairs, report)
        report.loaded = len(examples)
    good = sum(e.desirable for e in examples)
    report.count("desirable", good)
    report.count("undesirable", len(examples) - good)
    return examples, report


def load_rankings(
    source: Any, *, skip_invalid: bool = False, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[list[Ranking], LoadReport]:
    """Load rankings: records with `prompt` and `responses` (>= 2 distinct texts, best first)."""
    return _load(
        source,
        lambda rec, notes: [_ranking(rec)],
        skip_invalid=skip_invalid,
        max_record_bytes=max_record_bytes,
    )


def load_sft(
    source: Any, *, skip_invalid: bool = False, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[list[SFTExample], LoadReport]:
    """Load demonstrations: `prompt` + `completion` (strings or messages) or `messages` (a whole chat)."""
    return _load(
        source, lambda rec, notes: [_sft(rec)], skip_invalid=skip_invalid, max_record_bytes=max_record_bytes
    )


def load_prompts(
    source: Any, *, skip_invalid: bool = False, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[list[Text], LoadReport]:
    """Load prompts for sampling (RL, evaluation): records with `prompt`, a string or a list of messages.
    Other keys are ignored, so preference or SFT files also serve as prompt files."""
    return _load(
        source, lambda rec, notes: [rec.prompt()], skip_invalid=skip_invalid, max_record_bytes=max_record_bytes
    )
