"""Producer authenticity without Kafka: the canonical encoding and its test vectors, sign and
verify with HMAC-SHA256 and Ed25519, the schema fields, the config's keys, and the processor
archiving and paging what does not verify."""

from __future__ import annotations

import base64
import copy
import io
import struct
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.codec import (
    BundledSchemas,
    RejectedInput,
    decode_event,
    decode_wire,
    encode_event_avro,
)
from schemas.event import AuditEvent, Limits, event_from_mapping
from schemas.registry import schema_json, strip_logical_types
from schemas.signing import (
    Key,
    Keyring,
    Verdict,
    canonical_bytes,
    sign,
    sign_record,
    signing_key_from_bytes,
    verify,
)
from streams.ops.config import ConfigError, load_config
from streams.processor import MemoryStore, Origin, Output, Processor

NOW_MS = 1_796_000_000_000  # 2026-11-29
ORIGIN = Origin("audit.events", 0, 7)

# --- Test vectors: a client in another language checks itself against these ---------------
VECTOR_EVENT: dict[str, Any] = {
    "event_id": "req-7f3a",
    "timestamp": "2026-11-28T10:15:00.123Z",
    "machine_id": "payments-api",
    "resource": "postgres://billing/public.invoices",
    "operation": "SELECT",
    "outcome": "success",  # signed as SUCCESS
    "source_ip": None,
    "identity_type": "pod",
    "attributes": {"zone": "eu-west-1a", "b": "é"},  # signed sorted by key: b, zone
}
VECTOR_HMAC_SECRET = b"auditwatch test secret"
VECTOR_HMAC_KEY_ID = "k1"
VECTOR_HMAC_SIGNATURE = "unWRyOGhNVnsILCPrTCzfj+3i2wLS0JGlNHqG+9VoVE="
VECTOR_ED25519_SEED = bytes(range(32))  # the private key's 32 bytes
VECTOR_ED25519_PUBLIC = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
VECTOR_ED25519_KEY_ID = "e1"
VECTOR_ED25519_SIGNATURE = (
    "luxE1NS4qjQ8fqSPgS2JDtP+enfBa+ZLL4ooNR8LsXVJNU/knOpYeRLsX8btutDnhyYP8Nk3BbeKBj7VcB2pCA=="
)
# The canonical bytes for key id "k1" (for "e1" the key id's length and text differ).
VECTOR_CANONICAL_K1 = bytes.fromhex(
    "617564697477617463682d6576656e742d7631"  # auditwatch-event-v1
    "00"  # the domain tag's NUL
    "00000002"
    "6b31"  # key_id "k1"
    "01"
    "00000008"
    "7265712d37663361"  # event_id "req-7f3a"
    "0006615373049178"  # 2026-11-28T10:15:00.123Z in epoch microseconds
    "0000000c"
    "7061796d656e74732d617069"  # machine_id
    "00000022"
    "706f7374677265733a2f2f62696c6c696e672f7075626c69632e696e766f69636573"
    "00000006"
    "53454c454354"  # operation SELECT
    "00000007"
    "53554343455353"  # outcome SUCCESS
    "00"  # source_ip null
    "01"
    "00000003"
    "706f64"  # identity_type "pod"
    "00"  # source absent
    "00000002"  # two attributes
    "00000001"
    "62"
    "00000002"
    "c3a9"  # b = é
    "00000004"
    "7a6f6e65"
    "0000000a"
    "65752d776573742d3161"  # zone = eu-west-1a
)


def hmac_key(key_id: str = VECTOR_HMAC_KEY_ID, secret: bytes = VECTOR_HMAC_SECRET) -> Key:
    return Key(key_id, "hmac-sha256", secret=secret)


def ed_key(key_id: str = VECTOR_ED25519_KEY_ID) -> Key:
    return Key(key_id, "ed25519", private=Ed25519PrivateKey.from_private_bytes(VECTOR_ED25519_SEED))


def ed_public(key_id: str = VECTOR_ED25519_KEY_ID) -> Key:
    private = Ed25519PrivateKey.from_private_bytes(VECTOR_ED25519_SEED)
    return Key(key_id, "ed25519", public=private.public_key())


def validated(record: dict[str, Any]) -> AuditEvent:
    return event_from_mapping(record, Limits(), NOW_MS)


def test_vector_canonical_bytes() -> None:
    ev = validated({**VECTOR_EVENT, "key_id": "k1"})
    assert canonical_bytes(ev, "k1") == VECTOR_CANONICAL_K1


def test_vector_hmac_sha256() -> None:
    signed = sign_record(VECTOR_EVENT, hmac_key())
    assert signed["key_id"] == VECTOR_HMAC_KEY_ID
    assert signed["signature"] == VECTOR_HMAC_SIGNATURE
    ring = Keyring({"payments-api": [hmac_key()]})
    assert verify(validated(signed), ring) is Verdict.VERIFIED


def test_vector_ed25519() -> None:
    signed = sign_record(VECTOR_EVENT, ed_key())
    assert signed["signature"] == VECTOR_ED25519_SIGNATURE
    private = Ed25519PrivateKey.from_private_bytes(VECTOR_ED25519_SEED)
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert base64.b64encode(raw_public).decode() == VECTOR_ED25519_PUBLIC
    # The verifier holds the public key only.
    ring = Keyring({"payments-api": [ed_public()]})
    assert verify(validated(signed), ring) is Verdict.VERIFIED


@pytest.mark.parametrize("key", [hmac_key(), ed_key()], ids=["hmac", "ed25519"])
def test_avro_and_json_forms_of_one_signed_event_both_verify(key: Key) -> None:
    signed = sign_record({**VECTOR_EVENT, "event_id": None}, key)
    ring = Keyring({"payments-api": [key]})
    as_json = orjson.dumps(signed)
    avro = {**signed, "timestamp": 1_795_860_900_123, "outcome": "SUCCESS", "source": None}
    for value in (as_json, encode_event_avro(avro)):
        ev = decode_event(
            value, fmt="auto", resolver=BundledSchemas(), limits=Limits(), now_ms=NOW_MS
        ).event
        assert ev.event_id_derived
        assert (ev.key_id, ev.signature) == (key.key_id, signed["signature"])
        assert verify(ev, ring) is Verdict.VERIFIED


@pytest.mark.parametrize(
    "change",
    [
        {"resource": "postgres://billing/public.cards"},
        {"operation": "DELETE"},
        {"outcome": "DENIED"},
        {"machine_id": "payments-api"},  # unchanged: the control case, verified
        {"timestamp": "2026-11-28T10:15:00.123001Z"},  # a microsecond later
        {"attributes": {"zone": "eu-west-1a", "b": "é", "extra": "x"}},
        {"source_ip": ""},  # null and "" differ
        {"event_id": "req-7f3b"},
        {"key_id": "k2"},  # another key id of the same machine
    ],
)
def test_any_changed_field_fails_verification(change: dict[str, Any]) -> None:
    ring = Keyring({"payments-api": [hmac_key("k1"), hmac_key("k2", b"second secret")]})
    signed = sign_record(VECTOR_EVENT, hmac_key("k1"))
    verdict = verify(validated({**signed, **change}), ring)
    control = change == {"machine_id": "payments-api"}
    assert verdict is (Verdict.VERIFIED if control else Verdict.BAD_SIGNATURE)


def test_verdicts_of_a_signing_machine_and_none_for_the_others() -> None:
    ring = Keyring({"payments-api": [hmac_key()], "billing-*": [hmac_key("b1", b"b")]})
    signed = sign_record(VECTOR_EVENT, hmac_key())
    assert verify(validated({**signed, "signature": None}), ring) is Verdict.MISSING
    assert verify(validated({**signed, "key_id": None}), ring) is Verdict.MISSING
    assert verify(validated({**signed, "key_id": "k9"}), ring) is Verdict.UNKNOWN_KEY_ID
    assert verify(validated({**signed, "signature": "not base64!"}), ring) is (
        Verdict.BAD_SIGNATURE
    )
    assert verify(validated({**signed, "signature": "AAAA"}), ring) is Verdict.BAD_SIGNATURE
    # A machine with no key is not checked, signed or not; a glob names machines too.
    assert verify(validated({**signed, "machine_id": "orders-api"}), ring) is None
    unsigned_pod = validated({**VECTOR_EVENT, "machine_id": "billing-7d9f"})
    assert verify(unsigned_pod, ring) is Verdict.MISSING


def test_a_key_of_another_machine_does_not_verify() -> None:
    """Each machine's own keys: one machine's key id cannot sign for another."""
    ring = Keyring({"payments-api": [hmac_key("k1")], "orders-api": [hmac_key("o1", b"o")]})
    forged = sign_record({**VECTOR_EVENT, "machine_id": "payments-api"}, hmac_key("o1", b"o"))
    assert verify(validated(forged), ring) is Verdict.UNKNOWN_KEY_ID


def test_rotation_old_and_new_key_both_verify_until_the_old_one_is_removed() -> None:
    old, new = hmac_key("2026-10"), ed_key("2026-11")
    during = Keyring({"payments-api": [old, ed_public("2026-11")]})
    after = Keyring({"payments-api": [ed_public("2026-11")]})
    by_old = validated(sign_record(VECTOR_EVENT, old))
    by_new = validated(sign_record(VECTOR_EVENT, new))
    assert verify(by_old, during) is verify(by_new, during) is Verdict.VERIFIED
    assert verify(by_old, after) is Verdict.UNKNOWN_KEY_ID
    assert verify(by_new, after) is Verdict.VERIFIED


def test_a_public_key_cannot_sign() -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        sign(validated(VECTOR_EVENT), ed_public())


def test_signed_events_keep_their_fields_and_unsigned_ones_their_old_ids() -> None:
    """key_id and signature are part of a signed event's identity (a forged copy of its id
    is a conflict, not a re-send), and unsigned events keep the ids and digests they had."""
    unsigned = validated({**VECTOR_EVENT, "event_id": None})
    # As computed before events could be signed (the dedupe index holds these).
    assert unsigned.event_id == "h-0b6a21abb0f7ba112d30a03566f2de4d"
    assert unsigned.content_digest().hex() == "0b6a21abb0f7ba112d30a03566f2de4d"
    signed = validated(sign_record({**VECTOR_EVENT, "event_id": None}, hmac_key()))
    forged = validated({**signed.to_avro(), "event_id": None, "signature": "AAAA"})
    assert len({unsigned.event_id, signed.event_id, forged.event_id}) == 3
    assert signed.to_avro()["key_id"] == "k1" and signed.to_avro()["signature"]
    assert "signature" not in unsigned.to_avro()


# --- Schemas: the new fields, old layouts still read --------------------------------------


def _v1_schema(name: str) -> Any:
    path = Path(__file__).resolve().parent.parent / "schemas" / "history" / f"{name}.v1.avsc"
    return orjson.loads(path.read_bytes())


def test_events_of_the_earlier_layout_still_decode_under_id_1001() -> None:
    v1 = fastavro.parse_schema(strip_logical_types(_v1_schema("audit_event")), named_schemas={})
    record = {**VECTOR_EVENT, "timestamp": 1_795_860_900_123, "outcome": "SUCCESS", "source": None}
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", 1001))
    fastavro.schemaless_writer(buf, v1, record)
    old = buf.getvalue()
    current = encode_event_avro({**record, "key_id": "k1", "signature": "c2ln"})
    # Mixed producers, in any order (the layout read last is tried first).
    for value, signed in ((old, None), (current, "c2ln"), (current, "c2ln"), (old, None)):
        ev = decode_event(
            value, fmt="avro", resolver=BundledSchemas(), limits=Limits(), now_ms=NOW_MS
        ).event
        assert (ev.machine_id, ev.signature) == ("payments-api", signed)
    # Neither layout: the current one's complaint.
    with pytest.raises(RejectedInput, match="trailing bytes"):
        decode_event(
            current + b"\x00", fmt="avro", resolver=BundledSchemas(), limits=Limits(), now_ms=0
        )


def test_archive_records_of_the_earlier_layout_still_read() -> None:
    named: dict[str, Any] = {}
    fastavro.parse_schema(strip_logical_types(_v1_schema("audit_event")), named_schemas=named)
    v1 = fastavro.parse_schema(
        strip_logical_types(_v1_schema("archive_record")), named_schemas=named
    )
    event = {**VECTOR_EVENT, "timestamp": 1_795_860_900_123, "outcome": "SUCCESS", "source": None}
    old = {
        "event": event,
        "event_id_derived": False,
        "original_format": "JSON",
        "original_sha256": bytes(32),
        "original_topic": "audit.events",
        "original_partition": 1,
        "original_offset": 2,
        "archived_at": NOW_MS,
    }
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", 1002))
    fastavro.schemaless_writer(buf, v1, old)
    record = decode_wire(buf.getvalue(), "archive_record")
    assert record["verification"] is None
    assert record["event"]["key_id"] is None
    assert record["original_offset"] == 2


def test_the_new_fields_are_an_avro_backward_compatible_evolution() -> None:
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
    from avro.schema import parse

    def expanded(event: dict[str, Any], archive: dict[str, Any]) -> Any:
        archive = copy.deepcopy(archive)
        archive["fields"][0]["type"] = event
        return parse(orjson.dumps(archive).decode())

    old_event, new_event = _v1_schema("audit_event"), schema_json("audit_event")
    checker = ReaderWriterCompatibilityChecker()
    for reader, writer in (
        (parse(orjson.dumps(new_event).decode()), parse(orjson.dumps(old_event).decode())),
        (
            expanded(new_event, schema_json("archive_record")),
            expanded(old_event, _v1_schema("archive_record")),
        ),
    ):
        result = checker.get_compatibility(reader, writer)
        assert result.compatibility is SchemaCompatibilityType.compatible, result.messages


# --- Keys from files ---------------------------------------------------------------------


def test_producer_key_files_hmac_and_ed25519(tmp_path: Path) -> None:
    secret = tmp_path / "k1.secret"
    secret.write_bytes(VECTOR_HMAC_SECRET + b"\n")
    key = signing_key_from_bytes(secret.read_bytes(), "k1")
    assert key.algorithm == "hmac-sha256"
    assert sign_record(VECTOR_EVENT, key)["signature"] == VECTOR_HMAC_SIGNATURE
    pem = Ed25519PrivateKey.from_private_bytes(VECTOR_ED25519_SEED).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = signing_key_from_bytes(pem, "e1")
    assert key.algorithm == "ed25519"
    assert sign_record(VECTOR_EVENT, key)["signature"] == VECTOR_ED25519_SIGNATURE
    assert "auditwatch test secret" not in repr(hmac_key())


def signing_config(tmp_path: Path, keys: str) -> Path:
    path = tmp_path / "signing.yaml"
    path.write_text("signing:\n  keys:\n" + keys)
    return path


def _ed_public_pem(tmp_path: Path) -> Path:
    pem = tmp_path / "e1.pub"
    pem.write_bytes(
        Ed25519PrivateKey.from_private_bytes(VECTOR_ED25519_SEED)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pem


def test_config_keys_from_a_file_an_env_variable_and_a_public_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "k1.secret"
    secret.write_bytes(VECTOR_HMAC_SECRET + b"\n")
    monkeypatch.setenv("PAYMENTS_K0", "old secret")
    path = signing_config(
        tmp_path,
        f"    payments-api:\n"
        f"      - {{key_id: k1, algorithm: hmac-sha256, secret_file: {secret}}}\n"
        f"      - {{key_id: k0, algorithm: hmac-sha256, secret_env: PAYMENTS_K0}}\n"
        f"      - {{key_id: e1, algorithm: ed25519, public_key_file: {_ed_public_pem(tmp_path)}}}\n"
        f"    billing-*: {{key_id: b1, algorithm: hmac-sha256, secret_env: PAYMENTS_K0}}\n",
    )
    cfg = load_config(path)
    ring = cfg.signing.keyring()
    assert ring is not None
    for key in (hmac_key("k1"), hmac_key("k0", b"old secret"), ed_key("e1")):
        assert verify(validated(sign_record(VECTOR_EVENT, key)), ring) is Verdict.VERIFIED
    shown = orjson.dumps(cfg.masked()).decode()
    assert "old secret" not in shown and "auditwatch test secret" not in shown
    assert load_config(None).signing.keyring() is None


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        (
            "    m: {key_id: k1, algorithm: hmac-sha256, secret_file: /nonexistent/k1}\n",
            "cannot read",
        ),
        ("    m: {key_id: k1, algorithm: hmac-sha256, secret_env: AW_TEST_UNSET_VAR}\n", "unset"),
        (
            "    m: {key_id: k1, algorithm: ed25519, secret_env: AW_TEST_UNSET_VAR}\n",
            "public_key_file",
        ),
        ("    m: {key_id: k1, algorithm: rsa, secret_env: X}\n", "algorithm"),
        (
            "    m:\n      - {key_id: k1, algorithm: hmac-sha256, secret_env: HOME}\n"
            "      - {key_id: k1, algorithm: hmac-sha256, secret_env: HOME}\n",
            "distinct",
        ),
    ],
)
def test_bad_signing_config_is_refused_naming_it(tmp_path: Path, keys: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        load_config(signing_config(tmp_path, keys))
    assert "signing" in str(info.value)


# --- The processor: archived verified / unverified, paged once ----------------------------


def keyed_processor(tmp_path: Path) -> Processor:
    secret = tmp_path / "k1.secret"
    secret.write_bytes(VECTOR_HMAC_SECRET)
    cfg = load_config(
        signing_config(
            tmp_path,
            f"    payments-api: {{key_id: k1, algorithm: hmac-sha256, secret_file: {secret}}}\n",
        )
    )
    return Processor(cfg, BundledSchemas(), clock=lambda: NOW_MS)


def _event(i: int, machine: str = "payments-api", ts_ms: int | None = None) -> dict[str, Any]:
    return {
        "event_id": f"e-{i}",
        "timestamp": ts_ms if ts_ms is not None else NOW_MS - 3_600_000 + i * 1000,
        "machine_id": machine,
        "resource": "postgres://billing/public.invoices",
        "operation": "SELECT",
        "outcome": "SUCCESS",
    }


def _verification(outputs: list[Output]) -> list[Any]:
    return [
        decode_wire(o.value, "archive_record")["verification"]
        for o in outputs
        if o.kind == "archive"
    ]


def _pages(outputs: list[Output]) -> list[Any]:
    return [o.alert for o in outputs if o.kind == "alert" and o.alert and o.alert.is_page]


def test_processor_archives_signed_as_verified_and_forged_as_unverified_paging_once(
    tmp_path: Path,
) -> None:
    processor = keyed_processor(tmp_path)
    store = MemoryStore()
    out: list[Output] = []
    for i in range(5):
        signed = sign_record(_event(i), hmac_key())
        value = (
            orjson.dumps(signed)
            if i % 2
            else encode_event_avro(
                {
                    **signed,
                    "source_ip": None,
                    "identity_type": None,
                    "source": None,
                    "attributes": {},
                }
            )
        )
        out += processor.handle(value, b"payments-api", ORIGIN, store)
    assert _verification(out) == ["VERIFIED"] * 5
    assert _pages(out) == []
    # A flood of forged events claiming times hours apart: each archived, one page.
    forged: list[Output] = []
    for i in range(200):
        ev = {**_event(100 + i, ts_ms=NOW_MS - 50 * 3_600_000 + i * 900_000), "key_id": "k1"}
        if i % 3 == 0:
            ev["signature"] = base64.b64encode(bytes(32)).decode()
        elif i % 3 == 1:
            ev["key_id"] = "stolen"
            ev["signature"] = base64.b64encode(bytes(32)).decode()
        forged += processor.handle(orjson.dumps(ev), b"payments-api", ORIGIN, store)
    assert _verification(forged) == ["UNVERIFIED"] * 200
    pages = _pages(forged)
    assert len(pages) == 1
    page = pages[0]
    assert (page.detector, page.severity, page.machine_id) == (
        "spoofed_identity",
        "high",
        "payments-api",
    )
    assert page.observed["reason"] == "bad_signature" and page.observed["key_id"] == "k1"
    assert "spoofed" in page.summary and page.hint
    assert processor.metrics["signatures.verified"] == 5
    assert processor.metrics["signatures.bad_signature"] == 67
    assert processor.metrics["signatures.unknown_key_id"] == 67
    assert processor.metrics["signatures.missing"] == 66


def test_forged_events_teach_nothing_and_unkeyed_machines_are_unaffected(tmp_path: Path) -> None:
    processor = keyed_processor(tmp_path)
    store = MemoryStore()
    genuine = sign_record(_event(1), hmac_key())
    processor.handle(orjson.dumps(genuine), None, ORIGIN, store)
    before = store.machines["payments-api"]
    forged = {**_event(2), "resource": "secrets://prod/root", "key_id": "k1"}
    out = processor.handle(orjson.dumps(forged), None, ORIGIN, store)
    assert _verification(out) == ["UNVERIFIED"]
    assert [p.observed["reason"] for p in _pages(out)] == ["missing"]
    from detectors.state import _decode_state

    after = _decode_state(store.machines["payments-api"])
    assert after.n == _decode_state(before).n == 1
    assert after.last_ms == _decode_state(before).last_ms
    # Another machine, unsigned or signed, is not checked: archived with no verdict.
    for value in (_event(3, "orders-api"), sign_record(_event(4, "orders-api"), hmac_key())):
        out = processor.handle(orjson.dumps(value), None, ORIGIN, store)
        assert _verification(out) == [None]
        assert _pages(out) == []


def test_without_keys_nothing_is_checked() -> None:
    processor = Processor(load_config(None), BundledSchemas(), clock=lambda: NOW_MS)
    assert processor.keyring is None
    out = processor.handle(orjson.dumps(_event(1)), None, ORIGIN, MemoryStore())
    assert _verification(out) == [None]
    assert not any(k.startswith("signatures.") for k in processor.metrics)


class _SeedMsg:
    """A seed record as `auditwatch seed` writes it to the repartition topic."""

    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self._topic, self._offset, self._value = topic, offset, value

    def topic(self) -> str:
        return self._topic

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"payments-api"

    def headers(self) -> list[tuple[str, bytes]]:
        from streams.runtime.routing import SEED_HEADER

        return [(SEED_HEADER, b"1")]

    def timestamp(self) -> tuple[int, int]:
        return 1, NOW_MS


def test_seeded_history_that_does_not_verify_is_not_learned(tmp_path: Path) -> None:
    """`seed` (from files or from the archive, where forged events are kept unverified) goes
    through the same check: only verified history of a signing machine is learned."""
    from detectors.state import MACHINE, _decode_state
    from streams.runtime.peers import PeerTable
    from streams.runtime.routing import Router
    from streams.runtime.state import PartitionState
    from streams.runtime.task import Task

    processor = keyed_processor(tmp_path)
    emitted: list[str] = []
    task = Task(
        0,
        PartitionState(0),
        PeerTable("w"),
        processor,
        Router("murmur2", 1),
        processor.cfg.topics.detect,
        lambda role, *_: emitted.append(role),
        None,
    )
    history = [sign_record(_event(i), hmac_key()) for i in range(3)]
    history += [{**_event(10 + i), "key_id": "k1", "signature": "AAAA"} for i in range(5)]
    for offset, e in enumerate(history):
        task.process(_SeedMsg(processor.cfg.topics.detect, offset, orjson.dumps(e)))
    state = task.store.get(MACHINE, "payments-api")
    assert state is not None and _decode_state(state).n == 3
    assert emitted == []  # seeding archives nothing and pages nothing
    assert processor.metrics["signatures.bad_signature"] == 5


def test_authenticate_keeps_every_field_of_the_event(tmp_path: Path) -> None:
    """It rebuilds the event field by field (cheaper than dataclasses.replace): a field added
    to AuditEvent and not carried over fails here."""
    import dataclasses

    processor = keyed_processor(tmp_path)
    signed = sign_record(
        {**VECTOR_EVENT, "event_id": None, "source": "x", "source_ip": "10.0.0.1"}, hmac_key()
    )
    event = validated(signed)
    out = processor.authenticate(event)
    assert out.verification == "verified"
    for f in dataclasses.fields(AuditEvent):
        if f.name != "verification":
            assert getattr(out, f.name) == getattr(event, f.name) != f.default, f.name


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--key-id", "k1"], "go together"),
        (["--sign-key", "KEY"], "go together"),
        (["--sign-key", "MISSING", "--key-id", "k1"], "No such file"),
        (["--sign-key", "KEY", "--key-id", "k1", "--sign-algorithm", "ed25519"], "PEM"),
    ],
)
def test_produce_signing_usage_errors_exit_2_before_sending(
    extra: list[str], says: str, tmp_path: Path, capsys: Any
) -> None:
    from streams.cli.main import main

    events = tmp_path / "e.jsonl"
    events.write_bytes(orjson.dumps(_event(1)) + b"\n")
    (tmp_path / "KEY").write_bytes(b"secret\n")
    config = tmp_path / "unreachable.yaml"
    config.write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n")
    argv = [str(tmp_path / a) if a in ("KEY", "MISSING") else a for a in extra]
    assert main(["produce", str(events), *argv, "--config", str(config)]) == 2
    assert says in capsys.readouterr().err
