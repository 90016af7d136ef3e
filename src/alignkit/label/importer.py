"""Read the files `alignkit label import` takes, with the data layer's validating loaders.

Accepted records (the shape is picked from the first record, like `load_pairs(format="auto")`):

- K-response sets `{"prompt", "responses": [...]}` (what `alignkit sample` writes): K = 2 becomes a pair
  item, K > 2 a ranking item. As gold items (`gold=True`) the responses are taken as ordered best first.
- pairs `{"prompt", "chosen", "rejected"}`: a pair item with a = chosen; as a gold item the known answer
  is "a" ("tie" when its `label` is exactly 0.5).
- unlabelled pairs `{"prompt", "response_a", "response_b"}`: a pair item; they have no known answer, so
  they cannot be gold items.

Every rejected record names its file, line and field (`DataError`); with `skip_invalid` bad records are
skipped and counted in the returned `LoadReport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignkit.data import LoadReport, Text, load_pairs, load_rankings
from alignkit.data.formats import MAX_ERRORS
from alignkit.data.readers import read_records
from alignkit.errors import DataError


@dataclass
class NewItem:
    kind: str  # "pair" or "ranking"
    prompt: Text
    responses: list[Text]  # canonical order: response a = responses[0]
    gold: Any  # None, or the known answer: "a" / "b" / "tie" (pair), canonical indices best first (ranking)
    source: str  # file:line


def read_items(path: str, *, gold: bool = False, skip_invalid: bool = False) -> tuple[list[NewItem], LoadReport]:
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
        return _unlabelled_pairs(path, skip_invalid)
    raise DataError(name, None, None, f"cannot tell the data format from the keys {sorted(first)}; expected "
                                      "prompt/responses, prompt/chosen/rejected or prompt/response_a/response_b")


def _unlabelled_pairs(path: str, skip_invalid: bool) -> tuple[list[NewItem], LoadReport]:
    name, records = read_records(path)
    report, out = LoadReport(name), []
    for where, raw in records:
        report.read += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            for key in ("prompt", "response_a", "response_b"):
                if raw.get(key) is None:
                    raise DataError(name, where.line, key, "required field is null" if key in raw
                                    else "required field is missing")
            # validated as a 2-response set by the data layer; its messages are re-aimed at this line and field
            try:
                (r,), _ = load_rankings([{"prompt": raw["prompt"], "responses": [raw["response_a"], raw["response_b"]]}])
            except DataError as e:
                field = "prompt" if e.field == "prompt" else "response_a" if e.message.startswith("response 1") \
                    else "response_b"
                raise DataError(name, where.line, field, e.message) from None
            out.append(NewItem("pair", r.prompt, r.responses, None, str(where)))
        except DataError as e:
            if not skip_invalid:
                raise
            report.skip(e, MAX_ERRORS)
    report.loaded = len(out)
    if not out:
        raise DataError(name, None, None, f"no valid records: all {report.read} records are invalid; "
                                          f"the first: {report.errors[0]}")
    return out, report
