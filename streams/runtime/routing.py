"""Which input partition a machine's events belong to, and forwarding the ones that are not.

Detection state lives with the machine: in the input partition the producers' partitioner
gives its machine id. Most producers key by machine id (`auditwatch produce` does), so most
events are already there. An event keyed by something else, by nothing, or placed by another
partitioner is forwarded once to the repartition topic (the `detect` topic), to the partition
of its machine; partition p of the repartition topic belongs to the same task as input
partition p, so a forwarded event is processed where its machine's state is. A forwarded
record keeps the original value bytes (so the archive's SHA-256 is of what the producer sent)
and names where it came from in a header.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from streams.processor import Origin

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


ORIGIN_HEADER = "auditwatch-origin"
# On records `auditwatch seed` writes: history to learn from, never to alert on or archive.
SEED_HEADER = "auditwatch-seed"
_CACHE_MAX = 200_000


def _crc32_partition(key: bytes, partitions: int) -> int:
    # librdkafka's consistent_random for a non-empty key: CRC32 of the key modulo the count.
    return zlib.crc32(key) % partitions


PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": murmur2_partition,
    "consistent_random": _crc32_partition,
}


class Router:
    """The partition of each machine id under the configured partitioner, cached (murmur2 in
    Python costs microseconds a key; a fleet has few distinct machines)."""

    __slots__ = ("_partition_of", "cache", "partitions")

    def __init__(self, partitioner: str, partitions: int) -> None:
        self._partition_of = PARTITIONERS[partitioner]
        self.partitions = partitions
        # Machine id -> partition. Tasks read it directly (one lookup, no call); it is the
        # same dict for the router's life, emptied rather than replaced when full.
        self.cache: dict[str, int] = {}

    def partition(self, machine_id: str) -> int:
        cache = self.cache
        p = cache.get(machine_id)
        if p is None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            p = cache[machine_id] = self._partition_of(machine_id.encode(), self.partitions)
        return p


def origin_header(origin: Origin) -> tuple[str, bytes]:
    return ORIGIN_HEADER, f"{origin.topic}\x1f{origin.partition}\x1f{origin.offset}".encode()


def forwarded_origin(headers: list[tuple[str, bytes]] | None) -> Origin | None:
    """Where a forwarded record was first read, from its header (None if it has none)."""
    for name, value in headers or ():
        if name == ORIGIN_HEADER and value:
            topic, partition, offset = value.decode().split("\x1f")
            return Origin(topic, int(partition), int(offset))
    return None


def is_seed(headers: object) -> bool:
    """Whether a repartition-topic record carries the seed marker."""
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == SEED_HEADER for k, _ in items)  # type: ignore[attr-defined]
