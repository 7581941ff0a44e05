"""Detection over event files partitioned as the Kafka pipeline partitions it.

`auditwatch run` keeps its state per input partition, the partition of each event's machine
under the producers' partitioner (murmur2 by default): a machine's baselines, and the
partition's first-seen time, silence watch and storm-control caps per minute. Peer-group
knowledge is one table for the whole worker (streams.runtime.peers). `replay` and `backtest`
run the same detection core over files; to page what one worker pages they keep one store per
input partition too, the group kinds in one shared store, and move each partition's silence
clock with the others' event time as the worker's punctuation does.

Events go through detection in event-time order, across partitions; Kafka delivers each
partition in its own order, which for a backlog interleaves input partitions in fetched
batches, so what depends on the order across partitions (which member of a group teaches the
group a resource first) can differ from replay.
"""

from __future__ import annotations

from schemas.event import AuditEvent
from streams.processor import MemoryStore, Origin, Output, Processor, SplitStore
from streams.runtime.routing import murmur2_partition


class PartitionedDetection:
    """`Processor.detect` with one `MemoryStore` per input partition and the group kinds in
    one shared store, as one worker keeps them.

    `working_copy`: keep up to that many machine states decoded between events, as a worker
    does (`kafka.working_copy_machines`), written to the stores every `flush_every` events and
    by `flush()`; 0 writes each event's state through, for callers that read the stores after
    every event."""

    def __init__(
        self,
        processor: Processor,
        partitions: int,
        name: str = "replay",
        working_copy: int = 0,
        flush_every: int = 10_000,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.processor = processor
        self.partitions = partitions
        self.name = name
        self.local: dict[int, MemoryStore] = {}
        self.stores: dict[int, SplitStore] = {}
        self.shared = MemoryStore()
        self.last_store: SplitStore | None = None
        # murmur2 in Python costs microseconds a key; a file holds few distinct keys.
        self._partition_of: dict[str, int] = {}
        # Each partition's latest event time, and when the silence clocks next move with it.
        self.clocks: dict[str, int] = {}
        self._next_punctuation = 0
        self.flush_every = flush_every
        self._until_flush = flush_every
        if working_copy > 0:
            processor.core.keep_working_copy(working_copy)

    def partition_of(self, event: AuditEvent) -> int:
        machine = event.machine_id
        p = self._partition_of.get(machine)
        if p is None:
            p = self._partition_of[machine] = murmur2_partition(machine.encode(), self.partitions)
        return p

    def store(self, p: int) -> SplitStore:
        store = self.stores.get(p)
        if store is None:
            local = self.local[p] = MemoryStore()
            store = self.stores[p] = SplitStore(local, self.shared)
        return store

    def flush(self) -> None:
        """Write the working copy's changed machine states to the stores."""
        self._until_flush = self.flush_every
        self.processor.core.flush(self.stores.__getitem__)

    def advance(self, event: AuditEvent) -> list[Output]:
        """Move the event's partition's clock to its time and, once a second of event time
        (the worker punctuates once a batch), every partition's silence clock with it. Also
        for an event detected elsewhere (another process of a split replay), as workers share
        their clocks through the peer table."""
        source = str(self.partition_of(event))
        ts = event.timestamp_ms
        if ts > self.clocks.get(source, -1):
            self.clocks[source] = ts
        if ts < self._next_punctuation:
            return []
        self._next_punctuation = ts - ts % 1000 + 1000
        out: list[Output] = []
        for q, store in self.stores.items():
            out.extend(self.processor.punctuate(store, q, self.clocks))
        return out

    def detect(self, event: AuditEvent, offset: int, learn_only: bool = False) -> list[Output]:
        if self.processor.core.working is not None:
            self._until_flush -= 1
            if self._until_flush <= 0:
                self.flush()
        p = self.partition_of(event)
        store = self.store(p)
        # The store it went to, for a caller that reads state right after (backtest's bands).
        self.last_store = store
        out = self.processor.detect(
            event, store, Origin(self.name, p, offset), learn_only, source=p
        )
        if not learn_only:
            out.extend(self.advance(event))
        return out
