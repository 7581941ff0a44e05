"""Unit tests for schemas.event: timestamp parsing, validation, derived ids and forms."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.event import (
    REQUIRED_FIELDS,
    AuditEvent,
    InvalidEvent,
    Limits,
    event_from_mapping,
    format_rfc3339_ms,
    parse_timestamp_us,
)

T_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
T_US = T_MS * 1000
NOW_MS = T_MS + 3_600_000  # processing time: one hour after T
LIMITS = Limits()
_DROP = object()


def raw(**changes: Any) -> dict[str, Any]:
    """A valid decoded event at T; pass field=_DROP to remove a field."""
    d: dict[str, Any] = {
        "timestamp": "2026-01-01T00:00:00Z",
        "machine_id": "orders-api",
        "resource": "postgres://orders-db/public.orders",
        "operation": "SELECT",
        "outcome": "SUCCESS",
    }
    d.update(changes)
    return {k: v for k, v in d.items() if v is not _DROP}


def parse(d: Any, limits: Limits = LIMITS, now_ms: int = NOW_MS) -> AuditEvent:
    return event_from_mapping(d, limits, now_ms)


def rejected(d: Any, limits: Limits = LIMITS, now_ms: int = NOW_MS) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(d, limits, now_ms)
    return info.value


# --- timestamps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected_us"),
    [
        ("2026-01-01T00:00:00Z", T_US),
        ("2026-01-01T00:00:00z", T_US),
        ("2026-01-01t00:00:00Z", T_US),
        ("2026-01-01 00:00:00Z", T_US),
        ("2026-01-01T05:30:00+05:30", T_US),
        ("2026-01-01T05:30:00+0530", T_US),
        ("2025-12-31T16:00:00-08:00", T_US),
        ("2026-01-01T00:00:00+00:00", T_US),
        ("2026-01-01T00:00:00.5Z", T_US + 500_000),
        ("2026-01-01T00:00:00.123Z", T_US + 123_000),
        ("2026-01-01T00:00:00.123456Z", T_US + 123_456),
        ("2026-01-01T00:00:00.123456789Z", T_US + 123_456),  # nanoseconds truncated
        ("2026-01-01T01:00:00.000001+01:00", T_US + 1),
        (T_MS, T_US),
        (float(T_MS), T_US),
        (T_MS + 0.5, T_US + 500),
        (str(T_MS), T_US),
        (f" {T_MS} ", T_US),
    ],
)
def test_timestamp_accepted_forms(value: Any, expected_us: int) -> None:
    assert parse_timestamp_us(value) == expected_us
    assert parse(raw(timestamp=value)).ts_us == expected_us


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2026-01-01",
        "2026-01-01T00:00:00",  # no offset
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:00.Z",
        "-1767225600000",
        "NaN",
        True,
        False,
        math.nan,
        math.inf,
        -math.inf,
        [T_MS],
        {"ms": T_MS},
    ],
)
def test_bad_timestamp(value: Any) -> None:
    e = rejected(raw(timestamp=value))
    assert e.reason == "bad_timestamp"
    with pytest.raises(InvalidEvent) as info:
        parse_timestamp_us(value)
    assert info.value.reason == "bad_timestamp"


@pytest.mark.parametrize(
    "value",
    [
        "1999-12-31T23:59:59.999Z",
        946_684_799_999,  # one millisecond before 2000-01-01
        T_MS // 1000,  # epoch seconds sent as milliseconds
        0,
        -1,
        T_US,  # epoch microseconds sent as milliseconds: after 2300
    ],
)
def test_implausible_year_is_bad_timestamp(value: Any) -> None:
    assert rejected(raw(timestamp=value)).reason == "bad_timestamp"


def test_year_2000_boundary_accepted() -> None:
    ev = parse(raw(timestamp="2000-01-01T00:00:00Z"), now_ms=NOW_MS)
    assert ev.timestamp_ms == 946_684_800_000


def test_timestamp_in_future() -> None:
    limits = Limits(max_future_ms=60_000)
    assert parse(raw(timestamp=NOW_MS + 60_000), limits).timestamp_ms == NOW_MS + 60_000
    e = rejected(raw(timestamp=NOW_MS + 60_001), limits)
    assert e.reason == "timestamp_in_future"


def test_future_limit_uses_default_max_future() -> None:
    assert rejected(raw(timestamp=NOW_MS + LIMITS.max_future_ms + 1)).reason == (
        "timestamp_in_future"
    )


def test_non_ascii_digit_string_is_bad_timestamp() -> None:
    assert rejected(raw(timestamp=f"{T_MS}\u00b2")).reason == "bad_timestamp"


@pytest.mark.parametrize("offset", ["+99:99", "+05:75", "-24:00"])
def test_out_of_range_offset_is_bad_timestamp(offset: str) -> None:
    assert rejected(raw(timestamp=f"2026-01-01T00:00:00{offset}")).reason == "bad_timestamp"


# --- fields -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["success", "Success", "SUCCESS", "sUcCeSs"])
def test_outcome_any_case_is_canonical(value: str) -> None:
    assert parse(raw(outcome=value)).outcome == "SUCCESS"


@pytest.mark.parametrize(("value", "expected"), [("denied", "DENIED"), ("Failure", "FAILURE")])
def test_each_outcome_canonical(value: str, expected: str) -> None:
    assert parse(raw(outcome=value)).outcome == expected


@pytest.mark.parametrize("value", ["OK", "SUCCEEDED", " SUCCESS", 1, True, ["SUCCESS"]])
def test_bad_outcome_is_invalid_field(value: Any) -> None:
    e = rejected(raw(outcome=value))
    assert e.reason == "invalid_field"
    assert "outcome" in e.message


@pytest.mark.parametrize("name", REQUIRED_FIELDS)
@pytest.mark.parametrize("how", ["absent", "null"])
def test_missing_required_field(name: str, how: str) -> None:
    e = rejected(raw(**{name: _DROP if how == "absent" else None}))
    assert e.reason == "missing_field"
    assert repr(name) in e.message


@pytest.mark.parametrize("name", ["machine_id", "resource", "operation"])
def test_empty_required_string_is_missing(name: str) -> None:
    e = rejected(raw(**{name: ""}))
    assert e.reason == "missing_field"
    assert repr(name) in e.message


@pytest.mark.parametrize("name", ["machine_id", "resource", "operation"])
def test_non_string_required_field_is_invalid(name: str) -> None:
    e = rejected(raw(**{name: 42}))
    assert e.reason == "invalid_field"
    assert repr(name) in e.message


@pytest.mark.parametrize("name", ["source_ip", "identity_type", "source", "event_id"])
def test_non_string_optional_field_is_invalid(name: str) -> None:
    assert rejected(raw(**{name: 7})).reason == "invalid_field"


@pytest.mark.parametrize(
    "name", ["machine_id", "resource", "operation", "source_ip", "identity_type", "source"]
)
def test_oversize_string_field(name: str) -> None:
    limits = Limits(max_field_chars=64)
    assert getattr(parse(raw(**{name: "x" * 64}), limits), name) == "x" * 64
    e = rejected(raw(**{name: "x" * 65}), limits)
    assert e.reason == "oversize"
    assert repr(name) in e.message


def test_oversize_event_id() -> None:
    assert parse(raw(event_id="e" * 256)).event_id == "e" * 256
    assert rejected(raw(event_id="e" * 257)).reason == "oversize"


@pytest.mark.parametrize("value", [None, [1, 2], "text", 5])
def test_event_must_be_a_mapping(value: Any) -> None:
    assert rejected(value).reason == "invalid_field"


# --- attributes -------------------------------------------------------------------------


def test_attributes_kept() -> None:
    ev = parse(raw(attributes={"region": "eu-west-1", "pod": "api-0"}))
    assert dict(ev.attributes) == {"region": "eu-west-1", "pod": "api-0"}


def test_null_or_absent_attributes_are_empty() -> None:
    assert dict(parse(raw(attributes=None)).attributes) == {}
    assert dict(parse(raw()).attributes) == {}


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        (["a", "b"], "invalid_field"),
        ("a=b", "invalid_field"),
        ({"a": 1}, "invalid_field"),
        ({"a": None}, "invalid_field"),
        ({"a": {"nested": "x"}}, "invalid_field"),
    ],
)
def test_bad_attributes(attributes: Any, reason: str) -> None:
    assert rejected(raw(attributes=attributes)).reason == reason


def test_too_many_attributes() -> None:
    limits = Limits(max_attributes=3)
    three = {f"k{i}": "v" for i in range(3)}
    assert len(parse(raw(attributes=three), limits).attributes) == 3
    four = {f"k{i}": "v" for i in range(4)}
    assert rejected(raw(attributes=four), limits).reason == "oversize"


def test_oversize_attribute() -> None:
    limits = Limits(max_field_chars=64)  # key and value together
    assert parse(raw(attributes={"key": "v" * 61}), limits).attributes["key"] == "v" * 61
    assert rejected(raw(attributes={"key": "v" * 62}), limits).reason == "oversize"


# --- event_id ---------------------------------------------------------------------------


def test_given_event_id_is_kept() -> None:
    ev = parse(raw(event_id="producer-42"))
    assert ev.event_id == "producer-42"
    assert not ev.event_id_derived


def test_empty_event_id_is_derived() -> None:
    ev = parse(raw(event_id=""))
    assert ev.event_id.startswith("h-")
    assert ev.event_id_derived


def test_derived_event_id_is_deterministic() -> None:
    a, b = parse(raw()), parse(raw())
    assert a.event_id == b.event_id
    assert a.event_id.startswith("h-")
    assert a.event_id_derived


@pytest.mark.parametrize(
    "equivalent",
    [
        {"timestamp": T_MS},
        {"timestamp": str(T_MS)},
        {"timestamp": "2026-01-01T01:00:00+01:00"},
        {"timestamp": "2026-01-01T00:00:00.000Z"},
        {"outcome": "success"},
        {"attributes": {}},
        {"source_ip": None},
    ],
)
def test_derived_event_id_same_for_equivalent_forms(equivalent: dict[str, Any]) -> None:
    assert parse(raw(**equivalent)).event_id == parse(raw()).event_id


BASE_WITH_US = raw(
    timestamp="2026-01-01T00:00:00.123456Z",
    source_ip="10.0.0.1",
    identity_type="pod",
    source="k8s-audit",
    attributes={"a": "1"},
)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timestamp", "2026-01-01T00:00:00.123457Z"),  # one microsecond later
        ("timestamp", "2026-01-01T00:00:01.123456Z"),
        ("machine_id", "billing-api"),
        ("resource", "postgres://orders-db/public.refunds"),
        ("operation", "UPDATE"),
        ("outcome", "DENIED"),
        ("source_ip", "10.0.0.2"),
        ("source_ip", None),
        ("identity_type", "iam-role"),
        ("source", "cloudtrail"),
        ("attributes", {"a": "2"}),
        ("attributes", {"a": "1", "b": "1"}),
        ("attributes", {}),
    ],
)
def test_derived_event_id_differs_when_any_field_differs(name: str, value: Any) -> None:
    base = parse(BASE_WITH_US)
    other = parse({**BASE_WITH_US, name: value})
    assert other.event_id != base.event_id


# --- content digest ---------------------------------------------------------------------


def test_content_digest_same_for_avro_and_json_forms() -> None:
    ev = parse(raw(timestamp="2026-01-01T00:00:00.123Z", attributes={"a": "b"}, source="x"))
    from_avro = parse(ev.to_avro())
    from_json = parse(ev.to_json())
    assert isinstance(from_avro.to_avro()["timestamp"], int)
    assert isinstance(from_json.to_json()["timestamp"], str)
    assert from_avro.content_digest() == from_json.content_digest() == ev.content_digest()
    assert len(ev.content_digest()) == 16


def test_content_digest_ignores_event_id_and_sub_millisecond_precision() -> None:
    a = parse(raw(timestamp="2026-01-01T00:00:00.123456Z", event_id="one"))
    b = parse(raw(timestamp="2026-01-01T00:00:00.123999Z", event_id="two"))
    assert a.content_digest() == b.content_digest()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timestamp", "2026-01-01T00:00:00.124Z"),
        ("resource", "postgres://orders-db/public.refunds"),
        ("outcome", "FAILURE"),
        ("source", "cloudtrail"),
        ("attributes", {"a": "c"}),
    ],
)
def test_content_digest_differs_when_content_differs(name: str, value: Any) -> None:
    base = raw(timestamp="2026-01-01T00:00:00.123Z", attributes={"a": "b"}, event_id="same")
    assert parse(base).content_digest() != parse({**base, name: value}).content_digest()


# --- forms ------------------------------------------------------------------------------


def test_to_avro_form() -> None:
    ev = parse(
        raw(
            timestamp="2026-01-01T00:00:00.123456Z",
            event_id="e-1",
            source_ip="10.0.0.1",
            attributes={"k": "v"},
        )
    )
    assert ev.to_avro() == {
        "event_id": "e-1",
        "timestamp": T_MS + 123,
        "machine_id": "orders-api",
        "resource": "postgres://orders-db/public.orders",
        "operation": "SELECT",
        "outcome": "SUCCESS",
        "source_ip": "10.0.0.1",
        "identity_type": None,
        "source": None,
        "attributes": {"k": "v"},
    }


def test_to_json_form_has_rfc3339_milliseconds() -> None:
    ev = parse(raw(timestamp="2026-01-01T00:00:00.123456Z", event_id="e-1"))
    out = ev.to_json()
    assert out["timestamp"] == "2026-01-01T00:00:00.123Z"
    assert {k: v for k, v in out.items() if k != "timestamp"} == {
        k: v for k, v in ev.to_avro().items() if k != "timestamp"
    }


@pytest.mark.parametrize("ms", [T_MS, T_MS + 999, T_MS + 1, 946_684_800_000])
def test_json_form_round_trips(ms: int) -> None:
    ev = parse(raw(timestamp=ms, event_id="e-1", attributes={"k": "v"}))
    assert parse(ev.to_json()) == ev
    assert parse(ev.to_avro()) == ev


def test_time_is_utc_aware() -> None:
    ev = parse(raw(timestamp="2026-01-01T05:30:00.250+05:30"))
    assert ev.time == datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)
    assert ev.timestamp_ms == T_MS + 250


@pytest.mark.parametrize(
    "ms",
    [
        0,
        999,
        1000,
        -1,  # 1969-12-31T23:59:59.999Z
        -1001,
        1_767_571_200_244,
        1_767_571_200_999,
        1_767_571_201_000,
        253_402_300_799_999,  # the last millisecond of year 9999
    ],
)
def test_rfc3339_form_of_epoch_milliseconds(ms: int) -> None:
    want = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert format_rfc3339_ms(ms) == want.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # Twice: the second comes from the cache of whole seconds.
    assert format_rfc3339_ms(ms) == format_rfc3339_ms(ms)
