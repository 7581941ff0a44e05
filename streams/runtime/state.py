"""One input partition's state: live in memory, persisted as a compacted changelog.

The task reads and writes bytes by (kind, key), as the processor and the detection core
expect of a store (`streams.processor.Store`). Every write is remembered until the next
commit, which turns the changed keys into changelog records (key `kind NUL key`, a
tombstone for a delete) written with the outputs, so the changelog and the committed input
offsets agree. A task that is assigned the partition restores it by reading the changelog
partition from its start to its end; compaction keeps that to one record per key.

A local snapshot (`Snapshots`: the partition's state and the changelog offset it is complete
up to, written after a commit on revocation, on shutdown and every
`kafka.snapshot_interval_s`) lets a restart read only the changelog's tail. A snapshot is
only a shortcut: one whose offset is outside the changelog's range (a recreated topic) is
ignored, and the changelog is read from its start.

The changelog carries a format version (the record under `FORMAT_KEY`). A changelog written
by another format is refused with the reason: re-seed the baselines from the archive
(`auditwatch seed`) into a fresh state topic, as when upgrading from the Quix-based release,
whose state lived in other topics altogether.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger("auditwatch.runtime")

FORMAT = b"2"
FORMAT_KEY = b"\x00format"


class StateFormatError(RuntimeError):
    """The changelog was written by another state format."""


SEEN = b"e"  # streams.processor.SEEN: the event-id index's kind


# Ids per prefetch query: under SQLite's default limit of host parameters (999 before 3.32).
_PREFETCH_CHUNK = 900


class EventIndex:
    """The event ids one partition has archived, with each one's content digest: on disk
    (SQLite, one file per partition), the most recently used in a bounded memory cache.

    Ids are kept as long as the archive keeps events (forever by default): forgetting one
    would let a conflicting copy overwrite the audit record on compaction. The file is a
    cache of the changelog, not the record: it is written only after a commit (`flush`),
    without fsync, and a restore reads the changelog from the offset the file was last
    stamped with (`stamp`), re-applying what may be in it already (applying a changelog
    record twice leaves the same value)."""

    def __init__(self, path: Path | None, cache_size: int = 100_000) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v)")
        self.cache_size = cache_size
        # Insertion order is recency: the oldest entries are dropped first.
        self.cache: dict[str, bytes] = {}
        self.pending: dict[str, bytes | None] = {}
        # Ids the last prefetch found on neither side of the file: `get` answers them without
        # a query. Only ever a subset of the truth: set() takes an id out, flush() empties it.
        self.absent: set[str] = set()
        self._select = "SELECT v FROM seen WHERE k = ?"

    def prefetch(self, keys: list[str]) -> None:
        """Look up a batch's ids in a few queries instead of one per id (a query per id was
        12-17 us, most of the dedupe's cost): those on disk enter the cache, the others are
        remembered as absent until the next prefetch or flush."""
        cache, pending = self.cache, self.pending
        wanted = [k for k in keys if k not in cache and k not in pending]
        absent = set(wanted)
        db = self.db
        for i in range(0, len(wanted), _PREFETCH_CHUNK):
            chunk = wanted[i : i + _PREFETCH_CHUNK]
            marks = ",".join("?" * len(chunk))
            for k, v in db.execute(f"SELECT k, v FROM seen WHERE k IN ({marks})", chunk):
                absent.discard(k)
                self._remember(k, v)
        self.absent = absent

    def get(self, key: str) -> bytes | None:
        value = self.cache.get(key)
        if value is not None:
            return value
        if key in self.pending:
            return self.pending[key]
        if key in self.absent:
            return None
        row = self.db.execute(self._select, (key,)).fetchone()
        if row is None:
            return None
        self._remember(key, row[0])
        return row[0]

    def _remember(self, key: str, value: bytes) -> None:
        cache = self.cache
        cache[key] = value
        if len(cache) > self.cache_size:
            del cache[next(iter(cache))]

    def set(self, key: str, value: bytes) -> None:
        self._remember(key, value)
        self.pending[key] = value
        self.absent.discard(key)

    def delete(self, key: str) -> None:
        self.cache.pop(key, None)
        self.pending[key] = None

    def flush(self) -> None:
        """Write what was set since the last flush (call after a commit)."""
        self.absent = set()
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        db = self.db
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO seen VALUES (?, ?)",
            [(k, v) for k, v in pending.items() if v is not None],
        )
        gone = [(k,) for k, v in pending.items() if v is None]
        if gone:
            db.executemany("DELETE FROM seen WHERE k = ?", gone)
        db.execute("COMMIT")

    def stamp(self, offset: int) -> None:
        """Record that the file holds everything of the changelog before `offset`."""
        self.flush()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('offset', ?)", (offset,))

    def stamped(self) -> int | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = 'offset'").fetchone()
        return None if row is None else int(row[0])

    def clear(self) -> None:
        self.cache.clear()
        self.pending.clear()
        self.absent = set()
        self.db.execute("DELETE FROM seen")
        self.db.execute("DELETE FROM meta")

    def __len__(self) -> int:
        n = self.db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        return int(n) + sum(1 for v in self.pending.values() if v is not None)

    def close(self) -> None:
        self.db.close()


class PartitionState:
    """Bytes by (kind, key), with the keys changed since the last commit."""

    __slots__ = ("data", "dirty", "formatted", "partition", "seen")

    def __init__(self, partition: int, seen: EventIndex | None = None) -> None:
        self.partition = partition
        # Event ids on disk behind a bounded cache; everything else in memory (bounded by
        # the machines a partition keeps, detectors.max_machines).
        self.seen = seen if seen is not None else EventIndex(None)
        self.data: dict[bytes, dict[str, bytes]] = {}
        # (kind, key) -> the value to write, None for a delete.
        self.dirty: dict[tuple[bytes, str], bytes | None] = {}
        # Whether the changelog has its format record yet.
        self.formatted = False

    def get(self, kind: bytes, key: str) -> bytes | None:
        if kind == SEEN:
            return self.seen.get(key)
        table = self.data.get(kind)
        return None if table is None else table.get(key)

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        if kind == SEEN:
            self.seen.set(key, value)
            self.dirty[(kind, key)] = value
            return
        table = self.data.get(kind)
        if table is None:
            table = self.data[kind] = {}
        table[key] = value
        self.dirty[(kind, key)] = value

    def delete(self, kind: bytes, key: str) -> None:
        if kind == SEEN:
            self.seen.delete(key)
            self.dirty[(kind, key)] = None
            return
        table = self.data.get(kind)
        if table is not None and table.pop(key, None) is not None:
            self.dirty[(kind, key)] = None

    def drain(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The changelog records of what changed since the last drain."""
        dirty, self.dirty = self.dirty, {}
        if not self.formatted and dirty:
            self.formatted = True
            yield FORMAT_KEY, FORMAT
        for (kind, key), value in dirty.items():
            yield kind + b"\x00" + key.encode(), value

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One changelog record, on restore."""
        if key == FORMAT_KEY:
            if value is not None and value != FORMAT:
                raise StateFormatError(
                    f"partition {self.partition}'s state changelog has format "
                    f"{value.decode(errors='replace')}, this version reads {FORMAT.decode()}: "
                    "start on a fresh state topic (topics.state) and re-seed the baselines "
                    "from the archive with `auditwatch seed --from-archive`"
                )
            self.formatted = True
            return
        kind, _, name = key.partition(b"\x00")
        k = name.decode()
        if kind == SEEN:
            if value is None:
                self.seen.delete(k)
            else:
                self.seen.set(k, value)
            return
        if value is None:
            table = self.data.get(kind)
            if table is not None:
                table.pop(k, None)
        else:
            self.data.setdefault(kind, {})[k] = value

    def size(self) -> int:
        return sum(len(t) for t in self.data.values()) + len(self.seen)


def restore_consumer(client_config: dict[str, Any], group: str) -> Consumer:
    """A consumer for reading internal topics by assignment (no group membership, no
    commits), committed records only."""
    return Consumer(
        {
            **client_config,
            "group.id": f"{group}.restore",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            # The end of a partition shows only after an empty fetch, which the broker would
            # otherwise hold for 500 ms: a restart waited that long per partition.
            "fetch.wait.max.ms": 10,
        }
    )


class Snapshots:
    """Local files of partition states: a snapshot of the in-memory part, written whole and
    renamed into place (a crash mid-write leaves the previous one), and the event-id index."""

    def __init__(self, directory: str | Path, topic: str, id_cache: int = 100_000) -> None:
        self.directory = Path(directory)
        self.topic = topic
        self.id_cache = id_cache

    def path(self, partition: int) -> Path:
        return self.directory / f"{self.topic}-{partition}.snapshot"

    def index(self, partition: int) -> EventIndex:
        return EventIndex(self.directory / f"{self.topic}-{partition}.ids", self.id_cache)

    def write(self, state: PartitionState, offset: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(state.partition)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps((FORMAT, offset, state.data), protocol=5))
        os.replace(tmp, path)
        state.seen.stamp(offset)

    def read(self, partition: int) -> tuple[int, dict[bytes, dict[str, bytes]]] | None:
        """(changelog offset, data), or None when there is no usable snapshot."""
        path = self.path(partition)
        try:
            fmt, offset, data = pickle.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except Exception as e:
            log.warning("ignoring unreadable snapshot %s: %s", path, e)
            return None
        if fmt != FORMAT:
            return None
        return offset, data


def read_partitions(
    consumer: Consumer, topic: str, starts: dict[int, int | None], timeout_s: float = 300.0
) -> Iterator[tuple[int, bytes, bytes | None]]:
    """Every (partition, key, value) of the given partitions, each from its start (None: its
    beginning) to its end as of now, all read at once."""
    ends: dict[int, int] = {}
    assignment = []
    for p, start in starts.items():
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30.0)
        if start is not None:
            low = max(low, start)
        if high > low:
            ends[p] = high
            assignment.append(TopicPartition(topic, p, low))
    if not assignment:
        return
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout_s
    try:
        while ends:
            for msg in consumer.consume(10_000, 0.05):
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(p, None)
                        continue
                    raise KafkaException(err)
                if p not in ends:
                    continue
                key = msg.key()
                if key is not None:
                    yield p, key, msg.value()
                if msg.offset() >= ends[p] - 1:
                    del ends[p]
            if ends and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic} partitions {sorted(ends)} not read to their end in {timeout_s:.0f} s"
                )
    finally:
        consumer.unassign()


def end_offset(consumer: Consumer, topic: str, partition: int) -> int:
    return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30.0)[1])


def restore(
    consumer: Consumer, topic: str, partition: int, snapshots: Snapshots | None = None
) -> PartitionState:
    """One partition's state (see restore_all)."""
    return restore_all(consumer, topic, [partition], snapshots)[partition]


def restore_all(
    consumer: Consumer,
    topic: str,
    partitions: list[int],
    snapshots: Snapshots | None = None,
) -> dict[int, PartitionState]:
    """The partitions' states as of the changelog's end, read in one pass: each from its
    local snapshot and event-id index and the changelog after the older of the two, or from
    the whole changelog. Re-applying a record that a snapshot already holds leaves the same
    value, so reading from the older one is safe."""
    started = time.monotonic()
    states: dict[int, PartitionState] = {}
    starts: dict[int, int | None] = {}
    for p in partitions:
        index = snapshots.index(p) if snapshots is not None else EventIndex(None)
        state = states[p] = PartitionState(p, index)
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30.0)
        stamped = index.stamped()
        if stamped is None or not low <= stamped <= high:
            # Never stamped, or from another incarnation of the topic: rebuilt from the
            # changelog.
            index.clear()
            stamped = None
        start = low
        snap = snapshots.read(p) if snapshots is not None else None
        if snap is not None:
            offset, data = snap
            if low <= offset <= high:
                state.data = data
                state.formatted = True
                start = min(offset, stamped if stamped is not None else low)
            else:
                log.warning(
                    "snapshot of partition %d is at changelog offset %d, outside %s[%d]'s "
                    "range %d-%d: reading the whole changelog",
                    p,
                    offset,
                    topic,
                    p,
                    low,
                    high,
                )
        starts[p] = start
    n = 0
    try:
        for p, key, value in read_partitions(consumer, topic, starts):
            states[p].apply(key, value)
            n += 1
        for state in states.values():
            state.seen.flush()
    except BaseException:
        for state in states.values():
            state.seen.close()
        raise
    if n:
        log.info(
            "restored partitions %s: %d changelog records, %d keys in %.1f s",
            sorted(states),
            n,
            sum(s.size() for s in states.values()),
            time.monotonic() - started,
        )
    return states
