"""Detection over event files partitioned as the Kafka pipeline partitions it.

`auditwatch run` keeps its detection state per partition of the detect topic: events are
re-keyed by peer group, and the Quix producer places a key with Kafka's default (murmur2)
partitioner. What a store holds beyond one machine (its peer groups, its first-seen time, the
silence watch and its event-time clock, the storm-control caps per minute) is that partition's.
`replay` and `backtest` run the same detection core over files; to page what the pipeline
pages they keep one store per detect partition too, and tell each event's source (its input
partition, keyed by machine id as `auditwatch produce` keys it) to the silence clock.

Events still go through detection in event-time order, across partitions; Kafka delivers each
partition in its own order, which for a backlog interleaves input partitions in fetched
chunks (the ingest consumer's `max.partition.fetch.bytes` bounds how far apart in event time).
"""

from __future__ import annotations

from schemas.event import AuditEvent
from streams.processor import MemoryStore, Origin, Output, Processor

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default Java partitioner (librdkafka's `murmur2`) gives `key`."""
    h = (0x9747B28C ^ len(key)) & _MASK
    whole = len(key) - len(key) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(key[i : i + 4], "little") * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = key[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


class PartitionedDetection:
    """`Processor.detect` with one `MemoryStore` per detect-topic partition.

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
        self.stores: dict[int, MemoryStore] = {}
        self.last_store: MemoryStore | None = None
        # murmur2 in Python costs microseconds a key; a file holds few distinct keys.
        self._partition_of: dict[str, int] = {}
        self._source_of: dict[str, int] = {}
        self.flush_every = flush_every
        self._until_flush = flush_every
        if working_copy > 0:
            processor.core.keep_working_copy(working_copy)

    def partition_of(self, event: AuditEvent) -> int:
        group = self.processor.core.group_of(event)
        p = self._partition_of.get(group)
        if p is None:
            p = self._partition_of[group] = murmur2_partition(group.encode(), self.partitions)
        return p

    def source_of(self, event: AuditEvent) -> int:
        machine = event.machine_id
        p = self._source_of.get(machine)
        if p is None:
            p = self._source_of[machine] = murmur2_partition(machine.encode(), self.partitions)
        return p

    def flush(self) -> None:
        """Write the working copy's changed machine states to the stores."""
        self._until_flush = self.flush_every
        self.processor.core.flush(self.stores.__getitem__)

    def detect(self, event: AuditEvent, offset: int, learn_only: bool = False) -> list[Output]:
        if self.processor.core.working is not None:
            self._until_flush -= 1
            if self._until_flush <= 0:
                self.flush()
        p = self.partition_of(event)
        store = self.stores.get(p)
        if store is None:
            store = self.stores[p] = MemoryStore()
        # The store it went to, for a caller that reads state right after (backtest's bands).
        self.last_store = store
        return self.processor.detect(
            event, store, Origin(self.name, p, offset), learn_only, source=self.source_of(event)
        )
