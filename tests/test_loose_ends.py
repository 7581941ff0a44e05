"""Issue 18's loose ends that need no broker: a decoder's or a detector's unexpected exception
in a worker's task (the record is archived or dead-lettered and counted, the next ones go on),
damaged records in the tools that read alerts, dead letters and the archive, and the
signature verdicts as Prometheus metrics."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detectors.core import DetectionCore
from schemas import codec
from schemas.codec import BundledSchemas, decode_wire
from schemas.signing import sign_record
from streams.ops.config import Config
from streams.ops.metrics import Telemetry
from streams.processor import MemoryStore, Origin, Processor
from streams.runtime.peers import PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import PartitionState
from streams.runtime.task import Task
from tests.test_compliance import _value
from tests.test_signing import _event as signed_event
from tests.test_signing import hmac_key, keyed_processor


class Msg:
    """What a task reads of a consumed record."""

    def __init__(self, offset: int, value: bytes) -> None:
        self._o, self._v = offset, value

    def topic(self) -> str:
        return Config().topics.events

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return b"m1"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, int(time.time() * 1000)


def _task(emitted: list[tuple[str, bytes]]) -> Task:
    cfg = Config()
    return Task(
        0,
        PartitionState(0),
        PeerTable("w"),
        Processor(cfg, BundledSchemas()),
        Router("murmur2", 1),
        cfg.topics.detect,
        lambda role, key, value, *_: emitted.append((role, value)),
        None,
    )


def test_a_decoder_bug_is_a_dead_letter_the_ledger_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = codec.decode_event

    def poisoned(value: bytes | None, **kwargs: Any) -> codec.Decoded:
        if value is not None and b'"e1"' in value:
            raise KeyError("decoder bug")
        return real(value, **kwargs)

    monkeypatch.setattr("streams.processor.decode_event", poisoned)
    emitted: list[tuple[str, bytes]] = []
    task = _task(emitted)
    for offset in range(3):
        task.process(Msg(offset, _value(offset)))
    assert [role for role, _ in emitted] == ["archive", "deadletter", "archive"]
    dead = decode_wire(emitted[1][1], "dead_letter")
    assert (dead["reason"], dead["offset"], dead["event_id"]) == ("decoder_error", 1, "e1")
    assert "KeyError" in dead["message"]
    c = task.ledger.input
    assert (c.read, c.archived, c.deadlettered, c.unaccounted()) == (3, 2, 1, 0)


def test_a_detector_bug_on_one_event_leaves_it_archived_and_the_next_detected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = DetectionCore.process

    def broken(self: DetectionCore, event: Any, *args: Any) -> Any:
        if event.resource == "boom":
            raise ZeroDivisionError("detector bug")
        return real(self, event, *args)

    monkeypatch.setattr(DetectionCore, "process", broken)
    emitted: list[tuple[str, bytes]] = []
    task = _task(emitted)
    caplog.set_level(logging.ERROR, "auditwatch.processor")
    task.process(Msg(0, _value(0, "boom")))
    task.process(Msg(1, _value(1)))
    task.process(Msg(2, _value(2, "other")))
    archived = [
        decode_wire(v, "archive_record")["event"] for role, v in emitted if role == "archive"
    ]
    assert [e["event_id"] for e in archived] == ["e0", "e1", "e2"]
    metrics = task.processor.metrics
    assert (metrics["detector_errors"], metrics["archived"]) == (1, 3)
    c = task.ledger.input
    assert (c.read, c.archived, c.unaccounted()) == (3, 3, 0)
    (logged,) = [r for r in caplog.records if "detection failed" in r.getMessage()]
    assert "e0" in logged.getMessage() and logged.exc_info is not None
    # The next events were detected on: the machine's baselines were learned from them.
    assert task.store.get(b"m", "m1") is not None


def _signature_samples(processor: Processor) -> dict[str, float]:
    families = text_string_to_metric_families(Telemetry(Config(), processor).scrape().decode())
    (family,) = [f for f in families if f.name == "auditwatch_signatures"]
    assert all(s.name == "auditwatch_signatures_total" for s in family.samples)
    return {s.labels["verdict"]: s.value for s in family.samples}


def test_signature_verdicts_are_exported_as_prometheus_counters(tmp_path: Path) -> None:
    processor = keyed_processor(tmp_path)
    assert _signature_samples(processor) == {
        "verified": 0,
        "missing": 0,
        "unknown_key_id": 0,
        "bad_signature": 0,
    }
    store = MemoryStore()
    origin = Origin("t", 0, 0)
    for i in range(3):
        signed = orjson.dumps(sign_record(signed_event(i), hmac_key()))
        processor.handle(signed, b"payments-api", origin, store)
    forged = {**signed_event(10), "key_id": "k1", "signature": base64.b64encode(bytes(32)).decode()}
    processor.handle(orjson.dumps(forged), b"payments-api", origin, store)
    processor.handle(orjson.dumps(signed_event(11)), b"payments-api", origin, store)
    assert _signature_samples(processor) == {
        "verified": 3,
        "missing": 1,
        "unknown_key_id": 0,
        "bad_signature": 1,
    }
    # Without keys nothing is checked, and no verdict series is exported.
    assert _signature_samples(Processor(Config(), BundledSchemas())) == {}
