"""The digest's periods, counting and rendering, without Kafka (tests/test_digest_kafka.py
runs it against the broker)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.event import format_rfc3339_ms
from streams.ops.config import Config
from streams.tools.digest import (
    Digest,
    file_names,
    period_ending,
    render_digest_html,
    to_json_bytes,
)

DAY_MS = 86_400_000
START = int(datetime(2026, 12, 6, tzinfo=UTC).timestamp() * 1000)  # a Sunday


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "end", "label", "start"),
    [
        ("day", "2026-12-07T00:05:00", "2026-12-06", "2026-12-06T00:00:00"),
        # At midnight exactly the day that just ended is whole.
        ("day", "2026-12-07T00:00:00", "2026-12-06", "2026-12-06T00:00:00"),
        ("day", "2026-12-06T23:59:59", "2026-12-05", "2026-12-05T00:00:00"),
        # ISO weeks run Monday to Monday; W49 of 2026 starts on 30 November.
        ("week", "2026-12-07T01:00:00", "2026-W49", "2026-11-30T00:00:00"),
        ("week", "2026-12-13T23:00:00", "2026-W49", "2026-11-30T00:00:00"),
        ("week", "2026-01-05T00:00:00", "2026-W01", "2025-12-29T00:00:00"),
    ],
)
def test_the_period_is_the_last_whole_one_before_the_end(
    kind: str, end: str, label: str, start: str
) -> None:
    p = period_ending(kind, at(end))
    assert (p.label, p.start) == (label, at(start))
    assert (p.end - p.start).days == (1 if kind == "day" else 7)
    assert file_names(p) == (f"digest-{label}.html", f"digest-{label}.json")
    assert p.before().end == p.start


def record(machine: str, ts: int, resource: str, outcome: str = "SUCCESS", n: int = 0) -> Any:
    return {
        "event_id": f"{machine}-{ts}-{n}",
        "timestamp": ts,
        "machine_id": machine,
        "resource": resource,
        "operation": "GET",
        "outcome": outcome,
        "attributes": {},
    }


def alert(alert_id: str, status: str, severity: str, when_ms: int, **extra: Any) -> Any:
    return {
        "alert_id": alert_id,
        "status": status,
        "severity": severity,
        "score": {"low": 30, "medium": 55, "high": 75, "critical": 90}[severity],
        "machine_id": extra.pop("machine_id", "web-7d9f8b6c4-x2k9p"),
        "group": extra.pop("group", "web"),
        "detector": extra.pop("detector", "new_resource"),
        "event_time": format_rfc3339_ms(when_ms),
        "summary": extra.pop("summary", "web accessed something new"),
        "first_event_time": format_rfc3339_ms(when_ms),
        **extra,
    }


def sample_digest() -> dict[str, Any]:
    """A day with two groups, failures, new resources, duplicates and four alerts that
    ended in each way (one known only by its compacted latest state)."""
    d = Digest(Config(), period_ending("day", at("2026-12-07T01:00:00")), lookback=7)
    web, web2, db = "web-7d9f8b6c4-x2k9p", "web-7d9f8b6c4-q8r2m", "orders-db-0"
    d.add_archived(record(web, START - 5 * DAY_MS, "s3://assets/2026/12/a.png"))  # lookback
    d.add_archived(record(web, START - 20 * DAY_MS, "secrets://prod/old"))  # before it
    for h in range(24):
        ts = START + h * 3_600_000
        d.add_archived(record(web, ts - DAY_MS, "postgres://orders/public.t", "FAILURE"))
        d.add_archived(
            record(web, ts, "postgres://orders/public.t", "DENIED" if h < 3 else "SUCCESS")
        )
        d.add_archived(
            record(web, ts, "postgres://orders/public.t", "DENIED" if h < 3 else "SUCCESS")
        )
        d.add_archived(record(db, ts, "disk://data", n=1))
    d.add_archived(record(web, START + 5, "s3://assets/2026/11/b.png"))  # same level as a.png
    d.add_archived(record(web, START + 6, "secrets://prod/old"))  # not used within 7 days
    d.add_archived(record(web2, START + 7, "secrets://prod/<b>x</b>"))
    d.add_archived(record(web, START + DAY_MS, "late://next-day"))  # after the period
    h = 3_600_000
    states = [
        (START + 2 * h + 10_000, alert("a-1", "opened", "high", START + 2 * h)),
        (START + 3 * h, alert("a-1", "resolved", "high", START + 3 * h)),
        (START + 4 * h + 5_000, alert("a-2", "opened", "low", START + 4 * h)),
        (START + 4 * h + 6_000, alert("a-2", "escalated", "critical", START + 4 * h + 1000)),
        (
            START + 5 * h,
            alert("a-3", "opened", "medium", START + 5 * h, machine_id=db, group="orders-db"),
        ),
        # Compacted: only the latest state of a-4 is left.
        (
            START + 9 * h,
            alert("a-4", "updated", "medium", START + 9 * h, machine_id=db, group="orders-db"),
        ),
        # Opened below a page and never escalated: not a page.
        (START + 6 * h, alert("a-5", "opened", "low", START + 6 * h)),
        # Paged the day before.
        (START - h, alert("a-6", "opened", "high", START - h)),
    ]
    acks = {
        "a-2": ("alice", START + 4 * h + 5_000 + 90_000),
        "a-1": ("bob", START + 2 * h + 70_000),
    }
    d.add_alerts(states, acks)
    return d.document({"archive_topic": "audit.archive", "alerts_topic": "audit.alerts"})


def test_digest_counts_dedupes_and_judges_new_against_the_lookback() -> None:
    doc = sample_digest()
    machines = {m["machine_id"]: m for m in doc["machines"]}
    web = machines["web-7d9f8b6c4-x2k9p"]
    assert doc["source"]["duplicates_dropped"] == 24
    assert (web["events"], web["failures"], web["denied"]) == (26, 3, 3)
    assert web["failure_ratio"] == round(3 / 26, 4)
    assert (web["previous_events"], web["previous_failure_ratio"]) == (24, 1.0)
    assert web["failure_ratio_change"] == round(round(3 / 26, 4) - 1.0, 4)
    # s3://assets/{n}/{n} was used in the lookback; the secret only before it.
    assert web["new_resource_list"] == ["secrets://prod/old"]
    assert (web["resources"], web["new_resources"], web["new_machine"]) == (3, 1, False)
    web2 = machines["web-7d9f8b6c4-q8r2m"]
    assert (web2["new_machine"], web2["new_resources"]) == (True, 1)
    groups = {g["group"]: g for g in doc["groups"]}
    assert (groups["web"]["machines"], groups["web"]["new_machines"]) == (2, 1)
    assert groups["web"]["new_resources"] == 2
    assert doc["hourly"]["events"][0] == 5 and sum(doc["hourly"]["events"]) == 51
    assert doc["hourly"]["failures"][:4] == [1, 1, 1, 0]


def test_pages_and_how_they_ended() -> None:
    doc = sample_digest()
    pages = {p["alert_id"]: p for p in doc["pages"]}
    assert sorted(pages) == ["a-1", "a-2", "a-3", "a-4"]
    assert (pages["a-1"]["ended"], pages["a-1"]["time_to_resolve_s"]) == ("resolved", 3600.0)
    assert (pages["a-1"]["acknowledged_by"], pages["a-1"]["time_to_ack_s"]) == ("bob", 60.0)
    # An escalation is the page; time to ack runs from when it was written.
    assert (pages["a-2"]["ended"], pages["a-2"]["severity"]) == ("acked", "critical")
    assert pages["a-2"]["time_to_ack_s"] == 89.0
    assert pages["a-3"]["ended"] == "open"
    assert (pages["a-4"]["ended"], pages["a-4"]["time_to_ack_s"]) == ("open", None)
    t = doc["totals"]
    assert (t["pages"], t["pages_resolved"], t["pages_acked"], t["pages_open"]) == (4, 1, 1, 2)
    assert t["median_time_to_ack_s"] == 74.5
    machines = {m["machine_id"]: m for m in doc["machines"]}
    assert machines["orders-db-0"]["pages"] == 2
    # Sorted by pages, then events, then name: the same order every run.
    order = [m["machine_id"] for m in doc["machines"]]
    assert order == ["web-7d9f8b6c4-x2k9p", "orders-db-0", "web-7d9f8b6c4-q8r2m"]
    assert to_json_bytes(doc) == to_json_bytes(sample_digest())


def test_html_escapes_what_it_is_given() -> None:
    html = render_digest_html(sample_digest())
    assert "secrets://prod/&lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>x</b>" not in html
    assert "<script" not in html and "default-src 'none'" in html
    assert orjson.loads(to_json_bytes(sample_digest()))["format"] == 1
