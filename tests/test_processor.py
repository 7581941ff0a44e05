"""In-process pipeline tests for streams.processor: no Kafka, MemoryStore, bundled schemas."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from detectors.core import DetectionCore
from schemas.codec import (
    BundledSchemas,
    TransientSchemaError,
    decode_wire,
    encode_event_avro,
)
from schemas.registry import parsed
from streams.ops.config import Config, load_config
from streams.processor import MemoryStore, Origin, Output, Processor

T_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW_MS = T_MS + 60_000
ORIGIN = Origin("audit.events", 3, 1234)
MACHINE = "orders-api"


def event(**changes: Any) -> dict[str, Any]:
    """An event in its Avro form (timestamp in epoch millis, no event_id: derived)."""
    record: dict[str, Any] = {
        "event_id": None,
        "timestamp": T_MS + 123,
        "machine_id": MACHINE,
        "resource": "postgres://orders-db/public.orders",
        "operation": "SELECT",
        "outcome": "SUCCESS",
        "source_ip": None,
        "identity_type": None,
        "source": None,
        "attributes": {},
    }
    record.update(changes)
    return record


def as_json(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def as_avro(record: dict[str, Any]) -> bytes:
    return encode_event_avro(record)


def make_processor(cfg: Config | None = None, resolver: Any = None, **kw: Any) -> Processor:
    return Processor(cfg or Config(), resolver or BundledSchemas(), clock=lambda: NOW_MS, **kw)


@pytest.fixture
def processor() -> Processor:
    return make_processor()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def only(outputs: list[Output], kind: str) -> Output:
    assert [o.kind for o in outputs] == [kind]
    return outputs[0]


def test_valid_event_is_archived(processor: Processor, store: MemoryStore) -> None:
    value = as_json(event(event_id="e-1"))
    out = only(processor.handle(value, MACHINE.encode(), ORIGIN, store), "archive")
    assert out.key == MACHINE.encode() + b"\x1fe-1"
    record = decode_wire(out.value, "archive_record")
    assert record["event"]["event_id"] == "e-1"
    assert record["event"]["timestamp"] == T_MS + 123
    assert record["event"]["machine_id"] == MACHINE
    assert record["event_id_derived"] is False
    assert record["original_format"] == "JSON"
    assert record["original_sha256"] == hashlib.sha256(value).digest()
    assert (record["original_topic"], record["original_partition"], record["original_offset"]) == (
        "audit.events",
        3,
        1234,
    )
    assert record["archived_at"] == NOW_MS
    assert processor.metrics["archived"] == 1
    assert processor.metrics["events_in"] == 1


def test_avro_event_is_archived_with_derived_id(processor: Processor, store: MemoryStore) -> None:
    value = as_avro(event())
    out = only(processor.handle(value, None, ORIGIN, store), "archive")
    record = decode_wire(out.value, "archive_record")
    assert record["original_format"] == "AVRO"
    assert record["event_id_derived"] is True
    assert out.key == (MACHINE + "\x1f" + record["event"]["event_id"]).encode()
    assert record["event"]["event_id"].startswith("h-")
    assert record["original_sha256"] == hashlib.sha256(value).digest()


def test_explicit_original_format_is_recorded(processor: Processor, store: MemoryStore) -> None:
    outputs, ev = processor.ingest(as_json(event()), None, ORIGIN, store, original_format="CSV")
    assert ev is not None
    assert decode_wire(only(outputs, "archive").value, "archive_record")["original_format"] == (
        "CSV"
    )


def test_exact_resend_is_dropped(processor: Processor, store: MemoryStore) -> None:
    value = as_json(event())
    assert len(processor.handle(value, None, ORIGIN, store)) == 1
    assert processor.handle(value, None, Origin("audit.events", 3, 1235), store) == []
    assert processor.metrics["duplicates"] == 1
    assert processor.metrics["archived"] == 1


def test_file_tools_skip_the_archive_record_but_not_dedupe(
    processor: Processor, store: MemoryStore
) -> None:
    value = as_json(event())
    outputs, ev = processor.ingest(value, None, ORIGIN, store, archive=False)
    assert outputs == [] and ev is not None and ev.machine_id == MACHINE
    assert processor.ingest(value, None, ORIGIN, store, archive=False) == ([], None)
    assert processor.metrics["duplicates"] == 1
    bad, none = processor.ingest(b"{", None, ORIGIN, store, archive=False)
    assert none is None and [o.kind for o in bad] == ["deadletter"]


@pytest.mark.parametrize("event_id", [None, "e-7"], ids=["derived-id", "given-id"])
def test_same_event_in_avro_then_json_is_deduplicated(
    processor: Processor, store: MemoryStore, event_id: str | None
) -> None:
    record = event(event_id=event_id, attributes={"k": "v"})
    only(processor.handle(as_avro(record), None, ORIGIN, store), "archive")
    json_form = {**record, "timestamp": "2026-01-01T00:00:00.123Z", "outcome": "success"}
    assert processor.handle(as_json(json_form), None, ORIGIN, store) == []
    assert processor.metrics["duplicates"] == 1
    assert processor.metrics["conflicting_duplicates"] == 0


def test_conflicting_duplicate_is_dead_lettered(processor: Processor, store: MemoryStore) -> None:
    first = as_json(event(event_id="e-1"))
    only(processor.handle(first, None, ORIGIN, store), "archive")
    seen = dict(store.seen)

    second = as_json(event(event_id="e-1", resource="s3://payroll/x"))
    origin = Origin("audit.events", 0, 99)
    out = only(processor.handle(second, b"k", origin, store), "deadletter")
    record = decode_wire(out.value, "dead_letter")
    assert record["reason"] == "conflicting_duplicate"
    assert record["stage"] == "dedupe"
    assert record["event_id"] == "e-1"
    assert record["value"] == second
    assert (record["topic"], record["partition"], record["offset"]) == ("audit.events", 0, 99)
    assert out.key == b"k"
    assert store.seen == seen  # the archived record is kept
    assert processor.metrics["conflicting_duplicates"] == 1
    assert processor.metrics["archived"] == 1

    # The original re-sent is still recognised as a plain duplicate.
    assert processor.handle(first, None, ORIGIN, store) == []
    assert processor.metrics["duplicates"] == 1


@pytest.mark.parametrize(
    ("key", "mismatches"),
    [(b"billing-api", 1), (MACHINE.encode(), 0), (None, 0)],
    ids=["other", "same", "none"],
)
def test_key_mismatch_is_counted_and_event_archived(
    processor: Processor, store: MemoryStore, key: bytes | None, mismatches: int
) -> None:
    only(processor.handle(as_json(event()), key, ORIGIN, store), "archive")
    assert processor.metrics["key_mismatch"] == mismatches


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "json_decode_error"),
        (b"\x01\x00\x00\x03\xe9payload", "bad_magic_byte"),
        (b"\x00\x00\x00\x03\xe9\x02", "avro_decode_error"),
        (b"\x00\x00\x00\x00\x07\x02", "unknown_schema_id"),
        (orjson.dumps({"timestamp": T_MS, "machine_id": MACHINE}), "missing_field"),
        (orjson.dumps(event(timestamp=NOW_MS + 7_200_000)), "timestamp_in_future"),
        (orjson.dumps(event(outcome="MAYBE")), "invalid_field"),
        (orjson.dumps(event(timestamp="later")), "bad_timestamp"),
        (b"", "empty_value"),
    ],
)
def test_malformed_input_is_dead_lettered(
    processor: Processor, store: MemoryStore, value: bytes, reason: str
) -> None:
    out = only(processor.handle(value, b"some-key", ORIGIN, store), "deadletter")
    assert out.key == b"some-key"
    record = decode_wire(out.value, "dead_letter")
    assert record["reason"] == reason
    assert record["value"] == value
    assert record["key"] == b"some-key"
    assert record["value_size"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).digest()
    assert (record["topic"], record["partition"], record["offset"]) == ("audit.events", 3, 1234)
    assert record["rejected_at"] == NOW_MS
    assert record["event_id"] is None
    assert processor.metrics["deadlettered"] == 1
    assert processor.metrics[f"deadlettered.{reason}"] == 1
    assert store.seen == {}


def test_none_value_is_dead_lettered(processor: Processor, store: MemoryStore) -> None:
    out = only(processor.handle(None, None, ORIGIN, store), "deadletter")
    record = decode_wire(out.value, "dead_letter")
    assert record["reason"] == "empty_value"
    assert record["value"] == b""


def test_oversize_input_is_dead_lettered_truncated(store: MemoryStore) -> None:
    processor = make_processor(load_config(overrides={"input.max_value_bytes": 256}))
    value = as_json(event(attributes={"pad": "x" * 400}))
    out = only(processor.handle(value, None, ORIGIN, store), "deadletter")
    record = decode_wire(out.value, "dead_letter")
    assert record["reason"] == "oversize"
    assert record["value"] == value[:256]
    assert record["value_truncated"] is True
    assert record["value_size"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).digest()


def test_odd_digit_timestamp_is_dead_lettered(processor: Processor, store: MemoryStore) -> None:
    value = as_json(event(timestamp=f"{T_MS}\u00b2"))
    out = only(processor.handle(value, None, ORIGIN, store), "deadletter")
    assert decode_wire(out.value, "dead_letter")["reason"] == "bad_timestamp"


@pytest.mark.parametrize(
    ("value", "reason", "event_id"),
    [
        (as_json(event(event_id="e-7", outcome="MAYBE")), "invalid_field", "e-7"),
        (
            as_json(event(event_id="e-8", timestamp=NOW_MS + 7_200_000)),
            "timestamp_in_future",
            "e-8",
        ),
        (orjson.dumps({"event_id": "e-9", "machine_id": MACHINE}), "missing_field", "e-9"),
        (
            b'{"event_id": "e-\\"10\\"", "timestamp": 17672256, "machine_id": "ord',
            "json_decode_error",
            'e-"10"',
        ),
        (b' {"machine_id": "x", "event_id": "e-11",}', "json_decode_error", "e-11"),
        # Nothing to recover, and nothing made up.
        (as_json(event(event_id=7)), "invalid_field", None),
        (b'{"event_id": ["e-12"], "timestamp": ', "json_decode_error", None),
        (b'{"attributes": {"k": "v"}, "timestamp": "x"', "json_decode_error", None),
        (as_json(event(event_id="x" * 300)), "oversize", None),
        (b"\x00\x00\x00\x00\x07" + b'"event_id": "e-14"', "unknown_schema_id", None),
    ],
)
def test_dead_letters_keep_the_event_id_the_message_had(
    processor: Processor, store: MemoryStore, value: bytes, reason: str, event_id: str | None
) -> None:
    out = only(processor.handle(value, None, ORIGIN, store), "deadletter")
    record = decode_wire(out.value, "dead_letter")
    assert (record["reason"], record["event_id"]) == (reason, event_id)


def test_detector_exception_does_not_stop_the_pipeline(
    processor: Processor, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: DetectionCore, event: Any, state: Any) -> Any:
        raise RuntimeError("detector bug")

    monkeypatch.setattr(DetectionCore, "process", broken)
    out = only(processor.handle(as_json(event()), None, ORIGIN, store), "archive")
    assert decode_wire(out.value, "archive_record")["event"]["machine_id"] == MACHINE
    assert processor.metrics["detector_errors"] == 1
    assert store.machines == {}
    # And the next message is processed as usual.
    only(processor.handle(as_json(event(operation="UPDATE")), None, ORIGIN, store), "archive")
    assert processor.metrics["detector_errors"] == 2
    assert processor.metrics["archived"] == 2


class FlakyRegistry:
    """Unreachable for the first `failures` look-ups, then answers like the bundled schemas."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def writer_schema(self, schema_id: int) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientSchemaError("connection refused")
        return parsed("audit_event") if schema_id == 1001 else None


def test_transient_schema_error_is_retried(store: MemoryStore) -> None:
    sleeps: list[float] = []
    registry = FlakyRegistry(failures=2)
    processor = make_processor(resolver=registry, sleep=sleeps.append)
    out = only(processor.handle(as_avro(event()), None, ORIGIN, store), "archive")
    assert decode_wire(out.value, "archive_record")["original_format"] == "AVRO"
    assert processor.metrics["registry_retries"] == 2
    assert registry.calls == 3
    assert sleeps == [0.5, 1.0]
    assert processor.metrics["deadlettered"] == 0


def test_retry_backoff_is_capped(store: MemoryStore) -> None:
    sleeps: list[float] = []
    processor = make_processor(resolver=FlakyRegistry(failures=10), sleep=sleeps.append)
    only(processor.handle(as_avro(event()), None, ORIGIN, store), "archive")
    assert sleeps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert max(sleeps) == 30.0


# --- detection through the processor ----------------------------------------------------


def test_alerts_flow_with_state_in_the_store(store: MemoryStore) -> None:
    cfg = load_config(overrides={"detectors.warmup_events": 3, "detectors.warmup_s": 0})
    processor = make_processor(cfg)
    for k in range(3):
        value = as_json(event(timestamp=T_MS + k * 1000))
        only(processor.handle(value, None, ORIGIN, store), "archive")
    assert set(store.machines) == {MACHINE}

    value = as_json(event(timestamp=T_MS + 5000, resource="s3://payroll/2026/x.csv"))
    outputs = processor.handle(value, None, ORIGIN, store)
    assert [o.kind for o in outputs] == ["archive", "alert"]
    alert_out = outputs[1]
    assert alert_out.alert is not None
    assert alert_out.key == alert_out.alert.alert_id.encode()
    body = orjson.loads(alert_out.value)
    assert body == alert_out.alert.to_json()
    assert body["status"] == "opened"
    assert body["detector"] == "new_resource"
    assert processor.metrics["alerts.opened"] == 1


def test_duplicates_are_not_detected_twice(store: MemoryStore) -> None:
    cfg = load_config(overrides={"detectors.warmup_events": 1, "detectors.warmup_s": 0})
    processor = make_processor(cfg)
    only(processor.handle(as_json(event()), None, ORIGIN, store), "archive")
    value = as_json(event(timestamp=T_MS + 5000, resource="s3://new/x"))
    assert [o.kind for o in processor.handle(value, None, ORIGIN, store)] == ["archive", "alert"]
    assert processor.handle(value, None, ORIGIN, store) == []
    assert processor.metrics["alerts.opened"] == 1
