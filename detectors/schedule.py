"""Schedules: on which of the last days a machine (or its peer group) was active in each window
of the day.

A schedule is what periodic work looks like from a day's point of view: a job every few
minutes or hourly at a fixed minute is active in its windows every day, a nightly job in the
same one or two windows every night, a weekly job in its windows seven and fourteen days ago,
a CI pool's night runs in some night windows on some nights. Off hours is judged against it:
activity where the machine or its group has been active on earlier days, at a similar level, is
its schedule, not off hours, and a time of day is only called idle once the machine has shown
enough activity elsewhere for that idleness to mean something.

State (JSON-friendly, bounded): `[day, mask per window of the day..., pace per window of the
day...]`, bit i of a window's mask set when there was activity in that window `i` days before
`day`; `DAYS` days are kept, so a weekly job's last two runs are both remembered. A window's
pace is the most spaced accesses seen within `PACE_MS` there on any day: a job that runs at
its minute makes its accesses within seconds every time, while a business-hours tail of a few
accesses an evening is spread over the window, and an office tool's session at that time of
day, at its daytime pace, is as busy as the tail within minutes, not at that level. Schedules
stored before the pace was kept (`1 + windows` long) read as pace unknown.

Imports: the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter

DAYS = 28
_FULL = (1 << DAYS) - 1
DAY_MS = 86_400_000
PACE_MS = 120_000
UNKNOWN = 1 << 30  # the pace of a window noted before paces were kept: anything goes


def _masks(sched: list[int], slots: int) -> bool:
    """Whether `sched` is a schedule of `slots` windows (with or without paces)."""
    return len(sched) in (slots + 1, 2 * slots + 1)


def note(sched: list[int], slots: int, day: int, slot: int, pace: int = 1) -> list[int]:
    """`sched` with activity noted in window `slot` of `day`, at most `pace` spaced accesses
    within PACE_MS (a new schedule when `sched` is empty or of another number of windows).
    Days before the newest one noted are still noted, in their own bit; days older than DAYS
    are dropped; a window's pace is the most ever noted there."""
    n = len(sched)
    if n != 2 * slots + 1 and n != slots + 1:  # not _masks(sched, slots), without the call
        sched = [day, *([0] * (2 * slots))]
    elif n == slots + 1:
        # Kept before paces were: windows already active have an unknown pace.
        sched = [*sched, *(UNKNOWN if m else 0 for m in sched[1:])]
    if day > sched[0]:
        shift = day - sched[0]
        if shift >= DAYS:
            sched[1:] = [0] * (2 * slots)
        else:
            sched[1 : slots + 1] = [(m << shift) & _FULL for m in sched[1 : slots + 1]]
        sched[0] = day
    back = sched[0] - day
    if back < DAYS:
        sched[slot + 1] |= 1 << back
        i = slots + 1 + slot
        sched[i] = max(sched[i], pace)
    return sched


def earlier(sched: list[int], slots: int, day: int, slot: int) -> int:
    """The days before `day` on which window `slot` was active, as a mask (bit 0: the day
    before)."""
    if not _masks(sched, slots):
        return 0
    shift = day - sched[0]
    if shift < 0:  # a day before the newest noted (another member's clock is ahead)
        return sched[slot + 1] >> (1 - shift)
    if shift >= DAYS:
        return 0
    return ((sched[slot + 1] << shift) & _FULL) >> 1


def active_days(sched: list[int], slots: int, day: int, near: Iterable[int]) -> int:
    """On how many earlier days any of the windows `near` was active."""
    mask = 0
    for slot in near:
        mask |= earlier(sched, slots, day, slot)
    return mask.bit_count()


def active_windows(sched: list[int], slots: int, day: int) -> int:
    """Windows of earlier days with activity, all windows of the day together: how much the
    schedule has seen, the evidence an idle time of day rests on."""
    return sum(earlier(sched, slots, day, slot).bit_count() for slot in range(slots))


def pace(
    sched: list[int],
    slots: int,
    near: Iterable[int],
    pick: Callable[[list[int]], tuple[int, ...]] | None = None,
) -> int:
    """The most spaced accesses seen within PACE_MS in any of the windows `near` (UNKNOWN
    where a window was active before paces were kept). `pick`: `pace_picker(slots, near)`,
    for a caller that asks about the same windows often."""
    if len(sched) == slots + 1:
        return max((UNKNOWN if sched[slot + 1] else 0 for slot in near), default=0)
    if len(sched) != 2 * slots + 1:
        return 0
    if pick is not None:
        return max(pick(sched))
    paces = slots + 1
    return max([sched[paces + slot] for slot in near], default=0)


def pace_picker(slots: int, near: Sequence[int]) -> Callable[[list[int]], tuple[int, ...]]:
    """The paces of windows `near` (at least one) in a schedule of `slots` windows with paces,
    as one C-level pick: the first window twice, so it is a tuple even for one window."""
    paces = slots + 1
    return itemgetter(*[paces + w for w in near], paces + near[0])


def merge(scheds: Iterable[list[int]]) -> list[int]:
    """One schedule holding every day noted in any of `scheds` (the same group's schedule as
    several workers noted it, each from the members it owns): masks aligned to the newest day,
    OR-ed; paces the most of any. Nothing one of them noted within DAYS is lost, so merging is
    order-free and merging a merge again changes nothing."""
    given = [s for s in scheds if len(s) > 1]
    if not given:
        return []
    # Every writer saves what `note` returns, which keeps paces: `1 + 2 * windows` values. A
    # schedule that differs (another number of windows) is not this group's any more.
    slots = (max(len(s) for s in given) - 1) // 2
    given = [s for s in given if len(s) == 2 * slots + 1]
    day = max(s[0] for s in given)
    out = [day, *([0] * (2 * slots))]
    for s in given:
        shift = day - s[0]
        for slot in range(slots):
            if shift < DAYS:
                out[slot + 1] |= (s[slot + 1] << shift) & _FULL
            p = s[slots + 1 + slot]
            out[slots + 1 + slot] = max(out[slots + 1 + slot], p)
    return out
