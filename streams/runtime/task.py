"""One input partition: decode, route, dedupe, archive and detect its events in one pass.

A task owns input partition p and repartition partition p, and the state of the machines
that belong to p (their baselines, their event ids, the partition's silence watch). It reads
and writes peer-group records through the worker's peer table. Its outputs go to `emit`, the
commit policy's producer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from schemas.event import AuditEvent
from streams.ops.metrics import Telemetry
from streams.processor import Origin, Output, Processor, SplitStore, archive_key
from streams.runtime.ledger import Counts, Ledger
from streams.runtime.peers import PeerTable
from streams.runtime.routing import Router, forwarded_origin, is_seed, origin_header
from streams.runtime.state import PartitionState


class Prepared(NamedTuple):
    """A decoded event that stays in its task, between `Task.prepare` and `Task.finish`."""

    msg: Any
    event: AuditEvent
    value: bytes | None
    key: bytes | None
    origin: Origin
    fmt: str
    now: int
    seed: bool
    # The ledger counts to charge its outcome to; None for a replay counted already.
    counts: Counts | None = None


# A Prepared built without NamedTuple's Python-level __new__: half its 0.7 us, once per event.
_tuple_new = tuple.__new__

# emit(role, key, value, partition, headers): role is an output kind ("archive",
# "deadletter", "alert") or "forward" (the repartition topic).
Emit = Callable[[str, bytes | None, bytes, int, Any], None]


class Task:
    __slots__ = (
        "archive_partition",
        "clock_ms",
        "detected",
        "emit",
        "ledger",
        "partition",
        "processor",
        "repartition_topic",
        "route",
        "router",
        "state",
        "store",
        "telemetry",
    )

    def __init__(
        self,
        partition: int,
        state: PartitionState,
        peers: PeerTable,
        processor: Processor,
        router: Router,
        repartition_topic: str,
        emit: Emit,
        telemetry: Telemetry | None = None,
        archive_partition: int = -1,
    ) -> None:
        self.partition = partition
        self.state = state
        # Peer-group kinds in the worker's peer table, everything else in the partition's.
        self.store = SplitStore(state, peers)
        self.processor = processor
        self.router = router
        # The router's cache, read directly: the method call cost more than the lookup.
        self.route = router.cache
        self.repartition_topic = repartition_topic
        self.emit = emit
        self.telemetry = telemetry
        # The `detect` stage of the processing latency: Kafka timestamp to detection's end.
        self.detected = telemetry.latency["detect"].observe_since if telemetry else None
        # Where this partition's archive records go: the same partition of the archive when
        # it is partitioned as the input (a machine's records together, in order), else -1
        # (by key).
        self.archive_partition = archive_partition
        # The latest event time this task has detected on (the silence clock's source).
        self.clock_ms = -1
        # What became of each record read, restored with the state (streams.runtime.ledger).
        self.ledger = Ledger(state)

    def process(self, msg: Any) -> None:
        """One record on its own (the worker prepares a whole batch first: run_once)."""
        item = self.prepare(msg)
        if item is not None:
            self.seen_ids([item])
            self.finish(item)

    def prepare(self, msg: Any) -> Prepared | None:
        """Decode a record, and dead-letter, forward or learn from it what does not stay in
        this task: what is left is an event of one of this partition's machines, to `finish`
        once the batch's ids have been looked up (`seen_ids`)."""
        p = self.partition
        value: bytes | None = msg.value()
        key: bytes | None = msg.key()
        topic: str = msg.topic()
        offset: int = msg.offset()
        forwarded = topic == self.repartition_topic
        headers = msg.headers() if forwarded else None
        origin = (forwarded_origin(headers) if forwarded else None) or Origin(topic, p, offset)
        side = self.ledger.repartition if forwarded else self.ledger.input
        counts = side if side.take(offset) else None
        processor = self.processor
        decoded = processor.decode(value, key, origin)
        emit = self.emit
        if isinstance(decoded, Output):
            emit(decoded.kind, decoded.key, decoded.value, -1, None)
            if counts is not None:
                counts.deadlettered += 1
                if forwarded:
                    counts.origin(origin.partition)[1] += 1
            return None
        event, fmt, now = decoded
        if not forwarded:
            machine_id = event.machine_id
            to = self.route.get(machine_id)
            if to is None:
                to = self.router.partition(machine_id)
            if to != p:
                # Its machine's state is in another task: one trip through the repartition
                # topic.
                processor.metrics["events_in"] -= 1
                processor.metrics["forwarded"] += 1
                emit("forward", machine_id.encode(), value or b"", to, [origin_header(origin)])
                if counts is not None:
                    counts.forwarded += 1
                    counts.forwarded_to[to] = counts.forwarded_to.get(to, 0) + 1
                return None
        # History from `auditwatch seed` is learned like live traffic, in its place among the
        # partition's records, but never alerted on, and already in the archive.
        seed = bool(forwarded and headers and is_seed(headers))
        if processor.keyring is not None:
            # Here, once the event stays in this task: a forwarded one is checked where it lands.
            # Seeded history too: what does not verify must not be learned.
            event = processor.authenticate(event)
        return _tuple_new(Prepared, (msg, event, value, key, origin, fmt, now, seed, counts))

    def seen_ids(self, items: list[Prepared]) -> None:
        """Look up the event ids of prepared records at once (the dedupe's disk reads)."""
        self.state.seen.prefetch([archive_key(item.event) for item in items if not item.seed])

    def finish(self, item: Prepared) -> None:
        """Dedupe, archive and detect a prepared event."""
        processor = self.processor
        emit = self.emit
        msg, event, value, key, origin, fmt, now, seed, counts = item
        if seed:
            if counts is not None:
                counts.seeded += 1
            if event.verification is None or not event.unverified:
                processor.detect(event, self.store, origin, learn_only=True, source=self.partition)
            return
        outputs, new = processor.admit(event, value, key, origin, self.store, fmt, now)
        for out in outputs:
            emit(
                out.kind,
                out.key,
                out.value,
                self.archive_partition if out.kind == "archive" else -1,
                None,
            )
        if counts is not None:
            # Counted before detection, which cannot undo the outcome.
            outcome = 0 if new else 1 if outputs else 2
            if outcome == 0:
                counts.archived += 1
            elif outcome == 1:
                counts.deadlettered += 1
            else:
                counts.duplicates += 1
            if counts.role == "repartition":
                counts.origin(origin.partition)[outcome] += 1
        if not new:
            return
        ts = event.timestamp_ms
        # A forged event's time is its sender's: it moves no clock. (max() costs a call.)
        if ts > self.clock_ms and (event.verification is None or not event.unverified):
            self.clock_ms = ts
        alerts = processor.detect(event, self.store, origin, source=self.partition)
        if self.detected is not None:
            self.detected(msg.timestamp()[1])
        if alerts:
            for out in alerts:
                emit(out.kind, out.key, out.value, -1, None)
            if self.telemetry is not None:
                self.telemetry.count_pages(alerts)
