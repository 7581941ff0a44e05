"""The alert contract: one state of an alert, as written to the alerts topic and `--alerts-out`.

Standard library only: detectors build alerts, streams serialise them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
PAGE_RANK = SEVERITY_RANK["medium"]
STATUSES = ("opened", "updated", "escalated", "resolved")
Scalar = str | float | int | None


def severity_for(score: float) -> str:
    """Score 0-100 to severity; medium (a page) starts at 50."""
    if score >= 85:
        return "critical"
    if score >= 70:
        return "high"
    if score >= 50:
        return "medium"
    if score >= 25:
        return "low"
    return "info"


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    status: str
    machine_id: str
    group: str
    detector: str
    severity: str
    score: float
    event_time: str
    summary: str
    observed: dict[str, Scalar]
    expected: dict[str, Scalar]
    event_ids: list[str]
    config_version: str
    first_event_time: str | None = None
    last_event_time: str | None = None
    repeat_count: int | None = None
    hint: str | None = None
    # The n-th state of this alert (opened is 1); None for alerts without an episode.
    sequence: int | None = None
    acknowledged_by: str | None = None
    snoozed_until: str | None = None
    # The incident the alert belongs to: the alert_id of the incident's first alert (its own
    # for that one). Findings of one machine that overlap in time are one incident, which
    # pages once; the others are its evidence. None for alerts outside any incident (storm).
    incident_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_page(self) -> bool:
        """A page asks a person to look: it opens or escalates at medium or above."""
        return self.status in ("opened", "escalated") and SEVERITY_RANK[self.severity] >= PAGE_RANK

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "alert_id": self.alert_id,
            "status": self.status,
            "machine_id": self.machine_id,
            "group": self.group,
            "detector": self.detector,
            "severity": self.severity,
            "score": round(self.score, 1),
            "event_time": self.event_time,
            "summary": self.summary,
            "observed": self.observed,
            "expected": self.expected,
            "event_ids": self.event_ids[:10],
            "config_version": self.config_version,
            "first_event_time": self.first_event_time,
            "last_event_time": self.last_event_time,
            "repeat_count": self.repeat_count,
            "hint": self.hint,
            "sequence": self.sequence,
            "acknowledged_by": self.acknowledged_by,
            "snoozed_until": self.snoozed_until,
            "incident_id": self.incident_id,
        }
        return out


_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "alert_id": (str,),
    "status": (str,),
    "severity": (str,),
    "machine_id": (str,),
    "group": (str,),
    "detector": (str,),
    "summary": (str,),
    "event_time": (str,),
    "config_version": (str,),
    "score": (int, float),
    "observed": (dict,),
    "expected": (dict,),
    "event_ids": (list,),
}
_OPTIONAL_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "first_event_time": (str,),
    "last_event_time": (str,),
    "hint": (str,),
    "acknowledged_by": (str,),
    "snoozed_until": (str,),
    "incident_id": (str,),
    "repeat_count": (int,),
    "sequence": (int,),
}
REQUIRED_STATE_FIELDS = ("alert_id", "status", "severity")


def check_state(value: Any) -> dict[str, Any]:
    """`value` (an alerts-topic record, parsed) if it has the shape `Alert.to_json` writes:
    an object with `REQUIRED_STATE_FIELDS`, and every field it has of its type. ValueError
    otherwise, so a reader dead-letters or skips a record written by something else instead
    of failing on it (a list where a severity should be is unhashable, a number has no
    upper())."""
    if not isinstance(value, dict):
        raise ValueError(f"an alert state is a JSON object, not {type(value).__name__}")
    missing = [k for k in REQUIRED_STATE_FIELDS if k not in value]
    if missing:
        raise ValueError(f"an alert state needs {', '.join(missing)}")
    for types, optional in ((_STATE_TYPES, False), (_OPTIONAL_STATE_TYPES, True)):
        for name, allowed in types.items():
            if name not in value or (optional and value[name] is None):
                continue
            v = value[name]
            if isinstance(v, bool) or not isinstance(v, allowed):
                raise ValueError(f"alert state field {name!r} is a {type(v).__name__}")
    return value


def state_identity(value: dict[str, Any], raw: bytes) -> tuple[Any, ...]:
    """What makes an alert state itself, to drop one read twice: (alert_id, status,
    sequence); the record's bytes for a state without a sequence."""
    seq = value.get("sequence")
    if seq is None:
        return (raw,)
    return value.get("alert_id"), value.get("status"), seq


class Recent:
    """The last `size` identities seen, oldest forgotten first: a reader's memory of the
    alert states it has shown or delivered."""

    def __init__(self, size: int = 1_000_000) -> None:
        self.size = size
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, identity: Hashable) -> bool:
        return identity in self._seen

    def add(self, identity: Hashable) -> bool:
        """Remember `identity`; False if it was already there (a repeat)."""
        if identity in self._seen:
            self._seen.move_to_end(identity)
            return False
        self._seen[identity] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


@dataclass(frozen=True, slots=True)
class AlertControl:
    """What on-call decided about one alert (`auditwatch alerts ack/snooze`), as the detection
    core sees it. `snoozed_until` is set only while the snooze lasts: whoever supplies this
    (the control topic reader) applies its own clock, so the core stays free of wall time."""

    acknowledged_by: str | None = None
    snoozed_until: str | None = None  # RFC 3339 UTC

    @property
    def silenced(self) -> bool:
        """Repeats of the alert must not page: it is acknowledged or snoozed."""
        return self.acknowledged_by is not None or self.snoozed_until is not None
