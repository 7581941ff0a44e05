"""Schema evolution: the generated archive writer on evolved schemas, compatibility checks
(`auditwatch schema check`) and events written with other writer schemas."""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import avro_write
from schemas.avro_write import Unsupported, compile_writer
from schemas.codec import _fastavro_archive, encode_archive
from schemas.event import AuditEvent
from schemas.registry import schema_json, strip_logical_types

# --- the generated archive writer ------------------------------------------------------------

_EVENTS = [
    AuditEvent("e-1", 1_767_571_200_244_123, "m", "r", "GET", "SUCCESS"),
    AuditEvent(
        "é-中",
        -86_400_000_001,
        "machine-" * 40,
        "s3://bucket/" + "k" * 20_000,
        "PUT",
        "DENIED",
        source_ip="10.0.0.1",
        identity_type="iam-role",
        source="cloudtrail",
        attributes={"zone": "eu-west-1a", "ünï": "cödé", "": ""},
        event_id_derived=True,
    ),
]
_ORIGIN = {
    "original_format": "JSON",
    "original_sha256": hashlib.sha256(b"x").digest(),
    "original_topic": "t.events",
    "original_partition": 3,
    "original_offset": (1 << 14) + 5,
    "archived_at": 1_767_571_300_000,
}


def _evolved(
    event_fields: list[dict[str, Any]] | None = None,
    archive_fields: list[dict[str, Any]] | None = None,
    drop_event: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    event = strip_logical_types(copy.deepcopy(schema_json("audit_event")))
    archive = strip_logical_types(copy.deepcopy(schema_json("archive_record")))
    event["fields"] = [f for f in event["fields"] if f["name"] not in drop_event]
    event["fields"] += event_fields or []
    archive["fields"] += archive_fields or []
    return event, archive


def _fastavro_bytes(
    event_schema: dict[str, Any], archive_schema: dict[str, Any], **kw: Any
) -> bytes:
    named: dict[str, Any] = {}
    fastavro.parse_schema(copy.deepcopy(event_schema), named_schemas=named)
    parsed = fastavro.parse_schema(copy.deepcopy(archive_schema), named_schemas=named)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, kw)
    return buf.getvalue()


def _use_schemas(
    monkeypatch: pytest.MonkeyPatch, event: dict[str, Any], archive: dict[str, Any]
) -> None:
    by_name = {"audit_event": event, "archive_record": archive}
    monkeypatch.setattr(avro_write, "schema_json", lambda name: copy.deepcopy(by_name[name]))


# Fields that neither AuditEvent nor encode_archive know of: written with their defaults.
_EVENT_GAINS = [
    {"name": "tenant", "type": ["null", "string"], "default": None},
    {"name": "trace_id", "type": "string", "default": "none"},
]
_VERIFICATION = [
    {
        "name": "review",
        "type": {
            "type": "enum",
            "name": "Review",
            "symbols": ["NOT_SIGNED", "VERIFIED", "UNVERIFIED"],
        },
        "default": "NOT_SIGNED",
    },
    {"name": "note", "type": ["string", "null"], "default": "none"},
]


def test_the_bundled_schemas_have_a_generated_writer() -> None:
    assert avro_write.ARCHIVE_WRITER == "generated"
    assert avro_write.archive_record is not None


@pytest.mark.parametrize("event", _EVENTS)
@pytest.mark.parametrize(
    "evolution",
    [
        pytest.param({"event_fields": _EVENT_GAINS}, id="event-gains-fields-it-does-not-carry"),
        pytest.param({"archive_fields": _VERIFICATION}, id="archive-gains-fields"),
        pytest.param({"drop_event": ("source", "identity_type")}, id="event-loses-fields"),
    ],
)
def test_an_evolved_schema_keeps_a_generated_writer_identical_to_fastavro(
    monkeypatch: pytest.MonkeyPatch, event: AuditEvent, evolution: dict[str, Any]
) -> None:
    event_schema, archive_schema = _evolved(**evolution)
    _use_schemas(monkeypatch, event_schema, archive_schema)
    writer = avro_write.bundled_archive_writer()
    assert writer is not None
    fields = {"event_id_derived": event.event_id_derived, **_ORIGIN}
    want = _fastavro_bytes(event_schema, archive_schema, event=event.to_avro(), **fields)
    assert writer(b"", event=event, **fields) == want
    if evolution.get("archive_fields"):
        # Given explicitly, the new fields are written as given.
        extra = {"review": "UNVERIFIED", "note": None}
        want = _fastavro_bytes(
            event_schema, archive_schema, event=event.to_avro(), **fields, **extra
        )
        assert writer(b"", event=event, **fields, **extra) == want


def test_a_schema_the_generator_cannot_write_falls_back_to_fastavro_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event_schema, archive_schema = _evolved(
        archive_fields=[{"name": "either", "type": ["string", "long"], "default": "x"}]
    )
    with pytest.raises(Unsupported, match="either: a union other than null and one type"):
        compile_writer(archive_schema, {"dev.auditwatch.AuditEvent": event_schema})
    _use_schemas(monkeypatch, event_schema, archive_schema)
    assert avro_write.bundled_archive_writer() is None
    # The fallback encode_archive takes when that happens writes what the generated one does.
    monkeypatch.setattr(avro_write, "archive_record", None)
    kw = {
        "original_format": "AVRO",
        "original_sha256": _ORIGIN["original_sha256"],
        "topic": "t",
        "partition": 1,
        "offset": 2,
        "archived_at_ms": 3,
    }
    generated = encode_archive(_EVENTS[1], **kw)
    assert generated == _fastavro_archive(
        generated[:5],
        event=_EVENTS[1],
        event_id_derived=True,
        original_format="AVRO",
        original_sha256=_ORIGIN["original_sha256"],
        original_topic="t",
        original_partition=1,
        original_offset=2,
        archived_at=3,
    )


# Arbitrary record schemas within what the generator supports, and values for them.
_names = itertools.count()


def _type_and_values(draw: Any, depth: int) -> tuple[Any, st.SearchStrategy[Any]]:
    kinds = [
        "boolean",
        "int",
        "long",
        "float",
        "double",
        "string",
        "bytes",
        "enum",
        "fixed",
        "null",
    ]
    if depth < 3:
        kinds += ["map", "array", "union", "record"]
    kind = draw(st.sampled_from(kinds))
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=20),
        "bytes": st.binary(max_size=20),
    }
    if kind in simple:
        return kind, simple[kind]
    if kind == "enum":
        symbols = draw(
            st.lists(
                st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True),
                min_size=1,
                max_size=5,
                unique=True,
            )
        )
        return {"type": "enum", "name": f"E{next(_names)}", "symbols": symbols}, st.sampled_from(
            symbols
        )
    if kind == "fixed":
        size = draw(st.integers(0, 40))
        return {"type": "fixed", "name": f"F{next(_names)}", "size": size}, st.binary(
            min_size=size, max_size=size
        )
    if kind in ("map", "array"):
        inner, values = _type_and_values(draw, depth + 1)
        if kind == "map":
            return {"type": "map", "values": inner}, st.dictionaries(
                st.text(max_size=8), values, max_size=4
            )
        return {"type": "array", "items": inner}, st.lists(values, max_size=4)
    if kind == "union":
        inner, values = _type_and_values(draw, depth + 1)
        if (
            inner == "null"
            or isinstance(inner, list)  # Avro has no union directly inside a union
            or isinstance(inner, dict)
            and inner.get("type") in ("map", "array")
        ):
            # (an empty map or list: fastavro takes whichever of those comes first)
            inner, values = "string", st.text(max_size=8)
        branches = ["null", inner] if draw(st.booleans()) else [inner, "null"]
        return branches, st.none() | values
    return _record(draw, depth + 1)


def _record(draw: Any, depth: int) -> tuple[dict[str, Any], st.SearchStrategy[dict[str, Any]]]:
    n = draw(st.integers(1, 5))
    fields, values = [], {}
    for i in range(n):
        t, v = _type_and_values(draw, depth)
        fields.append({"name": f"f{i}", "type": t})
        values[f"f{i}"] = v
    return {"type": "record", "name": f"R{next(_names)}", "fields": fields}, st.fixed_dictionaries(
        values
    )


@st.composite
def _schema_and_value(draw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    schema, values = _record(draw, 0)
    return schema, draw(values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_schema_and_value())
def test_generated_writers_write_what_fastavro_writes(
    case: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    schema, value = case
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), value)
    assert compile_writer(schema)(b"", **value) == buf.getvalue()
