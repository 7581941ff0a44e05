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
from dataclasses import asdict, dataclass, field
from typing import Any

from detectors.identity import default_group, normalise_resource
from detectors.rate import RateBaseline, RateParams
from schemas.alert import SEVERITY_RANK, Alert, Scalar, severity_for
from schemas.event import AuditEvent, format_rfc3339_ms

HINTS = {
    "access_rate": "Check what the machine was running at that time (deploy, backfill, retry "
    "loop) and whether its credentials are used from an unexpected place.",
    "new_resource": "Check whether a deploy or config change gave the machine this access; if "
    "not, treat its credentials as possibly leaked.",
}


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Detection settings. `streams.config` builds this from the validated YAML config."""

    rate: RateParams = field(default_factory=RateParams)
    warmup_s: int = 3600  # per machine, in event time
    warmup_events: int = 50
    resource_depth: int = 2
    max_resources: int = 1000
    resource_horizon_s: int = 30 * 86400
    fanout_window_s: int = 300
    cooldown_s: int = 900
    update_every_s: int = 60  # at most one 'updated' state per alert per this much event time

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

    @classmethod
    def new(cls, ts_ms: int) -> MachineState:
        return cls(ts_ms, ts_ms, 0, {}, [], [], {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "f": self.first_ms,
            "l": self.last_ms,
            "n": self.n,
            "r": self.resources,
            "q": self.rate,
            "w": self.recent_new,
            "e": {k: v.to_list() for k, v in self.episodes.items()},
        }

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
        )


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

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.config_version = self.config.version()

    def process(
        self, event: AuditEvent, state: MachineState | None
    ) -> tuple[MachineState, list[Alert]]:
        cfg = self.config
        ts = event.timestamp_ms
        if state is None:
            state = MachineState.new(ts)
        alerts: list[Alert] = []
        group = default_group(event.machine_id)
        alerts.extend(self._resolve_quiet(event.machine_id, group, state, ts))

        warm = state.n >= cfg.warmup_events and ts - state.first_ms >= cfg.warmup_s * 1000
        findings: list[Finding] = []

        rate = RateBaseline(cfg.rate, state.rate)
        rate_score = rate.observe(ts)
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
        state.rate = rate.state()

        resource = normalise_resource(event.resource, cfg.resource_depth)
        known = resource in state.resources
        if not known and warm:
            window_start = ts - cfg.fanout_window_s * 1000
            state.recent_new = [r for r in state.recent_new if r[0] >= window_start]
            state.recent_new.append([ts, resource])
            k = len(state.recent_new)
            # One new resource is worth a look; a burst (enumeration) far more.
            score = min(100.0, 55.0 + 12.0 * math.log2(k))
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
        self._learn_resource(state, resource, ts)

        state.n += 1
        state.last_ms = max(state.last_ms, ts)
        for f in findings:
            alert = self._episode(event, group, state, f)
            if alert is not None:
                alerts.append(alert)
        return state, alerts

    def _learn_resource(self, state: MachineState, resource: str, ts: int) -> None:
        cfg = self.config
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
        self, event: AuditEvent, group: str, state: MachineState, f: Finding
    ) -> Alert | None:
        cfg = self.config
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
            return self._alert(event.machine_id, group, f.detector, status, ep, f, ts)
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
        return self._alert(event.machine_id, group, f.detector, "opened", ep, f, ts)

    def _resolve_quiet(
        self, machine_id: str, group: str, state: MachineState, ts: int
    ) -> list[Alert]:
        """Episodes quiet for a cooldown are resolved when the machine's stream moves past it
        (event time, not wall clock, so replay and Kafka agree)."""
        cooldown = self.config.cooldown_s * 1000
        out: list[Alert] = []
        for detector, ep in list(state.episodes.items()):
            if ts - ep.last_ms > cooldown:
                del state.episodes[detector]
                resolved_at = ep.last_ms + cooldown
                out.append(
                    self._alert(
                        machine_id,
                        group,
                        detector,
                        "resolved",
                        ep,
                        Finding(
                            detector,
                            ep.score,
                            f"{machine_id}: no further {detector} findings for "
                            f"{self.config.cooldown_s // 60} minutes.",
                            {"repeats": ep.count},
                            {},
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
    ) -> Alert:
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
        )
