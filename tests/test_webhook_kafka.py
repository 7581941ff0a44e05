"""The webhook sink on the real broker, against a local HTTP server that fails some requests:
retries, idempotency keys, dead letters, offsets committed only after delivery."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.codec import decode_wire
from streams.cli import main
from streams.config import WebhookSettings
from streams.reading import group_lag
from streams.webhook import idempotency_key, run_webhook, slack_text
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
            if self.path == "/flaky" and n % 3 == 0:
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
    thread = threading.Thread(target=lambda: stats.update(run_webhook(s.cfg, settings, stop)))
    thread.start()
    return stop, thread, stats


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
    wait_until(
        lambda: len(receiver.accepted_keys()) >= len(WANTED), what="every wanted alert delivered"
    )
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
    wait_until(lambda: len(dead_letters(s)) >= len(WANTED), what="a dead letter per alert")
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
        assert "after 3 attempt(s) to " + base in d["message"]
        assert "/down" not in d["message"]  # webhook URL paths can carry tokens
        assert orjson.loads(d["value"])["alert_id"] == d["event_id"] == d["key"].decode()
        assert d["offset"] is not None
    assert group_lag(s.cfg, "hook-down", s.cfg.topics.alerts) == 0

    # A refusal (4xx) is not retried.
    stop, thread, stats = sink(s, base + "/bad", "hook-bad", attempts=5)
    wait_until(lambda: len(dead_letters(s)) >= 2 * len(WANTED), what="dead letters after a 400")
    stop.set()
    thread.join(30)
    assert receiver.requests["/bad"] == len(WANTED)
    assert stats["dead_lettered"] == len(WANTED)


def test_webhook_command_needs_a_valid_url(capsys: Any) -> None:
    assert main(["webhook"]) == 2
    assert "no webhook URL" in capsys.readouterr().err
    assert main(["webhook", "--url", "ftp://example.com/x"]) == 2
    assert "must start with http:// or https://" in capsys.readouterr().err
    assert main(["webhook", "--url", "http://x", "--statuses", "opened,closed"]) == 2
    assert "statuses" in capsys.readouterr().err
