"""Capacity (bounded machines per store) and storm control (bounded pages per minute)."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest

from detectors.base import Finding
from detectors.core import MACHINE, DetectionCore, DetectorConfig
from detectors.incidents import Episode, Incidents, StormControl
from detectors.state import MachineState, _decode_state
from schemas.alert import Alert
from schemas.event import AuditEvent
from streams.processor import MemoryStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def ev(machine: str, ts_ms: int, resource: str = "pg://db/t", i: int = 0) -> AuditEvent:
    return AuditEvent(
        event_id=f"{machine}-{ts_ms}-{i}",
        ts_us=ts_ms * 1000,
        machine_id=machine,
        resource=resource,
        operation="SELECT",
        outcome="SUCCESS",
    )


def test_random_identities_do_not_grow_state_past_the_cap() -> None:
    core = DetectionCore(replace(DetectorConfig(), max_machines=100))
    store = MemoryStore()
    for i in range(1000):
        core.observe(ev(f"random-{i:04x}", T0 + i), store)
    assert len(store.data[MACHINE]) == 100
    assert core.evictions == 900
    # The most recently seen are the ones kept.
    assert set(store.data[MACHINE]) == {f"random-{i:04x}" for i in range(900, 1000)}


def test_idle_machines_expire_after_the_horizon() -> None:
    core = DetectionCore(replace(DetectorConfig(), machine_idle_horizon_s=3600))
    store = MemoryStore()
    core.observe(ev("old-job", T0), store)
    for k in range(1, 200):  # another machine keeps the stream clock moving for 3+ hours
        core.observe(ev("busy-api", T0 + k * 60_000), store)
    assert "old-job" not in store.data[MACHINE]
    assert "busy-api" in store.data[MACHINE]


def test_a_flood_of_new_identities_is_one_rollup_not_thousands_of_pages() -> None:
    # A deployment past its first daily cycle, where a new identity pages (detectors.maturity).
    cfg = replace(DetectorConfig(), warmup_s=60, warmup_events=1, mature_after_s=0)
    core = DetectionCore(cfg)
    store = MemoryStore()
    for k in range(5):  # the store has watched one known service for a while
        core.observe(ev("known-svc", T0 + k * 30_000), store)
    alerts = []
    for i in range(300):  # then 300 unknown identities within one minute
        alerts += core.observe(ev(f"rogue{i}x", T0 + 10 * 60_000 + i * 100), store)
    pages = [a for a in alerts if a.is_page]
    assert [a.detector for a in pages].count(
        "new_identity"
    ) == cfg.max_new_identity_pages_per_minute
    rollups = [a for a in pages if a.detector == "storm"]
    assert len(rollups) == 1 and rollups[0].machine_id == "*"
    held = [a for a in alerts if a.detector == "new_identity" and not a.is_page]
    # Nothing is dropped: every identity still has its alert state, held back at low severity.
    assert len(held) == 300 - cfg.max_new_identity_pages_per_minute
    assert all(a.summary.startswith("(held back by storm control)") for a in held)
    # The next minute's first alert carries the final count of the storm.
    later = core.observe(ev("intruder-late", T0 + 12 * 60_000), store)
    final = [a for a in later if a.detector == "storm"]
    assert final and final[0].status == "updated" and final[0].observed["pages"] == 300


def stored_episode(store: MemoryStore, machine: str, detector: str) -> Episode:
    return _decode_state(store.data[MACHINE][machine]).episodes[detector]


@pytest.mark.parametrize("working_copy", [False, True])
def test_identities_held_back_in_a_flood_have_not_paged(working_copy: bool) -> None:
    """Observed: a page held back by storm control still counted as paged in the stored
    episode (and the state is saved before storm control sees the page, so it must have its
    say before the page counts)."""
    cfg = replace(DetectorConfig(), warmup_s=60, warmup_events=1, mature_after_s=0)
    core = DetectionCore(cfg)
    working = core.keep_working_copy(1000) if working_copy else None
    store = MemoryStore()
    for k in range(5):
        core.observe(ev("known-svc", T0 + k * 30_000), store)
    cap = cfg.max_new_identity_pages_per_minute
    alerts = []
    for i in range(cap + 3):
        alerts += core.observe(ev(f"rogue{i}x", T0 + 10 * 60_000 + i * 100), store)
    if working is not None:
        working.flush(store, None)
    paged = {a.machine_id for a in alerts if a.is_page and a.detector == "new_identity"}
    assert paged == {f"rogue{i}x" for i in range(cap)}
    for i in range(cap + 3):
        ep = stored_episode(store, f"rogue{i}x", "new_identity")
        assert (ep.paged >= 0) == (i < cap), (i, ep)


class Storm:
    """Incidents and storm control of one partition, wired as `DetectionCore` wires them,
    for findings made up by the test."""

    def __init__(self, cap: int) -> None:
        self.cfg = replace(DetectorConfig(), max_pages_per_minute=cap)
        self.storm = StormControl()
        self.incidents = Incidents(self.cfg.version())
        self.incidents.gate = lambda detector, machine, alert_id, first, incident: self.storm.admit(
            self.cfg, detector, machine, alert_id, first, incident
        )
        self.states: dict[str, MachineState] = {}

    def event(
        self, machine: str, ts_ms: int, *found: tuple[str, float], anchor_ms: int | None = None
    ) -> list[Alert]:
        """One event of `machine` with findings (detector, score), as the core writes them;
        `anchor_ms`: the findings are anchored on an earlier event (a judged window)."""
        state = self.states.setdefault(machine, MachineState.new(ts_ms))
        self.storm.begin(0, ts_ms)
        anchor = ev(machine, ts_ms if anchor_ms is None else anchor_ms)
        alerts = []
        for detector, score in found:
            f = Finding(detector, score, f"{machine}: {detector}", {"n": 1}, {"n": 0})
            alert = self.incidents.episode(self.cfg, anchor, "g", state, f)
            if alert is not None:
                alerts.append(alert)
        if not alerts:
            return []
        return self.storm.apply(self.cfg, self.cfg.version(), alerts)


def shown(alerts: list[Alert], machine: str) -> list[tuple[str, str, str, bool]]:
    return [
        (a.detector, a.status, a.severity, a.is_page) for a in alerts if a.machine_id == machine
    ]


def test_a_page_held_back_by_storm_control_pages_opened_after_the_storm() -> None:
    """Observed: a held-back page counted as paged, so its alert never paged after the storm
    (later states were `updated`), and a rise in severity said `escalated` to an on-call
    person who had seen nothing of it."""
    s = Storm(cap=2)
    t = T0 + 5 * 60_000
    first = [a for m in ("m1", "m2", "m3", "m4") for a in s.event(m, t, ("access_rate", 60))]
    assert [a.machine_id for a in first if a.is_page] == ["m1", "m2", "*"]
    for m in ("m3", "m4"):
        [held] = [a for a in first if a.machine_id == m]
        assert held.severity == "low" and held.summary.startswith("(held back by storm control)")
        assert s.states[m].episodes["access_rate"].paged == -1
    # After the storm minute: m3 goes on at the same severity, m4 rises; m1 goes on as well.
    later = t + 2 * 60_000
    m3 = s.event("m3", later, ("access_rate", 60))
    m4 = s.event("m4", later, ("access_rate", 90))
    m1 = s.event("m1", later, ("access_rate", 60))
    # The next minute's first alert carries the storm's final count, as before.
    assert [(a.detector, a.status) for a in m3 if a.machine_id == "*"] == [("storm", "updated")]
    assert shown(m3, "m3") == [("access_rate", "opened", "medium", True)]
    assert shown(m4, "m4") == [("access_rate", "opened", "critical", True)]
    # m1 paged in the storm: its update is no page.
    assert shown(m1, "m1") == [("access_rate", "updated", "medium", False)]


def test_an_escalation_held_back_by_storm_control_escalates_after_the_storm() -> None:
    s = Storm(cap=1)
    t = T0 + 5 * 60_000
    assert shown(s.event("m1", t, ("access_rate", 60)), "m1")[0][1:] == ("opened", "medium", True)
    later = t + 2 * 60_000
    s.event("other", later, ("access_rate", 60))
    held = s.event("m1", later + 1, ("access_rate", 90))
    assert shown(held, "m1") == [("access_rate", "escalated", "low", False)]
    after = s.event("m1", later + 2 * 60_000, ("access_rate", 90))
    assert shown(after, "m1") == [("access_rate", "escalated", "critical", True)]


def test_a_finding_after_a_held_page_in_the_same_event_does_not_inherit_its_level() -> None:
    """A held-back page raises no incident level: a second finding of the same event (a
    failure spike's retry burst) is not made evidence of a page nobody received."""
    s = Storm(cap=1)
    t = T0 + 5 * 60_000
    s.event("other", t, ("access_rate", 60))
    both = s.event("m1", t + 1, ("access_rate", 90), ("failure_ratio", 55))
    assert [(a.detector, a.severity, a.is_page) for a in both if a.machine_id == "m1"] == [
        ("access_rate", "low", False),
        ("failure_ratio", "low", False),
    ]
    episodes = s.states["m1"].episodes
    assert episodes["failure_ratio"].incident_paged == -1
    assert episodes["access_rate"].paged == -1
    after = s.event("m1", t + 2 * 60_000, ("access_rate", 90))
    assert shown(after, "m1") == [("access_rate", "opened", "critical", True)]


def test_a_late_events_page_counts_in_the_current_storm_minute() -> None:
    """A page stamped a minute earlier than the storm's does not start the count again."""
    s = Storm(cap=1)
    t = T0 + 5 * 60_000
    out = s.event("m1", t, ("access_rate", 60))
    out += s.event("m2", t - 60_000, ("access_rate", 60))
    out += s.event("m3", t + 1, ("access_rate", 60))
    pages = [(a.machine_id, a.detector) for a in out if a.is_page]
    assert pages == [("m1", "access_rate"), ("*", "storm")]


def test_one_event_stamped_an_hour_ahead_does_not_hold_back_the_hour() -> None:
    """Input accepts events up to max_future_s ahead: one of them must not make every later
    page count in its minute."""
    s = Storm(cap=1)
    t = T0 + 5 * 60_000
    s.event("ahead", t + 59 * 60_000, ("access_rate", 60))
    out = [a for k in range(10) for a in s.event(f"m{k}", t + k * 60_000, ("access_rate", 60))]
    assert [a.machine_id for a in out if a.is_page] == [f"m{k}" for k in range(10)]


def test_the_rest_of_a_held_incident_is_held_with_it() -> None:
    """A flood of new identities whose first event also makes other findings: the new-identity
    cap holds for the whole incident, as when those findings were the held page's evidence."""
    s = Storm(cap=20)
    cap = s.cfg.max_new_identity_pages_per_minute
    t = T0 + 10 * 60_000
    out = [
        a
        for k in range(cap + 10)
        for a in s.event(f"m{k}", t + k * 100, ("new_identity", 60), ("new_resource", 60))
    ]
    pages = [(a.machine_id, a.detector) for a in out if a.is_page]
    assert pages == [(f"m{k}", "new_identity") for k in range(cap)] + [("*", "storm")]
    # The roll-up counts the new identities, not each finding of their incidents.
    window = s.storm.windows[0]
    assert (window.pages, window.held) == (cap + 10, 10)


def test_forged_events_of_many_machines_are_capped_and_the_held_ones_have_not_paged() -> None:
    """Forged events (a signing machine's events that do not verify) page through the same
    storm control, and a held one is not recorded as paged."""
    cfg = replace(DetectorConfig(), max_pages_per_minute=2)
    core = DetectionCore(cfg)
    store = MemoryStore()
    t = T0 + 10 * 60_000
    alerts = []
    for k in range(5):
        forged = replace(ev(f"signer{k}", t + k * 100), verification="bad_signature")
        alerts += core.observe(forged, store)
    pages = [a.machine_id for a in alerts if a.is_page]
    assert pages == ["signer0", "signer1", "*"], [(a.machine_id, a.severity) for a in alerts]
    for k in range(5):
        ep = stored_episode(store, f"signer{k}", "spoofed_identity")
        assert (ep.paged >= 0) == (k < 2), (k, ep)


def test_a_copy_of_the_core_has_storm_control_of_its_own() -> None:
    """Replay continues copies of one core (`copy.deepcopy`) for many runs: a copy's pages
    must be judged by its own storm control, not by the original's (which then held them
    back unseen: they went out as pages, recorded as not paged)."""
    cfg = replace(
        DetectorConfig(),
        warmup_s=60,
        warmup_events=1,
        mature_after_s=0,
        max_new_identity_pages_per_minute=2,
    )
    core = DetectionCore(cfg)
    store = MemoryStore()
    for k in range(5):
        core.observe(ev("known-svc", T0 + k * 30_000), store)
    t = T0 + 10 * 60_000
    assert [a.is_page for i in range(2) for a in core.observe(ev(f"new{i}x", t + i), store)] == [
        True,
        True,
    ]
    for run in range(3):
        copy_, copied_store = copy.deepcopy((core, store))
        out = copy_.observe(ev(f"late{run}x", t + 10), copied_store)
        held = [a for a in out if a.machine_id == f"late{run}x"]
        assert [(a.severity, a.is_page) for a in held] == [("low", False)], run
        ep = stored_episode(copied_store, f"late{run}x", "new_identity")
        assert ep.paged == -1


def test_silence_pages_of_punctuation_go_through_storm_control() -> None:
    """Machines that stop together on a partition that then gets no events are judged by
    punctuation (other partitions' clocks) alone: those pages are capped too (they were not)."""
    from tests.test_silence import CONFIG, DAY, HOUR, T0, Partition, poisson

    p = Partition(replace(CONFIG, max_pages_per_minute=1))
    stop = T0 + 4 * DAY + 10 * HOUR
    rhythm = poisson(random.Random(7), "x", 1.25, T0, stop)
    p.run([(t + k, f"consumer-{k}") for k in range(4) for t, _ in rhythm], stop + 2 * HOUR)
    silence = [a for a in p.alerts if a.detector == "silence"]
    assert sorted(a.machine_id for a in silence) == [f"consumer-{k}" for k in range(4)]
    assert [a.machine_id for a in p.alerts if a.is_page] == ["consumer-0", "*"]
    for a in silence[1:]:
        assert a.summary.startswith("(held back by storm control)")
        assert stored_episode(p.kv, a.machine_id, "silence").paged == -1
