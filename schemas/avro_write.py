"""The archive record in Avro binary, written field by field for its one known layout.

Every valid event is archived, so this runs once per event. fastavro's schemaless writer
walks the parsed schema for each record, resolving every union branch by trying its types,
and took 25 us for an archive record on this project's 2-core box (14 us for the event alone)
against 4-5 us here (`tests/test_codec.py` has the comparison and the byte-for-byte check).

It knows only the layouts of `audit_event.avsc` and `archive_record.avsc` as they are: at
import, `FAST` says whether the bundled schemas still have exactly those fields, types and
symbols, and `schemas.codec` falls back to fastavro when they do not, so an edited schema is
never written wrong, only slower until this follows it.

Avro binary, for reference: an int or long is the zigzag varint of its value; a string or
bytes is its length then its bytes; a union is the branch index then the value; an enum is
the symbol's index; a fixed is its bytes; a map is a block of (count, then key and value per
entry) ended by a zero count; a boolean is one byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.event import OUTCOMES, AuditEvent
from schemas.registry import schema_json, strip_logical_types

_NULLABLE_STRING = ("union", "null", "string")
_AUDIT_EVENT = (
    ("event_id", _NULLABLE_STRING),
    ("timestamp", "long"),
    ("machine_id", "string"),
    ("resource", "string"),
    ("operation", "string"),
    ("outcome", ("enum", *OUTCOMES)),
    ("source_ip", _NULLABLE_STRING),
    ("identity_type", _NULLABLE_STRING),
    ("source", _NULLABLE_STRING),
    ("attributes", ("map", "string")),
)
_ORIGINAL_FORMATS = ("AVRO", "JSON", "CSV", "FILE_JSON", "CLOUDTRAIL", "K8S_AUDIT")
_ARCHIVE_RECORD = (
    ("event", "dev.auditwatch.AuditEvent"),
    ("event_id_derived", "boolean"),
    ("original_format", ("enum", *_ORIGINAL_FORMATS)),
    ("original_sha256", ("fixed", 32)),
    ("original_topic", _NULLABLE_STRING),
    ("original_partition", ("union", "null", "int")),
    ("original_offset", ("union", "null", "long")),
    ("archived_at", "long"),
)


def _shape(t: Any) -> Any:
    if isinstance(t, list):
        return ("union", *(_shape(b) for b in t))
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "enum":
            return ("enum", *t["symbols"])
        if kind == "fixed":
            return ("fixed", t["size"])
        if kind == "map":
            return ("map", _shape(t["values"]))
        if kind == "record":
            return tuple((f["name"], _shape(f["type"])) for f in t["fields"])
        return _shape(kind)
    return t


def layout_matches() -> bool:
    """Whether the bundled schemas are the layouts written here."""
    event = _shape(strip_logical_types(schema_json("audit_event")))
    archive = _shape(strip_logical_types(schema_json("archive_record")))
    return bool(event == _AUDIT_EVENT and archive == _ARCHIVE_RECORD)


FAST = layout_matches()


def _varint(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# Lengths, partitions and small offsets come from this table rather than the loop.
_SMALL = 1 << 14
_LONGS = tuple(_varint(n << 1) for n in range(_SMALL))


def _long(n: int) -> bytes:
    if 0 <= n < _SMALL:
        return _LONGS[n]
    return _varint((n << 1) ^ (n >> 63))


_NULL = b"\x00"
_SOME = b"\x02"  # the second branch of a ["null", X] union
_OUTCOME = {s: _long(i) for i, s in enumerate(OUTCOMES)}
_FORMAT = {s: _long(i) for i, s in enumerate(_ORIGINAL_FORMATS)}


def _strings(parts: list[bytes], *values: str) -> None:
    for s in values:
        b = s.encode()
        parts.append(_long(len(b)))
        parts.append(b)


def _optional(parts: list[bytes], s: str | None) -> None:
    if s is None:
        parts.append(_NULL)
        return
    b = s.encode()
    parts.append(_SOME)
    parts.append(_long(len(b)))
    parts.append(b)


def _optional_long(parts: list[bytes], n: int | None) -> None:
    if n is None:
        parts.append(_NULL)
        return
    parts.append(_SOME)
    parts.append(_long(n))


def _event(parts: list[bytes], e: AuditEvent) -> None:
    _optional(parts, e.event_id)
    parts.append(_long(e.ts_us // 1000))
    _strings(parts, e.machine_id, e.resource, e.operation)
    parts.append(_OUTCOME[e.outcome])
    _optional(parts, e.source_ip)
    _optional(parts, e.identity_type)
    _optional(parts, e.source)
    attrs: Mapping[str, str] = e.attributes
    if attrs:
        parts.append(_long(len(attrs)))
        for k, v in attrs.items():
            _strings(parts, k, v)
    parts.append(_NULL)  # the map's closing zero-count block


def archive_record(
    header: bytes,
    event: AuditEvent,
    original_format: str,
    original_sha256: bytes,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    archived_at_ms: int,
) -> bytes:
    """`header` (the wire-format prefix) and the archive record, as fastavro would write it."""
    if len(original_sha256) != 32:
        raise ValueError(f"original_sha256 is {len(original_sha256)} bytes, not 32")
    parts = [header]
    _event(parts, event)
    parts.append(b"\x01" if event.event_id_derived else b"\x00")
    parts.append(_FORMAT[original_format])
    parts.append(original_sha256)
    _optional(parts, topic)
    _optional_long(parts, partition)
    _optional_long(parts, offset)
    parts.append(_long(archived_at_ms))
    return b"".join(parts)
