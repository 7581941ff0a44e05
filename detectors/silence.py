"""Silence: a normally busy machine that stops, noticed from the progress of event time.

There are no timers in the stream runtime and a silent machine sends nothing, so the check
runs on other machines' events: each store (a detection partition, or a whole replay) keeps
a watch list of its busy machines with their last event time and its own clock (the latest
event time it has seen). Once per minute of that clock the list is swept; a candidate quiet
for long enough gets its full baseline loaded and scored.

The list is kept in memory between events and written to the store once per sweep, with a
generation number: a worker that finds a different generation in the store (another worker
owned the partition meanwhile) reloads it instead of trusting its memory.

Unlike the other detectors, silence is not judged on the machine's own events: `note_event`
keeps the watch list as events arrive, and the core's sweep asks `score` about each candidate.

Imports: the standard library, orjson, `detectors` (base, peers) and `schemas.event`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from detectors.base import Finding
from detectors.peers import KeyValue
from schemas.event import format_rfc3339_ms

if TYPE_CHECKING:
    from detectors.config import DetectorConfig
    from detectors.incidents import Episode
    from detectors.rate import RateBaseline

_KIND = b"p"
_LIST = "watch"
_GEN = "watch-gen"
SWEEP_EVERY_MS = 60_000
# A member joining the group this long before (or after) another went quiet is its successor.
ROTATION_WINDOW_MS = 30 * 60_000


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
        sources = self.sources
        sources[source] = max(ts_ms, sources.get(source, ts_ms))
        lead = max(sources.values())
        # A source this far behind the leader is idle (or stuck): it must not hold every
        # silence check back forever. The slowest live source, without building a list on
        # every event.
        floor = lead - max_skew_ms
        slowest = lead
        for t in sources.values():
            if floor <= t < slowest:
                slowest = t
        self.clock_ms = max(self.clock_ms, slowest)

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


def note_event(
    watch: SilenceWatch,
    machine: str,
    group: str,
    ts: int,
    cfg: DetectorConfig,
    rate: RateBaseline,
) -> None:
    """Keep `machine`'s watch entry up to date with its latest event: watched while its rate
    model expects at least `silence_min_rate` events per interval now (up to `max_watched`
    machines per store), else not."""
    if rate.warm and rate.expected() >= cfg.silence_min_rate:
        entry = watch.entries.get(machine)
        if entry is None:
            if len(watch.entries) < cfg.max_watched:
                watch.entries[machine] = WatchEntry(ts, group)
        else:
            entry.last_ms, entry.alerted = max(entry.last_ms, ts), False
    else:
        watch.entries.pop(machine, None)


def note_open(watch: SilenceWatch, machine: str, group: str, episodes: dict[str, Episode]) -> None:
    """Keep the list of machines with open episodes (`SilenceWatch.open`) up to date."""
    if not episodes:
        # Most events: nothing open, and nothing to build a list for.
        if watch.open:
            watch.open.pop(machine, None)
        return
    # A silence episode stays open while the machine is silent: only its return ends it.
    last = [ep.last_ms for d, ep in episodes.items() if d != "silence"]
    if last:
        watch.open[machine] = [max(last), group]
    elif watch.open:
        watch.open.pop(machine, None)


def short_duty(cfg: DetectorConfig, rate: RateBaseline, now_ms: int) -> bool:
    """Whether the machine is busy for fewer than `silence_min_active_hours` of the day by its
    rate model: batch jobs and other short-duty machines are quiet most of the day by design,
    and are not watched."""
    day = now_ms - now_ms % 86_400_000
    by_hour = [rate.expected_at(day + h * 3_600_000) for h in range(24)]
    busiest = max(by_hour)
    active_hours = sum(e >= max(cfg.silence_min_rate, 0.25 * busiest) for e in by_hour)
    return active_hours < cfg.silence_min_active_hours


def score(
    cfg: DetectorConfig, machine: str, entry: WatchEntry, rate: RateBaseline, now_ms: int
) -> Finding | None:
    """A silence finding when the quiet since the machine's last event (`entry`) up to
    `now_ms` is page-worthy by its rate model, else None; learns nothing."""
    quiet = rate.quiet_score(now_ms)
    if quiet < 50:
        return None
    minutes = (now_ms - entry.last_ms) / 60_000
    expected = rate.expected_at(now_ms) * minutes * 60 / cfg.rate.interval_s
    return Finding(
        "silence",
        quiet,
        f"{machine} has made no accesses for {minutes:.0f} minutes; at this time of "
        f"day it makes about {expected:.0f} in that time.",
        {
            "silent_minutes": round(minutes, 1),
            "last_event_time": format_rfc3339_ms(entry.last_ms),
        },
        {"events_in_that_time": round(expected, 1)},
    )
