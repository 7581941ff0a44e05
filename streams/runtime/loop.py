"""The worker: poll a batch, hand each record to its partition's task, punctuate, commit.

One consumer subscribes to the input topic and the repartition topic with the range assignor,
so input partition p and repartition partition p always belong to the same worker (the two
topics have the same partition count; checked at start). Membership is static by default
(`group.instance.id`, see KafkaSettings.instance_id): a restarted worker gets its partitions
back without waiting out the session timeout.

The loop, after Kafka Streams' `StreamThread.runOnce`:
1. `consume(batch_max_records, batch_max_wait_s)`; each record goes to its task;
2. punctuate: each task's silence clock moves with every partition's event time;
3. every `commit_interval_s`: the working copy of machine states is written into the
   partitions' state, the changed state and peer records are produced, and the commit policy
   commits them with the outputs and the input offsets.

Rebalances: an assignment creates each new partition's task and restores its state from the
changelog before its first record; a revocation commits, then drops the revoked tasks; a lost
assignment drops them without committing. A failed commit (`Rewind`) rewinds every owned
partition to its committed offset and reloads its state; a broker outage is waited out. The
worker exits only when asked to (SIGTERM/SIGINT, or `stop`), after a last commit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from detectors.explain import explain_machine
from streams.ops.config import Config
from streams.ops.logs import CURRENT
from streams.ops.metrics import Telemetry
from streams.ops.reload import ConfigReloader
from streams.ops.topics import client_principal, ledger_topic
from streams.processor import Processor
from streams.runtime.commit import AtLeastOnce, ExactlyOnce, Rewind
from streams.runtime.peers import PeerReader, PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import Snapshots, end_offset, restore_all, restore_consumer
from streams.runtime.task import Prepared, Task

log = logging.getLogger("auditwatch.runtime")

# How often the peers topic is polled for other workers' records, and the progress logged.
_PEERS_EVERY_S = 0.5
_PROGRESS_EVERY_S = 30.0
_ERROR_LOG_EVERY_S = 10.0
# How often a worker refused its consumer group says so again (at ERROR) while it waits.
_GROUP_REFUSED_EVERY_S = 60.0


def default_instance_id(cfg: Config) -> str:
    """Stable across restarts of one deployment's worker: the pod or host name, and the
    state directory (two workers on one host have two)."""
    env = os.environ.get("AUDITWATCH_INSTANCE_ID") or os.environ.get("POD_NAME")
    if env:
        return env
    digest = hashlib.sha1(os.path.abspath(cfg.kafka.state_dir).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def instance_id(cfg: Config) -> str | None:
    """`group.instance.id`, or None for dynamic membership."""
    configured = cfg.kafka.instance_id
    if configured is not None:
        return configured or None
    return default_instance_id(cfg)


T = TypeVar("T")


class _ConsumerFatal(Exception):
    """The consumer is unusable (librdkafka raised a fatal error): it must be replaced."""


def _fatal(err: KafkaError) -> bool:
    # A fenced static member comes back from consume() as a _FATAL error whose fatal() is
    # False: the flag belongs to the underlying error.
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


class TopicLayoutError(RuntimeError):
    """The internal topics are not partitioned as the input topic."""


class Worker:
    def __init__(
        self,
        cfg: Config,
        processor: Processor,
        telemetry: Telemetry,
        reloader: ConfigReloader | None = None,
    ) -> None:
        self.cfg = cfg
        self.processor = processor
        self.core = processor.core
        self.telemetry = telemetry
        self.reloader = reloader
        k = cfg.kafka
        t = cfg.topics
        self.events_topic = t.events
        self.repartition_topic = t.detect
        self.state_topic = cfg.state_topic
        self.peers_topic = cfg.peers_topic
        # None until start() has seen the topic (a deployment from before the ledger has none).
        self.ledger_topic: str | None = ledger_topic(cfg)
        self.outputs = {
            "archive": t.archive,
            "deadletter": t.deadletter,
            "alert": t.alerts,
            "forward": t.detect,
        }
        self.instance = instance_id(cfg)
        self.writer = self.instance or default_instance_id(cfg)
        self.exactly_once = k.processing_guarantee == "exactly-once"
        self.tasks: dict[int, Task] = {}
        # (topic, partition) -> the next offset to commit, and the last committed.
        self.positions: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.peers = PeerTable(self.writer)
        self.rewinds = 0
        self.restores = 0
        self.began = self.last_commit = time.monotonic()
        self._last_error_log = 0.0
        # While the broker refuses the consumer group: when that was last logged, and why.
        self._group_refused_at: float | None = None
        self._group_refused_why: str | None = None
        self._stopping = False
        if k.working_copy_machines > 0:
            self.core.keep_working_copy(k.working_copy_machines)
        telemetry.worker = self

    # ---- start -------------------------------------------------------------------------

    def start(self) -> None:
        k = self.cfg.kafka
        client = k.client_config()
        self.partitions = self._check_topics(client)
        self.router = Router(k.partitioner, self.partitions)
        if self.exactly_once:
            self.policy: AtLeastOnce | ExactlyOnce = ExactlyOnce(
                {**client, "linger.ms": 5},
                f"{k.consumer_group}-{self.writer}",
                k.transaction_timeout_s,
            )
        else:
            self.policy = AtLeastOnce(
                {**client, "linger.ms": 5}, delivery_timeout_s=max(120.0, 2 * k.session_timeout_s)
            )
        self.restorer = restore_consumer(client, k.consumer_group)
        self.snapshots = Snapshots(
            os.path.join(k.state_dir, k.consumer_group), self.state_topic, k.event_id_cache
        )
        self.last_snapshot = time.monotonic()
        self.peer_reader = PeerReader(
            restore_consumer(client, k.consumer_group), self.peers_topic, self.peers
        )
        loaded = self.peer_reader.load()
        log.info("peer table: %d records read from %s", loaded, self.peers_topic)
        self.consumer = self._subscribe()
        log.info(
            "worker %s: %s, %d partitions, static membership %s",
            self.writer,
            k.processing_guarantee,
            self.partitions,
            "on" if self.instance else "off",
        )

    def _subscribe(self) -> Consumer:
        k = self.cfg.kafka
        session_ms = int(k.librdkafka.get("session.timeout.ms", k.session_timeout_s * 1000))
        conf: dict[str, Any] = {
            # Tunable through kafka.librdkafka, which wins over these.
            "session.timeout.ms": session_ms,
            # Several heartbeats per session, whichever setting gave the session timeout.
            "heartbeat.interval.ms": max(500, session_ms // 5),
            "max.poll.interval.ms": 600_000,
            **k.client_config(),
            "group.id": k.consumer_group,
            "auto.offset.reset": k.auto_offset_reset,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Input partition p and repartition partition p to the same member.
            "partition.assignment.strategy": "range",
            "isolation.level": "read_committed",
            "statistics.interval.ms": int(self.cfg.monitoring.stats_interval_s * 1000),
            "stats_cb": self.telemetry.on_stats,
        }
        if self.instance:
            conf["group.instance.id"] = self.instance
        consumer = Consumer(conf)
        consumer.subscribe(
            [self.events_topic, self.repartition_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def _check_topics(self, client: dict[str, Any]) -> int:
        probe = restore_consumer(client, self.cfg.kafka.consumer_group)
        try:
            meta = probe.list_topics(timeout=30.0).topics
        finally:
            probe.close()
        counts = {}
        for name in (self.events_topic, self.repartition_topic, self.state_topic, self.peers_topic):
            topic = meta.get(name)
            if topic is None or topic.error is not None:
                raise TopicLayoutError(f"topic {name} does not exist (`auditwatch topics create`)")
            counts[name] = len(topic.partitions)
        n = counts[self.events_topic]
        ledger = meta.get(self.ledger_topic) if self.ledger_topic else None
        if ledger is None or ledger.error is not None:
            log.warning(
                "no ledger topic %s (`auditwatch topics create` makes it): the per-partition "
                "counts are kept in the state but not published for `compliance check`",
                self.ledger_topic,
            )
            self.ledger_topic = None
        archive = meta.get(self.outputs["archive"])
        self.archive_aligned = (
            archive is not None and archive.error is None and len(archive.partitions) == n
        )
        for name in (self.repartition_topic, self.state_topic):
            if counts[name] != n:
                raise TopicLayoutError(
                    f"{name} has {counts[name]} partitions, the input topic {self.events_topic} "
                    f"{n}: partition p of each belongs to input partition p, so they must be "
                    "equal (recreate the internal topic with as many partitions)"
                )
        return n

    # ---- tasks ---------------------------------------------------------------------------

    def _add_tasks(self, partitions: list[int]) -> None:
        """Tasks for `partitions`, their states restored from the changelog in one pass."""
        wanted = [p for p in partitions if p not in self.tasks]
        if not wanted:
            return
        states = self._retrying(
            "restoring partitions " + ",".join(map(str, wanted)),
            lambda: restore_all(self.restorer, self.state_topic, wanted, self.snapshots),
        )
        self.restores += len(wanted)
        for p, state in states.items():
            self.tasks[p] = Task(
                p,
                state,
                self.peers,
                self.processor,
                self.router,
                self.repartition_topic,
                self._emit,
                self.telemetry,
                p if self.archive_aligned else -1,
            )

    def _retrying(self, what: str, call: Callable[[], T], give_up_after: int = 0) -> T:
        """`call()`, retried with backoff on a Kafka error that can pass (a broker coming
        back, a leader moving); a fatal one is raised. `give_up_after` failures in a row
        (0: never) raise `_ConsumerFatal` too: the call's client is replaced."""
        delay = 0.5
        failures = 0
        while True:
            try:
                return call()
            except KafkaException as e:
                err = e.args[0]
                if _fatal(err):
                    raise _ConsumerFatal(err.str()) from None
                why = err.str()
            except TimeoutError as e:
                why = str(e)
            failures += 1
            if give_up_after and failures >= give_up_after:
                raise _ConsumerFatal(f"{what} failed {failures} times in a row ({why})")
            log.warning("%s failed (%s); retrying in %.1f s", what, why, delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)

    def _emit(
        self, role: str, key: bytes | None, value: bytes, partition: int, headers: Any
    ) -> None:
        self.policy.produce(self.outputs[role], key, value, partition, headers)

    def _drop(self, p: int) -> None:
        task = self.tasks.pop(p, None)
        if task is not None:
            # Uncommitted ids are not flushed: the file only ever holds committed ones.
            task.state.seen.close()
        self.core.forget_partition(p)
        for topic in (self.events_topic, self.repartition_topic):
            self.positions.pop((topic, p), None)
            self.committed.pop((topic, p), None)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._group_refused_why is not None:
            group = self.cfg.kafka.consumer_group
            log.info("joined consumer group %s: its ACL is in place now", group)
            if self.telemetry.waiting == self._group_refused_why:
                self.telemetry.set_waiting(None)
            self._group_refused_at = self._group_refused_why = None
        self._add_tasks(sorted({tp.partition for tp in partitions}))
        log.info("assigned partitions %s", sorted(self.tasks))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = sorted({tp.partition for tp in partitions} & set(self.tasks))
        if not revoked:
            return
        try:
            if self.commit():
                self.snapshot(revoked)
        except Exception:
            log.exception("commit on revocation failed; the next owner re-processes")
            self.policy.abort()
        for p in revoked:
            self._drop(p)
        log.info("revoked partitions %s", revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = sorted({tp.partition for tp in partitions} & set(self.tasks))
        log.warning("lost partitions %s (group membership lost); dropping them uncommitted", lost)
        self.policy.abort()
        for p in lost:
            self._drop(p)
        if self.tasks:
            # Their uncommitted work went with the aborted transaction.
            self.rewind("partitions lost")

    # ---- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        progress_at = peers_at = time.monotonic()
        last_in = 0
        interval = self.cfg.kafka.commit_interval_s
        CURRENT.thread = threading.get_ident()
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                except _ConsumerFatal as e:
                    self._restart_consumer(str(e))
                    continue
                now = time.monotonic()
                if now - peers_at >= _PEERS_EVERY_S:
                    peers_at = now
                    self.peer_reader.poll()
                if now - self.last_commit >= interval and self._commit_or_restart():
                    every = self.cfg.kafka.snapshot_interval_s
                    if every and now - self.last_snapshot >= every:
                        self.snapshot(sorted(self.tasks))
                if now - progress_at >= _PROGRESS_EVERY_S:
                    last_in = self._progress(now - progress_at, last_in)
                    progress_at = now
                if self._group_refused_at is not None:
                    # librdkafka may report the refusal once and then retry quietly.
                    self._group_refused()
        finally:
            self.close()

    def _failed(self, msg: Any) -> None:
        # The processor turns bad input into dead letters and guards detection; an exception
        # here is a bug. Counted and logged with the record's place.
        self.processor.metrics["processing_errors"] += 1
        log.exception("processing %s[%d]@%d failed", msg.topic(), msg.partition(), msg.offset())

    def run_once(self) -> int:
        k = self.cfg.kafka
        msgs = self.consumer.consume(k.batch_max_records, k.batch_max_wait_s)
        tasks = self.tasks
        positions = self.positions
        observe = self.telemetry.latency["ingest"].observe_since
        current = CURRENT
        events = self.events_topic
        # Two passes: decode the batch, look up its event ids per task in a few queries,
        # then dedupe, archive and detect in order. Records of one partition keep their order.
        prepared: dict[Task, list[Prepared]] = {}
        for msg in msgs:
            current.message = msg
            err = msg.error()
            if err is not None:
                self._consumer_error(err)
                continue
            p = msg.partition()
            task = tasks.get(p)
            if task is None:
                continue
            try:
                item = task.prepare(msg)
            except Exception:
                self._failed(msg)
            else:
                if item is not None:
                    prepared.setdefault(task, []).append(item)
            topic = msg.topic()
            positions[(topic, p)] = msg.offset() + 1
            if topic == events:  # a forwarded event was observed when it came in
                observe(msg.timestamp()[1])
        for task, items in prepared.items():
            task.seen_ids(items)
            for item in items:
                current.message = item.msg
                try:
                    task.finish(item)
                except Exception:
                    self._failed(item.msg)
        current.message = None
        self.policy.poll()
        self._punctuate()
        if self.reloader is not None:
            self.reloader.apply(self.processor)
        self.telemetry.tick(self.explain)
        return len(msgs)

    def _punctuate(self) -> None:
        peers = self.peers
        for p, task in self.tasks.items():
            if task.clock_ms >= 0:
                peers.note_clock(p, task.clock_ms)
        clocks = peers.clocks
        if not clocks:
            return
        for p, task in self.tasks.items():
            alerts = self.processor.punctuate(task.store, p, clocks)
            for out in alerts:
                self._emit(out.kind, out.key, out.value, -1, None)
            if alerts:
                self.telemetry.count_pages(alerts)

    def _consumer_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            self._group_refused()
            return
        if _fatal(err):
            raise _ConsumerFatal(err.str())
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("kafka: %s (bootstrap %s); retrying", err.str(), self.cfg.kafka.bootstrap())

    def _group_refused(self) -> None:
        """The broker refuses this worker its consumer group: no partitions, no processing,
        until an admin grants the ACL (librdkafka keeps asking; the worker joins as soon as it
        is granted, so it waits rather than exits). Loud: an ERROR every minute, and /readyz
        not ready with the reason."""
        group = self.cfg.kafka.consumer_group
        why = (
            f"not authorized to join consumer group {group} (Group authorization failed, "
            f"GROUP_AUTHORIZATION_FAILED): {client_principal(self.cfg)} needs Read on group "
            f"{group} (`auditwatch acls show --role worker`; an admin applies it with "
            "`auditwatch acls apply`); no partitions are processed until then"
        )
        now = time.monotonic()
        self._group_refused_why = why
        self.telemetry.set_waiting(why)
        last = self._group_refused_at
        if last is None or now - last >= _GROUP_REFUSED_EVERY_S:
            self._group_refused_at = now
            log.error("%s; retrying", why)

    # ---- commit and recovery ---------------------------------------------------------------

    def _commit_or_restart(self) -> bool:
        try:
            return self.commit()
        except _ConsumerFatal as e:
            self._restart_consumer(str(e))
            return False

    def commit(self) -> bool:
        """Make everything processed so far durable; False if it had to rewind instead."""
        self.last_commit = time.monotonic()
        tasks = self.tasks
        core = self.core
        if core.working is not None:
            dirty = [p for p in core.working.dirty_partitions() if p in tasks]
            core.flush(lambda p: tasks[p].store, dirty)
        try:
            self.policy.settle()
        except Rewind as e:
            self.rewind(str(e))
            return False
        produce = self.policy.produce
        self._ledger(produce)
        for p, task in tasks.items():
            for key, value in task.state.drain():
                produce(self.state_topic, key, value, p, None)
        for key, value in self.peers.drain():
            produce(self.peers_topic, key, value, 0, None)
        offsets = [
            TopicPartition(topic, p, offset)
            for (topic, p), offset in self.positions.items()
            if self.committed.get((topic, p)) != offset
        ]
        try:
            self.policy.commit(self.consumer, offsets)
        except Rewind as e:
            self.rewind(str(e))
            return False
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        for task in tasks.values():
            task.state.seen.flush()
        return True

    def _ledger(self, produce: Callable[..., None]) -> None:
        """Each task's changed ledger counts: into its state (the changelog's last record of
        this commit) and onto the ledger topic, with the same commit."""
        topics = {"input": self.events_topic, "repartition": self.repartition_topic}
        extra = {
            "guarantee": self.cfg.kafka.processing_guarantee,
            "writer": self.writer,
            "committed_at_ms": int(time.time() * 1000),
        }
        for p, task in self.tasks.items():
            for key, value in task.ledger.changed(task.state, p, topics, extra):
                if self.ledger_topic is not None:
                    produce(self.ledger_topic, key, value, 0, None)

    def rewind(self, why: str) -> None:
        """Go back to the last commit: every owned partition's offsets and state, and the
        peer table as published."""
        self.rewinds += 1
        log.warning("rewinding %d partitions to their last commit: %s", len(self.tasks), why)
        self.policy.abort()
        owned = sorted(self.tasks)
        for p in owned:
            self._drop(p)
        self._reload_peers()
        committed = self._committed_offsets(owned)
        self._add_tasks(owned)
        reset = OFFSET_BEGINNING if self.cfg.kafka.auto_offset_reset == "earliest" else OFFSET_END
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else reset
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as e:
                # No longer assigned (the group moved on meanwhile): the next assignment
                # starts it from the committed offset anyway.
                log.info("not seeking %s[%d]: %s", tp.topic, tp.partition, e.args[0])
            if tp.offset >= 0:
                self.committed[(tp.topic, tp.partition)] = tp.offset

    def _committed_offsets(self, owned: list[int]) -> list[TopicPartition]:
        if not owned:
            return []
        wanted = [
            TopicPartition(topic, p)
            for topic in (self.events_topic, self.repartition_topic)
            for p in owned
        ]
        # Seen after a 90 s outage, exactly-once: the consumer's every offset fetch timed
        # out for minutes while the broker served everyone else (the at-least-once worker's
        # consumer, fenced as a static member, was replaced and went on). Two timeouts of
        # 30 s: a new consumer, which static membership hands the partitions back to.
        return self._retrying(
            "reading committed offsets",
            lambda: list(self.consumer.committed(wanted, 30.0)),
            give_up_after=2,
        )

    def _reload_peers(self) -> None:
        self.peers.reset()
        self._retrying("reading the peers topic", self.peer_reader.load)

    def _restart_consumer(self, why: str) -> None:
        """A consumer librdkafka has given up on (a static member fenced after its session
        expired during an outage: librdkafka#3437) is replaced; static membership hands the
        partitions back to the new one, and their state is restored on assignment."""
        log.warning("the consumer cannot go on (%s): starting a new one", why)
        self.policy.abort()
        for p in list(self.tasks):
            self._drop(p)
        try:
            self.consumer.close()
        except Exception as e:  # closing a fenced consumer may fail; it is dropped anyway
            log.info("closing the old consumer: %s", e)
        self._reload_peers()
        self.consumer = self._subscribe()
        self.rewinds += 1

    def snapshot(self, partitions: list[int]) -> None:
        """Write the partitions' state locally, right after a commit: it is then exactly the
        changelog up to its end offset."""
        self.last_snapshot = time.monotonic()
        for p in partitions:
            task = self.tasks.get(p)
            if task is None:
                continue
            try:
                offset = end_offset(self.restorer, self.state_topic, p)
                self.snapshots.write(task.state, offset)
            except Exception as e:
                log.warning("no snapshot of partition %d: %s", p, e)

    def close(self) -> None:
        try:
            if self.commit():
                self.snapshot(sorted(self.tasks))
        except Exception:
            log.exception("final commit failed; the next start re-processes from the last one")
        # Taken before the consumer's close, whose revocation drops them.
        owned = sorted(self.tasks)
        positions, committed = dict(self.positions), dict(self.committed)
        left = self.policy.close()
        if left:
            log.error("%d output records were not delivered before shutdown", left)
        self.consumer.close()
        self.peer_reader.close()
        self.restorer.close()
        self._log_stopped(owned, positions, committed)

    def _log_stopped(
        self,
        owned: list[int],
        positions: dict[tuple[str, int], int],
        committed: dict[tuple[str, int], int],
    ) -> None:
        """One line of what the worker did and where it left its partitions. `committed` holds
        only offsets the broker acknowledged (commits are synchronous), so the line says what
        is durable, not what was meant to be."""
        m = self.processor.metrics
        done = (
            f"{m['events_in']} events in over {time.monotonic() - self.began:.0f} s (archived "
            f"{m['archived']}, duplicates {m['duplicates']}, dead letters {m['deadlettered']}, "
            f"alerts opened {m['alerts.opened']})"
        )
        behind = sorted(
            f"{t}[{p}]" for (t, p), off in positions.items() if committed.get((t, p), -1) < off
        )
        inputs = ", ".join(
            f"{p}@{off}" for (t, p), off in sorted(committed.items()) if t == self.events_topic
        )
        durable = (
            f"committed everything processed (input offsets {inputs or 'none yet'})"
            if not behind
            else f"not committed: {', '.join(behind)} (re-processed from the last commit)"
        )
        if not owned:
            where = "owned no partitions"
        elif self.instance:
            where = (
                f"partitions {_ranges(owned)} stay with instance {self.instance} until it "
                f"restarts or kafka.session_timeout_s ({self.cfg.kafka.session_timeout_s:g} s) "
                "passes (static membership)"
            )
        else:
            where = f"left the group; partitions {_ranges(owned)} go to the other workers"
        log.info("stopped: %s; %s; %s", done, durable, where)

    # ---- telemetry -------------------------------------------------------------------------

    def _progress(self, elapsed: float, last_in: int) -> int:
        m = self.processor.metrics
        log.info(
            "processed %d events (%.0f/s): archived %d, duplicates %d, dead letters %d, "
            "forwarded %d, alerts opened %d, partitions %s",
            m["events_in"],
            (m["events_in"] - last_in) / elapsed,
            m["archived"],
            m["duplicates"],
            m["deadlettered"],
            m["forwarded"],
            m["alerts.opened"],
            sorted(self.tasks),
        )
        return int(m["events_in"])

    def explain(self, machine_id: str, group: str | None, top: int = 20) -> dict[str, Any]:
        """`/machines/ID`, answered on the processing thread from the owned partitions."""
        core = self.core
        for p in sorted(self.tasks):
            task = self.tasks[p]
            if core.working is not None:
                core.flush({p: task.store}.__getitem__, [p])
            found = explain_machine(task.store, core, machine_id, group=group, top=top)
            if found is not None:
                return {"found": True, "topic": self.events_topic, "partition": p, **found}
        return {
            "found": False,
            "machine_id": machine_id,
            "error": f"{machine_id} is not in the partitions this worker owns "
            "(another worker may own it, or it has not been seen)",
            "topic": self.events_topic,
            "partitions_searched": sorted(self.tasks),
        }


def _ranges(partitions: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for p in partitions:
        if runs and runs[-1][1] + 1 == p:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
