"""Bytes <-> records: the Confluent wire format (Avro), the JSON form, and our output records.

Decoding never raises anything but `RejectedInput` (bad bytes: a dead letter) or
`TransientSchemaError` (the registry cannot be reached: retry, never a dead letter).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import fastavro
import orjson

from schemas import avro_write
from schemas.event import AuditEvent, InvalidEvent, Limits, event_from_mapping
from schemas.registry import EARLIER_LAYOUTS, FIXED_IDS, NAME_BY_ID, earlier_parsed, parsed

MAGIC = 0
_HEADER = struct.Struct(">bI")


class RejectedInput(Exception):
    """Input that cannot be accepted. `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, message: str, stage: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stage = stage
        self.event_id = event_id


class TransientSchemaError(Exception):
    """The schema registry could not answer; the message must be retried, not dead-lettered."""


class SchemaResolver(Protocol):
    """Finds the writer schema for a wire-format schema id."""

    def writer_schema(self, schema_id: int) -> Any | None:
        """The parsed writer schema, or None when the id is unknown (a dead letter).
        Raises TransientSchemaError when the answer cannot be had right now."""
        ...


class BundledSchemas:
    """Resolves the fixed ids of the schemas shipped in `schemas/`, for setups without a
    registry."""

    def writer_schema(self, schema_id: int) -> Any | None:
        name = NAME_BY_ID.get(schema_id)
        return None if name is None else parsed(name)


@dataclass(frozen=True, slots=True)
class Decoded:
    event: AuditEvent
    original_format: str  # AVRO or JSON


def _decode_avro(value: bytes, resolver: SchemaResolver) -> Any:
    if len(value) < 5:
        raise RejectedInput(
            "avro_decode_error",
            f"{len(value)} bytes is shorter than the 5-byte wire header",
            "decode",
        )
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise RejectedInput("bad_magic_byte", f"magic byte {magic} is not 0", "decode")
    writer = resolver.writer_schema(schema_id)
    if writer is None:
        raise RejectedInput("unknown_schema_id", f"schema id {schema_id} is not known", "decode")
    reader = parsed("audit_event")
    try:
        if writer is reader:
            return _read_bundled(value, schema_id, reader)
        return _read_whole(value, writer, reader)
    except _Unreadable as e:
        why = _incompatibility(writer, reader) if writer is not reader else ""
        if why:
            raise RejectedInput(
                "incompatible_schema",
                f"schema id {schema_id}: its writer schema cannot be read as the bundled "
                f"AuditEvent: {why} ({e})",
                "decode",
            ) from None
        raise RejectedInput("avro_decode_error", f"schema id {schema_id}: {e}", "decode") from None


# id(writer schema) -> (that schema, why it cannot be read as the event, "" when it can). The
# schema is kept so that its id is not reused; the resolvers keep theirs for good anyway.
_EXPLAINED: dict[int, tuple[Any, str]] = {}


def _incompatibility(writer: Any, reader: Any) -> str:
    """Why records of `writer` cannot be read with `reader` ("" when they can), worked out
    once per writer schema and only for a record that failed to read: a writer that is
    incompatible only in what most records never use (an enum symbol the reader lacks) still
    has its other records read."""
    hit = _EXPLAINED.get(id(writer))
    if hit is not None and hit[0] is writer:
        return hit[1]
    from schemas import compat  # the avro package: only on this rare path

    try:
        problems = compat.incompatibilities(
            compat.from_fastavro(reader), compat.from_fastavro(writer)
        )
    except compat.SchemaParseError:
        problems = []
    # Another record altogether (one of our output records, say) is not a version of the
    # event: its records stay an avro_decode_error.
    if any(p.kind == "name_mismatch" and "." not in p.path for p in problems):
        problems = []
    why = "; ".join(str(p) for p in problems)
    if len(_EXPLAINED) < 1024:
        _EXPLAINED[id(writer)] = (writer, why)
    return why


class _Unreadable(Exception):
    pass


class _Layouts:
    # Whether the last event under the bundled id was of the earlier layout: tried first then,
    # so a deployment whose producers all write one layout reads each event once (a failed
    # read first cost 47% more per event).
    earlier_first = False


def _read_bundled(value: bytes, schema_id: int, reader: Any) -> Any:
    """An event under the bundled id, which also names the event's earlier layout, a prefix of
    this one (`schemas.registry.EARLIER_LAYOUTS`: producers that predate key_id and
    signature). At most one of the two reads the value to its last byte. Raises the current
    layout's `_Unreadable` when neither does."""
    earlier = earlier_parsed(schema_id)
    if earlier is None:
        return _read_whole(value, reader, None)
    flip = _Layouts.earlier_first
    try:
        return _read_whole(value, earlier if flip else reader, None)
    except _Unreadable as e:
        first = e
    try:
        record = _read_whole(value, reader if flip else earlier, None)
    except _Unreadable as e:
        raise (e if flip else first) from None
    _Layouts.earlier_first = not flip
    return record


def _read_whole(value: bytes, writer: Any, reader: Any) -> Any:
    """The record after the 5-byte header, which must end exactly at the value's end."""
    buf = io.BytesIO(value)
    buf.seek(5)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except (
        Exception
    ) as e:  # fastavro raises EOFError, ValueError, IndexError, SchemaResolutionError...
        raise _Unreadable(f"{type(e).__name__}: {e}") from None
    if buf.tell() != len(value):
        raise _Unreadable(f"{len(value) - buf.tell()} trailing bytes after the record")
    return record


def decode_event(
    value: bytes | None,
    *,
    fmt: str,
    resolver: SchemaResolver,
    limits: Limits,
    now_ms: int,
) -> Decoded:
    """Decode and validate one input message value. `fmt` is auto, avro or json: auto takes a
    leading 0 byte as Avro wire format and a leading `{` as JSON."""
    if value is None or len(value) == 0:
        raise RejectedInput("empty_value", "the message has no value", "decode")
    if len(value) > limits.max_value_bytes:
        raise RejectedInput(
            "oversize", f"value is {len(value)} bytes (max {limits.max_value_bytes})", "decode"
        )
    first = value[0]
    if fmt == "avro" or (fmt == "auto" and first == MAGIC):
        record = _decode_avro(value, resolver)
        original = "AVRO"
    elif fmt == "json" or (fmt == "auto" and first in b"{ \t\r\n"):
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            raise RejectedInput("json_decode_error", f"not valid JSON: {e}", "decode") from None
        original = "JSON"
    else:
        raise RejectedInput(
            "bad_magic_byte",
            f"first byte 0x{first:02x} is neither the Avro wire-format magic byte 0 "
            "nor the start of a JSON object",
            "decode",
        )
    try:
        event = event_from_mapping(record, limits, now_ms)
    except InvalidEvent as e:
        raise RejectedInput(e.reason, e.message, "validate", _given_id(record)) from None
    return Decoded(event, original)


def _given_id(record: Any) -> str | None:
    """The event_id of a record that decoded but failed validation, for its dead letter (an
    Avro one has no text to recover it from later); only an id validation would accept."""
    given = record.get("event_id") if isinstance(record, dict) else None
    return given if isinstance(given, str) and 0 < len(given) <= 256 else None


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _wire(schema_id: int, schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC, schema_id))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def encode_event_avro(record: dict[str, Any], schema_id: int = FIXED_IDS["audit_event"]) -> bytes:
    """Wire-format Avro of an event in its Avro form (timestamp in epoch millis)."""
    return _wire(schema_id, parsed("audit_event"), record)


def encode_archive(
    event: AuditEvent,
    *,
    original_format: str,
    original_sha256: bytes,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    archived_at_ms: int,
    schema_id: int = FIXED_IDS["archive_record"],
) -> bytes:
    # Keyword arguments named as the schema's fields: the generated writer fills a field it is
    # not given with its default, so a field added to archive_record.avsc needs only its line
    # here. Passed directly rather than as a dict: that costs 0.6 us of the 4.6 per record.
    write = avro_write.archive_record or _fastavro_archive
    return write(
        _HEADER.pack(MAGIC, schema_id),
        event=event,
        event_id_derived=event.event_id_derived,
        original_format=original_format,
        original_sha256=original_sha256,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        archived_at=archived_at_ms,
        verification=None
        if event.verification is None
        else ("VERIFIED" if event.verification == "verified" else "UNVERIFIED"),
    )


def _fastavro_archive(header: bytes, *, event: AuditEvent, **fields: Any) -> bytes:
    """The archive record by fastavro, for bundled schemas the generated writer cannot write."""
    buf = io.BytesIO()
    buf.write(header)
    fastavro.schemaless_writer(buf, parsed("archive_record"), {"event": event.to_avro(), **fields})
    return buf.getvalue()


def encode_dead_letter(
    *,
    reason: str,
    message: str,
    stage: str,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    max_value_bytes: int,
    rejected_at_ms: int,
    event_id: str | None = None,
    schema_id: int = FIXED_IDS["dead_letter"],
) -> bytes:
    """A dead letter keeps the raw bytes, truncated past `max_value_bytes` with a hash of the
    whole so an operator can still match it to the producer's copy."""
    raw = value or b""
    return _wire(
        schema_id,
        parsed("dead_letter"),
        {
            "reason": reason,
            "message": message[:2000],
            "stage": stage,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key[:max_value_bytes] if key is not None else None,
            "value": raw[:max_value_bytes],
            "value_truncated": len(raw) > max_value_bytes,
            "value_size": len(raw),
            "value_sha256": sha256(raw),
            "event_id": event_id,
            "rejected_at": rejected_at_ms,
        },
    )


def decode_wire(value: bytes, name: str) -> dict[str, Any]:
    """Read one of our own output records (archive_record, dead_letter) by its bundled id.
    ValueError for bytes that are not one, whatever fastavro raised (EOFError, IndexError...
    for a damaged record), so a reader has one exception to handle."""
    try:
        return _decode_wire(value, name)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"not a readable {name} record: {type(e).__name__}: {e}") from None


def _decode_wire(value: bytes, name: str) -> dict[str, Any]:
    if len(value) < 5 or value[0] != MAGIC:
        raise ValueError(f"not Avro wire format: {value[:8]!r}")
    (schema_id,) = struct.unpack_from(">I", value, 1)
    earlier = earlier_parsed(schema_id)
    reader = parsed(name)
    if earlier is None or EARLIER_LAYOUTS[schema_id][0] != name:
        record = fastavro.schemaless_reader(io.BytesIO(value[5:]), reader, None)
    elif schema_id == FIXED_IDS[name]:
        # Either layout (see _decode_avro); what the earlier one lacks takes its default.
        try:
            record = _read_whole(value, reader, None)
        except _Unreadable:
            record = _read_whole(value, earlier, reader)
    else:
        record = fastavro.schemaless_reader(io.BytesIO(value[5:]), earlier, reader)
    assert isinstance(record, dict)
    return record


def decoder_for(name: str) -> Callable[[bytes], dict[str, Any]]:
    return lambda value: decode_wire(value, name)


def encode_canonical(event: AuditEvent) -> bytes:
    """The accepted event (event_id set) in wire-format Avro: the detection topic's record
    layout before 2026-11-28, still read by `decode_detect`."""
    return encode_event_avro(event.to_avro())


def decode_canonical(value: bytes) -> AuditEvent:
    """Inverse of `encode_canonical`. Trusted input written by `encode_canonical`, so it is not
    validated again."""
    r = decode_wire(value, "audit_event")
    return AuditEvent(
        event_id=r["event_id"],
        ts_us=r["timestamp"] * 1000,
        machine_id=r["machine_id"],
        resource=r["resource"],
        operation=r["operation"],
        outcome=r["outcome"],
        source_ip=r["source_ip"],
        identity_type=r["identity_type"],
        source=r["source"],
        attributes=r["attributes"],
    )


_SOURCE = struct.Struct(">H")
SEED_SOURCE = 0xFFFF


def encode_detect(event: AuditEvent, source: int) -> bytes:
    """A record of the internal detection topic: the input partition the event came through
    (the detection stage's clock follows each input partition), then the accepted event as a
    JSON array. Only auditwatch reads this topic, so it needs no schema: orjson writes and
    reads it in about a fifth of fastavro's time (encode 0.6 vs 12.6 us, decode 4.7 vs
    16.0 us), and it keeps the event's microseconds, as replay does."""
    attrs = event.attributes if type(event.attributes) is dict else dict(event.attributes)
    return _SOURCE.pack(source) + orjson.dumps(
        (
            event.event_id,
            event.ts_us,
            event.machine_id,
            event.resource,
            event.operation,
            event.outcome,
            event.source_ip,
            event.identity_type,
            event.source,
            attrs,
        )
    )


def decode_detect(value: bytes) -> tuple[int | None, AuditEvent]:
    """(input partition, or None for seeded history; event) from `encode_detect` bytes.
    Records in the earlier layout (Avro wire format after the partition) still decode, so a
    detection topic written by an older worker drains after an upgrade."""
    (source,) = _SOURCE.unpack_from(value)
    src = None if source == SEED_SOURCE else source
    if value[2] == MAGIC:
        return src, decode_canonical(value[2:])
    a = orjson.loads(value[2:])
    # Positional, in the order encode_detect writes them, which is AuditEvent's field order
    # (tests/test_codec.py gives every field its own value, so a swap fails there).
    return src, AuditEvent(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
