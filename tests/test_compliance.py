"""The compliance check without Kafka: topic-config rules, the ledger's counting in a task
(replays after a restore not counted twice), reconciliation arithmetic, producer gaps and
completeness, and the report renderings."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from schemas.codec import BundledSchemas
from streams.ops.compliance import (
    Finding,
    Report,
    parse_since,
    producer_stats,
    reconcile,
    render_markdown,
    render_text,
    topic_findings,
)
from streams.ops.config import Config
from streams.processor import Processor
from streams.runtime.ledger import LEDGER, Counts
from streams.runtime.peers import PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import PartitionState
from streams.runtime.task import Task

DEFAULT = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}


# -- topic configs ---------------------------------------------------------------------------


def test_the_default_archive_passes_and_says_replication_is_not_applicable_on_one_broker() -> None:
    found, notes = topic_findings("archive", DEFAULT, 1, 1, -1)
    assert found == []
    assert notes == ["replication and min.insync.replicas: not applicable (1 broker)"]


def test_retention_on_the_archive_is_a_finding_unless_it_is_the_configured_one() -> None:
    configs = {**DEFAULT, "retention.ms": "604800000"}
    (found,), _ = topic_findings("archive", configs, 1, 1, -1)
    assert found.startswith("retention.ms=604800000, expected -1")
    assert topic_findings("archive", configs, 1, 1, 604800000)[0] == []


def test_deletion_policies_and_size_retention_are_findings() -> None:
    found, _ = topic_findings(
        "archive",
        {**DEFAULT, "cleanup.policy": "compact,delete", "retention.bytes": "1000"},
        1,
        1,
        -1,
    )
    assert any("cleanup.policy=compact,delete" in f for f in found)
    assert any("retention.bytes=1000" in f for f in found)
    dl = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}
    (found_dl,), _ = topic_findings("deadletter", dl, 1, 1, -1)
    assert "compaction keeps one dead letter per key" in found_dl


def test_replication_is_checked_from_three_brokers() -> None:
    found, notes = topic_findings("archive", {**DEFAULT, "min.insync.replicas": "1"}, 1, 3, -1)
    assert notes == []
    assert any("replication factor 1 on a 3-broker cluster" in f for f in found)
    assert any("min.insync.replicas=1" in f for f in found)
    ok = {**DEFAULT, "min.insync.replicas": "2"}
    assert topic_findings("archive", ok, 3, 3, -1) == ([], [])


def test_since_takes_durations_and_times() -> None:
    now = 1_767_225_600_000
    assert parse_since("24h", now) == now - 86_400_000
    assert parse_since("90m", now) == now - 5_400_000
    assert parse_since("2026-01-01T00:00:00Z", now) == now
    with pytest.raises(ValueError):
        parse_since("yesterday", now)


# -- the ledger in a task --------------------------------------------------------------------


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes, key: bytes) -> None:
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return self._k

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, int(time.time() * 1000)


def _task(state: PartitionState, emitted: list[str]) -> Task:
    cfg = Config()
    return Task(
        0,
        state,
        PeerTable("w"),
        Processor(cfg, BundledSchemas()),
        Router("murmur2", 1),
        cfg.topics.detect,
        lambda role, *_: emitted.append(role),
        None,
    )


def _value(i: int, resource: str = "db", ts_ms: int | None = None) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{i}",
            "timestamp": int(time.time() * 1000) - 1000 if ts_ms is None else ts_ms,
            "machine_id": "m1",
            "resource": resource,
            "operation": "read",
            "outcome": "SUCCESS",
        }
    )


def _stream() -> list[Msg]:
    topic = Config().topics.events
    # One time for every event: a duplicate is the same bytes again, and two clock reads can
    # straddle a millisecond (then the "duplicate" conflicts with its first copy instead).
    now = int(time.time() * 1000) - 1000
    values = [_value(i, r, now) for i, r in ((0, "db"), (1, "db"), (0, "db"), (1, "other"))]
    values.append(b"\x07 not an event")
    return [Msg(topic, 0, off, v, b"m1") for off, v in enumerate(values)]


def test_a_task_counts_each_record_by_its_outcome() -> None:
    emitted: list[str] = []
    task = _task(PartitionState(0), emitted)
    for msg in _stream():
        task.process(msg)
    c = task.ledger.input
    assert (c.first, c.next, c.read) == (0, 5, 5)
    assert (c.archived, c.duplicates, c.deadlettered, c.forwarded) == (2, 1, 2, 0)
    assert c.unaccounted() == 0
    assert emitted == ["archive", "archive", "deadletter", "deadletter"]


def test_records_replayed_after_a_restore_are_not_counted_again() -> None:
    # At-least-once: the changelog (with the counts) reached the broker, the offset commit
    # did not; the restarted task reads the same records again from the committed offset.
    first = PartitionState(0)
    task = _task(first, [])
    for msg in _stream():
        task.process(msg)
    changed = task.ledger.changed(first, 0, {"input": "in", "repartition": "re"}, {})
    assert [k for k, _ in changed] == [b"in:0"]
    records = list(first.drain())
    # The counts are the commit's last changelog record: a changelog cut short never holds
    # counts without the event ids they counted.
    assert records[-1][0] == LEDGER + b"\x00input"
    restored = PartitionState(0)
    for key, value in records:
        restored.apply(key, value)
    again = _task(restored, [])
    for msg in _stream()[2:]:
        again.process(msg)
    c = again.ledger.input
    assert (c.read, c.archived, c.duplicates, c.deadlettered) == (5, 2, 1, 2)
    assert again.ledger.changed(restored, 0, {"input": "in", "repartition": "re"}, {}) == []


def test_offsets_passed_over_are_counted_as_skipped() -> None:
    c = Counts("input")
    assert c.take(10) and c.take(11) and c.take(15)
    assert not c.take(12)
    assert (c.first, c.next, c.read, c.skipped) == (10, 16, 3, 3)


# -- reconciliation --------------------------------------------------------------------------


def _ledger(cfg: Config) -> dict[tuple[str, int], dict[str, Any]]:
    ev, det = cfg.topics.events, cfg.topics.detect
    return {
        (ev, 0): {
            "topic": ev,
            "partition": 0,
            "first_offset": 0,
            "next_offset": 10,
            "read": 10,
            "archived": 5,
            "deadlettered": 2,
            "duplicates": 1,
            "forwarded": 2,
        },
        (ev, 1): {
            "topic": ev,
            "partition": 1,
            "first_offset": 0,
            "next_offset": 4,
            "read": 4,
            "archived": 4,
        },
        (det, 1): {
            "topic": det,
            "partition": 1,
            "first_offset": 0,
            "next_offset": 2,
            "read": 2,
            "archived": 1,
            "deadlettered": 1,
            "by_origin": {"0": {"archived": 1, "deadlettered": 1, "duplicates": 0}},
        },
    }


def _archive(counts: dict[int, int]) -> dict[int, dict[int, int]]:
    return {p: {off: 1 for off in range(n)} for p, n in counts.items()}


def test_reconciliation_of_exact_counts_has_no_findings() -> None:
    cfg = Config()
    dls = {0: {7, 8, 9}}
    rec, found, warned = reconcile(
        cfg, _ledger(cfg), _archive({0: 6, 1: 4}), dls, {}, {0: 10, 1: 4}
    )
    assert found == [] and warned == []
    row = rec["input"][0]
    assert (row["archived_total"], row["deadlettered_total"], row["forwarded_processed"]) == (
        6,
        3,
        2,
    )


def test_missing_archive_records_unaccounted_reads_and_lost_forwards_are_findings() -> None:
    cfg = Config()
    ledger = _ledger(cfg)
    ledger[(cfg.topics.events, 1)]["read"] = 5  # one record read and gone nowhere
    ledger[(cfg.topics.events, 0)]["forwarded"] = 3  # one forward never processed
    _, found, _ = reconcile(cfg, ledger, _archive({0: 5, 1: 4}), {0: {7, 8, 9}}, {}, {0: 10})
    messages = [f"{f.subject}: {f.message}" for f in found]
    assert any("[1]: 1 records read and neither" in m for m in messages)
    assert any("[0]: 1 forwarded events neither processed" in m for m in messages)
    assert any(
        "[0]: the archive holds 5 events from offsets 0-9" in m and "1 missing" in m
        for m in messages
    )
    # A forward still waiting in the repartition topic is not lost.
    _, found, _ = reconcile(cfg, ledger, _archive({0: 6, 1: 4}), {0: {7, 8, 9}}, {0: 1}, {})
    assert not any("forwarded events neither" in f.message for f in found)


def test_partitions_with_records_and_no_ledger_are_a_finding() -> None:
    cfg = Config()
    _, found, _ = reconcile(cfg, {}, {}, {}, {}, {0: 3, 1: 0})
    assert [f.message.split(" have")[0] for f in found] == ["partitions 0"]


# -- producers -------------------------------------------------------------------------------


def _rec(machine: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event": {"machine_id": machine, "timestamp": ts, "attributes": {}, **fields}}


def test_completeness_per_producer_and_gaps_over_the_usual_cadence() -> None:
    minute = 60_000
    steady = [_rec("a", i * minute, source="k8s") for i in range(100)]
    # Every minute, then nothing for 3 hours, then every minute again.
    gap = [_rec("b", i * minute, source_ip="10.0.0.1" if i % 4 else None) for i in range(50)]
    gap += [_rec("b", (230 + i) * minute) for i in range(50)]
    completeness, gaps = producer_stats(iter(steady + gap), gap_factor=10, min_gap_s=3600)
    assert completeness["producers"] == 2 and completeness["events"] == 200
    assert completeness["per_producer"]["a"]["fields"]["source"] == 1.0
    assert completeness["per_producer"]["b"]["fields"]["source_ip"] == round(37 / 100, 4)
    assert completeness["overall"]["source"] == 0.5
    (g,) = gaps
    assert g["machine_id"] == "b" and g["largest_gap_s"] == 181 * 60
    assert g["usual_interval_s"] == 60


# -- rendering -------------------------------------------------------------------------------


def _report(findings: list[Finding], warnings: list[Finding]) -> Report:
    cfg = Config()
    rec, _, _ = reconcile(cfg, _ledger(cfg), _archive({0: 6, 1: 4}), {0: {7, 8, 9}}, {}, {})
    completeness, gaps = producer_stats(iter([_rec("pay|ments", 0, source="x")]), 10, 3600)
    return Report(
        bootstrap="b:9092",
        checked_at_ms=1_767_225_600_000,
        since_ms=1_767_139_200_000,
        brokers=1,
        guarantee="exactly-once",
        topics=[
            {
                "role": "archive",
                "topic": "audit.archive",
                "exists": True,
                "replication": 1,
                "configs": DEFAULT,
                "findings": [],
                "notes": ["not applicable (1 broker)"],
            }
        ],
        producers={**completeness, "gaps": gaps, "gap_factor": 10.0, "min_gap_s": 3600.0},
        deadletters={
            "total": 3,
            "archived": 10,
            "rate": 3 / 13,
            "max_rate": 0.01,
            "by_reason": {"json_decode_error": {"count": 3, "rate": 3 / 13}},
        },
        reconciliation=rec,
        findings=findings,
        warnings=warnings,
    )


def test_a_passing_report_renders_its_sections() -> None:
    report = _report([], [Finding("deadletters", "audit.deadletter", "rate 23.08% over 1.00%")])
    text = render_text(report)
    assert "PASS: no findings, 1 warnings" in text
    assert "audit.events[0] offsets 0-9: read 10 = 5 + 2 + 1 + 2; in archive 6 of 6" in text
    md = render_markdown(report)
    assert "**PASS: no findings, 1 warnings**" in md
    assert "| 0 | 0-9 | 10 | 5 | 2 | 1 | 2 | 0 | 6 | 6 | 3 | 3 | 0 | 0 |" in md
    assert "| json_decode_error | 3 | 23.08% |" in md
    assert "`pay\\|ments`" not in md  # fully set fields: not listed as partial
    assert report.to_json()["passed"] is True
    # --strict: the warning fails it.
    assert report.passed(strict=True) is False
    assert "FAIL: 1 finding" in render_text(report, strict=True)


def test_a_failing_report_names_its_findings() -> None:
    f = Finding("topics", "audit.archive", "retention.ms=604800000, expected -1")
    report = _report([f], [])
    assert "FAIL: 1 finding" in render_text(report)
    assert "finding  [topics] audit.archive: retention.ms=604800000, expected -1" in render_text(
        report
    )
    md = render_markdown(report)
    assert "- **finding** (topics) `audit.archive`: retention.ms=604800000, expected -1" in md
    data = report.to_json()
    assert data["passed"] is False and data["findings"][0]["subject"] == "audit.archive"
