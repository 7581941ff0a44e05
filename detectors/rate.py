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

Imports: the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from statistics import NormalDist
from typing import Any

_DAY_S = 86_400
_WEEK_DAYS = 7
# Longest run of empty intervals learned one by one; longer gaps decay in closed form.
_MAX_ZERO_STEPS = 2_880


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
        for v, k in zip(self.prof, self.prof_n, strict=True):
            out += (v, k)
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
        e = self.base(t_s) + self.level
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
        slot, dow, w = self._where(t_s)
        if t_s is not None and self.first_day < 0:
            self.first_day = t_s / _DAY_S
        if slot >= 0 and self.prof_n[slot] == 0:
            # A slot seen for the first time starts where the last one was, so the
            # expectation does not jump; its own history then takes over (below).
            self.prof[slot] = self.ref if self.n else x
        b = self.prof[slot] if slot >= 0 else 0.0
        if w > 0.0:
            b += w * self.dow[dow]
        if self.n == 0:
            self.gmean = x
            if slot < 0:
                self.level = x
            else:
                self.prof_n[slot] = 1
                self.ref = x
            self.n = 1
            return
        e = b + self.level
        if self.counts:
            e = max(e, 0.0)
        sd = self.std(e)
        d = x - e
        lim = p.clip_z * sd
        side = 1 if d > lim else -1 if d < -lim else 0
        # Winsorise: the baseline adapts to growth, not to bursts.
        xc = e + max(-lim, min(lim, d))
        if side and (self.run == 0 or (side > 0) == (self.run > 0)):
            self.run += side
            self.run_sum += x
        else:
            self.run, self.run_sum = side, (x if side else 0.0)
        if abs(self.run) >= p.adapt_after:
            # The same side for this long is a new normal: re-anchor the level on it.
            xc = self.run_sum / abs(self.run)
            self.level += xc - e
            self.var = max(self.var, (xc - e) ** 2 / p.adapt_after)
            self.run, self.run_sum = 0, 0.0
        else:
            a = p.alpha
            dc = xc - e
            self.level += a * dc
            self.var = (1 - a) * (self.var + a * dc * dc)
        if slot >= 0:
            # The profile learns the value itself, clipped at a few of the series' standard
            # deviations, on its own clock: `profile_days` of memory, starting from
            # `profile_prior_days` of weight on its first value.
            per_day = max(1.0, _DAY_S / self.interval_s / p.slots)
            k = self.prof_n[slot]
            r = max(
                1.0 / (k + 1 + per_day * p.profile_prior_days), 1.0 / (per_day * p.profile_days)
            )
            old = self.prof[slot]
            glim = p.clip_z * math.sqrt(self.gvar)
            dp = x - (w * self.dow[dow] if w > 0 else 0.0) - old
            self.prof[slot] = old + r * max(-glim, min(glim, dp))
            # Counted only as far as it matters: past that the slot learns at its steady rate.
            self.prof_n[slot] = min(k + 1, int(per_day * (p.profile_days - p.profile_prior_days)))
            self.ref = self.prof[slot]
            # Keep the expectation continuous: what the profile learned, the level gives up.
            self.level -= self.prof[slot] - old
            # The day-of-week offset learns the day's departure from the profile.
            rd = 1.0 / (per_day * p.slots * 3)  # ~3 weeks of memory
            dd = x - self.prof[slot] - self.dow[dow]
            self.dow[dow] += rd * max(-glim, min(glim, dd))
            # Offsets average to zero: the profile holds the level of the week.
            mean_dow = sum(self.dow) / _WEEK_DAYS
            self.dow = [v - mean_dow for v in self.dow]
        # The series' own scale, learned slowly and clipped relative to its size, so that one
        # huge burst does not make everything after it look small.
        ag = p.alpha * p.scale_rate
        gsd = math.sqrt(self.gvar)
        glim = p.clip_z * gsd + abs(self.gmean)
        gd = max(-glim, min(glim, x - self.gmean))
        self.gmean += ag * gd
        self.gvar = (1 - ag) * (self.gvar + ag * gd * gd)
        self.n += 1

    def learn_zeros(self, first: int, step_s: float, k: int) -> None:
        """`learn(0.0, (first + i) * step_s)` for i in 0..k-1. A sparse machine closes dozens of
        empty intervals per event, and learning them one by one was most of the pipeline's
        time. Within one time-of-day slot, while the day-of-week weight is constant (0 before
        `weekly_after_days`; 1 from a week later, once the slot has its full history), every
        update is linear in the state (nothing clipped, no one-sided run: checked before,
        else one by one), so a run of them has a closed form (`_zeros_closed`): equal to the
        one-by-one result up to rounding (relative 1e-12, tests/test_rate.py)."""
        if k <= 0:
            return
        p = self.params
        if self.n == 0 or self.first_day < 0 or not self.counts or not p.slots:
            self._zeros_exact(first, step_s, k)
            return
        slots = p.slots
        end = first + k
        i = first
        while i < end:
            # The steps left in this slot: the slot index is floor(t * slots / day).
            t_s = i * step_s
            slot = int(t_s % _DAY_S * slots // _DAY_S)
            nxt = (t_s - t_s % _DAY_S) + (slot + 1) * _DAY_S / slots
            m = max(1, math.ceil((nxt - t_s) / step_s))
            while m > 1 and int((i + m - 1) * step_s % _DAY_S * slots // _DAY_S) != slot:
                m -= 1
            m = min(m, end - i)
            if m < 2 or not self._zeros_closed(i, step_s, m, slot):
                # Often only the first step is not linear (a slot's first value): take it
                # exactly and try the rest again.
                self._zeros_exact(i, step_s, 1)
                if m > 1 and not self._zeros_closed(i + 1, step_s, m - 1, slot):
                    self._zeros_exact(i + 1, step_s, m - 1)
            i += m

    def _zeros_closed(self, first: int, step_s: float, m: int, slot: int) -> bool:
        """m empty intervals in one slot at once, if every step would be linear (see
        learn_zeros); False, changing nothing, if not.

        With a = 1 - alpha, r_j the slot's learning rate at step j (1 / (its count + prior),
        down to its floor), beta = 6/7 of the day-of-week rate (its share once the offsets
        are re-centred), c = 1 - the scale's rate, and a value of 0 every step:
        - day-of-week weight 0: the profile P follows P' = (1 - r_j) P, and what it gives up
          the level takes, so the expectation e = P + level decays by a (or, at e = 0, P +
          level stays put); the day's offset D' = D - beta (P' + D), summed in a short loop;
        - weight 1 (the slot at its floor rate r, b = 1 - r): S = P + D decays by
          g = b (1 - beta), e' = a e - beta b S, D' = D - beta b S;
        - a one-sided run in progress ends at the first step (nothing is clipped);
        - the variance V' = a (V + alpha e^2) and the scale (G' = c G, H' = c (H + (1-c) G^2))
          are geometric sums of those."""
        p = self.params
        first_day = self.first_day
        w_first = (first * step_s / _DAY_S - first_day - p.weekly_after_days) / _WEEK_DAYS
        w_last = ((first + m - 1) * step_s / _DAY_S - first_day - p.weekly_after_days) / _WEEK_DAYS
        if w_last <= 0.0:
            weekly = False
        elif w_first >= 1.0:
            weekly = True
        else:
            return False
        if p.clip_z < 1.0:
            return False
        slots = p.slots
        per_day = max(1.0, _DAY_S / self.interval_s / slots)
        prior = per_day * p.profile_prior_days
        r_floor = 1.0 / (per_day * p.profile_days)
        n_cap = int(per_day * (p.profile_days - p.profile_prior_days))
        kn = self.prof_n[slot]
        if kn <= 0 or (weekly and kn != n_cap):
            return False
        rd = 1.0 / (per_day * slots * 3)
        alpha = p.alpha
        a, beta = 1.0 - alpha, rd * 6.0 / _WEEK_DAYS
        c = 1.0 - alpha * p.scale_rate
        dw = (int(first * step_s / _DAY_S) + 3) % _WEEK_DAYS
        P, D, L = self.prof[slot], self.dow[dw], self.level
        G, H = self.gmean, self.gvar
        # The scale's variance never falls below c^m H: the clip bound for every step. An
        # expectation e <= clip_z^2 is within clip_z sd of 0 (the sd is >= sqrt(e), and
        # >= 0.5): the empty interval is not clipped and starts no one-sided run.
        glim = p.clip_z * math.sqrt(c**m * H)
        e_max = p.clip_z**2
        am, cm = a**m, c**m
        if not weekly:
            e0 = P + L
            # |P_j| stays within |P|, and |D_j| within max(|D|, |P|) and |D| + m beta |P|.
            if e0 > e_max or abs(P) + min(max(abs(D), abs(P)), abs(D) + m * beta * abs(P)) > glim:
                return False
            q = 1.0 - beta
            # While the slot is younger than its cap, r_j = 1 / (N + j) (above the floor), so
            # P telescopes to P (N - 1) / (N + h - 1); then r is constant and P geometric.
            h = min(m, max(0, n_cap - kn))
            N = kn + 1 + prior
            Pm, Dm = P, D
            if h:
                bp = beta * P * (N - 1)
                for j in range(h):
                    Dm = q * Dm - bp / (N + j)
                Pm = P * (N - 1) / (N + h - 1)
            if m > h:
                k = m - h
                b = 1.0 - max(1.0 / (n_cap + 1 + prior), r_floor)
                s_qb = k * q ** (k - 1) if q == b else (q**k - b**k) / (q - b)
                Dm = q**k * Dm - beta * Pm * b * s_qb
                Pm *= b**k
            kn = min(kn + m, n_cap)
            if e0 >= 0.0:
                em = e0 * am
                V = am * self.var + e0 * e0 * am * (1.0 - am)
                Lm = em - Pm
            else:
                V = am * self.var
                Lm = e0 - Pm
            self.prof_n[slot] = kn
        else:
            b = 1.0 - r_floor
            g = b * (1.0 - beta)
            S = P + D
            e0 = S + L
            if abs(S) > glim or abs(a - g) < 1e-15:
                return False
            gm = g**m
            Sm = S * gm
            Dm = D - beta * b * S * _geo(g, m)
            Pm = Sm - Dm
            # e_j = a^j e0 - kap (a^j - g^j) / (a - g): two exponentials, so its sign and size
            # over the run are bounded by its ends and coefficients.
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
                return False
        dD = Dm - D
        dow = self.dow
        for j in range(_WEEK_DAYS):
            dow[j] = Dm if j == dw else dow[j] - dD / (_WEEK_DAYS - 1)
        self.prof[slot] = Pm
        self.ref = Pm
        self.level = Lm
        self.var = V
        self.gmean = G * cm
        self.gvar = cm * H + G * G * cm * (1.0 - cm)
        self.run, self.run_sum = 0, 0.0
        self.n += m
        return True

    def _zeros_exact(self, first: int, step_s: float, k: int) -> None:
        """learn_zeros one interval at a time, with learn's arithmetic in learn's order
        (bit-for-bit equal), on local variables."""
        if k <= 0:
            return
        if self.n == 0 or self.first_day < 0 or not self.counts:
            for i in range(k):
                self.learn(0.0, (first + i) * step_s)
            return
        p = self.params
        slots = p.slots
        alpha, clip_z, adapt_after = p.alpha, p.clip_z, p.adapt_after
        floor2 = p.scale_floor**2
        weekly_after = p.weekly_after_days
        per_day = max(1.0, _DAY_S / self.interval_s / slots) if slots else 1.0
        prior = per_day * p.profile_prior_days
        r_floor = 1.0 / (per_day * p.profile_days)
        n_cap = int(per_day * (p.profile_days - p.profile_prior_days))
        rd = 1.0 / (per_day * slots * 3) if slots else 0.0
        ag = alpha * p.scale_rate
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
                for j in range(_WEEK_DAYS):
                    dow_l[j] -= mean_dow
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

    __slots__ = ("count", "current", "model", "params")

    def __init__(self, params: RateParams, state: list[Any] | None = None) -> None:
        self.params = params
        self.model = _Model(params, counts=True)
        self.current, self.count = -1, 0
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
        if interval <= self.current:
            return
        if self.current >= 0:
            m = self.model
            m.learn(float(self.count), self._t(self.current))
            gap = min(interval - self.current - 1, 10_000_000)
            step_s = float(self.params.interval_s)
            m.learn_zeros(self.current + 1, step_s, min(gap, _MAX_ZERO_STEPS))
            if gap > _MAX_ZERO_STEPS:
                m.decay_zeros(gap - _MAX_ZERO_STEPS)
        self.current, self.count = interval, 0

    def expected(self) -> float:
        """Expected events in the current interval."""
        return self.model.expected(self._t(self.current) if self.current >= 0 else None)

    def expected_at(self, ts_ms: int) -> float:
        """Expected events in the interval holding ts_ms, as the model stands (no learning)."""
        return self.model.expected(self._t(ts_ms // (self.params.interval_s * 1000)))

    def std(self) -> float:
        return self.model.std(self.expected())

    def threshold(self) -> float:
        p = self.params
        e = self.expected()
        return max(e + p.z * self.std(), p.min_ratio * e, float(p.min_count))

    @property
    def warm(self) -> bool:
        return self.model.n >= self.params.warmup_intervals

    def observe(self, ts_ms: int, weight: int = 1) -> float:
        """Count an event and return its score in [0, 100]: 0 below the spike threshold, above it
        rising with log2 of observed over expected. Late events count in the current interval."""
        self.advance(ts_ms // (self.params.interval_s * 1000))
        self.count += weight
        if not self.warm or self.count < self.threshold():
            return 0.0
        ratio = self.count / max(self.expected(), 0.5)
        return max(50.0, min(100.0, 40.0 + 15.0 * math.log2(ratio)))

    def quiet_score(self, now_ms: int) -> float:
        """How unusual the silence up to `now_ms` is, in [0, 100] (>= 50: page-worthy), without
        learning anything. The closed intervals since the last event and the elapsed part of the
        current one are compared with what the model expected over the same span."""
        p = self.params
        m = self.model
        if not self.warm or self.current < 0:
            return 0.0
        iv_ms = p.interval_s * 1000
        now_iv = now_ms // iv_ms
        if now_iv < self.current:
            return 0.0
        observed = float(self.count)
        exp_sum = var_sum = 0.0
        # Cap the span: a day of silence is as conclusive as a week of it.
        last = min(now_iv, self.current + _DAY_S // p.interval_s)
        for i in range(self.current, last + 1):
            frac = 1.0
            if i == now_iv:
                frac = (now_ms - now_iv * iv_ms) / iv_ms
            e = m.expected(self._t(i)) * frac
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
