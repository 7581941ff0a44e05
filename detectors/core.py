"""The detection core: one machine's event in, its updated state and any alert states out.

`auditwatch run` (per Kafka partition, state in the partition's store) and `auditwatch replay`
(state in a dict) both call `DetectionCore.process`. Everything it decides depends only on the
machine's own state and the event, so the same per-machine event order gives the same alerts,
ids included, whichever runtime delivers it.

The core only orchestrates: which detectors run and in what order (each in its own module,
behind `detectors.base.Detector`), the machine's warm-up, suppressions, and findings into
incidents (`detectors.incidents`); the silence sweep and the capacity bounds of each store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from detectors.authenticity import finding as spoofed_finding
from detectors.base import Detector, Finding, Seen
from detectors.capacity import MachineIndex
from detectors.combined import CombinedWindow
from detectors.config import DetectorConfig
from detectors.failure import FailureRatio
from detectors.identity import GroupNames, NewIdentity
from detectors.incidents import Incidents, StormControl
from detectors.maturity import NEEDS, as_info, learning_until
from detectors.off_hours import OffHours
from detectors.operations import NewOperation
from detectors.peers import KeyValue, PeerGroup, store_first_seen
from detectors.rate import AccessRate, RateBaseline
from detectors.resources import NewResource
from detectors.silence import (
    ROTATION_WINDOW_MS,
    SWEEP_EVERY_MS,
    SilenceWatch,
    SilenceWatches,
    note_event,
    note_open,
)
from detectors.silence import learn as silence_learn
from detectors.silence import score as silence_score
from detectors.state import MACHINE, MachineState, WorkingCopy, _decode_state, _encode_state
from schemas.alert import Alert, AlertControl
from schemas.event import AuditEvent

__all__ = [
    "MACHINE",
    "DetectionCore",
    "DetectorConfig",
    "Finding",
    "MachineState",
    "WorkingCopy",
]


class DetectionCore:
    """Scores each event against its machine's baselines, then learns it."""

    # The detectors of a machine's events (see process for the order). They keep no state
    # between events, so one of each serves every core; the combined score's model cache is
    # the core's own.
    _new_identity = NewIdentity().run
    _detectors: tuple[Detector, ...] = (
        AccessRate(),
        OffHours(),
        FailureRatio(),
        NewOperation(),
        NewResource(),
    )

    def __init__(
        self,
        config: DetectorConfig | None = None,
        control: Callable[[str], AlertControl | None] | None = None,
    ) -> None:
        self.config = config or DetectorConfig()
        # On-call's acknowledgements and snoozes by alert_id, consulted only when an alert
        # state is built (None in replay: nobody acknowledges a replay).
        self._incidents = Incidents(self.config.version(), control)
        self._groups = GroupNames(self.config.group_attribute, self.config.group_patterns)
        self._per_machine: dict[str, DetectorConfig] = {}
        self.suppressed_findings = 0
        self._watches = SilenceWatches()
        self._indexes: dict[Any, MachineIndex] = {}
        # The earliest event time seen in any store: where a store that is new starts watching.
        self.watching_since_ms: int | None = None
        self._storms = StormControl()
        self.evictions = 0
        self._last: tuple[str, DetectorConfig, RateBaseline] = (
            "",
            self.config,
            RateBaseline(self.config.rate),
        )
        self.last_findings: list[Finding] = []
        self.detectors: tuple[Detector, ...] = ()
        self._steps: tuple[_Step, ...] = ()
        # None: every event writes its machine's state through to the store.
        self.working: WorkingCopy | None = None
        self.wire((*self._detectors, CombinedWindow()))

    def wire(self, detectors: Sequence[Detector]) -> None:
        """Run `detectors`, in this order, on every event (after the new-identity check of a
        machine's first event). Each is kept as its bound score and learn, called by process
        directly: what `Detector.run` does, without a call in between on every event."""
        for combined in self._combined():
            combined.flush()
        self.detectors = tuple(detectors)
        self._steps = tuple(_steps(d) for d in self.detectors)
        if self.working is not None:
            for combined in self._combined():
                combined.keep_live()

    @property
    def control(self) -> Callable[[str], AlertControl | None] | None:
        return self._incidents.control

    @control.setter
    def control(self, control: Callable[[str], AlertControl | None] | None) -> None:
        self._incidents.control = control

    @property
    def config_version(self) -> str:
        """A short hash of the effective detection config (`DetectorConfig.version`)."""
        return self._incidents.config_version

    def keep_working_copy(self, max_machines: int) -> WorkingCopy:
        """Keep machine states decoded between events; the caller must `flush` each changed
        partition before it commits that partition's store, and `drop` a partition it loses."""
        self.working = WorkingCopy(max_machines)
        # The combined models too stay live between flushes (one dump per group and flush,
        # not one per judged window).
        for combined in self._combined():
            combined.keep_live()
        return self.working

    def _combined(self) -> list[CombinedWindow]:
        return [d for d in self.detectors if isinstance(d, CombinedWindow)]

    def flush(
        self, kv_of: Callable[[Any], KeyValue], partitions: Sequence[Any] | None = None
    ) -> int:
        """Write the working copy's changed states through `kv_of(partition)` (all changed
        partitions by default), then trim it to its bound. Returns the states written."""
        for combined in self._combined():
            combined.flush()
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
        self._incidents.config_version = config.version()
        self._groups = GroupNames(config.group_attribute, config.group_patterns)
        self._per_machine = {}
        self._last = ("", config, RateBaseline(config.rate))

    def group_of(self, event: AuditEvent) -> str:
        """The peer group of the event's machine (and the detection stage's partitioning
        key)."""
        return self._groups.of(event)

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
        self._storms.begin(partition, event.timestamp_ms)
        incidents = self._incidents
        incidents.gate = self._admit
        try:
            if event.unverified:
                return self._spoofed(event, kv, partition)
            return self._observe(event, kv, partition, source)
        finally:
            incidents.gate = None

    def _admit(
        self, detector: str, machine: str, alert_id: str, first_event_id: str, incident: str
    ) -> bool:
        """Storm control's say on a page (`Incidents.gate`). Set on `Incidents` only while
        `observe` or `punctuate` runs: `process` alone (a machine scored on its own) has no
        store, so no storm control. A method, not a closure: a copy of the core (replay's
        `copy.deepcopy`) must ask its own storm control."""
        return self._storms.admit(
            self.config, detector, machine, alert_id, first_event_id, incident
        )

    def _observe(self, event: AuditEvent, kv: KeyValue, partition: Any, source: Any) -> list[Alert]:
        machine, ts = event.machine_id, event.timestamp_ms
        working = self.working
        if working is not None:
            state = working.get(kv, partition, machine)
        else:
            raw = kv.get(MACHINE, machine)
            state = _decode_state(raw) if raw is not None else None
        since = self.watching_since_ms
        if since is None or ts < since:
            self.watching_since_ms = ts
        try:
            state, alerts = self.process(event, state, kv)
        except Exception:
            # Writing through, a failed event leaves the stored state as it was; the working
            # copy's object may be half changed. Fall back to the store (the last flush): the
            # machine loses what it learned since, but never keeps half an event.
            if working is not None:
                working.discard(partition, machine)
            raise
        if working is not None:
            working.put(partition, machine, state)
        else:
            kv.set(MACHINE, machine, _encode_state(state))
        # Capacity: the least recently seen machines beyond the cap are evicted.
        index = self._indexes.get(partition)
        if index is None:
            # Not setdefault: that would build an index on every event to throw it away.
            index = self._indexes[partition] = MachineIndex()
        # MachineIndex.touch inlined (every event).
        seen = index.last_seen
        last = seen.get(machine)
        if last is None:
            seen[machine] = ts
        else:
            if ts > last:
                seen[machine] = ts
            seen.move_to_end(machine)
        if len(seen) > self.config.max_machines:
            self._evict(index, kv, partition)
        # The silence watch. process() has just resolved this event's group, config and rate
        # baseline: reuse them rather than work them out again.
        group, cfg, rate = self._last
        watch = self._watches.get(kv, partition)
        if state.episodes or watch.open:
            note_open(watch, machine, group, state.episodes)
        note_event(watch, machine, group, ts, cfg, rate)
        if source != "seed":
            watch.advance(str(source), ts, cfg.silence_max_skew_s * 1000)
        if watch.clock_ms >= watch.next_sweep_ms:
            alerts.extend(self._sweep_if_due(watch, kv, partition))
        if not alerts:
            return alerts
        return self._storms.apply(self.config, self.config_version, alerts)

    def _spoofed(self, event: AuditEvent, kv: KeyValue, partition: Any) -> list[Alert]:
        """A signing machine's event that did not verify (`detectors.authenticity`): one
        finding, judged at the machine's trusted time; no detector runs, nothing is learned,
        no clock moves, since the event's content and time are only its sender's word."""
        state = self._load(kv, partition, event.machine_id)
        if state is not None:
            trusted_ms = state.last_ms
        else:
            clock = self._watches.get(kv, partition).clock_ms
            trusted_ms = clock if clock > 0 else event.timestamp_ms
            state = MachineState.new(trusted_ms)
        anchored = replace(event, ts_us=trusted_ms * 1000)
        self._storms.begin(partition, trusted_ms)
        group = self._groups.of(event)
        cfg = self.config_for(event.machine_id, group)
        found = spoofed_finding(event)
        if cfg.suppressions and self.suppressed(event.machine_id, found, trusted_ms):
            self.suppressed_findings += 1
            return []
        alert = self._incidents.episode(cfg, anchored, group, state, found)
        self._save(kv, partition, event.machine_id, state)
        self._track(anchored, kv, partition)
        if alert is None:
            return []
        return self._storms.apply(self.config, self.config_version, [alert])

    def _track(self, event: AuditEvent, kv: KeyValue, partition: Any) -> None:
        """Capacity: evict the least recently seen machines beyond the cap."""
        index = self._indexes.get(partition)
        if index is None:
            index = self._indexes[partition] = MachineIndex()
        index.touch(event.machine_id, event.timestamp_ms)
        self._evict(index, kv, partition)

    def _evict(self, index: MachineIndex, kv: KeyValue, partition: Any) -> None:
        evicted = index.over(self.config.max_machines)
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

    def punctuate(self, kv: KeyValue, partition: Any, clocks: dict[str, int]) -> list[Alert]:
        """Move a store's silence clock with the event time of other sources (the runtime's
        other partitions, `clocks`: source -> latest event time), so a machine whose own
        partition has gone quiet is still judged; sweeps when a minute of that clock is due."""
        watch = self._watches.get(kv, partition)
        skew = self.config.silence_max_skew_s * 1000
        for source, ts in clocks.items():
            watch.advance(source, ts, skew)
        self._storms.begin(partition, watch.clock_ms)
        incidents = self._incidents
        incidents.gate = self._admit
        try:
            alerts = self._sweep_if_due(watch, kv, partition)
        finally:
            incidents.gate = None
        if not alerts:
            return alerts
        return self._storms.apply(self.config, self.config_version, alerts)

    def forget_partition(self, partition: Any) -> None:
        """Drop what is kept in memory for a partition this worker no longer owns."""
        self._watches.drop(partition)
        self._indexes.pop(partition, None)
        self._storms.forget(partition)
        if self.working is not None:
            self.working.drop(partition)
        # What the group models learned is theirs, not the partition's: written where the
        # runtime will find it (a rewind then reloads the table, and the models with it).
        for combined in self._combined():
            combined.flush()

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
            resolved = self._incidents.resolve_quiet(
                cfg, machine, group, state, now_ms, keep="silence"
            )
            if resolved:
                self._save(kv, partition, machine, state)
                out.extend(resolved)
            note_open(watch, machine, group, state.episodes)
        return out

    def _sweep(self, watch: SilenceWatch, kv: KeyValue, partition: Any) -> list[Alert]:
        """Judge the watched machines whose verdict is due (`WatchEntry.due_ms`) for silence."""
        now = watch.clock_ms
        alerts: list[Alert] = []
        for machine, entry in list(watch.entries.items()):
            cfg = self.config_for(machine, entry.group)
            if entry.alerted or now < entry.due_ms:
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
            finding = silence_score(cfg, machine, entry, state.silence, state.first_ms, rate, now)
            if finding is None:
                continue
            entry.alerted = True
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
            alert = self._incidents.episode(cfg, anchor, entry.group, state, finding)
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
        group = self._groups.of(event)
        cfg = self.config_for(event.machine_id, group) if self.config.overrides else self.config
        peers = PeerGroup(kv, group) if kv is not None else None
        findings: list[Finding] = []
        new = state is None
        if state is None:
            state = MachineState.new(ts)
        rate = state.live_rate
        if rate is None or rate.params is not cfg.rate:
            rate = state.rate_baseline(cfg.rate)
        self._last = (group, cfg, rate)
        seen = Seen(event, ts, group, cfg, state, peers, kv, rate)
        if new and kv is not None:
            # Judged before the machine joins its group: joining is what the detector learns.
            seen.watching_since_ms = self.watching_since_ms
            found = self._new_identity(seen)
            if found is not None:
                findings.append(found)
        # Before the episodes resolve: the gap that ends a silence episode is not learned.
        silence_learn(state.silence, state.last_ms, ts, "silence" in state.episodes)
        incidents = self._incidents
        alerts = (
            incidents.resolve_quiet(cfg, event.machine_id, group, state, ts)
            if state.episodes
            else []
        )

        warmup_ms = cfg.warmup_s * 1000
        # A new replica of a group that has been watched long enough is judged by the group
        # from its first event: rotated pods and autoscaled instances are not strangers. (The
        # group is asked only for a machine not warm on its own: most events skip it.)
        seen.warm = (state.n >= cfg.warmup_events and ts - state.first_ms >= warmup_ms) or (
            peers is not None and peers.members > 1 and peers.warm(ts, warmup_ms)
        )

        # Each scores the event, then learns it. The order is part of the behaviour: the
        # combined score reads what the operation and resource detectors noted.
        for score, learn in self._steps:
            found = score(seen)
            if learn is not None:
                learn(seen, found)
            if found is not None:
                findings.append(found)

        state.n += 1
        state.last_ms = max(state.last_ms, ts)
        self.last_findings = findings
        if len(findings) > 1:
            # The event's findings join one incident: the strongest opens it and pages, the
            # others are its evidence.
            findings = sorted(findings, key=lambda f: -f.score)
        for found_ in findings:
            if cfg.suppressions and self.suppressed(event.machine_id, found_, ts):
                self.suppressed_findings += 1
                continue
            f = found_
            if f.detector in NEEDS:
                f = self._mature(f, ts, cfg, state, peers, kv)
            anchor = event if f.anchor is None else f.anchor
            alert = incidents.episode(cfg, anchor, group, state, f)
            if alert is not None:
                alerts.append(alert)
        return state, alerts

    def _mature(
        self,
        f: Finding,
        ts: int,
        cfg: DetectorConfig,
        state: MachineState,
        peers: PeerGroup | None,
        kv: KeyValue | None,
    ) -> Finding:
        """`f` as it may be published (`detectors.maturity`): as found, or as info while
        what it needs is still being learned."""
        since = self.watching_since_ms
        deployment = since if since is not None else state.first_ms
        if kv is not None:
            deployment = store_first_seen(kv, ts, since)
        group = peers.first_ms if peers is not None and peers.known else state.first_ms
        cycle = cfg.mature_after_s * 1000
        until = learning_until(f, ts, deployment, state.first_ms, group, cycle)
        if until is not None:
            return as_info(f, until)
        recorded = state.episodes.get(f.detector)
        if recorded is not None and recorded.severity == "info":
            # Only learning records are open (a fan-out's first new resources): the page
            # opens an episode of its own, so the first state on-call sees is `opened`.
            del state.episodes[f.detector]
        return f


# A detector's score and learn as the core calls them; learn is None when it has nothing to
# do (the detector learns as its intervals close, in score).
_Step = tuple[Callable[[Seen], Finding | None], Callable[[Seen, Finding | None], None] | None]


def _steps(detector: Detector) -> _Step:
    kind = type(detector)
    if "run" in vars(kind) and kind.run is not Detector.run:
        # Its class's own run does score then learn in one call (the usual case cut short);
        # a subclass that changes score or learn without its own run is called through them.
        return detector.run, None
    learns = kind.learn is not Detector.learn
    return detector.score, detector.learn if learns else None
