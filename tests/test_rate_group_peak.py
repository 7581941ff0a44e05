"""The access-rate detector judges a member's burst against its peer group's recent peaks too
(issue 16: CI runners' builds paged in the README example). In-process, no Kafka."""

from __future__ import annotations

import orjson

from detectors.config import DetectorConfig
from detectors.core import DetectionCore, MachineState
from detectors.peers import PeerGroup
from schemas.alert import Alert
from schemas.event import AuditEvent
from streams.processor import MemoryStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 60 * MIN
WEEK_S = 7 * 86_400


class Runner:
    """One machine's events through a core and a shared store, its state serialised between
    events as the processor does."""

    def __init__(self, core: DetectionCore, machine_id: str, kv: MemoryStore) -> None:
        self.core, self.machine_id, self.kv = core, machine_id, kv
        self.state: MachineState | None = None
        self.i = 0
        self.alerts: list[Alert] = []

    def send(self, ts_ms: int) -> None:
        self.i += 1
        ev = AuditEvent(
            f"{self.machine_id}-{self.i}",
            ts_ms * 1000,
            self.machine_id,
            "oci://registry.internal/app/manifests/sha-1",
            "GET",
            "SUCCESS",
            None,
            None,
            None,
            {},
        )
        state = self.state
        if state is not None:
            state = MachineState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
        self.state, alerts = self.core.process(ev, state, self.kv)
        self.alerts.extend(alerts)

    def steady(self, start_ms: int, minutes: int) -> None:
        """One access a minute: what a runner does between builds."""
        for m in range(minutes):
            self.send(start_ms + m * MIN + 7_000)

    def burst(self, start_ms: int, per_minute: int, minutes: int = 1) -> None:
        for m in range(minutes):
            for k in range(per_minute):
                self.send(start_ms + m * MIN + 1_000 + k * (55_000 // per_minute))

    def rate_pages(self) -> list[Alert]:
        return [a for a in self.alerts if a.detector == "access_rate" and a.is_page]


def pool(kv: MemoryStore) -> tuple[Runner, Runner, Runner]:
    """Three runners of one pool, two hours of quiet but for a build of the first (40 accesses
    a minute for five minutes) in its first hour, the detectors' warm-up."""
    core = DetectionCore(DetectorConfig(rate_group_peak_ratio=1.5))
    runners = (
        Runner(core, "ci-runner-01", kv),
        Runner(core, "ci-runner-02", kv),
        Runner(core, "ci-runner-03", kv),
    )
    runners[0].steady(T0, 30)
    runners[0].burst(T0 + 30 * MIN, 40, minutes=5)
    runners[0].steady(T0 + 35 * MIN, 85)
    for r in runners[1:]:
        r.steady(T0, 120)
    return runners


def test_a_burst_its_peers_make_routinely_does_not_page() -> None:
    """Fails before issue 16's group peak: ci-runner-02's first build paged as access_rate,
    new to its own history though its pool builds at that level."""
    kv = MemoryStore()
    _, second, _ = pool(kv)
    second.steady(T0 + 120 * MIN, 10)
    second.burst(T0 + 130 * MIN, 40, minutes=3)
    assert not second.rate_pages()


def test_a_burst_well_above_the_groups_peaks_still_pages() -> None:
    kv = MemoryStore()
    _, second, _ = pool(kv)
    second.steady(T0 + 120 * MIN, 10)
    second.burst(T0 + 130 * MIN, 200)
    assert second.rate_pages()


def test_what_paged_is_not_taught_to_the_group() -> None:
    """A member's paged burst does not raise the group's peak: a second member bursting as
    hard is paged too."""
    kv = MemoryStore()
    _, second, third = pool(kv)
    second.steady(T0 + 120 * MIN, 10)
    second.burst(T0 + 130 * MIN, 200, minutes=2)
    second.steady(T0 + 132 * MIN, 10)
    assert second.rate_pages()
    third.steady(T0 + 120 * MIN, 30)
    third.burst(T0 + 150 * MIN, 200)
    assert third.rate_pages()


def test_group_peak_decays_with_the_half_life_and_merges_by_maximum() -> None:
    t = T0 / 1000
    a, b = MemoryStore(), MemoryStore()
    PeerGroup(a, "ci-runner").note_peak(40, t, WEEK_S)
    PeerGroup(b, "ci-runner").note_peak(60, t + 2 * WEEK_S, WEEK_S)
    assert abs(PeerGroup(a, "ci-runner").recent_peak(t + WEEK_S, WEEK_S) - 20) < 1e-4
    # Two writers' records (two partitions, two workers): the plain maximum of the stored
    # values is the larger of the two decayed peaks, at any time.
    stored = max(float(s.get(b"gp", "ci-runner") or b"0") for s in (a, b))
    merged = MemoryStore()
    merged.set(b"gp", "ci-runner", repr(stored).encode())
    for dt in (2 * WEEK_S, 5 * WEEK_S):
        want = max(40 * 0.5 ** (dt / WEEK_S), 60 * 0.5 ** ((dt - 2 * WEEK_S) / WEEK_S))
        assert abs(PeerGroup(merged, "ci-runner").recent_peak(t + dt, WEEK_S) - want) < 1e-3
    # A lower peak does not overwrite a higher one.
    PeerGroup(a, "ci-runner").note_peak(10, t + 60, WEEK_S)
    assert abs(PeerGroup(a, "ci-runner").recent_peak(t, WEEK_S) - 40) < 1e-3


def test_the_peer_table_merges_group_peaks_by_maximum() -> None:
    from detectors.peers import GROUP_KINDS
    from streams.runtime.peers import _merge

    assert b"gp" in GROUP_KINDS
    assert float(_merge(b"gp", [b"2901.5", b"2903.25", b"2902.0"])) == 2903.25
