"""The worker's HTTP endpoint on the real broker: /metrics scraped over HTTP, /healthz, /readyz,
/machines/ID, and the input-quiet self-alert on the alerts topic (delivery checked, and not
opened twice across a restart)."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import BundledSchemas, encode_event_avro
from streams.cli import main as cli
from streams.ops.metrics import INPUT_QUIET, InputWatch, Telemetry, last_alert_status
from streams.processor import Processor
from streams.tools.producer import to_avro_record
from tests.conftest import Stack, wait_until
from tests.traffic import fan_out, steady

pytestmark = pytest.mark.kafka

MACHINE = "billing-api-7"


def send(stack: Stack, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({**stack.cfg.kafka.client_config(), "linger.ms": 5})
    for key, value in messages:
        producer.produce(stack.cfg.topics.events, key=key, value=value)
    assert producer.flush(30) == 0


def avro(event: dict[str, Any]) -> bytes:
    return encode_event_avro(to_avro_record(event, int(time.time() * 1000)))


def worker_url(stack: Stack, index: int = 0) -> str:
    """The address the worker logged (http.port 0: it picked a free port)."""
    log = Path(stack.root / f"worker-{index}.log")

    def address() -> str | None:
        m = re.search(r"on http://(127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        return m.group(1) if m else None

    return "http://" + wait_until(address, timeout=60, what="the worker's HTTP address")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    resp = httpx.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Workers inherit the environment: structured logs for the worker started in the test.
    monkeypatch.setenv("AUDITWATCH_LOG_FORMAT", "json")
    yield


@pytest.mark.timeout(900)  # workers start and drain on a shared 2-core box
def test_metrics_health_and_explain_over_http(
    stack: Any, json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    s: Stack = stack(
        http__port=0,
        monitoring__stats_interval_s=1,
        detectors__warmup_s=600,
        detectors__warmup_events=20,
    )
    s.create_topics()
    s.start_worker()
    url = worker_url(s)
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    ready = wait_until(
        lambda: (r := httpx.get(url + "/readyz", timeout=10)).status_code == 200 and r.json(),
        what="/readyz 200",
    )
    assert ready["ready"] is True
    assert ready["assigned"][s.cfg.topics.events] == list(range(s.cfg.topics.partitions))

    now = int(time.time() * 1000)
    start = now - 2 * 3600 * 1000
    # Twenty minutes of one steady machine (past its warm-up), then a fan-out: a page.
    history = steady(
        MACHINE, ["postgres://db/public.a", "postgres://db/public.b"], start, 1200, 10_000
    )
    attack = fan_out(MACHINE, start + 1_200_000, n=6)
    other = steady("cron-runner", ["s3://reports/daily/x"], start, 600, 60_000)
    valid = history + attack + other
    poison: list[bytes] = [b"\x07not-a-wire-format", b"{broken json", b""]
    messages: list[tuple[bytes | None, bytes]] = [
        (e["machine_id"].encode(), avro(e)) for e in valid
    ]
    # The same events again: duplicates, not archived twice.
    messages += [(e["machine_id"].encode(), avro(e)) for e in history[:5]]
    messages += [(b"poison", v) for v in poison]
    send(s, messages)

    samples = wait_until(
        lambda: (
            (m := scrape(url))
            and value(m, "auditwatch_events_in_total") == len(messages)
            and value(m, "auditwatch_processing_latency_seconds_count", stage="detect")
            == len(valid)
            and m
        ),
        timeout=120,
        what="every message counted",
    )
    assert value(samples, "auditwatch_archived_total") == len(valid)
    assert value(samples, "auditwatch_duplicates_total") == 5
    for reason in ("bad_magic_byte", "json_decode_error", "empty_value"):
        assert value(samples, "auditwatch_deadlettered_total", reason=reason) == 1, reason
    pages = {
        labels: v
        for (name, labels), v in samples.items()
        if name == "auditwatch_pages_total" and v > 0
    }
    assert any(dict(labels)["detector"] == "new_resource" for labels in pages), pages
    assert value(samples, "auditwatch_alert_states_total", status="opened") >= 1
    # Every message's latency observed once, in its stage's histogram.
    assert value(samples, "auditwatch_processing_latency_seconds_count", stage="ingest") == len(
        messages
    )
    assert value(
        samples, "auditwatch_processing_latency_seconds_bucket", stage="ingest", le="+Inf"
    ) == len(messages)
    assert value(samples, "auditwatch_machines_tracked") == 2
    assert (value(samples, "auditwatch_state_bytes") or 0) > 0
    assert value(samples, "auditwatch_ready") == 1
    assert value(samples, "auditwatch_control_reader_healthy") == 1
    # One task per input partition, no rewinds. The messages were placed by librdkafka's
    # default partitioner (CRC32), not murmur2 of the machine: most went through the
    # repartition topic, once each.
    assert value(samples, "auditwatch_runtime_partitions") == s.cfg.topics.partitions
    assert value(samples, "auditwatch_runtime_rewinds_total") == 0
    assert 0 < (value(samples, "auditwatch_forwarded_total") or 0) <= len(valid) + 5
    # Lag from librdkafka's statistics: zero once everything is committed.
    events = s.cfg.topics.events

    def input_lag() -> list[float]:
        m = scrape(url)
        return [
            v
            for (n, lb), v in m.items()
            if n == "auditwatch_consumer_lag" and dict(lb)["topic"] == events
        ]

    wait_until(
        lambda: (lag := input_lag()) and all(v == 0 for v in lag),
        timeout=60,
        what="input consumer lag reported, and 0",
    )

    resp = httpx.get(f"{url}/machines/{MACHINE}", timeout=20)
    assert resp.status_code == 200, resp.text
    explained = resp.json()
    assert explained["found"] and explained["machine_id"] == MACHINE
    assert explained["events"] == len(history) + len(attack)
    assert explained["warmup"]["own"] is True
    assert {r["resource"] for r in explained["resources"]["recent"]} >= {"postgres://db/public.a"}
    assert "new_resource" in {a["detector"] for a in explained["open_alerts"]}
    assert httpx.get(url + "/machines/never-seen", timeout=20).status_code == 404
    # `auditwatch explain` asks the same endpoint (a dead worker first: it tries the next).
    capsys.readouterr()
    assert (
        cli.main(["explain", MACHINE, "--url", "http://127.0.0.1:9", "--url", url, "--json"]) == 0
    )
    by_cli = orjson.loads(capsys.readouterr().out)
    assert by_cli["events"] == explained["events"] and by_cli["partition"] == explained["partition"]
    assert httpx.get(url + "/nothing-here", timeout=10).status_code == 404

    # Structured logs: one JSON object a line, dead letters with topic/partition/offset.
    lines = [
        orjson.loads(line)
        for line in (s.root / "worker-0.log").read_text().splitlines()
        if line.startswith("{")
    ]
    dead = [x for x in lines if x["message"].startswith("dead letter")]
    assert len(dead) == len(poison)
    assert all(x["topic"] == events and x["offset"] is not None for x in dead)
    assert all(f"{events}[{x['partition']}]@{x['offset']}" == x["origin"] for x in dead)


@pytest.mark.timeout(900)  # workers start and drain on a shared 2-core box
def test_input_quiet_raises_and_resolves_its_own_alert(stack: Any) -> None:
    s: Stack = stack(
        http__port=0,
        monitoring__stats_interval_s=1,
        monitoring__input_quiet_s=3,
        monitoring__input_check_interval_s=0.5,
    )
    s.create_topics()
    s.start_worker()
    url = worker_url(s)
    now = int(time.time() * 1000)
    send(s, [(b"m-1", avro(e)) for e in steady("m-1", ["s3://b/k"], now - 60_000, 5)])

    def quiet_states() -> list[dict[str, Any]]:
        alerts = [orjson.loads(m.value()) for m in s.read("alerts")]
        return [a for a in alerts if a["detector"] == "auditwatch_input_quiet"]

    opened = wait_until(quiet_states, timeout=60, what="input-quiet alert")
    assert opened[0]["status"] == "opened" and opened[0]["machine_id"] == "auditwatch"
    assert opened[0]["severity"] == "high"
    assert opened[0]["observed"]["topic"] == s.cfg.topics.events
    assert value(scrape(url), "auditwatch_input_quiet") == 1

    first = opened[0]["alert_id"]
    send(s, [(b"m-1", avro(e)) for e in steady("m-1", ["s3://b/k"], now - 30_000, 2, prefix="x")])
    # The input goes quiet again 3 s later (a new episode, a new alert id): follow the first.
    states = wait_until(
        lambda: (
            (q := [a for a in quiet_states() if a["alert_id"] == first])
            and q[-1]["status"] == "resolved"
            and q
        ),
        timeout=60,
        what="input-quiet alert resolved",
    )
    # Each state written once (one worker: it owns input partition 0).
    assert [a["status"] for a in states] == ["opened", "resolved"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(s: Stack, clock: _Clock, **kwargs: Any) -> InputWatch:
    t = Telemetry(s.cfg, Processor(s.cfg, BundledSchemas()))
    watch = InputWatch(s.cfg, t, lambda: "v1", clock=clock, **kwargs)
    watch._producer = Producer({**s.cfg.kafka.client_config(), "enable.idempotence": True})
    return watch


def _quiet_states(s: Stack, alert_id: str) -> list[str]:
    return [
        orjson.loads(m.value())["status"] for m in s.read("alerts") if m.key() == alert_id.encode()
    ]


def test_input_quiet_state_is_kept_until_the_broker_takes_it(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    s: Stack = stack(monitoring__input_quiet_s=1)
    s.create_topics()
    clock = _Clock()
    watch = _watch(s, clock)
    good = watch._producer
    with socket.socket() as sock:  # a port nothing listens on: every delivery fails
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    watch._producer = Producer(
        {"bootstrap.servers": f"127.0.0.1:{port}", "message.timeout.ms": 500}
    )
    watch.observe(7, owner=True)
    clock.now += 2
    opened = watch.observe(7, owner=True)
    assert opened is not None
    caplog.set_level(logging.ERROR, logger="auditwatch.metrics")
    watch._write(opened)  # flush returns once librdkafka gives up on the message
    assert [i.state for i in watch.outbox] == ["failed"]
    assert any("not written" in r.getMessage() for r in caplog.records)
    assert not watch.telemetry.watch_pages  # not counted as paged: nobody was paged
    # The next check produces it again, to a broker that takes it.
    watch._producer = good
    watch.send()
    assert not watch.outbox
    assert watch.telemetry.watch_pages[(INPUT_QUIET, "high")] == 1
    assert _quiet_states(s, opened.alert_id) == ["opened"]


def test_input_quiet_alert_survives_a_restart_without_a_second_page(stack: Any) -> None:
    s: Stack = stack(monitoring__input_quiet_s=1)
    s.create_topics()
    now = int(time.time() * 1000)
    events = steady("m-1", ["s3://b/k"], now - 60_000, 4)
    send(s, [(b"m-1", avro(e)) for e in events])
    ends = len(events)  # a fresh topic: its end offsets sum to the records sent

    def recall(alert_id: str) -> str | None:
        return last_alert_status(s.cfg, alert_id)

    clock = _Clock()
    first = _watch(s, clock, recall=recall)
    first.observe(ends, owner=True)
    clock.now += 2
    opened = first.observe(ends, owner=True)
    assert opened is not None
    first._write(opened)
    assert not first.outbox

    # The worker restarts while the input is still quiet: the new watch finds its alert open.
    clock.now += 60
    second = _watch(s, clock, recall=recall)
    second.observe(ends, owner=True)
    clock.now += 2
    assert second.observe(ends, owner=True) is None
    assert second.open_alert is not None and second.open_alert.alert_id == opened.alert_id
    assert second.telemetry.input_quiet
    # And resolves it when records arrive again.
    resolved = second.observe(ends + 1, owner=True)
    assert resolved is not None and resolved.alert_id == opened.alert_id
    second._write(resolved)
    assert _quiet_states(s, opened.alert_id) == ["opened", "resolved"]
    # A new quiet spell at the new end offsets is a new alert, opened (nothing to adopt).
    clock.now += 2
    again = second.observe(ends + 1, owner=True)
    assert again is not None and again.status == "opened" and again.alert_id != opened.alert_id
