"""Producer authenticity through the real broker: `auditwatch produce --sign-key` signs (HMAC
and, after a key rotation, Ed25519; Avro and JSON), a worker archives those events verified,
archives a flood of forged and unsigned events of the signing machine unverified and pages
once, and leaves a machine without a key alone."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.codec import decode_wire
from streams.cli.main import main
from streams.processor import event_id_of
from tests.conftest import Stack, wait_until

SIGNER = "payments-api"
OTHER = "orders-api"


def _events(machine: str, prefix: str, n: int, start_ms: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}-{i}",
            "timestamp": start_ms + i * 1000,
            "machine_id": machine,
            "resource": "postgres://billing/public.invoices",
            "operation": "SELECT",
            "outcome": "SUCCESS",
        }
        for i in range(n)
    ]


def _jsonl(path: Path, events: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


def test_signed_events_verified_forged_ones_unverified_and_paged_once(
    stack: Any, tmp_path: Path
) -> None:
    hmac_secret = tmp_path / "payments-api.k1"
    hmac_secret.write_bytes(b"shared secret of payments-api\n")
    private = Ed25519PrivateKey.generate()
    ed_private = tmp_path / "payments-api.k2.pem"
    ed_private.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ed_public = tmp_path / "payments-api.k2.pub"
    ed_public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    s: Stack = stack(
        signing__keys={
            SIGNER: [
                {"key_id": "k1", "algorithm": "hmac-sha256", "secret_file": str(hmac_secret)},
                {"key_id": "k2", "algorithm": "ed25519", "public_key_file": str(ed_public)},
            ]
        }
    )
    s.create_topics()
    s.start_worker()
    cfg = ["--config", str(s.config_path)]
    start = int(time.time() * 1000) - 600_000

    # Before and after a rotation: the old HMAC key (Avro), then the new Ed25519 key (JSON).
    by_k1 = _events(SIGNER, "k1", 4, start)
    by_k2 = _events(SIGNER, "k2", 3, start + 10_000)
    signed = [*by_k1, *by_k2]
    assert main(["produce", _jsonl(tmp_path / "k1.jsonl", by_k1), *cfg, "--sign-key",
                 str(hmac_secret), "--key-id", "k1"]) == 0  # fmt: skip
    assert main(["produce", _jsonl(tmp_path / "k2.jsonl", by_k2), *cfg, "--encoding", "json",
                 "--sign-key", str(ed_private), "--key-id", "k2"]) == 0  # fmt: skip

    # A flood under the signing machine's name: no signature (Avro and JSON), a made-up
    # signature, an unknown key id; claiming times hours apart.
    forged = _events(SIGNER, "forged", 40, start - 40 * 3_600_000)
    for i, e in enumerate(forged):
        e["timestamp"] = start - i * 3_600_000
        if i % 4 == 1:
            e.update(key_id="k1", signature=base64.b64encode(bytes(32)).decode())
        elif i % 4 == 2:
            e.update(key_id="stolen", signature=base64.b64encode(bytes(64)).decode())
    s.send(forged[::4])  # Avro, unsigned
    producer = Producer({**s.cfg.kafka.client_config(), "partitioner": "murmur2"})
    for e in [x for i, x in enumerate(forged) if i % 4]:
        producer.produce(s.cfg.topics.events, key=SIGNER.encode(), value=orjson.dumps(e))
    assert producer.flush(30) == 0

    # A machine without a key: not checked, whether or not it signs.
    unkeyed = _events(OTHER, "other", 5, start)
    s.send(unkeyed)

    expected = len(signed) + len(forged) + len(unkeyed)
    archive: dict[str, dict[str, Any]] = {}

    def all_archived() -> bool:
        for m in s.read("archive"):
            archive[event_id_of(m.key())] = decode_wire(m.value(), "archive_record")
        return len(archive) >= expected

    wait_until(all_archived, timeout=90, what=f"{expected} archived events")
    verdicts = {eid: r["verification"] for eid, r in archive.items()}
    assert {verdicts[e["event_id"]] for e in signed} == {"VERIFIED"}
    assert {verdicts[e["event_id"]] for e in forged} == {"UNVERIFIED"}
    assert {verdicts[e["event_id"]] for e in unkeyed} == {None}
    # The archive keeps what was sent, so an auditor can check the signatures again.
    assert archive["k2-0"]["event"]["key_id"] == "k2"
    assert archive["forged-2"]["event"]["key_id"] == "stolen"

    def spoof_alerts() -> list[dict[str, Any]]:
        alerts = [orjson.loads(m.value()) for m in s.read("alerts")]
        return [a for a in alerts if a["detector"] == "spoofed_identity"]

    alerts = wait_until(spoof_alerts, timeout=30, what="the spoofed_identity alert")
    pages = [
        a
        for a in alerts
        if a["status"] in ("opened", "escalated")
        and a["severity"] in ("medium", "high", "critical")
    ]
    assert len(pages) == 1, alerts
    page = pages[0]
    assert (page["machine_id"], page["severity"]) == (SIGNER, "high")
    assert page["observed"]["reason"] == "missing"  # the first forged event had no signature
    assert "spoofed" in page["summary"]
    assert not [a for a in (orjson.loads(m.value()) for m in s.read("alerts"))
                if a["machine_id"] == OTHER]  # fmt: skip
