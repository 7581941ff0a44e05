"""`auditwatch report` against the real broker: a worker archives two days of known traffic
(known failures, a fan-out and a rate burst injected on the second day), on-call acknowledges
one page, and the daily and weekly digests must count exactly what was sent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.alert import PAGE_RANK, SEVERITY_RANK
from streams.cli.main import main
from streams.ops.control import apply_action
from streams.tools.reading import pipeline_lag
from tests.conftest import ROOT, Stack, wait_until
from tests.traffic import BASE_MS, burst, fan_out, steady

DAY_MS = 86_400_000
DAY1, DAY2 = BASE_MS, BASE_MS + DAY_MS  # 2026-01-01 and 2026-01-02 (a Thursday and a Friday)
A = "billing-api-6f7c9d8b4-q2w7x"
A2 = "billing-api-6f7c9d8b4-zz9kq"  # a replica that first appears on day 2
B = "ingest-worker-07"
A_RES = ["postgres://billing-db/public.invoices", "redis://cache/session"]
B_RES = ["s3://raw-events/2026/01/part-0001.json", "kafka://topic/ingest"]
B_OLD = "kafka://topic/audit"  # used two days before day 1 and again on day 2: not new


def _outcomes(events: list[dict[str, Any]], failure_every: int, denied_at: int | None) -> None:
    for i, e in enumerate(events):
        if i % failure_every == 0:
            e["outcome"] = "FAILURE"
        elif denied_at is not None and i % 30 == denied_at:
            e["outcome"] = "DENIED"


def two_days() -> list[dict[str, Any]]:
    """Day 1: A and B once a minute, A failing 1 in 30. Day 2: the same, A failing 1 in 15 and
    denied 1 in 30, a new replica A2 for six hours, B using an older resource again, a fan-out
    on B at 10:00 (resolved by the end of the day) and a rate burst on A at 23:50 (still open
    when the traffic ends)."""
    events = steady(B, [B_OLD], DAY1 - 2 * DAY_MS, 600, 60_000, prefix="d0-")
    a1 = steady(A, A_RES, DAY1, 86_400, 60_000, prefix="d1-")
    _outcomes(a1, 30, None)
    events += a1 + steady(B, B_RES, DAY1, 86_400, 60_000, prefix="d1-")
    a2 = steady(A, A_RES, DAY2, 86_400, 60_000, prefix="d2-")
    _outcomes(a2, 15, 7)
    events += a2 + steady(B, [*B_RES, B_OLD], DAY2, 86_400, 60_000, prefix="d2-")
    events += steady(A2, A_RES, DAY2 + 12 * 3_600_000, 6 * 3600, 120_000, prefix="d2-")
    events += fan_out(B, DAY2 + 10 * 3_600_000)
    events += burst(A, A_RES[0], DAY2 + 23 * 3_600_000 + 50 * 60_000)
    events.sort(key=lambda e: e["timestamp"])
    return events


def _pages_of_day2(alerts: list[tuple[int, dict[str, Any]]]) -> dict[str, set[str]]:
    """Alert ids that paged on day 2, by machine: read straight off the alerts topic."""
    out: dict[str, set[str]] = {}
    for _, a in alerts:
        page = a["status"] in ("opened", "escalated") and SEVERITY_RANK[a["severity"]] >= PAGE_RANK
        at = a["event_time"]
        if page and at.startswith("2026-01-02"):
            out.setdefault(a["machine_id"], set()).add(a["alert_id"])
    return out


def _report(s: Stack, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "report", "-c", str(s.config_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_daily_and_weekly_digest_count_what_was_sent(
    stack: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.time()
    s: Stack = stack()
    s.create_topics()
    events = two_days()
    s.start_worker()
    s.send(events)
    wait_until(lambda: pipeline_lag(s.cfg) == 0, timeout=120, what="every event committed")
    alerts = [(m.timestamp()[1], orjson.loads(m.value())) for m in s.read("alerts")]
    paged = _pages_of_day2(alerts)
    fan_out_page = next(
        a for _, a in alerts if a["machine_id"] == B and a["detector"] == "new_resource"
    )
    burst_page = next(
        a for _, a in alerts if a["machine_id"] == A and a["detector"] == "access_rate"
    )
    apply_action(s.cfg, fan_out_page["alert_id"], "ack", "alice")
    # The active segment of the archive is never compacted: a record written twice (a worker
    # re-processing after a crash) is read twice, and must count once.
    archived = s.read("archive")
    producer = Producer(s.cfg.kafka.client_config())
    for m in archived[-5:]:
        producer.produce(s.cfg.topics.archive, key=m.key(), value=m.value())
    assert producer.flush(30) == 0

    out = tmp_path / "digests"
    done = _report(s, out, "--period", "day", "--end", "2026-01-03T00:05:00Z", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "digest-2026-01-02.html",
        "digest-2026-01-02.json",
    ]
    doc = orjson.loads((out / "digest-2026-01-02.json").read_bytes())
    assert doc["period"] == {
        "kind": "day",
        "label": "2026-01-02",
        "start": "2026-01-02T00:00:00.000Z",
        "end": "2026-01-03T00:00:00.000Z",
    }
    assert doc["source"]["duplicates_dropped"] == 5
    # Progress on stderr (a line every 10 s off a terminal; this read takes under that).
    assert f"read {len(events) + 5:,} records of {s.cfg.topics.archive}" in done.stderr
    assert done.stdout.startswith("digest 2026-01-02: 3,472 events from 3 machines")

    machines = {m["machine_id"]: m for m in doc["machines"]}
    groups = {g["group"]: g for g in doc["groups"]}
    a, a2, b = machines[A], machines[A2], machines[B]
    assert (a["events"], a["failures"], a["denied"]) == (1840, 144, 48)
    assert a["failure_ratio"] == round(144 / 1840, 4)
    assert (a["previous_events"], a["previous_failure_ratio"]) == (1440, round(48 / 1440, 4))
    assert a["failure_ratio_change"] == round(round(144 / 1840, 4) - round(48 / 1440, 4), 4)
    assert (a["resources"], a["new_resources"], a["new_machine"]) == (2, 0, False)
    assert (a2["events"], a2["new_machine"], a2["new_resources"], a2["group"]) == (
        180,
        True,
        2,
        "billing-api",
    )
    assert (b["events"], b["failures"], b["failure_ratio"]) == (1452, 0, 0.0)
    # The twelve secrets are new; the topic B last used two days before day 1 is not.
    assert (b["resources"], b["new_resources"]) == (15, 12)
    assert B_OLD not in b["new_resource_list"]
    billing = groups["billing-api"]
    assert (billing["machines"], billing["new_machines"], billing["events"]) == (2, 1, 2020)
    assert (billing["failures"], billing["new_resources"]) == (144, 0)
    assert groups["ingest-worker"]["new_resources"] == 12
    t = doc["totals"]
    assert (t["events"], t["machines"], t["new_machines"], t["groups"]) == (3472, 3, 1, 2)
    assert (t["failures"], t["previous_events"]) == (144, 2880)

    # Pages: exactly the alerts that paged on day 2, and how each ended.
    pages = {p["alert_id"]: p for p in doc["pages"]}
    assert set(pages) == set().union(*paged.values())
    for name, ids in paged.items():
        assert machines[name]["pages"] == len(ids), name
    fan = pages[fan_out_page["alert_id"]]
    assert (fan["machine_id"], fan["ended"], fan["acknowledged_by"]) == (B, "resolved", "alice")
    # From the page's write to the acknowledgement, both within this test.
    assert fan["time_to_ack_s"] is not None and 0 < fan["time_to_ack_s"] < time.time() - began
    assert fan["time_to_resolve_s"] >= s.cfg.detectors.cooldown_s
    rate = pages[burst_page["alert_id"]]
    assert (rate["ended"], rate["acknowledged_by"], rate["time_to_ack_s"]) == ("open", None, None)
    assert b["median_time_to_ack_s"] == fan["time_to_ack_s"]
    assert t["pages"] == len(pages) == t["pages_resolved"] + t["pages_acked"] + t["pages_open"]

    # From cron: the same period again rewrites the same bytes.
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    cfg = ["-c", str(s.config_path), "-q"]
    end = "2026-01-03T23:00:00Z"
    assert main(["report", "--period", "day", "--end", end, "--out", str(out), *cfg]) == 0
    assert capsys.readouterr().err == ""
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    # The ISO week (Monday 2025-12-29 to Monday 2026-01-05) holds every event sent.
    end = "2026-01-05T06:00:00Z"
    assert main(["report", "--period", "week", "--end", end, "--json", "-", *cfg]) == 0
    week = orjson.loads(capsys.readouterr().out)
    assert week["period"]["label"] == "2026-W01"
    assert week["totals"]["events"] == len(events)
    assert week["totals"]["previous_events"] == 0


def test_report_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDITWATCH_BOOTSTRAP", "127.0.0.1:1")

    def run(*args: str) -> tuple[int, str]:
        rc = main(["report", *args])
        return rc, capsys.readouterr().err

    rc, err = run("--period", "day")
    assert rc == 2 and "--out DIR" in err
    rc, err = run("--period", "week", "--end", "yesterday", "--out", str(tmp_path))
    assert rc == 2 and "--end 'yesterday'" in err
    rc, err = run("--period", "day", "--out", str(tmp_path), "--json", "x.json")
    assert rc == 2 and "not both" in err
    started = time.monotonic()
    rc, err = run("--period", "day", "--out", str(tmp_path))
    assert rc == 1 and "127.0.0.1:1" in err
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []
