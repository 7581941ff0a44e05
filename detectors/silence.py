"""Silence: a normally busy machine that stops, noticed from the progress of event time.

There are no timers in the stream runtime and a silent machine sends nothing, so the check
runs on other machines' events: each store (a detection partition, or a whole replay) keeps
a watch list of its busy machines with their last event time and its own clock (the latest
event time it has seen). Once per minute of that clock the list is swept; a candidate quiet
for long enough gets its full baseline loaded and scored.

The list is kept in memory between events and written to the store once per sweep, with a
generation number: a worker that finds a different generation in the store (another worker
owned the partition meanwhile) reloads it instead of trusting its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors.peers import KeyValue

_KIND = b"p"
_LIST = "watch"
_GEN = "watch-gen"
SWEEP_EVERY_MS = 60_000


@dataclass
class WatchEntry:
    last_ms: int
    group: str
    alerted: bool = False


@dataclass
class SilenceWatch:
    gen: int = 0
    clock_ms: int = 0
    next_sweep_ms: int = 0
    entries: dict[str, WatchEntry] = field(default_factory=dict)
    # Latest event time per upstream source (input partition). Sources advance at their own
    # pace, so the clock is the slowest of them: a machine is only silent once every source
    # that could carry its events has moved past the silence.
    sources: dict[str, int] = field(default_factory=dict)
    # Machines with open (non-silence) episodes: [latest finding ms, group]. Their own next
    # event would resolve them, but it may never come; the sweep resolves them instead. Kept
    # here so the list survives a restart or a move of the partition to another worker.
    open: dict[str, list[Any]] = field(default_factory=dict)

    def advance(self, source: str, ts_ms: int, max_skew_ms: int) -> None:
        self.sources[source] = max(ts_ms, self.sources.get(source, ts_ms))
        lead = max(self.sources.values())
        # A source this far behind the leader is idle (or stuck): it must not hold every
        # silence check back forever.
        live = [t for t in self.sources.values() if t >= lead - max_skew_ms]
        self.clock_ms = max(self.clock_ms, min(live))

    def dump(self) -> bytes:
        return orjson.dumps(
            [
                self.gen,
                self.clock_ms,
                self.next_sweep_ms,
                {m: [e.last_ms, e.group, e.alerted] for m, e in self.entries.items()},
                self.sources,
                self.open,
            ]
        )

    @classmethod
    def load(cls, raw: bytes) -> SilenceWatch:
        gen, clock, next_sweep, entries, *rest = orjson.loads(raw)
        return cls(
            gen,
            clock,
            next_sweep,
            {m: WatchEntry(*v) for m, v in entries.items()},
            rest[0] if rest else {},
            rest[1] if len(rest) > 1 else {},
        )


class SilenceWatches:
    """The in-memory watch lists, one per store (partition)."""

    def __init__(self) -> None:
        self._by_partition: dict[Any, SilenceWatch] = {}

    def get(self, kv: KeyValue, partition: Any) -> SilenceWatch:
        stored_gen = kv.get(_KIND, _GEN)
        watch = self._by_partition.get(partition)
        if watch is None or stored_gen is None or int(stored_gen) != watch.gen:
            raw = kv.get(_KIND, _LIST)
            watch = SilenceWatch.load(raw) if raw is not None else SilenceWatch()
            self._by_partition[partition] = watch
        return watch

    def drop(self, partition: Any) -> None:
        self._by_partition.pop(partition, None)

    @staticmethod
    def save(kv: KeyValue, watch: SilenceWatch) -> None:
        watch.gen += 1
        kv.set(_KIND, _LIST, watch.dump())
        kv.set(_KIND, _GEN, str(watch.gen).encode())
