"""`auditwatch webhook`: alert states from the alerts topic, POSTed to an HTTP endpoint.

Each selected alert state goes out as its JSON form plus a Slack-compatible `text` field, with
the header `Idempotency-Key: <alert_id>:<status>:<sequence>` so a receiver can drop the
copies that at-least-once delivery may repeat; the sink itself drops a state it has
delivered already (a worker that re-processed after a crash writes it again). Connection
errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff (or the
server's Retry-After, in seconds or as an HTTP date, up to `max_backoff_s`) up to
`max_attempts`; then, or at once for any other answer or an unusable URL, the alert state is
dead-lettered (reason `webhook_failed`, stage `webhook`) and the sink moves on (`auditwatch
deadletter redrive --stage webhook` sends such states to the alerts topic again once the
endpoint is fixed). Offsets are stored only after a delivery or a dead letter acknowledged by
the broker, so a crash re-sends rather than loses.

Retries happen between two polls of the consumer, so the sink's consumer gets a
`max.poll.interval.ms` longer than the worst case of one alert state's retries
(`worst_case_delivery_s`); otherwise a slow endpoint would get the sink evicted from its group.

The sink is its own consumer group: it never slows the processor, and several sinks (chat,
ticketing) can each read every alert.
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from confluent_kafka import Consumer, KafkaError, Producer

from schemas.alert import SEVERITIES, SEVERITY_RANK, Recent, check_state, state_identity
from schemas.codec import encode_dead_letter
from streams.ops.broker import wait_for_broker
from streams.ops.config import Config, WebhookSettings, worst_case_delivery_s

log = logging.getLogger("auditwatch.webhook")

_RETRY_STATUS = {408, 425, 429}
_DEFAULT_POLL_INTERVAL_MS = 300_000  # librdkafka's max.poll.interval.ms
_EMOJI = {
    "critical": ":red_circle:",
    "high": ":large_orange_circle:",
    "medium": ":large_yellow_circle:",
    "low": ":white_circle:",
    "info": ":white_circle:",
}


def retry_after_s(raw: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110);
    None when absent or unreadable, 0 for a date in the past."""
    if raw is None:
        return None
    text = raw.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    now_dt = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    return max(0.0, (when - now_dt).total_seconds())


def idempotency_key(alert: dict[str, Any]) -> str:
    seq = alert.get("sequence")
    if seq is None:  # states without an episode (storm roll-ups, input quiet)
        seq = alert.get("repeat_count") or 0
    return f"{alert['alert_id']}:{alert['status']}:{seq}"


def slack_text(a: dict[str, Any]) -> str:
    """The alert in a few lines of Slack mrkdwn (also readable as plain text)."""
    icon = ":white_check_mark:" if a["status"] == "resolved" else _EMOJI.get(a["severity"], "")
    lines = [
        f"{icon} *{a['severity'].upper()}* {a['status']}: {a['summary']}",
        f"machine `{a['machine_id']}` (group `{a['group']}`), detector `{a['detector']}`, "
        f"score {a['score']:.0f}",
    ]
    if a.get("first_event_time"):
        lines.append(
            f"events {a['first_event_time']} to {a.get('last_event_time')}, "
            f"{a.get('repeat_count') or 1} finding(s)"
        )
    if a.get("acknowledged_by"):
        lines.append(f"acknowledged by {a['acknowledged_by']}")
    if a.get("snoozed_until"):
        lines.append(f"snoozed until {a['snoozed_until']}")
    if a.get("hint") and a["status"] != "resolved":
        lines.append(f"what to check: {a['hint']}")
    incident = a.get("incident_id")
    part_of = f", incident `{incident}`" if incident and incident != a["alert_id"] else ""
    lines.append(f"alert `{a['alert_id']}`{part_of} (config {a.get('config_version')})")
    return "\n".join(lines)


def payload(alert: dict[str, Any]) -> bytes:
    return orjson.dumps({**alert, "text": slack_text(alert)})


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    attempts: int
    detail: str


class WebhookSender:
    """POSTs with bounded retries. `wait(seconds) -> bool` sleeps between attempts and
    returns True when the sink is stopping (the delivery is then abandoned, not failed)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        headers: dict[str, str] | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.headers = headers or {}
        self.wait = wait or _sleep
        self.where = describe_url(url)

    def _once(self, body: bytes, key: str) -> tuple[bool, bool, str, float | None]:
        """(delivered, worth retrying, detail, server's Retry-After)."""
        try:
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={
                    **self.headers,
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                    "User-Agent": "auditwatch-webhook",
                },
            )
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                return True, False, f"HTTP {response.status}", None
        except urllib.error.HTTPError as e:
            retry_after = retry_after_s(e.headers.get("Retry-After") if e.headers else None)
            e.close()
            retryable = e.code >= 500 or e.code in _RETRY_STATUS
            return False, retryable, f"HTTP {e.code} {e.reason}", retry_after
        except (http.client.InvalidURL, ValueError) as e:
            # A bad port, control characters, an unknown scheme: no retry can help.
            return False, False, f"unusable URL: {type(e).__name__}: {e}", None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, TimeoutError):
                return False, True, f"no answer within {self.timeout_s:g} s", None
            return False, True, f"{type(reason).__name__}: {reason}", None

    def post(self, body: bytes, key: str) -> Delivery | None:
        """Deliver `body`; None when the sink stopped while waiting to retry."""
        delay = self.backoff_s
        detail = ""
        for attempt in range(1, self.max_attempts + 1):
            ok, retryable, detail, retry_after = self._once(body, key)
            if ok:
                return Delivery(True, attempt, detail)
            if not retryable or attempt == self.max_attempts:
                return Delivery(False, attempt, detail)
            pause = min(self.max_backoff_s, max(delay, retry_after or 0.0))
            log.warning(
                "webhook %s: %s (attempt %d of %d); retrying in %.1f s",
                self.where,
                detail,
                attempt,
                self.max_attempts,
                pause,
            )
            if self.wait(pause):
                return None
            delay *= 2
        return Delivery(False, self.max_attempts, detail)


def describe_url(url: str) -> str:
    """The endpoint as logs and the summary name it: scheme, host, port and path, which tell
    one endpoint from another, without its secrets: credentials, the query string, and path
    parts that look like a token (chat webhooks carry theirs in the path, e.g. Slack's
    /services/T.../B.../<token>) keep only their first 4 characters."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparsable URL)"
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    path = "/".join(_mask_token(part) for part in parts.path.split("/"))
    return f"{parts.scheme}://{netloc}{path}" + ("?***" if parts.query else "")


def _mask_token(part: str) -> str:
    letters = any(c.isalpha() for c in part)
    digits = any(c.isdigit() for c in part)
    # Long and mixed (a token, a GUID), or very long whatever it is made of.
    if (len(part) >= 16 and letters and digits) or len(part) >= 40:
        return part[:4] + "***"
    return part


def wanted(alert: dict[str, Any], settings: WebhookSettings) -> bool:
    return (
        alert.get("status") in settings.statuses
        and SEVERITY_RANK.get(alert.get("severity", ""), -1) >= SEVERITY_RANK[settings.min_severity]
    )


def consumer_config(cfg: Config, settings: WebhookSettings) -> dict[str, Any]:
    """The sink's consumer settings. max.poll.interval.ms covers the worst case of one alert
    state's retries (they run between two polls) plus a minute, and is never lowered below
    the configured (or librdkafka's default 300 s) value."""
    base = cfg.kafka.client_config()
    configured = int(base.get("max.poll.interval.ms", _DEFAULT_POLL_INTERVAL_MS))
    needed = int((worst_case_delivery_s(settings) + 60) * 1000)
    return {
        **base,
        "group.id": settings.consumer_group,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # At-least-once: an offset is stored only once its alert state is delivered or
        # dead-lettered; the auto-commit then commits stored offsets only.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "max.poll.interval.ms": max(configured, needed),
    }


def run_webhook(
    cfg: Config,
    settings: WebhookSettings | None = None,
    stop: threading.Event | None = None,
    stats: Counter[str] | None = None,
) -> Counter[str]:
    """Consume the alerts topic and deliver until `stop` is set. Returns counts (kept up to
    date in `stats` when given, so a caller can watch progress): delivered, dead_lettered,
    skipped, attempts."""
    settings = settings or cfg.webhook
    if settings.url is None:
        raise ValueError("no webhook URL: give --url or webhook.url in the config")
    stop = stop or threading.Event()
    sender = WebhookSender(
        settings.url.get_secret_value(),
        timeout_s=settings.timeout_s,
        max_attempts=settings.max_attempts,
        backoff_s=settings.backoff_s,
        max_backoff_s=settings.max_backoff_s,
        headers={k: v.get_secret_value() for k, v in settings.headers.items()},
        wait=stop.wait,
    )
    stats = Counter() if stats is None else stats
    # A sink started before its broker (a restart of the whole deployment) waits for it.
    if not wait_for_broker(cfg, stop, "webhook"):
        return stats
    consumer = Consumer(consumer_config(cfg, settings))
    producer = Producer({**cfg.kafka.client_config(), "enable.idempotence": True})
    delivered = Recent()
    consumer.subscribe([cfg.topics.alerts])
    log.info(
        "webhook sink: %s -> %s (group %s, %s and above, states %s)",
        cfg.topics.alerts,
        sender.where,
        settings.consumer_group,
        settings.min_severity,
        ",".join(settings.statuses),
    )
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("reading %s: %s", cfg.topics.alerts, msg.error())
                continue
            if not _handle(cfg, msg, settings, sender, producer, stats, delivered):
                break  # stopping mid-retry: the offset stays, the state is sent next time
            consumer.store_offsets(message=msg)
    finally:
        # Closing commits the offsets stored so far.
        consumer.close()
        producer.flush(30)
    return stats


def _handle(
    cfg: Config,
    msg: Any,
    settings: WebhookSettings,
    sender: WebhookSender,
    producer: Producer,
    stats: Counter[str],
    delivered: Recent,
) -> bool:
    """Deliver or dead-letter one alert state; False if stopped before either."""
    try:
        alert = check_state(orjson.loads(msg.value()))
        key = idempotency_key(alert)
        body = payload(alert)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        _dead_letter(cfg, msg, producer, f"not an alert state: {e}", None)
        stats["dead_lettered"] += 1
        return True
    if not wanted(alert, settings):
        stats["skipped"] += 1
        return True
    identity = state_identity(alert, msg.value())
    if identity in delivered:
        stats["repeats"] += 1
        return True
    result = sender.post(body, key)
    if result is None:
        return False
    stats["attempts"] += result.attempts
    if result.ok:
        delivered.add(identity)
        stats["delivered"] += 1
        log.info("delivered %s (%s)", key, result.detail)
        return True
    detail = f"{result.detail} after {result.attempts} attempt(s) to {sender.where}"
    log.error("webhook failed for %s: %s; dead-lettered", key, detail)
    _dead_letter(cfg, msg, producer, detail, alert.get("alert_id"))
    stats["dead_lettered"] += 1
    return True


def _dead_letter(
    cfg: Config, msg: Any, producer: Producer, detail: str, alert_id: str | None
) -> None:
    """Write the alert state to the dead-letter topic and wait for the broker: its offset is
    stored right after, so the dead letter must exist first."""
    errors: list[str] = []
    producer.produce(
        cfg.topics.deadletter,
        key=msg.key(),
        value=encode_dead_letter(
            reason="webhook_failed",
            message=f"webhook_failed: {detail}",
            stage="webhook",
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            max_value_bytes=cfg.input.max_value_bytes,
            rejected_at_ms=time.time_ns() // 1_000_000,
            event_id=alert_id,
        ),
        on_delivery=lambda err, _m: errors.append(str(err)) if err is not None else None,
    )
    if producer.flush(30) or errors:
        # Neither delivered nor dead-lettered: stop rather than lose the alert state.
        raise RuntimeError(f"could not dead-letter a failed webhook delivery: {errors}")


def _settings(args: argparse.Namespace, cfg: Config) -> WebhookSettings:
    from pydantic import ValidationError

    from streams.cli.errors import UsageError

    updates: dict[str, Any] = {
        name: value
        for name, value in (
            ("url", args.url),
            ("min_severity", args.min_severity),
            ("consumer_group", args.group),
            ("max_attempts", args.max_attempts),
            ("timeout_s", args.timeout),
        )
        if value is not None
    }
    if args.statuses is not None:
        updates["statuses"] = (
            ["opened", "updated", "escalated", "resolved"]
            if args.statuses == "all"
            else [s.strip() for s in args.statuses.split(",") if s.strip()]
        )
    try:
        # Validated like the config file, so a bad flag gets the same clear message.
        merged = {**cfg.webhook.model_dump(), **updates}
        merged["url"] = updates.get("url") or (
            cfg.webhook.url.get_secret_value() if cfg.webhook.url else None
        )
        merged["headers"] = {k: v.get_secret_value() for k, v in cfg.webhook.headers.items()}
        settings = WebhookSettings.model_validate(merged)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise UsageError(f"webhook settings: {problems}") from None
    if settings.url is None:
        raise UsageError("no webhook URL: give --url or webhook.url in the config")
    return settings


def cmd_webhook(args: argparse.Namespace) -> int:
    from streams.ops.config import load_config

    cfg = load_config(args.config)
    settings = _settings(args, cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stats = run_webhook(cfg, settings, stop)
    where = describe_url(settings.url.get_secret_value()) if settings.url else "(no URL)"
    print(
        f"webhook {where}: delivered {stats['delivered']}, "
        f"dead-lettered {stats['dead_lettered']}, "
        f"skipped {stats['skipped']} ({stats['attempts']} requests)",
        file=sys.stderr,
    )
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "webhook",
        help="send alert states to an HTTP endpoint (Slack-compatible)",
        description="Read the alerts topic in its own consumer group and POST each selected "
        "alert state as JSON (the alert plus a Slack-compatible `text` field), with "
        "`Idempotency-Key: ALERT_ID:STATUS:REPEAT`. Retries connection errors, timeouts, "
        "408, 425, 429 and 5xx with exponential backoff (honouring Retry-After, seconds or "
        "HTTP date, up to webhook.max_backoff_s); after the last attempt (or at once on "
        "other answers or an unusable URL) the state goes to the dead-letter topic as "
        "`webhook_failed` (`auditwatch deadletter redrive --stage webhook` re-sends those). "
        "Offsets are committed only after delivery or dead-lettering. Runs until "
        "SIGTERM/Ctrl-C. Defaults come from the config's `webhook` section.",
    )
    p.add_argument("--url", help="endpoint to POST to (http or https)")
    p.add_argument(
        "--min-severity",
        choices=SEVERITIES,
        help="send states of this severity and above (default: webhook.min_severity, medium)",
    )
    p.add_argument(
        "--statuses",
        metavar="LIST",
        help="comma-separated states to send, or `all` (default: opened,escalated,resolved)",
    )
    p.add_argument(
        "--group", help="consumer group (default: webhook.consumer_group, auditwatch-webhook)"
    )
    p.add_argument("--max-attempts", type=int, help="attempts per alert state (default 5)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per request (default 10)")
    p.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)"
    )
    p.set_defaults(func=cmd_webhook)
