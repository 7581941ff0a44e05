"""Hostile identities (issue 18, point 3).

A control character in an identity field is an `invalid_field` dead letter, whether the event
came as JSON or Avro. An identity that renders like a known one (a Cyrillic a, a Greek omicron,
fullwidth letters, a zero-width space, a right-to-left override) pages as `new_identity`,
high, naming the identity it imitates, even before the deployment is past its warm-up; a new
replica of a known group, or a non-ASCII name that imitates nothing, does not. The last test
runs both through a worker and the real broker.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from detectors.config import DetectorConfig
from detectors.core import DetectionCore
from detectors.peers import PeerGroup
from schemas.alert import Alert
from schemas.codec import (
    BundledSchemas,
    RejectedInput,
    decode_event,
    decode_wire,
    encode_event_avro,
)
from schemas.event import AuditEvent, Limits
from streams.processor import MemoryStore
from tests.conftest import Stack, wait_until
from tests.test_processor import event as record

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
# Known before the imitations arrive: a pod of a deployment, a numbered replica, and a
# machine that is its own group.
POD = "payments-api-7d9f8b6c4-x2k9p"
KNOWN = (POD, "orders-api-1", "billing-api")


def _mapping(**fields: Any) -> dict[str, Any]:
    return record(**{"event_id": "ev-1", "timestamp": T0, "machine_id": "payments-api", **fields})


def _decode(value: bytes) -> AuditEvent:
    return decode_event(
        value, fmt="auto", resolver=BundledSchemas(), limits=Limits(), now_ms=T0
    ).event


CONTROL = [
    ("machine_id", "payments\x00api", "machine_id contains control character U+0000 at position 8"),
    (
        "machine_id",
        "\x1bpayments-api",
        "machine_id contains control character U+001B at position 0",
    ),
    ("machine_id", "payments-api\n", "machine_id contains control character U+000A at position 12"),
    ("machine_id", "pay\x85ments", "machine_id contains control character U+0085 at position 3"),
    ("machine_id", "pay\u2028ments", "machine_id contains line separator U+2028 at position 3"),
    ("event_id", "ev\x1f-1", "event_id contains control character U+001F at position 2"),
    ("source", "syslog\r", "source contains control character U+000D at position 6"),
    ("identity_type", "p\x7fod", "identity_type contains control character U+007F at position 1"),
]


@pytest.mark.parametrize("wire", ["json", "avro"])
@pytest.mark.parametrize(("name", "value", "message"), CONTROL)
def test_control_characters_in_identity_fields_are_invalid(
    wire: str, name: str, value: str, message: str
) -> None:
    event = _mapping(**{name: value})
    raw = orjson.dumps(event) if wire == "json" else encode_event_avro(event)
    with pytest.raises(RejectedInput) as e:
        _decode(raw)
    assert (e.value.reason, e.value.stage, e.value.message) == (
        "invalid_field",
        "validate",
        message,
    )


@pytest.mark.parametrize("wire", ["json", "avro"])
def test_invisible_characters_are_left_to_the_detector(wire: str) -> None:
    """Format characters are not dead letters: the new_identity detector names whom they
    imitate (a dead letter would hide the attempt among malformed input)."""
    for machine in ("payments\u200b-api", "\u202eipa-stnemyap", "p\u0430yments-api"):
        event = _mapping(machine_id=machine)
        raw = orjson.dumps(event) if wire == "json" else encode_event_avro(event)
        assert _decode(raw).machine_id == machine


def _event(n: int, ts: int, machine: str, **attributes: str) -> AuditEvent:
    return AuditEvent(
        event_id=f"e-{n}",
        ts_us=ts * 1000,
        machine_id=machine,
        resource="postgres://payments/public.ledger",
        operation="SELECT",
        outcome="SUCCESS",
        attributes=attributes,
    )


class Fleet:
    """One store, known identities at T0; the deployment is minutes old (warm-up: 1 h)."""

    def __init__(self, config: DetectorConfig | None = None, **attributes: str) -> None:
        self.core = DetectionCore(config or DetectorConfig())
        self.kv = MemoryStore()
        self.n = 0
        for machine in KNOWN:
            for i in range(3):
                assert not self.send(machine, T0 + i * 1000, **attributes)

    def send(self, machine: str, ts: int, **attributes: str) -> list[Alert]:
        self.n += 1
        return self.core.observe(_event(self.n, ts, machine, **attributes), self.kv, 0)


def _identity_pages(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.detector == "new_identity"]


IMITATIONS = [
    # (new id, the identity it imitates, the known group, the character named)
    (
        "p\u0430yments-api-7d9f8b6c4-x2k9p",
        POD,
        "payments-api",
        "U+0430 CYRILLIC SMALL LETTER A at position 1",
    ),
    (
        "payments\u200b-api-7d9f8b6c4-x2k9p",
        POD,
        "payments-api",
        "U+200B ZERO WIDTH SPACE at position 8",
    ),
    (
        "payments-api-7d9f8b6c4-\u202ep9k2x",
        POD,
        "payments-api",
        "U+202E RIGHT-TO-LEFT OVERRIDE at position 23",
    ),
    (
        "\u03bfrders-api-3",
        "orders-api-3",
        "orders-api",
        "U+03BF GREEK SMALL LETTER OMICRON at position 0",
    ),
    (
        "\uff42\uff49\uff4c\uff4c\uff49\uff4e\uff47-api",
        "billing-api",
        "billing-api",
        "U+FF42 FULLWIDTH LATIN SMALL LETTER B at position 0",
    ),
]


@pytest.mark.parametrize(("machine", "imitated", "group", "character"), IMITATIONS)
def test_an_imitation_of_a_known_identity_pages_naming_it_during_warm_up(
    machine: str, imitated: str, group: str, character: str
) -> None:
    fleet = Fleet()
    pages = _identity_pages(fleet.send(machine, T0 + 5 * MIN))
    assert len(pages) == 1
    page = pages[0]
    assert (page.status, page.severity, page.machine_id) == ("opened", "high", machine)
    assert page.observed["imitates"] == imitated
    assert (page.expected["known_identity"], page.expected["known_group"]) == (imitated, group)
    assert f"imitates the known identity {imitated}" in page.summary
    assert character in page.summary
    # The summary shows the hidden characters rather than rendering them.
    assert page.summary.isascii()
    # Judged once, on first sight: its next events are not new.
    assert not _identity_pages(fleet.send(machine, T0 + 6 * MIN))


def test_an_imitation_does_not_join_the_group_it_claims() -> None:
    """With the group named by an attribute, the imitation claims the real group: it pages,
    and the group does not count it as a member."""
    config = DetectorConfig(group_attribute="app")
    fleet = Fleet(config, app="payments")
    members = PeerGroup(fleet.kv, "payments").members
    pages = _identity_pages(fleet.send("p\u0430yments-api-1", T0 + 5 * MIN, app="payments"))
    assert [p.observed["imitates"] for p in pages] == ["payments-api-1"]
    assert PeerGroup(fleet.kv, "payments").members == members


def test_a_group_name_imitating_a_known_group_pages() -> None:
    fleet = Fleet(DetectorConfig(group_attribute="app"), app="payments")
    pages = _identity_pages(fleet.send("payments-api-9", T0 + 5 * MIN, app="p\u0430yments"))
    assert [(p.severity, p.observed["imitates"]) for p in pages] == [("high", "payments")]
    assert pages[0].summary.startswith(
        "payments-api-9, whose peer group p<U+0430>yments imitates the known identity payments:"
    )


def test_a_new_member_of_a_known_non_latin_group_does_not_page() -> None:
    """Its ASCII-looking respellings (Cyrillic c, e, p as Latin) are nobody's identity."""
    cyrillic = "\u0441\u0435\u0440\u0432\u0438\u0441"
    fleet = Fleet(DetectorConfig(group_attribute="app"), app=cyrillic)
    assert not _identity_pages(fleet.send(cyrillic + "-2", T0 + 5 * MIN, app=cyrillic))


def test_mixed_scripts_and_invisible_characters_page_without_a_known_twin() -> None:
    fleet = Fleet()
    mixed = _identity_pages(fleet.send("p\u0430yroll-svc", T0 + 5 * MIN))
    assert [(p.severity, "mixes Cyrillic and Latin" in p.summary) for p in mixed] == [
        ("high", True)
    ]
    hidden = _identity_pages(fleet.send("reports\u2060-svc", T0 + 5 * MIN))
    assert [p.severity for p in hidden] == ["high"]
    assert "invisible U+2060 WORD JOINER at position 7" in hidden[0].summary


@pytest.mark.parametrize(
    "machine",
    [
        "payments-api-5c8d7f9b6-q7w2z",  # a new replica of a known deployment
        "orders-api-9",  # a new numbered replica
        "caf\u00e9-api",  # not ASCII, imitating nothing
        "\u0441\u0435\u0440\u0432\u0438\u0441-1",  # Cyrillic only, imitating nothing
        "k8s-\u65e5\u672c-1",  # Latin with CJK
    ],
)
def test_benign_new_identities_do_not_page(machine: str) -> None:
    fleet = Fleet()
    assert not _identity_pages(fleet.send(machine, T0 + 5 * MIN))
    # Nor after the warm-up, when their group is known (a stranger's page is the ordinary one).
    later = _identity_pages(fleet.send(machine + "x", T0 + 3 * 60 * MIN))
    assert all(a.observed.get("imitates") is None and a.score <= 60 for a in later)


@pytest.mark.kafka
def test_through_the_broker_nul_is_dead_lettered_and_an_imitation_pages(stack: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    s.start_worker()
    now = int(time.time() * 1000)
    genuine = [
        {**_mapping(event_id=f"g-{i}", machine_id=POD), "timestamp": now - 60_000 + i}
        for i in range(3)
    ]
    s.send(genuine)
    # The group is known once its events are archived (the worker learns, then commits).
    wait_until(lambda: len(s.read("archive")) >= 3, what="the genuine events archived")
    nul = orjson.dumps(_mapping(event_id="nul-1", machine_id="payments\x00api", timestamp=now))
    producer = Producer({**s.cfg.kafka.client_config(), "linger.ms": 5})
    producer.produce(s.cfg.topics.events, key=b"payments-api", value=nul)
    assert producer.flush(30) == 0
    imitation = "p\u0430yments-api-7d9f8b6c4-x2k9p"
    s.send([{**_mapping(event_id="fake-1", machine_id=imitation), "timestamp": now}])

    dead = wait_until(
        lambda: [decode_wire(m.value(), "dead_letter") for m in s.read("deadletter")],
        what="the NUL event dead-lettered",
    )
    assert [(d["reason"], d["message"], d["value"]) for d in dead] == [
        ("invalid_field", "machine_id contains control character U+0000 at position 8", nul)
    ]
    pages = wait_until(
        lambda: [
            a
            for m in s.read("alerts")
            if (a := orjson.loads(m.value()))["detector"] == "new_identity"
        ],
        what="the imitation paged",
    )
    assert [(p["machine_id"], p["severity"], p["observed"]["imitates"]) for p in pages] == [
        (imitation, "high", POD)
    ]
    assert "U+0430 CYRILLIC SMALL LETTER A at position 1" in pages[0]["summary"]
