"""A backlog reaches detection in event-time order across input partitions (streams.align)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest

from schemas.codec import decode_detect
from streams.partitioning import murmur2_partition
from streams.reading import pipeline_lag
from tests.conftest import Stack, wait_until
from tests.traffic import BASE_MS

pytestmark = pytest.mark.kafka

PARTITIONS = 4
# Numbered replicas of one peer group ("batch"): one detect partition, fed from every input
# partition, so the order it sees them in is the order the worker read the input.
REPLICAS = [f"batch-{i:02d}" for i in range(1, 9)]
SPAN_MS = 3_600_000
EVERY_MS = 4_000


def backlog() -> list[dict[str, Any]]:
    events = [
        {
            "event_id": f"{m}-{t}",
            "timestamp": t,
            "machine_id": m,
            "resource": "postgres://warehouse/public.jobs",
            "operation": "SELECT",
            "outcome": "SUCCESS",
        }
        for i, m in enumerate(REPLICAS)
        for t in range(BASE_MS + i * 311, BASE_MS + SPAN_MS, EVERY_MS)
    ]
    return sorted(events, key=lambda e: e["timestamp"])


def detected(s: Stack) -> tuple[int, Counter[str]]:
    """The most any detect record's event time lags behind the latest before it in its
    partition (0 is event-time order; a backlog read partition after partition is ~SPAN_MS),
    and how many times each event reached detection."""
    latest: dict[int, int] = defaultdict(int)
    worst = 0
    times: Counter[str] = Counter()
    for m in s.read("detect", isolation="read_uncommitted"):
        _, event = decode_detect(m.value())
        p = m.partition()
        worst = max(worst, latest[p] - event.timestamp_ms)
        latest[p] = max(latest[p], event.timestamp_ms)
        times[event.event_id] += 1
    return worst, times


@pytest.mark.parametrize(
    ("skew_s", "buffer_records"),
    # 16: a held partition's buffer fills after 16 records, so it is also paused in
    # librdkafka and sought back, again and again.
    [(0, 8192), (30, 8192), (30, 16)],
)
def test_a_backlog_reaches_detection_in_event_time_order(
    stack: Any, skew_s: int, buffer_records: int
) -> None:
    s: Stack = stack(
        topics__partitions=PARTITIONS,
        kafka__max_input_skew_s=skew_s,
        kafka__input_buffer_records=buffer_records,
        http__enabled=False,
        monitoring__input_quiet_s=0,
        # Small fetches: a partition's records arrive in many fetches, as on a long backlog.
        kafka__librdkafka={"max.partition.fetch.bytes": 16384},
    )
    s.create_topics()
    events = backlog()
    assert len({murmur2_partition(m.encode(), PARTITIONS) for m in REPLICAS}) > 1
    s.send(events)
    # The whole backlog is on the broker before the worker reads any of it.
    s.start_worker()
    wait_until(lambda: pipeline_lag(s.cfg) == 0, timeout=240, what="the backlog processed")
    archived = {m.key().decode() for m in s.read("archive")}
    assert archived == {e["event_id"] for e in events}
    late, times = detected(s)
    # One uninterrupted worker: what was held back was handed over once, none skipped.
    assert set(times) == archived
    assert max(times.values()) == 1
    print(
        f"\nmax_input_skew_s={skew_s}, input_buffer_records={buffer_records}: "
        f"{len(events)} events, worst lateness {late / 1000:.0f} s"
    )
    if skew_s:
        # The bound, plus what one pass over the partitions between two checks can add.
        assert late <= 2 * skew_s * 1000
    else:
        # Unaligned, the worker reads partitions in long chunks: the test can tell the two.
        assert late > 10 * 60_000
