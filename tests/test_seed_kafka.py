"""`auditwatch seed` on the real broker: history teaches the baselines, raises no alerts."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.codec import encode_event_avro
from streams.cli.main import main
from streams.tools.producer import to_avro_record
from streams.tools.reading import pipeline_lag
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


def _archive(s: Stack, archived: list[tuple[int, dict[str, Any]]], partitions: int) -> list[int]:
    """Archive (processing time, event) pairs as the processor would, in processing-time order,
    with the Kafka timestamp = processing time; the i-th goes to partition i % partitions.
    Returns the Kafka timestamps."""
    from schemas.codec import encode_archive, sha256
    from schemas.event import Limits, event_from_mapping
    from streams.tools.producer import make_producer

    producer = make_producer(s.cfg)
    stamps = []
    for i, (stamp, e) in enumerate(sorted(archived, key=lambda a: a[0])):
        ev = event_from_mapping(e, Limits(), now_ms=2**62)
        producer.produce(
            s.cfg.topics.archive,
            key=ev.event_id.encode(),
            partition=i % partitions,
            timestamp=stamp,
            value=encode_archive(
                ev,
                original_format="JSON",
                original_sha256=sha256(b""),
                topic="x",
                partition=0,
                offset=0,
                archived_at_ms=stamp,
            ),
        )
        stamps.append(stamp)
    assert producer.flush(30) == 0
    return stamps


def test_archive_range_seeks_by_time_and_reads_only_its_window(stack: Any) -> None:
    from streams.tools.seed import SeedStats, archive_slack_ms, events_from_archive

    s: Stack = stack(topics__partitions=3)
    s.create_topics()
    hour = 3_600_000
    # 24 hours of history, one event a minute, archived 2 s after it happened; some events
    # re-sent and archived again 10 minutes later (the uncompacted active segment keeps both).
    history = steady(MACHINE, TABLES, BASE_MS, 24 * 3600, every_ms=60_000)
    resent = history[600:660] + history[100:110]
    stamps = _archive(
        s,
        [(e["timestamp"] + 2000, e) for e in history]
        + [(e["timestamp"] + 600_000, e) for e in resent],
        partitions=3,
    )

    since, until = BASE_MS + 10 * hour, BASE_MS + 12 * hour
    slack = archive_slack_ms(s.cfg)
    assert slack == 2 * hour  # max_future_s (1 h) + the skew allowance (1 h)
    stats = SeedStats()
    events = events_from_archive(s.cfg, since, until, stats, progress=None)

    want = sorted(e["event_id"] for e in history if since <= e["timestamp"] < until)
    assert sorted(e.event_id for e in events) == want
    assert stats.in_range == len(want) + 60  # the re-sent copies were read, then deduped
    # Exactly the records archived in [since - slack, until + slack] are read (the first one
    # past it, that ends its partition, counts as not read); nothing before it is fetched.
    window = [t for t in stamps if since - slack <= t <= until + slack]
    assert stats.read == len(window)
    assert stats.read + stats.not_read == len(stamps)
    before = sum(1 for t in stamps if t < since - slack)
    assert before > 400
    assert stats.not_read == before + sum(1 for t in stamps if t > until + slack)


def test_archive_range_slack_and_open_ends(stack: Any) -> None:
    from streams.tools.seed import SeedStats, events_from_archive

    s: Stack = stack(topics__partitions=2)
    s.create_topics()
    hour = 3_600_000
    history = steady(MACHINE, TABLES, BASE_MS, 6 * 3600, every_ms=60_000)
    # A backfill: everything archived a day after it happened.
    _archive(s, [(e["timestamp"] + 24 * hour, e) for e in history], partitions=2)
    since, until = BASE_MS + 2 * hour, BASE_MS + 3 * hour
    want = sorted(e["event_id"] for e in history if since <= e["timestamp"] < until)

    stats = SeedStats()
    # Archived later than the slack after the range: left out, and said so in the counts.
    assert events_from_archive(s.cfg, since, until, stats, progress=None) == []
    assert stats.read == 0 and stats.not_read == len(history)
    stats = SeedStats()
    late = events_from_archive(s.cfg, since, until, stats, slack_ms=25 * hour, progress=None)
    assert sorted(e.event_id for e in late) == want
    stats = SeedStats()
    everything = events_from_archive(s.cfg, None, None, stats, progress=None)
    assert len(everything) == stats.read == len(history) and stats.not_read == 0
    with pytest.raises(ValueError, match="slack must be 0 or more"):
        events_from_archive(s.cfg, since, until, SeedStats(), slack_ms=-1, progress=None)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_archive_progress_on_a_terminal_only(stack: Any) -> None:
    from streams.tools.seed import SeedStats, events_from_archive

    s: Stack = stack(topics__partitions=1)
    s.create_topics()
    history = steady(MACHINE, TABLES, BASE_MS, 3600, every_ms=60_000)
    _archive(s, [(e["timestamp"] + 1000, e) for e in history], partitions=1)
    tty, pipe = _Terminal(), io.StringIO()
    events_from_archive(s.cfg, None, None, SeedStats(), progress=tty)
    events_from_archive(s.cfg, None, None, SeedStats(), progress=pipe)
    assert "reading the archive" in tty.getvalue() and "100%" in tty.getvalue()
    assert pipe.getvalue() == ""
