"""Event files: JSON lines and CSV, read as raw records for the processor or as mappings for
the producer. Later formats (cloudtrail, k8s-audit) plug in here."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

FORMATS = ("jsonl", "csv")
EVENT_FIELDS = (
    "event_id",
    "timestamp",
    "machine_id",
    "resource",
    "operation",
    "outcome",
    "source_ip",
    "identity_type",
    "source",
)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record: the bytes the processor decodes, and where it came from."""

    value: bytes
    path: str
    line: int
    original_format: str  # FILE_JSON or CSV


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def parse_csv_map(spec: str | None) -> dict[str, str]:
    """`field=column,field=column` -> {field: column}."""
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, eq, column = part.partition("=")
        if not eq or name.strip() not in EVENT_FIELDS:
            raise ValueError(
                f"--csv-map entry {part!r} must be FIELD=COLUMN, FIELD one of "
                + ", ".join(EVENT_FIELDS)
            )
        mapping[name.strip()] = column.strip()
    return mapping


def _csv_rows(f: IO[bytes], mapping: dict[str, str]) -> Iterator[tuple[int, dict[str, object]]]:
    reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
    column_of = {name: mapping.get(name, name) for name in EVENT_FIELDS}
    mapped_columns = set(column_of.values())
    for row in reader:
        event: dict[str, object] = {}
        for name, column in column_of.items():
            value = row.get(column)
            if value not in (None, ""):
                event[name] = value
        # Unmapped columns are kept as attributes rather than dropped.
        attrs = {
            k: v for k, v in row.items() if k not in mapped_columns and k and v not in (None, "")
        }
        if attrs:
            event["attributes"] = attrs
        yield reader.line_num, event


def read_records(
    paths: list[str], fmt: str = "jsonl", csv_map: dict[str, str] | None = None
) -> Iterator[RawRecord]:
    """Every record of every file, in file order; blank lines are skipped."""
    for p in paths:
        path = Path(p)
        with _open(path) as f:
            if fmt == "jsonl":
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield RawRecord(line.rstrip(b"\r\n"), p, n, "FILE_JSON")
            elif fmt == "csv":
                for n, event in _csv_rows(f, csv_map or {}):
                    yield RawRecord(orjson.dumps(event), p, n, "CSV")
            else:
                raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
