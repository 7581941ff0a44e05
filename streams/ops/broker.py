"""Is the Kafka broker there? One metadata request with a short deadline, and what to change
when it is not.

One-shot commands call `require_broker` first, so a wrong or dead address fails within
seconds with the address and the setting that gave it, instead of after each client's own
timeouts (librdkafka retries a refused connection until a request times out: 18 to 50 s per
command). The services (`run`, `webhook`) call `wait_for_broker` instead: they wait with
backoff, saying why, and never exit because a broker is down.

Imports: the standard library, confluent_kafka and streams.ops.config.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from streams.ops.config import Config

log = logging.getLogger("auditwatch.broker")

CHECK_TIMEOUT_S = 4.0
# Each metadata request waits this long at most, so errors reported meanwhile are read soon.
_SLICE_S = 0.5


class BrokerUnreachable(RuntimeError):
    """No Kafka broker answered at the configured address; the message says where and what to
    change. A RuntimeError: the command line reports it in one line and exits 1."""

    def __init__(self, address: str, reason: str, source: str) -> None:
        self.address = address
        self.reason = reason
        self.source = source
        super().__init__(f"cannot reach the Kafka broker at {address}: {reason}; {source}")


class BrokerAuthenticationFailed(BrokerUnreachable):
    """The broker answered but refused the credentials (or the TLS handshake failed): said as
    such, with the user, the address and where the settings come from."""

    def __init__(self, address: str, reason: str, source: str) -> None:
        self.address = address
        self.reason = reason
        self.source = source
        head, _, detail = reason.partition(": ")
        RuntimeError.__init__(self, f"{head} at {address}: {detail}; {source}")


_AUTH_FAILED = "authentication failed for user"
_TLS_FAILED = "TLS handshake failed"


def credentials_source() -> str:
    """Where the SASL user, password and CA come from, as the settings to change."""
    return (
        "the user and password are kafka.security.username and password (or password_file) "
        "in the config file, else $AUDITWATCH_SASL_USERNAME and $AUDITWATCH_SASL_PASSWORD "
        "(or $AUDITWATCH_SASL_PASSWORD_FILE); the CA is kafka.security.ssl_ca_location or "
        "$AUDITWATCH_SSL_CA_LOCATION"
    )


def address_source(cfg: Config) -> str:
    """Where the bootstrap address came from, as the setting an operator would change."""
    if cfg.kafka.bootstrap_servers:
        return (
            "the address is kafka.bootstrap_servers in the config file "
            "(it wins over $AUDITWATCH_BOOTSTRAP)"
        )
    if os.environ.get("AUDITWATCH_BOOTSTRAP"):
        return (
            "the address is $AUDITWATCH_BOOTSTRAP "
            "(or set kafka.bootstrap_servers in the config file)"
        )
    return (
        "the address is the local development broker's or the default; set "
        "kafka.bootstrap_servers in the config file or $AUDITWATCH_BOOTSTRAP, or start one "
        "with `auditwatch kafka start`"
    )


class _Quiet:
    """The probe's librdkafka log: the probe reports what went wrong itself, so the client's
    own lines (a connection refused, again and again) are kept for --log-level DEBUG."""

    def log(self, _level: int, msg: str, *args: Any) -> None:
        log.debug(msg, *args)


def _plain(text: str) -> str:
    # librdkafka's "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection
    # refused (after 0ms in state CONNECT)": the address is said once already.
    text = text.split(" (after ", 1)[0]
    head, sep, rest = text.partition(": ")
    if sep and "/" in head and " " not in head:
        text = rest
    return " ".join(text.split())


def _reason(errors: list[Any], cfg: Config | None = None) -> tuple[str, bool]:
    """(why, final) from the errors librdkafka reported: `final` once waiting longer cannot
    help a one-shot command (every bootstrap broker refused, a name that does not resolve,
    something that is not Kafka, failed authentication)."""
    from confluent_kafka import KafkaError

    codes = {e.code() for e in errors}
    texts = [_plain(e.str()) for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
    detail = texts[-1] if texts else ""
    lowered = detail.lower()
    if KafkaError._RESOLVE in codes or "failed to resolve" in lowered:
        return f"the host name does not resolve ({detail})", True
    if KafkaError._AUTHENTICATION in codes or "sasl authentication" in lowered:
        user = cfg.kafka.sasl_username() if cfg is not None else None
        # librdkafka's "SASL authentication error: Authentication failed during
        # authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
        detail = detail.removeprefix("SASL authentication error: ")
        return f"{_AUTH_FAILED} {user or '(none)'}: {detail}", True
    if KafkaError._SSL in codes:
        return f"{_TLS_FAILED}: {detail.removeprefix('SSL handshake failed: ')}", True
    if "sasl" in lowered:
        return (
            f"authentication or TLS failed ({detail}; check kafka.security or "
            "$AUDITWATCH_SECURITY_PROTOCOL and $AUDITWATCH_SASL_*)",
            True,
        )
    if KafkaError._BAD_MSG in codes or "invalid response size" in lowered:
        # librdkafka read the first bytes of an HTTP or TLS answer as a Kafka frame size.
        return (
            "something answers there that does not speak the Kafka protocol (an HTTP port? "
            "a TLS listener: set kafka.security.protocol or $AUDITWATCH_SECURITY_PROTOCOL)",
            True,
        )
    if "connection refused" in lowered:
        return "connection refused (nothing listens there)", KafkaError._ALL_BROKERS_DOWN in codes
    if detail:
        return detail, KafkaError._ALL_BROKERS_DOWN in codes
    return "", False


def probe(cfg: Config, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when a broker at the configured address answers a metadata request within
    `timeout_s`; else why not, in a few words."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[Any] = []
    admin = AdminClient(
        {
            **cfg.kafka.client_config(),
            "logger": _Quiet(),
            "error_cb": errors.append,
            # A connection not set up by the deadline has failed (librdkafka's default waits
            # 30 s, and reports nothing meanwhile).
            "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000)),
        }
    )
    deadline = time.monotonic() + timeout_s
    reason = why = ""
    while True:
        left = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.05, min(_SLICE_S, left)))
            return None
        except KafkaException as e:
            reason = _plain(e.args[0].str()) if e.args else str(e)
        admin.poll(0)  # hands over the errors reported meanwhile (error_cb)
        why, final = _reason(errors, cfg)
        if final or time.monotonic() >= deadline:
            break
    why = why or reason
    if not errors or not why or why.lower().startswith("failed to get metadata"):
        return f"no answer within {timeout_s:g} s"
    return why


def require_broker(cfg: Config, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """For one-shot commands: raise BrokerUnreachable unless the broker answers."""
    why = probe(cfg, timeout_s)
    if why is None:
        return
    if why.startswith((_AUTH_FAILED, _TLS_FAILED)):
        raise BrokerAuthenticationFailed(cfg.kafka.bootstrap(), why, credentials_source())
    raise BrokerUnreachable(cfg.kafka.bootstrap(), why, address_source(cfg))


def wait_for_broker(
    cfg: Config,
    stop: threading.Event,
    service: str,
    on_wait: Callable[[str | None], None] | None = None,
    max_backoff_s: float = 30.0,
) -> bool:
    """For services: probe until the broker answers (True) or `stop` is set (False), backing
    off from 1 s to `max_backoff_s`. Each failed probe is logged with the address and what to
    change, and passed to `on_wait` (then None once the broker answers), so a readiness
    endpoint can say what the service is waiting for."""
    address = cfg.kafka.bootstrap()
    delay = 1.0
    started = time.monotonic()
    attempt = 0
    while not stop.is_set():
        attempt += 1
        why = probe(cfg)
        if why is None:
            if attempt > 1:
                log.info(
                    "%s: the Kafka broker at %s answers after %.0f s; starting",
                    service,
                    address,
                    time.monotonic() - started,
                )
            if on_wait is not None:
                on_wait(None)
            return True
        waiting = (
            f"waiting for the Kafka broker at {address}: {why} (attempt {attempt}, "
            f"{time.monotonic() - started:.0f} s so far)"
        )
        if on_wait is not None:
            on_wait(waiting)
        # What to change is said once; the next lines only count.
        hint = f"; {address_source(cfg)}" if attempt == 1 else ""
        log.warning("%s: %s; retrying in %.0f s%s", service, waiting, delay, hint)
        if stop.wait(delay):
            break
        delay = min(2 * delay, max_backoff_s)
    if on_wait is not None:
        on_wait(None)
    return False
