"""Items from JSONL and CSV files into the state store.

``read_records`` is strict (the first bad line raises ``ValueError`` naming it); ``ingest_file``
is lenient: a bad line becomes an ``"line N: why"`` entry in ``IngestResult.errors`` and every
other line is still ingested. Ingesting the same file twice adds nothing (see ``StateStore.items.ingest``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connector.store import IngestResult, StateStore

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)

_Scanned = tuple[int, dict[str, Any] | None, str | None]  # line, record or None, error or None


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                     f"expected one of {', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}")


def _scan_jsonl(path: Path) -> Iterator[_Scanned]:
    with path.open(encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            if isinstance(record, dict):
                yield number, record, None
            else:
                yield number, None, f"expected a JSON object, got {type(record).__name__}"


def _scan_csv(path: Path) -> Iterator[_Scanned]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise ValueError(f"{path} line 1: duplicate column names {duplicates}")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ValueError(f"{path} line {start}: {exc}") from None
            number, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                yield number, None, f"{len(row)} fields; the header has {len(header)}"
            else:
                yield number, dict(zip(header, row)), None


def _scan(path: str | Path) -> Iterator[_Scanned]:
    path = Path(path)
    return _scan_jsonl(path) if _kind(path) == "jsonl" else _scan_csv(path)


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a ``.jsonl``/``.ndjson`` (one JSON object a line, blank lines skipped) or ``.csv``
    file (a header row; every value a string), chosen by extension.

    Raises ``ValueError`` for any other extension and, naming the line, for the first bad line.
    """
    for number, record, error in _scan(path):
        if error is not None:
            raise ValueError(f"{path} line {number}: {error}")
        assert record is not None
        yield record


def ingest_file(store: StateStore, path: str | Path, **kw: Any) -> IngestResult:
    """Ingest a JSONL or CSV file into ``store`` in one transaction.

    Keywords go to ``StateStore.items.ingest`` (``text_field``, ``id_field``, ``metadata_fields``,
    ``gold_field``). Unreadable lines and invalid records are reported as ``"line N: why"``,
    in line order; the rest is ingested.
    """
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    errors: list[tuple[int, str]] = []
    for number, record, error in _scan(path):
        if error is not None:
            errors.append((number, f"line {number}: {error}"))
        else:
            assert record is not None
            records.append(record)
            lines.append(number)
    result = store.items.ingest(records, line_numbers=lines, **kw)
    # the store words its errors "line N: why" too
    errors.extend((int(message.split(":", 1)[0].split()[1]), message) for message in result.errors)
    result.errors = [message for _, message in sorted(errors, key=lambda e: e[0])]
    return result
