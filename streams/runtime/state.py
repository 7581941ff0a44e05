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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

log = logging.getLogger("auditwatch.runtime")

FORMAT = b"2"
FORMAT_KEY = b"\x00format"


class StateFormatError(RuntimeError):
    """The changelog was written by another state format."""


class PartitionState:
    """Bytes by (kind, key), with the keys changed since the last commit."""

    __slots__ = ("data", "dirty", "formatted", "partition")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.data: dict[bytes, dict[str, bytes]] = {}
        # (kind, key) -> the value to write, None for a delete.
        self.dirty: dict[tuple[bytes, str], bytes | None] = {}
        # Whether the changelog has its format record yet.
        self.formatted = False

    def get(self, kind: bytes, key: str) -> bytes | None:
        table = self.data.get(kind)
        return None if table is None else table.get(key)

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        table = self.data.get(kind)
        if table is None:
            table = self.data[kind] = {}
        table[key] = value
        self.dirty[(kind, key)] = value

    def delete(self, kind: bytes, key: str) -> None:
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
        if value is None:
            table = self.data.get(kind)
            if table is not None:
                table.pop(k, None)
        else:
            self.data.setdefault(kind, {})[k] = value

    def size(self) -> int:
        return sum(len(t) for t in self.data.values())


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
        }
    )


class Snapshots:
    """Local snapshots of partition states, one file per partition, written whole and renamed
    into place (a crash mid-write leaves the previous one)."""

    def __init__(self, directory: str | Path, topic: str) -> None:
        self.directory = Path(directory)
        self.topic = topic

    def path(self, partition: int) -> Path:
        return self.directory / f"{self.topic}-{partition}.snapshot"

    def write(self, state: PartitionState, offset: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(state.partition)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps((FORMAT, offset, state.data), protocol=5))
        os.replace(tmp, path)

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


def read_to_end(
    consumer: Consumer,
    topic: str,
    partition: int,
    timeout_s: float = 300.0,
    start: int | None = None,
) -> Iterator[tuple[bytes, bytes | None]]:
    """Every (key, value) of one partition from `start` (its beginning by default) to its
    end as of now."""
    tp = TopicPartition(topic, partition)
    low, high = consumer.get_watermark_offsets(tp, timeout=30.0)
    if start is not None:
        low = max(low, start)
    if high <= low:
        return
    consumer.assign([TopicPartition(topic, partition, low)])
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            batch = consumer.consume(10_000, 1.0)
            done = False
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise RuntimeError(f"reading {topic}[{partition}]: {err}")
                key = msg.key()
                if key is not None:
                    yield key, msg.value()
                if msg.offset() >= high - 1:
                    done = True
            if done:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}[{partition}] not read to its end ({high}) in {timeout_s:.0f} s"
                )
    finally:
        consumer.unassign()


def end_offset(consumer: Consumer, topic: str, partition: int) -> int:
    return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30.0)[1])


def restore(
    consumer: Consumer, topic: str, partition: int, snapshots: Snapshots | None = None
) -> PartitionState:
    """The partition's state as of the changelog's end: from a local snapshot and the
    changelog after it, or from the whole changelog."""
    state = PartitionState(partition)
    started = time.monotonic()
    start = None
    snap = snapshots.read(partition) if snapshots is not None else None
    if snap is not None:
        offset, data = snap
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30.0)
        if low <= offset <= high:
            state.data = data
            state.formatted = True
            start = offset
        else:
            log.warning(
                "snapshot of partition %d is at changelog offset %d, outside %s[%d]'s range "
                "%d-%d: reading the whole changelog",
                partition,
                offset,
                topic,
                partition,
                low,
                high,
            )
    n = 0
    for key, value in read_to_end(consumer, topic, partition, start=start):
        state.apply(key, value)
        n += 1
    if n or start is not None:
        log.info(
            "restored partition %d: %s%d changelog records, %d keys in %.1f s",
            partition,
            "a snapshot and " if start is not None else "",
            n,
            state.size(),
            time.monotonic() - started,
        )
    return state
