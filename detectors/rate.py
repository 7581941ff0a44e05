"""Access-rate baseline: events per interval against the machine's own learned level.

The expected value of an interval is a time-of-day profile (one slot per hour of the UTC day,
learned over about a week), plus a day-of-week offset once two weeks of history exist, plus a
fast-moving level that tracks how far the series currently runs above or below its profile.
The spread is an exponentially weighted variance of the one-step prediction errors, floored
for counts at the Poisson variance (a count of mean m is never less noisy than sqrt(m)).

Every value is scored against the model of the intervals before it (score before learn), on
both sides: a spike (`observe`, `threshold`) and a normally busy series going quiet
(`quiet_score`). It is learned winsorised (clipped at a few standard deviations) so one burst
does not teach the baseline that bursts are normal; a deviation that persists on one side for
`adapt_after` intervals is a new normal, and the level re-anchors on it.

`RateBaseline` counts events per interval for the detection core. `SeriesBaseline` is the same
model as a river-style anomaly detector (`learn_one` / `score_one`) for any timestamped numeric
series, one value per interval: that is how it is benchmarked on NAB (`bench/nab.py`). Its
score adds, on top of the model's z-score, multi-scale surprise statistics calibrated against
the series' own tail (see the class); `RateBaseline.observe` does not use them.

`AccessRate` is the detection core's access-rate detector on top of `RateBaseline`.

Imports: the standard library and `detectors.base`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from itertools import accumulate
from operator import mul, sub
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from detectors.base import Detector, Finding, Seen

if TYPE_CHECKING:
    from detectors.config import DetectorConfig

_DAY_S = 86_400
_WEEK_DAYS = 7
# Longest run of empty intervals learned one by one; longer gaps decay in closed form.
_MAX_ZERO_STEPS = 2_880
# Interval indices below this are exact in floats whatever the interval (up to a day) and
# whatever is added to them within a day: integer slot arithmetic equals the float one.
_EXACT_INTERVALS = 2**53 // (2 * _DAY_S)


@dataclass(frozen=True, slots=True)
class RateParams:
    """Product defaults for per-minute M2M access counts. Rates are per interval, except the
    profile's, which are in days so a profile means the same for any interval length."""

    interval_s: int = 60
    alpha: float = 0.02  # the level: ~50 intervals of memory
    z: float = 6.0  # how many (Poisson-floored) standard deviations make a spike
    min_ratio: float = 3.0  # and at least this many times the expected count
    min_count: int = 20  # and at least this many events in the interval
    warmup_intervals: int = 60
    slots: int = 24  # time-of-day slots per UTC day; 0 turns the profile off
    profile_days: float = 7.0  # memory of each slot's level
    profile_prior_days: float = 0.25  # history a slot needs to outweigh the level it started at
    weekly_after_days: float = 14.0  # day-of-week offsets apply from this much history on
    clip_z: float = 3.0  # learning is winsorised at this many standard deviations
    adapt_after: int = 12  # one-sided deviations in a row before the level re-anchors
    quiet_min_expected: float = 5.0  # quiet needs at least this many events expected
    scale_floor: float = 0.1  # the spread is at least this fraction of the series' own std
    scale_rate: float = 0.1  # the series' std learns at this fraction of alpha


def _epoch_ms(ts: datetime | float | int) -> int:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return int(ts.timestamp() * 1000)
    return int(ts)


class _ZeroPlan:
    """Constants of the model under one (parameters, interval length), worked out once and
    shared by every model (`_zero_plan`); and, built on first use (`tables`), what learning
    runs of empty intervals in closed form needs: tables by step within a run and by a slot's
    count. Read-only once built."""

    __slots__ = (
        "a",
        "a1m",
        "ag",
        "ainv",
        "alpha",
        "ap",
        "beta",
        "bp",
        "built",
        "c",
        "c1m",
        "cd",
        "clip_z",
        "closed_max",
        "consts",
        "cp",
        "cpd",
        "e_max",
        "flat_ok",
        "floor2",
        "interval_s",
        "log_a",
        "log_c",
        "n_cap",
        "ok",
        "per_slot",
        "prior",
        "q",
        "qp",
        "r",
        "r_floor",
        "rd",
        "size",
        "slots",
        "u",
        "weekly_after",
    )

    def __init__(self, p: RateParams, interval_s: float) -> None:
        self.interval_s = interval_s
        self.slots = slots = p.slots
        self.alpha = alpha = p.alpha
        self.a = 1.0 - alpha
        self.ag = ag = alpha * p.scale_rate
        self.c = 1.0 - ag
        self.floor2 = p.scale_floor**2
        self.clip_z = p.clip_z
        # An expectation e <= clip_z^2 is within clip_z sd of 0 (the sd is >= sqrt(e) and
        # >= 0.5): an empty interval then is not clipped and starts no one-sided run. A hair
        # below it, so that rounding never decides.
        self.e_max = p.clip_z**2 * (1.0 - 1e-9)
        self.flat_ok = (
            p.clip_z >= 1.0 and p.adapt_after >= 1 and 0.0 < alpha < 1.0 and 0.0 <= ag < 1.0
        )
        self.log_a = math.log1p(-alpha) if self.flat_ok else 0.0
        self.log_c = math.log1p(-ag) if self.flat_ok else 0.0
        # learn()'s constants of the profile, as learn() wrote them.
        self.n_cap, self.prior, self.r_floor, self.rd, self.beta = 0, 0.0, 0.0, 0.0, 0.0
        if slots:
            per_day = max(1.0, _DAY_S / interval_s / slots)
            self.prior = per_day * p.profile_prior_days
            self.r_floor = 1.0 / (per_day * p.profile_days)
            self.n_cap = int(per_day * (p.profile_days - p.profile_prior_days))
            self.rd = 1.0 / (per_day * slots * 3)
            self.beta = self.rd * 6.0 / _WEEK_DAYS  # the day's share once re-centred
        self.q = 1.0 - self.beta
        self.weekly_after = p.weekly_after_days
        self.consts = (self.a, alpha, self.beta, self.e_max, self.clip_z)
        # Intervals per time-of-day slot when whole-second intervals tile the slots: then the
        # slot boundaries of interval i are integer arithmetic on i, equal to what
        # _slot_steps works out in floats (exact there: multiples of whole seconds).
        self.per_slot = 0
        if slots and float(interval_s).is_integer() and interval_s >= 1:
            slot_s, iv = divmod(_DAY_S, slots)
            if iv == 0 and slot_s % int(interval_s) == 0:
                self.per_slot = slot_s // int(interval_s)
        self.ok = (
            self.flat_ok
            and slots > 0
            and 1 <= self.n_cap <= 1_000_000
            and self.prior >= 0.0
            and 0.0 < self.beta < 1.0
        )
        self.built = False
        self.size = 0
        self.ap: list[float] = []
        self.a1m: list[float] = []
        self.ainv: list[float] = []
        self.cp: list[float] = []
        self.c1m: list[float] = []
        self.cd: list[float] = []
        self.cpd: list[tuple[float, float]] = []
        self.r: list[float] = []
        self.u: list[float] = []
        self.qp: list[float] = []
        self.bp: list[float] = []
        self.closed_max = -1  # the longest run the closed forms take, once tables() has run

    def tables(self) -> int:
        """The longest run the closed forms take (0: none), building the tables on first use:
        by step j of a run, a^j, 1 - a^j, a^-(j+1), c^j, 1 - c^j and c^j (1 - c^j) (a = 1 -
        alpha, c = 1 - the scale's rate); by a slot's count k, its learning rate r[k] and
        u[k], the sum over l < k of q^-l / (l + 1 + prior) (q = 1 - beta)."""
        if self.built:
            return self.size
        if not self.flat_ok:
            self.built = True
            self.closed_max = 0
            return 0
        # As long as a run can be: a slot's intervals, or a whole run without slots; and
        # a^-size a float.
        slots, log_a, log_c = self.slots, self.log_a, self.log_c
        size = _MAX_ZERO_STEPS if not slots else math.ceil(_DAY_S / slots / self.interval_s) + 1
        size = min(size, _MAX_ZERO_STEPS, int(-600.0 / log_a))
        js = range(size + 1)
        self.ap = [math.exp(j * log_a) for j in js]
        self.a1m = [-math.expm1(j * log_a) for j in js]
        self.ainv = [math.exp(-(j + 1) * log_a) for j in js]
        self.cp = [math.exp(j * log_c) for j in js]
        self.c1m = [-math.expm1(j * log_c) for j in js]
        self.cd = [x * y for x, y in zip(self.cp, self.c1m, strict=True)]
        # (c^j, c^j (1 - c^j)) by step: the series' variance after j steps, one slice a run.
        self.cpd = list(zip(self.cp, self.cd, strict=True))
        if self.ok:
            n_cap, prior, q = self.n_cap, self.prior, self.q
            # learn(): max(1 / (count + 1 + prior), floor); the count stops at n_cap.
            r = [max(1.0 / (k + 1 + prior), self.r_floor) for k in range(n_cap + 1)]
            self.r = r + [r[n_cap]] * size
            self.u = [0.0, *accumulate(q ** (-k) / (k + 1 + prior) for k in range(n_cap))]
            # Powers by table (x ** j, as written where they are used): q^j up to a young
            # slot's count plus a run, b^j (b = 1 - the floor rate) up to a run.
            self.qp = [q**j for j in range(n_cap + size + 1)]
            b = 1.0 - r[n_cap]
            self.bp = [b**j for j in range(size + 1)]
        self.size = size
        self.closed_max = size if self.ok else 0
        self.built = True
        return size

    def steps_within(self, x: float, h: float, m: int) -> int:
        """How many leading steps of a run (at most m) have clip bounds of at least x: the
        smallest bound of n steps is clip_z sqrt(c^(n-1) h), h the series' variance."""
        cz = self.clip_z
        if x <= cz * math.sqrt(self.cp[m - 1] * h):
            return m
        if x > cz * math.sqrt(h):
            return 0
        # c^(n-1) >= (x / clip_z)^2 / h; then rounding settled against the table.
        n = min(max(1 + int(math.log((x / cz) ** 2 / h) / self.log_c), 1), m)
        while n > 1 and x > cz * math.sqrt(self.cp[n - 1] * h):
            n -= 1
        return n


@lru_cache(maxsize=64)
def _zero_plan(params: RateParams, interval_s: float) -> _ZeroPlan:
    return _ZeroPlan(params, interval_s)


class _Model:
    """Profile + day-of-week + level model of one value per interval; the shared engine.

    Flat state (JSON-friendly, a few hundred bytes): level, variance, intervals learned, the
    current one-sided run (length, sum), the first interval's day, the interval length, then
    per slot (value, observations) and the seven day-of-week offsets."""

    __slots__ = (
        "counts",
        "dow",
        "first_day",
        "gmean",
        "gvar",
        "interval_s",
        "level",
        "n",
        "params",
        "plan",
        "prof",
        "prof_n",
        "ref",
        "run",
        "run_sum",
        "var",
    )

    def __init__(self, params: RateParams, counts: bool) -> None:
        self.params = params
        self.counts = counts
        self.level = 0.0
        self.var = 0.0
        self.n = 0
        self.run = 0
        self.run_sum = 0.0
        self.first_day = -1.0
        self.gmean = 0.0  # slow mean and variance of the values themselves: the series' scale
        self.gvar = 0.0
        self.ref = 0.0  # the profile value of the last slot learned: unseen slots start there
        self.interval_s = float(params.interval_s)
        self.prof: list[float] = [0.0] * params.slots
        self.prof_n: list[int] = [0] * params.slots
        self.dow: list[float] = [0.0] * _WEEK_DAYS
        # Constants under these parameters, shared (see _zero_plan); derived, not state.
        self.plan = _zero_plan(params, self.interval_s)

    # --- state -------------------------------------------------------------------------
    def dump(self) -> list[Any]:
        # Lossless: a detection worker keeps the live model between checkpoints and replay
        # never serialises it, so load(dump()) must be exact for both to page alike.
        out: list[Any] = [
            self.level,
            self.var,
            self.n,
            self.run,
            self.run_sum,
            self.first_day,
            self.interval_s,
            self.ref,
            self.gmean,
            self.gvar,
        ]
        # Per slot (value, observations), interleaved by slice assignment: a worker dumps
        # every changed machine's model at each commit.
        out += self.prof * 2
        out[10::2] = self.prof
        out[11::2] = self.prof_n  # (a count of another length raises, as zip(strict) did)
        out += self.dow
        return out

    def load(self, s: list[Any]) -> None:
        self.level, self.var, self.n, self.run, self.run_sum, self.first_day = s[:6]
        self.interval_s = float(s[6])
        self.ref, self.gmean, self.gvar = float(s[7]), float(s[8]), float(s[9])
        s = s[2:]
        slots = self.params.slots
        if len(s) != 8 + 2 * slots + _WEEK_DAYS:
            # The slot layout changed with the config: relearn the profile from the level.
            self.level += self.ref
            self.ref = 0.0
            return
        self.prof = [float(v) for v in s[8 : 8 + 2 * slots : 2]]
        self.prof_n = [int(k) for k in s[9 : 9 + 2 * slots : 2]]
        self.dow = [float(d) for d in s[8 + 2 * slots :]]

    # --- model -------------------------------------------------------------------------
    def _where(self, t_s: float | None) -> tuple[int, int, float]:
        """(slot or -1, day of week or -1, weight of the day-of-week offsets) at t_s."""
        if t_s is None:
            return -1, -1, 0.0
        p = self.params
        slot = int(t_s % _DAY_S * p.slots // _DAY_S) if p.slots else -1
        day = t_s / _DAY_S
        dow = (int(day) + 3) % _WEEK_DAYS  # 1970-01-01 was a Thursday; Monday is 0
        w = 0.0
        if self.first_day >= 0:
            # Ramp in over a week rather than switch on: no step in the expectation.
            w = min(1.0, max(0.0, (day - self.first_day - p.weekly_after_days) / _WEEK_DAYS))
        return slot, dow, w

    def base(self, t_s: float | None) -> float:
        """The profile's value at t_s (0 with no profile: the level is then everything)."""
        slot, dow, w = self._where(t_s)
        if slot < 0:
            return 0.0
        b = self.prof[slot] if self.prof_n[slot] else self.ref
        if w > 0.0:
            b += w * self.dow[dow]
        return b

    def expected(self, t_s: float | None) -> float:
        # base(t_s) + level, inlined (the detection core asks for it several times an event).
        b = 0.0
        slots = self.params.slots
        if t_s is not None and slots:
            slot = int(t_s % _DAY_S * slots // _DAY_S)
            b = self.prof[slot] if self.prof_n[slot] else self.ref
            if self.first_day >= 0:
                day = t_s / _DAY_S
                w = (day - self.first_day - self.params.weekly_after_days) / _WEEK_DAYS
                if w > 0.0:
                    b += min(1.0, w) * self.dow[(int(day) + 3) % _WEEK_DAYS]
        e = b + self.level
        return max(e, 0.0) if self.counts else e

    def std(self, expected: float) -> float:
        # A fraction of the series' own scale: a model that has fitted a pattern exactly is
        # not infinitely sure of itself.
        var = max(self.var, self.params.scale_floor**2 * self.gvar)
        if self.counts:
            # Counts are at least Poisson-noisy: floor the variance at the mean.
            return math.sqrt(max(var, expected, 0.25))
        return math.sqrt(max(var, (1e-3 * abs(expected)) ** 2, 1e-12))

    def zscore(self, x: float, t_s: float | None) -> float:
        e = self.expected(t_s)
        return (x - e) / self.std(e)

    def learn(self, x: float, t_s: float | None) -> None:
        p = self.params
        z = self.plan  # constants under these parameters, worked out once (see _zero_plan)
        if z.interval_s != self.interval_s:
            z = self._zero_plan()
        # _where(t_s), inlined: slot, day of week and the day-of-week weight, taken before a
        # first value sets first_day.
        slot, dow, w = -1, -1, 0.0
        if t_s is not None:
            slots = p.slots
            if slots:
                slot = int(t_s % _DAY_S * slots // _DAY_S)
            day = t_s / _DAY_S
            dow = (int(day) + 3) % _WEEK_DAYS
            if self.first_day >= 0:
                # min(1.0, max(0.0, w)) in comparisons (a NaN or -0.0 gives 0.0 alike).
                w = (day - self.first_day - z.weekly_after) / _WEEK_DAYS
                w = (1.0 if w > 1.0 else w) if w > 0.0 else 0.0
            else:
                self.first_day = day
        prof, prof_n, dow_l = self.prof, self.prof_n, self.dow
        if slot >= 0 and prof_n[slot] == 0:
            # A slot seen for the first time starts where the last one was, so the
            # expectation does not jump; its own history then takes over (below).
            prof[slot] = self.ref if self.n else x
        b = prof[slot] if slot >= 0 else 0.0
        if w > 0.0:
            b += w * dow_l[dow]
        if self.n == 0:
            self.gmean = x
            if slot < 0:
                self.level = x
            else:
                prof_n[slot] = 1
                self.ref = x
            self.n = 1
            return
        e = b + self.level
        counts = self.counts
        if counts and e < 0.0:  # max(e, 0.0), which keeps a -0.0
            e = 0.0
        # std(e), inlined; the series' variance as it stands before this value.
        # (Python's max and min as comparisons below, ties and a -0.0 decided as they decide
        # them: max keeps the first of equals, min(h, v) is v only if v < h. This runs once
        # per machine and interval.)
        gvar = self.gvar
        gsd = math.sqrt(gvar)
        var = self.var
        v = z.floor2 * gvar
        var = v if v > var else var
        if counts:
            var = e if e > var else var
            sd = math.sqrt(0.25 if var < 0.25 else var)
        else:
            sd = math.sqrt(max(var, (1e-3 * abs(e)) ** 2, 1e-12))
        clip_z = z.clip_z
        d = x - e
        lim = clip_z * sd
        side = 1 if d > lim else -1 if d < -lim else 0
        # Winsorise: the baseline adapts to growth, not to bursts (max(-lim, min(lim, d))).
        nlim = -lim
        xc = e + ((d if d > nlim else nlim) if d < lim else (lim if lim > nlim else nlim))
        run = self.run
        if side and (run == 0 or (side > 0) == (run > 0)):
            run += side
            self.run_sum += x
        else:
            run, self.run_sum = side, (x if side else 0.0)
        if abs(run) >= p.adapt_after:
            # The same side for this long is a new normal: re-anchor the level on it.
            xc = self.run_sum / abs(run)
            level = self.level + (xc - e)
            self.var = max(self.var, (xc - e) ** 2 / p.adapt_after)
            run, self.run_sum = 0, 0.0
        else:
            alpha = z.alpha
            dc = xc - e
            level = self.level + alpha * dc
            self.var = z.a * (self.var + alpha * dc * dc)
        self.run = run
        if slot >= 0:
            # The profile learns the value itself, clipped at a few of the series' standard
            # deviations, on its own clock: `profile_days` of memory, starting from
            # `profile_prior_days` of weight on its first value.
            k = prof_n[slot]
            r = 1.0 / (k + 1 + z.prior)
            r = z.r_floor if z.r_floor > r else r
            old = prof[slot]
            glim = clip_z * gsd
            nglim = -glim
            ghi = glim if glim > nglim else nglim  # what max(-g, min(g, v)) is for v >= g
            dp = x - (w * dow_l[dow] if w > 0 else 0.0) - old
            new = prof[slot] = old + r * ((dp if dp > nglim else nglim) if dp < glim else ghi)
            # Counted only as far as it matters: past that the slot learns at its steady rate.
            k += 1
            prof_n[slot] = k if k < z.n_cap else z.n_cap
            self.ref = new
            # Keep the expectation continuous: what the profile learned, the level gives up.
            level -= new - old
            # The day-of-week offset learns the day's departure from the profile.
            dd = x - new - dow_l[dow]
            dow_l[dow] += z.rd * ((dd if dd > nglim else nglim) if dd < glim else ghi)
            # Offsets average to zero: the profile holds the level of the week. (Unpacked:
            # seven subtractions written out cost a third of a map or a comprehension.)
            d0, d1, d2, d3, d4, d5, d6 = dow_l
            mean = sum(dow_l) / _WEEK_DAYS
            self.dow = [d0 - mean, d1 - mean, d2 - mean, d3 - mean, d4 - mean, d5 - mean, d6 - mean]
        self.level = level
        # The series' own scale, learned slowly and clipped relative to its size, so that one
        # huge burst does not make everything after it look small.
        ag = z.ag
        gmean = self.gmean
        glim = clip_z * gsd + abs(gmean)
        nglim = -glim
        gd = x - gmean  # max(-glim, min(glim, gd)):
        gd = (gd if gd > nglim else nglim) if gd < glim else (glim if glim > nglim else nglim)
        self.gmean = gmean + ag * gd
        self.gvar = z.c * (gvar + ag * gd * gd)
        self.n += 1

    def learn_zeros(self, first: int, step_s: float, k: int) -> None:
        """`learn(0.0, (first + i) * step_s)` for i in 0..k-1, without a Python step per interval
        where it can: a sparse machine closes dozens of empty intervals per event.

        Within one time-of-day slot, runs of empty intervals are learned in closed form
        (`_zeros_closed`) as long as every step of the run is of one kind: the expectation is
        not clipped and starts no one-sided run (so it decays geometrically), and the profile
        and the day's offset are either never clipped (linear: they telescope) or clipped at
        every step (they move by the clip bounds, which depend on the series' scale only). A
        run whose kind changes is learned in pieces; what fits no kind (a busy series going
        quiet, a day-of-week ramp without clipping) is learned one interval at a time
        (`_zeros_exact`). Equal to learning one interval at a time up to rounding
        (tests/test_rate.py)."""
        if k <= 0:
            return
        if self.n == 0 or self.first_day < 0 or not self.counts:
            self._zeros_exact(first, step_s, k)
            return
        z = self.plan
        if z.interval_s != self.interval_s:
            z = self._zero_plan()
        slots = z.slots
        if not slots:
            if not self._zeros_flat(k):
                self._zeros_exact(first, step_s, k)
            return
        end = first + k
        per_slot = z.per_slot if step_s == z.interval_s and end < _EXACT_INTERVALS else 0
        per_day = per_slot * slots
        closed = self._zeros_closed
        i = first
        while i < end:
            if per_slot:
                m = min(per_slot - i % per_slot, end - i)
                slot = i % per_day // per_slot
            else:
                slot, m = _slot_steps(i, step_s, slots, end - i)
            misses = 0
            while m > 0:
                done = closed(i, step_s, m, slot)
                if not done:
                    # Often only a step or two are of no kind (a burst's level still being
                    # clipped): take them exactly and try the rest again, a few times.
                    misses += 1
                    done = 1 if misses < 3 else m
                    self._zeros_exact(i, step_s, done)
                i += done
                m -= done

    def flat_run(self, first: int, step_s: float, limit: int) -> int:
        """How many intervals from `first` on (1 to `limit`) have the same expectation as it:
        the rest of its time-of-day slot, unless the day-of-week weight is ramping in."""
        p = self.params
        if not p.slots:
            return limit
        m = _slot_steps(first, step_s, p.slots, limit)[1]
        if m > 1 and self.first_day >= 0:
            fd, wa = self.first_day, p.weekly_after_days
            w_first = (first * step_s / _DAY_S - fd - wa) / _WEEK_DAYS
            w_last = ((first + m - 1) * step_s / _DAY_S - fd - wa) / _WEEK_DAYS
            if w_last > 0.0 and w_first < 1.0:
                return 1
        return m

    def _zero_plan(self) -> _ZeroPlan:
        z = self.plan
        if z.interval_s != self.interval_s:  # a state of another interval, or a learned one
            z = self.plan = _zero_plan(self.params, self.interval_s)
        return z

    def _zeros_flat(self, k: int) -> bool:
        """k empty intervals without a profile (slots = 0), if the expectation is not clipped:
        it decays by 1 - alpha a step (or stays at 0). False, changing nothing, if not."""
        z = self._zero_plan()
        if k > z.tables() or any(self.dow):
            return False
        e0, V = self.level, self.var
        am = z.ap[k]
        if e0 > z.e_max:
            return False
        if e0 >= 0.0:
            self.var = am * V + e0 * e0 * am * z.a1m[k]
            self.level = e0 * am
        else:
            self.var = am * V
        self._scale_after(z, k)
        self.run, self.run_sum = 0, 0.0
        self.n += k
        return True

    def _scale_after(self, z: _ZeroPlan, m: int) -> None:
        # Each empty interval takes the slow mean G to c G and its variance H to c (H + (1 - c)
        # G^2) (never clipped: the clip bound is at least |G|), so after m of them
        # H = c^m H + G^2 c^m (1 - c^m).
        G = self.gmean
        self.gvar = z.cp[m] * self.gvar + G * G * z.cd[m]
        self.gmean = G * z.cp[m]

    def _zeros_closed(self, first: int, step_s: float, m: int, slot: int) -> int:
        """Learns the first n <= m empty intervals of a run in one slot at once, as many as
        are all of one kind (see learn_zeros), and returns n; 0, changing nothing, if the
        first one is of no kind.

        Notation: a = 1 - alpha, c = 1 - the scale's rate, r_j the slot's learning rate at step
        j (1 / (its count + 1 + prior), down to its floor), beta = 6/7 of the day-of-week rate
        (the day's share of each update once the offsets are re-centred), H_j the series'
        variance and g_j = clip_z sqrt(H_j) the clip bound at step j, w the day-of-week weight
        (0 before `weekly_after_days`, 1 a week later, a ramp in between), P the slot's
        profile, D the day's offset, L the level, e = P + w D + L the expectation. With a value
        of 0 at every step and 0 <= e <= clip_z^2 (nothing clipped, no one-sided run: a run in
        progress ends at the first step), the level's update makes e' = a e + w' D' - w D
        whatever the profile does (what the profile learns, the level gives up), and the
        variance V' = a (V + alpha e^2); H_j = c^j H + G^2 c^j (1 - c^j) (G the slow mean).
        - Profile and offset never clipped (w = 0, or w = 1 with the slot at its floor rate):
          w = 0: P' = (1 - r_j) P telescopes (P (N - 1) / (N + h - 1) while the slot is
          young, geometric after) and D' = (1 - beta) D - beta P' is summed with a table;
          w = 1: S = P + D decays by (1 - r)(1 - beta), D' = D - beta (1 - r) S, and e is a
          sum of two exponentials.
        - Both clipped at every step, each on one side: P' = P -+ r_j g_j and D' = D -+ beta
          g_j: sums of g_j, the one per-step value without a closed form (one square root a
          step), and with w > 0 the geometric sum of what the offset gives the expectation."""
        z = self.plan
        if z.interval_s != self.interval_s:
            z = self._zero_plan()
        lim = z.closed_max
        if lim < 0:
            z.tables()
            lim = z.closed_max
        if m > lim:
            return 0
        kn = self.prof_n[slot]
        n_cap = z.n_cap
        if kn < 0 or kn > n_cap:
            return 0
        first_day, wa = self.first_day, z.weekly_after
        day = first * step_s / _DAY_S
        w_last = ((first + m - 1) * step_s / _DAY_S - first_day - wa) / _WEEK_DAYS
        if w_last <= 0.0:
            # (Before the offsets apply, the usual case: the first step's weight is not needed.)
            w0 = w1 = w_first = 0.0
        else:
            w_first = (day - first_day - wa) / _WEEK_DAYS
            if w_first >= 1.0:
                w0 = w1 = 1.0
            else:
                w0, w1 = max(0.0, w_first), min(1.0, w_last)
        dw = (int(day) + 3) % _WEEK_DAYS
        # A slot seen for the first time starts where the last one was.
        P = self.prof[slot] if kn else self.ref
        D, H = self.dow[dw], self.gvar
        a, alpha, beta, e_max, clip_z = z.consts
        b0 = P + w0 * D
        e0 = b0 + self.level
        if e0 > e_max:
            return 0
        aP, aD = abs(P), abs(D)
        if w1 == 0.0:
            # Never clipped while |P_j| (within |P|) + |D_j| (within max(|D|, |P|) and
            # |D| + m beta |P|) is within the smallest bound, clip_z sqrt(c^(n-1) H).
            x = aP if aP > aD else aD  # aP + min(max(aD, aP), aD + m beta aP)
            y = aD + m * beta * aP
            x = aP + (y if y < x else x)
            n = m if x <= clip_z * math.sqrt(z.cp[m - 1] * H) else z.steps_within(x, H, m)
            if n:
                m = n
                q, qp = z.q, z.qp
                h = n_cap - kn
                h = min(h, m)
                Pm, Dm = P, D
                if h:
                    # r_j = 1 / (N + j) while the slot is younger than its cap.
                    N = kn + 1 + z.prior
                    u = z.u
                    Dm = qp[h] * D - beta * P * (N - 1) * qp[kn + h - 1] * (u[kn + h] - u[kn])
                    Pm = P * (N - 1) / (N + h - 1)
                if m > h:
                    k = m - h
                    b = 1.0 - z.r[n_cap]
                    bk = z.bp[k]
                    s_qb = k * qp[k - 1] if q == b else (qp[k] - bk) / (q - b)
                    Dm = qp[k] * Dm - beta * Pm * b * s_qb
                    Pm *= bk
                am = z.ap[m]
                if e0 >= 0.0:
                    V = am * self.var + e0 * e0 * am * z.a1m[m]
                    Lm = e0 * am - Pm
                else:
                    V = am * self.var
                    Lm = e0 - Pm
                return self._zeros_commit(z, m, slot, kn, dw, Pm, Dm, Lm, V)
        elif w0 == 1.0 and kn == n_cap:
            # Never clipped while |S_j| = |S| g^j and |dd_j| = (1 - r) |S_j| are within it.
            n = z.steps_within(abs(b0), H, m)
            if n:
                m = n
                r = z.r[n_cap]
                b = 1.0 - r
                g = b * (1.0 - beta)
                S = b0
                if abs(a - g) < 1e-15:
                    return 0
                am = z.ap[m]
                gm = g**m
                Sm = S * gm
                Dm = D - beta * b * S * _geo(g, m)
                Pm = Sm - Dm
                # e_j = a^j e0 - kap (a^j - g^j) / (a - g): two exponentials, so its sign and
                # size over the run are bounded by its ends and coefficients.
                k2 = beta * b * S / (a - g)
                A, B = e0 - k2, k2
                em = A * am + B * gm
                if e0 >= 0.0 and em >= 0.0 and abs(A) + abs(B) <= e_max:
                    V = am * self.var + alpha * am * (
                        A * A * _geo(a, m) + 2.0 * A * B * _geo(g, m) + B * B * _geo(g * g / a, m)
                    )
                    Lm = em - Sm
                elif e0 <= 0.0 and S >= 0.0:
                    # e stays 0: S + level only falls (by beta b S a step).
                    V = am * self.var
                    Lm = e0 - beta * b * S * _geo(g, m) - Sm
                else:
                    return 0
                return self._zeros_commit(z, m, slot, kn, dw, Pm, Dm, Lm, V)
        # Clipped at every step? The first one, at least (P moves by r g before D learns).
        sqrt = math.sqrt
        G = self.gmean
        G2 = G * G
        g_first = clip_z * sqrt(H)
        aPD = abs(P + D)
        rs = z.r
        if abs(b0) <= g_first or aPD <= (1.0 + rs[kn]) * g_first:
            return 0
        sP = 1.0 if b0 > 0.0 else -1.0
        sD = 1.0 if P + D > 0.0 else -1.0
        # g_j = clip_z sqrt(H c^j + G^2 c^j (1 - c^j)). (A comprehension: maps of bound
        # float methods were twice as slow, each element a method-wrapper call.)
        gs = [clip_z * sqrt(H * c + G2 * d) for c, d in z.cpd[:m]]
        sg = sum(gs)  # sum of g_j
        sr = sum(map(mul, gs, rs[kn : kn + m])) if kn < n_cap else rs[n_cap] * sg  # of r_j g_j
        ws = None
        if w1 > 0.0 and w0 < 1.0:
            xs = range(first, first + m)
            if w_first > 0.0 and w_last < 1.0:
                ws = [(x * step_s / _DAY_S - first_day - wa) / _WEEK_DAYS for x in xs]
            else:
                ws = [
                    min(1.0, max(0.0, (x * step_s / _DAY_S - first_day - wa) / _WEEK_DAYS))
                    for x in xs
                ]
        # Each step moves P by r_j g_j and D by beta g_j: while |b_j| and |P_(j+1) + D_j| stay
        # above every bound, every step is clipped.
        slack = sr + beta * sg
        g_max = max(gs)
        if abs(b0) - aD * (w1 - w0) - slack <= g_max or aPD - slack <= g_max:
            # Not that far from a bound: step by step, and only the steps before the first one
            # that is not clipped.
            sPD = sP * sD
            if ws is None:
                # Up to the first step that is not clipped, with the running sums of g_i and
                # r_i g_i for i < j added as accumulate() adds them.
                bw, kw = abs(b0), sPD * beta * w0
                gpj = rpj = 0.0
                j = 0
                for gj, rj in zip(gs, rs[kn : kn + m], strict=True):
                    rpj1 = rpj + gj * rj
                    if not (bw - rpj - kw * gpj > gj and aPD - sPD * rpj1 - beta * gpj > gj):
                        break
                    gpj += gj
                    rpj = rpj1
                    j += 1
                if not j:
                    return 0
                if j < m:
                    m, gs, sg, sr = j, gs[:j], gpj, rpj
            else:
                gp = list(accumulate(gs, initial=0.0))  # sums of g_i for i < j
                rp = list(accumulate(map(mul, gs, rs[kn : kn + m]), initial=0.0))
                ok = [
                    sP * (P + wj * D) - rpj - sPD * beta * wj * gpj > gj
                    and aPD - sPD * rpj1 - beta * gpj > gj
                    for wj, rpj, rpj1, gpj, gj in zip(ws, rp, rp[1:], gp, gs, strict=False)
                ]
                if not ok[0]:
                    return 0
                if not all(ok):
                    m = ok.index(False)
                    gs, sg, sr = gs[:m], gp[m], rp[m]
                    ws = ws[:m]
        Pm = P - sP * sr
        Dm = D - sD * beta * sg
        am = z.ap[m]
        if w1 == 0.0:
            if e0 >= 0.0:
                V = am * self.var + e0 * e0 * am * z.a1m[m]
                Lm = e0 * am - Pm
            else:
                V = am * self.var
                Lm = e0 - Pm
            return self._zeros_commit(z, m, slot, kn, dw, Pm, Dm, Lm, V)
        # e' = a e + delta_j, delta_j = w_(j+1) D_(j+1) - w_j D_j with D_j = D - kd G_j, G_j the
        # sum of g_i for i < j; while e >= 0, e_j = a^j u_j, u_j = e0 + the sum over i < j of
        # a^-(i+1) delta_i.
        kd = sD * beta
        if ws is None:
            # w = 1: delta_j = -kd g_j.
            wd_last = Dm + kd * gs[-1]
            if e0 >= 0.0:
                us = [e0 - kd * x for x in accumulate(map(mul, gs[:-1], z.ainv), initial=0.0)]
            else:
                es = [e0 - kd * x for x in accumulate(gs[:-1], initial=0.0)]
        else:
            wd = [wj * (D - kd * x) for wj, x in zip(ws, accumulate(gs, initial=0.0), strict=False)]
            delta = list(map(sub, wd[1:], wd[:-1]))
            wd_last = wd[-1]
            if e0 >= 0.0:
                us = [e0 + x for x in accumulate(map(mul, delta, z.ainv), initial=0.0)]
            else:
                es = list(accumulate(delta, initial=e0))
        if e0 >= 0.0:
            es = list(map(mul, z.ap[:m], us))
            if min(es) < 0.0 or max(es) > e_max:
                n = next(j for j, e in enumerate(es) if e < 0.0 or e > e_max)
                return self._zeros_closed(first, step_s, n, slot) if n else 0
            V = am * (self.var + alpha * sum(map(mul, z.ap[:m], map(mul, us, us))))
            e_last = a * es[-1]
        else:
            # e stays 0 while b + level stays <= 0: the level only gives up what the profile
            # learns.
            if max(es) > 0.0:
                return self._zeros_closed(
                    first, step_s, next(j for j, e in enumerate(es) if e > 0.0), slot
                )
            V = am * self.var
            e_last = es[-1]
        # L_m = (a or 1) e_(m-1) - w_(m-1) D_(m-1) - P_m.
        return self._zeros_commit(z, m, slot, kn, dw, Pm, Dm, e_last - wd_last - Pm, V)

    def _zeros_commit(
        self,
        z: _ZeroPlan,
        m: int,
        slot: int,
        kn: int,
        dw: int,
        Pm: float,
        Dm: float,
        Lm: float,
        V: float,
    ) -> int:
        # What D gains, the other days give up equally (they stay centred). (other + v is
        # v + other: float addition commutes exactly; written out, as in learn.)
        dow = self.dow
        other = (dow[dw] - Dm) / (_WEEK_DAYS - 1)
        d0, d1, d2, d3, d4, d5, d6 = dow
        dow = [d0 + other, d1 + other, d2 + other, d3 + other, d4 + other, d5 + other, d6 + other]
        dow[dw] = Dm
        self.dow = dow
        self.prof[slot] = Pm
        kn += m
        n_cap = z.n_cap
        self.prof_n[slot] = kn if kn < n_cap else n_cap
        self.ref = Pm
        self.level = Lm
        self.var = V
        G = self.gmean
        cpm = z.cp[m]
        self.gvar = cpm * self.gvar + G * G * z.cd[m]
        self.gmean = G * cpm
        self.run = 0
        self.run_sum = 0.0
        self.n += m
        return m

    def _zeros_exact(self, first: int, step_s: float, k: int) -> None:
        """learn_zeros one interval at a time, with learn's arithmetic in learn's order
        (bit-for-bit equal), on local variables."""
        if k <= 0:
            return
        if self.n == 0 or self.first_day < 0 or not self.counts:
            for i in range(k):
                self.learn(0.0, (first + i) * step_s)
            return
        # The plan's constants are these parameters' worked out as learn() works them out (the
        # profile's only with slots, the only case that reads them); learn_zeros mostly comes
        # here for one interval, so they are not worked out again.
        z = self._zero_plan()
        slots = z.slots
        alpha, clip_z, adapt_after = z.alpha, z.clip_z, self.params.adapt_after
        floor2, weekly_after, ag = z.floor2, z.weekly_after, z.ag
        prior, r_floor, n_cap, rd = z.prior, z.r_floor, z.n_cap, z.rd
        level, var, n, run, run_sum = self.level, self.var, self.n, self.run, self.run_sum
        gmean, gvar, ref, first_day = self.gmean, self.gvar, self.ref, self.first_day
        prof, prof_n, dow_l = self.prof, self.prof_n, self.dow
        sqrt = math.sqrt
        for i in range(k):
            t_s = (first + i) * step_s
            slot = int(t_s % _DAY_S * slots // _DAY_S) if slots else -1
            day = t_s / _DAY_S
            dw = (int(day) + 3) % _WEEK_DAYS
            w = min(1.0, max(0.0, (day - first_day - weekly_after) / _WEEK_DAYS))
            if slot >= 0 and prof_n[slot] == 0:
                prof[slot] = ref
            b = prof[slot] if slot >= 0 else 0.0
            if w > 0.0:
                b += w * dow_l[dw]
            e = max(b + level, 0.0)
            v = max(var, floor2 * gvar)
            sd = sqrt(max(v, e, 0.25))
            d = 0.0 - e
            lim = clip_z * sd
            side = 1 if d > lim else -1 if d < -lim else 0
            xc = e + max(-lim, min(lim, d))
            if side and (run == 0 or (side > 0) == (run > 0)):
                run += side
                run_sum += 0.0
            else:
                run, run_sum = side, 0.0
            if abs(run) >= adapt_after:
                xc = run_sum / abs(run)
                level += xc - e
                var = max(var, (xc - e) ** 2 / adapt_after)
                run, run_sum = 0, 0.0
            else:
                dc = xc - e
                level += alpha * dc
                var = (1 - alpha) * (var + alpha * dc * dc)
            if slot >= 0:
                kn = prof_n[slot]
                r = max(1.0 / (kn + 1 + prior), r_floor)
                old = prof[slot]
                glim = clip_z * sqrt(gvar)
                dp = 0.0 - (w * dow_l[dw] if w > 0 else 0.0) - old
                new = old + r * max(-glim, min(glim, dp))
                prof[slot] = new
                prof_n[slot] = min(kn + 1, n_cap)
                ref = new
                level -= new - old
                dd = 0.0 - new - dow_l[dw]
                dow_l[dw] += rd * max(-glim, min(glim, dd))
                mean_dow = sum(dow_l) / _WEEK_DAYS
                d0, d1, d2, d3, d4, d5, d6 = dow_l
                dow_l[:] = (
                    d0 - mean_dow,
                    d1 - mean_dow,
                    d2 - mean_dow,
                    d3 - mean_dow,
                    d4 - mean_dow,
                    d5 - mean_dow,
                    d6 - mean_dow,
                )
            gsd = sqrt(gvar)
            glim = clip_z * gsd + abs(gmean)
            gd = max(-glim, min(glim, 0.0 - gmean))
            gmean += ag * gd
            gvar = (1 - ag) * (gvar + ag * gd * gd)
            n += 1
        self.level, self.var, self.n, self.run, self.run_sum = level, var, n, run, run_sum
        self.gmean, self.gvar, self.ref = gmean, gvar, ref

    def decay_zeros(self, k: int) -> None:
        """After more empty intervals than are learned one by one: fade towards zero."""
        decay = (1 - self.params.alpha) ** k
        self.level *= decay
        self.var *= decay
        self.n += k


class RateBaseline:
    """Per-interval event counts of one machine, for the detection core. State is one flat
    list: [interval index, count in it, level, variance, intervals learned, model...], so it
    serialises cheaply; a fresh baseline is [-1, 0, 0.0, 0.0, 0]."""

    __slots__ = (
        "_at",
        "_exp",
        "_iv_ms",
        "_step_s",
        "_thr",
        "count",
        "current",
        "model",
        "params",
    )

    def __init__(self, params: RateParams, state: list[Any] | None = None) -> None:
        self.params = params
        self.model = _Model(params, counts=True)
        self.current, self.count = -1, 0
        self._iv_ms = params.interval_s * 1000
        self._step_s = float(params.interval_s)
        # The current interval's expectation and spike threshold, and the (interval, intervals
        # learned) they were worked out at: they only change when the model learns.
        self._at = (-2, -1)
        self._exp = self._thr = 0.0
        if state:
            self.current, self.count = state[0], state[1]
            if len(state) == 5:  # a fresh baseline, or one from before the profile
                self.model.level, self.model.var, self.model.n = state[2:5]
            else:
                self.model.load(state[2:])

    def state(self) -> list[Any]:
        m = self.model
        if m.n == 0:
            return [self.current, self.count, 0.0, 0.0, 0]
        return [self.current, self.count, *m.dump()]

    @property
    def n(self) -> int:
        return self.model.n

    def _t(self, interval: int) -> float:
        return interval * float(self.params.interval_s)

    def advance(self, interval: int) -> None:
        """Close the current interval (learning it and any empty ones since) when time moves on."""
        current = self.current
        if interval <= current:
            return
        if current >= 0:
            m = self.model
            step_s = self._step_s
            m.learn(float(self.count), current * step_s)
            gap = interval - current - 1
            if gap > 0:
                if gap <= _MAX_ZERO_STEPS:
                    m.learn_zeros(current + 1, step_s, gap)
                else:
                    m.learn_zeros(current + 1, step_s, _MAX_ZERO_STEPS)
                    m.decay_zeros((gap if gap < 10_000_000 else 10_000_000) - _MAX_ZERO_STEPS)
        self.current, self.count = interval, 0

    def _current(self) -> None:
        """Work out the current interval's expectation and threshold if the model has learned
        since."""
        m = self.model
        current = self.current
        at = (current, m.n)
        if at != self._at:
            p = self.params
            e = m.expected(current * self._step_s if current >= 0 else None)
            self._exp = e
            # m.std(e), inlined (the model counts; a sparse machine's every event comes here),
            # its max()es as the comparisons max() makes.
            var = m.var
            v = m.plan.floor2 * m.gvar
            var = v if v > var else var
            var = e if e > var else var
            sd = math.sqrt(0.25 if var < 0.25 else var)
            self._thr = max(e + p.z * sd, p.min_ratio * e, float(p.min_count))
            self._at = at

    def expected(self) -> float:
        """Expected events in the current interval."""
        self._current()
        return self._exp

    def expected_at(self, ts_ms: int) -> float:
        """Expected events in the interval holding ts_ms, as the model stands (no learning)."""
        return self.model.expected(self._t(ts_ms // self._iv_ms))

    def std(self) -> float:
        return self.model.std(self.expected())

    def threshold(self) -> float:
        self._current()
        return self._thr

    @property
    def warm(self) -> bool:
        return self.model.n >= self.params.warmup_intervals

    def observe(self, ts_ms: int, weight: int = 1) -> float:
        """Count an event and return its score in [0, 100]: 0 below the spike threshold, above it
        rising with log2 of observed over expected. Late events count in the current interval."""
        interval = ts_ms // self._iv_ms
        if interval > self.current:
            self.advance(interval)
        self.count += weight
        if self.model.n < self.params.warmup_intervals:
            return 0.0
        self._current()
        if self.count < self._thr:
            return 0.0
        ratio = self.count / max(self._exp, 0.5)
        return max(50.0, min(100.0, 40.0 + 15.0 * math.log2(ratio)))

    def quiet_score(self, now_ms: int) -> float:
        """How unusual the silence up to `now_ms` is, in [0, 100] (>= 50: page-worthy), without
        learning anything. The closed intervals since the last event and the elapsed part of the
        current one are compared with what the model expected over the same span."""
        p = self.params
        m = self.model
        if not self.warm or self.current < 0:
            return 0.0
        iv_ms = self._iv_ms
        now_iv = now_ms // iv_ms
        if now_iv < self.current:
            return 0.0
        observed = float(self.count)
        exp_sum = var_sum = 0.0
        # Cap the span: a day of silence is as conclusive as a week of it.
        last = min(now_iv, self.current + _DAY_S // p.interval_s)
        # Whole intervals, a run at a time: within a time-of-day slot the expectation only
        # changes while the day-of-week weight ramps in.
        step_s = float(p.interval_s)
        stop = last if last == now_iv else last + 1
        i = self.current
        while i < stop:
            k = m.flat_run(i, step_s, stop - i)
            e = m.expected(i * step_s)
            exp_sum += k * e
            var_sum += k * m.std(e) ** 2
            i += k
        if last == now_iv:
            frac = (now_ms - now_iv * iv_ms) / iv_ms
            e = m.expected(self._t(now_iv)) * frac
            exp_sum += e
            var_sum += m.std(e) ** 2 * frac
        if exp_sum < p.quiet_min_expected or observed >= exp_sum:
            return 0.0
        z = (exp_sum - observed) / math.sqrt(max(var_sum, exp_sum, 1e-9))
        return _product_score(_unit_score(z, p.z))

    # river-style interface on raw counts (see SeriesBaseline for timestamped series).
    def score_one(self, x: dict[str, Any]) -> float:
        """Score of x["value"] as one interval's count, in [0, 1], without learning it."""
        if not self.warm:
            return 0.0
        t = x.get("timestamp")
        t_s = _epoch_ms(t) / 1000 if t is not None else None
        return _unit_score(self.model.zscore(float(x["value"]), t_s), self.params.z)

    def learn_one(self, x: dict[str, Any]) -> None:
        t = x.get("timestamp")
        self.model.learn(float(x["value"]), _epoch_ms(t) / 1000 if t is not None else None)


def _slot_steps(first: int, step_s: float, slots: int, limit: int) -> tuple[int, int]:
    """(time-of-day slot of interval `first`, how many intervals from it on are in that slot,
    1 to `limit`); the slot index is floor(t * slots / day)."""
    t_s = first * step_s
    slot = int(t_s % _DAY_S * slots // _DAY_S)
    nxt = (t_s - t_s % _DAY_S) + (slot + 1) * _DAY_S / slots
    m = min(max(1, math.ceil((nxt - t_s) / step_s)), limit)
    while m > 1 and int((first + m - 1) * step_s % _DAY_S * slots // _DAY_S) != slot:
        m -= 1
    return slot, m


def _geo(x: float, m: int) -> float:
    """sum of x^j for j in 0..m-1."""
    return float(m) if x == 1.0 else (1.0 - x**m) / (1.0 - x)


def poisson_tail(k: int, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu), accurate in the far tail (summed upward from k, not
    1 - cdf), which is where it is used: a few events where a fraction of one was expected."""
    if k <= 0:
        return 1.0
    if mu <= 0.0:
        return 0.0
    if mu >= k:
        return 1.0  # not in the tail; callers only ask whether it is small
    term = math.exp(-mu + k * math.log(mu) - math.lgamma(k + 1))
    total, i = 0.0, k
    while term > 1e-17 * total or total == 0.0:
        total += term
        i += 1
        term *= mu / i
        if i > k + 200:
            break
    return min(1.0, total)


def _unit_score(z: float, z_page: float) -> float:
    """Map a z-score (either side) to [0, 1]: 0 at z = 0, 0.5 at |z| = z_page, towards 1 beyond."""
    return 1.0 - 2.0 ** (-abs(z) / z_page)


def _product_score(s: float) -> float:
    """The detection core's 0..100 scale: a unit score s >= 0.5 pages as 100 * s, below is 0."""
    return 100.0 * s if s >= 0.5 else 0.0


# One surprise moves the fitted tail by at most this many times its current mean excess.
_TAIL_CLIP = 3.0


@cache  # learn() asks for it on every value of the guess phase
def _normal_quantile(level: float) -> float:
    return NormalDist().inv_cdf(level)


class _Tail:
    """Streaming calibration of one surprise statistic u >= 0, peaks over threshold (as in
    SPOT, Siffer et al. 2017): a running upper quantile q of u (at `level`) and the mean excess
    b of u over q, so that beyond q, P(U >= u) ~ (1 - level) * exp(-(u - q) / b): an
    exponential tail fitted to this series' own largest surprises."""

    __slots__ = ("b", "m", "n", "q", "v")

    def __init__(self) -> None:
        self.m, self.v, self.q, self.b, self.n = 0.0, 1.0, 0.0, 0.0, 0

    def p(self, u: float, level: float) -> float:
        """Estimated probability of a surprise of at least u (1.0 up to the quantile)."""
        if u <= self.q:
            return 1.0
        b = max(self.b, 0.5 * math.sqrt(self.v), 0.05)
        return (1.0 - level) * math.exp(-(u - self.q) / b)

    def learn(self, u: float, rate: float, level: float, step: float) -> None:
        r = max(rate, 1.0 / (self.n + 1))
        d = u - self.m
        self.m += r * d
        self.v = (1 - r) * (self.v + r * d * d)
        sd = math.sqrt(self.v)
        self.n += 1
        if self.n < 5 / (1.0 - level):
            # Too few values for the quantile yet: a Gaussian guess of it, at the same level,
            # so that p()'s 1 - level holds at q from the start (bench/README.md, step 10).
            self.q = self.m + _normal_quantile(level) * sd
            if u > self.q:
                self.b += max(0.2, 1.0 / self.n) * (u - self.q - self.b)
            return
        if u > self.q:
            # The mean excess remembers about as many intervals as the mean does (a handful
            # of exceedances: a tail that recurs is soon the series' normal), winsorised.
            ex = min(u - self.q, _TAIL_CLIP * max(self.b, 0.5 * sd, 0.05))
            self.b += min(1.0, rate / (1.0 - level)) * (ex - self.b)
            self.q += step * sd * level
        else:
            # Stochastic quantile: in equilibrium a fraction 1 - level of values exceed q.
            self.q -= step * sd * (1.0 - level)


class SeriesBaseline:
    """The rate model as a river-style anomaly detector on any timestamped numeric series.

    x = {"value": float, "timestamp": datetime (aware) or epoch ms}; one value per interval
    (the series' own spacing defines the interval). `score_one(x)` is in [0, 1], 1 the most
    anomalous, two-sided, 0 while warming up; it does not learn.

    The model and its z-score are exactly the access-rate baseline's (same `_Model`, same
    `RateParams`). What this class adds stands in for what the detection core does around the
    baseline with counts (its min_ratio / min_count gates, and alert cooldowns):
    - scales: the surprise is u = log(1 + |z|), signed by the side of the error; besides u
      itself, EWMAs of the signed surprise over `scales` intervals (6, 36, 216: half an hour,
      three hours and most of a day at 5-minute spacing) see a deviation that persists on one
      side, a drift or level shift, even when no single interval is extreme;
    - calibration: each statistic is compared with the values this series itself produces
      (`_Tail`: its `tail_level` quantile and an exponential tail fitted beyond it), so a series
      whose values routinely jump (bursty tweets, periodic spikes) needs a bigger jump than a
      smooth one. The smallest tail probability p, times the number of statistics
      (Bonferroni), gives the score 1 - 2^(log10(p) / page_log10): 0.5 at p = 10^-page_log10
      (default 3: rarer than once in a thousand intervals of this series);
    - repeats: within `repeat_intervals` of a higher score, a score only counts if it beats it
      (one anomaly, one detection).
    The product's 0..100 score is 100 * score_one when that is >= 0.5 (its page threshold 50 is
    0.5 here), else 0.

    `counts=None` treats the series as counts (Poisson floor on the variance) while every value
    seen is a non-negative integer; True or False fixes it."""

    def __init__(
        self,
        params: RateParams | None = None,
        counts: bool | None = None,
        calibration_rate: float = 0.002,
        repeat_intervals: int = 96,
        scales: tuple[int, ...] = (1, 6, 36, 216),
        tail_level: float = 0.995,
        quantile_step: float = 0.1,
        page_log10: float = 3.0,
    ) -> None:
        if not 0.0 < tail_level < 1.0:
            raise ValueError(f"tail_level must be between 0 and 1 (exclusive), not {tail_level}")
        self.params = params or RateParams()
        self.counts = counts
        self.calibration_rate = calibration_rate
        self.repeat_intervals = repeat_intervals
        self.scales = tuple(scales)
        self.tail_level = tail_level
        self.quantile_step = quantile_step
        self.page_log10 = page_log10
        self._model: _Model | None = None
        self._last_s: float | None = None
        self._ew = [0.0] * len(self.scales)  # per scale: EWMA of the signed surprise
        self._tails = [_Tail() for _ in self.scales]
        self._peak, self._peak_age = 0.0, 0  # the last high score and its age

    def _m(self) -> _Model:
        if self._model is None:
            self._model = _Model(self.params, counts=self.counts is not False)
        return self._model

    def _raw(self, x: dict[str, Any]) -> tuple[float, list[float]]:
        """(score before the repeat rule, per-scale statistics) of x; -1.0 while warming up."""
        m = self._m()
        if m.n < self.params.warmup_intervals:
            return -1.0, []
        z = m.zscore(float(x["value"]), _epoch_ms(x["timestamp"]) / 1000)
        su = math.copysign(math.log1p(abs(z)), z)
        stats = [e + (su - e) / k for e, k in zip(self._ew, self.scales, strict=True)]
        p = min(
            (t.p(abs(e), self.tail_level) for e, t in zip(stats, self._tails, strict=True)),
            default=1.0,
        )
        p = min(1.0, p * len(self.scales))
        return 1.0 - 2.0 ** (math.log10(max(p, 1e-300)) / self.page_log10), stats

    def score_one(self, x: dict[str, Any]) -> float:
        s, _ = self._raw(x)
        peak = self._peak if self._peak_age < self.repeat_intervals else 0.0
        return s if s > peak else 0.0

    def learn_one(self, x: dict[str, Any]) -> None:
        s, stats = self._raw(x)
        if s >= 0:
            if s > self._peak or self._peak_age >= self.repeat_intervals:
                self._peak, self._peak_age = s, 0
            else:
                self._peak_age += 1
            self._ew = stats
            for e, t in zip(stats, self._tails, strict=True):
                t.learn(abs(e), self.calibration_rate, self.tail_level, self.quantile_step)
        m = self._m()
        v = float(x["value"])
        if self.counts is None and m.counts and (v < 0 or not v.is_integer()):
            m.counts = False  # not counts after all: no Poisson floor from here on
        t_s = _epoch_ms(x["timestamp"]) / 1000
        if self._last_s is not None and t_s > self._last_s:
            dt = t_s - self._last_s
            # The interval is the series' spacing: the smallest step seen.
            m.interval_s = dt if m.n <= 1 else min(m.interval_s, dt)
        self._last_s = t_s
        m.learn(v, t_s)

    def state(self) -> list[Any]:
        out: list[Any] = [*self._m().dump()]
        for e, t in zip(self._ew, self._tails, strict=True):
            out += [round(e, 6), round(t.m, 6), round(t.v, 6), round(t.q, 6), round(t.b, 6), t.n]
        return [*out, round(self._peak, 6), self._peak_age]


def recent_peak(cfg: DetectorConfig, peak_state: Sequence[Any], ts_ms: int) -> float:
    """The recent peak an interval at `ts_ms` is compared with, from the stored
    `[interval, count in it, decayed peak]` (`MachineState.peak`), without updating it: the
    decayed peak of the intervals before, the last one seen included."""
    if not peak_state:
        return 0.0
    current, count, peak = peak_state
    interval = ts_ms // (cfg.rate.interval_s * 1000)
    if interval > current:
        gap_s = (interval - current) * cfg.rate.interval_s
        return max(float(peak) * 0.5 ** (gap_s / cfg.rate_peak_half_life_s), float(count))
    return float(peak)


class AccessRate(Detector):
    """More accesses in one interval than the machine's rate model expects at this time of day,
    and more than its own recent peaks (`rate_peak_ratio` times) and, when
    `rate_group_peak_ratio` is set, its peer group's.
    Owns `MachineState.rate` (the model, live on the state as `live_rate`),
    `MachineState.peak` (`[interval, count in it, decayed peak]`) and the group's peak
    (`PeerGroup.note_peak`)."""

    __slots__ = ()
    name = "access_rate"
    owns = ("rate", "peak")

    def score(self, seen: Seen) -> Finding | None:
        cfg, rate = seen.cfg, seen.rate
        # The model counts the event into its interval (learning the intervals closed since)
        # and scores the interval against what it learned before.
        rate_score = rate.observe(seen.ts)
        # A cold machine pages on nothing here: decide that before the peak lookups (the
        # group's is a read and decode of the peer record).
        if rate_score <= 0 or not seen.warm:
            return None
        if rate.count < cfg.rate_peak_ratio * recent_peak(cfg, seen.state.peak, seen.ts):
            # Bursts this machine makes routinely (a console session, a cron fan-in) are
            # clipped out of the learned level on purpose; its own recent peaks say they are
            # normal for it.
            return None
        group_ratio = cfg.rate_group_peak_ratio
        if (
            group_ratio > 0
            and seen.peers is not None
            and rate.count
            < group_ratio
            * seen.peers.recent_peak(
                seen.ts / 1000, cfg.rate_peak_half_life_s, seen.event.machine_id
            )
        ):
            # Nor are bursts its peers make routinely: a CI runner's first build of the day is
            # new to its own history, not to its runner pool's.
            return None
        expected = rate.expected()
        return Finding(
            self.name,
            rate_score,
            f"{seen.event.machine_id} made {rate.count} accesses in one "
            f"{cfg.rate.interval_s}-second interval; its baseline is about "
            f"{expected:.1f}.",
            {"events_in_interval": rate.count, "interval_s": cfg.rate.interval_s},
            {"mean": round(expected, 2), "threshold": round(rate.threshold(), 1)},
        )

    def learn(self, seen: Seen, found: Finding | None) -> None:
        """The recent peak, decaying with a half-life of `rate_peak_half_life_s`, excluding the
        current interval; the event counted into the current one."""
        cfg, state, ts = seen.cfg, seen.state, seen.ts
        interval = ts // (cfg.rate.interval_s * 1000)
        stored = state.peak
        if stored and interval <= stored[0]:
            # Still in (or late for) the current interval: the peak stands as stored, and a
            # stored peak was rounded here already (rounding it again is a no-op, and costs
            # as much as the rest of this detector's learning).
            pk = stored[2]
            count = stored[1] + 1 if interval == stored[0] else stored[1]
            state.peak = [stored[0], count, pk if type(pk) is float else round(float(pk), 3)]
            return
        if (
            stored
            and cfg.rate_group_peak_ratio > 0
            and seen.peers is not None
            and stored[1] > stored[2]
            and not any(ep.severity != "info" for ep in state.episodes.values())
        ):
            # The closed interval raised the machine's own peak (one that did not cannot raise
            # its group's, which holds the machine's earlier intervals). An interval of a
            # machine with an open page (this detector's, or a failure spike's retries) is not
            # taught: what paged must not become the group's normal.
            seen.peers.note_peak(
                seen.event.machine_id,
                stored[1],
                stored[0] * cfg.rate.interval_s,
                cfg.rate_peak_half_life_s,
            )
        peak = recent_peak(cfg, stored, ts)
        current, count = (state.peak[0], state.peak[1]) if state.peak else (interval, 0)
        if interval > current:
            current, count = interval, 0
        if interval >= current:
            count += 1
        state.peak = [current, count, round(peak, 3)]
