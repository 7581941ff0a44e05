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

    def send(self, ts_ms: int, outcome: str = "SUCCESS") -> None:
        self.i += 1
        ev = AuditEvent(
            f"{self.machine_id}-{self.i}",
            ts_ms * 1000,
            self.machine_id,
            "oci://registry.internal/app/manifests/sha-1",
            "GET",
            outcome,
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

    def burst(
        self, start_ms: int, per_minute: int, minutes: int = 1, outcome: str = "SUCCESS"
    ) -> None:
        for m in range(minutes):
            for k in range(per_minute):
                self.send(start_ms + m * MIN + 1_000 + k * (55_000 // per_minute), outcome)

    def rate_pages(self) -> list[Alert]:
        return [a for a in self.alerts if a.detector == "access_rate" and a.is_page]


def pool(kv: MemoryStore, builders: int = 2) -> tuple[Runner, ...]:
    """Four runners of one pool, two hours of quiet but for a build (40 accesses a minute for
    five minutes) of each of the first `builders` in their first hour, the detectors'
    warm-up."""
    # Seeded with history (`mature_after_s=0`): a quiet runner's burst is judged from the
    # warm-up on, not recorded as the young deployment's learning (detectors.maturity).
    core = DetectionCore(DetectorConfig(rate_group_peak_ratio=1.5, mature_after_s=0))
    runners = tuple(Runner(core, f"ci-runner-0{i}", kv) for i in range(1, 5))
    for r in runners[:builders]:
        r.steady(T0, 30)
        r.burst(T0 + 30 * MIN, 40, minutes=5)
        r.steady(T0 + 35 * MIN, 85)
    for r in runners[builders:]:
        r.steady(T0, 120)
    return runners


def test_a_burst_its_peers_make_routinely_does_not_page() -> None:
    """Fails before issue 16's group peak: ci-runner-03's first build paged as access_rate,
    new to its own history though its pool builds at that level."""
    kv = MemoryStore()
    third = pool(kv)[2]
    third.steady(T0 + 120 * MIN, 10)
    third.burst(T0 + 130 * MIN, 40, minutes=3)
    assert not third.rate_pages()


def test_a_burst_only_one_peer_made_is_not_routine() -> None:
    """Fails before the group peak counted members (it was any member's): one member's
    unpaged burst (a scenario's rate burst on one pricing-api pod, judged against the
    group's peak while the group's peak was low) silenced the next pod's burst as high."""
    kv = MemoryStore()
    third = pool(kv, builders=1)[2]
    third.steady(T0 + 120 * MIN, 10)
    third.burst(T0 + 130 * MIN, 40, minutes=3)
    assert third.rate_pages()


def test_a_failure_spikes_retries_are_not_taught_to_the_group() -> None:
    """Fails before only intervals of a machine with no open page were taught (then only an
    open access_rate episode stopped it): a member's retry storm, paged as failure_ratio,
    made a burst that high routine for its group."""
    kv = MemoryStore()
    _, _, third, fourth = pool(kv, builders=1)
    # Retries below the access-rate gate (20 in a minute): only failure_ratio pages.
    fourth.steady(T0 + 120 * MIN, 5)
    fourth.burst(T0 + 125 * MIN, 18, minutes=3, outcome="FAILURE")
    fourth.steady(T0 + 128 * MIN, 5)
    assert any(a.detector == "failure_ratio" and a.is_page for a in fourth.alerts)
    assert not fourth.rate_pages()
    third.steady(T0 + 120 * MIN, 20)
    third.burst(T0 + 140 * MIN, 24, minutes=3)
    assert third.rate_pages()


def test_a_burst_well_above_the_groups_peaks_still_pages() -> None:
    kv = MemoryStore()
    third = pool(kv)[2]
    third.steady(T0 + 120 * MIN, 10)
    third.burst(T0 + 130 * MIN, 200)
    assert third.rate_pages()


def test_what_paged_is_not_taught_to_the_group() -> None:
    """Members' paged bursts do not raise the group's peak: a third member bursting as hard
    as two paged ones is paged too."""
    kv = MemoryStore()
    _, _, third, fourth = pool(kv)
    for i, r in enumerate((third, fourth)):
        r.steady(T0 + 120 * MIN, 10 + i * 5)
        r.burst(T0 + (130 + i * 5) * MIN, 200, minutes=2)
        r.steady(T0 + (132 + i * 5) * MIN, 10)
        assert r.rate_pages()
    first = Runner(third.core, "ci-runner-05", kv)
    first.steady(T0, 160)
    first.burst(T0 + 160 * MIN, 200)
    assert first.rate_pages()


def test_group_peak_decays_with_the_half_life_and_counts_other_members() -> None:
    t = T0 / 1000
    kv = MemoryStore()
    group = PeerGroup(kv, "ci-runner")
    group.note_peak("a", 40, t, WEEK_S)
    assert group.recent_peak(t, WEEK_S, "c") == 0.0  # one member is not routine
    group.note_peak("b", 60, t + WEEK_S, WEEK_S)
    # The second highest of the others, decayed: a's 40 a week on is 20.
    assert abs(group.recent_peak(t + WEEK_S, WEEK_S, "c") - 20) < 1e-4
    assert abs(group.recent_peak(t + 2 * WEEK_S, WEEK_S, "c") - 10) < 1e-4
    # A member's own peak does not count for it.
    assert group.recent_peak(t + WEEK_S, WEEK_S, "a") == 0.0
    # A lower peak of a member does not overwrite its higher one.
    group.note_peak("a", 10, t + 60, WEEK_S)
    assert abs(group.recent_peak(t + WEEK_S, WEEK_S, "c") - 20) < 1e-4
    # Bounded: only the highest members are kept, whoever writes.
    for i in range(20):
        group.note_peak(f"m{i}", 5 + i, t + WEEK_S, WEEK_S)
    stored = orjson.loads(kv.get(b"gp", "ci-runner") or b"{}")
    assert len(stored) <= 4
    assert "b" in stored


def test_the_peer_table_merges_group_peaks_per_member_in_any_order() -> None:
    """Two writers (partitions, workers) each noting some members: the merge keeps each
    member's highest and the highest members, whatever the order or grouping, and what it
    keeps answers as one writer that saw every note would."""
    import itertools

    from detectors.peers import GROUP_KINDS
    from streams.runtime.peers import _merge

    assert b"gp" in GROUP_KINDS
    t = T0 / 1000
    notes = [("a", 40, 0), ("b", 25, 1), ("c", 90, 2), ("a", 70, 3), ("d", 30, 4), ("e", 12, 5)]
    one = MemoryStore()
    for m, n, k in notes:
        PeerGroup(one, "g").note_peak(m, n, t + k * 3600, WEEK_S)
    writers = [MemoryStore() for _ in range(3)]
    for i, (m, n, k) in enumerate(notes):
        PeerGroup(writers[i % 3], "g").note_peak(m, n, t + k * 3600, WEEK_S)
    values = [w.get(b"gp", "g") or b"{}" for w in writers]
    merged = {_merge(b"gp", list(p)) for p in itertools.permutations(values)}
    merged.add(_merge(b"gp", [_merge(b"gp", values[:2]), values[2]]))
    assert len(merged) == 1
    table = MemoryStore()
    table.set(b"gp", "g", merged.pop())
    for member in ("a", "c", "z"):
        for at in (t, t + 3 * WEEK_S):
            want = PeerGroup(one, "g").recent_peak(at, WEEK_S, member)
            assert abs(PeerGroup(table, "g").recent_peak(at, WEEK_S, member) - want) < 1e-6
