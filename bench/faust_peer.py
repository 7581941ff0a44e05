"""The faust peer: auditwatch's job written as a faust-streaming application, for comparison.

`python -m bench.faust_peer --config FILE` runs one faust worker with two agents that do what
`auditwatch run` does, with the very same `streams.processor.Processor` (and so the same
decode, validation, dedupe, archive encoding and `DetectionCore`):

- `ingest` on the input topic: `Processor.ingest`, the archive record (or dead letter) to its
  topic, and the accepted event re-keyed by peer group to the detection topic;
- `detect` on the detection topic: `Processor.detect`, alert states to the alerts topic.

Each stage keeps its state in its own faust Table (RocksDB through rocksdict, with a changelog
topic), addressed through the same `Store` protocol as the Quix stores: one table key per
(kind, key). Tuning, as faust's documentation advises for throughput: `stream.take_events`
batches, a larger `stream_buffer_maxsize` and `broker_max_poll_records`, commits on the same
interval as the auditwatch config. `concurrency=1` per agent: with more, faust-streaming can
commit an offset past events another actor still holds (faust-streaming#606), which breaks
at-least-once. Needs the `bench` extra (faust-streaming, aiokafka 0.14).
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import weakref
from pathlib import Path
from typing import Any

from schemas.codec import BundledSchemas, decode_detect, encode_detect
from streams.config import Config, load_config
from streams.processor import Origin, Processor

_SEP = b"\x1f"


class TableStore:
    """The Processor's Store over a faust Table of raw bytes: key = kind, separator, key."""

    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, kind: bytes, key: str) -> bytes | None:
        value: bytes | None = self.table.get(kind + _SEP + key.encode())
        return value

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        self.table[kind + _SEP + key.encode()] = value

    def delete(self, kind: bytes, key: str) -> None:
        k = kind + _SEP + key.encode()
        if k in self.table:
            del self.table[k]


def build_app(
    cfg: Config,
    *,
    datadir: str,
    store: str = "rocksdb://",
    batch: int = 1000,
    within_s: float = 0.05,
    buffer_maxsize: int = 16_384,
    max_poll_records: int = 2_000,
) -> tuple[Any, Processor]:
    """The faust app and the Processor its agents share."""
    import faust
    from faust.streams import _current_event

    # Only the context variable the tables read: Stream._set_current_event would also move
    # the stream's own `current_event`, which take_events' buffering reads concurrently, and
    # events would then be buffered twice or lost.
    set_current = _current_event.set
    if cfg.kafka.processing_guarantee != "at-least-once":
        raise SystemExit("the faust peer runs at-least-once only")
    processor = Processor(cfg, BundledSchemas())
    app = faust.App(
        cfg.kafka.consumer_group,
        broker=f"kafka://{cfg.kafka.bootstrap()}",
        store=store,
        datadir=datadir,
        topic_partitions=cfg.topics.partitions,
        topic_replication_factor=cfg.topics.replication_factor,
        processing_guarantee="at_least_once",
        broker_commit_interval=cfg.kafka.commit_interval_s,
        stream_buffer_maxsize=buffer_maxsize,
        broker_max_poll_records=max_poll_records,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=20,
        web_enabled=False,
        table_standby_replicas=0,
    )

    def raw_topic(name: str) -> Any:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=cfg.topics.partitions,
        )

    t = cfg.topics
    source, detect_topic = raw_topic(t.events), raw_topic(t.detect)
    sinks = {
        "archive": raw_topic(t.archive),
        "deadletter": raw_topic(t.deadletter),
        "alert": raw_topic(t.alerts),
    }

    def table(name: str) -> Any:
        # bytes key and value types make faust store and changelog them as raw bytes.
        return app.Table(name, key_type=bytes, value_type=bytes, partitions=cfg.topics.partitions)

    ingest_store, detect_store = TableStore(table("ingest")), TableStore(table("detect"))

    @app.agent(source, concurrency=1)
    async def ingest(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within_s):
            for ev in events:
                # Table reads and writes use the partition of the "current event"; inside a
                # batch that must be this event, not the last one the stream buffered.
                set_current(weakref.ref(ev))
                msg = ev.message
                origin = Origin(msg.topic, msg.partition, msg.offset)
                outputs, event = processor.ingest(ev.value, ev.key, origin, ingest_store)
                for out in outputs:
                    await sinks[out.kind].send(key=out.key, value=out.value)
                if event is not None:
                    group = processor.core.group_of(event)
                    await detect_topic.send(
                        key=group.encode(), value=encode_detect(event, msg.partition)
                    )

    @app.agent(detect_topic, concurrency=1)
    async def detect(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within_s):
            for ev in events:
                set_current(weakref.ref(ev))
                msg = ev.message
                src, event = decode_detect(ev.value)
                origin = Origin(msg.topic, msg.partition, msg.offset)
                for out in processor.detect(event, detect_store, origin, source=src):
                    await sinks["alert"].send(key=out.key, value=out.value)

    return app, processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faust_peer", description=__doc__)
    parser.add_argument("--config", required=True, help="auditwatch YAML config (topics, kafka)")
    parser.add_argument("--datadir", help="faust's table directory (default: the state_dir)")
    parser.add_argument(
        "--store", default="rocksdb://", help="faust table store URL (rocksdb:// or memory://)"
    )
    parser.add_argument("--batch", type=int, default=1000, help="stream.take_events batch size")
    parser.add_argument("--within", type=float, default=0.05, help="take_events timeout (s)")
    parser.add_argument("--buffer-maxsize", type=int, default=16_384)
    parser.add_argument("--max-poll-records", type=int, default=2_000)
    # "producer buffer full" warnings cost faust about a tenth of its time at warning level.
    parser.add_argument("--loglevel", default="error")
    args = parser.parse_args(argv)
    try:
        import faust
    except ImportError:
        print("faust-streaming is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    datadir = args.datadir or str(Path(cfg.kafka.state_dir) / "faust")
    app, processor = build_app(
        cfg,
        datadir=datadir,
        store=args.store,
        batch=args.batch,
        within_s=args.within,
        buffer_maxsize=args.buffer_maxsize,
        max_poll_records=args.max_poll_records,
    )
    # The same counters `auditwatch run` prints on exit, which the harness reads.
    atexit.register(
        lambda: print(json.dumps(dict(sorted(processor.metrics.items()))), file=sys.stderr)
    )
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
