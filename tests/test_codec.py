"""Unit tests for schemas.codec and the bundled .avsc files: wire format, rejections, outputs."""

from __future__ import annotations

import copy
import hashlib
import io
import struct
from typing import Any

import avro.schema
import fastavro
import orjson
import pytest

from schemas.codec import (
    SEED_SOURCE,
    BundledSchemas,
    Decoded,
    RejectedInput,
    TransientSchemaError,
    decode_detect,
    decode_event,
    decode_wire,
    decoder_for,
    encode_archive,
    encode_canonical,
    encode_dead_letter,
    encode_detect,
    encode_event_avro,
)
from schemas.event import AuditEvent, Limits
from schemas.registry import (
    FIXED_IDS,
    SCHEMA_DIR,
    expand_for_registry,
    schema_json,
    strip_logical_types,
)

T_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW_MS = T_MS + 60_000
LIMITS = Limits()


def avro_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "e-1",
        "timestamp": T_MS + 123,
        "machine_id": "orders-api",
        "resource": "postgres://orders-db/public.orders",
        "operation": "SELECT",
        "outcome": "SUCCESS",
        "source_ip": "10.0.0.1",
        "identity_type": "pod",
        "source": "k8s-audit",
        "attributes": {"region": "eu-west-1"},
    }
    record.update(changes)
    return record


def decode(
    value: bytes | None,
    fmt: str = "auto",
    resolver: Any = None,
    limits: Limits = LIMITS,
) -> Decoded:
    return decode_event(
        value, fmt=fmt, resolver=resolver or BundledSchemas(), limits=limits, now_ms=NOW_MS
    )


def rejection(value: bytes | None, **kwargs: Any) -> RejectedInput:
    with pytest.raises(RejectedInput) as info:
        decode(value, **kwargs)
    return info.value


@pytest.fixture
def wire() -> bytes:
    return encode_event_avro(avro_record())


# --- Avro input -------------------------------------------------------------------------


def test_wire_header(wire: bytes) -> None:
    assert wire[0] == 0
    assert struct.unpack(">I", wire[1:5])[0] == FIXED_IDS["audit_event"]


def test_avro_round_trip(wire: bytes) -> None:
    d = decode(wire)
    assert d.original_format == "AVRO"
    assert d.event.to_avro() == avro_record()
    assert not d.event.event_id_derived


def test_avro_without_event_id_gets_the_same_derived_id_as_json() -> None:
    record = avro_record(event_id=None)
    from_avro = decode(encode_event_avro(record)).event
    as_json = {**record, "timestamp": "2026-01-01T00:00:00.123Z"}
    from_json = decode(orjson.dumps(as_json)).event
    assert from_avro.event_id_derived
    assert from_avro.event_id == from_json.event_id
    assert from_avro.content_digest() == from_json.content_digest()


def test_avro_with_older_writer_schema_is_resolved() -> None:
    """A registry may hand out an older writer schema: fields it lacks take their defaults."""
    raw = strip_logical_types(copy.deepcopy(schema_json("audit_event")))
    raw["fields"] = [f for f in raw["fields"] if f["name"] not in ("source", "attributes")]
    older = fastavro.parse_schema(raw, named_schemas={})

    class Resolver:
        def writer_schema(self, schema_id: int) -> Any:
            return older if schema_id == 7 else None

    record = {k: v for k, v in avro_record().items() if k not in ("source", "attributes")}
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", 7))
    fastavro.schemaless_writer(buf, older, record)
    ev = decode(buf.getvalue(), resolver=Resolver()).event
    assert ev.source is None
    assert dict(ev.attributes) == {}
    assert ev.machine_id == "orders-api"
    assert ev.timestamp_ms == T_MS + 123


@pytest.mark.parametrize("keep", [3, 5, 6, -1])
def test_truncated_avro(wire: bytes, keep: int) -> None:
    e = rejection(wire[:keep])
    assert e.reason == "avro_decode_error"
    assert e.stage == "decode"


@pytest.mark.parametrize("extra", [b"\x00", b"junk"])
def test_trailing_bytes(wire: bytes, extra: bytes) -> None:
    e = rejection(wire + extra)
    assert e.reason == "avro_decode_error"
    assert "trailing" in e.message


@pytest.mark.parametrize("first", [b"\x01", b"\x7f", b"\xff", b"["])
def test_wrong_magic_byte(wire: bytes, first: bytes) -> None:
    assert rejection(first + wire[1:]).reason == "bad_magic_byte"


def test_forced_avro_on_json_is_bad_magic_byte() -> None:
    value = orjson.dumps({**avro_record(), "timestamp": T_MS})
    assert rejection(value, fmt="avro").reason == "bad_magic_byte"


@pytest.mark.parametrize("schema_id", [0, 7, 999, 2**31 - 1])
def test_unknown_schema_id(wire: bytes, schema_id: int) -> None:
    value = b"\x00" + struct.pack(">I", schema_id) + wire[5:]
    e = rejection(value)
    assert e.reason == "unknown_schema_id"
    assert str(schema_id) in e.message


@pytest.mark.parametrize("name", ["archive_record", "dead_letter", "alert"])
def test_other_bundled_schema_id_is_decode_error(wire: bytes, name: str) -> None:
    value = b"\x00" + struct.pack(">I", FIXED_IDS[name]) + wire[5:]
    assert rejection(value).reason == "avro_decode_error"


def test_transient_schema_error_propagates(wire: bytes) -> None:
    class Down:
        def writer_schema(self, schema_id: int) -> Any:
            raise TransientSchemaError("registry unreachable")

    with pytest.raises(TransientSchemaError):
        decode(wire, resolver=Down())


def test_decode_raises_only_rejected_input_for_odd_digit_timestamp() -> None:
    value = orjson.dumps({**avro_record(), "timestamp": f"{T_MS}\u00b2"})
    assert rejection(value).reason == "bad_timestamp"


# --- JSON and general input --------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value(value: bytes | None) -> None:
    e = rejection(value)
    assert e.reason == "empty_value"


def test_json_accepted() -> None:
    d = decode(orjson.dumps({**avro_record(), "timestamp": "2026-01-01T00:00:00.123Z"}))
    assert d.original_format == "JSON"
    assert d.event.to_avro() == avro_record()


@pytest.mark.parametrize("prefix", [b" ", b"\n", b"\t", b"\r\n"])
def test_json_with_leading_whitespace(prefix: bytes) -> None:
    d = decode(prefix + orjson.dumps({**avro_record(), "timestamp": T_MS}))
    assert d.original_format == "JSON"


@pytest.mark.parametrize(
    ("value", "fmt", "reason"),
    [
        (b"[1, 2]", "json", "invalid_field"),
        (b" [1, 2]", "auto", "invalid_field"),
        (b'"an event"', "json", "invalid_field"),
        (b"42", "json", "invalid_field"),
        (b"null", "json", "invalid_field"),
        (b"{", "auto", "json_decode_error"),
        (b"{'machine_id': 'x'}", "auto", "json_decode_error"),
        (b'{"a": 1} trailing', "auto", "json_decode_error"),
        (b"\xff\xfe", "json", "json_decode_error"),
    ],
)
def test_bad_json(value: bytes, fmt: str, reason: str) -> None:
    assert rejection(value, fmt=fmt).reason == reason


def test_json_validation_failure_is_stage_validate() -> None:
    e = rejection(orjson.dumps({"timestamp": T_MS, "machine_id": "m"}))
    assert e.reason == "missing_field"
    assert e.stage == "validate"


def test_forced_json_on_avro_is_json_decode_error(wire: bytes) -> None:
    assert rejection(wire, fmt="json").reason == "json_decode_error"


def test_forced_json_accepts_json() -> None:
    d = decode(orjson.dumps({**avro_record(), "timestamp": T_MS}), fmt="json")
    assert d.original_format == "JSON"


def test_oversize_value() -> None:
    limits = Limits(max_value_bytes=256)
    body = orjson.dumps({**avro_record(attributes={}), "timestamp": T_MS})
    exactly = body + b" " * (256 - len(body))
    assert decode(exactly, limits=limits).event.machine_id == "orders-api"
    e = rejection(exactly + b" ", limits=limits)
    assert e.reason == "oversize"
    assert e.stage == "decode"


def test_oversize_is_checked_before_the_format(wire: bytes) -> None:
    limits = Limits(max_value_bytes=len(wire) - 1)
    assert rejection(wire, limits=limits).reason == "oversize"


# --- our output records -----------------------------------------------------------------


@pytest.mark.parametrize("source", [0, 7, SEED_SOURCE])
def test_detect_record_round_trip(source: int) -> None:
    full = AuditEvent(
        event_id="e-1",
        ts_us=T_MS * 1000 + 123,  # JSON input may carry microseconds; replay keeps them
        machine_id="etl-07",
        resource="s3://bucket/{id}",
        operation="GET",
        outcome="SUCCESS",
        source_ip="10.0.0.7",
        identity_type="iam-role",
        source="cloudtrail",
        attributes={"zone": "eu-west-1a", "é": "ü"},
    )
    bare = AuditEvent("e-2", T_MS * 1000, "m", "r", "op", "DENIED")
    # The byte after the partition tells the layouts apart: Avro's magic 0, or JSON's "[".
    assert encode_detect(full, source)[2:3] == b"["
    for event in (full, bare):
        src, back = decode_detect(encode_detect(event, source))
        assert back == event
        assert src == (None if source == SEED_SOURCE else source)


def test_detect_record_of_an_older_worker_still_decodes() -> None:
    # Before, the event followed the partition as Avro wire format (milliseconds only).
    event = AuditEvent("e-3", T_MS * 1000, "m", "r", "op", "FAILURE", attributes={"a": "b"})
    src, back = decode_detect(struct.pack(">H", 3) + encode_canonical(event))
    assert (src, back) == (3, event)


def test_archive_record_round_trip() -> None:
    event = decode(encode_event_avro(avro_record(event_id=None))).event
    digest = hashlib.sha256(b"original bytes").digest()
    value = encode_archive(
        event,
        original_format="JSON",
        original_sha256=digest,
        topic="audit.events",
        partition=3,
        offset=12345,
        archived_at_ms=NOW_MS,
    )
    assert value[0] == 0
    assert struct.unpack(">I", value[1:5])[0] == FIXED_IDS["archive_record"]
    assert decode_wire(value, "archive_record") == {
        "event": {**event.to_avro(), "key_id": None, "signature": None},
        "event_id_derived": True,
        "original_format": "JSON",
        "original_sha256": digest,
        "original_topic": "audit.events",
        "original_partition": 3,
        "original_offset": 12345,
        "archived_at": NOW_MS,
        "verification": None,
    }
    assert decoder_for("archive_record")(value)["event"]["event_id"] == event.event_id


def test_archive_record_without_origin() -> None:
    event = AuditEvent("e-1", T_MS * 1000, "m", "r", "o", "SUCCESS")
    value = encode_archive(
        event,
        original_format="AVRO",
        original_sha256=bytes(32),
        topic=None,
        partition=None,
        offset=None,
        archived_at_ms=NOW_MS,
    )
    record = decode_wire(value, "archive_record")
    assert (record["original_topic"], record["original_partition"], record["original_offset"]) == (
        None,
        None,
        None,
    )
    assert record["event_id_derived"] is False


def dead_letter(value: bytes | None, key: bytes | None = b"orders-api", **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "reason": "json_decode_error",
        "message": "not valid JSON",
        "stage": "decode",
        "topic": "audit.events",
        "partition": 2,
        "offset": 77,
        "key": key,
        "value": value,
        "max_value_bytes": 256,
        "rejected_at_ms": NOW_MS,
    }
    args.update(kw)
    return encode_dead_letter(**args)


def test_dead_letter_round_trip() -> None:
    value = b"{not json"
    record = decode_wire(dead_letter(value, event_id="e-9"), "dead_letter")
    assert record == {
        "reason": "json_decode_error",
        "message": "not valid JSON",
        "stage": "decode",
        "topic": "audit.events",
        "partition": 2,
        "offset": 77,
        "key": b"orders-api",
        "value": value,
        "value_truncated": False,
        "value_size": len(value),
        "value_sha256": hashlib.sha256(value).digest(),
        "event_id": "e-9",
        "rejected_at": NOW_MS,
    }


def test_dead_letter_truncates_value_past_the_limit() -> None:
    value = bytes(range(256)) + b"tail of the message"
    record = decode_wire(dead_letter(value), "dead_letter")
    assert record["value"] == value[:256]
    assert record["value_truncated"] is True
    assert record["value_size"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).digest()


def test_dead_letter_value_at_the_limit_is_whole() -> None:
    value = b"x" * 256
    record = decode_wire(dead_letter(value), "dead_letter")
    assert record["value"] == value
    assert record["value_truncated"] is False


def test_dead_letter_without_value_or_key() -> None:
    record = decode_wire(
        dead_letter(None, key=None, topic=None, partition=None, offset=None), "dead_letter"
    )
    assert record["value"] == b""
    assert record["value_size"] == 0
    assert record["value_sha256"] == hashlib.sha256(b"").digest()
    assert record["key"] is None
    assert record["topic"] is None
    assert record["event_id"] is None


def test_dead_letter_message_is_capped() -> None:
    record = decode_wire(dead_letter(b"x", message="m" * 5000), "dead_letter")
    assert record["message"] == "m" * 2000


@pytest.mark.parametrize("value", [b"", b"\x00\x00", b"\x01\x00\x00\x03\xeb\x00"])
def test_decode_wire_rejects_non_wire_values(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode_wire(value, "dead_letter")


# --- the .avsc files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fullname"),
    [
        ("alert", "dev.auditwatch.Alert"),
        ("dead_letter", "dev.auditwatch.DeadLetter"),
        ("audit_event", "dev.auditwatch.AuditEvent"),
    ],
)
def test_avsc_parses_with_avro(name: str, fullname: str) -> None:
    schema = avro.schema.parse((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))
    assert schema.fullname == fullname


def test_archive_record_avsc_parses_with_avro_when_expanded() -> None:
    schema = avro.schema.parse(expand_for_registry("archive_record"))
    assert schema.fullname == "dev.auditwatch.ArchiveRecord"
    event_field = schema.fields_dict["event"]
    assert event_field.type.fullname == "dev.auditwatch.AuditEvent"


@pytest.mark.parametrize("name", list(FIXED_IDS))
def test_expanded_schema_parses_with_fastavro(name: str) -> None:
    fastavro.parse_schema(orjson.loads(expand_for_registry(name)), named_schemas={})


def _fastavro_archive(event: AuditEvent, schema_id: int, **origin: Any) -> bytes:
    """The archive record as fastavro's generic writer encodes it."""
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(
        buf,
        fastavro.parse_schema(
            strip_logical_types(schema_json("archive_record")),
            named_schemas={"dev.auditwatch.AuditEvent": _PARSED_EVENT},
        ),
        {
            "event": event.to_avro(),
            "event_id_derived": event.event_id_derived,
            "original_format": origin["original_format"],
            "original_sha256": origin["original_sha256"],
            "original_topic": origin["topic"],
            "original_partition": origin["partition"],
            "original_offset": origin["offset"],
            "archived_at": origin["archived_at_ms"],
        },
    )
    return buf.getvalue()


_PARSED_EVENT = fastavro.parse_schema(strip_logical_types(schema_json("audit_event")))

_ODD_EVENTS = [
    AuditEvent("e-1", 1_767_571_200_244_123, "m", "r", "GET", "SUCCESS"),
    AuditEvent(
        "é-ü-中",  # multi-byte: lengths count bytes, not characters
        -86_400_000_001,  # before 1970: a negative timestamp
        "machine-with-a-long-name-" * 20,
        "s3://bucket/" + "k" * 20_000,  # past the table of small lengths
        "PUT",
        "FAILURE",
        source_ip="10.0.0.1",
        identity_type="iam-role",
        source="cloudtrail",
        attributes={"zone": "eu-west-1a", "ünï": "cödé", "": ""},
        event_id_derived=True,
    ),
    AuditEvent(
        "e-3", 0, "m", "r", "DELETE", "DENIED", attributes={f"k{i}": str(i) for i in range(300)}
    ),
]
_ORIGINS = [
    {"topic": "t.events", "partition": 0, "offset": 0},
    {"topic": "t", "partition": 7, "offset": (1 << 14) - 1},  # the table's last entry
    {"topic": "t", "partition": 2**31 - 1, "offset": 2**63 - 1},
    {"topic": None, "partition": None, "offset": None},
    {"topic": "events.jsonl", "partition": None, "offset": 1 << 14},
]


@pytest.mark.parametrize("event", _ODD_EVENTS)
@pytest.mark.parametrize("origin", _ORIGINS)
@pytest.mark.parametrize("fmt", ["AVRO", "JSON", "K8S_AUDIT"])
def test_archive_record_bytes_are_what_fastavro_writes(
    event: AuditEvent, origin: dict[str, Any], fmt: str
) -> None:
    kw = {
        **origin,
        "original_format": fmt,
        "original_sha256": hashlib.sha256(event.event_id.encode()).digest(),
        "archived_at_ms": 1_767_571_300_000,
    }
    for schema_id in (FIXED_IDS["archive_record"], 100_042):  # a registry's id
        assert encode_archive(event, schema_id=schema_id, **kw) == _fastavro_archive(
            event, schema_id, **kw
        )


def test_the_archive_record_is_written_by_hand_for_the_bundled_layout() -> None:
    from schemas import avro_write

    assert avro_write.FAST


def test_an_archive_digest_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="33 bytes, not 32"):
        encode_archive(
            _ODD_EVENTS[0],
            original_format="AVRO",
            original_sha256=b"x" * 33,
            topic=None,
            partition=None,
            offset=None,
            archived_at_ms=0,
        )
