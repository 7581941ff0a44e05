"""Fuzz targets: every decoder and adapter that turns untrusted bytes into objects, each
wrapped with its contract. A target takes one input (bytes) and returns normally when the
decoder kept its contract: an event (or its own kind of record) or the documented rejection.
Any other exception is an escape, and propagates, so both fuzzers (atheris's
`tests/fuzz/harness.py` and our own `tests/fuzz/mutate.py`) see it as a crash.

Only the standard library and the project: atheris instruments what this module imports.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
import orjson

from schemas import alert as alert_schema
from schemas.codec import (
    BundledSchemas,
    Decoded,
    RejectedInput,
    TransientSchemaError,
    decode_event,
    decode_wire,
)
from schemas.event import InvalidEvent, Limits, parse_timestamp_us
from schemas.registry import schema_json, strip_logical_types
from streams.cli import deadletter, webhook
from streams.cli.errors import UsageError
from streams.ops import control
from streams.ops.config import Config, WebhookSettings
from streams.processor import MemoryStore, Origin, Processor, recover_event_id
from streams.tools import readers

ROOT = Path(__file__).resolve().parents[2]
# Processing time of every target: fixed, so a run is reproducible (2027-01-15T08:00:00Z).
NOW_MS = 1_800_000_000_000
LIMITS = Limits()


def documented_reasons() -> frozenset[str]:
    """The dead-letter reason codes README.md documents ("Dead letters" in "What it does"):
    a decoder that rejects with any other code breaks what operators are told to expect."""
    text = (ROOT / "README.md").read_text()
    start = text.index("and a reason code:")
    end = text.index("\n- **", start)
    return frozenset(re.findall(r"`([a-z_]+)`", text[start:end]))


REASONS = documented_reasons()


class ContractBroken(AssertionError):
    """A decoder returned or rejected in a way its contract does not allow."""


def _check_rejection(e: RejectedInput) -> None:
    if e.reason not in REASONS:
        raise ContractBroken(f"reason {e.reason!r} is not documented ({sorted(REASONS)})")
    if not e.message or e.stage not in ("decode", "validate"):
        raise ContractBroken(f"rejection without a message or stage: {e.stage!r} {e.message!r}")


def _check_decoded(d: Decoded) -> None:
    ev = d.event
    if not (ev.event_id and ev.machine_id and ev.resource and ev.operation):
        raise ContractBroken(f"accepted an event with an empty required field: {ev!r}")
    if ev.outcome not in ("SUCCESS", "FAILURE", "DENIED"):
        raise ContractBroken(f"accepted outcome {ev.outcome!r}")
    # What every later stage does with an accepted event must work too: the archive's hash,
    # its Avro form, its time.
    ev.content_digest()
    ev.to_avro()
    _ = ev.time


def _decode(data: bytes, fmt: str, resolver: Any = None) -> None:
    try:
        d = decode_event(data, fmt=fmt, resolver=resolver or BUNDLED, limits=LIMITS, now_ms=NOW_MS)
    except RejectedInput as e:
        _check_rejection(e)
        return
    _check_decoded(d)


BUNDLED = BundledSchemas()


def event_json(data: bytes) -> None:
    """A JSON input message (`input.format: json`)."""
    _decode(data, "json")


def event_auto(data: bytes) -> None:
    """Any input message with the default `input.format: auto` (byte 0 picks the decoder)."""
    _decode(data, "auto")


def event_avro(data: bytes) -> None:
    """Confluent wire format, bundled schema ids (no registry)."""
    _decode(data, "avro")


def _evolved_writers() -> dict[int, Any]:
    """Writer schemas a registry could hand out for other ids: the event schema with a field
    more, a field fewer and a field of another type, and schemas that are no event at all."""
    base = strip_logical_types(schema_json("audit_event"))
    more = {**base, "fields": [*base["fields"], {"name": "extra", "type": ["null", "long"]}]}
    fewer = {**base, "fields": [f for f in base["fields"] if f["name"] != "source"]}
    retyped = {
        **base,
        "fields": [
            {**f, "type": "long"} if f["name"] == "machine_id" else f for f in base["fields"]
        ],
    }
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "string"}]}
    return {
        1: fastavro.parse_schema(more),
        2: fastavro.parse_schema(fewer),
        3: fastavro.parse_schema(retyped),
        4: fastavro.parse_schema(other),
        5: fastavro.parse_schema({"type": "array", "items": "string"}),
        6: fastavro.parse_schema("string"),
    }


class FuzzRegistry:
    """A SchemaResolver as `streams.ops.registry.RegistrySchemas` behaves, without HTTP: the
    bundled ids, the evolved writers above, None (404) for other ids, and a registry outage
    for id 7 (TransientSchemaError: a retry, never a dead letter)."""

    def __init__(self) -> None:
        self.writers = _evolved_writers()

    def writer_schema(self, schema_id: int) -> Any | None:
        if schema_id == 7:
            raise TransientSchemaError("registry unavailable")
        return self.writers.get(schema_id) or BUNDLED.writer_schema(schema_id)


REGISTRY = FuzzRegistry()


def event_registry(data: bytes) -> None:
    """Confluent wire format whose writer schemas come from a registry (schema resolution)."""
    try:
        _decode(data, "avro", REGISTRY)
    except TransientSchemaError:
        if data[1:5] != b"\x00\x00\x00\x07":
            raise


def timestamp(data: bytes) -> None:
    """`parse_timestamp_us` on text: epoch millis or RFC 3339, else `bad_timestamp`."""
    text = data.decode("utf-8", "replace")
    try:
        us = parse_timestamp_us(text)
    except InvalidEvent as e:
        if e.reason != "bad_timestamp":
            raise ContractBroken(f"timestamp rejected as {e.reason}") from None
        return
    if not isinstance(us, int):
        raise ContractBroken(f"timestamp parsed to {type(us).__name__}")


@contextmanager
def _file(data: bytes) -> Iterator[str]:
    """`read_records` opens paths: the input in memory behind a path name, since a file per
    input would cost more than the decoding itself."""
    real = readers._open
    setattr(readers, "_open", lambda path: io.BytesIO(data))  # noqa: B010
    try:
        yield "fuzz-input"
    finally:
        setattr(readers, "_open", real)  # noqa: B010


def _reader(fmt: str, csv_map: dict[str, str] | None = None) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        with _file(data) as path:
            for rec in readers.read_records([path], fmt, csv_map):
                if not isinstance(rec.value, bytes):
                    raise ContractBroken(f"record value is {type(rec.value).__name__}")
                # What replay and produce do next: every file record is JSON text.
                _decode(rec.value, "json")

    target.__doc__ = f"`read_records` of a {fmt} file, each record then decoded."
    return target


reader_jsonl = _reader("jsonl")
reader_csv = _reader("csv", {"machine_id": "host", "resource": "object"})
reader_cloudtrail = _reader("cloudtrail")
reader_k8s = _reader("k8s-audit")


def control_record(data: bytes) -> None:
    """A control-topic record as a worker reads it (`auditwatch alerts ack/snooze`): a
    record or None (ignored, logged), and the record is usable wherever a worker uses it."""
    rec = control.decode(data)
    if rec is None:
        return
    for name in ("acknowledged_by", "snoozed_by"):
        if not isinstance(getattr(rec, name), str | None):
            raise ContractBroken(f"{name} is {getattr(rec, name)!r}")
    rec.control_at(NOW_MS)
    rec.to_json()
    _ = rec.key
    control.ControlMerge().add(rec).control_at(NOW_MS)


def alert_state(data: bytes) -> None:
    """An alerts-topic record as the webhook sink reads it: the fields it keys, formats and
    filters on, or one of the errors it dead-letters (`webhook.handle`)."""
    try:
        alert = alert_schema.check_state(orjson.loads(data))
        webhook.idempotency_key(alert)
        webhook.payload(alert)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return
    webhook.wanted(alert, WEBHOOK)
    recent = alert_schema.Recent(4)
    identity = alert_schema.state_identity(alert, data)
    _ = identity in recent
    recent.add(identity)
    deadletter.precheck_alert(data)


WEBHOOK = WebhookSettings()


class _InMemoryPath:
    """Stands in for `deadletter.Path`: `read_fix_file` reads its file with
    `Path(path).read_bytes()`, and a file written per input would cost 20 times the parsing."""

    data = b""

    def __init__(self, path: str) -> None:
        self.path = path

    def read_bytes(self) -> bytes:
        return self.data


def fix_file(data: bytes) -> None:
    """`deadletter redrive --fix FILE`: corrected values, or a usage error naming the line."""
    real = deadletter.Path
    _InMemoryPath.data = data
    setattr(deadletter, "Path", _InMemoryPath)  # noqa: B010 (a module attribute swapped)
    try:
        fixes = deadletter.read_fix_file("fix.jsonl")
    except UsageError:
        return
    finally:
        setattr(deadletter, "Path", real)  # noqa: B010
    if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in fixes.items()):
        raise ContractBroken("a fix that is not id -> bytes")


def dead_letter_record(data: bytes) -> None:
    """A dead-letter topic record as `deadletter list/redrive` read it (`decode_wire`): the
    record, or ValueError for bytes that are not one."""
    try:
        decode_wire(data, "dead_letter")
    except ValueError:
        return


def rejected_event_id(data: bytes) -> None:
    """`recover_event_id`: the id a rejected message carried, for its dead letter. It runs on
    the dead-letter path itself, so it may not raise at all; str of 1..256 or None."""
    found = recover_event_id(data, LIMITS.max_value_bytes)
    if found is not None and not (isinstance(found, str) and 0 < len(found) <= 256):
        raise ContractBroken(f"recovered event_id {found!r}")


class _Pipeline:
    """One processor and its partition's state, kept across inputs as a worker keeps them, so
    fuzzed events also meet the dedupe index and the detectors' state of earlier ones."""

    def __init__(self) -> None:
        self.processor = Processor(Config(), BUNDLED, clock=lambda: NOW_MS)
        self.origin = Origin("audit.events", 0, 0)
        self.store = MemoryStore()

    def handle(self, data: bytes) -> None:
        if len(self.store.seen) > 50_000:  # bounded memory, as a fuzz run may be long
            self.store = MemoryStore()
        key = data[:8] if data[:1] == b"k" else None
        for out in self.processor.handle(data, key, self.origin, self.store):
            if out.kind == "deadletter":
                reason = decode_wire(out.value, "dead_letter")["reason"]
                if reason not in REASONS:
                    raise ContractBroken(f"dead letter with reason {reason!r}")
                if reason == "decoder_error":
                    # The runtime's guard caught a decoder's exception: for the fuzzer, an
                    # escape all the same.
                    raise ContractBroken("a decoder raised (dead-lettered as decoder_error)")
            elif out.kind not in ("archive", "alert"):
                raise ContractBroken(f"output of kind {out.kind!r}")


_PIPELINE: _Pipeline | None = None


def processor_handle(data: bytes) -> None:
    """A message through the processor as the runtime hands it one (`Processor.handle`:
    decode, validate, dedupe, archive, detect): archive records, dead letters with a
    documented reason and alert states, nothing raised."""
    global _PIPELINE  # noqa: PLW0603 (built on first use: a Config is costly to import)
    if _PIPELINE is None:
        _PIPELINE = _Pipeline()
    _PIPELINE.handle(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "event_json": event_json,
    "event_auto": event_auto,
    "event_avro": event_avro,
    "event_registry": event_registry,
    "timestamp": timestamp,
    "reader_jsonl": reader_jsonl,
    "reader_csv": reader_csv,
    "reader_cloudtrail": reader_cloudtrail,
    "reader_k8s": reader_k8s,
    "control_record": control_record,
    "alert_state": alert_state,
    "fix_file": fix_file,
    "dead_letter_record": dead_letter_record,
    "rejected_event_id": rejected_event_id,
    "processor_handle": processor_handle,
}

NAMES = tuple(TARGETS)


def any_target(data: bytes) -> None:
    """Every target behind one entry point: byte 0 picks the target (its index in TARGETS),
    the rest is its input. One atheris process then covers every decoder, paying Python's
    start-up and the imports once rather than once per target."""
    if data:
        TARGETS[NAMES[data[0] % len(NAMES)]](data[1:])
