"""Read the files `alignkit label import` takes, with the data layer's validating loaders.

Accepted records (the shape is picked from the first record, like `load_pairs(format="auto")`):

- K-response sets `{"prompt", "responses": [...]}` (what `alignkit sample` writes): K = 2 becomes a pair
  item, K > 2 a ranking item. As gold items (`gold=True`) the responses are taken as ordered best first.
- pairs `{"prompt", "chosen", "rejected"}`: a pair item with a = chosen; as a gold item the known answer
  is "a" ("tie" when its `label` is exactly 0.5).
- unlabelled pairs `{"prompt", "response_a", "response_b"}`: a pair item; they have no known answer, so
  they cannot be gold items.
- single responses `{"prompt", "completion"}`: a thumbs item (one response, judged good or bad); as a gold
  item its `label` is the known answer (true: good, false: bad), as in KTO data.

With `thumbs=True` every response of a K-response set becomes its own thumbs item (K >= 1); such items
have no known answer, so they cannot be gold items.

Every rejected record names its file, line and field (`DataError`); with `skip_invalid` bad records are
skipped and counted in the returned `LoadReport`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from alignkit.data import LoadReport, Text, load_pairs, load_rankings, load_sft
from alignkit.data.formats import MAX_ERRORS
from alignkit.data.readers import read_records
from alignkit.errors import DataError


@dataclass
class NewItem:
    kind: str  # "pair", "ranking" or "thumbs" (one response)
    prompt: Text
    responses: list[Text]  # canonical order: response a = responses[0]
    gold: Any  # None, or the known answer: "a" / "b" / "tie" (pair), canonical indices best first (ranking),
    # "good" / "bad" (thumbs)
    source: str  # file:line


def read_items(path: str, *, gold: bool = False, thumbs: bool = False,
               skip_invalid: bool = False) -> tuple[list[NewItem], LoadReport]:
    """The labeling items in the file at `path` (see the module docstring)."""
    name, records = read_records(path)
    first = first_error = None
    for _, raw in records:  # the first readable record picks the shape
        if not isinstance(raw, DataError):
            first = raw
            break
        first_error = first_error or raw
    if first is None:
        raise first_error
    keys = {k for k, v in first.items() if v is not None}
    if thumbs and "responses" in keys:
        if gold:
            raise DataError(name, None, None, "gold thumbs items need a known label: give prompt/completion/label "
                                              "records (label true: good, false: bad), not prompt/responses")
        return _each_record(path, skip_invalid, lambda where, raw: _thumbs(name, where, raw, "responses", False))
    if "completion" in keys and "responses" not in keys:
        return _each_record(path, skip_invalid, lambda where, raw: _thumbs(name, where, raw, "completion", gold))
    if thumbs:
        raise DataError(name, None, None, f"thumbs items are made from prompt/responses or prompt/completion "
                                          f"records; the keys {sorted(first)} have neither")
    if "responses" in keys:
        rankings, report = load_rankings(path, skip_invalid=skip_invalid)
        out = []
        for r in rankings:
            k = len(r.responses)
            answer = None if not gold else "a" if k == 2 else list(range(k))
            out.append(NewItem("pair" if k == 2 else "ranking", r.prompt, r.responses, answer, str(r.where)))
        return out, report
    if {"chosen", "rejected"} <= keys:
        pairs, report = load_pairs(path, format="pairs", skip_invalid=skip_invalid)
        return [NewItem("pair", p.prompt, [p.chosen, p.rejected], ("tie" if p.label == 0.5 else "a") if gold else None,
                        str(p.where)) for p in pairs], report
    if {"response_a", "response_b"} <= keys:
        if gold:
            raise DataError(name, None, None, "gold items need a known answer: give prompt/chosen/rejected or "
                                              "prompt/responses (best first), not response_a/response_b")
        return _each_record(path, skip_invalid, lambda where, raw: [_unlabelled_pair(name, where, raw)])
    raise DataError(name, None, None, f"cannot tell the data format from the keys {sorted(first)}; expected "
                                      "prompt/responses, prompt/chosen/rejected, prompt/response_a/response_b or "
                                      "prompt/completion")


def _each_record(path: str, skip_invalid: bool, convert) -> tuple[list[NewItem], LoadReport]:
    """The items `convert(where, raw)` makes of each record of the file; a DataError stops the reading, or with
    `skip_invalid` skips the record (counted in the report)."""
    name, records = read_records(path)
    report, out = LoadReport(name), []
    for where, raw in records:
        report.read += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            out.extend(convert(where, raw))
            report.loaded += 1  # records (a record of K responses gives K thumbs items)
        except DataError as e:
            if not skip_invalid:
                raise
            report.skip(e, MAX_ERRORS)
    if not out:
        raise DataError(name, None, None, f"no valid records: all {report.read} records are invalid; "
                                          f"the first: {report.errors[0]}")
    return out, report


def _required(name: str, where, raw: dict, *keys: str) -> None:
    for key in keys:
        if raw.get(key) is None:
            raise DataError(name, where.line, key, "required field is null" if key in raw else "required field is missing")


def _unlabelled_pair(name: str, where, raw: dict) -> NewItem:
    _required(name, where, raw, "prompt", "response_a", "response_b")
    # validated as a 2-response set by the data layer; its messages are re-aimed at this line and field
    try:
        (r,), _ = load_rankings([{"prompt": raw["prompt"], "responses": [raw["response_a"], raw["response_b"]]}])
    except DataError as e:
        field = "prompt" if e.field == "prompt" else "response_a" if e.message.startswith("response 1") else "response_b"
        raise DataError(name, where.line, field, e.message) from None
    return NewItem("pair", r.prompt, r.responses, None, str(where))


def _thumbs(name: str, where, raw: dict, field: str, gold: bool) -> list[NewItem]:
    """The thumbs items of one record: its `completion`, or each of its `responses`."""
    _required(name, where, raw, "prompt", field)
    answer = None
    if gold:
        label = raw.get("label")
        if not isinstance(label, bool):
            got = "it is missing" if "label" not in raw else f"got {json.dumps(label)[:40]}"
            raise DataError(name, where.line, "label", f"a gold thumbs item needs its known label, true (good) or "
                                                       f"false (bad); {got}")
        answer = "good" if label else "bad"
    responses = raw[field] if field == "responses" else [raw[field]]
    if field == "responses" and not (isinstance(responses, list) and responses):
        raise DataError(name, where.line, field, f"expected a non-empty list of responses, got "
                                                 f"{'an empty list' if responses == [] else type(responses).__name__}")
    out = []
    for i, response in enumerate(responses, 1):
        # validated as a demonstration by the data layer; its messages are re-aimed at this line and field
        try:
            (example,), _ = load_sft([{"prompt": raw["prompt"], "completion": response}])
        except DataError as e:
            what = f"response {i}: " if field == "responses" and e.field != "prompt" else ""
            raise DataError(name, where.line, "prompt" if e.field == "prompt" else field, what + e.message) from None
        out.append(NewItem("thumbs", example.prompt, [example.completion], answer, str(where)))
    return out
