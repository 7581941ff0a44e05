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


class _Handler(logging.StreamHandler):
    """Ours, so a second setup_logging replaces it rather than adding another."""


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr in `fmt`. Like logging.basicConfig, it leaves a root logger that
    something else configured (an embedding program, pytest) alone."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
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
