"""The telemetry pieces without Kafka: histogram, librdkafka statistics, the input-quiet
episode logic, the HTTP endpoint's behaviour when the worker cannot answer, log formats, and
SIGHUP during startup."""

from __future__ import annotations

import io
import logging
import threading
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import BundledSchemas
from streams.ops import logs
from streams.ops.config import Config, ConfigError, load_config
from streams.ops.logs import JsonFormatter, OriginFilter, TextFormatter
from streams.ops.metrics import INPUT_QUIET, HttpServer, InputWatch, KafkaStats, Telemetry
from streams.processor import Processor


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    from streams.ops.metrics import Histogram

    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    buckets, total = h.snapshot()
    # le is inclusive: 0.1 belongs to the 0.1 bucket, 1.0 to the 1.0 bucket.
    assert buckets == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert total == pytest.approx(8.65)


STATS = {
    "brokers": {
        "127.0.0.1:9092/1": {"nodeid": 1, "state": "UP"},
        "GroupCoordinator": {"nodeid": -1, "state": "UP"},
    },
    "cgrp": {"state": "up", "join_state": "steady"},
    "topics": {
        "in": {
            "partitions": {
                "0": {"partition": 0, "fetch_state": "active", "consumer_lag": 7},
                "1": {"partition": 1, "fetch_state": "none", "consumer_lag": -1},
                "2": {"partition": 2, "fetch_state": "active", "consumer_lag": -1},
                "-1": {"partition": -1, "fetch_state": "none", "consumer_lag": -1},
            }
        },
        "in-changelog": {
            "partitions": {"0": {"partition": 0, "fetch_state": "active", "consumer_lag": 3}}
        },
    },
}


def test_kafka_stats_report_only_owned_input_partitions() -> None:
    s = KafkaStats.parse(orjson.dumps(STATS), ["in", "detect"])
    assert s.brokers_up == 1  # the coordinator alias is not a broker of its own
    assert s.group_joined
    assert s.assigned == {"in": (0, 2), "detect": ()}
    # Partition 2 has nothing committed yet: its lag is unknown, not 0.
    assert s.lag == {("in", 0): 7}


def processor() -> Processor:
    return Processor(Config(), BundledSchemas())


def test_readiness_needs_the_loop_a_broker_and_the_group() -> None:
    t = Telemetry(Config(), processor())
    ready, body = t.readiness()
    assert not ready and body["checks"] == {
        "processing": False,
        "broker_reachable": False,
        "group_joined": False,
    }
    t.on_stats(orjson.dumps(STATS).decode())
    t.tick(lambda _m, _g, _top: None)
    assert t.readiness()[0]
    rebalancing = {**STATS, "cgrp": {"state": "up", "join_state": "wait-assign-call"}}
    t.on_stats(orjson.dumps(rebalancing).decode())
    ready, body = t.readiness()
    assert not ready and body["checks"]["group_joined"] is False
    # Garbage from the callback is logged, never raised into librdkafka's poll.
    t.on_stats("not json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_input_watch_opens_once_and_resolves_with_the_same_id() -> None:
    cfg = load_config(None, {"monitoring.input_quiet_s": 60})
    t = Telemetry(cfg, processor())
    clock = Clock()
    watch = InputWatch(cfg, t, lambda: "v1", clock=clock, wall_ms=lambda: int(clock.now * 1000))
    assert watch.observe(100, owner=True) is None
    clock.now += 59
    assert watch.observe(100, owner=True) is None and not t.input_quiet
    clock.now += 1
    opened = watch.observe(100, owner=True)
    assert opened is not None and opened.status == "opened" and opened.is_page
    assert opened.detector == INPUT_QUIET and opened.machine_id == "auditwatch"
    assert opened.observed["quiet_s"] == 60 and "60 seconds" in opened.summary
    assert t.input_quiet and t.input_idle_s == 60
    clock.now += 600
    assert watch.observe(100, owner=True) is None  # no repeat while it stays quiet
    resolved = watch.observe(105, owner=True)
    assert resolved is not None and resolved.status == "resolved"
    assert resolved.alert_id == opened.alert_id
    assert not t.input_quiet

    # Another worker (not the owner of input partition 0) measures but does not write.
    other = InputWatch(cfg, Telemetry(cfg, processor()), lambda: "v1", clock=clock)
    other.observe(200, owner=False)
    clock.now += 61
    assert other.observe(200, owner=False) is None and other.telemetry.input_quiet
    # Once it owns partition 0 it writes, with the id any worker would compute.
    again = other.observe(200, owner=True)
    twin = InputWatch(cfg, t, lambda: "v1", clock=clock)
    twin.observe(200, owner=True)
    clock.now += 61
    same = twin.observe(200, owner=True)
    assert again is not None and same is not None and again.alert_id == same.alert_id


def test_input_watch_off_at_zero() -> None:
    cfg = load_config(None, {"monitoring.input_quiet_s": 0})
    clock = Clock()
    watch = InputWatch(cfg, Telemetry(cfg, processor()), lambda: "v1", clock=clock)
    watch.observe(1, owner=True)
    clock.now += 10**6
    assert watch.observe(1, owner=True) is None


def test_http_endpoint_without_a_running_worker() -> None:
    t = Telemetry(Config(), processor())
    t.processor.metrics["events_in"] += 3
    t.processor.metrics["deadlettered.oversize"] += 1
    server = HttpServer(t, "127.0.0.1", 0)
    server.server.RequestHandlerClass.explain_timeout_s = 0.2  # type: ignore[attr-defined]
    host, port = server.start()
    url = f"http://{host}:{port}"
    try:
        families = {
            f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        }
        assert families["auditwatch_events_in"].samples[0].value == 3
        (dead,) = families["auditwatch_deadlettered"].samples
        assert dead.labels == {"reason": "oversize"} and dead.value == 1
        assert "process_cpu_seconds" in families
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        assert httpx.get(url + "/readyz").status_code == 503
        # Nobody serves explain requests: a clear 503, not a hang.
        resp = httpx.get(url + "/machines/x")
        assert resp.status_code == 503 and "did not answer" in resp.json()["error"]
        assert httpx.get(url + "/").status_code == 404
    finally:
        server.stop()


def test_explain_requests_reach_the_processing_thread_decoded() -> None:
    t = Telemetry(Config(), processor())
    server = HttpServer(t, "127.0.0.1", 0)
    host, port = server.start()
    seen: list[tuple[str, str | None, int]] = []

    def answer(machine: str, group: str | None, top: int) -> dict[str, Any]:
        seen.append((machine, group, top))
        return {"found": True, "machine_id": machine}

    import threading

    stop = threading.Event()

    def loop() -> None:  # stands in for Quix's main loop
        while not stop.is_set():
            t.tick(answer)
            stop.wait(0.01)

    threading.Thread(target=loop, daemon=True).start()
    try:
        machine = "arn:aws:iam::123:role/ci runner"
        resp = httpx.get(
            f"http://{host}:{port}/machines/arn%3Aaws%3Aiam%3A%3A123%3Arole%2Fci%20runner",
            params={"group": "ci"},
        )
        assert resp.status_code == 200 and resp.json()["machine_id"] == machine
        assert seen == [(machine, "ci", 20)]
        resp = httpx.get(f"http://{host}:{port}/machines/m-1", params={"top": "3"})
        assert resp.status_code == 200 and seen[-1] == ("m-1", None, 3)
        for bad in ("0", "many", "-2"):
            resp = httpx.get(f"http://{host}:{port}/machines/m-1", params={"top": bad})
            assert resp.status_code == 400 and f"top={bad!r}" in resp.json()["error"]
        assert len(seen) == 2  # bad requests never reach the processing thread
    finally:
        stop.set()
        server.stop()


def test_http_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"http\.port = 70000"):
        load_config(None, {"http.port": 70000})
    with pytest.raises(ConfigError, match=r"monitoring\.stats_interval_s"):
        load_config(None, {"monitoring.stats_interval_s": 0})
    with pytest.raises(ConfigError, match=r"http\.bind: unknown key"):
        load_config(None, {"http.bind": "x"})


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("auditwatch.x", level, __file__, 1, msg, (), exc_info)


def test_logs_carry_the_kafka_origin_of_the_message_being_processed() -> None:
    filt = OriginFilter()
    outside = record(logging.ERROR, "no message")
    filt.filter(outside)
    assert outside.kafka_origin is None  # type: ignore[attr-defined]
    assert "origin" not in orjson.loads(JsonFormatter().format(outside))

    msg = SimpleNamespace(topic=lambda: "audit.events", partition=lambda: 3, offset=lambda: 42)
    logs.CURRENT.thread, logs.CURRENT.message = threading.get_ident(), msg
    try:
        r = record(logging.ERROR, "detection failed", exc=True)
        filt.filter(r)
        # Another thread (the HTTP server's) is not processing that message.
        elsewhere: list[logging.LogRecord] = []
        t = threading.Thread(
            target=lambda: (
                elsewhere.append(record(logging.ERROR, "scrape")) or filt.filter(elsewhere[0])
            )
        )
        t.start()
        t.join()
        assert elsewhere[0].kafka_origin is None  # type: ignore[attr-defined]
    finally:
        logs.CURRENT.thread, logs.CURRENT.message = None, None
    line = orjson.loads(JsonFormatter().format(r))
    assert line["origin"] == "audit.events[3]@42"
    assert (line["topic"], line["partition"], line["offset"]) == ("audit.events", 3, 42)
    assert line["level"] == "ERROR" and line["logger"] == "auditwatch.x"
    assert "ValueError: boom" in line["exception"]
    assert line["time"].endswith("+00:00")
    text = TextFormatter().format(r)
    assert text.splitlines()[0].endswith("detection failed (at audit.events[3]@42)")


def test_cli_log_format_json(capsys: pytest.CaptureFixture[str]) -> None:
    from streams.ops import logs

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        logs.setup_logging("INFO", "json")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("auditwatch.test").warning("hello %s", "world")
        assert orjson.loads(stream.getvalue())["message"] == "hello world"
        # A second setup replaces ours instead of adding a second handler.
        logs.setup_logging("INFO", "text")
        assert len(root.handlers) == 1
    finally:
        root.handlers = saved


def test_librdkafka_logs_go_through_our_logger(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client built from client_config logs through Python logging (and so in the worker's
    `--log-format`), not as librdkafka's own `%3|...` lines on stderr."""
    import socket

    from confluent_kafka import Consumer

    from tests.conftest import wait_until

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = Config.model_validate({"kafka": {"bootstrap_servers": f"127.0.0.1:{port}"}})
    caplog.set_level(logging.WARNING, logger="auditwatch.librdkafka")
    consumer = Consumer({**cfg.kafka.client_config(), "group.id": "log-test"})
    try:
        records = wait_until(
            lambda: (
                consumer.poll(0.2) is None
                and [r for r in caplog.records if r.name == "auditwatch.librdkafka"]
            ),
            timeout=30,
            what="a librdkafka connection error logged through Python logging",
        )
    finally:
        consumer.close()
    assert any(f"127.0.0.1:{port}" in r.getMessage() for r in records)
    line = orjson.loads(JsonFormatter().format(records[0]))
    assert line["logger"] == "auditwatch.librdkafka" and line["level"] in {"ERROR", "WARNING"}
    assert "|rdkafka#" not in capfd.readouterr().err


def test_sighup_during_startup_is_queued_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() takes SIGHUP before its first broker call; a reload asked for before the
    reloader exists reaches it once it does, and the previous handler comes back."""
    import os
    import signal

    from streams.runtime import run as app
    from tests.conftest import wait_until

    class Reloader:
        requests = 0

        def request(self) -> None:
            self.requests += 1

    seen: list[Any] = []

    def ensure_topics(_cfg: Config) -> Any:
        handler = signal.getsignal(signal.SIGHUP)
        assert isinstance(handler, app._HupRoute)
        seen.append(handler)
        os.kill(os.getpid(), signal.SIGHUP)  # the default action would end pytest here
        wait_until(lambda: handler.pending, timeout=10, what="the SIGHUP to be queued")
        raise RuntimeError("stop after the first startup step")

    monkeypatch.setattr(app, "ensure_topics", ensure_topics)
    before = signal.getsignal(signal.SIGHUP)
    with pytest.raises(RuntimeError, match="first startup step"):
        app.run(Config(), config_path="unused.yaml")
    assert signal.getsignal(signal.SIGHUP) is before
    reloader = Reloader()
    seen[0].attach(reloader)
    assert reloader.requests == 1 and not seen[0].pending
    seen[0](signal.SIGHUP, None)
    assert reloader.requests == 2


def test_runtime_figures_are_scraped() -> None:
    worker = SimpleNamespace(tasks={0: None, 5: None}, rewinds=3, restores=9)
    t = Telemetry(Config(), processor())
    t.worker = worker
    families = {f.name: f for f in text_string_to_metric_families(t.scrape().decode())}
    assert families["auditwatch_runtime_partitions"].samples[0].value == 2
    assert families["auditwatch_runtime_rewinds"].samples[0].value == 3
    assert families["auditwatch_runtime_restores"].samples[0].value == 9
    # Without a worker (tools, tests): nothing about it.
    plain = Telemetry(Config(), processor()).scrape().decode()
    assert "auditwatch_runtime_" not in plain
