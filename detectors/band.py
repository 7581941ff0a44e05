"""The access-rate band of one machine as its baseline stands: what `auditwatch backtest` plots
against the observed rate.

Read-only: nothing here learns or changes a baseline. The band is the one the `access_rate`
detector judges an interval by: `expected` events per interval from the learned profile and
level, `high` the page threshold, and `low` expected - z standard deviations (floored at 0),
the symmetric lower edge, shown for orientation (silence is judged over a span, not per
interval). `high` is the larger of the baseline's spike threshold (expected + z standard
deviations, `min_ratio` times expected, `min_count`) and, for a machine, `rate_peak_ratio`
times its recent peak: the detector pages only on an interval above both, since bursts a
machine makes routinely are clipped out of its learned level on purpose.

Imports: the standard library and `detectors` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from detectors.config import DetectorConfig
from detectors.rate import RateBaseline, RateParams, recent_peak
from detectors.state import MachineState


@dataclass(frozen=True, slots=True)
class RateBand:
    """Events per rate interval (`RateParams.interval_s`) at one moment."""

    expected: float
    low: float
    high: float
    warm: bool  # past the baseline's warm-up: the detector can page on it
    # rate_peak_ratio x the machine's recent peak, included in `high` (0: not applied).
    peak_floor: float = 0.0


def rate_band(params: RateParams, rate_state: list[Any], ts_ms: int) -> RateBand | None:
    """The band at `ts_ms` of a baseline serialised as `RateBaseline.state()`; None when it has
    learned nothing yet (no closed interval)."""
    if not rate_state:
        return None
    baseline = RateBaseline(params, rate_state)
    if baseline.n == 0:
        return None
    expected = baseline.expected_at(ts_ms)
    sd = baseline.model.std(expected)
    high = max(expected + params.z * sd, params.min_ratio * expected, float(params.min_count))
    return RateBand(expected, max(0.0, expected - params.z * sd), high, baseline.warm)


def machine_rate_band(cfg: DetectorConfig, state: Mapping[str, Any], ts_ms: int) -> RateBand | None:
    """The band of one machine from its stored state (the dict `MachineState.to_dict` makes),
    with `cfg` the machine's effective config (`DetectionCore.config_for`); `high` includes
    the recent-peak condition."""
    machine = MachineState.from_dict(dict(state))
    band = rate_band(cfg.rate, machine.rate, ts_ms)
    if band is None:
        return None
    floor = cfg.rate_peak_ratio * recent_peak(cfg, machine.peak, ts_ms)
    return replace(band, high=max(band.high, floor), peak_floor=floor)
