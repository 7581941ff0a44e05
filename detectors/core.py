"""The detection core: one machine's event in, its updated state and any alert states out.

`auditwatch run` (per Kafka partition, state in Quix stores) and `auditwatch replay` (state in a
dict) both call `DetectionCore.process`. Everything it decides depends only on the machine's
own state and the event, so the same per-machine event order gives the same alerts, ids
included, whichever runtime delivers it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

import orjson

from detectors.capacity import MachineIndex, StormWindow
from detectors.combined import CombinedModels, CombinedParams, MemoryKV
from detectors.combined import explain as explain_combined
from detectors.combined import features as combined_features
from detectors.identity import default_group, normalise_resource
from detectors.peers import KeyValue, PeerGroup, store_first_seen
from detectors.rate import RateBaseline, RateParams, poisson_tail
from detectors.silence import SWEEP_EVERY_MS, SilenceWatch, SilenceWatches, WatchEntry
from schemas.alert import SEVERITY_RANK, Alert, AlertControl, Scalar, severity_for
from schemas.event import AuditEvent, format_rfc3339_ms

# Verbs (SQL, Redis, HTTP, cloud API names after the service prefix) that destroy or rewrite.
_DESTRUCTIVE = re.compile(
    r"^(?:[\w.-]+:)*(DELETE|DROP|TRUNCATE|ALTER|GRANT|REVOKE|PURGE|DESTROY|REMOVE|FLUSHALL|"
    r"FLUSHDB|DEL|TERMINATE|DISABLE|STOPLOGGING|PUTBUCKETPOLICY|ATTACH|DETACH)"
)
_READ = re.compile(
    r"^(?:[\w.-]+:)*(SELECT|GET|LIST|READ|DESCRIBE|HEAD|SCAN|CONSUME|QUERY|FETCH|SUBSCRIBE|"
    r"LOOKUP|SEARCH|WATCH|MGET|HGET|EXISTS|CHECK|VIEW|LOOKUP)"
)


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


_BURST_GAP_MS = 10_000  # off-hours accesses closer than this count as one
_RUN_GAP_MS = 300_000  # and a run of them ends after this much quiet
_SCAN_EVENTS = 8  # latest spaced off-hours accesses kept as candidate starts of a burst
# state.off: [window, count in it, fired, run start ms, spaced accesses, last spaced ms,
# learned rate x 1e6 and busiest nearby window at the run's start, busiest nearby window
# around the current window (without the run's own), then the latest spaced access times]
_OFF_RECENT = 9


def _near(window: int, slots: int, spread: int) -> list[int]:
    """The windows of the day within `spread` of this one (off-hours' neighbourhood), built
    only where it is read: not on every event."""
    return [(window + d) % slots for d in range(-spread, spread + 1)]


def is_destructive(operation: str) -> bool:
    return _DESTRUCTIVE.match(operation.upper()) is not None


def is_write(operation: str) -> bool:
    return _READ.match(operation.upper()) is None


# Key kind of machine state in the store.
MACHINE = b"m"
# A member joining the group this long before (or after) another went quiet is its successor.
ROTATION_WINDOW_MS = 30 * 60_000

HINTS = {
    "access_rate": "Check what the machine was running at that time (deploy, backfill, retry "
    "loop) and whether its credentials are used from an unexpected place.",
    "new_resource": "Check whether a deploy or config change gave the machine this access; if "
    "not, treat its credentials as possibly leaked.",
    "failure_ratio": "Check for a rotated or revoked credential, a permission change, or "
    "someone probing with this identity (many distinct resources failing).",
    "operation": "Check whether this client is supposed to write or delete; a read-only "
    "identity issuing destructive statements suggests stolen credentials.",
    "off_hours": "Check for a scheduled job or maintenance window; otherwise someone is "
    "using this identity outside its normal hours.",
    "silence": "Check whether the machine crashed, was scaled down or lost its network or "
    "credentials; if it was stopped on purpose, no action.",
    "storm": "Many machines at once: look for the common cause.",
    "combined": "Several signals moved together (rate, new resources, failures, writes): "
    "check the machine's recent accesses as a whole for a leaked credential in slow use.",
    "new_identity": "Check who deployed this identity and whether it belongs to a known "
    "workload; an unknown identity touching sensitive resources is a red flag.",
}

# What each detector's `expected` numbers were learned over, added to its alerts as
# expected["baseline"] (with expected["baseline_since"], the start of the machine's history).
BASELINES = {
    "access_rate": "accesses per {interval_s}-second interval, by time of day",
    "new_resource": "resources the machine or its peer group used in the last {horizon_days} days",
    "failure_ratio": "share of failed or denied accesses per {interval_s}-second interval",
    "operation": "operations the machine or its peer group performed",
    "off_hours": "accesses per {window_minutes}-minute window at this time of day",
    "silence": "accesses at this time of day",
    "combined": "the activity windows of the machine's peer group",
    "new_identity": "peer groups known to this deployment",
}


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
    resource_depth: int = 2
    max_resources: int = 1000
    resource_horizon_s: int = 30 * 86400
    fanout_window_s: int = 300
    cooldown_s: int = 900
    update_every_s: int = 60  # at most one 'updated' state per alert per this much event time
    max_operations: int = 128
    rate_peak_ratio: float = 1.5  # a spike must also exceed the recent peak this many times
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
    off_hours_burst_events: int = 3
    off_hours_burst_p: float = 1e-3
    combined: CombinedParams | None = field(default_factory=CombinedParams)  # None: off
    silence_min_active_hours: int = 6  # only machines busy most of the day are watched
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


@dataclass(slots=True)
class Episode:
    """An open alert of one (machine, detector)."""

    alert_id: str
    first_ms: int
    last_ms: int
    last_emit_ms: int
    count: int
    severity: str
    score: float
    event_ids: list[str]
    # What the last alert state sent said: a resolution repeats it (it may be read alone).
    observed: dict[str, Scalar] = field(default_factory=dict)
    expected: dict[str, Scalar] = field(default_factory=dict)
    # Alert states written so far: the next one's sequence number.
    states: int = 0

    def to_list(self) -> list[Any]:
        return [
            self.alert_id,
            self.first_ms,
            self.last_ms,
            self.last_emit_ms,
            self.count,
            self.severity,
            self.score,
            self.event_ids,
            self.observed,
            self.expected,
            self.states,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> Episode:
        return cls(*v)


@dataclass(slots=True)
class MachineState:
    """Everything remembered about one machine; serialised as a JSON-friendly dict."""

    first_ms: int
    last_ms: int
    n: int
    resources: dict[str, int]  # normalised resource -> last seen (ms)
    rate: list[Any]
    recent_new: list[list[Any]]  # [ms, resource] of new resources inside the fan-out window
    episodes: dict[str, Episode]
    ops: dict[str, int] = field(default_factory=dict)  # operation -> last seen (ms)
    # [interval, accesses in it, failures in it, learned failure ratio, intervals learned]
    fail: list[Any] = field(default_factory=lambda: [-1, 0, 0, 0.0, 0])
    # [window, events in it, alerted, first ms, events spaced apart, last spaced ms]
    off: list[int] = field(default_factory=list)
    hmax: list[int] = field(default_factory=list)  # most events seen per window of the day
    peak: list[Any] = field(default_factory=list)  # [interval, count in it, decayed peak]
    # the combined score's open window: [window, events, failures, writes, new resources,
    # new operations, first event id, last event ms]
    win: list[Any] = field(default_factory=list)
    # The rate model as a live object while a worker keeps this state between events; `rate`
    # is its serialised form, brought up to date by to_dict.
    live_rate: RateBaseline | None = field(default=None, compare=False, repr=False)

    @classmethod
    def new(cls, ts_ms: int) -> MachineState:
        return cls(ts_ms, ts_ms, 0, {}, [], [], {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "f": self.first_ms,
            "l": self.last_ms,
            "n": self.n,
            "r": self.resources,
            "q": self.rate_state(),
            "w": self.recent_new,
            "e": {k: v.to_list() for k, v in self.episodes.items()},
            "o": self.ops,
            "x": self.fail,
            "h": self.off,
            "k": self.hmax,
            "pk": self.peak,
            "cw": self.win,
        }

    def rate_state(self) -> list[Any]:
        return self.live_rate.state() if self.live_rate is not None else self.rate

    def rate_baseline(self, params: RateParams) -> RateBaseline:
        """The machine's rate model under `params`, kept live on the state (its dump is exact,
        so keeping it is the same as loading it from `rate` again)."""
        live = self.live_rate
        if live is None or (live.params is not params and live.params != params):
            live = self.live_rate = RateBaseline(params, self.rate_state())
        return live

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineState:
        return cls(
            d["f"],
            d["l"],
            d["n"],
            d["r"],
            d["q"],
            d["w"],
            {k: Episode.from_list(v) for k, v in d["e"].items()},
            d.get("o", {}),
            d.get("x", [-1, 0, 0, 0.0, 0]),
            d.get("h", []),
            d.get("k", []),
            d.get("pk", []),
            d.get("cw", []),
        )


def _encode_state(state: MachineState) -> bytes:
    return orjson.dumps(state.to_dict())


def _decode_state(raw: bytes) -> MachineState:
    return MachineState.from_dict(orjson.loads(raw))


class WorkingCopy:
    """Machine states kept decoded between checkpoints, written to their stores only when the
    runtime flushes (before it commits a checkpoint, so the changelog holds what the committed
    offsets imply, exactly as when every event wrote its state through).

    Reading and writing a machine's state through the store cost a decode and an encode per
    event; with this they cost one of each per machine per checkpoint. Bounded: after a flush
    at most `max_machines` states are kept, the least recently used dropped (they are clean
    then, so dropping them loses nothing). Between flushes it also holds every machine changed
    since the last one; the runtime drops a partition's states when it loses the partition."""

    __slots__ = ("dirty", "max_machines", "states")

    def __init__(self, max_machines: int) -> None:
        if max_machines < 0:
            raise ValueError(f"max_machines must be >= 0, got {max_machines}")
        self.max_machines = max_machines
        self.states: OrderedDict[tuple[Any, str], MachineState] = OrderedDict()
        self.dirty: dict[Any, set[str]] = {}

    def get(self, kv: KeyValue, partition: Any, machine: str) -> MachineState | None:
        key = (partition, machine)
        state = self.states.get(key)
        if state is not None:
            self.states.move_to_end(key)
            return state
        raw = kv.get(MACHINE, machine)
        if raw is None:
            return None
        state = self.states[key] = _decode_state(raw)
        return state

    def put(self, partition: Any, machine: str, state: MachineState) -> None:
        key = (partition, machine)
        self.states[key] = state
        self.states.move_to_end(key)
        dirty = self.dirty.get(partition)
        if dirty is None:
            dirty = self.dirty[partition] = set()
        dirty.add(machine)

    def delete(self, kv: KeyValue, partition: Any, machine: str) -> None:
        kv.delete(MACHINE, machine)
        self.discard(partition, machine)

    def discard(self, partition: Any, machine: str) -> None:
        """Forget the machine's decoded state, changed or not; the store's copy stays."""
        self.states.pop((partition, machine), None)
        dirty = self.dirty.get(partition)
        if dirty is not None:
            dirty.discard(machine)

    def dirty_partitions(self) -> list[Any]:
        return [p for p, machines in self.dirty.items() if machines]

    def flush(self, kv: KeyValue, partition: Any) -> int:
        """Write the partition's changed states to `kv`; returns how many."""
        machines = self.dirty.pop(partition, None)
        if not machines:
            return 0
        states = self.states
        for machine in machines:
            kv.set(MACHINE, machine, _encode_state(states[(partition, machine)]))
        return len(machines)

    def trim(self) -> None:
        """Drop the least recently used clean states beyond the bound."""
        states, dirty = self.states, self.dirty
        excess = len(states) - self.max_machines
        if excess <= 0:
            return
        dropped: list[tuple[Any, str]] = []
        for key in states:
            if excess <= 0:
                break
            if key[1] in dirty.get(key[0], ()):
                continue
            dropped.append(key)
            excess -= 1
        for key in dropped:
            del states[key]

    def drop(self, partition: Any) -> None:
        """Forget the partition's states, changed or not: its store is gone or another worker
        may have changed it since (a rebalance), or its checkpoint was abandoned."""
        self.dirty.pop(partition, None)
        for key in [k for k in self.states if k[0] == partition]:
            del self.states[key]


@dataclass(frozen=True, slots=True)
class Finding:
    """What one detector saw in one event: the score and its plain-words explanation."""

    detector: str
    score: float
    summary: str
    observed: dict[str, Scalar]
    expected: dict[str, Scalar]


class DetectionCore:
    """Scores each event against its machine's baselines, then learns it."""

    def __init__(
        self,
        config: DetectorConfig | None = None,
        control: Callable[[str], AlertControl | None] | None = None,
    ) -> None:
        self.config = config or DetectorConfig()
        # On-call's acknowledgements and snoozes by alert_id, consulted only when an alert
        # state is built (None in replay: nobody acknowledges a replay).
        self.control = control
        self.config_version = self.config.version()
        self._group_patterns = [re.compile(p) for p in self.config.group_patterns]
        self._per_machine: dict[str, DetectorConfig] = {}
        self.suppressed_findings = 0
        self._watches = SilenceWatches()
        self._indexes: dict[Any, MachineIndex] = {}
        # The earliest event time seen in any store: where a store that is new starts watching.
        self.watching_since_ms: int | None = None
        self._storms: dict[Any, StormWindow] = {}
        self.evictions = 0
        self._last: tuple[str, DetectorConfig, RateBaseline] = (
            "",
            self.config,
            RateBaseline(self.config.rate),
        )
        self.last_findings: list[Finding] = []
        self._combined_models: CombinedModels | None = None
        self._combined_store = MemoryKV()
        # None: every event writes its machine's state through to the store.
        self.working: WorkingCopy | None = None

    def keep_working_copy(self, max_machines: int) -> WorkingCopy:
        """Keep machine states decoded between events; the caller must `flush` each changed
        partition before it commits that partition's store, and `drop` a partition it loses."""
        self.working = WorkingCopy(max_machines)
        return self.working

    def flush(
        self, kv_of: Callable[[Any], KeyValue], partitions: Sequence[Any] | None = None
    ) -> int:
        """Write the working copy's changed states through `kv_of(partition)` (all changed
        partitions by default), then trim it to its bound. Returns the states written."""
        working = self.working
        if working is None:
            return 0
        targets = working.dirty_partitions() if partitions is None else partitions
        written = sum(working.flush(kv_of(p), p) for p in targets)
        working.trim()
        return written

    def _load(self, kv: KeyValue, partition: Any, machine: str) -> MachineState | None:
        if self.working is not None:
            return self.working.get(kv, partition, machine)
        raw = kv.get(MACHINE, machine)
        return _decode_state(raw) if raw is not None else None

    def _save(self, kv: KeyValue, partition: Any, machine: str, state: MachineState) -> None:
        if self.working is not None:
            self.working.put(partition, machine, state)
        else:
            kv.set(MACHINE, machine, _encode_state(state))

    def _forget(self, kv: KeyValue, partition: Any, machine: str) -> None:
        if self.working is not None:
            self.working.delete(kv, partition, machine)
        else:
            kv.delete(MACHINE, machine)

    def reconfigure(self, config: DetectorConfig) -> None:
        """Swap the detection settings, keeping everything learned: baselines live in the
        stores, and the silence watches, machine indexes and storm windows stay. Call it
        between events, on the thread that processes them. Rebuilds what __init__ derives
        from the config; keep the two in step."""
        self.config = config
        self.config_version = config.version()
        self._group_patterns = [re.compile(p) for p in config.group_patterns]
        self._per_machine = {}
        self._last = ("", config, RateBaseline(config.rate))

    def group_of(self, event: AuditEvent) -> str:
        """The peer group of the event's machine (and the detection stage's partitioning
        key)."""
        cfg = self.config
        if cfg.group_attribute is not None:
            named = event.attributes.get(cfg.group_attribute)
            if named:
                return named
        for pattern in self._group_patterns:
            m = pattern.search(event.machine_id)
            if m is not None:
                if "group" in pattern.groupindex:
                    found = m.group("group")
                else:
                    found = m.group(1) if pattern.groups else m.group(0)
                # A group that took no part in the match falls back to the whole match.
                return found or m.group(0)
        return default_group(event.machine_id)

    def config_for(self, machine_id: str, group: str) -> DetectorConfig:
        """The base config with every matching override applied, cached per machine."""
        if not self.config.overrides:
            return self.config
        cached = self._per_machine.get(machine_id)
        if cached is not None:
            return cached
        cfg = self.config
        for o in cfg.overrides:
            if o.matches(machine_id, group):
                values = dict(o.settings)
                rate = values.pop("rate", None)
                if rate:
                    values["rate"] = replace(cfg.rate, **dict(rate))
                cfg = replace(cfg, **values)
        if len(self._per_machine) >= 100_000:
            self._per_machine.clear()
        self._per_machine[machine_id] = cfg
        return cfg

    def suppressed(self, machine_id: str, finding: Finding, ts_ms: int) -> bool:
        resource = str(finding.observed.get("resource", ""))
        return any(
            s.matches(machine_id, resource, finding.detector, ts_ms)
            for s in self.config.suppressions
        )

    def observe(
        self, event: AuditEvent, kv: KeyValue, partition: Any = None, source: Any = None
    ) -> list[Alert]:
        """Process one event with all state in `kv` (one store per partition; `partition`
        tells the stores apart in memory): the machine's baselines, its peer group, and the
        silence watch list, which may yield alerts for other, silent machines. `source` names
        the upstream stream the event came through (an input partition), for the clock."""
        state = self._load(kv, partition, event.machine_id)
        since = self.watching_since_ms
        if since is None or event.timestamp_ms < since:
            self.watching_since_ms = event.timestamp_ms
        try:
            state, alerts = self.process(event, state, kv)
        except Exception:
            # Writing through, a failed event leaves the stored state as it was; the working
            # copy's object may be half changed. Fall back to the store (the last flush): the
            # machine loses what it learned since, but never keeps half an event.
            if self.working is not None:
                self.working.discard(partition, event.machine_id)
            raise
        self._save(kv, partition, event.machine_id, state)
        self._track(event, kv, partition)
        alerts.extend(self._watch_silence(event, state, kv, partition, source))
        return self._storm_control(event, alerts, partition) if alerts else alerts

    def _track(self, event: AuditEvent, kv: KeyValue, partition: Any) -> None:
        """Capacity: evict the least recently seen machines beyond the cap."""
        cfg = self.config
        index = self._indexes.setdefault(partition, MachineIndex())
        index.touch(event.machine_id, event.timestamp_ms)
        evicted = index.over(cfg.max_machines)
        if not evicted:
            return
        watch = self._watches.get(kv, partition)
        for machine in evicted:
            self._forget(kv, partition, machine)
            watch.entries.pop(machine, None)
            watch.open.pop(machine, None)
            self.evictions += 1

    def expire_idle(self, kv: KeyValue, partition: Any, now_ms: int) -> list[str]:
        """Forget machines idle for longer than the horizon (called once per sweep)."""
        index = self._indexes.get(partition)
        if index is None:
            return []
        idle = index.idle(now_ms - self.config.machine_idle_horizon_s * 1000)
        for machine in idle:
            self._forget(kv, partition, machine)
        self.evictions += len(idle)
        return idle

    def _storm_control(self, event: AuditEvent, alerts: list[Alert], partition: Any) -> list[Alert]:
        cfg = self.config
        window = self._storms.setdefault(partition, StormWindow())
        minute = event.timestamp_ms // 60_000
        out: list[Alert] = []
        if minute != window.minute:
            if window.held:
                out.append(self._rollup(window, "updated"))
            self._storms[partition] = window = StormWindow(minute=minute)
        for alert in alerts:
            if not alert.is_page:
                out.append(alert)
                continue
            window.pages += 1
            window.machines.add(alert.machine_id)
            n = window.by_detector.get(alert.detector, 0) + 1
            window.by_detector[alert.detector] = n
            cap = (
                cfg.max_new_identity_pages_per_minute
                if alert.detector == "new_identity"
                else cfg.max_pages_per_minute
            )
            if n <= cap and window.pages - window.held <= cfg.max_pages_per_minute:
                out.append(alert)
                continue
            window.held += 1
            if not window.first_event_id:
                window.first_event_id = alert.event_ids[0] if alert.event_ids else alert.alert_id
            out.append(
                replace(
                    alert,
                    severity="low",
                    summary="(held back by storm control) " + alert.summary,
                )
            )
            if not window.rollup_sent:
                window.rollup_sent = True
                out.append(self._rollup(window, "opened"))
        return out

    def _rollup(self, window: StormWindow, status: str) -> Alert:
        t = window.minute * 60_000
        blob = "\x1f".join(("*", "storm", window.first_event_id, self.config_version))
        detectors = ", ".join(f"{d} {n}" for d, n in sorted(window.by_detector.items()))
        return Alert(
            alert_id="a-" + hashlib.sha256(blob.encode()).hexdigest()[:24],
            status=status,
            machine_id="*",
            group="*",
            detector="storm",
            severity="high",
            score=80.0,
            event_time=format_rfc3339_ms(t),
            summary=f"Alert storm: {window.pages} pages from {len(window.machines)} machines in "
            f"one minute ({detectors}); {window.held} beyond the cap were recorded at low "
            "severity.",
            observed={
                "pages": window.pages,
                "machines": len(window.machines),
                "held_back": window.held,
            },
            expected={"max_pages_per_minute": self.config.max_pages_per_minute},
            event_ids=[],
            config_version=self.config_version,
            first_event_time=format_rfc3339_ms(t),
            last_event_time=format_rfc3339_ms(t + 59_999),
            repeat_count=window.pages,
            hint="Many machines deviating at once is usually a deploy, an outage or a "
            "credential rotation; look for the common cause before the single machines.",
        )

    def _watch_silence(
        self, event: AuditEvent, state: MachineState, kv: KeyValue, partition: Any, source: Any
    ) -> list[Alert]:
        # process() has just resolved this event's group, config and rate baseline: reuse
        # them rather than work them out again on the per-event path.
        group, cfg, rate = self._last
        watch = self._watches.get(kv, partition)
        self._note_open(watch, event.machine_id, group, state)
        ts = event.timestamp_ms
        if rate.warm and rate.expected() >= cfg.silence_min_rate:
            entry = watch.entries.get(event.machine_id)
            if entry is None:
                if len(watch.entries) < cfg.max_watched:
                    watch.entries[event.machine_id] = WatchEntry(ts, group)
            else:
                entry.last_ms, entry.alerted = max(entry.last_ms, ts), False
        else:
            watch.entries.pop(event.machine_id, None)
        if source != "seed":
            watch.advance(str(source), ts, cfg.silence_max_skew_s * 1000)
        return self._sweep_if_due(watch, kv, partition)

    def punctuate(self, kv: KeyValue, partition: Any, clocks: dict[str, int]) -> list[Alert]:
        """Move a store's silence clock with the event time of other sources (the runtime's
        other partitions, `clocks`: source -> latest event time), so a machine whose own
        partition has gone quiet is still judged; sweeps when a minute of that clock is due."""
        watch = self._watches.get(kv, partition)
        skew = self.config.silence_max_skew_s * 1000
        for source, ts in clocks.items():
            watch.advance(source, ts, skew)
        return self._sweep_if_due(watch, kv, partition)

    def forget_partition(self, partition: Any) -> None:
        """Drop what is kept in memory for a partition this worker no longer owns."""
        self._watches.drop(partition)
        self._indexes.pop(partition, None)
        self._storms.pop(partition, None)
        if self.working is not None:
            self.working.drop(partition)

    def _sweep_if_due(self, watch: SilenceWatch, kv: KeyValue, partition: Any) -> list[Alert]:
        if watch.clock_ms < watch.next_sweep_ms:
            return []
        watch.next_sweep_ms = watch.clock_ms + SWEEP_EVERY_MS
        for machine in self.expire_idle(kv, partition, watch.clock_ms):
            watch.entries.pop(machine, None)
            watch.open.pop(machine, None)
        alerts = self._sweep(watch, kv, partition)
        alerts.extend(self._resolve_idle(kv, watch, partition))
        self._watches.save(kv, watch)
        return alerts

    @staticmethod
    def _note_open(watch: SilenceWatch, machine: str, group: str, state: MachineState) -> None:
        # A silence episode stays open while the machine is silent: only its return ends it.
        last = [ep.last_ms for d, ep in state.episodes.items() if d != "silence"]
        if last:
            watch.open[machine] = [max(last), group]
        elif watch.open:
            watch.open.pop(machine, None)

    def _resolve_idle(self, kv: KeyValue, watch: SilenceWatch, partition: Any) -> list[Alert]:
        """Resolve the episodes of machines that have sent nothing for a cooldown: their own
        next event, which would resolve them, may never come. Runs at each sweep."""
        open_ = watch.open
        now_ms = watch.clock_ms
        if not open_:
            return []
        out: list[Alert] = []
        for machine, (last_ms, group) in list(open_.items()):
            cfg = self.config_for(machine, group)
            if now_ms - last_ms <= cfg.cooldown_s * 1000:
                continue
            del open_[machine]
            state = self._load(kv, partition, machine)
            if state is None:
                continue
            resolved = self._resolve_quiet(cfg, machine, group, state, now_ms, keep="silence")
            if resolved:
                self._save(kv, partition, machine, state)
                out.extend(resolved)
            self._note_open(watch, machine, group, state)
        return out

    def _sweep(self, watch: SilenceWatch, kv: KeyValue, partition: Any) -> list[Alert]:
        now = watch.clock_ms
        alerts: list[Alert] = []
        for machine, entry in list(watch.entries.items()):
            cfg = self.config_for(machine, entry.group)
            if entry.alerted or now - entry.last_ms < cfg.silence_min_gap_s * 1000:
                continue
            state = self._load(kv, partition, machine)
            if state is None:
                del watch.entries[machine]
                continue
            if PeerGroup(kv, entry.group).last_join_ms >= entry.last_ms - ROTATION_WINDOW_MS:
                # A new member joined as this one went quiet: a rotated pod or a replaced
                # instance, which never comes back. Not silence; stop watching it.
                del watch.entries[machine]
                continue
            rate = RateBaseline(cfg.rate, state.rate_state())
            day = now - now % 86_400_000
            by_hour = [rate.expected_at(day + h * 3_600_000) for h in range(24)]
            busiest = max(by_hour)
            active_hours = sum(e >= max(cfg.silence_min_rate, 0.25 * busiest) for e in by_hour)
            if active_hours < cfg.silence_min_active_hours:
                # Batch jobs and other short-duty machines are quiet most of the day by design.
                del watch.entries[machine]
                continue
            score = rate.quiet_score(now)
            if score < 50:
                continue
            entry.alerted = True
            minutes = (now - entry.last_ms) / 60_000
            expected = rate.expected_at(now) * minutes * 60 / cfg.rate.interval_s
            finding = Finding(
                "silence",
                score,
                f"{machine} has made no accesses for {minutes:.0f} minutes; at this time of "
                f"day it makes about {expected:.0f} in that time.",
                {
                    "silent_minutes": round(minutes, 1),
                    "last_event_time": format_rfc3339_ms(entry.last_ms),
                },
                {"events_in_that_time": round(expected, 1)},
            )
            # The episode is anchored on the machine's last event time, which both Kafka and
            # replay agree on, so the alert id does not depend on which event noticed it.
            anchor = AuditEvent(
                event_id=f"silence-after-{entry.last_ms}",
                ts_us=now * 1000,
                machine_id=machine,
                resource="",
                operation="",
                outcome="SUCCESS",
            )
            if cfg.suppressions and self.suppressed(machine, finding, now):
                self.suppressed_findings += 1
                continue
            alert = self._episode(cfg, anchor, entry.group, state, finding)
            self._save(kv, partition, machine, state)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def process(
        self, event: AuditEvent, state: MachineState | None, kv: KeyValue | None = None
    ) -> tuple[MachineState, list[Alert]]:
        """Score `event` against its machine's `state` (None for a machine not seen before)
        and, when `kv` is given, against its peer group; then learn it. Returns the updated
        state and the alert states to publish."""
        ts = event.timestamp_ms
        group_name = self.group_of(event)
        cfg = self.config_for(event.machine_id, group_name)
        warmup_ms = cfg.warmup_s * 1000
        peers = PeerGroup(kv, group_name) if kv is not None else None
        findings: list[Finding] = []
        if state is None:
            state = MachineState.new(ts)
            if kv is not None and peers is not None:
                first = store_first_seen(kv, ts, self.watching_since_ms)
                if not peers.known and ts - first > warmup_ms:
                    findings.append(self._new_identity(event, group_name))
                peers.join(ts)
        alerts: list[Alert] = []
        group = group_name
        alerts.extend(self._resolve_quiet(cfg, event.machine_id, group, state, ts))

        own_warm = state.n >= cfg.warmup_events and ts - state.first_ms >= warmup_ms
        # A new replica of a group that has been watched long enough is judged by the group
        # from its first event: rotated pods and autoscaled instances are not strangers.
        peer_warm = peers is not None and peers.members > 1 and peers.warm(ts, warmup_ms)
        warm = own_warm or peer_warm

        rate = state.rate_baseline(cfg.rate)
        self._last = (group_name, cfg, rate)
        rate_score = rate.observe(ts)
        peak = self._peak(cfg, state, ts)
        if rate_score > 0 and rate.count < cfg.rate_peak_ratio * peak:
            # Bursts this machine makes routinely (a console session, a cron fan-in) are
            # clipped out of the learned level on purpose; its own recent peaks say they are
            # normal for it.
            rate_score = 0.0
        if warm and rate_score > 0:
            expected = rate.expected()
            findings.append(
                Finding(
                    "access_rate",
                    rate_score,
                    f"{event.machine_id} made {rate.count} accesses in one "
                    f"{cfg.rate.interval_s}-second interval; its baseline is about "
                    f"{expected:.1f}.",
                    {"events_in_interval": rate.count, "interval_s": cfg.rate.interval_s},
                    {"mean": round(expected, 2), "threshold": round(rate.threshold(), 1)},
                )
            )
        off_hours = self._off_hours(cfg, event, state, rate, peers) if warm else None
        if off_hours is not None:
            findings.append(off_hours)

        failure = self._failure(cfg, event, state, warm)
        if failure is not None:
            findings.append(failure)
        op_new = event.operation.upper() not in state.ops and not (
            peers is not None and peers.uses_operation(event.operation.upper())
        )
        operation = self._operation(cfg, event, state, warm, peers)
        if operation is not None:
            findings.append(operation)

        resource = normalise_resource(event.resource, cfg.resource_depth)
        known = resource in state.resources
        if not known and peers is not None and peers.uses_resource(resource):
            known = True
        elif not known and peers is not None and (not warm or self._learns_quietly(cfg, state, ts)):
            # A resource new to the group is learned by the group unless it is part of a
            # burst that pages (see _learns_quietly): a deploy teaches, an enumeration does not.
            peers.learn_resource(resource, ts)
        if not known and warm:
            window_start = ts - cfg.fanout_window_s * 1000
            state.recent_new = [r for r in state.recent_new if r[0] >= window_start]
            state.recent_new.append([ts, resource])
            k = len(state.recent_new)
            # One new resource is worth a look; a burst (enumeration) far more. In a group of
            # replicas one new resource is more often a deploy rolling out: below a page
            # unless more follow.
            base = 45.0 if peers is not None and peers.members > 1 else 55.0
            score = min(100.0, base + 12.0 * math.log2(k))
            summary = (
                f"{event.machine_id} accessed {resource}, which it had not used in "
                f"{len(state.resources)} known resources"
                if k == 1
                else f"{event.machine_id} accessed {k} resources new to it within "
                f"{cfg.fanout_window_s // 60} minutes, latest {resource}"
            )
            findings.append(
                Finding(
                    "new_resource",
                    score,
                    summary + ".",
                    {
                        "resource": resource,
                        "new_resources_in_window": k,
                        "operation": event.operation,
                    },
                    {"known_resources": len(state.resources), "new_resources_in_window": 0},
                )
            )
        self._learn_resource(cfg, state, resource, ts)
        combined_anchor = event
        if cfg.combined is not None:
            combined = self._combined(
                cfg, cfg.combined, event, state, rate, group_name, kv, warm, op_new, not known
            )
            if combined is not None:
                findings.append(combined[0])
                combined_anchor = combined[1]

        state.n += 1
        state.last_ms = max(state.last_ms, ts)
        self.last_findings = findings
        for f in findings:
            if cfg.suppressions and self.suppressed(event.machine_id, f, ts):
                self.suppressed_findings += 1
                continue
            anchor = combined_anchor if f.detector == "combined" else event
            alert = self._episode(cfg, anchor, group, state, f)
            if alert is not None:
                alerts.append(alert)
        return state, alerts

    def _combined(
        self,
        cfg: DetectorConfig,
        p: CombinedParams,
        event: AuditEvent,
        state: MachineState,
        rate: RateBaseline,
        group: str,
        kv: KeyValue | None,
        warm: bool,
        op_new: bool,
        resource_new: bool,
    ) -> tuple[Finding, AuditEvent] | None:
        """Close the machine's previous window when this event is past it, score it with the
        group's model (then learn it), and count this event into its own window. A finding
        comes with the event to anchor its alert on: the unusual window's own (its first
        event's id, its last event's time), not this event of the next window."""
        ts = event.timestamp_ms
        window = ts // (p.window_s * 1000)
        win = state.win
        finding: tuple[Finding, AuditEvent] | None = None
        if win and window > win[0]:
            found = self._score_window(cfg, p, event, state, rate, group, kv, warm)
            if found is not None:
                first_id = str(win[6]) if len(win) > 7 else event.event_id
                last_ms = int(win[7]) if len(win) > 7 else ts
                anchor = replace(event, event_id=first_id, ts_us=last_ms * 1000)
                finding = (found, anchor)
            win = []
        elif win and window < win[0]:
            window = win[0]  # a late event counts in the open window
        if not win:
            win = [window, 0, 0, 0, 0, 0, event.event_id, ts]
        win[1] += 1
        win[2] += event.outcome != "SUCCESS"
        win[3] += is_write(event.operation)
        win[4] += resource_new
        win[5] += op_new
        if len(win) > 7:
            win[7] = max(win[7], ts)
        state.win = win
        return finding

    def _score_window(
        self,
        cfg: DetectorConfig,
        p: CombinedParams,
        event: AuditEvent,
        state: MachineState,
        rate: RateBaseline,
        group: str,
        kv: KeyValue | None,
        warm: bool,
    ) -> Finding | None:
        window, count, failures, writes, new_resources, new_ops = state.win[:6]
        if count < p.min_events:
            # Too few events to be judged, so not learned either: the model's reference is
            # the windows it judges. A sparse machine (most of them close a window on nearly
            # every event) then costs no model load and dump per event.
            return None
        start_ms = window * p.window_s * 1000
        expected = rate.expected_at(start_ms) * p.window_s / cfg.rate.interval_s
        learned_failures = float(state.fail[3]) if len(state.fail) > 3 else 0.0
        x = combined_features(
            count, expected, failures, learned_failures, writes, new_resources, new_ops
        )
        store = kv if kv is not None else self._combined_store
        if self._combined_models is None or self._combined_models.params != p:
            self._combined_models = CombinedModels(p)
        score = self._combined_models.score_and_learn(store, group, x)
        if score is None or not warm or score < p.page_at:
            return None
        # What another detector already explains is not news; this one is for the windows
        # where no single rule fired.
        if any(
            d != "combined" and event.timestamp_ms - ep.last_ms <= cfg.cooldown_s * 1000
            for d, ep in state.episodes.items()
        ):
            return None
        observed = explain_combined(x, count, expected)
        minutes = p.window_s // 60
        return Finding(
            "combined",
            min(100.0, 50.0 + 50.0 * (score - p.page_at) / max(1e-9, 1.0 - p.page_at)),
            f"{event.machine_id}'s {minutes} minutes from {format_rfc3339_ms(start_ms)[11:16]} "
            f"UTC were unusual as a whole: {count} accesses (about {expected:.0f} expected), "
            f"{observed['new_resources']} new resources, {failures} failed, {writes} writes, "
            f"{observed['new_operations']} new operations.",
            {**observed, "combined_score": round(score, 3)},
            {
                "events": round(expected, 1),
                "failure_ratio": round(learned_failures, 3),
                "window_minutes": minutes,
                "page_at": p.page_at,
            },
        )

    @staticmethod
    def _learns_quietly(cfg: DetectorConfig, state: MachineState, ts: int) -> bool:
        """Whether one more new resource now would stay below a page for a group member
        (fewer than two others in the fan-out window)."""
        window_start = ts - cfg.fanout_window_s * 1000
        return sum(1 for r in state.recent_new if r[0] >= window_start) < 2

    @staticmethod
    def _peak(cfg: DetectorConfig, state: MachineState, ts: int) -> float:
        """The machine's recent busiest interval (decaying with a half-life of
        `rate_peak_half_life_s`), excluding the current interval; counts the event in."""
        peak = recent_peak(cfg, state.peak, ts)
        interval = ts // (cfg.rate.interval_s * 1000)
        current, count = (state.peak[0], state.peak[1]) if state.peak else (interval, 0)
        if interval > current:
            current, count = interval, 0
        if interval >= current:
            count += 1
        state.peak = [current, count, round(peak, 3)]
        return peak

    @staticmethod
    def _busiest_near(state: MachineState, peers: PeerGroup | None, near: list[int]) -> int:
        """The most events the machine, or a peer, made in these windows of the day.
        Neighbouring windows count: sessions and schedules drift by an hour or so from day
        to day, and that is not "off hours"."""
        before = max(state.hmax[i] for i in near)
        if peers is not None and peers.members > 1:
            before = max(before, *(peers.busiest_window(i) for i in near))
        return before

    def _run_start(
        self,
        ts: int,
        rate: RateBaseline,
        state: MachineState,
        peers: PeerGroup | None,
        near: list[int],
    ) -> list[int]:
        """state.off[3:] for an off-hours run starting at ts (see _OFF_RECENT)."""
        before = self._busiest_near(state, peers, near)
        rate_e6 = round(rate.expected_at(ts) * 1e6)
        return [ts, 0, ts - _BURST_GAP_MS, rate_e6, before, before]

    def _off_hours(
        self,
        cfg: DetectorConfig,
        event: AuditEvent,
        state: MachineState,
        rate: RateBaseline,
        peers: PeerGroup | None,
    ) -> Finding | None:
        """Activity at a time of day when the machine is normally (nearly) idle, well above
        anything it has done at that time before: a business-hours service busy at night,
        even at a rate that would be ordinary by day."""
        ts = event.timestamp_ms
        window_ms = cfg.off_hours_window_s * 1000
        window = ts // window_ms
        slots = 86_400_000 // window_ms
        if len(state.hmax) != slots:
            state.hmax = [0] * slots
        spread = cfg.off_hours_spread
        if state.off and (len(state.off) == 4 or state.off[0] > ts // 1000):
            state.off = []  # the first layout started with timestamps, not window numbers
        if state.off and len(state.off) < _OFF_RECENT:
            # Stored before the run kept what it is tested against: start a run here.
            near = _near(window, slots, spread)
            state.off = [*state.off[:3], *self._run_start(ts, rate, state, peers, near)]
        if not state.off or window > state.off[0]:
            near = _near(window, slots, spread)
            # A run of accesses going on across the window boundary stays one run for the
            # burst test; what it is tested against is taken before the run's own events
            # teach it: the learned rate as the run starts, the busiest windows around each
            # window the run reaches (before the window that closes, perhaps the run's own
            # accesses, is added to them).
            run = (
                state.off[3:]
                if state.off
                and ts - state.off[5] <= _RUN_GAP_MS
                and ts - state.off[3] <= window_ms  # a busy day is not one long run
                else []
            )
            if run:
                run[5] = self._busiest_near(state, peers, near)
            if state.off:
                prev = state.off[0] % slots
                state.hmax[prev] = max(state.hmax[prev], state.off[1])
                if peers is not None and state.off[1] > 1:
                    peers.note_window(prev, slots, state.off[1])
            # A new run: the window that closed is not its own, so it counts.
            state.off = [window, 0, 0, *(run or self._run_start(ts, rate, state, peers, near))]
        elif window < state.off[0]:
            return None  # a late event: its window is closed
        state.off[1] += 1
        if ts - state.off[5] >= _BURST_GAP_MS:
            state.off[4] += 1
            state.off[5] = ts
            # The latest spaced accesses, for the scan below.
            state.off.append(ts)
            if len(state.off) > _OFF_RECENT + _SCAN_EVENTS:
                del state.off[_OFF_RECENT]
        count, fired, spaced = state.off[1], state.off[2], state.off[4]
        # Idle hours are only known once the profile has seen at least a full day.
        if (
            fired
            or (count < cfg.off_hours_min_events and spaced < cfg.off_hours_burst_events)
            or rate.n < 86_400 // cfg.rate.interval_s
        ):
            return None
        before = self._busiest_near(state, peers, _near(window, slots, spread))
        day = ts - ts % 86_400_000
        peak = max(rate.expected_at(day + h * 3_600_000) for h in range(24))
        expected_now = rate.expected_at(ts)
        if expected_now > cfg.off_hours_max_share * peak:
            return None
        full = (
            count > before
            and count >= cfg.off_hours_min_events
            and count >= cfg.off_hours_ratio * max(before, 1)
        )
        # The window rule waits for a window's worth of evidence; at an office tool's daytime
        # pace (about one access a minute) that is a quarter of an hour. Against the learned
        # rate for this time of day (at least one an hour), a few accesses spread over a
        # minute or two are already as unlikely. Accesses closer than _BURST_GAP_MS count
        # once: one action often makes several calls (retries, a page load), and a Poisson
        # test on them would see a burst in a single click.
        first_ms = state.off[3]
        # The rate to beat: the machine's own, learned for this time of day, and at least
        # the busiest window it or a peer ever had here, spread by the window rule's ratio (a
        # busiest window is a maximum over days and members, not a mean), both as the run
        # started. Only where the busiest windows are small, there and where the run is now:
        # a group that is busy at this hour in bursts (CI runners taking turns) is not
        # Poisson, and the window rule judges it.
        start_rate, before0, before_here = state.off[6] / 1e6, state.off[7], state.off[8]
        lam = max(
            start_rate / cfg.rate.interval_s,
            before0 / (cfg.off_hours_ratio * cfg.off_hours_window_s),
            1.0 / 3600.0,
        )
        # A scan: the whole run, and each of its latest spaced accesses as the start of the
        # burst, so a stray access a quarter of an hour before does not dilute it. The
        # threshold applies to the least likely start, without a correction for trying up
        # to _SCAN_EVENTS + 1 of them: with one (Bonferroni), `make eval`'s off-hours median
        # time to detect went from 94 to 156 s, while its false pages stayed far under budget
        # without it. Spans run to the latest access seen: a late event is no shorter burst.
        now = max(ts, state.off[5])
        p = poisson_tail(spaced - 1, lam * (now - first_ms) / 1000.0)
        recent = state.off[_OFF_RECENT:]
        for i, t0 in enumerate(recent[: 1 - cfg.off_hours_burst_events]):
            p = min(p, poisson_tail(len(recent) - 1 - i, lam * (now - t0) / 1000.0))
        burst = (
            max(before0, before_here) < cfg.off_hours_ratio * cfg.off_hours_burst_events
            and spaced >= cfg.off_hours_burst_events
            and p <= cfg.off_hours_burst_p
        )
        if not (full or burst):
            return None
        state.off[2] = 1
        hour = format_rfc3339_ms(ts)[11:16]
        minutes = max(1, math.ceil((ts - first_ms) / 60_000))
        by_window = 10.0 * math.log2(count / (cfg.off_hours_ratio * max(before, 1)) + 1)
        by_burst = 5.0 * math.log10(cfg.off_hours_burst_p / max(p, 1e-300))
        return Finding(
            "off_hours",
            min(100.0, 50.0 + max(by_window if full else 0.0, by_burst if burst else 0.0)),
            f"{event.machine_id} made {count} accesses within {minutes} minutes at {hour} UTC, "
            f"a time of day when it is nearly idle (at most {before} in "
            f"{cfg.off_hours_window_s // 60} minutes before, about "
            f"{lam * 3600:.1f} an hour expected).",
            {"events": count, "minutes": minutes, "resource": event.resource},
            {
                "most_events_at_this_time": before,
                "events_per_hour_at_this_time": round(lam * 3600, 2),
                "share_of_busiest_hour": round(expected_now / peak, 3) if peak else 0.0,
                "window_minutes": cfg.off_hours_window_s // 60,
            },
        )

    def _new_identity(self, event: AuditEvent, group: str) -> Finding:
        return Finding(
            "new_identity",
            60.0,
            f"{event.machine_id} is a new identity with no known peer group; its first access "
            f"was {event.operation} on {event.resource}.",
            {
                "machine_id": event.machine_id,
                "group": group,
                "resource": event.resource,
                "operation": event.operation,
            },
            {"known_group": "none"},
        )

    def _failure(
        self, cfg: DetectorConfig, event: AuditEvent, state: MachineState, warm: bool
    ) -> Finding | None:
        """Failures and denials in the current interval against the machine's usual ratio."""
        interval = event.timestamp_ms // (cfg.rate.interval_s * 1000)
        cur, n, f, p, learned = state.fail
        if interval > cur:
            if cur >= 0 and n > 0:
                # Weight by accesses (a busy interval says more) but cap it, and clip what is
                # learned so a failure storm does not become the new normal.
                a = min(0.5, 0.02 * n) if learned else 1.0
                p += a * (min(f / n, max(p * 2, 0.05)) - p)
                learned += 1
            cur, n, f = interval, 0, 0
        n += 1
        failed = event.outcome != "SUCCESS"
        f += failed
        state.fail = [cur, n, f, round(p, 6), learned]
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

    def _operation(
        self,
        cfg: DetectorConfig,
        event: AuditEvent,
        state: MachineState,
        warm: bool,
        peers: PeerGroup | None,
    ) -> Finding | None:
        """An operation this machine does not perform; destructive ones from a read-only
        client score highest."""
        op = event.operation.upper()
        ts = event.timestamp_ms
        if op in state.ops:
            state.ops[op] = max(ts, state.ops[op])
            return None
        read_only = all(not is_write(o) for o in state.ops)
        known_to_peers = peers is not None and peers.uses_operation(op)
        state.ops[op] = ts
        if len(state.ops) > cfg.max_operations:
            oldest = min(state.ops, key=state.ops.__getitem__)
            del state.ops[oldest]
        if not warm or known_to_peers or not state.n:
            if peers is not None:
                peers.learn_operation(op, ts)
            return None
        if is_destructive(op):
            score = 80.0 if read_only else 55.0
        elif is_write(op) and read_only:
            score = 50.0
        else:
            # A new read-like operation is usually a code path seldom taken: worth noting,
            # not worth a page.
            score = 35.0
        if peers is not None and score < 50:
            # Only what does not page teaches the group: one compromised replica must not
            # make the same behaviour normal for all of them.
            peers.learn_operation(op, ts)
        kind = "read-only " if read_only else ""
        return Finding(
            "operation",
            score,
            f"{event.machine_id}, a {kind}client, performed {op} on {event.resource}, an "
            f"operation it had not used before.",
            {"operation": op, "resource": event.resource},
            {"operations": ", ".join(sorted(o for o in state.ops if o != op))[:200]},
        )

    def _learn_resource(
        self, cfg: DetectorConfig, state: MachineState, resource: str, ts: int
    ) -> None:
        # max: a late event must not make a resource look older than it is.
        state.resources[resource] = max(ts, state.resources.get(resource, ts))
        if len(state.resources) > cfg.max_resources:
            # Forget what has not been used within the horizon, else the least recently used.
            horizon = ts - cfg.resource_horizon_s * 1000
            kept = {r: t for r, t in state.resources.items() if t >= horizon}
            if len(kept) > cfg.max_resources:
                ordered = sorted(kept.items(), key=lambda rt: rt[1], reverse=True)
                kept = dict(ordered[: cfg.max_resources])
            state.resources = kept

    def _alert_id(self, machine_id: str, detector: str, first_event_id: str) -> str:
        blob = "\x1f".join((machine_id, detector, first_event_id, self.config_version))
        return "a-" + hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _episode(
        self, cfg: DetectorConfig, event: AuditEvent, group: str, state: MachineState, f: Finding
    ) -> Alert | None:
        ts = event.timestamp_ms
        severity = severity_for(f.score)
        ep = state.episodes.get(f.detector)
        if ep is not None and ts - ep.last_ms <= cfg.cooldown_s * 1000:
            ep.last_ms = max(ep.last_ms, ts)
            ep.count += 1
            if len(ep.event_ids) < 10:
                ep.event_ids.append(event.event_id)
            if SEVERITY_RANK[severity] > SEVERITY_RANK[ep.severity]:
                status = "escalated"
            elif ts - ep.last_emit_ms >= cfg.update_every_s * 1000:
                status = "updated"
            else:
                ep.score = max(ep.score, f.score)
                return None
            ep.severity = severity if status == "escalated" else ep.severity
            ep.score = max(ep.score, f.score)
            ep.last_emit_ms = ts
            control = self.control(ep.alert_id) if self.control is not None else None
            if status == "escalated" and control is not None and control.silenced:
                # Acknowledged or snoozed: the higher severity is recorded, nobody is paged.
                status = "updated"
            f = self._with_baseline(cfg, f, state)
            ep.observed, ep.expected = dict(f.observed), dict(f.expected)
            return self._alert(event.machine_id, group, f.detector, status, ep, f, ts, control)
        ep = Episode(
            alert_id=self._alert_id(event.machine_id, f.detector, event.event_id),
            first_ms=ts,
            last_ms=ts,
            last_emit_ms=ts,
            count=1,
            severity=severity,
            score=f.score,
            event_ids=[event.event_id],
        )
        state.episodes[f.detector] = ep
        f = self._with_baseline(cfg, f, state)
        ep.observed, ep.expected = dict(f.observed), dict(f.expected)
        return self._alert(event.machine_id, group, f.detector, "opened", ep, f, ts)

    @staticmethod
    def _with_baseline(cfg: DetectorConfig, f: Finding, state: MachineState) -> Finding:
        """The finding with what its expected numbers were learned over."""
        text = BASELINES.get(f.detector)
        if text is None or "baseline" in f.expected:
            return f
        baseline = text.format(
            interval_s=cfg.rate.interval_s,
            horizon_days=round(cfg.resource_horizon_s / 86400),
            window_minutes=cfg.off_hours_window_s // 60,
        )
        extra: dict[str, Scalar] = {"baseline": baseline}
        if f.detector != "new_identity":
            extra["baseline_since"] = format_rfc3339_ms(state.first_ms)
        return replace(f, expected={**f.expected, **extra})

    def _resolve_quiet(
        self,
        cfg: DetectorConfig,
        machine_id: str,
        group: str,
        state: MachineState,
        ts: int,
        keep: str = "",
    ) -> list[Alert]:
        """Episodes quiet for a cooldown are resolved when the machine's stream moves past it
        (event time, not wall clock, so replay and Kafka agree); `keep` names a detector whose
        episode stays open."""
        cooldown = cfg.cooldown_s * 1000
        out: list[Alert] = []
        for detector, ep in list(state.episodes.items()):
            if ts - ep.last_ms > cooldown and detector != keep:
                del state.episodes[detector]
                resolved_at = ep.last_ms + cooldown
                out.append(
                    self._alert(
                        machine_id,
                        group,
                        detector,
                        "resolved",
                        ep,
                        self._with_baseline(
                            cfg,
                            Finding(
                                detector,
                                ep.score,
                                f"{machine_id}: no further {detector} findings for "
                                f"{cfg.cooldown_s // 60} minutes after {ep.count} in all "
                                f"(peak score {ep.score:.0f}).",
                                {
                                    **ep.observed,
                                    "repeats": ep.count,
                                    "peak_score": round(ep.score, 1),
                                    "quiet_minutes": cfg.cooldown_s // 60,
                                },
                                {
                                    **ep.expected,
                                    "quiet_minutes_to_resolve": cfg.cooldown_s // 60,
                                },
                            ),
                            state,
                        ),
                        resolved_at,
                    )
                )
        return out

    def _alert(
        self,
        machine_id: str,
        group: str,
        detector: str,
        status: str,
        ep: Episode,
        f: Finding,
        ts: int,
        control: AlertControl | None = None,
    ) -> Alert:
        if control is None and status != "opened" and self.control is not None:
            control = self.control(ep.alert_id)
        ep.states += 1
        return Alert(
            alert_id=ep.alert_id,
            status=status,
            machine_id=machine_id,
            group=group,
            detector=detector,
            severity=ep.severity,
            score=round(max(ep.score, f.score) if status != "resolved" else ep.score, 1),
            event_time=format_rfc3339_ms(ts),
            summary=f.summary,
            observed=f.observed,
            expected=f.expected,
            event_ids=list(ep.event_ids),
            config_version=self.config_version,
            first_event_time=format_rfc3339_ms(ep.first_ms),
            last_event_time=format_rfc3339_ms(ep.last_ms),
            repeat_count=ep.count,
            hint=HINTS.get(detector),
            sequence=ep.states,
            acknowledged_by=control.acknowledged_by if control is not None else None,
            snoozed_until=control.snoozed_until if control is not None else None,
        )
