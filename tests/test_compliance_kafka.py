"""`auditwatch compliance check` against the real broker and a running pipeline.

Known numbers of good events, exact re-sends, conflicting re-sends, undecodable messages and
events written to another partition than their machine's (forwarded once through the
repartition topic) go through the workers; the check's reconciliation must give back exactly
those numbers, per input partition, also after a worker was SIGKILLed mid-stream. A retention
set on the archive by hand fails the check, naming the setting.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streams.cli.main import main
from streams.ops.compliance import read_ledger
from streams.runtime.routing import Router
from streams.tools.producer import make_producer
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def _event(i: int, machine: str, now_ms: int, resource: str = "db/orders") -> dict[str, Any]:
    return {
        "event_id": f"ev-{i}",
        "timestamp": now_ms - 600_000 + i * 100,
        "machine_id": machine,
        "resource": resource,
        "operation": "read",
        "outcome": "SUCCESS",
        "source_ip": "10.0.0.7" if i % 2 else None,
        "source": "agent",
    }


class Traffic:
    """What was sent, per input partition, and what each record should become."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes, bytes]] = []  # (partition, key, value)
        self.expected: dict[int, dict[str, int]] = {
            p: {"read": 0, "archived": 0, "deadlettered": 0, "duplicates": 0, "forwarded": 0}
            for p in range(PARTITIONS)
        }

    def add(self, p: int, key: str, value: bytes, outcome: str, forwarded: bool = False) -> None:
        self.records.append((p, key.encode(), value))
        row = self.expected[p]
        row["read"] += 1
        row[outcome] += 1
        if forwarded:
            row["forwarded"] += 1

    def send(self, s: Stack, records: list[tuple[int, bytes, bytes]] | None = None) -> None:
        producer = make_producer(s.cfg)
        for p, key, value in records if records is not None else self.records:
            producer.produce(s.cfg.topics.events, value=value, key=key, partition=p)
        assert producer.flush(30) == 0


def known_traffic(start: int = 0, n_good: int = 40) -> Traffic:
    """Per partition: good events of its own machines, exact re-sends, conflicting re-sends,
    undecodable messages, and events of the other partition's machine (forwarded)."""
    router = Router("murmur2", PARTITIONS)
    machines: dict[int, str] = {}
    i = 0
    while len(machines) < PARTITIONS:
        m = f"payments-api-{i}"
        machines.setdefault(router.partition(m), m)
        i += 1
    now = int(time.time() * 1000)
    t = Traffic()
    n = start
    for p in range(PARTITIONS):
        own, other = machines[p], machines[1 - p]
        sent = []
        for _ in range(n_good):
            value = orjson.dumps(_event(n, own, now))
            t.add(p, own, value, "archived")
            sent.append(value)
            n += 1
        for value in sent[:5]:  # exact re-sends: recognised duplicates
            t.add(p, own, value, "duplicates")
        for j in range(3):  # same id, other content: dead letters
            conflicting = orjson.loads(sent[j])
            conflicting["resource"] = "db/other"
            t.add(p, own, orjson.dumps(conflicting), "deadlettered")
        for j in range(4):  # not events at all
            t.add(p, own, b"\x07 garbage " + str(j).encode(), "deadlettered")
        for _ in range(6):  # another partition's machine: forwarded, archived there
            t.add(p, other, orjson.dumps(_event(n, other, now)), "archived", forwarded=True)
            n += 1
    return t


def settled(s: Stack, t: Traffic) -> bool:
    """Every record sent is counted by the ledger, forwarded ones by their machine's task."""
    ledger = read_ledger(s.cfg)
    read = sum(r["read"] for (topic, _), r in ledger.items() if topic == s.cfg.topics.events)
    forwarded = sum(
        r["forwarded"] for (topic, _), r in ledger.items() if topic == s.cfg.topics.events
    )
    done = sum(r["read"] for (topic, _), r in ledger.items() if topic == s.cfg.topics.detect)
    return read == len(t.records) and done == forwarded


def run_check(s: Stack, tmp_path: Path, capsys: Any, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    md = tmp_path / "report.md"
    rc = main(
        [
            "compliance",
            "check",
            "--config",
            str(s.config_path),
            "--json",
            str(out),
            "--markdown",
            str(md),
            "--quiet",
            *extra,
        ]
    )
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    report["_stdout"] = text
    report["_markdown"] = md.read_text()
    return rc, report


def assert_reconciles(report: dict[str, Any], t: Traffic) -> None:
    rows = {r["partition"]: r for r in report["reconciliation"]["input"]}
    assert sorted(rows) == list(range(PARTITIONS))
    for p, want in t.expected.items():
        r = rows[p]
        got = {
            "read": r["read"],
            "archived": r["archived_total"],
            "deadlettered": r["deadlettered_total"],
            "duplicates": r["duplicates_total"],
            "forwarded": r["forwarded"],
        }
        assert got == want, f"partition {p}"
        assert r["unaccounted"] == 0
        assert r["in_archive"] == want["archived"]
        assert r["in_deadletter"] == want["deadlettered"]
        assert r["forwarded_processed"] == want["forwarded"]
        assert r["forwarded_waiting"] == 0
        assert r["skipped_offsets"] == 0
    for r in report["reconciliation"]["repartition"]:
        assert r["unaccounted"] == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_default_deployment_passes_and_reconciles_known_counts(
    stack: Any, tmp_path: Path, capsys: Any, guarantee: str
) -> None:
    s: Stack = stack(topics__partitions=PARTITIONS, kafka__processing_guarantee=guarantee)
    s.create_topics()
    t = known_traffic()
    t.send(s)
    s.start_worker()
    wait_until(lambda: settled(s, t), timeout=120, what="the ledger to count every record")
    rc, report = run_check(s, tmp_path, capsys)
    assert rc == 0, report["_stdout"]
    assert report["passed"] and report["findings"] == []
    assert_reconciles(report, t)
    # Undecodable messages and conflicting re-sends are the dead letters of the window.
    reasons = report["deadletters"]["by_reason"]
    assert reasons["conflicting_duplicate"]["count"] == 3 * PARTITIONS
    assert sum(v["count"] for v in reasons.values()) == 7 * PARTITIONS
    assert report["producers"]["producers"] == PARTITIONS
    assert report["producers"]["overall"]["source"] == 1.0
    assert 0.4 < report["producers"]["overall"]["source_ip"] < 0.6
    assert "PASS" in report["_stdout"] and "not applicable (1 broker)" in report["_stdout"]
    assert "| 0 |" in report["_markdown"] and "## Reconciliation" in report["_markdown"]


@pytest.mark.timeout(120)
def test_retention_set_on_the_archive_fails_naming_it(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack(topics__partitions=PARTITIONS)
    s.create_topics()
    rc, report = run_check(s, tmp_path, capsys)
    assert rc == 0, report["_stdout"]
    admin = AdminClient(s.cfg.kafka.client_config())
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        s.cfg.topics.archive,
        incremental_configs=[
            ConfigEntry("retention.ms", "604800000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([res])[res].result(30)

    def altered() -> bool:
        return "retention.ms=604800000" in run_check(s, tmp_path, capsys)[1]["_stdout"]

    wait_until(altered, timeout=30, what="the broker to report the new retention")
    rc, report = run_check(s, tmp_path, capsys)
    assert rc == 1
    (finding,) = report["findings"]
    assert finding["area"] == "topics" and finding["subject"] == s.cfg.topics.archive
    assert "retention.ms=604800000, expected -1" in finding["message"]
    assert "FAIL: 1 finding" in report["_stdout"]
    assert f"{s.cfg.topics.archive}: retention.ms=604800000" in report["_stdout"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_reconciles_after_a_worker_is_sigkilled_mid_stream(
    stack: Any, tmp_path: Path, capsys: Any, guarantee: str
) -> None:
    s: Stack = stack(
        topics__partitions=PARTITIONS,
        kafka__processing_guarantee=guarantee,
        # Small batches so the kill lands between commits with work in flight.
        kafka__batch_max_records=20,
        kafka__commit_interval_s=0.5,
    )
    s.create_topics()
    t = known_traffic(n_good=400)
    half = len(t.records) // 2
    t.send(s, t.records[:half])
    worker = s.start_worker()

    def counting() -> bool:
        ledger = read_ledger(s.cfg)
        return sum(r["read"] for r in ledger.values()) > 0

    wait_until(counting, timeout=60, what="the first ledger records")
    t.send(s, t.records[half:])
    worker.kill()
    worker.wait(30)
    s.start_worker()
    wait_until(lambda: settled(s, t), timeout=180, what="the ledger to count every record")
    rc, report = run_check(s, tmp_path, capsys)
    assert rc == 0, report["_stdout"]
    assert_reconciles(report, t)
