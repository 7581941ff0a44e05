"""Detection settings: what every detector reads, one frozen value per effective config.

`streams.ops.config` builds a `DetectorConfig` from the validated YAML config; overrides give
some machines or groups other values (`DetectionCore.config_for`), and suppressions drop
matching findings before they become alerts.

Imports: the standard library and the parameter classes of the rate and combined models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from detectors.combined import CombinedParams
from detectors.rate import RateParams


@dataclass(frozen=True, slots=True)
class Suppression:
    """Findings matching every given pattern (shell-style globs) are dropped, not alerted,
    until `until_ms` (event time; None: no expiry)."""

    machine: str = "*"
    resource: str = "*"
    detector: str = "*"
    until_ms: int | None = None
    reason: str = ""

    def matches(self, machine: str, resource: str, detector: str, ts_ms: int) -> bool:
        return (
            (self.until_ms is None or ts_ms < self.until_ms)
            and fnmatchcase(machine, self.machine)
            and fnmatchcase(resource, self.resource)
            and fnmatchcase(detector, self.detector)
        )


@dataclass(frozen=True, slots=True)
class Override:
    """Settings for the machines whose id or peer group matches (globs); later overrides win.
    `settings` holds DetectorConfig field names (and `rate` as a dict of RateParams fields)."""

    machine: str = "*"
    group: str = "*"
    settings: tuple[tuple[str, Any], ...] = ()

    def matches(self, machine: str, group: str) -> bool:
        return fnmatchcase(machine, self.machine) and fnmatchcase(group, self.group)


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Detection settings. `streams.ops.config` builds this from the validated YAML config."""

    rate: RateParams = field(default_factory=RateParams)
    warmup_s: int = 3600  # per machine, in event time
    warmup_events: int = 50
    # What needs a daily cycle of history pages only after this much (detectors.maturity).
    mature_after_s: int = 86_400
    resource_depth: int = 2
    max_resources: int = 1000
    resource_horizon_s: int = 30 * 86400
    fanout_window_s: int = 300
    cooldown_s: int = 900
    update_every_s: int = 60  # at most one 'updated' state per alert per this much event time
    max_operations: int = 128
    rate_peak_ratio: float = 1.5  # a spike must also exceed the recent peak this many times
    # and this many times the level two other members of its peer group reached recently
    # (PeerGroup.recent_peak; 0: not judged against the group)
    rate_group_peak_ratio: float = 1.5
    rate_peak_half_life_s: int = 7 * 86400
    failure_min_count: int = 5  # failures in one interval before the ratio can page
    failure_min_ratio: float = 0.3  # and at least this share of the interval's accesses
    silence_min_rate: float = 0.5  # watched for silence above this many events per interval
    max_machines: int = 100_000  # per store; least recently seen evicted beyond it
    machine_idle_horizon_s: int = 30 * 86400  # machines idle this long are forgotten
    max_pages_per_minute: int = 20  # per store; more become one roll-up alert
    max_new_identity_pages_per_minute: int = 5
    off_hours_max_share: float = 0.1  # an idle hour: at most this share of the busiest hour
    off_hours_ratio: float = 4.0  # and this many times the most seen in that window of the day
    off_hours_min_events: int = 5  # and at least this many events in the window
    off_hours_window_s: int = 1800
    off_hours_spread: int = 2  # windows either side that also count as "this time of day"
    # A dense burst pages before the window fills: this many events, at a Poisson tail
    # probability at most off_hours_burst_p given this time of day's learned rate.
    off_hours_burst_events: int = 2
    off_hours_burst_p: float = 1e-3
    # Schedules (detectors.schedule): no off hours before the machine or its group has been
    # seen active in this many windows of earlier days (all times of day together), and
    # activity around a time of day active on an earlier day, up to this many times the most
    # seen there and the most seen there within 2 minutes (schedule.PACE_MS), is the schedule.
    off_hours_min_active_windows: int = 24
    off_hours_schedule_ratio: float = 1.0
    combined: CombinedParams | None = field(default_factory=CombinedParams)  # None: off
    # Silence pages only against the machine's rhythm (detectors.silence): active at this hour
    # on at least this share of the earlier days it was known (up to 7), and quiet for longer
    # than this many times its longest gap that began about then.
    silence_expect_share: float = 0.5
    silence_gap_factor: float = 2.0
    silence_max_skew_s: int = 3600  # a source this far behind the others counts as idle
    silence_min_gap_s: int = 300  # and never called silent before this much quiet
    max_watched: int = 50_000  # per store: the busiest machines beyond this are not watched
    # Peer groups: an event attribute naming the group wins, then these regexes (the named
    # group "group", else the first group, else the whole match), then the default rules.
    group_attribute: str | None = None
    group_patterns: tuple[str, ...] = ()
    suppressions: tuple[Suppression, ...] = ()
    overrides: tuple[Override, ...] = ()

    def version(self) -> str:
        """A short hash of the effective detection config: alerts carry it, and it is part of
        every alert_id, so a config change never merges episodes across configs."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
