"""The audit event as one typed, frozen record, and its validation from a decoded mapping.

Standard library only (plus orjson for canonical bytes), so detectors can import it. Both the
Avro and the JSON form of an event end in `event_from_mapping`, so they are validated by the
same rules and get the same derived event_id.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from schemas.frozen import fast_init

OUTCOMES = ("SUCCESS", "FAILURE", "DENIED")
_OUTCOME_BY_UPPER = {o: o for o in OUTCOMES}
REQUIRED_FIELDS = ("timestamp", "machine_id", "resource", "operation", "outcome")
OPTIONAL_STRING_FIELDS = ("source_ip", "identity_type", "source")

# Events before this are taken as a unit mistake (seconds sent as millis and the like).
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
# Year 2300 in millis; a larger epoch number is microseconds or nanoseconds sent by mistake.
_MAX_PLAUSIBLE_MS = 10_413_792_000_000

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})$"
)

# Fields that name who acted (the archive key joins machine_id and event_id with U+001F).
# A control character (Unicode Cc) or a line or paragraph separator in one of them forges
# key boundaries and log lines, and no real identity has one: the event is invalid. Format
# characters (Cf: zero-width space, bidi overrides) are let through, because a machine id
# made with them imitates another and the new_identity detector pages it, naming whom.
IDENTITY_FIELDS = ("machine_id", "event_id", "source_ip", "identity_type", "source")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class InvalidEvent(ValueError):
    """An event that decoded but is not acceptable; `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits; `streams.ops.config` fills them from the user's configuration."""

    max_value_bytes: int = 65_536
    max_field_chars: int = 2_048
    max_attributes: int = 64
    max_future_ms: int = 3_600_000


@fast_init
@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One access by a machine identity. `ts_us` keeps the precision the producer sent (an Avro
    event has milliseconds, JSON may carry microseconds); the archive stores milliseconds."""

    event_id: str
    ts_us: int
    machine_id: str
    resource: str
    operation: str
    outcome: str
    source_ip: str | None = None
    identity_type: str | None = None
    source: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    event_id_derived: bool = False
    # Signed events (schemas.signing): the key that signed and the signature, as sent.
    key_id: str | None = None
    signature: str | None = None
    # The signature check's verdict (a `schemas.signing.Verdict` value) for a machine with a
    # configured key; None when it was not checked. Set by the processor, not sent.
    verification: str | None = None

    @property
    def unverified(self) -> bool:
        """A signing machine's event whose signature did not verify: its content, time
        included, is the sender's word only."""
        return self.verification is not None and self.verification != "verified"

    @property
    def timestamp_ms(self) -> int:
        return self.ts_us // 1000

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.ts_us / 1_000_000, tz=UTC)

    def to_avro(self) -> dict[str, Any]:
        """The record for the (logical-type-stripped) AuditEvent schema. `key_id` and
        `signature` only when signed: Avro writes their default (null) when absent, and the
        JSON of an unsigned event stays as it was."""
        out = {
            "event_id": self.event_id,
            "timestamp": self.timestamp_ms,
            "machine_id": self.machine_id,
            "resource": self.resource,
            "operation": self.operation,
            "outcome": self.outcome,
            "source_ip": self.source_ip,
            "identity_type": self.identity_type,
            "source": self.source,
            "attributes": dict(self.attributes),
        }
        if self.key_id is not None or self.signature is not None:
            out["key_id"] = self.key_id
            out["signature"] = self.signature
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON form: like Avro, but the timestamp as RFC 3339 UTC with milliseconds."""
        out = self.to_avro()
        out["timestamp"] = format_rfc3339_ms(self.timestamp_ms)
        return out

    def content_digest(self) -> bytes:
        """16 bytes identifying the event's archived content (millisecond precision, event_id
        excluded): two events with one event_id and equal digests are the same event re-sent."""
        canonical = _canonical(
            self.ts_us // 1000 * 1000,
            self.machine_id,
            self.resource,
            self.operation,
            self.outcome,
            self.source_ip,
            self.identity_type,
            self.source,
            self.attributes,
            self.key_id,
            self.signature,
        )
        return hashlib.blake2b(canonical, digest_size=16).digest()


@lru_cache(maxsize=4096)
def _rfc3339_second(s: int) -> str:
    return datetime.fromtimestamp(s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def format_rfc3339_ms(ms: int) -> str:
    # Every alert state carries three of these, mostly within the same few seconds: strftime
    # for each took 6 us, a cached second 1 us.
    s, rest = divmod(ms, 1000)
    return f"{_rfc3339_second(s)}{rest:03d}Z"


def _canonical_bytes(ev: AuditEvent, ts_us: int) -> bytes:
    return _canonical(
        ts_us,
        ev.machine_id,
        ev.resource,
        ev.operation,
        ev.outcome,
        ev.source_ip,
        ev.identity_type,
        ev.source,
        ev.attributes,
        ev.key_id,
        ev.signature,
    )


def _canonical(
    ts_us: int,
    machine_id: str,
    resource: str,
    operation: str,
    outcome: str,
    source_ip: str | None,
    identity_type: str | None,
    source: str | None,
    attributes: Mapping[str, str],
    key_id: str | None,
    signature: str | None,
) -> bytes:
    fields: tuple[Any, ...] = (
        "v1",
        ts_us,
        machine_id,
        resource,
        operation,
        outcome,
        source_ip,
        identity_type,
        source,
        sorted(attributes.items()) if attributes else (),
    )
    if key_id is not None or signature is not None:
        # Only when signed, so an unsigned event keeps the id and digest it always had; a
        # forged copy of a signed event's id then differs in content and is not taken for it.
        fields += ((key_id, signature),)
    return orjson.dumps(fields)


def derive_event_id(ev: AuditEvent) -> str:
    """The id of an event that came without one: a hash of all its fields at the precision it
    was sent with, so a re-sent event gets the same id. 128 bits: a collision between two
    different events is not expected in practice; if one happened, the later event would be
    dead-lettered as a conflicting duplicate (kept, not lost). Two events equal in every field,
    to the microsecond, are indistinguishable by design and archived once; producers that can
    emit such twins must send their own event_id."""
    return "h-" + hashlib.blake2b(_canonical_bytes(ev, ev.ts_us), digest_size=16).hexdigest()


def parse_timestamp_us(value: Any) -> int:
    """Epoch milliseconds (int, float or digit string) or RFC 3339 text -> epoch microseconds."""
    if isinstance(value, bool):
        raise InvalidEvent(
            "bad_timestamp", f"timestamp must be RFC 3339 or epoch millis, got {value!r}"
        )
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, float):
        # Finite is not enough: 1e306 millis overflows to infinity once scaled to micros.
        if not math.isfinite(value * 1000):
            raise InvalidEvent("bad_timestamp", f"timestamp is not a number in range: {value!r}")
        return round(value * 1000)
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            # int() refuses more than 4300 digits with a ValueError; 20 are already far
            # outside any plausible time (validation then says so).
            if len(text) > 20:
                raise InvalidEvent(
                    "bad_timestamp", f"timestamp of {len(text)} digits is not epoch milliseconds"
                )
            return int(text) * 1000
        m = _RFC3339.match(text)
        if m is None:
            raise InvalidEvent(
                "bad_timestamp", f"timestamp {value!r} is neither RFC 3339 nor epoch milliseconds"
            )
        year, month, day, hour, minute, sec, frac, tz = m.groups()
        try:
            base = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(sec), tzinfo=UTC
            )
        except ValueError as e:
            raise InvalidEvent("bad_timestamp", f"timestamp {value!r}: {e}") from None
        us = int(base.timestamp()) * 1_000_000 + (int((frac or "0").ljust(6, "0")[:6]))
        if tz not in ("Z", "z"):
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 23 or minutes > 59:
                raise InvalidEvent("bad_timestamp", f"timestamp {value!r} has no such UTC offset")
            offset_min = hours * 60 + minutes
            us -= sign * offset_min * 60_000_000
        return us
    raise InvalidEvent(
        "bad_timestamp", f"timestamp must be RFC 3339 or epoch millis, got {value!r}"
    )


def _required_str(d: Mapping[str, Any], name: str, limits: Limits) -> str:
    value = d.get(name)
    if value is None:
        raise InvalidEvent("missing_field", f"required field {name!r} is missing")
    if not isinstance(value, str):
        raise InvalidEvent(
            "invalid_field", f"field {name!r} must be a string, got {type(value).__name__}"
        )
    if not value:
        raise InvalidEvent("missing_field", f"required field {name!r} is empty")
    if len(value) > limits.max_field_chars:
        raise InvalidEvent(
            "oversize", f"field {name!r} has {len(value)} characters (max {limits.max_field_chars})"
        )
    return value


def _optional_str(d: Mapping[str, Any], name: str, limits: Limits) -> str | None:
    value = d.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent("invalid_field", f"field {name!r} must be a string or null")
    if len(value) > limits.max_field_chars:
        raise InvalidEvent(
            "oversize", f"field {name!r} has {len(value)} characters (max {limits.max_field_chars})"
        )
    return value


def _refuse_control(ev: AuditEvent) -> None:
    """Raise for the first identity field with a control character (see IDENTITY_FIELDS);
    the message names the code point, never the raw value, which would carry it into logs."""
    for name in IDENTITY_FIELDS:
        value = getattr(ev, name)
        m = _CONTROL.search(value) if value else None
        if m is not None:
            ch = m.group()
            kind = {"\u2028": "line separator", "\u2029": "paragraph separator"}.get(
                ch, "control character"
            )
            raise InvalidEvent(
                "invalid_field",
                f"{name} contains {kind} U+{ord(ch):04X} at position {m.start()}",
            )


def event_from_mapping(d: Any, limits: Limits, now_ms: int) -> AuditEvent:
    """Validate a decoded event (Avro record or JSON object) and build the typed event.

    Raises InvalidEvent with a dead-letter reason code. `now_ms` is processing time: an event
    more than `limits.max_future_ms` ahead of it is rejected, since clocks that far off make
    every time-based baseline wrong.
    """
    if type(d) is dict:
        ev = _well_formed(d, limits, now_ms)
        if ev is not None:
            return ev
    return _checked(d, limits, now_ms)


def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (valid: the caller checked)."""
    y = year - 1 if month <= 2 else year
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _rfc3339_us(text: str) -> int | None:
    """`parse_timestamp_us` of RFC 3339 text in integer arithmetic, without the datetime
    it builds (3 us a timestamp); None for anything but a valid RFC 3339 time, which
    `parse_timestamp_us` then refuses with its own message."""
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, sec, frac, tz = m.groups()
    y, mo, d, h, mi, se = int(year), int(month), int(day), int(hour), int(minute), int(sec)
    if not (1 <= mo <= 12 and d >= 1 and h <= 23 and mi <= 59 and se <= 59 and y >= 1):
        return None
    if d > _MONTH_DAYS[mo] and not (
        mo == 2 and d == 29 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    ):
        return None
    us = ((_days(y, mo, d) * 24 + h) * 60 + mi) * 60 + se
    us = us * 1_000_000 + (int(frac.ljust(6, "0")[:6]) if frac else 0)
    if tz not in ("Z", "z"):
        hours, minutes = int(tz[1:3]), int(tz[-2:])
        if hours > 23 or minutes > 59:
            return None
        us += (-60_000_000 if tz[0] == "+" else 60_000_000) * (hours * 60 + minutes)
    return us


def _well_formed(d: dict[str, Any], limits: Limits, now_ms: int) -> AuditEvent | None:
    """The event of a well-formed record, built in one pass with no datetime; None for any
    record the full checks (`_checked`) might refuse or build differently, so those keep
    their exact reason and message. Accepts only what `_checked` accepts, and builds what it
    builds (tests/test_fast_paths.py compares the two on hostile records)."""
    try:
        ts = d["timestamp"]
        machine_id = d["machine_id"]
        resource = d["resource"]
        operation = d["operation"]
        outcome = d["outcome"]
    except KeyError:
        return None
    if type(ts) is int:
        ts_us = ts * 1000
    elif type(ts) is str and not ts.isdigit():
        ts_us = _rfc3339_us(ts.strip())  # type: ignore[assignment]
        if ts_us is None:
            return None
    else:
        return None
    ts_ms = ts_us // 1000
    if (
        ts_ms < MIN_TIMESTAMP_MS
        or ts_ms > _MAX_PLAUSIBLE_MS
        or ts_ms > now_ms + limits.max_future_ms
    ):
        return None
    most = limits.max_field_chars
    if (
        type(machine_id) is not str
        or type(resource) is not str
        or type(operation) is not str
        or type(outcome) is not str
        or not 0 < len(machine_id) <= most
        or not 0 < len(resource) <= most
        or not 0 < len(operation) <= most
    ):
        return None
    outcome = _OUTCOME_BY_UPPER.get(outcome) or _OUTCOME_BY_UPPER.get(outcome.upper())
    if outcome is None:
        return None
    get = d.get
    given = get("event_id")
    source_ip = get("source_ip")
    identity_type = get("identity_type")
    source = get("source")
    key_id = get("key_id")
    signature = get("signature")
    if (
        (given is not None and (type(given) is not str or len(given) > 256))
        or (source_ip is not None and (type(source_ip) is not str or len(source_ip) > most))
        or (
            identity_type is not None
            and (type(identity_type) is not str or len(identity_type) > most)
        )
        or (source is not None and (type(source) is not str or len(source) > most))
        or (key_id is not None and (type(key_id) is not str or len(key_id) > most))
        or (signature is not None and (type(signature) is not str or len(signature) > most))
    ):
        return None
    if not (
        machine_id.isprintable()
        and (given is None or given.isprintable())
        and (source_ip is None or source_ip.isprintable())
        and (identity_type is None or identity_type.isprintable())
        and (source is None or source.isprintable())
    ):
        return None
    attrs = get("attributes")
    if attrs:
        if type(attrs) is not dict or len(attrs) > limits.max_attributes:
            return None
        for k, v in attrs.items():
            if type(k) is not str or type(v) is not str or len(k) + len(v) > most:
                return None
        attributes = dict(attrs)  # the caller's mapping is not the event's
    elif attrs is None or type(attrs) is dict:
        attributes = {}
    else:
        return None
    if given:
        event_id, derived = given, False
    else:
        canonical = _canonical(
            ts_us,
            machine_id,
            resource,
            operation,
            outcome,
            source_ip,
            identity_type,
            source,
            attributes,
            key_id,
            signature,
        )
        event_id = "h-" + hashlib.blake2b(canonical, digest_size=16).hexdigest()
        derived = True
    return AuditEvent(
        event_id,
        ts_us,
        machine_id,
        resource,
        operation,
        outcome,
        source_ip,
        identity_type,
        source,
        attributes,
        derived,
        key_id,
        signature,
    )


def _checked(d: Any, limits: Limits, now_ms: int) -> AuditEvent:
    """`event_from_mapping` with every check in the order that picks the reported reason."""
    if not isinstance(d, Mapping):
        raise InvalidEvent("invalid_field", f"an event must be an object, got {type(d).__name__}")
    if "timestamp" not in d or d["timestamp"] is None:
        raise InvalidEvent("missing_field", "required field 'timestamp' is missing")
    ts_us = parse_timestamp_us(d["timestamp"])
    ts_ms = ts_us // 1000
    if ts_ms < MIN_TIMESTAMP_MS or ts_ms > _MAX_PLAUSIBLE_MS:
        raise InvalidEvent(
            "bad_timestamp", f"timestamp {d['timestamp']!r} is outside 2000-01-01 .. 2300-01-01"
        )
    if ts_ms > now_ms + limits.max_future_ms:
        raise InvalidEvent(
            "timestamp_in_future",
            f"timestamp {format_rfc3339_ms(ts_ms)} is {(ts_ms - now_ms) / 1000:.0f} s ahead of "
            f"processing time (max {limits.max_future_ms / 1000:.0f} s)",
        )
    machine_id = _required_str(d, "machine_id", limits)
    resource = _required_str(d, "resource", limits)
    operation = _required_str(d, "operation", limits)
    raw_outcome = d.get("outcome")
    if raw_outcome is None:
        raise InvalidEvent("missing_field", "required field 'outcome' is missing")
    outcome = _OUTCOME_BY_UPPER.get(raw_outcome.upper()) if isinstance(raw_outcome, str) else None
    if outcome is None:
        raise InvalidEvent(
            "invalid_field", f"outcome {raw_outcome!r} is not one of {', '.join(OUTCOMES)}"
        )
    attrs_raw = d.get("attributes")
    attributes: dict[str, str] = {}
    if attrs_raw is not None:
        if not isinstance(attrs_raw, Mapping):
            raise InvalidEvent("invalid_field", "attributes must be an object of strings")
        if len(attrs_raw) > limits.max_attributes:
            raise InvalidEvent(
                "oversize", f"{len(attrs_raw)} attributes (max {limits.max_attributes})"
            )
        for k, v in attrs_raw.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidEvent(
                    "invalid_field", f"attribute {k!r} must map a string to a string"
                )
            if len(k) + len(v) > limits.max_field_chars:
                raise InvalidEvent(
                    "oversize", f"attribute {k!r} is longer than {limits.max_field_chars}"
                )
            attributes[k] = v
    given_id = d.get("event_id")
    if given_id is not None and not isinstance(given_id, str):
        raise InvalidEvent("invalid_field", "event_id must be a string or null")
    if given_id is not None and len(given_id) > 256:
        raise InvalidEvent("oversize", f"event_id has {len(given_id)} characters (max 256)")
    ev = AuditEvent(
        event_id=given_id or "",
        ts_us=ts_us,
        machine_id=machine_id,
        resource=resource,
        operation=operation,
        outcome=outcome,
        source_ip=_optional_str(d, "source_ip", limits),
        identity_type=_optional_str(d, "identity_type", limits),
        source=_optional_str(d, "source", limits),
        attributes=attributes,
        key_id=_optional_str(d, "key_id", limits),
        signature=_optional_str(d, "signature", limits),
    )
    # isprintable is False for any control character: one C-level pass per field is the
    # whole cost of a clean event.
    if not (
        machine_id.isprintable()
        and (given_id is None or given_id.isprintable())
        and (ev.source_ip is None or ev.source_ip.isprintable())
        and (ev.identity_type is None or ev.identity_type.isprintable())
        and (ev.source is None or ev.source.isprintable())
    ):
        _refuse_control(ev)
    if given_id:
        return ev
    return AuditEvent(
        event_id=derive_event_id(ev),
        ts_us=ts_us,
        machine_id=ev.machine_id,
        resource=ev.resource,
        operation=ev.operation,
        outcome=ev.outcome,
        source_ip=ev.source_ip,
        identity_type=ev.identity_type,
        source=ev.source,
        attributes=attributes,
        event_id_derived=True,
        key_id=ev.key_id,
        signature=ev.signature,
    )
