"""`auditwatch produce`: send events to the input topic, from files or synthetic traffic, and
account for every input record: delivered, skipped (not an event, named by where it was read)
or not delivered (named, optionally written to a file for a re-send).

Events are keyed by machine_id (the partitioning hint auditwatch expects) and encoded as
Confluent wire-format Avro with the bundled schema id, or as JSON. `--synthetic --out` writes
the generated events and their labelled episodes to files instead (`write_events`,
`write_labels`). Imports: schemas, streams.ops and confluent-kafka.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.codec import decode_wire, encode_event_avro
from schemas.event import InvalidEvent, Limits, event_from_mapping, format_rfc3339_ms
from schemas.signing import Key, sign_record
from streams.ops.config import Config

# Producing history is allowed: only the far future is refused, as the processor does.
_PRODUCE_LIMITS = Limits()

# librdkafka keeps retrying a message until message.timeout.ms (default 300 s) and reports it
# only then, so a producer flushing for less than that learns nothing about the messages
# still queued. A bound of seconds lets an unreachable broker show as failed deliveries while
# the operator still waits; it must stay above the time a message waits in the local queue
# behind the ones before it (well under a second at the local broker's throughput).
DEFAULT_DELIVERY_TIMEOUT_S = 15.0
_TIMEOUT_KEYS = ("message.timeout.ms", "delivery.timeout.ms")
# Errors about one message, not about the broker or the topic: the next one may well arrive.
_MESSAGE_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_TIMESTAMP,
    }
)
_SHOWN = 20  # problems listed one a line before the rest are only counted


@dataclass(frozen=True, slots=True)
class Record:
    """One input record: the event to send (a JSON object), or why it cannot be one.
    `where` names it for the operator: `path:line`, or `synthetic event N`."""

    where: str
    event: dict[str, Any] | None = None
    problem: str | None = None


@dataclass
class ProduceStats:
    """What became of every record read. `unsent` are records read after a delivery failure
    stopped the sending (counted, and written to the failed-out file, not sent)."""

    delivered: int = 0
    skipped: int = 0
    failed: int = 0
    unsent: int = 0
    seconds: float = 0.0
    stopped_at: str | None = None  # the first record not sent after a delivery failure
    interrupted: bool = False

    @property
    def read(self) -> int:
        return self.delivered + self.skipped + self.failed + self.unsent

    @property
    def not_delivered(self) -> int:
        return self.failed + self.unsent


def to_avro_record(event: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Validate the JSON form and turn it into the Avro record (timestamp as epoch millis)."""
    ev = event_from_mapping(event, _PRODUCE_LIMITS, now_ms)
    record = ev.to_avro()
    if ev.event_id_derived:
        # Let the processor derive the id, exactly as it would for this event sent as JSON.
        record["event_id"] = None
    return record


def encode(
    event: dict[str, Any], encoding: str, now_ms: int, sign_key: Key | None = None
) -> tuple[bytes, bytes]:
    """(key, value) for one event in its JSON form, signed with `sign_key` when given."""
    key = str(event.get("machine_id", "")).encode()
    if sign_key is not None:
        try:
            event = sign_record(event, sign_key)
        except InvalidEvent:
            if encoding != "json":
                raise
            # Sent as read, unsigned: the processor dead-letters it with the reason.
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


def delivery_timeout_s(cfg: Config, seconds: float | None) -> float:
    """The delivery timeout `produce` uses: `seconds` when given, else the config's
    kafka.librdkafka message.timeout.ms (or its alias delivery.timeout.ms), else the default."""
    if seconds is not None:
        return seconds
    for key in _TIMEOUT_KEYS:
        if key in cfg.kafka.librdkafka:
            return float(cfg.kafka.librdkafka[key]) / 1000
    return DEFAULT_DELIVERY_TIMEOUT_S


def produce_events(
    cfg: Config,
    records: Iterable[Record],
    *,
    encoding: str = "avro",
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    topic: str | None = None,
    timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S,
    failed_out: IO[bytes] | None = None,
    sign_key: Key | None = None,
) -> ProduceStats:
    """Send records' events at up to `rate` events/s (None: as fast as the broker takes them)
    and wait for every delivery report.

    A record with a problem, or (Avro) an event that is not valid, is skipped and named on
    stderr. A delivery that fails for a reason other than the message itself (the broker or
    topic not taking events for `timeout_s`) stops the sending: the records after it are read
    and counted as unsent rather than queued behind a broker that is not answering. Every
    event not delivered is written to `failed_out` as a JSON line, in input order. With
    `sign_key`, each event is sent with its key_id and signature (schemas.signing)."""
    topic = topic or cfg.topics.events
    producer = make_producer(cfg, **{"message.timeout.ms": max(1, round(timeout_s * 1000))})
    stats = ProduceStats()
    # Sequence number -> (where, value) until its delivery report arrives.
    pending: dict[int, tuple[str, bytes]] = {}
    lost: list[tuple[int, str, bytes, str]] = []  # (seq, where, value, why)
    stop = False

    def on_delivery(seq: int, err: KafkaError | None, _msg: Message) -> None:
        nonlocal stop
        where, value = pending.pop(seq)
        if err is None:
            stats.delivered += 1
            return
        why = err.str()
        if err.code() == KafkaError._MSG_TIMED_OUT:
            # librdkafka says only "Message timed out"; these are the usual reasons.
            why = (
                f"not acknowledged within {timeout_s:g} s (the broker down or slow, or no "
                f"topic {topic})"
            )
        lost.append((seq, where, value, why))
        if err.code() not in _MESSAGE_ERRORS:
            stop = True

    start = time.monotonic()
    bar = _progress(total) if progress else None
    items = iter(records)
    held: Record | None = None  # read when the sending stopped, not sent
    n = 0
    try:
        for seq, record in enumerate(_paced(items, rate)):
            if stop:
                held = record
                break
            n += 1
            if bar is not None and n % 500 == 0:
                bar.update(n)
            if record.event is None:
                _skip(stats, record.where, record.problem or "not an event")
                continue
            try:
                key, value = encode(record.event, encoding, int(time.time() * 1000), sign_key)
            except InvalidEvent as e:
                _skip(stats, record.where, f"{e.reason}: {e.message}")
                continue
            pending[seq] = (record.where, value)
            queued = _enqueue(
                producer, topic, key, value, functools.partial(on_delivery, seq), lambda: stop
            )
            if queued is _REFUSED:
                del pending[seq]
                lost.append((seq, record.where, value, "larger than message.max.bytes"))
            elif queued is _STOPPED:
                del pending[seq]
                held = record
                break
            producer.poll(0)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        # librdkafka reports every queued message within its timeout; the margin covers the
        # report's way back to this thread.
        producer.flush(timeout_s + 5)
        if bar is not None:
            bar.update(n)
            bar.close()
    lost.extend((seq, *sent, "no delivery report") for seq, sent in pending.items())
    lost.sort()
    stats.failed = len(lost)
    for i, (_seq, where, value, why) in enumerate(lost):
        if i < _SHOWN:
            print(f"not delivered {where}: {why}", file=sys.stderr)
        if failed_out is not None:
            failed_out.write(_event_line(value, encoding))
    if len(lost) > _SHOWN:
        print(f"... and {len(lost) - _SHOWN:,} more not delivered", file=sys.stderr)
    if held is not None:
        stats.stopped_at = held.where
        # Read the rest, so the count of what did not arrive is whole and the failed-out
        # file holds everything to send again.
        for record in itertools.chain([held], items):
            if record.event is None:
                _skip(stats, record.where, record.problem or "not an event")
                continue
            stats.unsent += 1
            if failed_out is not None:
                failed_out.write(orjson.dumps(record.event) + b"\n")
    stats.seconds = time.monotonic() - start
    return stats


_QUEUED, _REFUSED, _STOPPED = object(), object(), object()


def _enqueue(
    producer: Producer,
    topic: str,
    key: bytes,
    value: bytes,
    callback: Callable[[KafkaError | None, Message], None],
    stopped: Callable[[], bool],
) -> object:
    """Queue one message, waiting while the local queue is full. _REFUSED: librdkafka refused
    it outright (too large), no report will come; _STOPPED: a delivery failed meanwhile, so
    it was not queued (it would only wait out its own timeout)."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=callback)
            return _QUEUED
        except BufferError:
            producer.poll(0.05)
            if stopped():
                return _STOPPED
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.code() in _MESSAGE_ERRORS:
                return _REFUSED
            raise


def _skip(stats: ProduceStats, where: str, why: str) -> None:
    stats.skipped += 1
    if stats.skipped <= _SHOWN:
        print(f"skipped {where}: {why}", file=sys.stderr)
    elif stats.skipped == _SHOWN + 1:
        print("... further skipped lines are only counted", file=sys.stderr)


def _event_line(value: bytes, encoding: str) -> bytes:
    """One not-delivered message as the JSON line `produce` reads back."""
    if encoding == "json":
        return value + b"\n"
    record = decode_wire(value, "audit_event")
    event = {k: v for k, v in record.items() if v is not None and v != {}}
    event["timestamp"] = format_rfc3339_ms(record["timestamp"])
    return orjson.dumps(event) + b"\n"


def write_events(
    records: Iterable[Record], out: IO[bytes], *, total: int | None = None, progress: bool = True
) -> int:
    """Write the records' events as JSON lines (what `produce FILE` reads); the number written."""
    bar = _progress(total) if progress else None
    n = 0
    for record in records:
        if record.event is None:
            continue
        out.write(orjson.dumps(record.event) + b"\n")
        n += 1
        if bar is not None and n % 500 == 0:
            bar.update(n)
    if bar is not None:
        bar.update(n)
        bar.close()
    return n


def write_labels(episodes: Iterable[Any], out: IO[bytes]) -> int:
    """Labelled episodes (synthetic.Episode) as JSON lines, the form `backtest --labels` and
    bench.evaluate read: kind, machine_id, start_ms, end_ms, malicious, description."""
    n = 0
    for ep in episodes:
        out.write(orjson.dumps(asdict(ep)) + b"\n")
        n += 1
    return n


def _paced(records: Iterator[Record], rate: float | None) -> Iterator[Record]:
    if not rate:
        # Not `yield from`: closing this generator would close `records` too, and the caller
        # reads on from it after stopping.
        for record in records:
            yield record
        return
    start = time.monotonic()
    for i, record in enumerate(records):
        # Sleep in small batches: per-event sleeps cannot keep up at tens of thousands per second.
        if i % 100 == 0:
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        yield record


class _progress:
    """A minimal progress line on stderr (rich's bar when stderr is a terminal): records read,
    of `total` when the number is known."""

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
            print(f"  read {n:,}{of} events ({rate:,.0f}/s)", file=sys.stderr)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()
