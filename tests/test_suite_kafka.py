"""Kafka (8 partitions, two stages) and replay page the same episodes of a synthetic suite.

Peer groups, the per-source silence clock and storm control all depend on how events are
keyed and ordered; this checks that they give the same answer through the broker as in
event-time order in one process.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.evaluate import alert_time_ms, in_window, is_page
from streams.tools.reading import pipeline_lag
from streams.tools.replay import replay
from streams.tools.synthetic import SyntheticConfig, SyntheticTraffic
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.kafka

SUITE = SyntheticConfig(
    seed=5,
    start_ms=1_767_571_200_000,
    duration_s=30 * 3600,
    machines=30,
    rate_scale=0.3,
    warmup_s=24 * 3600,
    anomalies={
        "fan_out": 1,
        "rate_burst": 1,
        "failure_spike": 1,
        "silence": 1,
        "operation_shift": 1,
    },
    benign={"pod_rotation": 1},
)


def detected(traffic: SyntheticTraffic, alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    pages = [a for a in alerts if is_page(a)]
    return {
        (e.kind, e.machine_id)
        for e in traffic.episodes
        if e.malicious
        and any(p["machine_id"] == e.machine_id and in_window(alert_time_ms(p), e) for p in pages)
    }


def test_kafka_and_replay_page_the_same_episodes(stack: Any, tmp_path: Path) -> None:
    traffic = SyntheticTraffic(SUITE)
    events = list(traffic)
    path = tmp_path / "suite.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    s: Stack = stack(topics__partitions=8)

    out = io.BytesIO()
    replay(s.cfg, [str(path)], out)
    replay_detected = detected(traffic, [orjson.loads(x) for x in out.getvalue().splitlines()])
    assert len(replay_detected) >= 4, replay_detected  # the suite means something

    s.create_topics()
    s.start_worker()
    s.send(events)
    wait_until(
        lambda: pipeline_lag(s.cfg) == 0,
        timeout=240,
        interval=1.0,
        what="the processor to commit the suite",
    )
    kafka_alerts = [orjson.loads(m.value()) for m in s.read("alerts")]
    assert detected(traffic, kafka_alerts) == replay_detected
