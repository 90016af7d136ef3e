"""Read raw records (plain dicts) from files, `datasets` objects, hub ids or memory.

`iter_raw(source)` yields `(Where, dict)` for every record, so that later validation can say exactly where a
bad record came from. A source is one of:

- a path to a data file, chosen by its suffix:
  - `.jsonl` / `.jsonl.gz`: one JSON object per line. `Where.line` is the 1-based line number in the file.
    Blank lines are not records and are skipped silently (they still count in the line numbering).
  - `.json` / `.json.gz`: one JSON document, either an array of objects or an object holding exactly one
    list of records, e.g. `{"data": [...]}`. Here `Where.line` is the 1-based *record number* within that
    list (error messages read "file.json:3" for record 3), since one JSON document gives no useful lines.
  - `.parquet`: one record per row (via pyarrow); `Where.line` is the 1-based row number.
- a `datasets.Dataset` (or `IterableDataset`): source name `"<dataset>"`, line = 1-based record index;
- a list of dicts: source name `"<memory>"`, line = 1-based index;
- a Hugging Face hub id `org/name` or `org/name:split` (only when no local path of that name exists),
  loaded with `datasets.load_dataset(name, split=split or "train")`.

Problems with the whole source (missing file, a pipe or device, empty file, unreadable gzip or Parquet, a
`.json` document that does not parse) raise at once. Problems with one record (a line that is not valid JSON,
not UTF-8, not an object, an object that gives a key twice, or longer than `max_record_bytes`) raise
`DataError` naming the line; loaders in `formats` can instead skip such records (`skip_invalid=True`), using
`read_records`, which yields the error in place of the record and carries on with the next line.

`max_record_bytes` guards against a file that is not really line-delimited (a JSON-lines file with no
newlines would otherwise be read into memory whole). It applies to JSON-lines lines only.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alignkit.data.records import Where
from alignkit.errors import AlignkitError, DataError

DEFAULT_MAX_RECORD_BYTES = 16 * 2**20
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

# "org/name" or "org/name:split" (the split may use the datasets slicing syntax, e.g. "train[:100]").
_HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)(?::(.+))?$")
# Field names of our own record shapes: a .json object whose only list sits under one of these is a single
# record, not a container of records.
_RECORD_FIELDS = frozenset({"messages", "prompt", "completion", "chosen", "rejected", "responses", "votes"})
_READ_CHUNK = 2**20

RawItem = tuple[Where, "dict[str, Any] | DataError"]


def iter_raw(
    source: Any, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[tuple[Where, dict]]:
    """Yield `(where, record)` for every record of `source` (see the module docstring for what it may be).

    Source-level problems (file not found, unsupported suffix, empty file) raise here, at call time;
    the first bad record raises `DataError` (file, line, message) while iterating."""
    _, items = read_records(source, max_record_bytes=max_record_bytes)
    return _raise_errors(items)


def _raise_errors(items: Iterator[RawItem]) -> Iterator[tuple[Where, dict]]:
    for where, record in items:
        if isinstance(record, DataError):
            raise record
        yield where, record


def read_records(
    source: Any, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[str, Iterator[RawItem]]:
    """Resolve `source` and return `(source_name, items)`.

    `items` yields `(where, record)` where `record` is either the raw dict or, for a record that could not be
    read (bad JSON, not an object, not UTF-8, too long), the `DataError` describing it, so that a caller
    can choose to skip it and continue. Source-level problems raise `AlignkitError`/`DataError`."""
    if max_record_bytes < 1:
        raise ValueError(f"max_record_bytes must be positive, got {max_record_bytes}")
    if isinstance(source, str | os.PathLike):
        return _resolve_path(source, max_record_bytes)
    if isinstance(source, list | tuple):
        if not source:
            raise DataError("<memory>", None, None, "no records: the list is empty")
        return "<memory>", _from_iterable(source, "<memory>")
    dataset = _as_dataset(source)
    if dataset is not None:
        return "<dataset>", _from_dataset(dataset, "<dataset>")
    raise TypeError(
        f"cannot read records from a {type(source).__name__}; expected a file path, a hub id "
        "('org/name[:split]'), a list of dicts or a datasets.Dataset"
    )


def _resolve_path(source: str | os.PathLike, max_record_bytes: int) -> tuple[str, Iterator[RawItem]]:
    """A local file when it exists, else a hub id when it looks like one, else a clear 'not found' error."""
    name = os.fspath(source)
    path = Path(name)
    if path.is_dir():
        raise AlignkitError(f"'{name}' is a folder, not a data file (expected one of {', '.join(SUFFIXES)})")
    if path.is_file():
        return name, _read_file(path, name, max_record_bytes)
    if path.exists():  # a FIFO, a device such as /dev/zero, a socket: reading may block, or never end
        raise AlignkitError(f"data file '{name}' is not a regular file (a pipe, device or socket is not read)")
    if path.is_symlink():
        raise AlignkitError(f"data file '{name}' is a symbolic link that leads nowhere (its target is missing, or "
                            "the links form a loop)")
    match = _HUB_ID.match(name) if isinstance(source, str) else None
    if match and _suffix(name) is None:
        hub_name, split = match.group(1), match.group(2) or "train"
        return f"{hub_name}:{split}", _from_dataset(_load_hub(hub_name, split), f"{hub_name}:{split}")
    raise AlignkitError(
        f"data file not found: '{name}' (it is neither an existing file nor a hub id like 'org/name' "
        "or 'org/name:split')"
    )


def _suffix(name: str) -> str | None:
    """The supported suffix `name` ends with (longest first, so '.jsonl.gz' wins over '.gz'), or None."""
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return None


def _read_file(path: Path, name: str, max_record_bytes: int) -> Iterator[RawItem]:
    suffix = _suffix(name)
    if suffix is None:
        raise AlignkitError(f"'{name}': unsupported file type; expected one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(name, None, None, "file is empty")
    if suffix in (".jsonl", ".jsonl.gz"):
        return _read_jsonl(path, name, gzipped=suffix.endswith(".gz"), limit=max_record_bytes)
    if suffix in (".json", ".json.gz"):
        return _read_json(path, name, gzipped=suffix.endswith(".gz"))
    return _read_parquet(path, name)


def _json_kind(value: Any) -> str:
    """How JSON would name the type of a parsed value, for messages like 'got an array'."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _read_jsonl(path: Path, name: str, *, gzipped: bool, limit: int) -> Iterator[RawItem]:
    """One JSON object per line; blank lines skipped; lines over `limit` bytes are reported, not parsed."""
    opener = gzip.open if gzipped else open
    lineno = 0
    records = 0
    try:
        with opener(path, "rb") as f:
            while True:
                # Read at most limit + 2 bytes (line + "\r\n"), so an over-long line is never held whole.
                raw = f.readline(limit + 2)
                if not raw:
                    break
                lineno += 1
                size = len(raw)
                if not raw.endswith(b"\n") and size == limit + 2:
                    while True:  # count the rest of the over-long line, then carry on after it
                        chunk = f.readline(_READ_CHUNK)
                        size += len(chunk)
                        if not chunk or chunk.endswith(b"\n"):
                            raw = chunk or b""
                            break
                size -= len(raw) - len(raw.rstrip(b"\r\n"))
                if size > limit:
                    records += 1
                    yield (
                        Where(name, lineno),
                        DataError(
                            name,
                            lineno,
                            None,
                            f"record is {size} bytes, over the limit of {limit}; raise max_record_bytes",
                        ),
                    )
                    continue
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                    raw = raw[3:]
                if not raw.strip():
                    continue
                records += 1
                yield Where(name, lineno), _parse_line(raw, name, lineno)
    except (OSError, EOFError, zlib.error) as e:
        at = f" after line {lineno}" if lineno else ""
        raise DataError(name, None, None, f"cannot read the file{at}: {e}") from e
    if lineno == 0:
        raise DataError(name, None, None, "file is empty")
    if records == 0:
        raise DataError(name, None, None, "no records: the file holds only blank lines")


def _parse_line(raw: bytes, name: str, lineno: int) -> dict | DataError:
    """Decode and parse one JSON-lines line; return the object or the error that says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return DataError(
            name,
            lineno,
            None,
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)",
        )
    try:
        value = _loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        return DataError(name, lineno, None, f"invalid JSON: {e.msg} at column {e.pos + 1}")
    except ValueError as e:  # a repeated key, a number of too many digits
        return DataError(name, lineno, None, str(e))
    except RecursionError:
        return DataError(name, lineno, None, "invalid JSON: nested too deeply")
    if not isinstance(value, dict):
        return DataError(name, lineno, None, f"expected a JSON object, got {_json_kind(value)}")
    return value


class _RepeatedKey(ValueError):
    """A JSON object that gives one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict; a key given twice is an error (json.loads would keep the last value silently)."""
    record = dict(pairs)
    if len(record) < len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(f"field '{key}' appears twice")
            seen.add(key)
    return record


def _loads(text: str) -> Any:
    """json.loads that refuses a repeated key; a problem other than bad syntax is a ValueError saying what it is."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, _RepeatedKey):
        raise
    except ValueError:  # Python converts integers of at most sys.get_int_max_str_digits() digits
        raise ValueError(f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits") from None


def _read_json(path: Path, name: str, *, gzipped: bool) -> Iterator[RawItem]:
    """A whole JSON document: an array of records, or an object holding one list of records."""
    try:
        data = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(name, None, None, f"cannot read the file: {e}") from e
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise DataError(name, None, None, "file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            name, None, None, f"not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line})"
        ) from e
    try:
        document = _loads(text)
    except json.JSONDecodeError as e:
        hint = " (is this a JSON-lines file? name it .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(
            name, None, None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}{hint}"
        ) from e
    except ValueError as e:
        raise DataError(name, None, None, str(e)) from None
    except RecursionError:
        raise DataError(name, None, None, "invalid JSON: nested too deeply") from None
    records = _records_in_document(document, name)
    if not records:
        raise DataError(name, None, None, "no records: the list of records is empty")
    return _from_iterable(records, name)


def _records_in_document(document: Any, name: str) -> list:
    """The list of records inside a parsed .json document (see the module docstring)."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        lists = [k for k, v in document.items() if isinstance(v, list) and k not in _RECORD_FIELDS]
        if len(lists) == 1:
            return document[lists[0]]
        found = f"found lists under {', '.join(map(repr, lists))}" if lists else "found no list"
        raise DataError(
            name,
            None,
            None,
            f'a JSON object must hold exactly one list of records, e.g. {{"data": [...]}}; {found} '
            "(a single record must be wrapped in an array)",
        )
    raise DataError(name, None, None, f"expected a JSON array of objects, got {_json_kind(document)}")


def _read_parquet(path: Path, name: str) -> Iterator[RawItem]:
    """One record per row, read batch by batch."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
        raise DataError(name, None, None, f"not a readable Parquet file: {e}") from e
    if parquet.metadata.num_rows == 0:
        raise DataError(name, None, None, "no records: the Parquet file has no rows")
    return _parquet_rows(parquet, name)


def _parquet_rows(parquet: Any, name: str) -> Iterator[RawItem]:
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield Where(name, row), record


def _from_iterable(records: Iterable[Any], name: str) -> Iterator[RawItem]:
    """Records already in memory (a list, a parsed .json array): index = 1-based position."""
    for index, record in enumerate(records, 1):
        if isinstance(record, dict):
            yield Where(name, index), record
        else:
            yield (
                Where(name, index),
                DataError(
                    name, index, None, f"record {index}: expected a JSON object, got {_json_kind(record)}"
                ),
            )


def _as_dataset(source: Any) -> Any:
    """`source` when it is a datasets.Dataset / IterableDataset, else None; a DatasetDict is an error.

    Looks datasets up in sys.modules: if the caller holds a Dataset, the package is already imported."""
    datasets = sys.modules.get("datasets")
    if datasets is None:
        return None
    if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise AlignkitError(f"got a DatasetDict with splits {list(source)}; pass one split, e.g. ds['train']")
    if isinstance(source, datasets.Dataset | datasets.IterableDataset):
        if isinstance(source, datasets.Dataset) and len(source) == 0:
            raise DataError("<dataset>", None, None, "no records: the dataset is empty")
        return source
    return None


def _from_dataset(dataset: Any, name: str) -> Iterator[RawItem]:
    n = 0
    for n, record in enumerate(dataset, 1):
        yield Where(name, n), record
    if n == 0:
        raise DataError(name, None, None, "no records: the dataset is empty")


def _load_hub(name: str, split: str) -> Any:
    """`datasets.load_dataset(name, split=split)`, its failure turned into one clear AlignkitError."""
    try:
        import datasets

        return datasets.load_dataset(name, split=split)
    except Exception as e:  # network, missing dataset, bad split, missing package: all the user's to fix
        raise AlignkitError(
            f"could not load dataset '{name}' from the hub: {type(e).__name__}: {e} "
            "(and no local file of that name exists)"
        ) from e
