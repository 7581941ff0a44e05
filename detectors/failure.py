"""Failure ratio: failed or denied accesses in one interval against the machine's usual share.

Imports: the standard library and `detectors.base`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from detectors.base import Detector, Finding, Seen

if TYPE_CHECKING:
    from detectors.config import DetectorConfig


def learning_pause_ms(cfg: DetectorConfig) -> int:
    """How long the ratio does not learn from its own open episode: as long as the rate model
    takes to call a one-sided deviation a new normal (`adapt_after` intervals, 12 minutes by
    default), so a failure spike and the retry burst it causes become normal, if they last,
    on one clock. A spike is scored against the ratio from before it; failures that last
    longer are learned as they always were (clipped, so only gradually)."""
    return cfg.rate.adapt_after * cfg.rate.interval_s * 1000


class FailureRatio(Detector):
    """Failures and denials in the current interval against the machine's usual ratio. Owns
    `MachineState.fail`: `[interval, accesses in it, failures in it, learned failure ratio,
    intervals learned]`. The ratio is learned from each interval as it closes (the next
    interval's first event closes it), so `learn` has nothing to add; intervals of its own
    open episode are not learned, for a bounded time (`learning_pause_ms`)."""

    __slots__ = ()
    name = "failure_ratio"
    owns = ("fail",)

    def score(self, seen: Seen) -> Finding | None:
        cfg, event, state, warm = seen.cfg, seen.event, seen.state, seen.warm
        interval = seen.ts // (cfg.rate.interval_s * 1000)
        fail = state.fail
        cur, n, f, p, learned = fail
        failed = event.outcome != "SUCCESS"
        if interval > cur:
            # `_paused` asked only with an episode open (most intervals close with none).
            episodes = state.episodes
            if (
                cur >= 0
                and n > 0
                and (not episodes or not self._paused(seen, (cur + 1) * cfg.rate.interval_s * 1000))
            ):
                # Weight by accesses (a busy interval says more) but cap it, and clip what is
                # learned so a failure storm does not become the new normal.
                a = min(0.5, 0.02 * n) if learned else 1.0
                p += a * (min(f / n, max(p * 2, 0.05)) - p)
                learned += 1
            n, f = 1, int(failed)
            state.fail = [interval, n, f, round(p, 6), learned]
        else:
            # Within the interval only the counts move: the stored ratio is already rounded
            # (it is rounded whenever it changes), so it is not rounded again on every event.
            n += 1
            f += failed
            fail[1], fail[2] = n, f
        if not (failed and warm and learned >= 5):
            return None
        ratio = f / n
        if f < cfg.failure_min_count or ratio < max(cfg.failure_min_ratio, min(4 * p, (1 + p) / 2)):
            return None
        excess = f - n * p
        score = min(100.0, 50.0 + 12.0 * math.log2(excess / cfg.failure_min_count + 1))
        return Finding(
            "failure_ratio",
            score,
            f"{event.machine_id} had {f} of {n} accesses fail or denied in one "
            f"{cfg.rate.interval_s}-second interval ({ratio:.0%}); it usually fails "
            f"{p:.1%}.",
            {
                "failures": f,
                "accesses": n,
                "ratio": round(ratio, 3),
                "latest_outcome": event.outcome,
                "resource": event.resource,
            },
            {"ratio": round(p, 4)},
        )

    @staticmethod
    def _paused(seen: Seen, end_ms: int) -> bool:
        """True when the interval ending at `end_ms` fell in the machine's open failure_ratio
        episode, within `learning_pause_ms` of its first finding: what the machine is paged
        for does not teach its "usual" ratio."""
        ep = seen.state.episodes.get("failure_ratio")
        if ep is None or ep.first_ms >= end_ms:
            return False
        return end_ms - ep.first_ms <= learning_pause_ms(seen.cfg)

    # Everything it learns is learned in `score` as intervals close: running it is scoring it,
    # one call fewer per event than `Detector.run`.
    run = score
