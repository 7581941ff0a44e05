"""`auditwatch deadletter list|redrive` against the real broker and a running pipeline.

Events are written with a schema id that the schema registry does not know yet (dead-lettered
as unknown_schema_id), plus one broken JSON message (fixable by hand) and one poison message.
Once the schema is registered, a redrive re-sends the first kind, a fix file the second, and
the pipeline archives them; the poison stays a dead letter, and a second redrive sends
nothing again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import decode_wire, encode_event_avro
from streams.cli.deadletter import REDRIVE_HEADER, ledger_topic
from streams.cli.main import main
from streams.cli.webhook import idempotency_key
from streams.processor import event_id_of
from streams.tools.producer import make_producer
from streams.tools.reading import pipeline_lag, read_topic
from tests.conftest import Stack, wait_until
from tests.registry_stub import RegistryStub, serve_registry
from tests.test_webhook_kafka import (  # noqa: F401 - server is a fixture
    ALL,
    WANTED,
    Receiver,
    handled,
    produce_alerts,
    server,
    sink,
)
from tests.traffic import BASE_MS

pytestmark = pytest.mark.kafka

KNOWN_ID, LATE_ID = 7, 8


@pytest.fixture
def registry_url() -> Iterator[str]:
    with serve_registry(KNOWN_ID) as url:
        yield url


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"dl-{i}",
        "timestamp": BASE_MS + i * 1000,
        "machine_id": "ingest-worker-07",
        "resource": "s3://raw/2026/01/part-0001.json",
        "operation": "GetObject",
        "outcome": "SUCCESS",
        "source_ip": None,
        "identity_type": None,
        "source": None,
        "attributes": {},
    }


def _archived_ids(s: Stack) -> set[str]:
    return {event_id_of(m.key()) for m in s.read("archive")}


@pytest.mark.timeout(900)  # chained waits on workers; 300 s is too tight on 2 cores
def test_list_then_redrive_fixed_dead_letters_once(
    stack: Any, registry_url: str, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack(input__schema_registry={"url": registry_url})
    s.create_topics()
    producer = make_producer(s.cfg)
    key = b"ingest-worker-07"
    sent = [
        encode_event_avro(_event(0), KNOWN_ID),
        encode_event_avro(_event(1), KNOWN_ID),
        encode_event_avro(_event(2), LATE_ID),  # the producer registered it later
        encode_event_avro(_event(3), LATE_ID),
        encode_event_avro(_event(4), LATE_ID),
        b'{"event_id": "dl-5", "timestamp": ' + str(BASE_MS + 5000).encode() + b', "machine',
        b"\x07 not an event at all",
    ]
    for value in sent:
        producer.produce(s.cfg.topics.events, key=key, value=value)
    assert producer.flush(30) == 0
    s.start_worker()
    wait_until(lambda: len(s.read("deadletter")) == 5, timeout=120, what="5 dead letters")
    assert _archived_ids(s) == {"dl-0", "dl-1"}

    cfg = ["--config", str(s.config_path)]
    assert main(["deadletter", "list", *cfg]) == 0
    out = capsys.readouterr().out
    assert f"5 dead letters in {s.cfg.topics.deadletter} (0 redriven)" in out
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) == 3 and line.split()[1].isdigit()
    }
    assert counts == {"unknown_schema_id": 3, "json_decode_error": 1, "bad_magic_byte": 1}
    assert f"{s.cfg.topics.events}[" in out and "schema id 8 is not known" in out

    assert main(["deadletter", "list", "--reason", "json_decode_error", "--json", *cfg]) == 0
    (broken,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert broken["reason"] == "json_decode_error" and broken["value_text"].startswith(
        '{"event_id"'
    )

    # Before the schema is registered, a redrive would only be refused again: nothing is sent.
    assert main(["deadletter", "redrive", "--reason", "unknown_schema_id", *cfg]) == 0
    out = capsys.readouterr().out
    assert "re-sent 0" in out and "skipped 3: would be refused again" in out

    RegistryStub.known.add(LATE_ID)
    assert main(["deadletter", "redrive", "--reason", "unknown_schema_id", "--dry-run", *cfg]) == 0
    assert "dry run: would re-send 3" in capsys.readouterr().out
    assert main(["deadletter", "redrive", "--reason", "unknown_schema_id", *cfg]) == 0
    out = capsys.readouterr().out
    assert "re-sent 3 to" in out and "(unknown_schema_id 3)" in out

    # The broken JSON, corrected by hand in the form `list --json` printed it.
    broken["value_text"] = orjson.dumps({**_event(5), "event_id": "dl-5"}).decode()
    fix = tmp_path / "fix.jsonl"
    fix.write_text(json.dumps(broken) + "\n")
    assert main(["deadletter", "redrive", "--fix-file", str(fix), *cfg]) == 0
    assert "re-sent 1 to" in capsys.readouterr().out

    wait_until(
        lambda: _archived_ids(s) == {f"dl-{i}" for i in range(6)},
        timeout=120,
        what="the redriven events archived",
    )
    # Every re-sent message says where it came from.
    redriven = [
        m
        for m in read_topic(s.cfg, s.cfg.topics.events)
        if dict(m.headers() or []).get(REDRIVE_HEADER)
    ]
    assert len(redriven) == 4
    assert all(
        dict(m.headers())[REDRIVE_HEADER].decode().startswith(s.cfg.topics.deadletter + ":")
        for m in redriven
    )

    # A second redrive of everything sends nothing: four already went, the poison would fail.
    assert main(["deadletter", "redrive", *cfg]) == 0
    out = capsys.readouterr().out
    assert "re-sent 0" in out
    assert "skipped 4: already redriven" in out
    assert "skipped 1: would be refused again" in out and "bad_magic_byte" in out
    wait_until(lambda: pipeline_lag(s.cfg) == 0, timeout=120, what="the pipeline to catch up")
    dead = [decode_wire(m.value(), "dead_letter") for m in s.read("deadletter")]
    assert len(dead) == 5  # nothing redriven was refused again

    assert main(["deadletter", "list", *cfg]) == 0
    out = capsys.readouterr().out
    assert "(4 redriven)" in out
    ledger = list(read_topic(s.cfg, ledger_topic(s.cfg)))
    assert len(ledger) == 4
    entry = orjson.loads(ledger[0].value())
    assert entry["sent_to"].startswith(f"{s.cfg.topics.events}[")


@pytest.mark.timeout(900)  # chained waits on workers; 300 s is too tight on 2 cores
def test_redrive_with_force_re_sends_and_dedupe_keeps_one_archive_record(
    stack: Any, registry_url: str, capsys: Any
) -> None:
    s: Stack = stack(input__schema_registry={"url": registry_url})
    s.create_topics()
    producer = make_producer(s.cfg)
    producer.produce(s.cfg.topics.events, key=b"m", value=encode_event_avro(_event(9), LATE_ID))
    assert producer.flush(30) == 0
    s.start_worker()
    wait_until(lambda: len(s.read("deadletter")) == 1, timeout=120, what="a dead letter")
    RegistryStub.known.add(LATE_ID)
    cfg = ["--config", str(s.config_path)]
    for extra in ([], ["--force"]):
        assert main(["deadletter", "redrive", *extra, *cfg]) == 0
        assert "re-sent 1 to" in capsys.readouterr().out
    wait_until(lambda: pipeline_lag(s.cfg) == 0 and _archived_ids(s), timeout=120, what="archive")
    archive = s.read("archive")
    assert [event_id_of(m.key()) for m in archive] == ["dl-9"]  # sent twice, archived once


def test_bad_fix_file_exits_2(stack: Any, tmp_path: Path, capsys: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    fix = tmp_path / "fix.jsonl"
    fix.write_text('{"id": "0@999", "value_text": "{}"}\n')
    cfg = ["--config", str(s.config_path)]
    assert main(["deadletter", "redrive", "--fix-file", str(fix), *cfg]) == 2
    assert "fix file names dead letters not found" in capsys.readouterr().err
    fix.write_text('{"value_text": "{}"}\n')
    assert main(["deadletter", "redrive", "--fix-file", str(fix), *cfg]) == 2
    assert 'needs an "id"' in capsys.readouterr().err


@pytest.mark.timeout(900)  # chained waits on workers; 300 s is too tight on 2 cores
def test_failed_webhook_deliveries_are_redriven_to_the_alerts_topic_only_on_request(
    stack: Any,
    server: tuple[str, Receiver],  # noqa: F811 - the fixture imported above
    capsys: Any,
) -> None:
    base, receiver = server
    s: Stack = stack()
    s.create_topics()
    produce_alerts(s)
    cfg = ["--config", str(s.config_path)]
    # The endpoint is down (nothing listens): one attempt each, then a dead letter.
    stop, thread, stats = sink(s, "http://127.0.0.1:1/hook", "hook-g", attempts=1)
    wait_until(lambda: handled(stats) >= ALL, what="every alert state handled")
    stop.set()
    thread.join(30)
    assert stats["dead_lettered"] == len(WANTED)
    alerts_before = len(s.read("alerts"))

    # An input redrive leaves them alone, even unchecked: they are not audit events.
    capsys.readouterr()
    assert main(["deadletter", "redrive", "--no-check", *cfg]) == 0
    out = capsys.readouterr().out
    assert f"re-sent 0 to {s.cfg.topics.events}" in out
    assert f"skipped {len(WANTED)}: webhook deliveries that failed" in out
    assert s.read("events") == []

    assert main(["deadletter", "redrive", "--stage", "webhook", *cfg]) == 0
    out = capsys.readouterr().out
    assert f"re-sent {len(WANTED)} to {s.cfg.topics.alerts} (webhook_failed {len(WANTED)})" in out
    alerts = s.read("alerts")
    redriven = [m for m in alerts if REDRIVE_HEADER in dict(m.headers() or [])]
    assert len(alerts) == alerts_before + len(WANTED)
    assert sorted(m.key() for m in redriven) == sorted(a["alert_id"].encode() for a in WANTED)
    # Once: a second redrive sends nothing.
    assert main(["deadletter", "redrive", "--stage", "webhook", *cfg]) == 0
    assert f"skipped {len(WANTED)}: already redriven" in capsys.readouterr().out

    # The endpoint is back: the same sink group delivers the redriven states, only those.
    stop, thread, stats = sink(s, base + "/flaky", "hook-g", attempts=5)
    wait_until(lambda: handled(stats) >= len(WANTED), what="the redriven states handled")
    stop.set()
    thread.join(30)
    assert sorted(receiver.accepted_keys()) == sorted(idempotency_key(a) for a in WANTED)
