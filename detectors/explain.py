"""What the detection core currently believes about one machine, as a JSON-able dict.

Used by `auditwatch explain` (over a worker's HTTP endpoint, or over event files replayed in
memory) to answer "what does normal look like for this machine, and is it still learning?"
before an on-call engineer decides whether a page is real. It only reads: the same state the
core keeps (the machine's baselines and its peer group's facts) through the `KeyValue`
protocol, and changes nothing.

Imports: the standard library, orjson and the detection core.
"""

from __future__ import annotations

from typing import Any

import orjson

from detectors.core import DetectionCore
from detectors.operations import is_destructive, is_write
from detectors.peers import KeyValue, PeerGroup
from detectors.rate import RateBaseline
from detectors.state import MACHINE, MachineState
from schemas.event import AuditEvent, format_rfc3339_ms

_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000


def group_for(core: DetectionCore, machine_id: str) -> tuple[str, str]:
    """(peer group, how it was found) from the machine id alone. A group named by an event
    attribute cannot be known without an event, which the caller may pass instead."""
    probe = AuditEvent(
        event_id="", ts_us=0, machine_id=machine_id, resource="", operation="", outcome="SUCCESS"
    )
    source = "machine id rules"
    if core.config.group_attribute is not None:
        source = (
            f"machine id rules (groups come from attribute {core.config.group_attribute!r} "
            "when events carry it; pass the group to be sure)"
        )
    return core.group_of(probe), source


def load_machine(kv: KeyValue, machine_id: str) -> MachineState | None:
    raw = kv.get(MACHINE, machine_id)
    return MachineState.from_dict(orjson.loads(raw)) if raw is not None else None


def explain_machine(
    kv: KeyValue,
    core: DetectionCore,
    machine_id: str,
    *,
    group: str | None = None,
    group_source: str = "given",
    top: int = 20,
) -> dict[str, Any] | None:
    """The baseline of `machine_id` in `kv`, or None when the store does not know it.

    Times are RFC 3339 UTC; "now" is the machine's last event time (event time, as the core
    judges it), so the answer is the same from a live worker and from a replay. `group`
    (None: from the machine id) and `group_source` (how the caller knows it) name its peer
    group. `top` bounds the resources and operations listed (most recently used first)."""
    state = load_machine(kv, machine_id)
    if state is None:
        return None
    if group is None:
        group, group_source = group_for(core, machine_id)
    cfg = core.config_for(machine_id, group)
    now = state.last_ms
    peers = PeerGroup(kv, group)
    warmup_ms = cfg.warmup_s * 1000
    own_warm = state.n >= cfg.warmup_events and now - state.first_ms >= warmup_ms
    peer_warm = peers.members > 1 and peers.warm(now, warmup_ms)
    rate = RateBaseline(cfg.rate, state.rate_state())
    per_hour = 3600 / cfg.rate.interval_s
    day = now - now % _DAY_MS
    profile = [rate.expected_at(day + h * _HOUR_MS) for h in range(24)]
    slots = cfg.rate.slots
    # An hour the profile has never seen is extrapolated from the last one it learned.
    learned_hours = [
        bool(slots) and rate.model.prof_n[h * slots // 24] > 0 if rate.n else False
        for h in range(24)
    ]
    intervals_per_day = 86_400 // cfg.rate.interval_s

    resources = sorted(state.resources.items(), key=lambda rt: rt[1], reverse=True)
    ops = sorted(state.ops.items(), key=lambda ot: ot[1], reverse=True)
    _, accesses, failures, learned_ratio, fail_intervals = state.fail
    return {
        "machine_id": machine_id,
        "group": {
            "name": group,
            "source": group_source,
            "known": peers.known,
            # Member names are not kept (only what the group uses): a count.
            "members": peers.members,
            "warm": peers.warm(now, warmup_ms),
            "last_member_joined": (
                format_rfc3339_ms(peers.last_join_ms) if peers.last_join_ms else None
            ),
        },
        "first_seen": format_rfc3339_ms(state.first_ms),
        "last_seen": format_rfc3339_ms(state.last_ms),
        "events": state.n,
        "warmup": {
            # Pages need either the machine's own warm-up or a warm group with other members.
            "can_page": own_warm or peer_warm,
            "own": own_warm,
            "by_peers": peer_warm,
            "events": state.n,
            "events_needed": cfg.warmup_events,
            "observed_s": (now - state.first_ms) // 1000,
            "observed_s_needed": cfg.warmup_s,
            "rate_intervals_learned": rate.n,
            "rate_intervals_needed": cfg.rate.warmup_intervals,
            "rate_warm": rate.warm,
            # Off-hours judgement needs a full day of time-of-day profile.
            "time_of_day_known": rate.n >= intervals_per_day,
        },
        "rate": {
            "interval_s": cfg.rate.interval_s,
            "expected_per_hour_utc": [round(e * per_hour, 2) for e in profile],
            "hour_learned_utc": learned_hours,
            "busiest_hour_utc": (
                max((h for h in range(24) if learned_hours[h]), key=profile.__getitem__)
                if any(learned_hours)
                else None
            ),
            "current_interval_start": (
                format_rfc3339_ms(rate.current * cfg.rate.interval_s * 1000)
                if rate.current >= 0
                else None
            ),
            "current_interval_events": rate.count,
            "current_interval_expected": round(rate.expected(), 3),
            "spike_threshold": round(rate.threshold(), 1),
            "recent_peak_per_interval": round(float(state.peak[2]), 2) if state.peak else 0.0,
        },
        "resources": {
            "known": len(state.resources),
            "recent": [
                {"resource": r, "last_seen": format_rfc3339_ms(t)} for r, t in resources[:top]
            ],
            "new_in_fanout_window": len(state.recent_new),
        },
        "operations": {
            "known": len(state.ops),
            "read_only": all(not is_write(o) for o in state.ops),
            "recent": [
                {
                    "operation": o,
                    "last_seen": format_rfc3339_ms(t),
                    "write": is_write(o),
                    "destructive": is_destructive(o),
                }
                for o, t in ops[:top]
            ],
        },
        "failure_ratio": {
            "learned": learned_ratio,
            "intervals_learned": fail_intervals,
            "current_interval_accesses": accesses,
            "current_interval_failures": failures,
            "page_needs_failures": cfg.failure_min_count,
            "page_needs_ratio": round(
                max(cfg.failure_min_ratio, min(4 * learned_ratio, (1 + learned_ratio) / 2)), 4
            ),
        },
        "open_alerts": [
            {
                "detector": detector,
                "alert_id": ep.alert_id,
                "severity": ep.severity,
                "score": round(ep.score, 1),
                "since": format_rfc3339_ms(ep.first_ms),
                "last": format_rfc3339_ms(ep.last_ms),
                "repeats": ep.count,
            }
            for detector, ep in sorted(state.episodes.items())
        ],
        "config_version": core.config_version,
    }
