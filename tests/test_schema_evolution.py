"""Schema evolution: the generated archive writer on evolved schemas, compatibility checks
(`auditwatch schema check`) and events written with other writer schemas."""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import avro_write, compat
from schemas.avro_write import Unsupported, compile_writer
from schemas.codec import RejectedInput, _fastavro_archive, decode_event, encode_archive
from schemas.event import AuditEvent, Limits
from schemas.registry import SCHEMA_DIR, schema_json, strip_logical_types
from streams.cli.main import main
from streams.ops.config import SchemaRegistrySettings
from streams.ops.registry import RegistrySchemas

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
_SHA = hashlib.sha256(b"x").digest()
_ORIGIN: dict[str, Any] = {
    "original_format": "JSON",
    "original_sha256": _SHA,
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
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    event_schema, archive_schema = _evolved(
        archive_fields=[{"name": "either", "type": ["string", "long"], "default": "x"}]
    )
    with pytest.raises(Unsupported, match="either: a union other than null and one type"):
        compile_writer(archive_schema, {"dev.auditwatch.AuditEvent": event_schema})
    _use_schemas(monkeypatch, event_schema, archive_schema)
    assert avro_write.bundled_archive_writer() is None
    assert "written by fastavro" in caplog.text
    assert "ArchiveRecord.either: a union other than null and one type" in caplog.text
    # What encode_archive writes then is what the generated writer writes for the bundled
    # schemas (and is written by fastavro).
    monkeypatch.undo()
    origin: dict[str, Any] = {
        "original_format": "AVRO",
        "original_sha256": _SHA,
        "topic": "t",
        "partition": 1,
        "offset": 2,
        "archived_at_ms": 3,
    }
    generated = encode_archive(_EVENTS[1], **origin)
    monkeypatch.setattr(avro_write, "archive_record", None)
    spy: list[bytes] = []

    def fastavro_archive(header: bytes, **fields: Any) -> bytes:
        spy.append(_fastavro_archive(header, **fields))
        return spy[-1]

    monkeypatch.setattr("schemas.codec._fastavro_archive", fastavro_archive)
    fallback = encode_archive(_EVENTS[1], **origin)
    assert spy == [fallback]
    assert fallback == generated


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
        # Avro has no union directly inside a union, and fastavro writes an empty map or
        # list as whichever of those comes first in a union: neither is tested here.
        if (
            inner == "null"
            or isinstance(inner, list)
            or (isinstance(inner, dict) and inner.get("type") in ("map", "array"))
        ):
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


# --- compatibility: schemas.compat and `auditwatch schema check` ------------------------------

_EVENT_AVSC = SCHEMA_DIR / "audit_event.avsc"


def _event_schema(edit: Any = None) -> dict[str, Any]:
    schema = schema_json("audit_event")
    if edit is not None:
        edit(schema)
    return schema


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    (f,) = [f for f in schema["fields"] if f["name"] == name]
    return f


def _without(name: str) -> Any:
    def edit(s: dict[str, Any]) -> None:
        s["fields"] = [f for f in s["fields"] if f["name"] != name]

    return edit


def _plus(*fields: dict[str, Any]) -> Any:
    def edit(s: dict[str, Any]) -> None:
        s["fields"] += list(fields)

    return edit


def _symbols(*symbols: str) -> Any:
    def edit(s: dict[str, Any]) -> None:
        _field(s, "outcome")["type"]["symbols"] = list(symbols)

    return edit


def _retype(name: str, t: Any) -> Any:
    def edit(s: dict[str, Any]) -> None:
        _field(s, name)["type"] = t

    return edit


_NEWER = _event_schema(
    lambda s: (
        _plus({"name": "tenant", "type": "string", "default": ""})(s),
        _symbols("SUCCESS", "FAILURE", "DENIED", "TIMEOUT")(s),
    )
)
# (writer edit, reader edit, compatible?) for the checker's verdicts against the avro package's.
_CASES = [
    (None, None, True),
    (_without("source"), None, True),  # the reader's field has a default
    (_without("machine_id"), None, False),  # ...and here it has none
    (_plus({"name": "tenant", "type": "string"}), None, True),  # the reader ignores it
    (None, _plus({"name": "tenant", "type": "string"}), False),
    (None, _plus({"name": "tenant", "type": "string", "default": ""}), True),
    (_symbols("SUCCESS", "FAILURE"), None, True),
    (_symbols("SUCCESS", "FAILURE", "DENIED", "TIMEOUT"), None, False),
    (_retype("resource", "bytes"), None, True),  # string and bytes read each other
    (_retype("source_ip", "string"), None, True),  # a plain string into ["null", "string"]
    (None, _retype("source_ip", "string"), False),  # null cannot be read as a string
    (_retype("attributes", {"type": "map", "values": "int"}), None, False),
    (None, _retype("attributes", {"type": "map", "values": ["null", "string"]}), True),
    (_retype("timestamp", "int"), None, True),  # int widens to long
    (None, _retype("timestamp", "int"), False),  # long does not narrow to int
    (_retype("timestamp", "double"), None, False),
]


@pytest.mark.parametrize(("writer_edit", "reader_edit", "compatible"), _CASES)
def test_the_checker_agrees_with_the_avro_package(
    writer_edit: Any, reader_edit: Any, compatible: bool
) -> None:
    writer = compat.parse(json.dumps(_event_schema(writer_edit)))
    reader = compat.parse(json.dumps(_event_schema(reader_edit)))
    theirs = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    assert (theirs.compatibility == SchemaCompatibilityType.compatible) is compatible
    problems = compat.incompatibilities(reader, writer)
    assert (not problems) is compatible
    # Each problem names its field and what is wrong, one per line of `schema check`.
    assert all(p.path.startswith("AuditEvent") and p.kind in _AVRO_KINDS for p in problems)


_AVRO_KINDS = {t.value for t in SchemaIncompatibilityType}


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["schema", "check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "path",
    [
        *(
            SCHEMA_DIR / f"{n}.avsc"
            for n in ("audit_event", "archive_record", "dead_letter", "alert")
        ),
        *sorted((SCHEMA_DIR / "history").glob("*.avsc")),
    ],
    ids=lambda p: p.name,
)
def test_schema_check_passes_the_bundled_schemas_and_their_history(
    capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    rc, out, _ = _check(capsys, str(path))
    assert rc == 0, out
    assert "backward" in out and "forward" in out and "INCOMPATIBLE" not in out


def test_schema_check_refuses_an_incompatible_change_naming_each_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    new = tmp_path / "new.avsc"
    changed = _event_schema(
        lambda s: (
            _without("resource")(s),
            _symbols("SUCCESS", "FAILURE")(s),
            _plus({"name": "tenant", "type": "string"})(s),
        )
    )
    new.write_text(json.dumps(changed))
    rc, out, err = _check(capsys, str(new))
    assert rc == 1
    backward, forward = out.split("forward (", 1)
    assert "INCOMPATIBLE (2)" in backward
    assert "AuditEvent.outcome: the writer's symbol DENIED is not among the reader's" in backward
    assert "AuditEvent.tenant: the writer has no field tenant" in backward
    assert "INCOMPATIBLE (1)" in forward
    assert "AuditEvent.resource: the writer has no field resource" in forward
    assert "reader_field_missing_default_value" in forward
    assert "not full-compatible with the bundled audit_event" in err
    # One direction asked, one judged: the bundled reader of what a producer using NEW sends.
    rc, out, _ = _check(capsys, str(new), "--direction", "forward")
    assert rc == 1 and "backward" not in out
    # A compatible evolution (an optional field) passes both ways, here against another file.
    older = tmp_path / "older.avsc"
    older.write_text(json.dumps(_event_schema(_without("source"))))
    new.write_text(
        json.dumps(
            _event_schema(_plus({"name": "tenant", "type": ["null", "string"], "default": None}))
        )
    )
    rc, out, _ = _check(capsys, str(new), "--against", str(older))
    assert rc == 0, out
    assert f"backward ({new} reads what {older} wrote): compatible" in out


def test_schema_check_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.avsc"
    broken.write_text('{"type": "record"')
    not_avro = tmp_path / "not_avro.avsc"
    not_avro.write_text('{"type": "record", "name": "X"}')
    other = tmp_path / "other.avsc"
    other.write_text('{"type": "record", "name": "Other", "fields": []}')
    for argv, said in [
        ([str(broken)], "not JSON"),
        ([str(not_avro)], "not a valid Avro schema"),
        ([str(tmp_path / "missing.avsc")], "No such file"),
        ([str(other)], "say which with --against"),
        ([str(_EVENT_AVSC), "--against", "nothing"], "neither a bundled schema"),
    ]:
        rc, _, err = _check(capsys, *argv)
        assert rc == 2 and said in err, (argv, err)
    with pytest.raises(SystemExit) as e:
        main(["schema", "check", str(_EVENT_AVSC), "--direction", "sideways"])
    assert e.value.code == 2


# --- events written with other writer schemas ------------------------------------------------


class _Registry(BaseHTTPRequestHandler):
    """GET /schemas/ids/{id}: the schemas of `_Registry.schemas`, 404 for other ids."""

    schemas: dict[int, dict[str, Any]] = {}

    def do_GET(self) -> None:
        schema_id = self.path.split("?")[0].rsplit("/", 1)[-1]
        schema = self.schemas.get(int(schema_id)) if schema_id.isdigit() else None
        if schema is None:
            self.send_response(404)
            body = json.dumps({"error_code": 40403, "message": "Schema not found"}).encode()
        else:
            self.send_response(200)
            body = json.dumps({"schema": json.dumps(schema)}).encode()
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


OLDER, NEWER, INCOMPATIBLE = 21, 22, 23


@pytest.fixture(scope="module")
def resolver() -> Iterator[RegistrySchemas]:
    _Registry.schemas = {
        OLDER: _event_schema(_without("source")),
        NEWER: _NEWER,
        INCOMPATIBLE: _event_schema(_without("machine_id")),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield RegistrySchemas(
            SchemaRegistrySettings(url=f"http://127.0.0.1:{server.server_address[1]}")
        )
    finally:
        server.shutdown()


_RECORD = {
    "event_id": "e-7",
    "timestamp": 1_767_571_200_244,
    "machine_id": "payments-api",
    "resource": "postgres://orders-db/public.orders",
    "operation": "SELECT",
    "outcome": "DENIED",
    "source_ip": "10.0.0.1",
    "identity_type": "service-account",
    "source": None,
    "attributes": {"zone": "eu-west-1a"},
}


_GONE = object()  # a field the writer schema does not have


def _written(schema_id: int, **changes: Any) -> bytes:
    record = {**_RECORD, **changes}
    schema = fastavro.parse_schema(strip_logical_types(copy.deepcopy(_Registry.schemas[schema_id])))
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buf, schema, {k: v for k, v in record.items() if v is not _GONE})
    return buf.getvalue()


_NOW_MS = 1_767_571_300_000


def _decode(resolver: RegistrySchemas, value: bytes) -> AuditEvent:
    return decode_event(value, fmt="auto", resolver=resolver, limits=Limits(), now_ms=_NOW_MS).event


_WANT = AuditEvent(
    "e-7",
    1_767_571_200_244_000,
    "payments-api",
    "postgres://orders-db/public.orders",
    "SELECT",
    "DENIED",
    source_ip="10.0.0.1",
    identity_type="service-account",
    attributes={"zone": "eu-west-1a"},
)


def test_an_event_of_an_older_writer_schema_decodes(resolver: RegistrySchemas) -> None:
    # A field fewer: the reader's default fills it.
    assert _decode(resolver, _written(OLDER)) == _WANT


def test_an_event_of_a_newer_writer_schema_decodes(resolver: RegistrySchemas) -> None:
    # An extra field the reader does not know, and an enum with a symbol it does not know but
    # this event does not use.
    assert _decode(resolver, _written(NEWER, tenant="acme")) == _WANT


def test_a_newer_writers_unknown_symbol_is_a_dead_letter_saying_so(
    resolver: RegistrySchemas,
) -> None:
    with pytest.raises(RejectedInput) as e:
        _decode(resolver, _written(NEWER, outcome="TIMEOUT"))
    assert e.value.reason == "incompatible_schema"
    assert e.value.stage == "decode"
    assert f"schema id {NEWER}" in e.value.message
    assert (
        "AuditEvent.outcome: the writer's symbol TIMEOUT is not among the reader's"
        in e.value.message
    )


def test_an_incompatible_writer_schema_is_a_dead_letter_naming_the_field(
    resolver: RegistrySchemas,
) -> None:
    with pytest.raises(RejectedInput) as e:
        _decode(resolver, _written(INCOMPATIBLE, machine_id=_GONE))
    assert e.value.reason == "incompatible_schema"
    assert "AuditEvent.machine_id: the writer has no field machine_id" in e.value.message
    # Bytes that are simply broken stay an avro_decode_error, also for a registry's schema.
    with pytest.raises(RejectedInput) as e:
        _decode(resolver, _written(OLDER)[:-3])
    assert e.value.reason == "avro_decode_error"


def test_the_benchmark_times_both_writers_on_identical_bytes() -> None:
    from bench.archive_writer import measure
    from bench.perf import cli

    figures = measure(number=50, repeat=1)
    assert set(figures) == {"generated", "fastavro"} and all(v > 0 for v in figures.values())
    assert avro_write.archive_record is not None  # restored after timing the fallback
    assert cli.ARCHIVE_WRITER == "generated"  # what `make bench` records as archive_writer


def test_the_processor_archives_evolved_events_and_dead_letters_unreadable_ones(
    resolver: RegistrySchemas,
) -> None:
    from schemas.codec import decode_wire
    from streams.ops.config import Config
    from streams.processor import MemoryStore, Origin, Processor

    processor = Processor(Config(), resolver, clock=lambda: _NOW_MS)
    store = MemoryStore()
    origin = Origin("audit.events", 0, 7)
    (archived,) = processor.handle(_written(NEWER, tenant="acme"), None, origin, store)
    assert archived.kind == "archive"
    assert decode_wire(archived.value, "archive_record")["event"]["machine_id"] == "payments-api"
    value = _written(NEWER, event_id="e-8", outcome="TIMEOUT")
    (dead,) = processor.handle(value, None, origin, store)
    assert dead.kind == "deadletter"
    record = decode_wire(dead.value, "dead_letter")
    assert record["reason"] == "incompatible_schema" and record["value"] == value
    assert "symbol TIMEOUT is not among the reader's" in record["message"]
