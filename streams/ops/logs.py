"""Log output for every command: plain text for people, JSON lines for log pipelines.

Records logged while a Kafka message is being processed (dead letters, errors) name it as
`topic[partition]@offset` (in JSON also as separate fields), taken from the runtime's current
message (`CURRENT`, set by streams.runtime.loop), so an error in a log search leads straight
to the message that caused it.

Imports: the standard library and orjson.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Current:
    """The message the processing thread is on: one attribute store per message, cheaper
    than a context variable, and read only when a record is logged."""

    __slots__ = ("message", "thread")

    def __init__(self) -> None:
        self.thread: int | None = None
        self.message: Any = None


CURRENT = _Current()


def _message_origin() -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the message being processed on this thread, if any."""
    msg = CURRENT.message
    if msg is None or threading.get_ident() != CURRENT.thread:
        return None
    return msg.topic(), msg.partition(), msg.offset()


class OriginFilter(logging.Filter):
    """Adds `record.kafka_origin` to records logged while a message is processed (dead
    letters, detector errors, warnings). One context-variable lookup per record that passed
    its logger's level: nothing on the per-event path logs at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "kafka_origin"):
            record.kafka_origin = _message_origin()
        return True


def _origin_text(record: logging.LogRecord) -> str | None:
    origin = getattr(record, "kafka_origin", None)
    if origin is None:
        return None
    topic, partition, offset = origin
    return f"{topic}[{partition}]@{offset}"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        origin = _origin_text(record)
        if origin is not None and origin not in record.getMessage():
            first, sep, rest = text.partition("\n")
            text = f"{first} (at {origin}){sep}{rest}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339 UTC), level, logger, message, and when known
    the Kafka origin (`origin` as topic[partition]@offset, plus `topic`, `partition`,
    `offset`) and the exception with its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        origin = getattr(record, "kafka_origin", None)
        if origin is not None:
            out["origin"] = _origin_text(record)
            out["topic"], out["partition"], out["offset"] = origin
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


LIBRDKAFKA_LOGGER = "auditwatch.librdkafka"
# How long a connection failure, once logged as a warning, is logged at DEBUG only.
_REPEAT_QUIET_S = 600.0
# librdkafka facilities and texts of a broker that cannot be reached (yet): each client says
# it for each connection attempt, every few hundred milliseconds.
_TRANSPORT_FACILITIES = ("FAIL", "ERROR", "BROKERFAIL", "CONNECT")
_TRANSPORT_TEXTS = (
    "connect to",
    "connection refused",
    "failed to resolve",
    "brokers are down",
    "disconnected",
    "timed out",
    "connection setup timed out",
)


class LibrdkafkaFilter(logging.Filter):
    """Levels for librdkafka's own log lines (confluent-kafka hands them to our
    `auditwatch.librdkafka` logger as `FACILITY [client] text`), so they do not drown what
    the command has to say.

    - A broker that cannot be reached: librdkafka logs it as an error for every client and
      every reconnect (14 lines before `alerts` gave up). The first line of each distinct
      failure is a warning; its repeats within 10 minutes are DEBUG. The command says what
      failed, with the address, in its own words.
    - GETPID `Coordinator load in progress` / `Not coordinator`: the broker has no block of
      producer ids yet. A KRaft broker fetches its first block from the controller on the
      first InitProducerId after it starts and answers that request with
      COORDINATOR_LOAD_IN_PROGRESS meanwhile (Kafka's RPCProducerIdManager), so the first
      idempotent producer after every broker start (every `make demo` on a fresh broker) is
      told to retry, and librdkafka does, within milliseconds. A normal start that asks
      nothing of anyone: DEBUG.
    """

    def __init__(self, clock: Any = None) -> None:
        super().__init__()
        import time

        self._clock = clock or time.monotonic
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        facility, text = _librdkafka_parts(record)
        lowered = text.lower()
        level = record.levelno
        if facility == "GETPID" and (
            "coordinator load in progress" in lowered or "not coordinator" in lowered
        ):
            level = logging.DEBUG
        elif facility in _TRANSPORT_FACILITIES and any(t in lowered for t in _TRANSPORT_TEXTS):
            level = logging.WARNING if self._first(_transport_key(text)) else logging.DEBUG
        if level == record.levelno:
            return True
        if not logging.getLogger(record.name).isEnabledFor(level):
            return False
        record.levelno = level
        record.levelname = logging.getLevelName(level)
        return True

    def _first(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last < _REPEAT_QUIET_S:
                return False
            if len(self._seen) > 256:  # distinct failures are few; never grow without bound
                self._seen.clear()
            self._seen[key] = now
            return True


def _librdkafka_parts(record: logging.LogRecord) -> tuple[str, str]:
    """(facility, text) of a line confluent-kafka logged as `"%s [%s] %s", fac, client, text`."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 3:
        return str(args[0]), str(args[2])
    message = record.getMessage()
    facility, _, rest = message.partition(" ")
    return facility, rest


def _transport_key(text: str) -> str:
    # "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ... (after 0ms in state
    # CONNECT)": the same failure from another client or after another wait is a repeat.
    text = text.split(" (after ", 1)[0]
    if text.startswith("[thrd:"):
        text = text.split("]: ", 1)[-1]
    return text


def install_librdkafka_filter() -> None:
    """Once per process, whatever configured the handlers."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, LibrdkafkaFilter) for f in logger.filters):
        logger.addFilter(LibrdkafkaFilter())


class _Handler(logging.StreamHandler):
    """Ours, so a second setup_logging replaces it rather than adding another."""


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr in `fmt`. Like logging.basicConfig, it leaves a root logger that
    something else configured (an embedding program, pytest) alone."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    install_librdkafka_filter()
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(OriginFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
