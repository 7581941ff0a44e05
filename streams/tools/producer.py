"""`auditwatch produce`: send events to the input topic, from files or synthetic traffic.

Events are keyed by machine_id (the partitioning hint auditwatch expects) and encoded as
Confluent wire-format Avro with the bundled schema id, or as JSON.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import encode_event_avro
from schemas.event import InvalidEvent, Limits, event_from_mapping
from streams.ops.config import Config

# Producing history is allowed: only the far future is refused, as the processor does.
_PRODUCE_LIMITS = Limits()


@dataclass
class ProduceStats:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def to_avro_record(event: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Validate the JSON form and turn it into the Avro record (timestamp as epoch millis)."""
    ev = event_from_mapping(event, _PRODUCE_LIMITS, now_ms)
    record = ev.to_avro()
    if ev.event_id_derived:
        # Let the processor derive the id, exactly as it would for this event sent as JSON.
        record["event_id"] = None
    return record


def encode(event: dict[str, Any], encoding: str, now_ms: int) -> tuple[bytes, bytes]:
    """(key, value) for one event in its JSON form."""
    key = str(event.get("machine_id", "")).encode()
    if encoding == "json":
        return key, orjson.dumps(event)
    return key, encode_event_avro(to_avro_record(event, now_ms))


def make_producer(cfg: Config, **extra: Any) -> Producer:
    conf: dict[str, Any] = {
        **cfg.kafka.client_config(),
        "linger.ms": 20,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "acks": "all",
        # The partitioner Quix Streams (and the Java client) uses: records we key by peer
        # group must land in the partition where the processor keeps that group's state.
        "partitioner": "murmur2",
        **extra,
    }
    return Producer(conf)


def produce_events(
    cfg: Config,
    events: Iterable[dict[str, Any]],
    *,
    encoding: str = "avro",
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    topic: str | None = None,
) -> ProduceStats:
    """Send events at up to `rate` events/s (None: as fast as the broker takes them)."""
    topic = topic or cfg.topics.events
    producer = make_producer(cfg)
    stats = ProduceStats()
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            stats.failed += 1
            if len(errors) < 5:
                errors.append(str(err))

    start = time.monotonic()
    bar = _progress(total) if progress else None
    try:
        for i, event in enumerate(_paced(events, rate)):
            try:
                key, value = encode(event, encoding, int(time.time() * 1000))
            except InvalidEvent as e:
                stats.skipped += 1
                print(f"skipped event #{i + 1}: {e.reason}: {e.message}", file=sys.stderr)
                continue
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            stats.sent += 1
            if bar is not None and stats.sent % 500 == 0:
                bar.update(stats.sent)
    finally:
        producer.flush(60)
        if bar is not None:
            bar.update(stats.sent)
            bar.close()
    stats.seconds = time.monotonic() - start
    for err in errors:
        print(f"delivery failed: {err}", file=sys.stderr)
    return stats


def _paced(events: Iterable[dict[str, Any]], rate: float | None) -> Iterator[dict[str, Any]]:
    if not rate:
        yield from events
        return
    start = time.monotonic()
    for i, event in enumerate(events):
        # Sleep in small batches: per-event sleeps cannot keep up at tens of thousands per second.
        if i % 100 == 0:
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        yield event


class _progress:
    """A minimal progress line on stderr (rich's bar when stderr is a terminal)."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.start = time.monotonic()
        self.rich: Any = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.rich = Progress(transient=False)
            self.rich.start()
            self.task = self.rich.add_task("producing", total=total)
        self.last_print = 0.0

    def update(self, n: int) -> None:
        if self.rich is not None:
            self.rich.update(self.task, completed=n)
            return
        now = time.monotonic()
        if now - self.last_print >= 5:
            self.last_print = now
            rate = n / max(now - self.start, 1e-9)
            of = f"/{self.total:,}" if self.total else ""
            print(f"  produced {n:,}{of} events ({rate:,.0f}/s)", file=sys.stderr)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()
