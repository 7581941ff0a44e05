"""End to end on the real broker: events in, archive, dead letters and alerts out."""

from __future__ import annotations

import io
import struct
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.codec import decode_wire, encode_event_avro, sha256
from streams.processor import event_id_of
from streams.tools.producer import to_avro_record
from streams.tools.reading import pipeline_lag
from streams.tools.replay import replay
from tests.conftest import Stack, wait_until
from tests.traffic import scenario

pytestmark = pytest.mark.kafka


def send(stack: Stack, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({**stack.cfg.kafka.client_config(), "linger.ms": 5})
    for key, value in messages:
        producer.produce(stack.cfg.topics.events, key=key, value=value)
    assert producer.flush(30) == 0


def avro(event: dict[str, Any]) -> bytes:
    return encode_event_avro(to_avro_record(event, int(time.time() * 1000)))


def archived_ids(stack: Stack) -> Counter[str]:
    return Counter(event_id_of(m.key()) for m in stack.read("archive"))


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_valid_events_archived_once_and_bad_input_dead_lettered(stack: Any, guarantee: str) -> None:
    s: Stack = stack(input__max_value_bytes=4096, kafka__processing_guarantee=guarantee)
    s.create_topics()
    worker = s.start_worker()
    now = int(time.time() * 1000)
    valid = [
        {
            "event_id": f"ev-{i}" if i % 3 else None,
            "timestamp": now - 3_600_000 + i * 1000,
            "machine_id": f"svc-{i % 4}",
            "resource": f"postgres://db/public.t{i % 5}",
            "operation": "SELECT",
            "outcome": ["success", "FAILURE", "Denied"][i % 3],
            "attributes": {"n": str(i)},
        }
        for i in range(40)
    ]
    messages: list[tuple[bytes | None, bytes]] = [
        (e["machine_id"].encode(), avro(e)) for e in valid
    ]
    # Re-sends of the same events, as JSON and as Avro again: archived once.
    messages += [(e["machine_id"].encode(), orjson.dumps(e)) for e in valid[:10]]
    messages += [(e["machine_id"].encode(), avro(e)) for e in valid[10:15]]
    good_avro = avro(valid[1])
    body = good_avro[5:]
    bad: dict[str, bytes] = {
        "truncated_avro": good_avro[: len(good_avro) - 6],
        "wrong_magic": b"\x07" + good_avro[1:],
        "unknown_schema": struct.pack(">bI", 0, 424242) + body,
        "missing_field": orjson.dumps({k: v for k, v in valid[2].items() if k != "resource"}),
        "bad_timestamp": orjson.dumps({**valid[2], "event_id": "x-ts", "timestamp": "yesterday"}),
        "future": orjson.dumps({**valid[2], "event_id": "x-fut", "timestamp": now + 86_400_000}),
        "oversize": orjson.dumps(
            {**valid[2], "event_id": "x-big", "attributes": {"pad": "x" * 5000}}
        ),
        # Same event_id as an archived event, different content: must not overwrite it.
        "conflict": orjson.dumps({**valid[1], "resource": "secrets://prod/root-token"}),
    }
    expected_reason = {
        "truncated_avro": "avro_decode_error",
        "wrong_magic": "bad_magic_byte",
        "unknown_schema": "unknown_schema_id",
        "missing_field": "missing_field",
        "bad_timestamp": "bad_timestamp",
        "future": "timestamp_in_future",
        "oversize": "oversize",
        "conflict": "conflicting_duplicate",
    }
    messages += [(b"svc-1", v) for v in bad.values()]
    send(s, messages)

    ids = {e["event_id"] for e in valid if e["event_id"]}
    wait_until(lambda: len(archived_ids(s)) >= 40, what="40 archived event ids")
    dead = wait_until(
        lambda: (d := s.read("deadletter")) and len(d) >= len(bad) and d, what="dead letters"
    )
    # Still running after every poison message: a later event is processed too.
    late = {**valid[0], "event_id": "after-poison", "timestamp": now}
    send(s, [(b"svc-0", avro(late))])
    wait_until(lambda: "after-poison" in archived_ids(s), what="event after poison messages")
    assert worker.poll() is None

    archive = {}
    for m in s.read("archive"):
        archive[event_id_of(m.key())] = decode_wire(m.value(), "archive_record")
        # Kafka timestamps are processing time; event time (an hour earlier) is in the payload.
        assert now - 5_000 <= m.timestamp()[1] <= time.time() * 1000
    assert len(archive) == 41
    assert ids <= set(archive)
    derived = [r for r in archive.values() if r["event_id_derived"]]
    assert len(derived) == sum(1 for e in valid if e["event_id"] is None)
    # The conflicting copy did not replace the archived original.
    assert archive["ev-1"]["event"]["resource"] == "postgres://db/public.t1"
    assert {r["original_format"] for r in archive.values()} == {"AVRO"}

    records = [decode_wire(m.value(), "dead_letter") for m in dead]
    by_value = {r["value_sha256"]: r for r in records}
    assert len(records) == len(bad)
    for name, value in bad.items():
        r = by_value[sha256(value)]
        assert r["reason"] == expected_reason[name], (name, r["reason"], r["message"])
        assert r["topic"] == s.cfg.topics.events and r["offset"] is not None
        if name == "oversize":
            assert r["value_truncated"] and r["value_size"] == len(value)
            assert r["value"] == value[:4096]
        else:
            assert r["value"] == value
    conflict = by_value[sha256(bad["conflict"])]
    assert conflict["event_id"] == "ev-1" and conflict["stage"] == "dedupe"


def test_replay_and_kafka_give_the_same_pages(stack: Any, tmp_path: Any) -> None:
    events, expected = scenario()
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    s: Stack = stack()
    buf = io.BytesIO()
    result = replay(s.cfg, [str(path)], buf)
    replay_pages = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    assert result.events == len(events)
    assert {(p["machine_id"], p["detector"]) for p in replay_pages} == set(expected.items())

    s.create_topics()
    s.start_worker()
    send(s, [(e["machine_id"].encode(), avro(e)) for e in events])
    wait_until(
        lambda: pipeline_lag(s.cfg) == 0,
        timeout=120,
        what="processor to commit every event",
    )
    messages = s.read("alerts")
    alerts = [orjson.loads(m.value()) for m in messages]
    # The alerts topic is keyed by alert_id.
    assert [m.key().decode() for m in messages] == [a["alert_id"] for a in alerts]
    kafka_pages = [
        a
        for a in alerts
        if a["status"] in ("opened", "escalated")
        and a["severity"] in ("medium", "high", "critical")
    ]
    key = lambda a: (a["alert_id"], a["status"], a["severity"], a["event_time"])  # noqa: E731
    assert sorted(map(key, kafka_pages)) == sorted(map(key, replay_pages))
