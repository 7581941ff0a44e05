"""Capacity (bounded machines per store) and storm control (bounded pages per minute)."""

from __future__ import annotations

from dataclasses import replace

from detectors.base import Finding
from detectors.core import MACHINE, DetectionCore, DetectorConfig
from detectors.incidents import Incidents, StormControl
from detectors.state import MachineState
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


def held_storm(cap: int) -> tuple[StormControl, Incidents, DetectorConfig]:
    cfg = replace(DetectorConfig(), max_pages_per_minute=cap)
    return StormControl(), Incidents(cfg.version()), cfg


def write(
    storm: StormControl,
    incidents: Incidents,
    cfg: DetectorConfig,
    states: dict[str, MachineState],
    machine: str,
    ts_ms: int,
    score: float,
) -> list[Alert]:
    """One finding of `machine`'s exfiltration-like detector through incidents, then storm
    control, as the core writes it."""
    state = states.setdefault(machine, MachineState.new(ts_ms))
    found = Finding("access_rate", score, f"{machine}: many reads", {"n": 1}, {"n": 0})
    alert = incidents.episode(cfg, ev(machine, ts_ms), "g", state, found)
    if alert is None:
        return []
    return storm.apply(cfg, cfg.version(), ts_ms, [alert], 0, incidents)


def test_a_page_held_back_by_storm_control_has_not_paged() -> None:
    """Observed: a held-back page still counted as paged, so its alert never paged after the
    storm (later states were `updated`), and a rise in severity said `escalated` to an
    on-call person who had seen nothing of it."""
    storm, incidents, cfg = held_storm(cap=2)
    states: dict[str, MachineState] = {}
    t = T0 + 5 * 60_000
    first = [
        a for m in ("m1", "m2", "m3", "m4") for a in write(storm, incidents, cfg, states, m, t, 60)
    ]
    by = {(a.machine_id, a.detector): a for a in first}
    assert [m for m in ("m1", "m2", "m3", "m4") if by[(m, "access_rate")].is_page] == ["m1", "m2"]
    assert by[("*", "storm")].is_page
    for m in ("m3", "m4"):
        held = by[(m, "access_rate")]
        assert held.severity == "low" and held.summary.startswith("(held back by storm control)")
        assert states[m].episodes["access_rate"].paged == -1
        assert states[m].episodes["access_rate"].incident_paged == -1
    assert incidents.pages == {}
    # After the storm minute: m3 goes on at the same severity, m4 rises; m1 goes on as well.
    later = t + 2 * 60_000
    m3 = write(storm, incidents, cfg, states, "m3", later, 60)
    m4 = write(storm, incidents, cfg, states, "m4", later, 90)
    m1 = write(storm, incidents, cfg, states, "m1", later, 60)
    # The next minute's first alert carries the storm's final count (as before).
    assert [(a.detector, a.status, a.is_page) for a in m3[:1]] == [("storm", "updated", False)]
    assert [(a.status, a.severity, a.is_page) for a in m3[1:]] == [("opened", "medium", True)]
    assert [(a.status, a.severity, a.is_page) for a in m4] == [("opened", "critical", True)]
    # m1 paged in the storm: its update is no page.
    assert [(a.status, a.is_page) for a in m1] == [("updated", False)]


def test_a_late_events_page_counts_in_the_current_storm_minute() -> None:
    """A page stamped a minute earlier than the storm's does not start the count again."""
    storm, incidents, cfg = held_storm(cap=1)
    states: dict[str, MachineState] = {}
    t = T0 + 5 * 60_000
    out = write(storm, incidents, cfg, states, "m1", t, 60)
    out += write(storm, incidents, cfg, states, "m2", t - 60_000, 60)
    out += write(storm, incidents, cfg, states, "m3", t + 1, 60)
    pages = [(a.machine_id, a.detector) for a in out if a.is_page]
    assert pages == [("m1", "access_rate"), ("*", "storm")]
