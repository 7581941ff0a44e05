"""Incidents: findings into alert episodes, alert states and pages.

One (machine, detector) has at most one open episode: findings within a cooldown of its last
one update it (escalated when their severity rises, else at most one 'updated' state per
`update_every_s`), and it is resolved once the machine's stream moves a cooldown past it.

A machine's episodes that overlap in time are one incident (a failure spike and the retry
burst it causes): an episode that opens while another of the machine is open joins its
incident, and every state carries the incident's id. The incident pages once: its first state
at page severity is a page and says `opened` (even when that alert opened below page severity
earlier), and only a state that raises the incident's severity pages again. Every other
state of the incident is evidence: not a page, and an alert that never paged is written at
`low` severity at most (its score keeps what it found), so nothing that selects states by
status and severity (a webhook, a chat rule) pages for it. Storm control caps the pages of a
store per event-time minute.

The episodes are part of the machine's state (`MachineState.episodes`); storm windows are
kept per store in memory.

Imports: the standard library and `schemas`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from detectors.authenticity import HINT as SPOOFED_HINT
from detectors.base import Finding
from detectors.capacity import StormWindow
from schemas.alert import (
    PAGE_RANK,
    SEVERITY_RANK,
    Alert,
    AlertControl,
    Scalar,
    severity_for,
)
from schemas.event import AuditEvent, format_rfc3339_ms

if TYPE_CHECKING:
    from detectors.config import DetectorConfig
    from detectors.state import MachineState

# Storm control's say on a page: (detector, machine, alert_id, the alert's first event id,
# its incident) -> may it page.
Gate = Callable[[str, str, str, str, str], bool]

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
    "spoofed_identity": SPOOFED_HINT,
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
    # The incident it belongs to (the alert_id of the incident's first episode).
    incident_id: str = ""
    # The highest severity (rank) this alert has paged at; -1: it never paged.
    paged: int = -1
    # The highest severity (rank) its incident has paged at, as this episode knows it; the
    # incident's level is the highest of its open episodes'.
    incident_paged: int = -1

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
            self.incident_id,
            self.paged,
            self.incident_paged,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> Episode:
        ep = cls(*v)
        if len(v) <= 11:
            # Written before incidents: its own incident, and one at page severity paged.
            rank = SEVERITY_RANK[ep.severity]
            ep.incident_id = ep.alert_id
            ep.paged = ep.incident_paged = rank if rank >= PAGE_RANK else -1
        return ep


def with_baseline(cfg: DetectorConfig, f: Finding, state: MachineState) -> Finding:
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


class Incidents:
    """Opens, updates and resolves a machine's episodes and writes their alert states.
    `config_version` goes into every alert and alert id; `control` looks up on-call's
    acknowledgements and snoozes by alert_id (None in replay: nobody acknowledges a replay)."""

    __slots__ = ("config_version", "control", "gate")

    def __init__(
        self, config_version: str, control: Callable[[str], AlertControl | None] | None = None
    ) -> None:
        self.config_version = config_version
        self.control = control
        # Storm control's say on each page before it counts as paged (`StormControl.admit`
        # for the partition at hand; None: no storm control, as in `process` alone).
        self.gate: Gate | None = None

    def _admit(self, detector: str, machine_id: str) -> Callable[[Episode], bool] | None:
        gate = self.gate
        if gate is None:
            return None
        return lambda ep: gate(
            detector,
            machine_id,
            ep.alert_id,
            ep.event_ids[0] if ep.event_ids else ep.alert_id,
            ep.incident_id or ep.alert_id,
        )

    def alert_id(self, machine_id: str, detector: str, first_event_id: str) -> str:
        blob = "\x1f".join((machine_id, detector, first_event_id, self.config_version))
        return "a-" + hashlib.sha256(blob.encode()).hexdigest()[:24]

    def episode(
        self, cfg: DetectorConfig, event: AuditEvent, group: str, state: MachineState, f: Finding
    ) -> Alert | None:
        """Fold a finding into the machine's episode of its detector (opening one when none is
        open); returns the alert state to write, if any."""
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
            silenced = control is not None and control.silenced
            status, shown = incident_view(
                state,
                ep,
                status,
                None if silenced else self._admit(f.detector, event.machine_id),
            )
            if status in ("opened", "escalated") and silenced:
                # Acknowledged or snoozed: the higher severity is recorded, nobody is paged.
                status = "updated"
            f = with_baseline(cfg, f, state)
            ep.observed, ep.expected = dict(f.observed), dict(f.expected)
            return self.alert(
                event.machine_id, group, f.detector, status, ep, f, ts, control, shown
            )
        alert_id = self.alert_id(event.machine_id, f.detector, event.event_id)
        incident_id, level = open_incident(state, ts - cfg.cooldown_s * 1000)
        ep = Episode(
            alert_id=alert_id,
            first_ms=ts,
            last_ms=ts,
            last_emit_ms=ts,
            count=1,
            severity=severity,
            score=f.score,
            event_ids=[event.event_id],
            incident_id=incident_id or alert_id,
            incident_paged=level,
        )
        state.episodes[f.detector] = ep
        status, shown = incident_view(
            state, ep, "opened", self._admit(f.detector, event.machine_id)
        )
        f = with_baseline(cfg, f, state)
        ep.observed, ep.expected = dict(f.observed), dict(f.expected)
        return self.alert(event.machine_id, group, f.detector, status, ep, f, ts, None, shown)

    def resolve_quiet(
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
                _, shown = incident_view(state, ep, "resolved")
                out.append(
                    self.alert(
                        machine_id,
                        group,
                        detector,
                        "resolved",
                        ep,
                        with_baseline(
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
                        None,
                        shown,
                    )
                )
        return out

    def alert(
        self,
        machine_id: str,
        group: str,
        detector: str,
        status: str,
        ep: Episode,
        f: Finding,
        ts: int,
        control: AlertControl | None = None,
        severity: str | None = None,
    ) -> Alert:
        """The alert state; `severity` is the one to write when not the episode's own (an
        incident's evidence, see `incident_view`)."""
        if control is None and status != "opened" and self.control is not None:
            control = self.control(ep.alert_id)
        ep.states += 1
        summary = f.summary
        if severity is not None and severity != ep.severity:
            summary = (
                f"(evidence of incident {ep.incident_id}, which has paged; "
                f"{ep.severity} on its own) {summary}"
            )
        # An opened episode's three times are one: formatted once.
        event_time = format_rfc3339_ms(ts)
        first = event_time if ep.first_ms == ts else format_rfc3339_ms(ep.first_ms)
        last = event_time if ep.last_ms == ts else format_rfc3339_ms(ep.last_ms)
        return Alert(
            alert_id=ep.alert_id,
            status=status,
            machine_id=machine_id,
            group=group,
            detector=detector,
            severity=severity or ep.severity,
            score=round(max(ep.score, f.score) if status != "resolved" else ep.score, 1),
            event_time=event_time,
            summary=summary,
            observed=f.observed,
            expected=f.expected,
            event_ids=list(ep.event_ids),
            config_version=self.config_version,
            first_event_time=first,
            last_event_time=last,
            repeat_count=ep.count,
            hint=HINTS.get(detector),
            sequence=ep.states,
            acknowledged_by=control.acknowledged_by if control is not None else None,
            snoozed_until=control.snoozed_until if control is not None else None,
            incident_id=ep.incident_id or ep.alert_id,
        )


# What an incident's evidence is written at when it never paged: below a page, so whatever
# selects alert states by status and severity does not page for it.
EVIDENCE_SEVERITY = "low"


def open_incident(state: MachineState, since_ms: int) -> tuple[str, int]:
    """The incident of the machine's episodes open since `since_ms` (the one opened first) and
    the highest severity rank it has paged at; ("", -1) when none is open."""
    first: Episode | None = None
    for ep in state.episodes.values():
        if ep.last_ms >= since_ms and (first is None or ep.first_ms < first.first_ms):
            first = ep
    if first is None:
        return "", -1
    incident = first.incident_id or first.alert_id
    level = max(
        ep.incident_paged
        for ep in state.episodes.values()
        if (ep.incident_id or ep.alert_id) == incident
    )
    return incident, level


def incident_view(
    state: MachineState,
    ep: Episode,
    status: str,
    admit: Callable[[Episode], bool] | None = None,
) -> tuple[str, str]:
    """The status and severity to write for `ep`'s next state, `status` being what its own
    episode says. A state at page severity that raises its incident's paged level pages: as
    `opened` when its alert has not paged before (the first state on-call sees of an alert is
    always `opened`), else `escalated`. Any other would-be page is the incident's evidence:
    an escalation that raises nothing is an update, and an alert that never paged is written
    at `EVIDENCE_SEVERITY`. An update above what its alert has paged at is a page too, unless
    it is evidence: a page storm control held back (`admit` said no) is not recorded as
    paged, so the alert's next state after the storm pages (`opened`, or `escalated` when it
    had paged lower)."""
    rank = SEVERITY_RANK[ep.severity]
    incident = ep.incident_id or ep.alert_id
    if rank >= PAGE_RANK and (
        status in ("opened", "escalated") or (status == "updated" and rank > ep.paged)
    ):
        level = max(
            (
                e.incident_paged
                for e in state.episodes.values()
                if (e.incident_id or e.alert_id) == incident
            ),
            default=-1,
        )
        if rank > max(level, ep.incident_paged):
            status = "opened" if ep.paged < 0 else "escalated"
            if admit is not None and not admit(ep):
                return status, ep.severity
            ep.paged = ep.incident_paged = rank
            for e in state.episodes.values():
                if (e.incident_id or e.alert_id) == incident:
                    e.incident_paged = max(e.incident_paged, rank)
            return status, ep.severity
        if status == "escalated":
            status = "updated"
    if ep.paged < 0 and rank >= PAGE_RANK:
        return status, EVIDENCE_SEVERITY
    return status, ep.severity


class StormControl:
    """At most `max_pages_per_minute` pages per store and event-time minute (fewer for new
    identities): the pages beyond are written at low severity, and one roll-up alert says how
    many pages and machines the minute had (see `detectors.capacity`). Storm control has its
    say before a page counts as paged (`admit`, through `Incidents.gate`): a page held back
    has not paged, so its alert's next state at page severity after the storm pages, as
    `opened`. One event (or punctuation) is one `begin`, its pages' `admit`s, one `apply`."""

    __slots__ = ("ended", "held", "partition", "refused", "ts_ms", "windows")

    def __init__(self) -> None:
        self.windows: dict[Any, StormWindow] = {}
        # Per partition, windows that ended with pages held back: their roll-ups, with the
        # final count, go out with the partition's next alerts.
        self.ended: dict[Any, list[StormWindow]] = {}
        # The store and event time at hand, the alerts held back since `begin`, and their
        # incidents (the rest of a held incident is held with it, uncounted, as it would
        # have been its evidence).
        self.partition: Any = None
        self.ts_ms = 0
        self.held: set[str] = set()
        self.refused: set[str] = set()

    def forget(self, partition: Any) -> None:
        self.windows.pop(partition, None)
        self.ended.pop(partition, None)

    def begin(self, partition: Any, ts_ms: int) -> None:
        """Pages from here on are `partition`'s, counted in the minute of `ts_ms`: the event's
        time (or the clock that punctuates), whatever the time a finding is anchored on."""
        self.partition = partition
        self.ts_ms = ts_ms
        self.held.clear()
        self.refused.clear()

    def _window(self) -> StormWindow:
        partition = self.partition
        window = self.windows.get(partition)
        minute = self.ts_ms // 60_000
        if window is None:
            window = self.windows[partition] = StormWindow(minute=minute)
        # A late event's pages count in the current minute (going back to its own would start
        # the count again and roll up the same storm twice); an event far behind, after one
        # stamped ahead of the rest, starts a window again rather than be counted in a
        # minute the stream has not reached.
        elif minute > window.minute or minute < window.minute - 1:
            if window.held:
                self.ended.setdefault(partition, []).append(window)
            window = self.windows[partition] = StormWindow(minute=minute)
        return window

    def admit(
        self,
        cfg: DetectorConfig,
        detector: str,
        machine_id: str,
        alert_id: str,
        first_event_id: str,
        incident: str,
    ) -> bool:
        """Count a page in the current minute; False: it is beyond the cap."""
        if incident in self.refused:
            self.held.add(alert_id)
            return False
        window = self._window()
        window.pages += 1
        window.machines.add(machine_id)
        n = window.by_detector.get(detector, 0) + 1
        window.by_detector[detector] = n
        cap = (
            cfg.max_new_identity_pages_per_minute
            if detector == "new_identity"
            else cfg.max_pages_per_minute
        )
        if n <= cap and window.pages - window.held <= cfg.max_pages_per_minute:
            return True
        window.held += 1
        if not window.first_event_id:
            window.first_event_id = first_event_id
        self.held.add(alert_id)
        self.refused.add(incident)
        return False

    def apply(self, cfg: DetectorConfig, config_version: str, alerts: list[Alert]) -> list[Alert]:
        """`alerts` of the event at hand as they go out: the pages `admit` held back at low
        severity, with the roll-ups."""
        window = self._window()
        out: list[Alert] = []
        ended = self.ended.pop(self.partition, None)
        if ended:
            for w in ended:
                out.append(self.rollup(cfg, config_version, w, "updated"))
        held, self.held = self.held, set()
        for alert in alerts:
            if alert.alert_id not in held or not alert.is_page:
                out.append(alert)
                continue
            out.append(
                replace(
                    alert,
                    severity="low",
                    summary="(held back by storm control) " + alert.summary,
                )
            )
            if not window.rollup_sent:
                window.rollup_sent = True
                out.append(self.rollup(cfg, config_version, window, "opened"))
        return out

    @staticmethod
    def rollup(cfg: DetectorConfig, config_version: str, window: StormWindow, status: str) -> Alert:
        t = window.minute * 60_000
        blob = "\x1f".join(("*", "storm", window.first_event_id, config_version))
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
            expected={"max_pages_per_minute": cfg.max_pages_per_minute},
            event_ids=[],
            config_version=config_version,
            first_event_time=format_rfc3339_ms(t),
            last_event_time=format_rfc3339_ms(t + 59_999),
            repeat_count=window.pages,
            hint="Many machines deviating at once is usually a deploy, an outage or a "
            "credential rotation; look for the common cause before the single machines.",
        )
