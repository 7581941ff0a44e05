"""Spoofed identity: an event of a signing machine whose signature did not verify.

The processor checks signatures (`schemas.signing`) for the machines with a configured key and
marks the event's `verification`; this detector turns an unverified event into a finding. It
learns nothing, and the core teaches nothing of such an event to any baseline: its content,
time included, is only the word of whoever wrote it.

Because that time is the sender's, the finding is judged at the machine's trusted time (the
last event time its state holds, else the partition's clock) rather than at the event's own:
a flood of forged events, whatever times they claim, falls into one episode and pages once,
until the machine's genuine traffic moves a cooldown past it.

Imports: `detectors.base` and `schemas.event`. The core calls `finding` for an unverified
event in place of the detectors (see `DetectionCore.observe`).
"""

from __future__ import annotations

from detectors.base import Finding
from schemas.event import AuditEvent, format_rfc3339_ms

NAME = "spoofed_identity"
# High severity (70 <= score < 85): a page, above the ordinary findings of a known machine.
SCORE = 80.0
HINT = (
    "Someone may be writing events under this identity: check who can write to the events "
    "topic, then the machine's producer (its signing key, key id and clock). A rotated key "
    "not yet configured gives unknown_key_id."
)
_REASONS = {
    "missing": "carried no signature",
    "unknown_key_id": "was signed with a key id the machine does not have",
    "bad_signature": "carried a signature that does not verify",
}


def finding(event: AuditEvent) -> Finding:
    """The finding for an unverified event (`event.unverified`)."""
    reason = event.verification or "missing"
    key_id = event.key_id if event.key_id is not None else "(none)"
    return Finding(
        NAME,
        SCORE,
        f"{event.machine_id} sent an event that {_REASONS.get(reason, reason)} (key id "
        f"{key_id}): its identity may be spoofed. The event is archived as unverified.",
        {
            "reason": reason,
            "key_id": key_id,
            "event_id": event.event_id,
            "resource": event.resource,
            "operation": event.operation,
            "claimed_time": format_rfc3339_ms(event.timestamp_ms),
        },
        {"signature": "valid, by one of the machine's configured keys"},
    )
