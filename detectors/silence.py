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

The rule: silence is only paged against an expectation learned from earlier days, never from
a rate alone (a batch job, a CI runner between jobs and a machine seen for 35 minutes all
have a high rate while they run). `learn` keeps each machine's rhythm in its state
(`MachineState.silence`, bounded: 74 integers): per hour of the UTC day, on which of the last
7 days it was active, and the longest gap between two of its events that began in that hour
(over the last 7-14 days: two week buckets). A machine quiet since its last event L is silent
at time T when all of these hold:

1. it is expected now: active in T's hour and in the hour before it on at least half
   (rounded up) of the days before L's day it has been known, counting at most 7 days and
   at least one (`silence_expect_share`), and in T's hour yesterday or on the same weekday
   a week ago, if that was before L's day: a machine first seen today (or a weekly job seen
   yesterday) has no expectation; an office-hours machine is not expected at night, even
   after one night session, nor on a Sunday;
2. the quiet is longer than `silence_gap_factor` (2) times the longest gap that began within
   an hour of L's time of day on earlier days, and than `silence_min_gap_s` (5 min): a job
   that ends its run where its earlier runs ended has had a gap of a day (or a week) there,
   and a CI runner has had its usual pauses between jobs. Steady traffic (that longest gap
   at most 12 mean gaps at the rate model's rate then) needs only that gap plus 4 mean
   gaps: a consumer at 1.25 events a minute, longest gap about 7 minutes, is paged after
   about 10 minutes of quiet;
3. its rate model expected at least `silence_min_rate` events a minute when it was last
   active (the watch list's admission, as before), and no new member joined its group as it
   went quiet (a rotated pod).

A gap that ends an open silence episode is not learned: the outage is not the usual rhythm.

Imports: the standard library, orjson, `detectors` (base, peers) and `schemas.event`.
"""

from __future__ import annotations

import math
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


HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# The rhythm list: [day, week, active[24], gap this week[24], gap last week[24]]; active[h]
# has bit i set when the machine was active in hour h, i days before `day`. Gaps in seconds.
_ACT, _CUR, _PREV = 2, 26, 50
_RHYTHM_LEN = 74
_DAYS_MASK = 0xFF  # today and the 7 days before it
_YESTERDAY_OR_LAST_WEEK = 1 << 1 | 1 << 7
_GAP_CAP_S = 14 * 86_400
# A machine whose longest gap is at most this many mean gaps (its rate model's) looks like
# steady random traffic (a week of it at one event a minute: about ln(10,000) = 9); its
# silence is that gap plus `_STEADY_MARGIN_GAPS` mean gaps. Bursty ones (CI runners: about
# 70) get `silence_gap_factor` times their longest gap.
_STEADY_MAX_GAPS = 12.0
_STEADY_MARGIN_GAPS = 4.0
# Gaps shorter than this are every busy machine's normal and not worth a write per event.
_MIN_LEARNED_GAP_MS = 60_000


def learn(rhythm: list[int], last_ms: int, ts: int, in_silence: bool) -> None:
    """Note an event at `ts` (the machine's previous latest event at `last_ms`) in its rhythm
    (an empty list for a machine not seen before). Cheap: it runs on every event."""
    day = ts // DAY_MS
    if not rhythm:
        rhythm.extend((day, day // 7))
        rhythm.extend([0] * (_RHYTHM_LEN - 2))
    elif day != rhythm[0]:
        if day < rhythm[0]:
            # A late event from an earlier day: its activity, not its (negative) gap.
            back = rhythm[0] - day
            if back < 8:
                rhythm[_ACT + ts // HOUR_MS % 24] |= 1 << back
            return
        _roll(rhythm, day)
    rhythm[_ACT + ts // HOUR_MS % 24] |= 1
    gap = ts - last_ms
    if gap >= _MIN_LEARNED_GAP_MS and not in_silence:
        i = _CUR + last_ms // HOUR_MS % 24
        rhythm[i] = max(rhythm[i], min(gap // 1000, _GAP_CAP_S))


def _roll(rhythm: list[int], day: int) -> None:
    shift = min(day - rhythm[0], 8)
    for i in range(_ACT, _ACT + 24):
        rhythm[i] = (rhythm[i] << shift) & _DAYS_MASK
    rhythm[0] = day
    week = day // 7
    if week != rhythm[1]:
        if week == rhythm[1] + 1:
            rhythm[_PREV : _PREV + 24] = rhythm[_CUR : _CUR + 24]
        else:
            rhythm[_PREV : _PREV + 24] = [0] * 24
        rhythm[_CUR : _CUR + 24] = [0] * 24
        rhythm[1] = week


def _days_active(rhythm: list[int], hour_ms: int) -> int:
    """The days the machine was active in `hour_ms`'s hour of the day, as bits: bit i set
    for i days before `hour_ms`'s day (0 to 7)."""
    shift = hour_ms // DAY_MS - rhythm[0]
    bits = rhythm[_ACT + hour_ms // HOUR_MS % 24]
    if shift > 0:
        return (bits << shift) & _DAYS_MASK
    return bits if shift == 0 else 0


def _before_quiet(rhythm: list[int], t: int, last_ms: int, first_ms: int) -> tuple[int, int]:
    """The days the machine was active in `t`'s hour of the day among the (up to 7) days
    before the day the quiet began (`last_ms`) and after it was first seen: (bits, as in
    `_days_active` relative to `t`'s day, and how many such days there are). The quiet's own
    day does not count: the run that preceded the quiet is no evidence that it goes on."""
    base = t // DAY_MS - last_ms // DAY_MS
    known = min(7 - base, last_ms // DAY_MS - first_ms // DAY_MS)
    if known < 1:
        return 0, 0
    window = ((1 << known) - 1) << (base + 1)
    return _days_active(rhythm, t) & window, known


def expected(
    cfg: DetectorConfig, rhythm: list[int], first_ms: int, last_ms: int, now_ms: int
) -> bool:
    """Rule 1 of the module docstring: is the machine, quiet since `last_ms`, expected active
    at `now_ms`?"""
    if len(rhythm) != _RHYTHM_LEN:
        return False
    now, known = _before_quiet(rhythm, now_ms, last_ms, first_ms)
    if not known:
        return False
    need = max(1, math.ceil(cfg.silence_expect_share * known - 1e-9))
    before, _ = _before_quiet(rhythm, now_ms - HOUR_MS, last_ms, first_ms)
    return (
        bool(now & _YESTERDAY_OR_LAST_WEEK)
        and now.bit_count() >= need
        and before.bit_count() >= need
    )


def usual_gap_ms(rhythm: list[int], last_ms: int) -> int:
    """The longest gap learned that began within an hour of `last_ms`'s time of day."""
    if len(rhythm) != _RHYTHM_LEN:
        return 0
    h = last_ms // HOUR_MS % 24
    longest = 0
    for hour in (h - 1, h, h + 1):
        k = hour % 24
        longest = max(longest, rhythm[_CUR + k], rhythm[_PREV + k])
    return longest * 1000


@dataclass
class WatchEntry:
    last_ms: int
    group: str
    alerted: bool = False
    # Not judged again before this clock: the sweep's verdict stands until the quiet is
    # longer or the hour changes, and a new event resets it.
    due_ms: int = 0


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
        known = sources.get(source)
        if known is None or ts_ms > known:
            sources[source] = ts_ms
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
                {m: [e.last_ms, e.group, e.alerted, e.due_ms] for m, e in self.entries.items()},
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
    machines per store), else not. Whether its quiet is silence is the sweep's (`score`)."""
    if rate.warm and rate.expected() >= cfg.silence_min_rate:
        entry = watch.entries.get(machine)
        due = ts + cfg.silence_min_gap_s * 1000
        if entry is None:
            if len(watch.entries) < cfg.max_watched:
                watch.entries[machine] = WatchEntry(ts, group, False, due)
        elif ts >= entry.last_ms:
            entry.last_ms, entry.alerted, entry.due_ms = ts, False, due
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


def score(
    cfg: DetectorConfig,
    machine: str,
    entry: WatchEntry,
    rhythm: list[int],
    first_ms: int,
    rate: RateBaseline,
    now_ms: int,
) -> Finding | None:
    """A silence finding when the quiet since the machine's last event (`entry`) up to
    `now_ms` breaks its rhythm (the module docstring's rule), else None, with `entry.due_ms`
    set to when to ask again; learns nothing."""
    if not expected(cfg, rhythm, first_ms, entry.last_ms, now_ms):
        # Not before the next hour: the expectation is per hour of the day.
        entry.due_ms = now_ms - now_ms % HOUR_MS + HOUR_MS
        return None
    usual = usual_gap_ms(rhythm, entry.last_ms)
    need = cfg.silence_gap_factor * usual
    # Events per ms about then, by the rate model.
    per_ms = rate.expected_at(entry.last_ms) / (cfg.rate.interval_s * 1000)
    if 0 < usual * per_ms <= _STEADY_MAX_GAPS:
        # Steady traffic: a new record gap beats the old one by about a mean gap (the tail is
        # memoryless), so a few mean gaps past it is enough, and sooner than a factor.
        need = min(need, usual + _STEADY_MARGIN_GAPS / per_ms)
    need = max(cfg.silence_min_gap_s * 1000, int(need))
    quiet_ms = now_ms - entry.last_ms
    if quiet_ms < need:
        entry.due_ms = entry.last_ms + need
        return None
    minutes = quiet_ms / 60_000
    # What the rate model expected over the quiet, an hour at a time (its profile is hourly).
    expected_events = 0.0
    t = entry.last_ms
    while t < now_ms:
        step = min(now_ms, t - t % HOUR_MS + HOUR_MS) - t
        expected_events += rate.expected_at(t) * step / (cfg.rate.interval_s * 1000)
        t += step
    return Finding(
        "silence",
        min(100.0, 50.0 + 25.0 * math.log2(quiet_ms / need)),
        f"{machine} has made no accesses for {minutes:.0f} minutes; at this time of day it "
        f"was active on earlier days, its longest gap about then was {usual / 60_000:.0f} "
        f"minutes, and it usually makes about {expected_events:.0f} accesses in that time.",
        {
            "silent_minutes": round(minutes, 1),
            "last_event_time": format_rfc3339_ms(entry.last_ms),
        },
        {
            "events_in_that_time": round(expected_events, 1),
            "longest_usual_gap_minutes": round(usual / 60_000, 1),
        },
    )
