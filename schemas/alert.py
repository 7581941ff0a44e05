"""The alert contract: one state of an alert, as written to the alerts topic and `--alerts-out`.

Standard library only: detectors build alerts, streams serialise them.
"""

from __future__ import annotations

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
    acknowledged_by: str | None = None
    snoozed_until: str | None = None
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
            "acknowledged_by": self.acknowledged_by,
            "snoozed_until": self.snoozed_until,
        }
        return out


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
