"""The bundled Avro schemas and their fixed schema ids.

Producers without a schema registry write the Confluent wire format (magic byte 0, 4-byte
big-endian schema id, Avro body) with these ids. With a registry configured, ids come from the
registry instead (see `streams.registry_client`). Imports fastavro; nothing Kafka.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parent

# Documented in README.md ("Schemas"). Chosen far from the small ids a registry hands out, so a
# bundled id is recognisable in a hexdump and unlikely to clash if a registry is added later.
FIXED_IDS: dict[str, int] = {
    "audit_event": 1001,
    # 1002 was the archive record before events carried key_id and signature (EARLIER_LAYOUTS).
    "archive_record": 1005,
    "dead_letter": 1003,
    "alert": 1004,
}
NAME_BY_ID: dict[int, str] = {v: k for k, v in FIXED_IDS.items()}
# Earlier layouts of the bundled schemas, still read: id -> (schema, its file in history/).
# The event's fields added since (key_id, signature) were appended, so an event of the v1
# layout is a strict prefix of one of the current layout, and at most one of the two reads a
# message to its last byte: id 1001 reads both (`schemas.codec`). The archive record nests the
# event, so its layout changed in the middle: the current one has an id of its own, and 1002
# records are read with their own schema, resolved to the current one.
EARLIER_LAYOUTS: dict[int, tuple[str, str]] = {
    1001: ("audit_event", "audit_event.v1"),
    1002: ("archive_record", "archive_record.v1"),
}
# archive_record references AuditEvent by name, so it must be parsed after it.
_PARSE_ORDER = ("audit_event", "archive_record", "dead_letter", "alert")


def schema_json(name: str) -> dict[str, Any]:
    """The schema as written in `schemas/<name>.avsc`."""
    with (SCHEMA_DIR / f"{name}.avsc").open(encoding="utf-8") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def strip_logical_types(node: Any) -> Any:
    # fastavro turns timestamp-millis into datetime objects on read and back on write; the hot
    # path works in integer milliseconds, so it reads with the same schema minus logicalType.
    # The binary encoding is identical, so this is only a different view of the same bytes.
    if isinstance(node, dict):
        return {k: strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [strip_logical_types(v) for v in node]
    return node


@cache
def parsed_schemas() -> dict[str, Any]:
    """All bundled schemas parsed by fastavro, with logical types stripped (see above)."""
    named: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for name in _PARSE_ORDER:
        raw = strip_logical_types(copy.deepcopy(schema_json(name)))
        out[name] = fastavro.parse_schema(raw, named_schemas=named)
    return out


def parsed(name: str) -> Any:
    """One bundled schema, parsed for fastavro's schemaless reader and writer."""
    return parsed_schemas()[name]


def expand_for_registry(name: str) -> str:
    """The schema as a self-contained JSON string (named references inlined), as a registry
    expects it when registering."""
    if name == "archive_record":
        raw = schema_json("archive_record")
        raw["fields"][0]["type"] = schema_json("audit_event")
        return json.dumps(raw)
    return json.dumps(schema_json(name))


@cache
def earlier_parsed(schema_id: int) -> Any | None:
    """The parsed earlier layout that `schema_id` names (EARLIER_LAYOUTS), or None. Parsed
    apart from the current schemas, whose named types have the same names."""
    if schema_id not in EARLIER_LAYOUTS:
        return None
    named: dict[str, Any] = {}
    out = None
    # An earlier archive record refers to the event of its own time.
    for sid in sorted(EARLIER_LAYOUTS):
        _, file = EARLIER_LAYOUTS[sid]
        with (SCHEMA_DIR / "history" / f"{file}.avsc").open(encoding="utf-8") as f:
            raw = strip_logical_types(json.load(f))
        schema = fastavro.parse_schema(raw, named_schemas=named)
        if sid == schema_id:
            out = schema
    return out
