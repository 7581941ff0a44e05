"""Acknowledge and snooze: control records, and two workers on the real broker honouring
them whichever detection partition holds the alert. Also the `alerts` filters."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from detectors.identity import default_group
from schemas.alert import AlertControl
from streams.cli.main import main
from streams.ops.control import (
    ControlMerge,
    ControlReader,
    apply_action,
    decide,
    decode,
    parse_duration,
    publish,
    read_state,
)
from streams.runtime.routing import murmur2_partition
from tests.conftest import Stack, wait_until
from tests.test_pipeline_kafka import avro
from tests.traffic import BASE_MS, steady

# --- control records (no broker) ---------------------------------------------------------

NOW = BASE_MS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("0.5h", 1800)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-1h", "0s", "2h foo"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_each_record_carries_the_whole_state_so_compaction_loses_nothing() -> None:
    a = "a-" + "0" * 24
    acked = decide(None, a, "ack", "alice", NOW)
    snoozed = decide(acked, a, "snooze", "bob", NOW + 1000, NOW + 3_600_000)
    assert (snoozed.acknowledged_by, snoozed.snoozed_by) == ("alice", "bob")
    assert snoozed.control_at(NOW + 2000) == AlertControl("alice", "2026-01-01T01:00:00.000Z")
    # Past the end of the snooze only the acknowledgement is left.
    assert snoozed.control_at(NOW + 3_600_000) == AlertControl("alice", None)
    unsnoozed = decide(snoozed, a, "unsnooze", "bob", NOW + 5000)
    assert unsnoozed.control_at(NOW + 6000) == AlertControl("alice", None)
    assert decide(unsnoozed, a, "unack", "alice", NOW + 7000).control_at(NOW + 8000) is None
    # The JSON form on the topic reads back the same.
    for record in (acked, snoozed, unsnoozed):
        assert decode(orjson.dumps(record.to_json())) == record
    assert json.loads(orjson.dumps(snoozed.to_json()))["until"] == "2026-01-01T01:00:00.000Z"
    with pytest.raises(ValueError, match="future"):
        decide(None, a, "snooze", "bob", NOW, NOW)


@pytest.mark.parametrize("value", [b"", b"{", b'{"action": "ack"}', b'{"alert_id": "x"}', b"[]"])
def test_unreadable_control_records_are_ignored(value: bytes) -> None:
    assert decode(value) is None


# --- two workers on the real broker ------------------------------------------------------


def machines_on_both_partitions() -> tuple[str, str]:
    """Two machines, each its own peer group, whose detection partitions differ (the detect
    topic is keyed by peer group)."""
    by_partition: dict[int, str] = {}
    for i in range(10, 60):
        name = f"ledger{i}"
        by_partition.setdefault(murmur2_partition(default_group(name).encode(), 2), name)
    return by_partition[0], by_partition[1]


def detect_assignments(stack: Stack) -> list[set[int]]:
    admin = AdminClient(stack.cfg.kafka.client_config())
    group = stack.cfg.kafka.consumer_group
    try:
        desc = admin.describe_consumer_groups([group])[group].result()
    except Exception:
        return []
    return [
        {
            tp.partition
            for tp in m.assignment.topic_partitions
            if tp.topic == stack.cfg.topics.detect
        }
        for m in desc.members
    ]


def alert_states(stack: Stack) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in stack.read("alerts")]


def send(stack: Stack, events: list[dict[str, Any]]) -> None:
    producer = Producer(stack.cfg.kafka.client_config())
    for e in events:
        producer.produce(stack.cfg.topics.events, key=e["machine_id"].encode(), value=avro(e))
    assert producer.flush(30) == 0


def new_resources(machine: str, at_ms: int, ks: range) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{machine}-new-{k}",
            "timestamp": at_ms + k * 5000,
            "machine_id": machine,
            "resource": f"secrets://prod/team-{k}/token",
            "operation": "GetSecretValue",
            "outcome": "SUCCESS",
        }
        for k in ks
    ]


@pytest.mark.kafka
@pytest.mark.timeout(900)  # two workers and several awaited rounds on a shared 2-core box
def test_ack_and_snooze_are_honoured_by_every_worker(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack(
        topics__partitions=2,
        detectors__warmup_s=60,
        detectors__warmup_events=5,
        detectors__mature_after_s=0,  # machines with history: a new resource pages
        detectors__cooldown_s=3600,
        detectors__update_every_s=0,
        detectors__rate__min_count=10**9,
    )
    s.create_topics()
    acked, snoozed = machines_on_both_partitions()
    s.start_worker("state-a")
    s.start_worker("state-b")
    # Each worker owns one detection partition: one alert each.
    wait_until(
        lambda: sorted(map(sorted, detect_assignments(s))) == [[0], [1]],
        timeout=90,
        what="both workers to own one detection partition each",
    )
    cfg = ["--config", str(s.config_path)]
    start = BASE_MS
    history: list[dict[str, Any]] = []
    for m in (acked, snoozed):
        history += steady(m, ["postgres://ledger/public.entries"], start, 100, every_ms=10_000)
    t = start + 120_000
    send(s, history + new_resources(acked, t, range(1)) + new_resources(snoozed, t, range(1)))
    # Each machine also opens a low "operation" alert (its first GetSecretValue), in an order
    # that varies with the two workers' pace: pick the new-resource ones by detector.
    opened = wait_until(
        lambda: (
            (
                o := {
                    a["machine_id"]: a
                    for a in alert_states(s)
                    if a["status"] == "opened" and a["detector"] == "new_resource"
                }
            )
            and len(o) == 2
            and o
        ),
        timeout=90,
        what="an opened new-resource alert for each machine",
    )
    # The two alerts were judged in different partitions, so by different workers.
    partitions = {m.key().decode(): m.partition() for m in s.read("detect")}
    assert {partitions[default_group(acked)], partitions[default_group(snoozed)]} == {0, 1}
    ack_id, snooze_id = opened[acked]["alert_id"], opened[snoozed]["alert_id"]

    assert main(["alerts", "ack", ack_id, "--by", "alice", *cfg]) == 0
    assert main(["alerts", *cfg, "snooze", snooze_id, "--for", "2h", "--by", "bob"]) == 0
    out = capsys.readouterr().out
    assert f"{ack_id} acknowledged by alice" in out and f"{snooze_id} snoozed by bob" in out
    wait_until(
        lambda: all(
            f"control: ack {ack_id} by alice" in log and f"control: snooze {snooze_id}" in log
            for log in worker_logs(s)
        ),
        what="both workers to read both decisions",
        timeout=120,
    )

    # Three more new resources each: high severity, which would escalate (page).
    send(s, new_resources(acked, t, range(1, 4)) + new_resources(snoozed, t, range(1, 4)))
    # Each worker judges its own partition at its own pace: wait for both alerts' repeats.
    wait_until(
        lambda: all(
            sum(1 for a in alert_states(s) if a["alert_id"] == i and a["status"] != "opened") >= 3
            for i in (ack_id, snooze_id)
        ),
        what="the three repeats of each alert",
        timeout=120,
    )
    after = [a for a in alert_states(s) if a["status"] != "opened"]
    of_acked = [a for a in after if a["alert_id"] == ack_id]
    of_snoozed = [a for a in after if a["alert_id"] == snooze_id]
    assert {a["status"] for a in of_acked} == {"updated"}, after
    assert {a["acknowledged_by"] for a in of_acked} == {"alice"}
    assert of_acked[-1]["severity"] == "high"
    assert {a["status"] for a in of_snoozed} == {"updated"}
    assert all(a["snoozed_until"] and a["acknowledged_by"] is None for a in of_snoozed)
    assert of_snoozed[-1]["severity"] == "high"

    # The snooze lifted, the next escalation pages; the acknowledged alert stays quiet.
    assert main(["alerts", "unsnooze", snooze_id, *cfg]) == 0
    wait_until(
        lambda: all(f"control: unsnooze {snooze_id}" in log for log in worker_logs(s)),
        what="both workers to read the unsnooze",
        timeout=120,
    )
    send(s, new_resources(acked, t, range(4, 7)) + new_resources(snoozed, t, range(4, 7)))
    wait_until(
        lambda: (
            any(a["severity"] == "critical" for a in alert_states(s) if a["alert_id"] == ack_id)
            and any(a["status"] == "escalated" for a in alert_states(s))
        ),
        what="critical states of both alerts",
        timeout=120,
    )
    states = alert_states(s)
    pages = [
        a
        for a in states
        if a["status"] in ("opened", "escalated")
        and a["severity"] in ("medium", "high", "critical")
    ]
    [escalated] = [a for a in pages if a["status"] == "escalated"]
    assert escalated["alert_id"] == snooze_id
    assert escalated["severity"] == "critical" and escalated["snoozed_until"] is None
    assert {a["status"] for a in states if a["alert_id"] == ack_id} == {"opened", "updated"}

    # The table shows who acknowledged what, even on states written before the decision.
    capsys.readouterr()
    assert main(["alerts", "--machine", acked, *cfg]) == 0
    table = capsys.readouterr().out
    assert "alert states" in table and "alice" in table


def worker_logs(s: Stack) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(s.root.glob("worker-*.log"))]


@pytest.mark.kafka
def test_alerts_filters(stack: Any, capsys: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    states = [
        ("a-" + f"{i:024x}", machine, severity, f"2026-01-01T0{i}:00:00.000Z")
        for i, (machine, severity) in enumerate(
            [
                ("payments-api-1", "medium"),
                ("payments-api-2", "high"),
                ("ingest-worker-1", "critical"),
                ("payments-api-1", "low"),
                ("nightly-export", "info"),
            ]
        )
    ]
    producer = Producer(s.cfg.kafka.client_config())
    for alert_id, machine, severity, at in states:
        producer.produce(
            s.cfg.topics.alerts,
            key=alert_id.encode(),
            value=orjson.dumps(
                {
                    "alert_id": alert_id,
                    "status": "opened",
                    "machine_id": machine,
                    "group": machine.rsplit("-", 1)[0],
                    "detector": "new_resource",
                    "severity": severity,
                    "score": 60.0,
                    "event_time": at,
                    "summary": f"{machine} did something.",
                    "observed": {},
                    # What a detector still learning records instead of a page.
                    "expected": (
                        {"learning_until": "2026-01-02T00:00:00.000Z"} if severity == "info" else {}
                    ),
                    "event_ids": ["e"],
                    "config_version": "v",
                }
            ),
        )
    assert producer.flush(30) == 0
    cfg = ["--config", str(s.config_path)]

    def ids(*args: str) -> list[str]:
        capsys.readouterr()
        assert main(["alerts", "--json", *args, *cfg]) == 0
        out = capsys.readouterr().out.splitlines()
        return sorted(json.loads(line)["alert_id"][-1] for line in out)

    # On-call's default view leaves out the info records of what is still learning...
    assert ids() == ["0", "1", "2", "3"]
    assert ids("--min-severity", "info") == ["0", "1", "2", "3", "4"]
    # ...and says what is learning and until when.
    capsys.readouterr()
    assert main(["alerts", *cfg]) == 0
    table = capsys.readouterr().out
    assert "nightly-export" not in table
    assert (
        "still learning, recorded as info, not paged; --min-severity info lists them: "
        "new_resource (1 machines) until 2026-01-02 00:00 UTC"
    ) in table
    assert ids("--machine", "payments-api-*") == ["0", "1", "3"]
    assert ids("--machine", "ingest-*", "--machine", "payments-api-2") == ["1", "2"]
    assert ids("--min-severity", "high") == ["1", "2"]
    assert ids("--since", "2026-01-01T02:00:00Z") == ["2", "3"]
    assert ids("--since", "2h") == []  # all of them long before now
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 10 * 365 * 86400))
    assert ids("--since", since, "--machine", "payments-*", "--min-severity", "medium") == [
        "0",
        "1",
    ]
    assert main(["alerts", "--since", "yesterday-ish", *cfg]) == 2
    assert "give a duration" in capsys.readouterr().err
    assert main(["alerts", "ack", "not-an-id", *cfg]) == 2
    assert "is not an alert id" in capsys.readouterr().err


# --- decisions keyed per aspect ----------------------------------------------------------


def test_an_ack_and_a_snooze_decided_from_the_same_state_both_survive() -> None:
    a = "a-" + "1" * 24
    # Two on-call engineers act at once: each read "no decision yet".
    ack = replace(decide(None, a, "ack", "alice", NOW + 10), aspect="ack")
    snooze = replace(decide(None, a, "snooze", "bob", NOW + 20, NOW + 3_600_000), aspect="snooze")
    assert (ack.key, snooze.key) == (f"{a}:ack", f"{a}:snooze")
    for order in ((ack, snooze), (snooze, ack)):
        m = ControlMerge()
        for r in order:
            state = m.add(decode(orjson.dumps(r.to_json())) or r)
        assert state.control_at(NOW + 30) == AlertControl("alice", "2026-01-01T01:00:00.000Z")
        assert (state.action, state.by) == ("snooze", "bob")  # the latest decision
    # Withdrawing one aspect leaves the other alone, whatever the writer believed of it.
    m = ControlMerge()
    m.add(ack)
    m.add(snooze)
    unack = replace(decide(None, a, "unack", "alice", NOW + 40), aspect="ack")
    assert m.add(unack).control_at(NOW + 50) == AlertControl(None, "2026-01-01T01:00:00.000Z")


def test_records_written_before_aspects_are_still_read() -> None:
    a = "a-" + "2" * 24
    old = decide(
        decide(None, a, "ack", "alice", NOW), a, "snooze", "bob", NOW + 10, NOW + 3_600_000
    )
    assert old.aspect is None and old.key == a
    m = ControlMerge()
    m.add(old)
    assert m.merged[a].control_at(NOW + 20) == AlertControl("alice", "2026-01-01T01:00:00.000Z")
    # A later aspect decision overrides only its own part of the old whole state.
    m.add(replace(decide(old, a, "unsnooze", "carol", NOW + 30), aspect="snooze"))
    assert m.merged[a].control_at(NOW + 40) == AlertControl("alice", None)
    # An aspect decision older than the old whole state does not undo it.
    m2 = ControlMerge()
    m2.add(replace(decide(None, a, "unack", "dave", NOW - 1000), aspect="ack"))
    m2.add(old)
    assert m2.merged[a].control_at(NOW + 20) == AlertControl("alice", "2026-01-01T01:00:00.000Z")


@pytest.mark.kafka
def test_concurrent_ack_and_snooze_on_the_topic_are_both_kept(stack: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    a = "a-" + "3" * 24
    # What two simultaneous `alerts ack` / `alerts snooze` runs write: each from the state it
    # read before the other's record existed.
    publish(s.cfg, replace(decide(None, a, "ack", "alice", NOW), aspect="ack"))
    publish(
        s.cfg, replace(decide(None, a, "snooze", "bob", NOW + 5, NOW + 3_600_000), aspect="snooze")
    )
    state = read_state(s.cfg)[a]
    assert state.control_at(NOW + 10) == AlertControl("alice", "2026-01-01T01:00:00.000Z")
    assert {m.key() for m in s.read("control")} == {f"{a}:ack".encode(), f"{a}:snooze".encode()}
    # apply_action keys its record per aspect and reports the merged state.
    after = apply_action(s.cfg, a, "unsnooze", "carol", now_ms=NOW + 20)
    assert after.control_at(NOW + 30) == AlertControl("alice", None)
    assert read_state(s.cfg)[a].control_at(NOW + 30) == AlertControl("alice", None)


# --- a reader that outlives broker errors ------------------------------------------------


class Forwarder:
    """A TCP port that is closed until `open()`, then forwards to the broker: a broker that
    is unreachable at start and comes back later. The broker's metadata names its own
    address, so only the bootstrap connection goes through here."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server: socket.socket | None = None

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.kafka
def test_control_reader_survives_an_unreachable_broker_and_reports_it(
    stack: Any, bootstrap: str
) -> None:
    s: Stack = stack()
    s.create_topics()
    a = "a-" + "4" * 24
    publish(s.cfg, replace(decide(None, a, "ack", "alice", NOW), aspect="ack"))
    proxy = Forwarder(bootstrap)
    cfg = s.cfg.model_copy(
        update={
            "kafka": s.cfg.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{proxy.port}"})
        }
    )
    reader = ControlReader(cfg, retry_s=0.2, max_retry_s=1.0, metadata_timeout_s=1.0).start()
    try:
        # Startup fails (nothing listens): reported, and the thread keeps trying.
        wait_until(lambda: reader.failures >= 2, timeout=30, what="repeated connect failures")
        assert not reader.healthy and reader.last_error
        assert reader.wait_ready(0)  # a worker is not held up by the broker being away
        assert reader.get(a) is None
        proxy.open()
        wait_until(lambda: reader.get(a) is not None, timeout=60, what="the reader to recover")
        assert reader.healthy
        assert reader.lookup(a) == AlertControl("alice", None)
        # And it keeps following the topic.
        publish(s.cfg, replace(decide(None, a, "unack", "bob", NOW + 10), aspect="ack"))
        wait_until(lambda: reader.lookup(a) is None, timeout=30, what="the unack to be read")
    finally:
        reader.stop()
        proxy.close()
