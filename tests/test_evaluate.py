"""The evaluation harness's scoring, on hand-made episodes and alert states (no Kafka), and one
tiny end-to-end run of the suite through replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.evaluate import (
    ActivitySpans,
    KindScore,
    Score,
    check_targets,
    evaluate,
    false_page_report,
    is_page,
    render,
    score,
)
from schemas.event import format_rfc3339_ms
from streams.ops.config import load_config
from streams.tools.synthetic import DEFAULT_START_MS, Episode, SyntheticConfig

S = 1_000
MIN = 60 * S
H = 60 * MIN
T0 = DEFAULT_START_MS
WARMUP_END = T0 + 24 * H
START = WARMUP_END + 10 * H  # an episode well after warm-up
END = START + 10 * MIN


def ep(
    kind: str = "fan_out",
    machine: str = "m1",
    start: int = START,
    end: int = END,
    malicious: bool = True,
) -> Episode:
    return Episode(kind, machine, start, end, malicious, f"{kind} on {machine}")


def alert(
    machine: str = "m1",
    t: int = START,
    status: str = "opened",
    severity: str = "medium",
    detector: str = "new_resource",
) -> dict[str, Any]:
    return {
        "alert_id": f"a-{machine}-{t}-{status}",
        "status": status,
        "machine_id": machine,
        "detector": detector,
        "severity": severity,
        "score": 60.0,
        "event_time": format_rfc3339_ms(t),
        "summary": f"{machine} did something at {t}.",
        "observed": {},
        "expected": {},
    }


def run(episodes: list[Episode], alerts: list[dict[str, Any]], hours: float = 1000.0) -> Score:
    return score(episodes, alerts, warmup_end_ms=WARMUP_END, machine_hours=hours)


@pytest.mark.parametrize(
    ("t", "detected"),
    [
        (START - 59 * S, True),
        (START - 60 * S, True),
        (START - 61 * S, False),
        (START, True),
        (END, True),
        (END + 15 * MIN, True),
        (END + 15 * MIN + S, False),
    ],
)
def test_detection_window_edges(t: int, detected: bool) -> None:
    s = run([ep()], [alert(t=t)])
    row = s.kind("fan_out")
    assert row is not None
    assert row.detected == int(detected)
    assert (s.true_pages, s.false_pages) == ((1, 0) if detected else (0, 1))


def test_page_on_another_machine_does_not_detect() -> None:
    s = run([ep(machine="m1")], [alert(machine="m2")])
    assert s.recall == 0.0
    assert (s.true_pages, s.false_pages) == (0, 1)


@pytest.mark.parametrize(
    ("status", "severity", "page"),
    [
        ("opened", "medium", True),
        ("escalated", "high", True),
        ("opened", "critical", True),
        ("opened", "low", False),
        ("opened", "info", False),
        ("updated", "high", False),
        ("resolved", "high", False),
    ],
)
def test_only_opened_or_escalated_at_medium_or_above_are_pages(
    status: str, severity: str, page: bool
) -> None:
    a = alert(status=status, severity=severity)
    assert is_page(a) is page
    s = run([ep()], [a])
    assert s.pages == s.pages_after_warmup == int(page)
    assert s.recall == float(page)


def test_precision_and_recall_arithmetic() -> None:
    episodes = [
        ep("fan_out", "a", START, END),
        ep("fan_out", "b", START, END),
        ep("rate_burst", "c", START, END),
        ep("rate_burst", "d", START, END),
    ]
    alerts = [
        alert("a", START + 30 * S),
        alert("a", START + 90 * S, status="escalated", severity="high"),  # pages again: true
        alert("b", START + 600 * S),
        alert("c", END + 16 * MIN),  # too late: false, and c is missed
        alert("x", START),  # no episode on x: false
    ]
    s = run(episodes, alerts)
    assert (s.pages_after_warmup, s.true_pages, s.false_pages) == (5, 3, 2)
    assert s.precision == pytest.approx(3 / 5)
    assert s.recall == pytest.approx(2 / 4)  # a and b detected; c and d missed
    assert [e.machine_id for e in s.missed] == ["c", "d"]
    # Rows follow the generator's kind order: rate_burst before fan_out.
    assert [(k.kind, k.episodes, k.detected, k.recall) for k in s.kinds] == [
        ("rate_burst", 2, 0, 0.0),
        ("fan_out", 2, 2, 1.0),
    ]


def test_time_to_detect_uses_the_first_page_and_clips_at_zero() -> None:
    episodes = [ep(machine="a"), ep(machine="b"), ep(machine="c")]
    alerts = [
        alert("a", START + 100 * S),
        alert("a", START + 30 * S),  # out of order in the input: still the first
        alert("b", START - 50 * S),  # before the start: 0
        alert("c", START + 600 * S),
    ]
    s = run(episodes, alerts)
    row = s.kind("fan_out")
    assert row is not None
    assert row.median_ttd_s == pytest.approx(30.0)  # median of 0, 30, 600
    undetected = run([ep()], [])
    row = undetected.kind("fan_out")
    assert row is not None and row.median_ttd_s is None and row.recall == 0.0


def test_false_pages_per_1000_machine_hours() -> None:
    s = run([ep()], [alert("x"), alert("y"), alert("m1")], hours=500.0)
    assert s.false_pages == 2
    assert s.false_pages_per_1000_machine_hours == pytest.approx(4.0)
    assert run([ep()], [alert("x")], hours=0.0).false_pages_per_1000_machine_hours is None


def test_machine_hours_are_per_machine_active_spans_after_warmup() -> None:
    spans = ActivitySpans(WARMUP_END)
    for machine, t in [
        ("a", WARMUP_END - H),  # before warm-up: ignored
        ("a", WARMUP_END + 3 * H),
        ("a", WARMUP_END + H),  # any order
        ("b", WARMUP_END + 30 * MIN),  # seen once: no span
        ("c", WARMUP_END - 2 * H),  # only during warm-up
        ("d", WARMUP_END),
        ("d", WARMUP_END + 90 * MIN),
    ]:
        spans.add(machine, t)
    assert spans.hours() == pytest.approx(2.0 + 0 + 0 + 1.5)


def test_pages_on_benign_episodes_are_false_and_counted_per_benign_kind() -> None:
    episodes = [
        ep("pod_rotation", "p1", malicious=False),
        ep("pod_rotation", "p2", malicious=False),
        ep("autoscale", "v1", malicious=False),
        ep("fan_out", "m1"),
    ]
    alerts = [alert("p1", START + 5 * MIN), alert("m1", START + MIN)]
    s = run(episodes, alerts)
    assert (s.true_pages, s.false_pages) == (1, 1)
    assert s.precision == pytest.approx(0.5)
    rows = {k.kind: k for k in s.kinds}
    assert not rows["pod_rotation"].malicious
    assert (rows["pod_rotation"].episodes, rows["pod_rotation"].detected) == (2, 1)
    assert rows["autoscale"].detected == 0
    assert s.recall == 1.0  # recall is over malicious episodes only
    report = false_page_report(s)
    assert report["by_benign_kind"] == {"pod_rotation": 1}
    assert report["top_machines"][0]["machine_id"] == "p1"
    assert report["top_machines"][0]["benign_kinds"] == ["pod_rotation"]


def test_a_page_matching_malicious_and_benign_episodes_is_true() -> None:
    episodes = [ep("group_deploy", "m1", malicious=False), ep("fan_out", "m1")]
    s = run(episodes, [alert("m1")])
    assert (s.true_pages, s.false_pages) == (1, 0)


def test_warmup_pages_and_episodes_are_excluded() -> None:
    early = ep("nightly_batch", "batch", T0 + H, T0 + 3 * H, malicious=False)
    straddling = ep("nightly_batch", "batch2", WARMUP_END - H, WARMUP_END + H, malicious=False)
    episodes = [early, straddling, ep()]
    alerts = [
        alert("batch", T0 + 2 * H),  # during warm-up: not counted at all
        alert("zzz", WARMUP_END - S),  # during warm-up
        alert("m1", WARMUP_END + H),  # after warm-up, no episode there: false
        alert("m1", START),
    ]
    s = run(episodes, alerts)
    assert s.pages == 4
    assert (s.pages_after_warmup, s.true_pages, s.false_pages) == (2, 1, 1)
    rows = {k.kind: k for k in s.kinds}
    # Only the straddling batch window is scored: the early one ended during warm-up.
    assert (rows["nightly_batch"].episodes, rows["nightly_batch"].detected) == (1, 0)
    # A page at the warm-up end counts.
    assert run([], [alert("x", WARMUP_END)]).pages_after_warmup == 1


def test_targets_pass_and_fail() -> None:
    def kind(name: str, ttd: float | None, detected: int = 5) -> KindScore:
        return KindScore(name, True, 5, detected, detected / 5, ttd)

    good = Score(
        kinds=[kind("fan_out", 40.0), kind("rate_burst", 110.0), kind("silence", 800.0)],
        pages=20,
        pages_after_warmup=20,
        true_pages=19,
        false_pages=1,
        precision=0.95,
        recall=1.0,
        machine_hours=1000.0,
        false_pages_per_1000_machine_hours=1.0,
        verdicts=[],
    )
    assert all(t["pass"] for t in check_targets(good).values())
    assert check_targets(good)["median_ttd_s"]["value"] == 110.0
    bad = Score(
        kinds=[kind("fan_out", 40.0), kind("off_hours", None, 0), kind("silence", 1000.0)],
        pages=20,
        pages_after_warmup=20,
        true_pages=10,
        false_pages=10,
        precision=0.5,
        recall=0.6,
        machine_hours=1000.0,
        false_pages_per_1000_machine_hours=10.0,
        verdicts=[],
    )
    t = check_targets(bad)
    assert not any(x["pass"] for x in t.values())
    assert t["median_ttd_s"]["value"] is None  # a kind never detected fails time to detect
    nothing = Score(
        kinds=[],
        pages=0,
        pages_after_warmup=0,
        true_pages=0,
        false_pages=0,
        precision=None,
        recall=None,
        machine_hours=0.0,
        false_pages_per_1000_machine_hours=None,
        verdicts=[],
    )
    assert not any(x["pass"] for x in check_targets(nothing).values())


def test_tiny_suite_end_to_end(tmp_path: Path) -> None:
    sc = SyntheticConfig(
        seed=3,
        start_ms=DEFAULT_START_MS + 8 * H,
        duration_s=4 * 3600,
        machines=12,
        rate_scale=0.5,
        warmup_s=2 * 3600,
        anomalies={"fan_out": 1, "rate_burst": 1},
        benign={"pod_rotation": 1},
    )
    doc = evaluate(sc, load_config(), tmp_path)
    ov = doc["overall"]
    assert ov["events"] > 1000 and ov["dead_letters"] == {}
    assert ov["machine_hours"] > 0
    pages = (tmp_path / "pages.jsonl").read_bytes().splitlines()
    assert ov["pages"] == len(pages)
    assert {k["kind"] for k in doc["kinds"]} >= {"fan_out", "rate_burst", "pod_rotation"}
    assert set(doc["targets"]) == {
        "recall",
        "precision",
        "false_pages_per_1000_machine_hours",
        "median_ttd_s",
        "silence_median_ttd_s",
    }
    orjson.dumps(doc)  # JSON-ready
    assert {e["kind"] for e in doc["missed"]} <= {"fan_out", "rate_burst"}
    assert "anomaly kind" in render(doc)
