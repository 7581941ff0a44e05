"""One incident, one page: a machine's findings that overlap in time join one incident (issue 16,
point 4), its first page says `opened`, and the failure ratio does not learn from its own open
episode for a bounded time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from detectors.core import DetectionCore, DetectorConfig
from detectors.incidents import Episode
from detectors.rate import RateParams
from schemas.alert import SEVERITY_RANK, Alert
from streams.processor import MemoryStore
from tests.test_detectors_peers import Client

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1000
MIN = 60 * S
KNOWN = "postgres://orders-db/public.orders"


class Stream(Client):
    """One machine's events through a core (`Client`), a minute of them at a time."""

    def __init__(
        self, core: DetectionCore, machine_id: str = "orders-api-1", kv: MemoryStore | None = None
    ) -> None:
        super().__init__(core, machine_id, kv)

    def event(self, ts_ms: int, resource: str = KNOWN, outcome: str = "SUCCESS") -> list[Alert]:
        return self.send(ts_ms, resource, outcome=outcome)

    def minutes(self, start_ms: int, n: int, per_minute: int, failing: int = 0) -> list[Alert]:
        """`per_minute` events in each of `n` minutes, `failing` of each failed, spread evenly
        over the minute."""
        out: list[Alert] = []
        step = MIN // per_minute
        for m in range(n):
            for k in range(per_minute):
                failed = (k + 1) * failing // per_minute > k * failing // per_minute
                outcome = "FAILURE" if failed else "SUCCESS"
                out += self.event(start_ms + m * MIN + k * step, outcome=outcome)
        return out


def pages(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.is_page]


# A small rate warm-up so the test can reach both the rate and the failure detectors quickly.
RATE = RateParams(warmup_intervals=20, slots=0)
# History behind it: maturity is test_maturity's.
CONFIG = DetectorConfig(rate=RATE, warmup_s=600, warmup_events=50, combined=None, mature_after_s=0)


def test_failure_spike_and_its_retry_burst_are_one_incident_with_one_page() -> None:
    """Observed: one failure spike became two unlinked alerts (failure_ratio and access_rate)."""
    s = Stream(DetectionCore(CONFIG))
    assert s.minutes(T0, 40, 10) == []
    # A dependency fails: 20 times the usual traffic in a minute (the retries), most of it
    # failing.
    spike = s.minutes(T0 + 40 * MIN, 1, 200, failing=150)
    assert {a.detector for a in spike} >= {"failure_ratio", "access_rate"}
    paged = pages(spike)
    # One page, then escalations of that same alert only as the spike grows (a rise in
    # severity pages again, as it always has); the retry burst is evidence, not a page.
    assert [a.status for a in paged][:1] == ["opened"], [
        (a.detector, a.status, a.severity) for a in spike
    ]
    incident = paged[0].alert_id
    assert {a.alert_id for a in paged} == {incident}
    assert [a.status for a in paged[1:]] == ["escalated"] * (len(paged) - 1)
    ranks = [SEVERITY_RANK[a.severity] for a in paged]
    assert ranks == sorted(set(ranks))
    assert {a.incident_id for a in spike} == {incident}
    evidence = [a for a in spike if a.alert_id != incident]
    assert evidence and all(not a.is_page for a in evidence)
    assert all(incident in a.summary for a in evidence if a.status == "opened")
    # Every state of the incident, its resolutions included, carries the incident id, and
    # nothing resolved pages or reaches on-call above the evidence's recorded severity.
    after = s.minutes(T0 + 41 * MIN, 30, 10)
    resolved = [a for a in after if a.status == "resolved"]
    assert {a.alert_id for a in resolved} == {a.alert_id for a in spike}
    assert {a.incident_id for a in resolved} == {incident}
    assert all(a.severity == "low" for a in resolved if a.alert_id != incident)
    # And the next spike, after both resolved, is a new incident.
    again = pages(s.minutes(T0 + 80 * MIN, 1, 200, failing=150))
    assert again[0].status == "opened"
    assert again[0].incident_id == again[0].alert_id != incident


def test_a_finding_that_raises_the_incident_severity_pages_and_says_opened() -> None:
    s = Stream(DetectionCore(CONFIG))
    assert s.minutes(T0, 40, 10) == []
    first = pages(s.minutes(T0 + 40 * MIN, 1, 10, failing=6))
    assert [(a.detector, a.status) for a in first] == [("failure_ratio", "opened")]
    incident = first[0].alert_id
    # A fan-out on the same machine while the failure episode is open: far more severe, so the
    # incident pages again; it is that alert's first page, so it says opened.
    t = T0 + 41 * MIN
    fan = [a for k in range(12) for a in s.event(t + k * 5 * S, f"s3://bucket-{k}/x")]
    paged = pages(fan)
    assert paged, [(a.detector, a.status, a.severity) for a in fan]
    assert paged[0].status == "opened" and paged[0].detector == "new_resource"
    assert {a.incident_id for a in fan} == {incident}
    assert paged[0].severity in ("high", "critical")


def test_the_first_state_on_call_sees_is_opened() -> None:
    """Observed: a fan-out's first page said `escalated` with no `opened` before it. A replica
    of a group opens its first new resource below page severity (more often a deploy rolling
    out); the burst that follows is its first page, and that must say opened."""
    core = DetectionCore(replace(CONFIG, rate=RateParams(min_count=10**9)))
    kv = MemoryStore()
    a, b = Stream(core, "orders-api-1", kv), Stream(core, "orders-api-2", kv)
    for m in range(40):
        a.minutes(T0 + m * MIN, 1, 5)
        b.minutes(T0 + m * MIN + S, 1, 5)
    assert a.alerts == [] and b.alerts == []
    t = T0 + 40 * MIN
    fan = [x for k in range(6) for x in a.event(t + k * 5 * S, f"s3://bucket-{k}/x")]
    assert fan[0].status == "opened" and not fan[0].is_page
    first_page = pages(fan)[0]
    assert first_page.status == "opened", [(x.status, x.severity) for x in fan]
    assert first_page.alert_id == fan[0].alert_id
    assert first_page.sequence is not None and first_page.sequence > 1
    # Later rises of the same alert escalate it.
    assert [x.status for x in pages(fan)][1:] == ["escalated"] * (len(pages(fan)) - 1)


def test_the_failure_ratio_does_not_learn_from_its_open_episode() -> None:
    """Observed: the "usual" failure ratio in an open episode's updates learned from the spike
    itself (0.1% -> 6.2% in 7 minutes)."""
    s = Stream(DetectionCore(CONFIG))
    assert s.minutes(T0, 40, 10) == []
    assert s.state is not None
    usual = s.state.fail[3]
    spike = s.minutes(T0 + 40 * MIN, 7, 40, failing=15)
    fail = [a for a in spike if a.detector == "failure_ratio"]
    assert fail[0].status == "opened"
    assert {a.expected["ratio"] for a in fail} == {round(usual, 4)}
    assert s.state.fail[3] == usual


def test_a_failure_ratio_that_lasts_past_the_bound_is_a_new_normal() -> None:
    s = Stream(DetectionCore(CONFIG))
    assert s.minutes(T0, 40, 10) == []
    assert s.state is not None
    usual = s.state.fail[3]
    from detectors.failure import learning_pause_ms

    bound_min = learning_pause_ms(CONFIG) // MIN
    assert bound_min == 12  # the rate model's re-anchoring: 12 one-sided 60-s intervals
    s.minutes(T0 + 40 * MIN, bound_min + 20, 40, failing=15)
    assert s.state.fail[3] > 0.3
    assert usual < 0.01
    # The episode has stopped finding anything: the failures are the machine's normal now.
    later = s.minutes(T0 + (60 + bound_min) * MIN, 3, 40, failing=15)
    assert [a.status for a in later if a.detector == "failure_ratio"] in ([], ["resolved"])


def test_episodes_of_the_old_state_layout_still_load() -> None:
    old = ["a-1", T0, T0, T0, 1, "high", 80.0, ["e-1"], {}, {}, 1]
    ep = Episode.from_list(old)
    assert ep.incident_id == "a-1"
    assert ep.paged >= 0 and ep.incident_paged >= 0
    low = Episode.from_list(["a-2", T0, T0, T0, 1, "low", 30.0, ["e-1"], {}, {}, 1])
    assert low.paged == -1
    assert Episode.from_list(ep.to_list()) == ep


@pytest.mark.parametrize("status", ["opened", "updated", "escalated", "resolved"])
def test_alert_json_carries_the_incident_id(status: str) -> None:
    a = Alert(
        alert_id="a-2",
        status=status,
        machine_id="m",
        group="g",
        detector="access_rate",
        severity="low",
        score=60.0,
        event_time="2026-01-01T00:00:00.000Z",
        summary="x",
        observed={},
        expected={},
        event_ids=[],
        config_version="v",
        incident_id="a-1",
    )
    assert a.to_json()["incident_id"] == "a-1"


def _evidence_state() -> dict[str, object]:
    return {
        "alert_id": "a-2",
        "status": "opened",
        "machine_id": "m-1",
        "group": "m",
        "detector": "access_rate",
        "severity": "low",
        "score": 60.0,
        "event_time": "2026-01-01T00:00:00.000Z",
        "summary": "x",
        "incident_id": "a-1",
    }


def test_on_call_sees_which_incident_an_evidence_alert_belongs_to() -> None:
    from streams.cli.main import _alert_line, format_alert_row
    from streams.cli.webhook import slack_text

    state = _evidence_state()
    assert "incident `a-1`" in slack_text(state)
    assert "incident a-1" in _alert_line(state)
    assert "incident a-1" in " ".join(format_alert_row(state))
    # The incident's own alert names nothing more.
    lead = {**state, "alert_id": "a-1"}
    assert "incident" not in slack_text(lead) and "incident" not in _alert_line(lead)
