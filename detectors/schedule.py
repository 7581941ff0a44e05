"""Schedules: on which of the last days a machine (or its peer group) was active in each window
of the day.

A schedule is what periodic work looks like from a day's point of view: a job every few
minutes or hourly at a fixed minute is active in its windows every day, a nightly job in the
same one or two windows every night, a weekly job in its windows seven and fourteen days ago,
a CI pool's night runs in some night windows on some nights. Off hours is judged against it:
activity where the machine or its group has been active on earlier days, at a similar level, is
its schedule, not off hours, and a time of day is only called idle once the machine has shown
enough activity elsewhere for that idleness to mean something.

State (JSON-friendly, bounded): `[day, mask per window of the day...]`, bit i of a window's
mask set when there was activity in that window `i` days before `day`; `DAYS` days are kept,
so a weekly job's last two runs are both remembered.

Imports: the standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable

DAYS = 28
_FULL = (1 << DAYS) - 1
DAY_MS = 86_400_000


def note(sched: list[int], slots: int, day: int, slot: int) -> list[int]:
    """`sched` with activity noted in window `slot` of `day` (a new schedule when `sched` is
    empty or of another number of windows). Days before the newest one noted are still
    noted, in their own bit; days older than DAYS are dropped."""
    if len(sched) != slots + 1:
        sched = [day, *([0] * slots)]
    elif day > sched[0]:
        shift = day - sched[0]
        if shift >= DAYS:
            sched[1:] = [0] * slots
        else:
            sched[1:] = [(m << shift) & _FULL for m in sched[1:]]
        sched[0] = day
    back = sched[0] - day
    if back < DAYS:
        sched[slot + 1] |= 1 << back
    return sched


def earlier(sched: list[int], slots: int, day: int, slot: int) -> int:
    """The days before `day` on which window `slot` was active, as a mask (bit 0: the day
    before)."""
    if len(sched) != slots + 1:
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
