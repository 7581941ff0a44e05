"""Behaviour tests of the access-rate baseline: time of day, spikes, quiet, robust learning,
state, and the river-style series interface. No NAB run here (that is `bench/nab.py`)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from detectors.rate import (
    RateBaseline,
    RateParams,
    SeriesBaseline,
    _Model,
    _slot_steps,
    _Tail,
    _zero_plan,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday
MIN = 60_000
DAY = 1440  # one-minute intervals per day


def day_night(minute: int) -> int:
    """Busy 09:00-17:00 UTC (100 a minute), quiet otherwise (2 a minute)."""
    return 100 if 9 * 60 <= minute % DAY < 17 * 60 else 2


def run(
    b: RateBaseline, start: int, stop: int, count: int | Callable[[int], int] = day_night
) -> list[float]:
    """One observe per interval carrying the whole interval's count; returns the scores."""
    f = count if callable(count) else (lambda _m: count)
    return [b.observe(T0 + i * MIN, weight=f(i)) for i in range(start, stop) if f(i)]


@pytest.fixture(scope="module")
def learned_state() -> list[object]:
    b = RateBaseline(RateParams())
    run(b, 0, 5 * DAY)
    return b.state()


def test_busy_day_quiet_night_does_not_alarm_after_learning(learned_state: list[object]) -> None:
    b = RateBaseline(RateParams(), learned_state)
    scores = run(b, 5 * DAY, 6 * DAY)  # a whole day: the morning ramp, the day, the night
    assert max(scores) == 0.0
    night = b.expected_at(T0 + (6 * DAY + 3 * 60) * MIN)  # 03:00
    noon = b.expected_at(T0 + (6 * DAY + 12 * 60) * MIN)
    assert night < 10
    assert noon > 60


def test_night_burst_at_daytime_level_scores(learned_state: list[object]) -> None:
    b = RateBaseline(RateParams(), learned_state)
    run(b, 5 * DAY, 5 * DAY + 2 * 60)  # up to 02:00, normal
    assert b.observe(T0 + (5 * DAY + 2 * 60) * MIN, weight=100) >= 50.0
    # The same count at noon is just the usual daytime traffic.
    b2 = RateBaseline(RateParams(), learned_state)
    assert max(run(b2, 5 * DAY, 5 * DAY + 12 * 60 + 1)) == 0.0


def test_spike_scores_and_grows_with_ratio() -> None:
    b = RateBaseline(RateParams())
    assert max(run(b, 0, 120, 10)) == 0.0
    assert b.warm
    s1 = b.observe(T0 + 120 * MIN, weight=60)
    b2 = RateBaseline(RateParams(), b.state())
    s2 = b2.observe(T0 + 120 * MIN, weight=500)  # state() holds the 60 already counted
    assert 50.0 <= s1 < s2 <= 100.0


def test_quiet_scores_for_a_busy_series_going_silent() -> None:
    b = RateBaseline(RateParams())
    run(b, 0, 180, 100)
    last = T0 + 179 * MIN
    assert b.quiet_score(last + 30_000) == 0.0  # the current minute is still open
    assert b.quiet_score(last + 3 * MIN) >= 50.0  # two whole minutes without an event
    state = b.state()
    b.quiet_score(last + 10 * MIN)
    assert b.state() == state  # it learns nothing


def test_quiet_night_is_not_quiet_alarm(learned_state: list[object]) -> None:
    b = RateBaseline(RateParams(), learned_state)
    run(b, 5 * DAY, 5 * DAY + 17 * 60)  # through the working day
    # 17:00-17:05: the usual evening drop to 2 a minute; 2 missing minutes at night is nothing.
    assert b.quiet_score(T0 + (5 * DAY + 17 * 60 + 2) * MIN) == 0.0
    # The same silence at noon of a working day is.
    b2 = RateBaseline(RateParams(), learned_state)
    run(b2, 5 * DAY, 5 * DAY + 12 * 60)
    assert b2.quiet_score(T0 + (5 * DAY + 12 * 60 + 3) * MIN) >= 50.0


def test_winsorised_learning_ignores_bursts_but_follows_a_new_level() -> None:
    b = RateBaseline(RateParams())
    run(b, 0, 120, 10)
    before = b.expected()
    b.observe(T0 + 120 * MIN, weight=5000)
    run(b, 121, 123, 10)
    assert b.expected() < before * 1.2
    # A level that holds for adapt_after intervals is the new normal.
    run(b, 123, 123 + RateParams().adapt_after + 5, 60)
    assert b.expected() == pytest.approx(60, rel=0.2)
    assert max(run(b, 200, 260, 60)) == 0.0


def test_state_round_trip_with_profile(learned_state: list[object]) -> None:
    a = RateBaseline(RateParams(), learned_state)
    b = RateBaseline(RateParams(), orjson.loads(orjson.dumps(learned_state)))
    counts = [2, 3, 100, 2, 0, 0, 40, 2]
    sa = [a.observe(T0 + (5 * DAY + i) * MIN, weight=c) for i, c in enumerate(counts) if c]
    sb = [b.observe(T0 + (5 * DAY + i) * MIN, weight=c) for i, c in enumerate(counts) if c]
    assert sa == pytest.approx(sb, abs=1e-3)
    assert max(sa) >= 50.0
    assert a.state() == pytest.approx(b.state(), abs=1e-5)


def test_state_is_small_and_bounded() -> None:
    b = RateBaseline(RateParams())
    sizes = []
    for day in range(30):
        run(b, day * DAY, (day + 1) * DAY)
        sizes.append(len(json.dumps(b.state())))
    # ~900 bytes of JSON whatever the history: a fixed layout of numbers written exactly.
    assert max(sizes) <= 1000


def test_state_round_trip_is_exact() -> None:
    # A worker keeps the model live between checkpoints and a restarted one reloads it: both
    # must go on to score alike, so load(dump) may not lose a bit.
    b = RateBaseline(RateParams())
    rnd = random.Random(5)
    t = 0
    for _ in range(20_000):
        t += int(rnd.expovariate(1 / 40_000))
        b.observe(t)
    again = RateBaseline(RateParams(), orjson.loads(orjson.dumps(b.state())))
    for name in _Model.__slots__:
        assert getattr(again.model, name) == getattr(b.model, name), name
    for _ in range(2_000):
        t += int(rnd.expovariate(1 / 40_000))
        assert again.observe(t) == b.observe(t)
    for name in _Model.__slots__:
        assert getattr(again.model, name) == getattr(b.model, name), name


def test_legacy_state_still_loads() -> None:
    b = RateBaseline(RateParams(), [100, 3, 10.0, 4.0, 80])
    assert b.warm
    assert b.expected() == pytest.approx(10.0)


# --- the series interface ---------------------------------------------------------------


def series(n: int, seed: int = 1) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {
            "value": 50 + 20 * math.sin(2 * math.pi * i / 288) + rnd.gauss(0, 2),
            "timestamp": t0 + timedelta(minutes=5 * i),
        }
        for i in range(n)
    ]


def _advance_one_by_one(b: RateBaseline, interval: int) -> None:
    """What `advance` did before runs of empty intervals got their own loop."""
    if interval <= b.current:
        return
    if b.current >= 0:
        b.model.learn(float(b.count), b.current * 60.0)
        for i in range(1, interval - b.current):
            b.model.learn(0.0, (b.current + i) * 60.0)
    b.current, b.count = interval, 0


def _run_both(seed: int) -> tuple[RateBaseline, RateBaseline]:
    """A random mix of busy, sparse and silent stretches, through `observe` (runs of empty
    intervals learned by learn_zeros) and through learn() one interval at a time."""
    rng = random.Random(seed)
    params = RateParams(
        slots=rng.choice([24, 12, 0]),
        weekly_after_days=rng.choice([14.0, 0.01, 2.0]),
        adapt_after=rng.choice([12, 3]),
    )
    fast, slow = RateBaseline(params), RateBaseline(params)
    t = rng.randrange(10**6) * 60_000
    sparse = rng.choice([5, 40, 150])
    for _ in range(rng.randrange(300, 1200)):
        t += rng.choice(
            [
                1_000,
                30_000,
                rng.randrange(1, sparse) * 60_000,
                rng.randrange(1, sparse) * 60_000,
                3_600_000,
                86_400_000,
                rng.randrange(1, 120_000),
            ]
        )
        weight = rng.choice([1, 1, 1, 2, 30, 200])
        fast.observe(t, weight)
        _advance_one_by_one(slow, t // 60_000)
        slow.count += weight
    return fast, slow


@pytest.mark.parametrize("seed", range(4))
def test_the_one_by_one_loop_is_bit_for_bit_learn(seed: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(_Model, "learn_zeros", _Model._zeros_exact)
    fast, slow = _run_both(seed)
    # Bit for bit: the same floats in the same order, not merely close.
    assert fast.state() == slow.state()
    assert fast.model.run_sum == slow.model.run_sum and fast.model.gvar == slow.model.gvar


def test_empty_interval_runs_in_closed_form_learn_as_one_by_one(monkeypatch: Any) -> None:
    used = {False: 0, True: 0}
    closed = _Model._zeros_closed

    def counted(self: _Model, first: int, step_s: float, m: int, slot: int) -> int:
        weekly = self.first_day >= 0 and first * step_s / 86_400 - self.first_day > 3.0
        done = closed(self, first, step_s, m, slot)
        used[weekly] += done > 0
        return done

    monkeypatch.setattr(_Model, "_zeros_closed", counted)
    for seed in range(10):
        fast, slow = _run_both(seed)
        a, b = fast.model, slow.model
        assert (a.n, a.run, a.prof_n, fast.current, fast.count) == (
            b.n,
            b.run,
            b.prof_n,
            slow.current,
            slow.count,
        )
        xs = [a.level, a.var, a.gmean, a.gvar, a.ref, a.run_sum, *a.prof, *a.dow]
        ys = [b.level, b.var, b.gmean, b.gvar, b.ref, b.run_sum, *b.prof, *b.dow]
        scale = max(1.0, *map(abs, ys))
        # Equal up to rounding: the same model, summed in another order.
        assert max(abs(x - y) for x, y in zip(xs, ys, strict=True)) <= 1e-9 * scale
    # Both forms (day-of-week weight 0 and 1) were taken, not only the fallback.
    assert used[False] > 100 and used[True] > 20


def _gap_reference(b: RateBaseline, interval: int) -> None:
    """advance(interval), written out: the current interval's count, then every empty interval
    up to `interval`, each learned by itself."""
    m, step_s = b.model, float(b.params.interval_s)
    m.learn(float(b.count), b.current * step_s)
    for i in range(b.current + 1, interval):
        m.learn(0.0, i * step_s)
    b.current, b.count = interval, 0


def _kind(m: _Model, first: int, k: int) -> tuple[str, str, str]:
    """What the first run of a gap looks like: the day-of-week weight over it, whether the slot's
    profile is clipped at its first step, and whether the slot is still young."""
    p = m.params
    w = [(i * 60 / 86_400 - m.first_day - p.weekly_after_days) / 7 for i in (first, first + k)]
    weight = "w=0" if w[1] <= 0 else "w=1" if w[0] >= 1 else "ramp"
    slot = int(first * 60 % 86_400 * p.slots // 86_400)
    prof = m.prof[slot] if m.prof_n[slot] else m.ref
    clipped = abs(prof) > p.clip_z * math.sqrt(m.gvar)
    young = m.prof_n[slot] < int(60 * (p.profile_days - p.profile_prior_days))
    return weight, "clipped" if clipped else "linear", "young" if young else "full"


@pytest.mark.parametrize("seed", range(3))
def test_empty_intervals_learned_at_once_equal_one_at_a_time(seed: int, monkeypatch: Any) -> None:
    """Machines from their first event to their fourth week (every kind of run: a young or a
    full slot, its profile clipped or not, before, during and after the day-of-week ramp), each
    checked along the way: a random gap closed by advance() (closed forms where they apply)
    against the same gap closed one interval at a time. Fails on any difference beyond
    rounding, and if the closed forms were not what closed the gaps."""
    rng = random.Random(seed)
    exact_steps = [0]
    exact = _Model._zeros_exact

    def counted(self: _Model, first: int, step_s: float, k: int) -> None:
        exact_steps[0] += k
        exact(self, first, step_s, k)

    monkeypatch.setattr(_Model, "_zeros_exact", counted)
    kinds: dict[tuple[str, str, str], int] = {}
    gaps = 0
    for spacing in ((10, 60), (1, 6), (30, 240), (0, 2)):  # minutes between events
        b = RateBaseline(RateParams())
        t = T0 + rng.randrange(DAY) * MIN
        rate = 150 / (26 * DAY / (sum(spacing) / 2 + 0.5))  # ~150 checks a machine, after
        events = 0
        while t < T0 + 26 * DAY * MIN:
            t += rng.randrange(spacing[0] * MIN, spacing[1] * MIN + 1) + rng.randrange(MIN)
            weight = rng.choice([1, 1, 1, 2, 5]) if spacing[1] > 2 else rng.randrange(1, 40)
            if rng.random() < (0.3 if events < 100 else rate) and b.current >= 0:
                # Check here: a gap of any length after the current interval.
                interval = b.current + 1 + rng.choice([1, 2, 7, 30, 59, 60, 61, 200, 1000, 2880])
                fast, slow = RateBaseline(b.params, b.state()), RateBaseline(b.params, b.state())
                probe = RateBaseline(b.params, b.state())
                probe.model.learn(float(probe.count), probe.current * 60.0)
                kind = _kind(probe.model, probe.current + 1, interval - probe.current - 1)
                before = exact_steps[0]
                fast.advance(interval)
                if exact_steps[0] == before:
                    kinds[kind] = kinds.get(kind, 0) + 1
                _gap_reference(slow, interval)
                gaps += 1
                a, r = fast.model, slow.model
                assert (a.n, a.run, a.prof_n, a.first_day) == (r.n, r.run, r.prof_n, r.first_day)
                xs = [a.level, a.var, a.gmean, a.gvar, a.ref, a.run_sum, *a.prof, *a.dow]
                ys = [r.level, r.var, r.gmean, r.gvar, r.ref, r.run_sum, *r.prof, *r.dow]
                scale = max(1.0, *map(abs, ys))
                assert max(abs(x - y) for x, y in zip(xs, ys, strict=True)) <= 1e-11 * scale
                for x, y in ((a.var, r.var), (a.gmean, r.gmean), (a.gvar, r.gvar)):
                    assert x == pytest.approx(y, rel=1e-10, abs=1e-300)
            b.observe(t, weight)
            events += 1
    assert gaps > 300
    # Gaps closed without a single interval learned one at a time, of every kind.
    for kind in [
        ("w=0", "linear", "young"),
        ("w=0", "clipped", "young"),
        ("w=0", "clipped", "full"),
        ("ramp", "clipped", "full"),
        ("w=1", "clipped", "full"),
        ("w=1", "linear", "full"),
    ]:
        assert kinds.get(kind, 0) >= 3, (kind, kinds)


def test_sparse_machines_learn_empty_intervals_in_closed_form(monkeypatch: Any) -> None:
    """A machine sending once every 10 to 60 minutes, for four weeks: nearly all of its empty
    intervals are learned in closed form (one at a time was ~95% of them before, ~60 us an
    event)."""
    exact_steps = [0]
    exact = _Model._zeros_exact

    def counted(self: _Model, first: int, step_s: float, k: int) -> None:
        exact_steps[0] += k
        exact(self, first, step_s, k)

    monkeypatch.setattr(_Model, "_zeros_exact", counted)
    rng = random.Random(2)
    b = RateBaseline(RateParams())
    t = T0
    while t < T0 + 28 * DAY * MIN:
        t += rng.randrange(10 * MIN, 60 * MIN)
        b.observe(t)
    assert exact_steps[0] < 0.02 * b.n


def _quiet_reference(b: RateBaseline, now_ms: int) -> float:
    """quiet_score, written out one interval at a time."""
    p, m = b.params, b.model
    if not b.warm or b.current < 0 or now_ms // (p.interval_s * 1000) < b.current:
        return 0.0
    iv_ms = p.interval_s * 1000
    now_iv = now_ms // iv_ms
    exp_sum = var_sum = 0.0
    for i in range(b.current, min(now_iv, b.current + 86_400 // p.interval_s) + 1):
        frac = (now_ms - now_iv * iv_ms) / iv_ms if i == now_iv else 1.0
        e = m.expected(i * float(p.interval_s)) * frac
        exp_sum += e
        var_sum += m.std(e) ** 2 * frac
    if exp_sum < p.quiet_min_expected or b.count >= exp_sum:
        return 0.0
    z = (exp_sum - b.count) / math.sqrt(max(var_sum, exp_sum, 1e-9))
    s = 1.0 - 2.0 ** (-abs(z) / p.z)
    return 100.0 * s if s >= 0.5 else 0.0


def test_quiet_score_sums_runs_of_intervals_as_one_at_a_time() -> None:
    rng = random.Random(4)
    b = RateBaseline(RateParams(weekly_after_days=3.0))
    checked = paged = 0
    for minute in range(12 * DAY):
        busy = 9 * 60 <= minute % DAY < 17 * 60
        if rng.random() < (0.9 if busy else 0.1):
            b.observe(T0 + minute * MIN + rng.randrange(MIN), weight=rng.randrange(1, 30))
        if minute % 97 == 0 and b.warm:
            for silence in (30_000, 3 * MIN, 47 * MIN, 5 * 60 * MIN, 2 * DAY * MIN):
                now = T0 + minute * MIN + silence
                want = _quiet_reference(b, now)
                assert b.quiet_score(now) == pytest.approx(want, rel=1e-12, abs=1e-12)
                checked += 1
                paged += want >= 50
    assert checked > 500 and paged > 50


def test_expected_and_threshold_follow_what_the_model_learns() -> None:
    p = RateParams(warmup_intervals=5)
    b = RateBaseline(p)
    for i in range(300):
        b.observe(T0 + i * 3 * MIN, weight=1 + i % 7)
        if i % 5 == 0:
            b.learn_one({"value": 4.0, "timestamp": T0 + i * 3 * MIN})
        e = b.model.expected(b.current * 60.0)
        assert b.expected() == e
        assert b.threshold() == max(e + p.z * b.model.std(e), p.min_ratio * e, p.min_count)


@pytest.mark.parametrize(
    ("var", "gvar", "level"),
    [(0.0, 0.0, 0.1), (0.1, 0.0, 3.0), (9.0, 0.0, 1.0), (0.0, 900.0, 1.0), (0.25, 0.0, 0.25)],
)
def test_threshold_takes_the_models_std_at_each_of_its_floors(
    var: float, gvar: float, level: float
) -> None:
    # The threshold works the std out inline: the same as std() whichever floor decides (the
    # Poisson 0.25, the expectation, the series' scale, or the variance itself).
    p = RateParams()
    b = RateBaseline(p)
    run(b, 0, 100, 3)
    m = b.model
    m.var, m.gvar, m.level = var, gvar, level
    m.n += 1  # learned since: worked out again
    e = m.expected(b.current * 60.0)
    assert b.threshold() == max(e + p.z * m.std(e), p.min_ratio * e, p.min_count)


def test_score_one_before_learn_one() -> None:
    m = SeriesBaseline()
    x = {"value": 1e9, "timestamp": T0}
    assert m.score_one(x) == 0.0
    assert x == {"value": 1e9, "timestamp": T0}


def test_series_scores_in_unit_interval_two_sided_without_learning() -> None:
    m = SeriesBaseline()
    xs = series(2000)
    scores = []
    for x in xs:
        scores.append(m.score_one(x))
        m.learn_one(x)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores[600:]) < 0.5  # a noisy daily sine is normal
    t = xs[-1]["timestamp"] + timedelta(minutes=5)  # type: ignore[operator]
    state = m.state()
    normal = m.score_one({"value": 50 + 20 * math.sin(2 * math.pi * 2000 / 288), "timestamp": t})
    high = m.score_one({"value": 200.0, "timestamp": t})
    low = m.score_one({"value": -100.0, "timestamp": t})
    assert m.state() == state
    assert normal < 0.5 <= high <= 1.0
    assert 0.5 <= low <= 1.0


def test_series_accepts_epoch_ms_and_rejects_naive_datetimes() -> None:
    m = SeriesBaseline()
    m.learn_one({"value": 1.0, "timestamp": T0})
    with pytest.raises(ValueError, match="timezone-aware"):
        m.learn_one({"value": 1.0, "timestamp": datetime(2026, 1, 1)})  # noqa: DTZ001


def test_series_state_is_small() -> None:
    m = SeriesBaseline()
    for x in series(5000):
        m.learn_one(x)
    # The model's numbers are written exactly (see test_state_round_trip_is_exact).
    assert len(json.dumps(m.state())) <= 1200


def scores_of(values: list[float], **kw: object) -> list[float]:
    """Score-before-learn of a 5-minute series through SeriesBaseline(**kw)."""
    m = SeriesBaseline(**kw)  # type: ignore[arg-type]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i, v in enumerate(values):
        x = {"value": v, "timestamp": t0 + timedelta(minutes=5 * i)}
        out.append(m.score_one(x))
        m.learn_one(x)
    return out


def noise(n: int, seed: int = 3) -> list[float]:
    rnd = random.Random(seed)
    return [10 + rnd.gauss(0, 1) for _ in range(n)]


@pytest.mark.parametrize("level", [0.995, 0.999])
def test_tail_before_its_quantile_is_learned_guesses_at_the_level(level: float) -> None:
    # The first 5 / (1 - level) values have too few exceedances for the stochastic quantile;
    # the Gaussian guess standing in must leave about 1 - level of the values above it
    # (a fixed 2 sd leaves 2.3%, 4.6 times that at 0.995). Pooled over 20 series: ~100
    # exceedances, so the share is not at the mercy of one seed.
    warm = int(5 / (1 - level))
    over = seen = 0
    for seed in range(20):
        rnd = random.Random(seed)
        tail = _Tail()
        for i in range(warm - 1):
            u = 5.0 + rnd.gauss(0, 1)
            if i >= 50:  # once the running mean and sd have settled
                over += u > tail.q
                seen += 1
            tail.learn(u, 0.002, level, 0.1)
    share = over / seen
    assert 0.6 * (1 - level) <= share <= 1.6 * (1 - level), share


def test_series_tail_level_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="tail_level"):
        SeriesBaseline(tail_level=1.0)


def test_series_noise_does_not_page() -> None:
    scores = scores_of(noise(20_000))
    assert max(scores[1000:]) < 0.5


def test_series_recurring_spikes_become_normal() -> None:
    # A spike of 30 sd every 100 intervals: the first ones are news, later ones are the
    # series' own tail (the calibration is the series' peaks over its 99th percentile).
    xs = [v + (30 if i % 100 == 50 else 0) for i, v in enumerate(noise(4000))]
    scores = scores_of(xs)
    assert max(scores[i] for i in range(150, 1000, 100)) >= 0.5
    assert max(scores[i] for i in range(3050, 4000, 100)) < 0.45


@pytest.mark.parametrize("shift", [8.0, -8.0])
def test_series_level_shift_pages_once(shift: float) -> None:
    xs = [v + (shift if i >= 3000 else 0) for i, v in enumerate(noise(3500))]
    scores = scores_of(xs)
    assert max(scores[1000:3000]) < 0.5
    assert max(scores[3000:3010]) >= 0.5
    # The new level is learned, and the repeat rule keeps it one detection.
    assert sum(s >= 0.5 for s in scores[3000:]) <= 3


def test_series_scales_see_a_persistent_deviation() -> None:
    # 2.5 sd for good: no single value is extreme, the run of them is.
    xs = [v + (2.5 if i >= 3000 else 0) for i, v in enumerate(noise(3400))]
    multi = scores_of(xs, repeat_intervals=1)
    point = scores_of(xs, scales=(1,), repeat_intervals=1)
    assert max(multi[3000:3100]) > max(point[3000:3100]) + 0.05


def test_recent_peak_state_is_the_decayed_peak_of_the_intervals_before() -> None:
    # AccessRate.learn skips the decay and the rounding while an event stays in (or comes
    # late for) the current interval; the state must be what the full rule gives every time.
    from detectors.base import Seen
    from detectors.config import DetectorConfig
    from detectors.rate import AccessRate, recent_peak
    from detectors.state import MachineState
    from schemas.event import AuditEvent

    cfg = DetectorConfig()
    iv_ms = cfg.rate.interval_s * 1000
    rng = random.Random(5)
    state = MachineState.new(T0)
    ts = T0
    expected: list[Any] = []
    highest = 0.0
    for _ in range(3000):
        # Mostly forward by up to three intervals, sometimes a late event.
        ts = max(T0, ts + rng.choice([0, 1, 7, 900, 30_000, 61_000, 150_000, -70_000]))
        event = AuditEvent(
            event_id="e",
            ts_us=ts * 1000,
            machine_id="m",
            resource="r",
            operation="GET",
            outcome="SUCCESS",
        )
        seen = Seen(event, ts, "g", cfg, state, None, None, state.rate_baseline(cfg.rate))
        # The full rule: decay since the stored interval, the count of the current one.
        peak = recent_peak(cfg, expected, ts)
        interval = ts // iv_ms
        current, count = (expected[0], expected[1]) if expected else (interval, 0)
        if interval > current:
            current, count = interval, 0
        if interval >= current:
            count += 1
        expected = [current, count, round(peak, 3)]
        AccessRate().learn(seen, None)
        assert state.peak == expected
        assert [type(v) for v in state.peak] == [type(v) for v in expected]
        highest = max(highest, expected[2])
    assert highest >= 5  # busy intervals were seen, and their peak decayed in between


@pytest.mark.parametrize(("interval_s", "slots"), [(60, 24), (45, 24), (300, 12), (1, 24), (60, 7)])
def test_slot_boundaries_in_integers_equal_the_float_formula(interval_s: int, slots: int) -> None:
    """learn_zeros finds time-of-day slot boundaries in integer arithmetic where whole-second
    intervals tile the slots: the same slot and run length as `_slot_steps` (floats) gives,
    anywhere in the calendar; where they do not tile (7 slots a day), it keeps the floats."""
    plan = _zero_plan(RateParams(interval_s=interval_s, slots=slots), float(interval_s))
    per_slot = plan.per_slot
    assert (per_slot == 0) == (86_400 % slots != 0 or 86_400 // slots % interval_s != 0)
    if not per_slot:
        return
    rng = random.Random(interval_s)
    per_day = 86_400 // interval_s
    starts = [*range(3 * per_day), *(rng.randrange(10**9 // interval_s) for _ in range(5000))]
    for i in starts:
        limit = rng.choice([1, 7, per_slot, 3 * per_slot])
        expected = _slot_steps(i, float(interval_s), slots, limit)
        assert (i % (per_slot * slots) // per_slot, min(per_slot - i % per_slot, limit)) == expected
