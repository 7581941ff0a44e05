"""`auditwatch seed` on the real broker: history teaches the baselines, raises no alerts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.codec import encode_event_avro
from streams.cli import main
from streams.producer import to_avro_record
from streams.reading import pipeline_lag
from tests.conftest import Stack, wait_until
from tests.traffic import BASE_MS, fan_out, steady

pytestmark = pytest.mark.kafka

MACHINE = "ledger-sync-03"
TABLES = [f"postgres://ledger/public.t{i}" for i in range(6)]


def test_seeded_history_warms_baselines_without_alerts(stack: Any, tmp_path: Path) -> None:
    s: Stack = stack()
    s.create_topics()
    # Two hours of history, with an enumeration inside it that must not alert when seeded.
    history = steady(MACHINE, TABLES, BASE_MS, 2 * 3600, every_ms=2000, prefix="h-")
    history += fan_out(MACHINE, BASE_MS + 3600 * 1000)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in history))
    assert main(["seed", str(path), "--config", str(s.config_path)]) == 0

    s.start_worker()
    wait_until(lambda: pipeline_lag(s.cfg) == 0, timeout=120, what="seed records learned")
    assert s.read("alerts") == []
    assert s.read("archive") == []  # seeding is not ingestion: nothing is archived again

    # Live traffic right after the history: known tables are not news, a new one pages at once
    # (the machine is past warm-up thanks to the seed).
    start = BASE_MS + 2 * 3600 * 1000
    live = steady(MACHINE, TABLES, start, 300, every_ms=2000, prefix="l-")
    probe = {
        **live[-1],
        "event_id": "probe",
        "timestamp": live[-1]["timestamp"] + 1000,
        "resource": "postgres://ledger/public.salaries",
    }
    producer = Producer(s.cfg.kafka.client_config())
    now = int(time.time() * 1000)
    for e in [*live, probe]:
        producer.produce(
            s.cfg.topics.events,
            key=MACHINE.encode(),
            value=encode_event_avro(to_avro_record(e, now)),
        )
    producer.flush(30)
    wait_until(lambda: pipeline_lag(s.cfg) == 0, timeout=120, what="live events processed")
    alerts = [orjson.loads(m.value()) for m in s.read("alerts")]
    assert [(a["detector"], a["event_ids"]) for a in alerts] == [("new_resource", ["probe"])]
