"""Issue 18's loose ends on the plaintext broker: the tools that read the alerts, dead-letter
and archive topics skip a damaged or foreign record, count it and say so, instead of stopping
on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.codec import BundledSchemas
from streams.cli.main import main
from streams.ops.config import Config
from streams.processor import MemoryStore, Origin, Processor
from tests.conftest import Stack
from tests.test_alerts_truth import alert_state
from tests.test_compliance import _value
from tests.test_compliance_kafka import run_check


def _produce(s: Stack, topic: str, values: list[bytes]) -> None:
    producer = Producer(s.cfg.kafka.client_config())
    failed: list[Any] = []
    for i, v in enumerate(values):
        # Keyed: the alerts and archive topics are compacted, and refuse records without one.
        producer.produce(
            topic,
            key=b"k%d" % i,
            value=v,
            partition=0,
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
    assert producer.flush(30) == 0 and not failed, failed


@pytest.mark.kafka
def test_alerts_skips_records_that_are_not_alert_states_and_counts_them(
    stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    s: Stack = stack()
    s.create_topics()
    good = [alert_state(i, f"2026-01-01T0{i}:00:00Z") for i in (1, 2)]
    broken = {**alert_state(3, "2026-01-01T03:00:00Z"), "event_time": "yesterday"}
    _produce(
        s,
        s.cfg.topics.alerts,
        [
            orjson.dumps(good[0]),
            b"[1, 2]",
            b"\xff not json",
            orjson.dumps({"alert_id": "a-x", "status": "opened", "severity": "high"}),
            orjson.dumps(broken),
            orjson.dumps(good[1]),
        ],
    )
    for extra in ([], ["--json"]):
        capsys.readouterr()
        assert main(["alerts", "--config", str(s.config_path), *extra]) == 0
        out, err = capsys.readouterr()
        assert all(a["alert_id"] in out for a in good), out
        assert "skipping" in err and "[0]@1" in err and "not an alert state" in err, err
        assert "skipped 4 record(s)" in err, err


def _outputs() -> tuple[bytes, bytes]:
    """(an archive record, a dead letter) as a worker writes them."""
    processor = Processor(Config(), BundledSchemas())
    origin = Origin(Config().topics.events, 0, 0)
    (archived,) = processor.handle(_value(0), b"m1", origin, MemoryStore())
    (dead,) = processor.handle(b"\x07 not an event", b"m1", origin, MemoryStore())
    assert (archived.kind, dead.kind) == ("archive", "deadletter")
    return archived.value, dead.value


@pytest.mark.kafka
def test_deadletter_list_and_compliance_check_skip_damaged_records_and_say_so(
    stack: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s: Stack = stack()
    s.create_topics()
    archived, dead = _outputs()
    # Cut short: the Avro body ends inside a field (what a bad disk or a foreign writer leaves).
    _produce(s, s.cfg.topics.archive, [archived[:12], archived])
    _produce(s, s.cfg.topics.deadletter, [dead, dead[:9]])
    capsys.readouterr()
    assert main(["deadletter", "list", "--config", str(s.config_path)]) == 0
    out = capsys.readouterr().out
    assert "1 dead letters in" in out, out
    assert f"1 damaged record(s) in {s.cfg.topics.deadletter} skipped" in out and "0@1" in out
    capsys.readouterr()
    assert main(["deadletter", "list", "--json", "--config", str(s.config_path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "1 damaged record(s)" in err, (out, err)

    rc, report = run_check(s, tmp_path, capsys)
    assert rc == 1, report["_stdout"]
    damaged = {f["subject"]: f["message"] for f in report["findings"] if f["area"] == "records"}
    assert set(damaged) == {s.cfg.topics.archive, s.cfg.topics.deadletter}, report["findings"]
    assert damaged[s.cfg.topics.archive].startswith("1 damaged record(s)")
    assert "[0]@0" in damaged[s.cfg.topics.archive]
    assert "[0]@1" in damaged[s.cfg.topics.deadletter]
    # The readable records are still counted.
    assert report["producers"]["events"] == 1 and report["deadletters"]["total"] == 1
    assert "damaged record(s)" in report["_stdout"]
