"""An Avro event that decodes but fails validation keeps the event_id its record carries in
its dead letter, as a JSON one does (tests/test_processor.py): whoever looks a rejected
message up later searches by the id its producer gave it."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import BundledSchemas, decode_wire, encode_event_avro
from streams.ops.config import Config
from streams.processor import MemoryStore, Origin, Processor

T_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW_MS = T_MS + 60_000


def avro(**changes: Any) -> bytes:
    record: dict[str, Any] = {
        "event_id": "e-1",
        "timestamp": T_MS,
        "machine_id": "orders-api",
        "resource": "postgres://orders-db/public.orders",
        "operation": "SELECT",
        "outcome": "SUCCESS",
        "source_ip": None,
        "identity_type": None,
        "source": None,
        "attributes": {},
    }
    return encode_event_avro({**record, **changes})


@pytest.mark.parametrize(
    ("value", "reason", "event_id"),
    [
        (avro(event_id="e-8", timestamp=NOW_MS + 7_200_000), "timestamp_in_future", "e-8"),
        (avro(event_id="e-9", machine_id=""), "missing_field", "e-9"),
        (avro(event_id="e-10", timestamp=1_000), "bad_timestamp", "e-10"),
        (avro(event_id="e-11", resource="r" * 5000), "oversize", "e-11"),
        # Nothing made up: an id validation itself refuses is not carried.
        (avro(event_id="x" * 300), "oversize", None),
        (avro(event_id=None, machine_id=""), "missing_field", None),
        (avro(event_id="", machine_id=""), "missing_field", None),
    ],
    ids=[
        "future",
        "empty-machine",
        "before-2000",
        "oversize-field",
        "id-too-long",
        "no-id",
        "empty-id",
    ],
)
def test_avro_dead_letter_carries_the_records_event_id(
    value: bytes, reason: str, event_id: str | None
) -> None:
    processor = Processor(Config(), BundledSchemas(), clock=lambda: NOW_MS)
    (out,) = processor.handle(value, None, Origin("audit.events", 0, 7), MemoryStore())
    assert out.kind == "deadletter"
    record = decode_wire(out.value, "dead_letter")
    assert (record["reason"], record["event_id"]) == (reason, event_id)
