"""The peer table: what each peer group uses, shared by every partition and every worker.

A group's replicas spread over input partitions, so its knowledge (membership, the resources
and operations it uses, its busiest windows of the day, the combined model's trees) cannot
live in one partition's state. Each worker keeps the whole table in memory, publishes what
it changed at each commit to the compacted peers topic, in the same transaction as its
outputs under exactly-once, and reads every other worker's records as they come.

Every record has exactly one writer: its key names the worker (`kind NUL writer NUL key`),
so compaction never drops one writer's update in favour of another's. What a worker reads
is the merge of all writers' records, by a rule per kind that never loses an update:

- `gr`, `go` (a resource or operation the group uses, with the time it was last refreshed):
  a grow-only set; the latest time wins.
- `gh` (the most events any member made in each window of the day): element-wise maximum.
- `gs` (on which of the last days any member was active in each window of the day, and the
  pace there): the masks aligned to the newest day and OR-ed, the paces' maximum
  (`detectors.schedule.merge`).
- `gm` (first seen, members, last join): earliest first seen, latest join, and members as
  the sum of each writer's own count (a writer publishes only the members it added).
- `gp` (the group's recent access-rate peaks, `PeerGroup.note_peak`: per member, log2 of
  its peak plus the peak's time in half-lives; the highest few members): per member the
  maximum, then the highest few (`detectors.peers.merge_peaks`).
- `gc` (the combined model's tree masses): one writer's own trees; a worker learns its trees
  from the group's members it owns and restores them from its own records (its writer id is
  stable across restarts).

The table also carries each writer's event-time clock per input partition (`wm`), so the
silence detector's clock moves for a partition whose machines have gone quiet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from detectors import schedule
from detectors.combined import COMBINED
from detectors.peers import GROUP_KINDS, merge_peaks

log = logging.getLogger("auditwatch.runtime")

META, RESOURCE, OPERATION, WINDOWS = b"gm", b"gr", b"go", b"gh"
SCHEDULE, PEAK = b"gs", b"gp"
PEER_KINDS = GROUP_KINDS  # META, RESOURCE, OPERATION, WINDOWS, SCHEDULE, PEAK and COMBINED
CLOCKS = b"wm"
_SEP = b"\x00"


def _merge(kind: bytes, values: list[bytes]) -> bytes:
    if len(values) == 1:
        return values[0]
    if kind == META:
        metas = [orjson.loads(v) for v in values]
        return orjson.dumps(
            [
                min(m[0] for m in metas),
                sum(m[1] for m in metas),
                max(m[2] if len(m) > 2 else m[0] for m in metas),
            ]
        )
    if kind == WINDOWS:
        lists = [orjson.loads(v) for v in values]
        width = max(len(w) for w in lists)
        return orjson.dumps([max(w[i] if i < len(w) else 0 for w in lists) for i in range(width)])
    if kind == SCHEDULE:
        return orjson.dumps(schedule.merge(orjson.loads(v) for v in values))
    if kind == PEAK:
        return merge_peaks(values)
    # RESOURCE, OPERATION: the latest refresh time.
    return max(values, key=int)


class PeerTable:
    """The merged peer records, read and written by every task of this worker."""

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self.merged: dict[bytes, dict[str, bytes]] = {}
        self.own: dict[tuple[bytes, str], bytes] = {}
        self.others: dict[tuple[bytes, str], dict[str, bytes]] = {}
        self.dirty: set[tuple[bytes, str]] = set()
        # Event time per input partition, as far as any writer has seen it.
        self.clocks: dict[str, int] = {}
        self.own_clocks: dict[str, int] = {}
        self.clocks_dirty = False

    def get(self, kind: bytes, key: str) -> bytes | None:
        table = self.merged.get(kind)
        return None if table is None else table.get(key)

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        k = (kind, key)
        own = value
        if kind == META:
            others = self.others.get(k)
            if others:
                first, members, *last = orjson.loads(value)
                theirs = sum(orjson.loads(v)[1] for v in others.values())
                own = orjson.dumps([first, members - theirs, *last])
        self.own[k] = own
        table = self.merged.get(kind)
        if table is None:
            table = self.merged[kind] = {}
        table[key] = value
        self.dirty.add(k)

    def delete(self, kind: bytes, key: str) -> None:
        # Group knowledge is never deleted by the detectors; a delete only drops ours.
        k = (kind, key)
        self.own.pop(k, None)
        self.dirty.discard(k)
        self._remerge(k)

    def note_clock(self, partition: int, ts_ms: int) -> None:
        source = str(partition)
        if ts_ms > self.own_clocks.get(source, -1):
            self.own_clocks[source] = ts_ms
            self.clocks_dirty = True
            if ts_ms > self.clocks.get(source, -1):
                self.clocks[source] = ts_ms

    def _remerge(self, k: tuple[bytes, str]) -> None:
        kind, key = k
        values = [] if k not in self.own else [self.own[k]]
        if kind != COMBINED:
            values.extend(self.others.get(k, {}).values())
        table = self.merged.setdefault(kind, {})
        if values:
            table[key] = _merge(kind, values)
        else:
            table.pop(key, None)

    def apply(self, record_key: bytes, value: bytes | None, loading: bool) -> None:
        """One record of the peers topic. Our own records matter only while loading (a
        restart); afterwards they are what we already have."""
        try:
            kind, writer_b, key_b = record_key.split(_SEP, 2)
        except ValueError:
            log.warning("ignoring a malformed peers record key %r", record_key[:80])
            return
        writer, key = writer_b.decode(), key_b.decode()
        if kind == CLOCKS:
            if value is None:
                return
            for source, ts in orjson.loads(value).items():
                if ts > self.clocks.get(source, -1):
                    self.clocks[source] = ts
                if writer == self.writer and loading:
                    self.own_clocks[source] = max(ts, self.own_clocks.get(source, -1))
            return
        k = (kind, key)
        if writer == self.writer:
            if not loading:
                return
            if value is None:
                self.own.pop(k, None)
            else:
                self.own[k] = value
        else:
            if kind == COMBINED:
                return
            others = self.others.setdefault(k, {})
            if value is None:
                others.pop(writer, None)
            else:
                others[writer] = value
        self._remerge(k)

    def drain(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The records to publish: this writer's changed values since the last drain."""
        dirty, self.dirty = self.dirty, set()
        writer = self.writer.encode()
        for kind, key in dirty:
            yield kind + _SEP + writer + _SEP + key.encode(), self.own.get((kind, key))
        if self.clocks_dirty:
            self.clocks_dirty = False
            yield CLOCKS + _SEP + writer + _SEP, orjson.dumps(self.own_clocks)

    def reset(self) -> None:
        """Forget everything, before reading the topic again (after an aborted commit)."""
        self.__init__(self.writer)  # type: ignore[misc]


class PeerReader:
    """Reads the peers topic into a table: all of it at start, then what arrives."""

    def __init__(self, consumer: Consumer, topic: str, table: PeerTable) -> None:
        self.consumer = consumer
        self.topic = topic
        self.table = table
        self.records = 0

    def load(self, timeout_s: float = 120.0) -> int:
        """Read from the start to the end as of now; returns the records read."""
        meta = self.consumer.list_topics(self.topic, timeout=30.0).topics[self.topic]
        if meta.error is not None:
            raise RuntimeError(f"cannot read the peers topic {self.topic}: {meta.error}")
        parts = sorted(meta.partitions)
        ends = {}
        for p in parts:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=30.0
            )
            if high > low:
                ends[p] = high
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in parts])
        n = 0
        deadline = time.monotonic() + timeout_s
        while ends:
            # consume() waits its whole timeout unless the batch fills: keep it short.
            for msg in self.consumer.consume(10_000, 0.05):
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(p, None)
                    continue
                self._apply(msg, loading=True)
                n += 1
                if msg.offset() >= ends.get(p, 0) - 1:
                    ends.pop(p, None)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the peers topic {self.topic} not read in {timeout_s:.0f} s")
        self.records += n
        return n

    def poll(self) -> int:
        n = 0
        for msg in self.consumer.consume(10_000, 0):
            if msg.error() is None:
                self._apply(msg, loading=False)
                n += 1
        self.records += n
        return n

    def _apply(self, msg: Any, loading: bool) -> None:
        key = msg.key()
        if key is not None:
            self.table.apply(key, msg.value(), loading)

    def close(self) -> None:
        self.consumer.close()
