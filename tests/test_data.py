"""Tests for the data layer: readers, validating loaders, HH splitting, AlpacaEval labels, votes, rankings."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from alignkit.data import (
    LoadReport,
    PreferencePair,
    Ranking,
    SFTExample,
    Where,
    aggregate_votes,
    agreement_report,
    fleiss_kappa,
    iter_raw,
    load_pairs,
    load_rankings,
    load_sft,
    pair_from_votes,
)
from alignkit.errors import AlignkitError, ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_FILE = SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz"
ALPACA_FILE = SHARED / "alpaca-eval-soft" / "annotations.jsonl.gz"

RECORDS = [
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "label": 0.9},
    {"prompt": "Count to 2.", "chosen": "1, 2", "rejected": "3", "label": 1.0},
    {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Seven", "label": 0.7},
]


def write_jsonl(path: Path, records: list, *, raw_lines: dict[int, bytes] | None = None) -> Path:
    """Write records one per line; `raw_lines` replaces given 1-based lines with raw bytes."""
    lines = [json.dumps(r).encode() for r in records]
    for lineno, raw in (raw_lines or {}).items():
        lines[lineno - 1] = raw
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def raw_records(source, **kwargs) -> list[tuple[int | None, dict]]:
    return [(where.line, record) for where, record in iter_raw(source, **kwargs)]


# ----------------------------------------------------------------------------------------------------------
# Readers


def test_every_reader_yields_the_same_records(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = [(i, r) for i, r in enumerate(RECORDS, 1)]
    sources = {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", RECORDS),
        "jsonl.gz": write_jsonl(tmp_path / "d.jsonl.gz", RECORDS),
        "list": RECORDS,
        "dataset": datasets.Dataset.from_list(RECORDS),
    }
    (tmp_path / "a.json").write_text(json.dumps(RECORDS))
    (tmp_path / "o.json").write_text(json.dumps({"version": 2, "data": RECORDS}))
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(RECORDS).encode()))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "d.parquet")
    for name in ("a.json", "o.json", "a.json.gz", "d.parquet"):
        sources[name] = tmp_path / name
    for kind, source in sources.items():
        assert raw_records(source) == expected, kind
        pairs, report = load_pairs(source)
        assert [p.label for p in pairs] == [0.9, 1.0, 0.7], kind
        assert (report.read, report.loaded) == (3, 3), kind
    assert str(next(iter_raw(RECORDS))[0]) == "<memory>:1"
    assert next(iter_raw(sources["dataset"]))[0] == Where("<dataset>", 1)
    assert next(iter_raw(str(sources["jsonl"])))[0] == Where(str(sources["jsonl"]), 1)


def test_jsonl_blank_lines_are_skipped_but_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(RECORDS[0]) + "\n   \n\n" + json.dumps(RECORDS[1]) + "\r\n")
    assert raw_records(path) == [(2, RECORDS[0]), (5, RECORDS[1])]


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS[0]).encode() + b"\n")
    assert raw_records(path) == [(1, RECORDS[0])]


def test_missing_file_is_neither_file_nor_hub_id(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(AlignkitError, match="nope.jsonl.*neither an existing file nor a hub id"):
        iter_raw(missing)  # raises at call time, not on first iteration
    with pytest.raises(AlignkitError, match="neither an existing file nor a hub id"):
        load_pairs("not a hub id at all")
    with pytest.raises(AlignkitError, match="unsupported file type"):
        (tmp_path / "d.csv").write_text("a,b\n")
        iter_raw(tmp_path / "d.csv")
    with pytest.raises(AlignkitError, match="is a folder"):
        iter_raw(tmp_path)


def test_pipe_or_device_is_not_read(tmp_path):
    """Issue 18: a FIFO (reading would wait for a writer) or /dev/zero (never ends) is refused at once."""
    import os

    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(AlignkitError, match=r"^data file '.*' is not a regular file"):
            load_pairs(path)


def test_json_a_key_twice_and_numbers_python_will_not_convert(tmp_path):
    """Issue 18: json would keep the last of two equal keys silently, and refuses integers of over 4,300 digits
    with a ValueError of its own; each is one DataError naming the line (JSON lines) or the file (.json)."""
    twice = '{"prompt": "p", "chosen": "a", "chosen": "c", "rejected": "b"}'
    long = '{"prompt": "p", "chosen": "a", "rejected": "b", "label": ' + "9" * 4400 + "}"
    (tmp_path / "d.jsonl").write_text(json.dumps(RECORDS[0]) + "\n" + twice + "\n" + long + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'chosen' appears twice$"):
        load_pairs(tmp_path / "d.jsonl")
    pairs, report = load_pairs(tmp_path / "d.jsonl", skip_invalid=True)
    assert len(pairs) == 1 and report.errors == [f"{tmp_path}/d.jsonl:2: field 'chosen' appears twice",
                                                 f"{tmp_path}/d.jsonl:3: invalid JSON: a number has more than 4300 digits"]
    (tmp_path / "d.json").write_text(f"[{json.dumps(RECORDS[0])}, {twice}]")
    with pytest.raises(DataError, match=r"d\.json: field 'chosen' appears twice$"):
        load_pairs(tmp_path / "d.json")
    with pytest.raises(DataError, match=r"<memory>:1: field 'margin': margin must be a finite number, got an integer "
                                        r"too large for a float$"):
        load_pairs([{**RECORDS[0], "margin": 10**400}])


def test_hub_id_loads_with_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs, report = load_pairs("someorg/prefs")
    assert calls == [("someorg/prefs", "train")]
    assert report.source == "someorg/prefs:train" and len(pairs) == 3
    assert pairs[0].where == Where("someorg/prefs:train", 1)
    raw_records("someorg/prefs:test[:10]")
    assert calls[-1] == ("someorg/prefs", "test[:10]")

    def failing_load_dataset(name, split):
        raise FileNotFoundError("Couldn't find a dataset script")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(
        AlignkitError, match="could not load dataset 'someorg/prefs' from the hub: .*Couldn't find"
    ):
        load_pairs("someorg/prefs")


def test_dataset_dict_asks_for_a_split():
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)})
    with pytest.raises(AlignkitError, match="pass one split"):
        iter_raw(dd)
    with pytest.raises(TypeError, match="cannot read records from a int"):
        iter_raw(3)


def test_json_object_must_hold_one_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": RECORDS, "test": RECORDS}))
    with pytest.raises(DataError, match="exactly one list of records.*'train', 'test'"):
        iter_raw(path)
    path.write_text(json.dumps(RECORDS[0]))
    with pytest.raises(DataError, match="found no list"):
        iter_raw(path)
    path.write_text("\n".join(json.dumps(r) for r in RECORDS))
    with pytest.raises(DataError, match="invalid JSON at line 2 column 1: Extra data.*name it .jsonl"):
        iter_raw(path)
    path.write_text(json.dumps([RECORDS[0], [1, 2]]))
    with pytest.raises(DataError, match=r"d.json:2: record 2: expected a JSON object, got an array"):
        list(iter_raw(path))


def test_bad_json_on_line_3_names_line_and_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS, raw_lines={3: b'{"prompt": "x", "chosen" "y"}'})
    with pytest.raises(
        DataError, match=r"d.jsonl:3: invalid JSON: Expecting ':' delimiter at column 26"
    ) as e:
        load_pairs(path)
    assert e.value.line == 3 and e.value.field is None
    # reading stops at the bad line, but the two records before it were yielded
    seen = []
    with pytest.raises(DataError):
        for where, _ in iter_raw(path):
            seen.append(where.line)
    assert seen == [1, 2]


def test_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS, raw_lines={2: b"[1, 2, 3]"})
    with pytest.raises(DataError, match=r":2: expected a JSON object, got an array"):
        load_pairs(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", RECORDS, raw_lines={2: b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'}
    )
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 16 of the line\)"):
        load_pairs(path)


def test_oversized_line(tmp_path):
    big = {"prompt": "p" * 500, "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], big, RECORDS[1]])
    size = len(json.dumps(big))
    with pytest.raises(
        DataError, match=rf":2: record is {size} bytes, over the limit of 200; raise max_record_bytes"
    ):
        load_pairs(path, max_record_bytes=200)
    # the reader carries on after the long line when the loader skips it
    pairs, report = load_pairs(path, max_record_bytes=200, skip_invalid=True)
    assert [p.where.line for p in pairs] == [1, 3] and report.skipped == 1
    # a line of exactly the limit is fine, one byte more is not (the newline does not count)
    exact = len(json.dumps(RECORDS[0]))
    assert len(raw_records(write_jsonl(tmp_path / "e.jsonl", [RECORDS[0]]), max_record_bytes=exact)) == 1
    with pytest.raises(DataError, match=f"record is {exact} bytes, over the limit of {exact - 1}"):
        raw_records(tmp_path / "e.jsonl", max_record_bytes=exact - 1)


def test_empty_files(tmp_path):
    for name in ("e.jsonl", "e.json", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError, match=rf"{name}: file is empty"):
            load_pairs(tmp_path / name)
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="file is empty"):
        load_pairs(tmp_path / "e.jsonl.gz")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    with pytest.raises(DataError, match="no records"):
        load_pairs(tmp_path / "blank.jsonl")
    (tmp_path / "a.json").write_text("[]")
    with pytest.raises(DataError, match="no records"):
        load_pairs(tmp_path / "a.json")
    with pytest.raises(DataError, match="no records"):
        load_pairs([])


def test_corrupt_gzip_and_parquet(tmp_path):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="bad.jsonl.gz: cannot read the file"):
        load_pairs(tmp_path / "bad.jsonl.gz")
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        load_pairs(tmp_path / "bad.parquet")


# ----------------------------------------------------------------------------------------------------------
# Validation of pairs


def test_string_responses_after_a_message_prompt():
    (pair,), _ = load_pairs([{"prompt": [msg("user", "q")], "chosen": "a", "rejected": [msg("assistant", "b")]}])
    assert pair.prompt == [msg("user", "q")] and pair.chosen == "a" and pair.rejected == [msg("assistant", "b")]


@pytest.mark.parametrize(
    "record, field, message",
    [
        ({"prompt": "p", "chosen": "a"}, "rejected", "required field is missing"),
        ({"prompt": "p", "chosen": "a", "rejected": None}, "rejected", "required field is null"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "label": 1.7},
            "label",
            r"soft label 1.7 is outside \[0, 1\]",
        ),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "label": -0.1}, "label", "outside"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "label": "0.9"},
            "label",
            "must be a number, got str",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "label": True},
            "label",
            "must be a number, got bool",
        ),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "label": math.nan}, "label", "finite"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "margin": math.inf},
            "margin",
            "finite number, got inf",
        ),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", "text is empty"),
        ({"prompt": " \n\t", "chosen": "a", "rejected": "b"}, "prompt", "text is only whitespace"),
        (
            {"prompt": "p", "chosen": "same", "rejected": "same"},
            "rejected",
            "chosen and rejected are identical",
        ),
        (
            {"prompt": 3, "chosen": "a", "rejected": "b"},
            "prompt",
            "expected a string or a list of messages, got int",
        ),
        ({"prompt": "p", "chosen": {"text": "a"}, "rejected": "b"}, "chosen", "got dict"),
    ],
)
def test_invalid_pair_names_line_and_field(tmp_path, record, field, message):
    path = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], record, RECORDS[1]])
    with pytest.raises(DataError, match=message) as e:
        load_pairs(path, format="pairs")
    assert (e.value.source, e.value.line, e.value.field) == (str(path), 2, field)
    assert str(e.value).startswith(f"{path}:2: field '{field}': ")
    # skipping: the valid records load, the bad one is counted and its message kept
    pairs, report = load_pairs(path, format="pairs", skip_invalid=True)
    assert [p.where.line for p in pairs] == [1, 3]
    assert (report.read, report.loaded, report.skipped) == (3, 2, 1)
    assert report.errors == [str(e.value)]


def test_missing_rejected_in_auto_mode_names_line_2(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'rejected': required field is missing"):
        load_pairs(path)


def test_skip_invalid_counts_unreadable_lines_and_keeps_20_errors(tmp_path):
    records = [RECORDS[0]] + [{"prompt": "p", "chosen": "x", "rejected": "x"}] * 30
    path = write_jsonl(tmp_path / "d.jsonl", records, raw_lines={2: b"{broken", 3: b"\xff\xfe"})
    pairs, report = load_pairs(path, skip_invalid=True)
    assert len(pairs) == 1 and report.read == 31 and report.skipped == 30
    assert len(report.errors) == 20
    assert "d.jsonl:2: invalid JSON" in report.errors[0] and "d.jsonl:3: not valid UTF-8" in report.errors[1]
    assert "1 loaded of 31 read; 30 invalid skipped" in report.summary()


def test_all_invalid_raises_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "x"}] * 3)
    with pytest.raises(
        DataError, match="no valid records: all 3 records are invalid; the first: .*:1: field 'rejected'"
    ):
        load_pairs(path, skip_invalid=True)


def test_unknown_format_names_line_1_and_expected_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataError,
        match=r"d.jsonl:1: cannot tell the data format from the keys \['answer', 'question'\]; "
        r"expected prompt/chosen/rejected \(pairs\)",
    ):
        load_pairs(path, skip_invalid=True)
    with pytest.raises(ConfigError, match="format must be one of"):
        load_pairs(path, format="csv")
    with pytest.raises(ConfigError, match="hh_mismatch"):
        load_pairs(path, hh_mismatch="keep")
    with pytest.raises(ConfigError, match="smoothing"):
        load_pairs(path, smoothing=-1)


def test_soft_labels_below_half_are_flipped():
    records = [
        {"prompt": "p", "chosen": "A", "rejected": "B", "label": 0.2, "margin": 1.5},
        {"prompt": "p", "chosen": "C", "rejected": "D", "label": 0.5},
        {"prompt": "p", "chosen": "E", "rejected": "F", "label": 0.75},
        {"prompt": "p", "chosen": "G", "rejected": "H", "label": 0},
        {"prompt": "p", "chosen": "I", "rejected": "J"},
    ]
    pairs, report = load_pairs(records)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("B", "A"),
        ("C", "D"),
        ("E", "F"),
        ("H", "G"),
        ("I", "J"),
    ]
    assert [p.label for p in pairs] == pytest.approx([0.8, 0.5, 0.75, 1.0, 1.0])
    assert pairs[0].margin == 1.5 and pairs[0].meta == {"format": "pairs", "flipped": True}
    assert pairs[2].meta == {"format": "pairs"}
    assert report.counts == {"flipped": 2, "label_half": 1}
    assert all(0.5 <= p.label <= 1 for p in pairs)
    assert all(isinstance(p, PreferencePair) for p in pairs)


# ----------------------------------------------------------------------------------------------------------
# Chat form


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_chat_pairs_with_prompt_messages():
    record = {
        "prompt": [msg("system", "Be brief."), msg("user", "Hi?")],
        "chosen": [{"role": "assistant", "content": "Hello.", "name": "bot"}],
        "rejected": [msg("assistant", "Go away.")],
    }
    (pair,), _ = load_pairs([record])
    assert pair.prompt == record["prompt"]
    assert pair.chosen == [msg("assistant", "Hello.")]  # extra keys dropped
    assert pair.rejected == [msg("assistant", "Go away.")]


def test_chat_pairs_from_whole_conversations():
    shared = [msg("user", "Plan a trip."), msg("assistant", "Where to?"), msg("user", "Rome.")]
    record = {
        "chosen": shared
        + [msg("assistant", "Day 1: the Colosseum."), msg("user", "Day 2?"), msg("assistant", "Vatican.")],
        "rejected": shared + [msg("assistant", "No idea.")],
    }
    (pair,), _ = load_pairs([record])
    assert pair.prompt == shared
    assert pair.chosen == record["chosen"][3:] and len(pair.chosen) == 3
    assert pair.rejected == [msg("assistant", "No idea.")]
    # a string prompt next to whole conversations (as in UltraFeedback-binarized) is ignored
    (pair2,), _ = load_pairs([{**record, "prompt": "Plan a trip."}])
    assert pair2.prompt == shared
    # conversations that differ only in a user turn hold no preference between model outputs
    diverge = {"chosen": shared[:2] + [msg("user", "Rome.")], "rejected": shared[:2] + [msg("user", "Oslo.")]}
    with pytest.raises(
        DataError, match="field 'chosen': after the 1 shared leading message.*must end with an assistant"
    ):
        load_pairs([diverge])
    # a shared assistant turn goes back into the responses so that both start with an assistant turn
    branch = {
        "chosen": shared[:1] + [msg("assistant", "A"), msg("user", "u2"), msg("assistant", "B")],
        "rejected": shared[:1] + [msg("assistant", "A"), msg("user", "u3"), msg("assistant", "C")],
    }
    (pair3,), _ = load_pairs([branch])
    assert pair3.prompt == shared[:1] and pair3.chosen[0] == msg("assistant", "A")


@pytest.mark.parametrize(
    "record, field, message",
    [
        (
            {"prompt": "q", "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]},
            "chosen",
            "prompt is a string, so this must be one too",
        ),
        (
            {"prompt": [msg("user", "q")], "chosen": [msg("bot", "a")], "rejected": [msg("assistant", "b")]},
            "chosen",
            "message 1 has role 'bot'",
        ),
        (
            {
                "prompt": [msg("user", "q")],
                "chosen": [{"role": "assistant"}],
                "rejected": [msg("assistant", "b")],
            },
            "chosen",
            r"message 1 \(assistant\): required field 'content' is missing",
        ),
        (
            {
                "prompt": [msg("user", " ")],
                "chosen": [msg("assistant", "a")],
                "rejected": [msg("assistant", "b")],
            },
            "prompt",
            r"message 1 \(user\) has empty content",
        ),
        (
            {"prompt": [], "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]},
            "prompt",
            "list of messages is empty",
        ),
        (
            {
                "prompt": [msg("user", "q")],
                "chosen": [msg("assistant", "a"), msg("user", "more?")],
                "rejected": [msg("assistant", "b")],
            },
            "chosen",
            "a response must end with an assistant message, got 'user'",
        ),
        (
            {"chosen": [msg("user", "x")], "rejected": [msg("user", "x"), msg("assistant", "a")]},
            "chosen",
            "chosen ends with the 1 leading message",
        ),
        (
            {
                "chosen": [msg("user", "x"), msg("assistant", "a")],
                "rejected": [msg("user", "y"), msg("assistant", "b")],
            },
            "chosen",
            "no common prompt",
        ),
        (
            {
                "chosen": [msg("user", "x"), msg("assistant", "a")],
                "rejected": [msg("user", "x"), msg("assistant", "a")],
            },
            "rejected",
            "identical",
        ),
    ],
)
def test_invalid_chat_pairs(record, field, message):
    """Each bad chat record names line 1 of the in-memory list and the field at fault."""
    with pytest.raises(DataError, match=message) as e:
        load_pairs([record], format="pairs")
    assert (e.value.source, e.value.line, e.value.field) == ("<memory>", 1, field)


# ----------------------------------------------------------------------------------------------------------
# HH-RLHF transcripts


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def test_hh_split_at_last_assistant_turn():
    record = {
        "chosen": hh("Hi", "Hello!", "Help me?", "Sure, what with?"),
        "rejected": hh("Hi", "Hello!", "Help me?", "No."),
    }
    (pair,), report = load_pairs([record])
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant:"
    assert pair.chosen == " Sure, what with?" and pair.rejected == " No."
    assert pair.label == 1.0 and pair.meta == {"format": "hh"} and report.counts == {}


def test_hh_prompt_mismatch_policies():
    record = {"chosen": hh("Hi", "Hello!", "Help me?", "Sure."), "rejected": hh("Hi", "Go away.")}
    pairs, report = load_pairs([record, {"chosen": hh("Q", "A"), "rejected": hh("Q", "B")}])
    assert pairs[0].prompt == "\n\nHuman: Hi\n\nAssistant:"
    assert pairs[0].chosen == " Hello!\n\nHuman: Help me?\n\nAssistant: Sure."
    assert pairs[0].rejected == " Go away."
    assert report.counts == {"hh_prompt_mismatch": 1} and report.loaded == 2
    pairs, report = load_pairs(
        [record, {"chosen": hh("Q", "A"), "rejected": hh("Q", "B")}], hh_mismatch="drop"
    )
    assert [p.chosen for p in pairs] == [" A"]
    assert report.counts == {"hh_prompt_mismatch_dropped": 1} and report.skipped == 0 and report.read == 2


def test_hh_invalid_transcripts():
    with pytest.raises(DataError, match="field 'rejected': no '\\\\n\\\\nAssistant:' turn"):
        load_pairs([{"chosen": hh("Q", "A"), "rejected": "\n\nHuman: Q only"}])
    with pytest.raises(
        DataError, match="field 'chosen': .*different prompts and their common beginning holds no"
    ):
        load_pairs([{"chosen": hh("Hi", "A"), "rejected": hh("Ho", "A")}])
    with pytest.raises(DataError, match="field 'chosen': expected a string, got list"):
        load_pairs([{"chosen": [msg("user", "q")], "rejected": hh("Q", "A")}], format="hh")
    with pytest.raises(DataError, match="identical"):
        load_pairs([{"chosen": hh("Q", "A"), "rejected": hh("Q", "A")}])


def test_hh_empty_response_is_kept_and_counted():
    pairs, report = load_pairs([{"chosen": hh("Q", "") + " ", "rejected": hh("Q", "Sure, here it is.")}])
    assert pairs[0].chosen.strip() == "" and report.counts == {"hh_empty_response": 1}


# ----------------------------------------------------------------------------------------------------------
# AlpacaEval


def test_alpaca_eval_label_mapping():
    base = {"instruction": "Write a haiku.", "output_1": "ref", "output_2": "model", "generator_2": "m7b"}
    pairs, report = load_pairs(
        [{**base, "preference": 1.2}, {**base, "preference": 1.9}, {**base, "preference": 1.5}]
    )
    first, second, third = pairs
    assert (first.prompt, first.chosen, first.rejected) == ("Write a haiku.", "ref", "model")
    assert first.label == pytest.approx(0.8)
    assert (second.chosen, second.rejected) == ("model", "ref") and second.label == pytest.approx(0.9)
    assert second.meta == {"format": "alpaca_eval", "generator_2": "m7b", "flipped": True}
    assert third.label == 0.5 and third.chosen == "ref"
    assert report.counts == {"flipped": 1, "label_half": 1}
    with pytest.raises(DataError, match=r"field 'preference': preference 2.5 is outside \[1, 2\]"):
        load_pairs([{**base, "preference": 2.5}])
    with pytest.raises(DataError, match="field 'preference': required field is missing"):
        load_pairs([base], format="alpaca_eval")
    tie, report = load_pairs([{**base, "output_2": "ref", "preference": 1.5}, {**base, "preference": 1.2}])
    assert len(tie) == 1 and report.read == 2 and report.counts["identical_outputs_dropped"] == 1


# ----------------------------------------------------------------------------------------------------------
# Real data in ../shared/data


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared data folder sits next to the repository)")
    return path


def test_real_hh_rlhf_harmless_base_test():
    path = need(HH_FILE)
    pairs, report = load_pairs(path)
    assert len(pairs) == report.read == report.loaded == 2312
    assert report.counts["hh_prompt_mismatch"] == 5
    assert report.counts["hh_empty_response"] == 4  # four chosen responses are a single space
    assert all(p.prompt.endswith("\n\nAssistant:") and p.label == 1.0 for p in pairs)
    assert all(p.prompt + p.chosen != p.prompt + p.rejected for p in pairs)
    dropped, report = load_pairs(path, hh_mismatch="drop")
    assert len(dropped) == 2307 and report.counts["hh_prompt_mismatch_dropped"] == 5


def test_real_alpaca_eval_soft_annotations():
    path = need(ALPACA_FILE)
    # 26 records compare a system's output with an identical reference output (preference exactly 1.5):
    # no preference to learn, so they are left out and counted, not errors
    pairs, report = load_pairs(path)
    assert report.read == 9656 and report.skipped == 0 and len(pairs) == report.loaded == 9630
    assert all(0.5 <= p.label <= 1.0 for p in pairs)
    assert report.counts == {"flipped": 3248, "label_half": 2, "identical_outputs_dropped": 26}
    soft = sum(0.05 < p.label < 0.95 for p in pairs) / len(pairs)
    assert 0.2 < soft < 0.3  # about a quarter are genuinely soft, as the data README says
    assert {p.meta["generator_1"] for p in pairs} == {"gpt4_1106_preview"}


# ----------------------------------------------------------------------------------------------------------
# Votes and agreement


def test_aggregate_votes():
    assert aggregate_votes(["a", "a", "b"]) == (pytest.approx(2 / 3), 3)
    assert aggregate_votes(["a", "tie", "b", "a"]) == (pytest.approx(2.5 / 4), 4)
    assert aggregate_votes(["a", "tie", "b", "a"], tie_policy="ignore") == (pytest.approx(2 / 3), 3)
    assert aggregate_votes(["a", "a", "a"], smoothing=1.0) == (pytest.approx(4 / 5), 3)
    assert aggregate_votes(["tie", "tie"], tie_policy="ignore") == (None, 0)
    assert aggregate_votes([]) == (None, 0)
    assert aggregate_votes([{"annotator": "x", "choice": "B"}, "b"]) == (0.0, 2)
    with pytest.raises(ValueError, match="vote 2 is 'c'"):
        aggregate_votes(["a", "c"])
    with pytest.raises(ValueError, match="tie_policy"):
        aggregate_votes(["a"], tie_policy="drop")


def test_pair_from_votes_orients_by_majority():
    pair = pair_from_votes("p", "A", "B", ["b", "b", "a", "tie"])
    assert (pair.chosen, pair.rejected) == ("B", "A") and pair.label == pytest.approx(0.625)
    assert pair.meta == {"format": "votes", "n_votes": 4, "p_a": pytest.approx(0.375), "chosen_is": "b"}
    tie = pair_from_votes("p", "A", "B", ["a", "b"])
    assert (tie.chosen, tie.label) == ("A", 0.5)
    assert pair_from_votes("p", "A", "B", ["tie"], tie_policy="ignore") is None


def test_load_votes_labels_and_agreement():
    records = [
        {"prompt": "p1", "response_a": "A1", "response_b": "B1", "votes": ["a", "a", "a"]},
        {"prompt": "p2", "response_a": "A2", "response_b": "B2", "votes": ["a", "a", "b"]},
        {
            "prompt": "p3",
            "response_a": "A3",
            "response_b": "B3",
            "votes": [
                {"annotator": "u1", "choice": "b"},
                {"annotator": "u2", "choice": "b"},
                {"annotator": "u3", "choice": "tie"},
            ],
        },
        {"prompt": "p4", "response_a": "A4", "response_b": "B4", "votes": ["a", "b"]},
    ]
    pairs, report = load_pairs(records)
    assert [(p.chosen, p.rejected) for p in pairs] == [("A1", "B1"), ("A2", "B2"), ("B3", "A3"), ("A4", "B4")]
    assert [p.label for p in pairs] == pytest.approx([1.0, 2 / 3, 2.5 / 3, 0.5])
    assert report.counts == {"votes": 11, "vote_ties": 1}
    # per item agreeing pairs: 3/3, 1/3, 1/3, 0/1 -> mean 5/12
    assert report.stats["pairwise_agreement"] == pytest.approx(5 / 12)
    table = [[3, 0, 0], [2, 1, 0], [0, 2, 1], [1, 1, 0]]
    assert report.stats["fleiss_kappa"] == pytest.approx(fleiss_kappa(table))
    smoothed, _ = load_pairs(records[:1], smoothing=1.0)
    assert smoothed[0].label == pytest.approx(4 / 5)
    ignored, report = load_pairs(records[2:3], tie_policy="ignore")
    assert ignored[0].label == 1.0
    with pytest.raises(DataError, match=r":1: field 'votes': vote 1 is 'maybe'"):
        load_pairs([{**records[0], "votes": ["maybe"]}])
    with pytest.raises(DataError, match="field 'votes': the list of votes is empty"):
        load_pairs([{**records[0], "votes": []}])
    with pytest.raises(DataError, match="field 'response_b': response_a and response_b are identical"):
        load_pairs([{**records[0], "response_b": "A1"}])


def test_fleiss_kappa_small_table_by_hand():
    # 3 items, 3 raters, categories (a, b, tie).
    # P_i = (sum_j n_ij^2 - n) / (n (n - 1)): item 1 (9 - 3) / 6 = 1; items 2 and 3 (4 + 1 - 3) / 6 = 1/3.
    # P_bar = (1 + 1/3 + 1/3) / 3 = 5/9.  p_j = (5, 3, 1) / 9, so P_e = (25 + 9 + 1) / 81 = 35/81.
    # kappa = (5/9 - 35/81) / (1 - 35/81) = (10/81) / (46/81) = 5/23.
    assert fleiss_kappa([[3, 0, 0], [2, 1, 0], [0, 2, 1]]) == pytest.approx(5 / 23)


def test_fleiss_kappa_ten_items_fourteen_raters():
    # The textbook-sized case: 10 items, 14 raters each, 5 categories. By the formula above
    # P_bar = 0.37802 and p_j = (20, 28, 39, 21, 32) / 140, so P_e = 0.21276;
    # kappa = (P_bar - P_e) / (1 - P_e) = 0.20993.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_kappa_edge_cases():
    # varying numbers of raters: P_i = 1, 0, 1/3 -> P_bar = 4/9; votes (4, 3, 0) of 7 -> P_e = 25/49;
    # kappa = (4/9 - 25/49) / (24/49) = -29/216
    assert fleiss_kappa([[2, 0, 0], [1, 1, 0], [1, 2, 0]]) == pytest.approx(-29 / 216)
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)  # perfect agreement, balanced categories
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)  # every pair disagrees
    assert math.isnan(fleiss_kappa([[3, 0], [2, 0]]))  # one category only: undefined
    assert fleiss_kappa([[1, 0], [0, 2], [2, 0]]) == pytest.approx(1.0)  # a single-vote item is left out
    with pytest.raises(ValueError, match="row 2 has 3 categories"):
        fleiss_kappa([[1, 1], [1, 1, 1]])


def test_agreement_report():
    report = agreement_report([["a", "a"], {"votes": ["a", "b", "tie"]}, ["b"]])
    assert report["items"] == 2 and report["votes"] == 6
    assert report["pairwise_agreement"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert report["fleiss_kappa"] == pytest.approx(fleiss_kappa([[2, 0, 0], [1, 1, 1]]))


# ----------------------------------------------------------------------------------------------------------
# Rankings and SFT


def test_rankings_and_their_pairs():
    records = [
        {"prompt": "p", "responses": ["best", "mid", "worst"]},
        {"prompt": "q", "responses": ["good", "bad"]},
    ]
    rankings, report = load_rankings(records)
    assert all(isinstance(r, Ranking) for r in rankings) and rankings[0].responses == ["best", "mid", "worst"]
    assert (report.read, report.loaded) == (2, 2)
    pairs, report = load_pairs(records)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("best", "mid"),
        ("best", "worst"),
        ("mid", "worst"),
        ("good", "bad"),
    ]
    assert report.loaded == 4 and report.counts == {"rankings": 2}
    assert all(p.label == 1.0 and p.meta == {"format": "rankings"} for p in pairs)
    assert pairs[3].where == Where("<memory>", 2)
    with pytest.raises(DataError, match="field 'responses': responses 1 and 3 are identical"):
        load_rankings([{"prompt": "p", "responses": ["x", "y", "x"]}])
    with pytest.raises(DataError, match="field 'responses': a ranking needs at least 2 responses, got 1"):
        load_rankings([{"prompt": "p", "responses": ["x"]}])
    with pytest.raises(DataError, match="field 'responses': response 2: text is only whitespace"):
        load_rankings([{"prompt": "p", "responses": ["x", "  "]}])


def test_load_sft_shapes_and_errors():
    records = [
        {"prompt": "2+2?", "completion": "4"},
        {"messages": [msg("user", "Hi"), msg("assistant", "Hello")], "prompt": "ignored"},
        {"prompt": [msg("user", "Hi")], "completion": [msg("assistant", "Hey")]},
    ]
    examples, report = load_sft(records)
    assert all(isinstance(e, SFTExample) for e in examples) and report.loaded == 3
    assert (examples[0].prompt, examples[0].completion, examples[0].messages) == ("2+2?", "4", None)
    assert examples[1].messages == records[1]["messages"] and examples[1].prompt is None
    assert examples[2].completion == [msg("assistant", "Hey")]
    with pytest.raises(DataError, match="field 'messages': no assistant message"):
        load_sft([{"messages": [msg("user", "Hi")]}])
    with pytest.raises(DataError, match="field 'completion': required field is missing"):
        load_sft([{"prompt": "x"}])
    with pytest.raises(DataError, match="field 'messages': required field is missing"):
        load_sft([{"text": "x"}])
    with pytest.raises(DataError, match="field 'completion': text is empty"):
        load_sft([{"prompt": "x", "completion": ""}])
    examples, report = load_sft(records + [{"prompt": "x"}], skip_invalid=True)
    assert len(examples) == 3 and report.skipped == 1 and isinstance(report, LoadReport)


# ---- Chain of Hindsight sequences ---------------------------------------------------------------------------

def test_coh_prompt_ends_the_user_turn_and_leaves_the_input_alone():
    from alignkit.data.coh import coh_prompt

    assert coh_prompt("Review a film.", " A helpful answer:") == "Review a film. A helpful answer:"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Review a film."}]
    out = coh_prompt(chat, " A helpful answer:")
    assert out[3] == {"role": "user", "content": "Review a film. A helpful answer:"}
    assert out[:3] == chat[:3]
    assert chat[3]["content"] == "Review a film."  # the caller's messages are not changed


def test_coh_sequences_by_hand():
    from alignkit.data.coh import coh_sequences

    seqs = coh_sequences("good", "bad", positive="+", negative="-", forms=["single", "chained"])
    assert seqs == [("+", [("good", True)]), ("-", [("bad", True)]),
                    ("-", [("bad", True), ("+", False), ("good", True)]),
                    ("+", [("good", True), ("-", False), ("bad", True)])]
    with pytest.raises(ValueError, match="triple"):
        coh_sequences("good", "bad", positive="+", negative="-", forms=["triple"])
