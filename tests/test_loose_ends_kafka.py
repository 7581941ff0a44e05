"""Issue 18's loose ends on the plaintext broker: the tools that read the alerts, dead-letter
and archive topics skip a damaged or foreign record, count it and say so, instead of stopping
on it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from streams.cli.main import main
from tests.conftest import Stack
from tests.test_alerts_truth import alert_state


def _produce(s: Stack, topic: str, values: list[bytes]) -> None:
    producer = Producer(s.cfg.kafka.client_config())
    failed: list[Any] = []
    for i, v in enumerate(values):
        # Keyed: the alerts and archive topics are compacted, and refuse records without one.
        producer.produce(
            topic,
            key=b"k%d" % i,
            value=v,
            partition=0,
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
    assert producer.flush(30) == 0 and not failed, failed


@pytest.mark.kafka
def test_alerts_skips_records_that_are_not_alert_states_and_counts_them(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    s: Stack = stack()
    s.create_topics()
    good = [alert_state(i, f"2026-01-01T0{i}:00:00Z") for i in (1, 2)]
    broken = {**alert_state(3, "2026-01-01T03:00:00Z"), "event_time": "yesterday"}
    _produce(
        s,
        s.cfg.topics.alerts,
        [
            orjson.dumps(good[0]),
            b"[1, 2]",
            b"\xff not json",
            orjson.dumps({"alert_id": "a-x", "status": "opened", "severity": "high"}),
            orjson.dumps(broken),
            orjson.dumps(good[1]),
        ],
    )
    for extra in ([], ["--json"]):
        capsys.readouterr()
        assert main(["alerts", "--config", str(s.config_path), *extra]) == 0
        out, err = capsys.readouterr()
        assert all(a["alert_id"] in out for a in good), out
        assert "skipping" in err and "[0]@1" in err and "not an alert state" in err, err
        assert "skipped 4 record(s)" in err, err
