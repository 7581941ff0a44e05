"""`auditwatch run`: the Processor wired into a Quix Streams application.

Input values are read as raw bytes and decoded inside the graph, so dead letters are produced
by the same producer and under the same processing guarantee as archive records and alerts.
State lives in a Quix RocksDB store with a changelog topic, so a restarted or reassigned worker
resumes with its baselines.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from quixstreams import Application
from quixstreams.context import message_context
from quixstreams.models.serializers import Serializer

from schemas.codec import BundledSchemas, SchemaResolver, decode_detect, encode_detect
from streams.config import Config
from streams.processor import Origin, Output, Processor, now_ms
from streams.seed import is_seed
from streams.topics import ensure_topics

log = logging.getLogger("auditwatch.run")


class _TransactionStore:
    """The Processor's Store over a Quix partition transaction.

    Quix scopes `State` to the message key, but the message key is only a partitioning hint:
    the machine_id inside the event is authoritative, dedupe is by event_id and peer groups
    span machines. So this addresses the partition's transaction directly with our own key
    kinds as prefixes; writes still go through the transaction and its changelog, keeping
    the recovery guarantees.
    """

    __slots__ = ("tx",)

    def __init__(self, tx: Any) -> None:
        self.tx = tx

    def get(self, kind: bytes, key: str) -> bytes | None:
        value: bytes | None = self.tx.get_bytes(key.encode(), kind)
        return value

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        self.tx.set_bytes(key.encode(), value, kind)

    def delete(self, kind: bytes, key: str) -> None:
        self.tx.delete(key.encode(), kind)


class _OutputValue(Serializer):
    """Outputs arrive already encoded; the topic only unwraps them."""

    def __call__(self, value: Output, ctx: Any = None) -> bytes:
        return value.value


class _ProgressLog:
    """A periodic INFO line with the processor's counters, so an operator tailing the log sees
    progress and dead-letter rates without a metrics stack."""

    def __init__(self, processor: Processor, every_s: float = 30.0) -> None:
        self.processor = processor
        self.every_s = every_s
        self.n = 0
        self.last = time.monotonic()
        self.last_in = 0

    def tick(self) -> None:
        self.n += 1
        if self.n % 1000:
            return
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        m = self.processor.metrics
        rate = (m["events_in"] - self.last_in) / (now - self.last)
        self.last, self.last_in = now, m["events_in"]
        log.info(
            "processed %d events (%.0f/s): archived %d, duplicates %d, dead letters %d, "
            "alerts opened %d, key mismatches %d",
            m["events_in"],
            rate,
            m["archived"],
            m["duplicates"],
            m["deadlettered"],
            m["alerts.opened"],
            m["key_mismatch"],
        )


def make_resolver(cfg: Config) -> SchemaResolver:
    if cfg.input.schema_registry is None:
        return BundledSchemas()
    from streams.registry import RegistrySchemas

    return RegistrySchemas(cfg.input.schema_registry)


def build_application(
    cfg: Config, processor: Processor | None = None
) -> tuple[Application, Processor]:
    """The Quix application for `cfg`, with its dataframe wired. Topics must exist."""
    processor = processor or Processor(cfg, make_resolver(cfg))
    k = cfg.kafka
    app = Application(
        broker_address=k.bootstrap(),
        consumer_group=k.consumer_group,
        auto_offset_reset=k.auto_offset_reset,
        commit_interval=k.commit_interval_s,
        processing_guarantee=k.processing_guarantee,
        state_dir=k.state_dir,
        consumer_extra_config=dict(k.librdkafka),
        producer_extra_config=dict(k.librdkafka),
        loglevel="WARNING",
    )
    t = cfg.topics
    source = app.topic(t.events, key_deserializer="bytes", value_deserializer="bytes")
    sinks = {
        role: app.topic(name, key_serializer="bytes", value_serializer=_OutputValue())
        for role, name in (
            ("archive", t.archive),
            ("deadletter", t.deadletter),
            ("alert", t.alerts),
            ("detect", t.detect),
        )
    }
    detect_source = app.topic(t.detect, key_deserializer="bytes", value_deserializer="bytes")

    progress = _ProgressLog(processor)

    def process(
        value: bytes | None, key: bytes | None, _ts: int, _headers: Any, state: Any
    ) -> list[Output]:
        ctx = message_context()
        origin = Origin(ctx.topic, ctx.partition, ctx.offset)
        outputs, event = processor.ingest(value, key, origin, _TransactionStore(state._transaction))
        if event is not None:
            # Re-keyed by peer group: the detection stage sees a whole group in one partition.
            group = processor.core.group_of(event)
            outputs.append(Output("detect", group.encode(), encode_detect(event, ctx.partition)))
        progress.tick()
        return outputs

    def detect(
        value: bytes, _key: bytes | None, _ts: int, headers: Any, state: Any
    ) -> list[Output]:
        ctx = message_context()
        source, event = decode_detect(value)
        origin = Origin(ctx.topic, ctx.partition, ctx.offset)
        # History from `auditwatch seed` is learned like live traffic, never alerted on.
        return processor.detect(
            event,
            _TransactionStore(state._transaction),
            origin,
            learn_only=is_seed(headers),
            source=source,
        )

    sdf = app.dataframe(source)
    sdf = sdf.apply(process, stateful=True, metadata=True, expand=True)
    # Kafka timestamps are processing time: event time stays in the payload, and Kafka 4.0
    # rejects records more than an hour ahead of the broker clock.
    sdf = sdf.set_timestamp(lambda _v, _k, _t, _h: now_ms())
    sdf.to_topic(lambda v, _k, _t, _h: sinks[v.kind], key=lambda v: v.key)

    stage2 = app.dataframe(detect_source)
    stage2 = stage2.apply(detect, stateful=True, metadata=True, expand=True)
    stage2 = stage2.set_timestamp(lambda _v, _k, _t, _h: now_ms())
    stage2.to_topic(sinks["alert"], key=lambda v: v.key)
    return app, processor


def run(cfg: Config, stop: threading.Event | None = None) -> Processor:
    """Run until SIGTERM/SIGINT (or `stop` is set). Creates missing topics first."""
    for report in ensure_topics(cfg):
        if report.created:
            log.warning("created topic %s", report.name)
        for diff in report.differences:
            log.warning("topic %s differs from the expected config: %s", report.name, diff)
    app, processor = build_application(cfg)
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), app.stop()), daemon=True).start()
    # Quix installs SIGINT/SIGTERM handlers that stop after the current message and commit.
    app.run()
    return processor
