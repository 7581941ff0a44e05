"""Access-rate baseline: events per interval against the machine's own learned level.

The baseline is an exponentially weighted mean and variance of per-interval counts, with empty
intervals counted as zeros. A count is scored against the baseline of the intervals before it
(score before learn), and learned winsorised so one burst does not teach the baseline that
bursts are normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# A gap longer than this many intervals decays the baseline in closed form instead of a loop.
_MAX_ZERO_STEPS = 64


@dataclass(frozen=True, slots=True)
class RateParams:
    interval_s: int = 60
    alpha: float = 0.02  # ~50 intervals of memory
    z: float = 6.0  # how many (Poisson-floored) standard deviations make a spike
    min_ratio: float = 3.0  # and at least this many times the expected count
    min_count: int = 20  # and at least this many events in the interval
    warmup_intervals: int = 60


class RateBaseline:
    """Per-interval event counts of one series. State is a small list, so it serialises cheaply:
    [interval index, count in it, mean, variance, intervals learned]."""

    __slots__ = ("count", "current", "mean", "n", "params", "var")

    def __init__(self, params: RateParams, state: list[Any] | None = None) -> None:
        self.params = params
        if state:
            self.current, self.count, self.mean, self.var, self.n = state
        else:
            self.current, self.count, self.mean, self.var, self.n = -1, 0, 0.0, 0.0, 0

    def state(self) -> list[Any]:
        return [self.current, self.count, round(self.mean, 6), round(self.var, 6), self.n]

    def _learn(self, x: float) -> None:
        p = self.params
        if self.n > 0:
            # Winsorise at the spike threshold: the baseline adapts to growth, not to bursts.
            x = min(x, self.threshold())
        a = p.alpha if self.n > 0 else 1.0
        d = x - self.mean
        self.mean += a * d
        self.var = (1 - a) * (self.var + a * d * d)
        self.n += 1

    def _learn_zeros(self, k: int) -> None:
        steps = min(k, _MAX_ZERO_STEPS)
        for _ in range(steps):
            self._learn(0.0)
        rest = k - steps
        if rest > 0:
            decay = (1 - self.params.alpha) ** rest
            self.mean *= decay
            self.var *= decay
            self.n += rest

    def advance(self, interval: int) -> None:
        """Close the current interval (learning it and any empty ones since) when time moves on."""
        if interval <= self.current:
            return
        if self.current >= 0:
            self._learn(float(self.count))
            self._learn_zeros(min(interval - self.current - 1, 10_000_000))
        self.current, self.count = interval, 0

    def expected(self) -> float:
        return self.mean

    def std(self) -> float:
        # Counts are at least Poisson-noisy: floor the variance at the mean.
        return math.sqrt(max(self.var, self.mean, 0.25))

    def threshold(self) -> float:
        p = self.params
        return max(self.mean + p.z * self.std(), p.min_ratio * self.mean, float(p.min_count))

    @property
    def warm(self) -> bool:
        return self.n >= self.params.warmup_intervals

    def observe(self, ts_ms: int, weight: int = 1) -> float:
        """Count an event and return its score in [0, 100]: 0 below the spike threshold, above it
        rising with log2 of observed over expected. Late events count in the current interval."""
        self.advance(ts_ms // (self.params.interval_s * 1000))
        self.count += weight
        if not self.warm or self.count < self.threshold():
            return 0.0
        ratio = self.count / max(self.mean, 0.5)
        return max(50.0, min(100.0, 40.0 + 15.0 * math.log2(ratio)))

    # river-style interface, for using the baseline on any timestamped numeric series.
    def score_one(self, x: dict[str, float]) -> float:
        """Score of value x["value"] as the count of one interval, without learning it."""
        if not self.warm:
            return 0.0
        v = x["value"]
        z = (v - self.mean) / self.std()
        return max(0.0, min(1.0, z / (2 * self.params.z)))

    def learn_one(self, x: dict[str, float]) -> None:
        self._learn(x["value"])
