"""The throughput ceiling: the least work the pipeline's job needs, and nothing else.

`python -m bench.ceiling --config FILE` consumes the input topic in batches with a plain
confluent-kafka consumer, decodes each value with fastavro (wire header checked, bundled
schema), and produces the archive record (the same Avro record `auditwatch run` writes, keyed
as it keys it: machine id, unit separator, event id) to the archive topic. No validation
beyond decoding, no dedupe, no state, no detection. At-least-once: offsets are stored only
after the archive records they cover were acknowledged. Runs until SIGTERM/SIGINT.

The dataset carries event ids; an event without one is archived under its machine id and an
empty id (deriving the id is validation work the ceiling leaves out on purpose).
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from schemas.codec import decode_canonical, encode_archive
from streams.ops.config import load_config
from streams.processor import KEY_SEP


class Archiver:
    """The ceiling's whole work on one message: decode the input value, and encode the
    archive record, returned with its key (`streams.processor.archive_key`'s layout). The
    record is encoded as `auditwatch run` encodes it (`schemas.codec.encode_archive`), from
    the decoded fields as they are: no validation."""

    def __call__(
        self, value: bytes, topic: str, partition: int, offset: int
    ) -> tuple[bytes, bytes]:
        event = decode_canonical(value)
        record = encode_archive(
            event,
            original_format="AVRO",
            original_sha256=hashlib.sha256(value).digest(),
            topic=topic,
            partition=partition,
            offset=offset,
            archived_at_ms=time.time_ns() // 1_000_000,
        )
        return (event.machine_id + KEY_SEP + (event.event_id or "")).encode(), record


def run(config_path: str, batch: int, flush_every_s: float) -> int:
    cfg = load_config(config_path)
    stop = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer = Consumer(
        {
            **cfg.kafka.client_config(),
            "group.id": cfg.kafka.consumer_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
        }
    )
    producer = Producer(
        {
            **cfg.kafka.client_config(),
            "linger.ms": 20,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    failed: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    archive = Archiver()
    topic_in, topic_out = cfg.topics.events, cfg.topics.archive
    consumer.subscribe([topic_in])
    positions: dict[int, int] = {}
    last_flush = time.monotonic()
    n = 0
    while not stop:
        msgs = consumer.consume(batch, 0.5)
        for msg in msgs:
            if msg.error() is not None:
                continue
            partition, offset = msg.partition(), msg.offset()
            key, value = archive(msg.value(), topic_in, partition, offset)
            while True:
                try:
                    producer.produce(topic_out, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            positions[partition] = offset + 1
            n += 1
        producer.poll(0)
        now = time.monotonic()
        if positions and now - last_flush >= flush_every_s:
            _flush_and_store(producer, consumer, topic_in, positions, failed)
            last_flush = now
    if positions:
        _flush_and_store(producer, consumer, topic_in, positions, failed)
    consumer.close()
    print(f'{{"archived": {n}}}', file=sys.stderr)
    return 0


def _flush_and_store(
    producer: Producer,
    consumer: Consumer,
    topic: str,
    positions: dict[int, int],
    failed: list[str],
) -> None:
    # At-least-once: what was consumed is marked done only once its output is acknowledged.
    if producer.flush(60) or failed:
        raise RuntimeError(f"archive records not delivered: {failed[:3]}")
    consumer.store_offsets(offsets=[TopicPartition(topic, p, o) for p, o in positions.items()])
    positions.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--config", required=True, help="auditwatch YAML config (topics, kafka)")
    parser.add_argument("--batch", type=int, default=1000, help="messages per consume() call")
    parser.add_argument(
        "--flush-every", type=float, default=1.0, help="seconds between offset stores"
    )
    args = parser.parse_args(argv)
    return run(args.config, args.batch, args.flush_every)


if __name__ == "__main__":
    sys.exit(main())
