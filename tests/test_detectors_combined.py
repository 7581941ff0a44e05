"""Off-hours bursts and the combined (HalfSpaceTrees) score, through the detection core."""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest
from river.anomaly import HalfSpaceTrees

from detectors.combined import (
    _LIMITS,
    COMBINED,
    FEATURES,
    CombinedModels,
    CombinedParams,
    MemoryKV,
    features,
)
from detectors.core import DetectionCore, DetectorConfig
from detectors.rate import RateParams, poisson_tail
from schemas.event import AuditEvent, format_rfc3339_ms, parse_timestamp_us
from streams.processor import MemoryStore, SplitStore
from tests.test_detectors_peers import MIN, T0, Client, pages

HOUR = 60 * MIN
DAY = 24 * HOUR


@pytest.mark.parametrize(("k", "mu"), [(1, 0.5), (2, 0.054), (3, 0.084), (5, 1.0), (12, 3.0)])
def test_poisson_tail_matches_one_minus_cdf(k: int, mu: float) -> None:
    cdf = sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(k))
    assert poisson_tail(k, mu) == pytest.approx(1.0 - cdf, rel=1e-9)


def test_poisson_tail_edges() -> None:
    assert poisson_tail(0, 2.0) == 1.0
    assert poisson_tail(3, 0.0) == 0.0
    assert 0.0 < poisson_tail(40, 0.01) < 1e-100  # the far tail is not rounded to zero


# --- off hours --------------------------------------------------------------------------

OFFICE = DetectorConfig(warmup_s=3600, warmup_events=50, combined=None)


def office_day(c: Client, day: int, per_hour: int = 60, night: tuple[int, ...] = ()) -> None:
    """Busy 08-18 UTC; `night` lists the minutes after midnight of stray night accesses."""
    rng = random.Random(day)
    for h in range(8, 18):
        for j in range(per_hour):
            c.send(T0 + day * DAY + h * HOUR + j * HOUR // per_hour + rng.randrange(1000))
    for m in night:
        c.send(T0 + day * DAY + m * MIN)


def office_machine(days: int = 3) -> Client:
    c = Client(DetectionCore(OFFICE), "reports-admin")
    for d in range(days):
        office_day(c, d, night=(20 * 60 + 7, 22 * 60 + 41))
    return c


def test_office_tool_at_its_daytime_pace_at_night_pages_within_two_minutes() -> None:
    c = office_machine()
    c.alerts.clear()
    start = T0 + 3 * DAY + 21 * HOUR + 5_000
    for j in range(30):  # one access a minute: its daytime pace
        c.send(start + j * MIN)
    found = [a for a in pages(c.alerts) if a.detector == "off_hours"]
    assert found, "a night session at the daytime pace must page"
    assert found[0].status == "opened"
    assert found[0].event_time <= format_rfc3339_ms(start + 2 * MIN)
    assert "expected" in found[0].summary


def test_stray_night_accesses_do_not_page() -> None:
    c = office_machine()
    c.alerts.clear()
    office_day(c, 3, night=(20 * 60 + 3, 20 * 60 + 30, 23 * 60 + 10))
    assert [a for a in c.alerts if a.detector == "off_hours"] == []


def _night_session(trickle: int, night: tuple[int, ...]) -> int:
    """Ms from the start of a night session (one access per 35 s) to its off-hours page, after
    `trickle` accesses 4 minutes apart (one run with the session: no 5-minute gap)."""
    c = Client(DetectionCore(OFFICE), "reports-admin")
    for d in range(3):
        office_day(c, d, night=night)
    c.alerts.clear()
    start = T0 + 3 * DAY + 20 * HOUR + 35 * MIN
    for j in range(trickle):
        c.send(start + j * 4 * MIN)
    session = start + trickle * 4 * MIN
    for j in range(20):
        c.send(session + j * 35_000)
    found = [a for a in pages(c.alerts) if a.detector == "off_hours"]
    assert found
    return parse_timestamp_us(found[0].event_time) // 1000 - session


def test_a_trickle_before_a_night_session_does_not_delay_its_page() -> None:
    # Ten accesses in the evening on earlier days: a rate the trickle alone stays within.
    evening = tuple(20 * 60 + 3 * i for i in range(10))
    alone = _night_session(0, evening)
    # Judged from the run's first access only, the trickle's 8 minutes dilute the session
    # (one access later); each recent access is also tried as the burst's start. Up to the
    # ten the evening had on earlier days the run is the machine's schedule (issue 16), and
    # the trickle counts toward leaving it: never later.
    assert _night_session(3, evening) <= alone


def test_a_session_across_a_window_boundary_is_judged_against_the_night_before_it() -> None:
    c = office_machine()
    c.alerts.clear()
    # Two accesses before a window boundary, the rest after it: the session is one run, and
    # the closed window (the session's own accesses) is not "the most seen at this time".
    start = T0 + 3 * DAY + 21 * HOUR + 29 * MIN + 10_000
    for j in range(10):
        c.send(start + j * 45_000)
    found = [a for a in pages(c.alerts) if a.detector == "off_hours"]
    assert found
    assert found[0].event_time <= format_rfc3339_ms(start + 2 * MIN)


def test_a_run_that_reaches_a_busy_time_of_day_is_judged_there() -> None:
    c = Client(DetectionCore(OFFICE), "reports-admin")
    for d in range(3):
        # A nightly batch of 16 accesses from 22:35: this hour is busy in bursts.
        office_day(c, d, night=tuple(22 * 60 + 35 + i for i in range(16)))
    c.alerts.clear()
    # Starts at 21:27, where the night is quiet, and goes on into the window that neighbours
    # the batch's; at its pace the burst test would page only after the boundary.
    start = T0 + 3 * DAY + 21 * HOUR + 27 * MIN
    for j in range(8):
        c.send(start + j * 100_000)
    assert [a for a in pages(c.alerts) if a.detector == "off_hours"] == []


def test_a_late_access_does_not_shorten_a_burst() -> None:
    c = office_machine()
    c.alerts.clear()
    start = T0 + 3 * DAY + 20 * HOUR + 56 * MIN
    for m in (0, 5, 9, 13):  # not yet unlikely enough to page
        c.send(start + m * MIN)
    assert [a for a in pages(c.alerts) if a.detector == "off_hours"] == []
    # Delivered after the others (another partition, a retry): it happened at 21:00:30,
    # before the access at 21:01 that the scan tries as a start.
    c.send(start + 4 * MIN + 30_000)
    assert [a for a in pages(c.alerts) if a.detector == "off_hours"] == []


def test_a_run_stored_in_an_older_layout_is_migrated() -> None:
    c = office_machine()
    c.alerts.clear()
    start = T0 + 3 * DAY + 21 * HOUR + 5_000
    c.send(start)
    assert c.state is not None
    # Before the run kept its busiest-window snapshot and latest accesses: 7 fields.
    c.state.off = c.state.off[:7]
    for j in range(1, 30):
        c.send(start + j * MIN)
    found = [a for a in pages(c.alerts) if a.detector == "off_hours"]
    assert found and found[0].event_time <= format_rfc3339_ms(start + 3 * MIN)


def test_slow_night_activity_still_pages_by_the_window_rule() -> None:
    c = office_machine()
    c.alerts.clear()
    start = T0 + 3 * DAY + 1 * HOUR
    for j in range(12):  # one every 2.5 minutes: too slow for the burst test at first
        c.send(start + j * 150_000)
    found = [a for a in pages(c.alerts) if a.detector == "off_hours"]
    assert found


# --- the combined score ------------------------------------------------------------------

P = CombinedParams(window_size=20, min_events=5, page_at=0.6)


def test_model_state_round_trips_through_the_store() -> None:
    rng = random.Random(1)
    xs = [
        dict(
            zip(
                ("rate", "new_resources", "failures", "writes", "new_operations"),
                (rng.random() * 0.2 + 0.4, 0.0, rng.random() * 0.05, 0.1, 0.0),
                strict=True,
            )
        )
        for _ in range(90)
    ]
    straight, kv = CombinedModels(P), MemoryKV()
    scores = [straight.score_and_learn(kv, "g", x) for x in xs]
    # A second worker that takes the store over part-way (fresh cache) scores the same.
    kv2 = MemoryKV()
    first = CombinedModels(P)
    for x in xs[:50]:
        first.score_and_learn(kv2, "g", x)
    taken_over = CombinedModels(P)
    rest = [taken_over.score_and_learn(kv2, "g", x) for x in xs[50:]]
    assert rest == scores[50:]
    assert scores[:20] == [None] * 20  # no reference window yet
    assert all(s is not None for s in scores[20:])
    blob = kv2.get(COMBINED, "g")
    assert blob is not None and len(blob) < 4096


def _first_layout(blob: bytes, nodes: int) -> bytes:
    """The same masses in the layout stores written before compression: (r, l) u2 pairs."""
    raw = zlib.decompress(blob[12:])
    width = len(raw) // (2 * nodes)
    masses = np.frombuffer(raw, dtype="u1" if width == 1 else "<u2").astype("<u2")
    pairs = np.empty(2 * nodes, dtype="<u2")
    pairs[0::2], pairs[1::2] = masses[:nodes], masses[nodes:]
    return blob[:12] + pairs.tobytes()


@pytest.mark.parametrize("window_size", [20, 300])
def test_masses_are_compressed_and_older_stores_still_load(window_size: int) -> None:
    p = CombinedParams(window_size=window_size, min_events=5)
    rng = random.Random(3)
    xs = [features(rng.randrange(5, 40), 10.0, rng.randrange(3), 0.0, 1, 0, 0) for _ in range(700)]
    models, kv = CombinedModels(p), MemoryKV()
    for x in xs[:600]:
        models.score_and_learn(kv, "g", x)
    blob = kv.get(COMBINED, "g")
    assert blob is not None
    nodes = p.n_trees * (2 ** (p.height + 1) - 1)
    assert len(blob) < 2 * nodes  # under one byte per mass, where the first layout took four
    old_kv = MemoryKV()
    old_kv.set(COMBINED, "g", _first_layout(blob, nodes))
    old, new = CombinedModels(p), CombinedModels(p)
    assert [old.score_and_learn(old_kv, "g", x) for x in xs[600:]] == [
        new.score_and_learn(kv, "g", x) for x in xs[600:]
    ]


def test_stored_masses_are_the_models_at_every_step_across_window_closes() -> None:
    # The reference masses are read once per window; what is stored must still be exactly
    # the model's masses after every learn, window closes included.
    p = CombinedParams(window_size=20, min_events=5)
    rng = random.Random(5)
    models, kv = CombinedModels(p), MemoryKV()
    for _ in range(75):
        models.score_and_learn(kv, "g", features(rng.randrange(1, 40), 10.0, 0, 0.0, 1, 0, 0))
        blob = kv.get(COMBINED, "g")
        assert blob is not None
        model = models._cache["g"][1]
        raw = np.frombuffer(zlib.decompress(blob[12:]), dtype="u1").tolist()
        n = model.trees.n
        assert raw[:n] == model.r_mass
        assert raw[n:] == model.l_mass


def test_a_stale_cached_model_is_reloaded_from_the_store() -> None:
    xs = [features(10, 10.0, 0, 0.0, 1, 0, 0) for _ in range(30)]
    models, kv = CombinedModels(P), MemoryKV()
    for x in xs:
        models.score_and_learn(kv, "g", x)
    saved = kv.get(COMBINED, "g")
    assert saved is not None
    odd = features(60, 10.0, 20, 0.0, 30, 5, 2)
    models.score_and_learn(kv, "g", odd)
    kv.set(COMBINED, "g", saved)  # the transaction that learned `odd` was rolled back
    fresh, fresh_kv = CombinedModels(P), MemoryKV()
    fresh_kv.set(COMBINED, "g", saved)
    assert models.score_and_learn(kv, "g", odd) == fresh.score_and_learn(fresh_kv, "g", odd)


def test_features_are_scaled_to_the_unit_interval() -> None:
    x = features(
        count=400,
        expected=2.0,
        failures=390,
        learned_failure_ratio=0.0,
        writes=400,
        new_resources=10_000,
        new_operations=9,
    )
    assert all(0.0 <= v <= 1.0 for v in x.values())
    calm = features(10, 10.0, 0, 0.0, 0, 0, 0)
    assert calm["new_resources"] == calm["failures"] == calm["new_operations"] == 0.0
    assert calm["rate"] == pytest.approx(3 / 8)


COMBINED_CONFIG = DetectorConfig(
    rate=RateParams(min_count=10**9),  # keep single rules quiet: the point is what they miss
    warmup_s=3600,
    warmup_events=50,
    combined=P,
    failure_min_count=10**9,
)


TABLES = [f"postgres://orders-db/public.t{i}" for i in range(3)]


def steady(c: Client, minutes: range, rng: random.Random) -> None:
    """A reader of three tables that updates one row now and then and rarely fails."""
    for m in minutes:
        for j in range(rng.randrange(2, 5)):
            op = "UPDATE" if rng.random() < 0.02 else "SELECT"
            outcome = "DENIED" if rng.random() < 0.01 else "SUCCESS"
            c.send(T0 + m * MIN + j * 13_000, TABLES[j % 3], op, outcome)


def test_several_small_shifts_together_page_as_combined() -> None:
    rng = random.Random(3)
    c = Client(DetectionCore(COMBINED_CONFIG), "billing-worker", MemoryStore())
    steady(c, range(12 * 60), rng)
    assert [a for a in pages(c.alerts) if a.detector == "combined"] == []
    # Ten minutes of a leaked credential in slow use: three times the pace, a third of it
    # writes, a quarter denied; known tables and operations only, under every single rule.
    start = 12 * 60
    for m in range(start, start + 10):
        for j in range(10):
            op = "UPDATE" if j % 3 == 0 else "SELECT"
            outcome = "DENIED" if j % 4 == 0 else "SUCCESS"
            c.send(T0 + m * MIN + j * 5_000, TABLES[j % 3], op, outcome)
    steady(c, range(start + 10, start + 20), rng)
    found = [a for a in pages(c.alerts) if a.detector == "combined"]
    assert found, [(a.detector, a.severity) for a in c.alerts]
    assert {a.detector for a in pages(c.alerts)} == {"combined"}
    score = found[0].observed["combined_score"]
    assert found[0].hint and isinstance(score, float) and score >= P.page_at
    assert "unusual as a whole" in found[0].summary
    # Anchored on the unusual window itself, not on the next window's first event.
    assert found[0].event_time < format_rfc3339_ms(T0 + (start + 10) * MIN)


def test_combined_can_be_switched_off() -> None:
    cfg = DetectorConfig(combined=None)
    c = Client(DetectionCore(cfg), "m", MemoryStore())
    c.send(T0)
    c.send(T0 + 10 * MIN)
    assert c.state is not None and c.state.win == []


def test_windows_too_quiet_to_judge_are_not_learned() -> None:
    kv = MemoryStore()
    c = Client(DetectionCore(COMBINED_CONFIG), "cron-job", kv)
    # One access every 7 minutes: every window closes with a single event.
    for i in range(300):
        c.send(T0 + i * 7 * MIN)
    assert kv.get(COMBINED, "cron-job") is None
    # A window busy enough to be judged is learned.
    for j in range(P.min_events):
        c.send(T0 + 300 * 7 * MIN + j * 10_000)
    c.send(T0 + 301 * 7 * MIN)
    assert kv.get(COMBINED, "cron-job") is not None


def test_a_groups_model_scores_and_learns_as_rivers_half_space_trees() -> None:
    # The models walk river's trees as flat lists: every score and every mass must be
    # river's own, across window pivots, for a model built from scratch.
    p = CombinedParams(window_size=20, min_events=5)
    rng = random.Random(11)
    xs = [
        features(rng.randrange(1, 60), 10.0, rng.randrange(4), 0.05, rng.randrange(3), 0, 0)
        for _ in range(90)
    ]
    xs += [features(200, 2.0, 50, 0.0, 40, rng.randrange(9), rng.randrange(4)) for _ in range(5)]
    river_hst = HalfSpaceTrees(
        n_trees=p.n_trees,
        height=p.height,
        window_size=p.window_size,
        limits=dict(_LIMITS),
        seed=p.seed,
    )
    river_hst.learn_one(dict.fromkeys(FEATURES, 0.5))
    for node in (n for tree in river_hst._tree_nodes for n in tree):
        node.l_mass = node.r_mass = 0
    river_hst.counter = 0
    models, kv = CombinedModels(p), MemoryKV()
    for x in xs:
        expected = None if river_hst._first_window else float(river_hst.score_one(x))
        assert models.score_and_learn(kv, "g", x) == expected
        river_hst.learn_one(x)
        model = models._cache["g"][1]
        nodes = [n for tree in river_hst._tree_nodes for n in tree]
        assert model.r_mass == [n.r_mass for n in nodes]
        assert model.l_mass == [n.l_mass for n in nodes]
    assert not river_hst._first_window


def test_every_groups_model_walks_one_copy_of_the_trees() -> None:
    # A worker meets hundreds of groups on its first windows: a new group's model is its
    # masses only, the drawn trees shared, and its scores are those of a model alone.
    p = CombinedParams(window_size=20, min_events=5)
    rng = random.Random(11)
    xs = [features(rng.randrange(5, 40), 10.0, rng.randrange(3), 0.0, 1, 0, 0) for _ in range(70)]
    models, kv = CombinedModels(p), MemoryKV()
    for x in xs[:30]:
        models.score_and_learn(kv, "first", x)
    copied = [models.score_and_learn(kv, "second", x) for x in xs]
    assert models._cache["first"][1].trees is models._cache["second"][1].trees
    built, kv_built = CombinedModels(p), MemoryKV()
    alone = [built.score_and_learn(kv_built, "second", x) for x in xs]
    assert copied == alone
    assert kv.get(COMBINED, "second") == kv_built.get(COMBINED, "second")
    # The groups' masses are their own: learning one did not move the other's.
    again, kv_again = CombinedModels(p), MemoryKV()
    for x in xs[:30]:
        again.score_and_learn(kv_again, "first", x)
    assert kv.get(COMBINED, "first") == kv_again.get(COMBINED, "first")


def test_deferred_models_are_written_only_by_a_flush_as_writing_through_would() -> None:
    rng = random.Random(3)
    xs = [features(rng.randrange(5, 40), 10.0, rng.randrange(3), 0.0, 1, 0, 0) for _ in range(250)]
    through, through_kv = CombinedModels(P), MemoryKV()
    deferred, kv = CombinedModels(P), MemoryKV()
    deferred.deferred = True
    for i, x in enumerate(xs):
        group = "ab"[i % 2]
        assert deferred.score_and_learn(kv, group, x) == through.score_and_learn(
            through_kv, group, x
        )
        if i == 120:
            # A flush in between (a commit) writes each learned model once.
            assert deferred.flush() == 2
            assert kv.data == through_kv.data
    # Since that flush the store holds what it wrote: one dump per group and flush, not one
    # per judged window.
    assert kv.data != through_kv.data
    assert deferred.flush() == 2
    assert kv.data == through_kv.data
    assert deferred.flush() == 0


def test_a_deferred_model_leaving_the_cache_is_written_first() -> None:
    xs = [features(10 + i % 7, 10.0, 0, 0.0, 1, 0, 0) for i in range(40)]
    through, through_kv = CombinedModels(P, cache_size=1), MemoryKV()
    deferred, kv = CombinedModels(P, cache_size=1), MemoryKV()
    deferred.deferred = True
    for i, x in enumerate(xs):
        group = "abc"[i % 3]
        assert deferred.score_and_learn(kv, group, x) == through.score_and_learn(
            through_kv, group, x
        )
    deferred.flush()
    assert kv.data == through_kv.data


def test_a_core_with_a_working_copy_keeps_group_models_live_until_it_flushes() -> None:
    """Through the core: judged windows leave the shared store alone until a flush, and a
    dropped partition writes what the group models learned where a rewind reloads them."""
    core = DetectionCore()
    core.keep_working_copy(100)
    shared = MemoryStore()
    store = SplitStore(MemoryStore(), shared)
    t = T0
    for i in range(200):
        t += 20_000
        core.observe(
            AuditEvent(
                event_id=f"e{i}",
                ts_us=t * 1000,
                machine_id="orders-api-1",
                resource="postgres://db/public.orders",
                operation="SELECT",
                outcome="SUCCESS",
            ),
            store,
            0,
        )
    assert not shared.data.get(COMBINED)
    core.forget_partition(0)
    assert set(shared.data[COMBINED]) == {"orders-api"}
