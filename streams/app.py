"""`auditwatch run`: the Processor wired into a Quix Streams application.

Input values are read as raw bytes and decoded inside the graph, so dead letters are produced
by the same producer and under the same processing guarantee as archive records and alerts.
State lives in a Quix RocksDB store with a changelog topic, so a restarted or reassigned worker
resumes with its baselines.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import OrderedDict
from itertools import islice
from typing import Any

from quixstreams import Application
from quixstreams.context import message_context
from quixstreams.models.serializers import Serializer

from detectors.core import MACHINE
from detectors.explain import explain_machine
from schemas.codec import BundledSchemas, SchemaResolver, decode_detect, encode_detect
from streams.align import InputAligner
from streams.config import Config
from streams.control import ControlReader
from streams.metrics import InputWatch, Telemetry, start_http
from streams.processor import Origin, Output, Processor, now_ms
from streams.reload import ConfigReloader
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

    def __init__(
        self, processor: Processor, aligner: InputAligner | None, every_s: float = 30.0
    ) -> None:
        self.processor = processor
        self.aligner = aligner
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
        if self.aligner is not None:
            a = self.aligner
            log.info(
                "input alignment: partitions held back %d times, %d records buffered, "
                "%d paused with a full buffer",
                a.holds,
                a.buffered,
                a.fetch_pauses,
            )


def make_resolver(cfg: Config) -> SchemaResolver:
    if cfg.input.schema_registry is None:
        return BundledSchemas()
    from streams.registry import RegistrySchemas

    return RegistrySchemas(cfg.input.schema_registry)


def build_application(
    cfg: Config,
    processor: Processor | None = None,
    reloader: ConfigReloader | None = None,
    telemetry: Telemetry | None = None,
) -> tuple[Application, Processor]:
    """The Quix application for `cfg`, with its dataframe wired. Topics must exist.
    `reloader`: a new detection config it has read takes effect between two events."""
    processor = processor or Processor(cfg, make_resolver(cfg))
    telemetry = telemetry or Telemetry(cfg, processor)
    k = cfg.kafka
    # Quix logs through our handlers (text or JSON, see streams.logs), at WARNING as before.
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app = Application(
        broker_address=k.bootstrap(),
        consumer_group=k.consumer_group,
        auto_offset_reset=k.auto_offset_reset,
        commit_interval=k.commit_interval_s,
        processing_guarantee=k.processing_guarantee,
        state_dir=k.state_dir,
        consumer_extra_config={
            **k.librdkafka,
            # Consumer lag and group state for /metrics and /readyz (streams.metrics).
            "statistics.interval.ms": int(cfg.monitoring.stats_interval_s * 1000),
            "stats_cb": telemetry.on_stats,
        },
        producer_extra_config=dict(k.librdkafka),
        loglevel=None,
    )
    t = cfg.topics
    source = app.topic(t.events, key_deserializer="bytes", value_deserializer="bytes")
    # Quix has no public handle on its consumer; holding input partitions back needs it.
    aligner = (
        InputAligner(
            app._consumer, t.events, int(k.max_input_skew_s * 1000), k.input_buffer_records
        )
        if k.max_input_skew_s > 0
        else None
    )
    if aligner is not None:
        aligner.install()
        on_rebalance(app, aligner.drop)
        telemetry.aligner = aligner
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

    progress = _ProgressLog(processor, aligner)
    ingest_latency = telemetry.latency["ingest"].observe_since
    detect_latency = telemetry.latency["detect"].observe_since

    def process(
        value: bytes | None, key: bytes | None, ts: int, _headers: Any, state: Any
    ) -> list[Output]:
        ctx = message_context()
        origin = Origin(ctx.topic, ctx.partition, ctx.offset)
        outputs, event = processor.ingest(value, key, origin, _TransactionStore(state._transaction))
        if aligner is not None:
            aligner.seen(ctx.partition, ctx.offset, event.timestamp_ms if event else None)
        if event is not None:
            # Re-keyed by peer group: the detection stage sees a whole group in one partition.
            group = processor.core.group_of(event)
            outputs.append(Output("detect", group.encode(), encode_detect(event, ctx.partition)))
        progress.tick()
        ingest_latency(ts)
        return outputs

    write_back = (
        _WriteBack(processor, detect_source.name, k.working_copy_machines)
        if k.working_copy_machines > 0
        else None
    )

    def detect(value: bytes, _key: bytes | None, ts: int, headers: Any, state: Any) -> list[Output]:
        if reloader is not None:
            reloader.apply(processor)
        ctx = message_context()
        source, event = decode_detect(value)
        origin = Origin(ctx.topic, ctx.partition, ctx.offset)
        # History from `auditwatch seed` is learned like live traffic, never alerted on.
        tx = state._transaction
        outputs = processor.detect(
            event,
            write_back.store(ctx.partition, tx) if write_back else _TransactionStore(tx),
            origin,
            learn_only=is_seed(headers),
            source=source,
        )
        detect_latency(ts)
        if outputs:
            telemetry.count_pages(outputs)
        return outputs

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
    if write_back is not None:
        write_back.install(app, stage2.stream_id)

    explain = _Explainer(app, stage2.stream_id, t.detect, processor, write_back)
    # Quix has no public hook between messages; its periodic tasks run once per round of the
    # main loop, on the processing thread, which alone may read the state stores.
    app._dataframe_registry.register_periodic_task(lambda: telemetry.tick(explain))
    if aligner is not None:
        app._dataframe_registry.register_periodic_task(aligner.tick)
    return app, processor


_MISSING = object()


class _RecordCache:
    """One detection partition's records other than machine states (peer groups, the silence
    watch, first-seen times), as bytes, read through to the store once and written back at
    checkpoints. Most events read their group's records, which a store read each cost ~10 us
    through the Quix transaction and RocksDB."""

    __slots__ = ("dirty", "values")

    def __init__(self) -> None:
        self.values: OrderedDict[tuple[bytes, str], bytes | None] = OrderedDict()
        self.dirty: set[tuple[bytes, str]] = set()

    def write_to(self, tx: Any) -> None:
        for kind, key in self.dirty:
            value = self.values[(kind, key)]
            if value is None:
                tx.delete(key.encode(), kind)
            else:
                tx.set_bytes(key.encode(), value, kind)
        self.dirty.clear()


class _CachedStore:
    """The Processor's Store over a partition's record cache and its current transaction.
    Machine states pass through: the detection core keeps those decoded itself."""

    __slots__ = ("cache", "tx")

    def __init__(self, cache: _RecordCache, tx: Any) -> None:
        self.cache = cache
        self.tx = tx

    def get(self, kind: bytes, key: str) -> bytes | None:
        if kind == MACHINE:
            value: bytes | None = self.tx.get_bytes(key.encode(), kind)
            return value
        k = (kind, key)
        values = self.cache.values
        cached = values.get(k, _MISSING)
        if cached is not _MISSING:
            values.move_to_end(k)
            return cached  # type: ignore[return-value]
        value = values[k] = self.tx.get_bytes(key.encode(), kind)
        return value

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        if kind == MACHINE:
            self.tx.set_bytes(key.encode(), value, kind)
            return
        k = (kind, key)
        self.cache.values[k] = value
        self.cache.values.move_to_end(k)
        self.cache.dirty.add(k)

    def delete(self, kind: bytes, key: str) -> None:
        if kind == MACHINE:
            self.tx.delete(key.encode(), kind)
            return
        k = (kind, key)
        self.cache.values[k] = None
        self.cache.values.move_to_end(k)
        self.cache.dirty.add(k)


class _WriteBack:
    """The detection stage's state kept in memory between checkpoints: machine states decoded
    in the detection core, the other records as bytes here. Both are written into the
    partitions' store transactions just before Quix commits a checkpoint, so the changelog
    and the committed offsets agree as when every event wrote through, under either
    processing guarantee. Quix has no public hook there, so this wraps the processing
    context's commit. A partition the worker loses (revoked, lost, or assigned afresh: another
    worker may have moved it on since) has its copy dropped, never written."""

    def __init__(self, processor: Processor, topic: str, max_machines: int) -> None:
        self.core = processor.core
        self.topic = topic
        self.working = self.core.keep_working_copy(max_machines)
        # As many of the other records: a group's few records serve many machines.
        self.max_records = max_machines
        self.caches: dict[int, _RecordCache] = {}

    def store(self, partition: int, tx: Any) -> _CachedStore:
        cache = self.caches.get(partition)
        if cache is None:
            cache = self.caches[partition] = _RecordCache()
        return _CachedStore(cache, tx)

    def flush(self, tx_of: Any, partitions: list[int] | None = None) -> None:
        """Write what changed into `tx_of(partition)` (every partition with changes)."""
        if partitions is None:
            partitions = sorted(
                {p for p, c in self.caches.items() if c.dirty}
                | set(self.working.dirty_partitions())
            )
        for p in partitions:
            cache = self.caches.get(p)
            if cache is not None and cache.dirty:
                cache.write_to(tx_of(p))
        self.core.flush(lambda p: _TransactionStore(tx_of(p)), partitions)
        self._trim()

    def _trim(self) -> None:
        excess = sum(len(c.values) for c in self.caches.values()) - self.max_records
        for cache in self.caches.values():
            if excess <= 0:
                return
            clean = list(islice((k for k in cache.values if k not in cache.dirty), excess))
            for k in clean:
                del cache.values[k]
            excess -= len(clean)

    def drop(self, partition: int) -> None:
        self.working.drop(partition)
        self.caches.pop(partition, None)

    def install(self, app: Application, stream_id: str) -> None:
        ctx = app._processing_context
        commit = ctx.commit_checkpoint

        def commit_checkpoint(force: bool = False, revoking: bool = False) -> None:
            checkpoint = ctx.checkpoint
            # Decided once: asking Quix to decide again could find the checkpoint expired a
            # moment later and commit it without the flush.
            if not (force or checkpoint.expired()):
                return
            self.flush(lambda p: checkpoint.get_store_transaction(stream_id, p))
            commit(force=True, revoking=revoking)

        ctx.commit_checkpoint = commit_checkpoint  # type: ignore[method-assign]

        def drop(topic_partitions: list[Any]) -> None:
            for tp in topic_partitions:
                if tp.topic == self.topic:
                    self.drop(tp.partition)

        on_rebalance(app, drop)


def on_rebalance(app: Application, callback: Any) -> None:
    """Call `callback(topic_partitions)` whenever partitions are assigned, revoked (after
    Quix commits for them) or lost, before Quix acts on it. Quix has no public hook for it."""
    revoke = app._revoke_state_partitions
    assign = app._on_assign

    def revoke_state_partitions(topic_partitions: list[Any]) -> None:
        callback(topic_partitions)
        revoke(topic_partitions)

    def on_assign(consumer: Any, topic_partitions: list[Any]) -> None:
        callback(topic_partitions)
        assign(consumer, topic_partitions)

    app._revoke_state_partitions = revoke_state_partitions  # type: ignore[method-assign]
    app._on_assign = on_assign  # type: ignore[method-assign,assignment]


class _Explainer:
    """Answers `/machines/ID` on the processing thread, from the detection stage's stores.

    Reads go through the current checkpoint's transaction of each assigned partition, so they
    see writes not yet committed, and never race the store being closed on a rebalance (which
    a read from the HTTP thread could)."""

    def __init__(
        self,
        app: Application,
        stream_id: str,
        topic: str,
        processor: Processor,
        write_back: _WriteBack | None,
    ) -> None:
        self.app = app
        self.stream_id = stream_id
        self.topic = topic
        self.processor = processor
        self.write_back = write_back

    def __call__(self, machine_id: str, group: str | None, top: int = 20) -> dict[str, Any]:
        store = self.app._state_manager.get_store(self.stream_id)
        checkpoint = self.app._processing_context.checkpoint
        partitions = sorted(store.partitions)
        for p in partitions:
            tx = checkpoint.get_store_transaction(self.stream_id, p)
            if self.write_back is not None:
                # Into this checkpoint's transaction, which commits them anyway.
                self.write_back.flush({p: tx}.__getitem__, [p])
            kv = _TransactionStore(tx)
            found = explain_machine(kv, self.processor.core, machine_id, group=group, top=top)
            if found is not None:
                return {"found": True, "topic": self.topic, "partition": p, **found}
        return {
            "found": False,
            "machine_id": machine_id,
            "error": f"{machine_id} is not in the detection partitions this worker owns "
            "(another worker may own it, or it has not been seen)",
            "topic": self.topic,
            "partitions_searched": partitions,
        }


def run(
    cfg: Config,
    stop: threading.Event | None = None,
    config_path: str | None = None,
    reload_poll_s: float = 0.0,
) -> Processor:
    """Run until SIGTERM/SIGINT (or `stop` is set). Creates missing topics first. With
    `config_path`, SIGHUP (and, with `reload_poll_s` > 0, a change to the file) reloads the
    detection settings, keeping the baselines."""
    # First thing: SIGHUP's default action kills the process, and startup (topics, state,
    # the control topic) can take a while. A reload asked for meanwhile waits for the reloader.
    hup = _HupRoute(wants_reload=config_path is not None)
    previous_hup = hup.install()
    try:
        return _run(cfg, stop, config_path, reload_poll_s, hup)
    finally:
        if previous_hup is not None:
            signal.signal(signal.SIGHUP, previous_hup)


def _run(
    cfg: Config,
    stop: threading.Event | None,
    config_path: str | None,
    reload_poll_s: float,
    hup: _HupRoute,
) -> Processor:
    for report in ensure_topics(cfg):
        if report.created:
            log.warning("created topic %s", report.name)
        for diff in report.differences:
            log.warning("topic %s differs from the expected config: %s", report.name, diff)
    reloader = ConfigReloader(config_path, cfg, reload_poll_s).start() if config_path else None
    if reloader is not None:
        hup.attach(reloader)
    processor = Processor(cfg, make_resolver(cfg))
    telemetry = Telemetry(cfg, processor)
    app, processor = build_application(cfg, processor, reloader=reloader, telemetry=telemetry)
    server = start_http(telemetry, cfg)
    watch = None
    if cfg.monitoring.input_quiet_s:
        watch = InputWatch(cfg, telemetry, lambda: processor.core.config_version)
        watch.start()
    # Acknowledgements and snoozes from every partition of the control topic, whichever
    # detection partitions this worker owns; loaded before the first event is judged.
    control = ControlReader(cfg).start()
    if not control.wait_ready(30.0):
        log.warning("control topic not loaded within 30 s; acknowledgements apply once it is")
    processor.core.control = control.lookup
    telemetry.control = control
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), app.stop()), daemon=True).start()
    try:
        # Quix installs SIGINT/SIGTERM handlers that stop after the current message and commit.
        app.run()
    finally:
        if watch is not None:
            watch.stop()
        if server is not None:
            server.stop()
        control.stop()
        if reloader is not None:
            reloader.stop()
    return processor


class _HupRoute:
    """SIGHUP's handler for the whole of `run`: routes it to the reloader once there is one,
    queues one reload until then, and without a config file only logs (SIGHUP's default
    action would kill the worker)."""

    def __init__(self, wants_reload: bool) -> None:
        self.wants_reload = wants_reload
        self.reloader: ConfigReloader | None = None
        self.pending = False

    def install(self) -> Any:
        """The previous handler, or None where signals cannot be set (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGHUP, self)

    def __call__(self, _signum: int, _frame: Any) -> None:
        reloader = self.reloader
        if reloader is not None:
            reloader.request()
        elif self.wants_reload:
            self.pending = True
            log.info("SIGHUP during startup: the config is reloaded once the worker is up")
        else:
            log.warning("SIGHUP: no config file to reload (started without --config)")

    def attach(self, reloader: ConfigReloader) -> None:
        # Handlers run on this (the main) thread between bytecodes: a signal before the
        # assignment sets `pending`, read below; one after it goes to the reloader directly.
        self.reloader = reloader
        if self.pending:
            self.pending = False
            reloader.request()
