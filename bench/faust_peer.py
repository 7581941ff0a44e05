"""The faust peer: `auditwatch run`'s one-pass job as a faust-streaming application.

`python -m bench.faust_peer --config FILE` runs one faust worker with one agent that does per
event exactly what the runtime's task does, with the runtime's own classes: each record goes to
`streams.runtime.task.Task.process` of its partition (decode and validation, the routing check,
`Processor.admit`: the event id's digest in the partition's state, the archive record, then
`Processor.detect` with the same `DetectionCore` and its working copy of machine states). Per
partition, the state is a `streams.runtime.state.PartitionState` (live in memory, restored from
the changelog topic on the partition's first record, event ids in its on-disk index) and the
peer-group records are in one `PeerTable` for the worker, as in `auditwatch run`. Only the
engine is faust's: aiokafka's consumer and producer, faust's agent and stream (`take_events`
batches), its consumer group and offset commits.

- The agent reads the input topic and the repartition topic (one faust topic over both
  names); an event found in another partition than its machine's is forwarded there once,
  as the runtime does.
- After each batch, the silence clocks are punctuated as the runtime's loop does.
- Every `kafka.commit_interval_s` the agent writes a checkpoint: the working copy's machine
  states into their partitions' state, then the changed state and peer records to the
  state and peers topics, then the event ids admitted since the last one into the
  partition's on-disk index (SQLite in the state directory, as the worker keeps it). faust
  commits the input offsets on its own timer; it has no hook to order that after the
  checkpoint's records are acknowledged, which `auditwatch run` does, so this peer's
  at-least-once is weaker than the worker's (it does less, not more). It writes no local
  snapshots (the worker writes one every 5 minutes: none in a 60 s phase).
- Outputs are sent with `await app.producer.send(...)` (faust's aiokafka producer, awaited
  only into its buffer): faust's `Topic.send` (`--send topic`) costs more per record (a
  FutureMessage, faust's callbacks and sensors) and was measured slower (bench/README.md).

Tuning, as faust's documentation advises for throughput: `stream.take_events` batches, a
larger `stream_buffer_maxsize` and `broker_max_poll_records`. `concurrency=1`: with more,
faust-streaming can commit an offset past events another actor still holds
(faust-streaming#606), and the partitions' tasks are not safe to share between actors.
Single worker: partitions revoked in a rebalance keep their state here (the bench never
rebalances it). Needs the `bench` extra (faust-streaming, aiokafka 0.14).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from schemas.codec import BundledSchemas
from streams.ops.config import Config, load_config
from streams.ops.topics import ensure_topics
from streams.processor import Processor
from streams.runtime.peers import PeerReader, PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import Snapshots, restore, restore_consumer
from streams.runtime.task import Task


class _Record:
    """A faust message as the task reads a confluent-kafka one."""

    __slots__ = ("m",)

    def __init__(self, m: Any) -> None:
        self.m = m

    def value(self) -> bytes | None:
        value: bytes | None = self.m.value
        return value

    def key(self) -> bytes | None:
        key: bytes | None = self.m.key
        return key

    def topic(self) -> str:
        return str(self.m.topic)

    def offset(self) -> int:
        return int(self.m.offset)

    def headers(self) -> list[tuple[str, bytes]]:
        headers = self.m.headers or []
        return list(headers.items()) if isinstance(headers, dict) else list(headers)


class OnePass:
    """The runtime's tasks, checkpoint and punctuation, driven by a faust agent."""

    def __init__(self, cfg: Config, processor: Processor, writer: str) -> None:
        self.cfg = cfg
        self.processor = processor
        self.core = processor.core
        self.router = Router(cfg.kafka.partitioner, cfg.topics.partitions)
        self.peers = PeerTable(writer)
        self.tasks: dict[int, Task] = {}
        # (role, key, value, partition, headers) of the event being processed.
        self.pending: list[tuple[str, bytes | None, bytes | None, int, Any]] = []
        self.last_checkpoint = time.monotonic()
        k = cfg.kafka
        client = k.client_config()
        self.restorer = restore_consumer(client, k.consumer_group)
        # The event-id index on disk in the state directory, as the worker keeps it (this
        # peer writes no snapshots of the rest: it only restores from the changelog).
        self.snapshots = Snapshots(
            os.path.join(k.state_dir, k.consumer_group), cfg.state_topic, k.event_id_cache
        )
        if cfg.kafka.working_copy_machines > 0:
            self.core.keep_working_copy(cfg.kafka.working_copy_machines)
        reader = PeerReader(
            restore_consumer(client, cfg.kafka.consumer_group), cfg.peers_topic, self.peers
        )
        try:
            reader.load()
        finally:
            reader.close()

    def _emit(
        self, role: str, key: bytes | None, value: bytes | None, partition: int, headers: Any
    ) -> None:
        self.pending.append((role, key, value, partition, headers))

    def task(self, p: int) -> Task:
        task = self.tasks.get(p)
        if task is None:
            state = restore(self.restorer, self.cfg.state_topic, p, self.snapshots)
            # Archive records to the input's partition, as the worker sends them when the
            # archive topic is partitioned as the input (ensure_topics makes it so).
            task = self.tasks[p] = Task(
                p,
                state,
                self.peers,
                self.processor,
                self.router,
                self.cfg.topics.detect,
                self._emit,
                None,
                p,
            )
        return task

    def punctuate(self) -> None:
        peers = self.peers
        for p, task in self.tasks.items():
            if task.clock_ms >= 0:
                peers.note_clock(p, task.clock_ms)
        clocks = peers.clocks
        if not clocks:
            return
        for p, task in self.tasks.items():
            for out in self.processor.punctuate(task.store, p, clocks):
                self._emit(out.kind, out.key, out.value, -1, None)

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_checkpoint >= self.cfg.kafka.commit_interval_s

    def checkpoint(self) -> list[tuple[str, bytes, bytes | None, int]]:
        """The changelog and peer records of everything changed since the last checkpoint:
        (topic, key, value, partition)."""
        self.last_checkpoint = time.monotonic()
        tasks, core = self.tasks, self.core
        if core.working is not None:
            dirty = [p for p in core.working.dirty_partitions() if p in tasks]
            core.flush(lambda p: tasks[p].store, dirty)
        out = []
        for p, task in tasks.items():
            for key, value in task.state.drain():
                out.append((self.cfg.state_topic, key, value, p))
        for key, value in self.peers.drain():
            out.append((self.cfg.peers_topic, key, value, 0))
        return out

    def checkpointed(self) -> None:
        """After the checkpoint's records are sent: the event ids admitted since the last one
        go to the on-disk index, as the worker writes them after a commit."""
        for task in self.tasks.values():
            task.state.seen.flush()


def broker_credentials(cfg: Config) -> Any:
    """kafka.security in faust's (aiokafka's) terms, from the same librdkafka settings every
    other client gets; None for plaintext."""
    import ssl

    import faust

    conf = cfg.kafka.client_config()
    protocol = str(conf.get("security.protocol", "PLAINTEXT")).upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=conf.get("ssl.ca.location"))
        if conf.get("ssl.certificate.location"):
            context.load_cert_chain(
                conf["ssl.certificate.location"],
                conf.get("ssl.key.location"),
                conf.get("ssl.key.password"),
            )
        if conf.get("ssl.endpoint.identification.algorithm") == "none":
            context.check_hostname = False
    if not protocol.startswith("SASL"):
        return faust.SSLCredentials(context)
    mechanism = conf.get("sasl.mechanism", "SCRAM-SHA-512")
    if mechanism == "OAUTHBEARER":
        raise SystemExit("the faust peer does not do OAUTHBEARER")
    return faust.SASLCredentials(
        username=conf["sasl.username"],
        password=conf["sasl.password"],
        ssl_context=context,
        mechanism=mechanism,
    )


def build_app(
    cfg: Config,
    *,
    datadir: str,
    batch: int = 1000,
    within_s: float = 0.05,
    buffer_maxsize: int = 16_384,
    max_poll_records: int = 2_000,
    send_with: str = "producer",
) -> tuple[Any, Processor]:
    """The faust app and the Processor its agent runs. `send_with`: "producer" sends through
    faust's aiokafka producer (`app.producer.send`), "topic" through faust's topic objects
    (`Topic.send`: a FutureMessage, faust's send callbacks and sensors per record)."""
    import faust

    if cfg.kafka.processing_guarantee != "at-least-once":
        raise SystemExit("the faust peer runs at-least-once only")
    processor = Processor(cfg, BundledSchemas())
    app = faust.App(
        cfg.kafka.consumer_group,
        broker=f"kafka://{cfg.kafka.bootstrap()}",
        broker_credentials=broker_credentials(cfg),
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
    t = cfg.topics
    source = app.topic(
        t.events,
        t.detect,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=t.partitions,
    )
    topic_of = {
        "archive": t.archive,
        "deadletter": t.deadletter,
        "alert": t.alerts,
        "forward": t.detect,
    }
    one_pass = OnePass(cfg, processor, f"faust-{cfg.kafka.consumer_group}")

    topics: dict[str, Any] = {}

    async def topic_send(
        topic: str, key: Any, value: Any, partition: Any, timestamp: Any, headers: Any
    ) -> Any:
        t = topics.get(topic)
        if t is None:
            t = topics[topic] = app.topic(
                topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                value_serializer="raw",
            )  # fmt: skip
        return await t.send(key=key, value=value, partition=partition, headers=headers)

    @app.agent(source, concurrency=1)
    async def process(stream: Any) -> None:
        send = app.producer.send if send_with == "producer" else topic_send
        pending = one_pass.pending

        async def send_pending() -> None:
            for role, key, value, partition, headers in pending:
                await send(
                    topic_of[role], key, value, None if partition < 0 else partition, None, headers
                )
            pending.clear()

        async for events in stream.take_events(batch, within=within_s):
            for ev in events:
                msg = ev.message
                one_pass.task(msg.partition).process(_Record(msg))
                await send_pending()
            one_pass.punctuate()
            await send_pending()
            if one_pass.checkpoint_due():
                for topic, key, value, partition in one_pass.checkpoint():
                    await send(topic, key, value, partition, None, None)
                one_pass.checkpointed()

    return app, processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faust_peer", description=__doc__)
    parser.add_argument("--config", required=True, help="auditwatch YAML config (topics, kafka)")
    parser.add_argument("--datadir", help="faust's directory (default: under the state_dir)")
    parser.add_argument("--batch", type=int, default=1000, help="stream.take_events batch size")
    parser.add_argument("--within", type=float, default=0.05, help="take_events timeout (s)")
    parser.add_argument("--buffer-maxsize", type=int, default=16_384)
    parser.add_argument("--max-poll-records", type=int, default=2_000)
    parser.add_argument(
        "--send",
        choices=("producer", "topic"),
        default="producer",
        help="how outputs are sent: faust's producer (default) or its Topic.send",
    )
    parser.add_argument("--loglevel", default="error")
    args = parser.parse_args(argv)
    try:
        import faust
    except ImportError:
        print("faust-streaming is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    ensure_topics(cfg)
    datadir = args.datadir or str(Path(cfg.kafka.state_dir) / "faust")
    app, processor = build_app(
        cfg,
        datadir=datadir,
        batch=args.batch,
        within_s=args.within,
        buffer_maxsize=args.buffer_maxsize,
        max_poll_records=args.max_poll_records,
        send_with=args.send,
    )
    # aiokafka's producer logs a debug record per send, and the worker's log level filters it
    # only at the handler: making each record cost about a fifth of faust's per-event time.
    # Its loggers at the worker's level drop them before they are made.
    level = logging.getLevelName(args.loglevel.upper())
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(level)
    # The same counters `auditwatch run` prints on exit, which the harness reads.
    atexit.register(
        lambda: print(json.dumps(dict(sorted(processor.metrics.items()))), file=sys.stderr)
    )
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
