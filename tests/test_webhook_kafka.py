"""The webhook sink on the real broker, against a local HTTP server that fails some requests:
retries, idempotency keys, dead letters, offsets committed only after delivery."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from pydantic import ValidationError

from schemas.codec import decode_wire
from streams.cli.main import main
from streams.cli.webhook import (
    WebhookSender,
    consumer_config,
    idempotency_key,
    retry_after_s,
    run_webhook,
    slack_text,
)
from streams.ops.config import WebhookSettings, load_config, worst_case_delivery_s
from streams.tools.reading import group_lag
from tests.conftest import Stack, wait_until


class Receiver:
    """What the server saw: every request per path, and the bodies it accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.accepted: list[tuple[str, dict[str, Any]]] = []

    def accepted_keys(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.accepted]


def handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                receiver.requests[self.path] += 1
                n = receiver.requests[self.path]
            if self.path == "/later":
                self.send_response(503)
                later = formatdate(time.time() + 120, usegmt=True)
                self.send_header("Retry-After", later)
                self.end_headers()
            elif self.path == "/flaky" and n % 3 == 0:
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.end_headers()
            elif self.path == "/flaky" and n % 4 == 0:
                # Hang up without an answer: a connection error for the client.
                self.close_connection = True
                self.connection.close()
            elif self.path == "/flaky":
                with receiver.lock:
                    receiver.accepted.append((self.headers["Idempotency-Key"], orjson.loads(body)))
                self.send_response(200)
                self.end_headers()
            else:
                self.send_response(400 if self.path == "/bad" else 500)
                self.end_headers()

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(receiver))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", receiver
    finally:
        httpd.shutdown()
        httpd.server_close()


def alert(i: int, status: str, severity: str) -> dict[str, Any]:
    return {
        "alert_id": f"a-{i:024x}",
        "status": status,
        "machine_id": f"payments-api-{i}",
        "group": "payments-api",
        "detector": "new_resource",
        "severity": severity,
        "score": 72.0,
        "event_time": "2026-01-01T03:00:00.000Z",
        "summary": f"payments-api-{i} accessed 3 resources new to it within 5 minutes.",
        "observed": {"new_resources_in_window": 3},
        "expected": {"new_resources_in_window": 0, "baseline": "resources used"},
        "event_ids": [f"e{i}"],
        "config_version": "abc123",
        "first_event_time": "2026-01-01T02:59:00.000Z",
        "last_event_time": "2026-01-01T03:00:00.000Z",
        "repeat_count": i + 1,
        "hint": "Check whether a deploy gave it this access.",
        "acknowledged_by": None,
        "snoozed_until": None,
    }


WANTED = [
    alert(0, "opened", "medium"),
    alert(1, "opened", "high"),
    alert(2, "escalated", "critical"),
    alert(3, "resolved", "medium"),
    alert(4, "opened", "critical"),
    alert(5, "escalated", "high"),
]
UNWANTED = [alert(6, "updated", "high"), alert(7, "opened", "low"), alert(8, "resolved", "info")]


def produce_alerts(s: Stack) -> None:
    producer = Producer(s.cfg.kafka.client_config())
    for a in WANTED + UNWANTED:
        producer.produce(s.cfg.topics.alerts, key=a["alert_id"].encode(), value=orjson.dumps(a))
    assert producer.flush(30) == 0


def sink(s: Stack, url: str, group: str, attempts: int) -> tuple[threading.Event, Any, Counter]:
    settings = WebhookSettings.model_validate(
        {
            "url": url,
            "consumer_group": group,
            "max_attempts": attempts,
            "backoff_s": 0.01,
            "max_backoff_s": 0.05,
            "timeout_s": 5,
        }
    )
    stop = threading.Event()
    stats: Counter[str] = Counter()
    # run_webhook keeps `stats` current, so a test can wait until every record is handled.
    thread = threading.Thread(target=run_webhook, args=(s.cfg, settings, stop, stats))
    thread.start()
    return stop, thread, stats


def handled(stats: Counter[str]) -> int:
    return stats["delivered"] + stats["dead_lettered"] + stats["skipped"]


ALL = len(WANTED) + len(UNWANTED)


def dead_letters(s: Stack) -> list[dict[str, Any]]:
    return [decode_wire(m.value(), "dead_letter") for m in s.read("deadletter")]


@pytest.mark.kafka
def test_webhook_delivers_through_a_flaky_server_and_dead_letters_what_never_gets_through(
    stack: Any, server: tuple[str, Receiver]
) -> None:
    base, receiver = server
    s: Stack = stack(topics__partitions=2)
    s.create_topics()
    produce_alerts(s)

    stop, thread, stats = sink(s, base + "/flaky", "hook-flaky", attempts=5)
    # Unwanted states may come after the last wanted one: wait for all of them to be handled.
    wait_until(lambda: handled(stats) >= ALL, what="every alert state handled")
    stop.set()
    thread.join(30)
    # Each wanted state delivered once, under its idempotency key; nothing else sent.
    assert sorted(receiver.accepted_keys()) == sorted(idempotency_key(a) for a in WANTED)
    assert idempotency_key(WANTED[2]) == f"{WANTED[2]['alert_id']}:escalated:3"
    for key, body in receiver.accepted:
        [original] = [a for a in WANTED if idempotency_key(a) == key]
        assert body == {**original, "text": slack_text(original)}
        assert original["summary"] in body["text"] and original["machine_id"] in body["text"]
    # The server failed some requests; they were retried, not lost.
    assert receiver.requests["/flaky"] > len(WANTED)
    assert stats["delivered"] == len(WANTED) and stats["skipped"] == len(UNWANTED)
    assert stats["attempts"] == receiver.requests["/flaky"]
    assert stats["dead_lettered"] == 0 and dead_letters(s) == []
    assert group_lag(s.cfg, "hook-flaky", s.cfg.topics.alerts) == 0

    # An endpoint that always fails: bounded retries, then a dead letter each, and on.
    stop, thread, stats = sink(s, base + "/down", "hook-down", attempts=3)
    wait_until(lambda: handled(stats) >= ALL, what="a dead letter per wanted alert")
    stop.set()
    thread.join(30)
    assert receiver.requests["/down"] == 3 * len(WANTED)
    letters = dead_letters(s)
    assert sorted(d["key"] for d in letters) == sorted(a["alert_id"].encode() for a in WANTED)
    for d in letters:
        assert (d["reason"], d["stage"], d["topic"]) == (
            "webhook_failed",
            "webhook",
            s.cfg.topics.alerts,
        )
        assert d["message"].startswith("webhook_failed: HTTP 500")
        # The path tells endpoints apart; token-like parts of it are masked (test_broker_errors).
        assert d["message"].endswith("after 3 attempt(s) to " + base + "/down")
        assert orjson.loads(d["value"])["alert_id"] == d["event_id"] == d["key"].decode()
        assert d["offset"] is not None
    assert group_lag(s.cfg, "hook-down", s.cfg.topics.alerts) == 0

    # A refusal (4xx) is not retried.
    stop, thread, stats = sink(s, base + "/bad", "hook-bad", attempts=5)
    wait_until(lambda: handled(stats) >= ALL, what="dead letters after a 400")
    stop.set()
    thread.join(30)
    assert receiver.requests["/bad"] == len(WANTED)
    assert stats["dead_lettered"] == len(WANTED) and stats["skipped"] == len(UNWANTED)
    assert len(dead_letters(s)) == 2 * len(WANTED)


def test_webhook_command_needs_a_valid_url(capsys: Any) -> None:
    assert main(["webhook"]) == 2
    assert "no webhook URL" in capsys.readouterr().err
    assert main(["webhook", "--url", "ftp://example.com/x"]) == 2
    assert "must start with http:// or https://" in capsys.readouterr().err
    assert main(["webhook", "--url", "http://x", "--statuses", "opened,closed"]) == 2
    assert "statuses" in capsys.readouterr().err


# --- retries, Retry-After, unusable URLs, poll interval (no broker) ----------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert retry_after_s("120", now) == 120.0
    assert retry_after_s(" 7 ", now) == 7.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after_s("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0  # already past
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_an_http_date_retry_after_sets_the_pause(server: tuple[str, Receiver]) -> None:
    base, receiver = server
    pauses: list[float] = []
    sender = WebhookSender(
        base + "/later",
        max_attempts=2,
        backoff_s=0.01,
        max_backoff_s=600,
        wait=lambda p: bool(pauses.append(p)),
    )
    delivery = sender.post(b"{}", "k")
    assert delivery is not None and not delivery.ok
    assert delivery.attempts == 2 and receiver.requests["/later"] == 2
    # The server asked for about 120 s (HTTP dates have whole seconds).
    assert len(pauses) == 1 and 110 < pauses[0] <= 121


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1:notaport/hook", "InvalidURL"),
        ("http://exa mple.com/hook", "InvalidURL"),
        ("http://[::1/hook", "ValueError"),
    ],
)
def test_an_unusable_url_is_a_permanent_failure_not_a_crash(url: str, error: str) -> None:
    pauses: list[float] = []
    sender = WebhookSender(url, max_attempts=5, wait=lambda p: bool(pauses.append(p)))
    delivery = sender.post(b"{}", "k")
    assert delivery is not None and (delivery.ok, delivery.attempts) == (False, 1)
    assert delivery.detail.startswith(f"unusable URL: {error}") and pauses == []


@pytest.mark.parametrize("url", ["http://[::1/hook", "http://h:99999/x", "https:///x"])
def test_the_config_refuses_urls_that_cannot_be_parsed(url: str) -> None:
    with pytest.raises(ValidationError, match="url"):
        WebhookSettings.model_validate({"url": url})


def test_the_sink_polls_often_enough_for_its_worst_case_retries() -> None:
    cfg = load_config(None)
    default = WebhookSettings.model_validate({"url": "http://x"})
    # 5 x 10 s + 4 x 30 s fits librdkafka's default 300 s, which is kept.
    assert consumer_config(cfg, default)["max.poll.interval.ms"] == 300_000
    slow = WebhookSettings.model_validate(
        {"url": "http://x", "max_attempts": 100, "timeout_s": 300, "max_backoff_s": 30}
    )
    assert worst_case_delivery_s(slow) == 100 * 300 + 99 * 30
    assert consumer_config(cfg, slow)["max.poll.interval.ms"] == (100 * 300 + 99 * 30 + 60) * 1000
    # A larger configured value is never lowered.
    assert (
        consumer_config(
            load_config(None, {"kafka.librdkafka": {"max.poll.interval.ms": 3_600_000}}), default
        )["max.poll.interval.ms"]
        == 3_600_000
    )


def test_retries_longer_than_any_poll_interval_are_refused() -> None:
    with pytest.raises(ValidationError, match="max_attempts 100 x timeout_s 300"):
        WebhookSettings.model_validate(
            {"max_attempts": 100, "timeout_s": 300, "max_backoff_s": 3600}
        )
    # 100 x 300 s with the default backoffs fits (the sink raises its poll interval).
    WebhookSettings.model_validate({"max_attempts": 100, "timeout_s": 300})


def test_a_state_written_again_after_a_restart_is_delivered_once(
    stack: Any, server: tuple[str, Receiver]
) -> None:
    # A worker that re-processes after a crash (at-least-once) writes the same states again:
    # same alert id, status and sequence number. On-call gets each once.
    base, receiver = server
    s: Stack = stack(topics__partitions=2)
    s.create_topics()
    states = [{**a, "sequence": i + 1} for i, a in enumerate(WANTED)]
    producer = Producer(s.cfg.kafka.client_config())
    for a in states + states[2:]:
        producer.produce(s.cfg.topics.alerts, key=a["alert_id"].encode(), value=orjson.dumps(a))
    assert producer.flush(30) == 0
    stop, thread, stats = sink(s, base + "/flaky", "hook-repeats", attempts=5)
    wait_until(
        lambda: stats["delivered"] + stats["repeats"] >= len(states) + len(states[2:]),
        what="every state handled",
    )
    stop.set()
    thread.join(30)
    assert stats["delivered"] == len(states) and stats["repeats"] == len(states) - 2
    keys = receiver.accepted_keys()
    assert sorted(keys) == sorted(f"{a['alert_id']}:{a['status']}:{a['sequence']}" for a in states)
