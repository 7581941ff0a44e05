"""What the commands say is what happened. `auditwatch alerts`: piped `--follow` output is one
line per state, the table is in event-time order, a page line carries its time zone and what to
check, and acting on an alert that never existed is an error. A worker's dead letters keep the
event_id their message carried. (Replay's account of a capture: tests/test_replay.py.)"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from rich.console import Console

from schemas.codec import decode_wire
from streams.cli.main import _alert_line, main
from streams.ops.control import decide, publish
from tests.conftest import ROOT, Stack, wait_until

HINT = "Check whether a deploy or a new job explains it; otherwise who holds its credentials."


def alert_state(i: int, event_time: str, summary: str = "", **changes: Any) -> dict[str, Any]:
    machine = f"payments-api-{i}"
    state: dict[str, Any] = {
        "alert_id": "a-" + f"{i:024x}",
        "status": "opened",
        "machine_id": machine,
        "group": "payments-api",
        "detector": "new_resource",
        "severity": "high",
        "score": 72.0,
        "event_time": event_time,
        "summary": summary or f"{machine} read s3://ledger/{i}, which it had not used.",
        "observed": {},
        "expected": {},
        "event_ids": [f"e-{i}"],
        "config_version": "v",
        "hint": HINT,
        "sequence": 1,
    }
    state.update(changes)
    return state


def publish_states(s: Stack, states: list[dict[str, Any]]) -> None:
    # Keyed by alert id as workers write them; one partition for all, so the topic holds
    # exactly this sequence.
    producer = Producer(s.cfg.kafka.client_config())
    for a in states:
        key = a["alert_id"].encode()
        producer.produce(s.cfg.topics.alerts, key=key, value=orjson.dumps(a), partition=0)
    assert producer.flush(30) == 0


def rendered(markup: str) -> str:
    out = io.StringIO()
    Console(file=out, width=1000, color_system=None).print(markup)
    return out.getvalue()


def test_a_page_line_names_its_time_zone_and_what_to_check() -> None:
    line = rendered(_alert_line(alert_state(1, "2026-01-01T03:04:05.678Z")))
    assert "2026-01-01 03:04:05 UTC" in line
    assert f"what to check: {HINT}" in line
    assert len(line.splitlines()) == 1
    # A resolved state asks nobody to check anything; a state without a hint has none to show.
    resolved = rendered(_alert_line(alert_state(1, "2026-01-01T03:04:05Z", status="resolved")))
    assert "what to check" not in resolved and "UTC" in resolved
    assert "what to check" not in rendered(
        _alert_line(alert_state(1, "2026-01-01T03:04Z", hint=None))
    )


@pytest.mark.kafka
def test_piped_follow_is_one_line_per_state_however_long(stack: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    long = "payments-api-{} read " + ", ".join(f"s3://ledger/2026/{n:03d}" for n in range(40))
    states = [
        alert_state(i, f"2026-01-01T0{i}:00:00.000Z", long.format(i) + ".") for i in range(1, 4)
    ]
    assert all(len(a["summary"]) > 600 for a in states)
    publish_states(s, states)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "alerts", "--follow", "--config", str(s.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    lines: list[bytes] = []

    def collect() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        # Every state's alert id ends its line: all three shown means all three printed whole.
        wait_until(
            lambda: sum(a["alert_id"].encode() in b"".join(lines) for a in states) == 3,
            timeout=60,
            what="the three states on stdout",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(10)
    text = [line.decode() for line in lines]
    assert len(text) == 3, text
    for a, line in zip(states, text, strict=True):
        assert a["summary"] in line and a["alert_id"] in line and HINT in line


@pytest.mark.kafka
def test_the_table_is_in_event_time_order(stack: Any, capsys: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    # Written out of order, as several workers' partitions interleave on the topic.
    times = {1: "2026-01-01T03:00:00.000Z", 2: "2026-01-01T01:00:00.5Z", 3: "2026-01-01T02:00:00Z"}
    times[4] = "2026-01-01T01:00:00.1Z"  # the same second as 2, earlier within it
    publish_states(s, [alert_state(i, t) for i, t in times.items()])
    capsys.readouterr()
    assert main(["alerts", "--config", str(s.config_path)]) == 0
    out = capsys.readouterr().out
    ids = {i: "a-" + f"{i:024x}" for i in times}
    assert all(alert_id in out for alert_id in ids.values()), out
    order = sorted(ids, key=lambda i: out.index(ids[i]))
    assert order == [4, 2, 3, 1]


@pytest.mark.kafka
def test_acting_on_an_alert_that_never_existed_is_an_error(stack: Any, capsys: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    real = alert_state(1, "2026-01-01T01:00:00Z")
    publish_states(s, [real])
    cfg = ["--config", str(s.config_path)]
    never = "a-" + "f" * 24
    capsys.readouterr()
    for action in (["ack", never], ["snooze", never, "--for", "1h"], ["unsnooze", never]):
        assert main(["alerts", *action, *cfg]) == 1
        err = capsys.readouterr().err
        assert f"no such alert {never!r}" in err and s.cfg.topics.alerts in err, err
    # Nothing was decided about it.
    assert s.read("control") == []

    assert main(["alerts", "ack", real["alert_id"], "--by", "alice", *cfg]) == 0
    assert f"{real['alert_id']} acknowledged by alice" in capsys.readouterr().out
    # An alert the control topic knows (its states since expired from the alerts topic) can
    # still be acted on: the decision is about something that did exist.
    expired = "a-" + "e" * 24
    publish(s.cfg, replace(decide(None, expired, "ack", "bob", 1_767_225_600_000), aspect="ack"))
    assert main(["alerts", "unack", expired, *cfg]) == 0


@pytest.mark.kafka
def test_a_workers_dead_letters_keep_the_event_id_their_json_had(stack: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    sent = {
        # Valid JSON, rejected by validation.
        "dl-invalid": orjson.dumps(
            {"event_id": "dl-invalid", "timestamp": 1_767_225_600_000, "machine_id": "m-1"}
        ),
        # Cut short: the parser rejects it, the id is still in its text.
        "dl-cut": b'{"event_id": "dl-cut", "timestamp": 1767225600000, "machine_id": "m-',
    }
    producer = Producer(s.cfg.kafka.client_config())
    for value in sent.values():
        producer.produce(s.cfg.topics.events, key=b"m-1", value=value)
    assert producer.flush(30) == 0
    s.start_worker()
    letters = wait_until(
        lambda: (
            (d := [decode_wire(m.value(), "dead_letter") for m in s.read("deadletter")])
            and len(d) == 2
            and d
        ),
        timeout=120,
        what="two dead letters",
    )
    assert {d["event_id"]: d["reason"] for d in letters} == {
        "dl-invalid": "missing_field",
        "dl-cut": "json_decode_error",
    }
