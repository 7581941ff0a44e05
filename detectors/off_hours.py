"""Off hours: activity at a time of day when the machine is normally (nearly) idle.

Two rules: a window of the day (`off_hours_window_s`) with several times more accesses than the
machine or a peer ever made around that time of day, and a dense burst, a Poisson tail test of
a run of spaced accesses against the rate learned for this time of day. Both are judged only
where the machine is nearly idle at this hour by its rate model, and only once the model has
seen a full day.

Imports: the standard library and `detectors` (base, rate).
"""

from __future__ import annotations

import math
from functools import lru_cache
from operator import itemgetter
from typing import TYPE_CHECKING

from detectors import schedule
from detectors.base import Detector, Finding, Seen
from detectors.rate import poisson_tail
from schemas.event import format_rfc3339_ms

if TYPE_CHECKING:
    from detectors.peers import PeerGroup
    from detectors.rate import RateBaseline
    from detectors.state import MachineState

_BURST_GAP_MS = 10_000  # off-hours accesses closer than this count as one
_RUN_GAP_MS = 300_000  # and a run of them ends after this much quiet
# Busiest windows around this time of day from this many times the window rule's ratio up
# are a machine (or group) busy in bursts here: not Poisson, left to the window rule.
_BURSTY = 3
_SCAN_EVENTS = 8  # latest spaced off-hours accesses kept as candidate starts of a burst
# state.off: [window, count in it, fired, run start ms, spaced accesses, last spaced ms,
# learned rate x 1e6 and busiest nearby window at the run's start, busiest nearby window
# and the schedule's pace around the current window (without the run's own), the most
# spaced accesses within schedule.PACE_MS in the current window, then the latest spaced
# access times]
_OFF_RECENT = 11


class _Near:
    """The windows of the day within `spread` of one (off-hours' neighbourhood), with pickers
    for them: the most of a per-window list over a neighbourhood is asked at nearly every event
    of a sparse machine, and a C-level pick is several times cheaper than a comprehension."""

    __slots__ = ("pick", "pick_pace", "top", "windows")

    def __init__(self, slot: int, slots: int, spread: int) -> None:
        self.windows = tuple([(slot + d) % slots for d in range(-spread, spread + 1)])
        self.top = max(self.windows)
        # The window itself twice, so the pick is a tuple even for a neighbourhood of one.
        self.pick = itemgetter(*self.windows, slot)
        self.pick_pace = schedule.pace_picker(slots, self.windows)


def _near(window: int, slots: int, spread: int) -> _Near:
    """Off-hours' neighbourhood of a window, built only where it is read: not on every
    event."""
    return _near_slot(window % slots, slots, spread)


@lru_cache(maxsize=1024)
def _near_slot(slot: int, slots: int, spread: int) -> _Near:
    # A few dozen distinct neighbourhoods at any setting: built once each, not at every
    # window a machine closes (nearly every event of a sparse machine).
    return _Near(slot, slots, spread)


def _busiest_near(state: MachineState, peers: PeerGroup | None, near: _Near) -> int:
    """The most events the machine, or a peer, made in these windows of the day.
    Neighbouring windows count: sessions and schedules drift by an hour or so from day
    to day, and that is not "off hours"."""
    before: int = max(near.pick(state.hmax))
    if peers is not None and peers.members > 1:
        busiest = peers.busiest()
        if len(busiest) > near.top:
            group: int = max(near.pick(busiest))
        elif busiest:  # kept under another window length: only the windows it has
            n = len(busiest)
            group = max([busiest[i] if i < n else 0 for i in near.windows])
        else:
            return before
        if group > before:
            return group
    return before


def _pace_near(state: MachineState, peers: PeerGroup | None, slots: int, near: _Near) -> int:
    """The schedule's pace (schedule.pace) around this time of day, the machine's or a
    peer's."""
    pace = schedule.pace(state.sched, slots, near.windows, near.pick_pace)
    if peers is not None and peers.members > 1:
        group = schedule.pace(peers.schedule(), slots, near.windows, near.pick_pace)
        if group > pace:
            return group
    return pace


def _run_start(
    ts: int,
    rate: RateBaseline,
    state: MachineState,
    peers: PeerGroup | None,
    slots: int,
    near: _Near,
) -> list[int]:
    """state.off[3:] for an off-hours run starting at ts (see _OFF_RECENT)."""
    before = _busiest_near(state, peers, near)
    rate_e6 = round(rate.expected_at(ts) * 1e6)
    pace = _pace_near(state, peers, slots, near)
    return [ts, 0, ts - _BURST_GAP_MS, rate_e6, before, before, pace, 0]


def _learn_window(state: MachineState, peers: PeerGroup | None, slots: int, window_ms: int) -> None:
    """Teach the window that closes (state.off) to the busiest windows and the schedules. A
    window the machine was paged in is not taught to its group: one member's off-hours
    session would otherwise make the same hour ordinary for every other member. The machine
    itself learns it, so activity that comes back on later days becomes its schedule."""
    absolute, count, paged, pace = state.off[0], state.off[1], state.off[2], state.off[10]
    slot = absolute % slots
    day = absolute * window_ms // schedule.DAY_MS
    hmax = state.hmax
    hmax[slot] = max(hmax[slot], count)
    state.sched = schedule.note(state.sched, slots, day, slot, pace)
    if peers is None or paged or count <= 1:
        return
    peers.note_window(slot, slots, count)
    group = peers.schedule()
    if (
        not schedule.earlier(group, slots, day + 1, slot) & 1
        or schedule.pace(group, slots, (slot,)) < pace
    ):
        peers.save_schedule(schedule.note(list(group), slots, day, slot, pace))


class OffHours(Detector):
    """Activity at a time of day when the machine is normally (nearly) idle, well above
    anything it has done at that time before: a business-hours service busy at night, even at
    a rate that would be ordinary by day. Owns `MachineState.off` (the open window and the
    run of accesses in it, see `_OFF_RECENT`) and `MachineState.hmax` (the most events seen
    per window of the day); a peer group's busiest windows are noted in the group.

    Judged only on warm machines: a machine's first windows are not learned either. Everything
    it learns is learned as a window closes, so `learn` has nothing to add."""

    __slots__ = ()
    name = "off_hours"
    owns = ("off", "hmax", "sched")

    def score(self, seen: Seen) -> Finding | None:
        if not seen.warm:
            return None
        cfg, event, state, rate, peers = seen.cfg, seen.event, seen.state, seen.rate, seen.peers
        ts = seen.ts
        window_ms = cfg.off_hours_window_s * 1000
        window = ts // window_ms
        slots = 86_400_000 // window_ms
        if len(state.hmax) != slots:
            state.hmax = [0] * slots
        spread = cfg.off_hours_spread
        off = state.off
        if off and (len(off) == 4 or off[0] > ts // 1000):
            off = state.off = []  # the first layout started with timestamps, not window numbers
        elif len(off) > 9 and off[9] > schedule.UNKNOWN:
            off = state.off = off[:3]  # kept before the pace was: access times from [9] on
        if off and len(off) < _OFF_RECENT:
            # Stored before the run kept what it is tested against: start a run here.
            near = _near(window, slots, spread)
            off = state.off = [*off[:3], *_run_start(ts, rate, state, peers, slots, near)]
        if not off or window > off[0]:
            near = _near(window, slots, spread)
            # A run of accesses going on across the window boundary stays one run for the
            # burst test; what it is tested against is taken before the run's own events
            # teach it: the learned rate as the run starts, the busiest windows around each
            # window the run reaches (before the window that closes, perhaps the run's own
            # accesses, is added to them).
            run = (
                off[3:]
                if off
                and ts - off[5] <= _RUN_GAP_MS
                and ts - off[3] <= window_ms  # a busy day is not one long run
                else []
            )
            if run:
                run[5] = _busiest_near(state, peers, near)
                run[6] = _pace_near(state, peers, slots, near)
                run[7] = 0
            paged = 0
            if off:
                paged = off[2]
                _learn_window(state, peers, slots, window_ms)
            # A new run: the window that closed is not its own, so it counts. A run that has
            # paged stays paged: one page for one run, and what it does next is not taught to
            # the group either.
            off = state.off = [
                window,
                0,
                paged if run else 0,
                *(run or _run_start(ts, rate, state, peers, slots, near)),
            ]
        elif window < off[0]:
            return None  # a late event: its window is closed
        off[1] += 1
        if ts - off[5] >= _BURST_GAP_MS:
            off[4] += 1
            off[5] = ts
            # The latest spaced accesses, for the scan below.
            off.append(ts)
            if len(off) > _OFF_RECENT + _SCAN_EVENTS:
                del off[_OFF_RECENT]
            since = ts - schedule.PACE_MS
            within = 0
            for t in off[_OFF_RECENT:]:
                if t > since:
                    within += 1
            off[10] = max(off[10], within)
        count, fired, spaced = off[1], off[2], off[4]
        # Idle hours are only known once the profile has seen at least a full day.
        if (
            fired
            or (count < cfg.off_hours_min_events and spaced < cfg.off_hours_burst_events)
            or rate.n < 86_400 // cfg.rate.interval_s
        ):
            return None
        near = _near(window, slots, spread)
        before = _busiest_near(state, peers, near)
        today = ts // schedule.DAY_MS
        own = state.sched
        group = peers.schedule() if peers is not None and peers.members > 1 else []
        # An idle time of day means something only next to activity at other times: a tool
        # used in a few short sessions a week has no idle hours to speak of yet.
        if (
            max(
                schedule.active_windows(own, slots, today),
                schedule.active_windows(group, slots, today),
            )
            < cfg.off_hours_min_active_windows
        ):
            return None
        days_near = max(
            schedule.active_days(own, slots, today, near.windows),
            schedule.active_days(group, slots, today, near.windows),
        )
        # Its schedule: the machine or its group was active around this time on earlier
        # days, at about this level and pace (a job at the minute it always runs, a CI
        # pool's night runs): the window, or the run if it crossed into it, has no more
        # accesses than the busiest window around here before the run, and no more within
        # schedule.PACE_MS than were ever seen there. Busier or faster than that, the rules
        # below judge it against what was seen here: a business-hours tail of four accesses
        # an evening does not explain four in two minutes.
        before0, before_here, pace_here = state.off[7], state.off[8], state.off[9]
        if (
            days_near
            and max(count, spaced) <= cfg.off_hours_schedule_ratio * before_here
            and state.off[10] <= cfg.off_hours_schedule_ratio * pace_here
        ):
            return None
        day = ts - ts % 86_400_000
        peak = max(rate.expected_at(day + h * 3_600_000) for h in range(24))
        # Idle as the run started where neither was ever active around this time: the rate
        # model learns a session as it goes on, and within minutes an office tool busy at night
        # would be "usually busy at this hour". Where they were, the model knows this hour.
        start_rate = state.off[6] / 1e6
        expected_now = rate.expected_at(ts)
        if (expected_now if days_near else start_rate) > cfg.off_hours_max_share * peak:
            return None
        full = (
            count > before
            and count >= cfg.off_hours_min_events
            and count >= cfg.off_hours_ratio * max(before, 1)
        )
        # The window rule waits for a window's worth of evidence; at an office tool's daytime
        # pace (about one access a minute) that is a quarter of an hour. Against the learned
        # rate for this time of day, a few accesses spread over a minute or two are already
        # as unlikely. Accesses closer than _BURST_GAP_MS count once: one action often makes
        # several calls (retries, a page load), and a Poisson test on them would see a burst
        # in a single click.
        first_ms = state.off[3]
        # The rate to beat: the machine's own, learned for this time of day, and at least
        # the busiest window it or a peer ever had here, spread by the window rule's ratio (a
        # busiest window is a maximum over days and members, not a mean), both as the run
        # started. Only where the busiest windows are small, there and where the run is now:
        # a group that is busy at this hour in bursts (CI runners taking turns) is not
        # Poisson, and the window rule judges it. At least once an hour, unless neither the
        # machine nor its group was active around this time on any of the days they were
        # active: then at least once in all those hours.
        floor = 1.0 / 3600.0
        if not days_near:
            active = max(
                schedule.active_days(own, slots, today, range(slots)),
                schedule.active_days(group, slots, today, range(slots)),
            )
            floor = min(floor, 1.0 / (max(active, 1) * len(near.windows) * cfg.off_hours_window_s))
        lam = max(
            start_rate / cfg.rate.interval_s,
            before0 / (cfg.off_hours_ratio * cfg.off_hours_window_s),
            floor,
        )
        # A scan: the whole run, and each of its latest spaced accesses as the start of the
        # burst, so a stray access a quarter of an hour before does not dilute it. The
        # threshold applies to the least likely start, without a correction for trying up
        # to _SCAN_EVENTS + 1 of them: with one (Bonferroni), `make eval`'s off-hours median
        # time to detect went from 94 to 156 s, while its false pages stayed far under budget
        # without it. Spans run to the latest access seen: a late event is no shorter burst.
        now = max(ts, state.off[5])
        p = poisson_tail(spaced - 1, lam * (now - first_ms) / 1000.0)
        recent = state.off[_OFF_RECENT:]
        for i, t0 in enumerate(recent[: 1 - cfg.off_hours_burst_events]):
            p = min(p, poisson_tail(len(recent) - 1 - i, lam * (now - t0) / 1000.0))
        burst = (
            max(before0, before_here) < cfg.off_hours_ratio * _BURSTY
            and spaced >= cfg.off_hours_burst_events
            and p <= cfg.off_hours_burst_p
        )
        if not (full or burst):
            return None
        state.off[2] = 1
        hour = format_rfc3339_ms(ts)[11:16]
        minutes = max(1, math.ceil((ts - first_ms) / 60_000))
        by_window = 10.0 * math.log2(count / (cfg.off_hours_ratio * max(before, 1)) + 1)
        by_burst = 5.0 * math.log10(cfg.off_hours_burst_p / max(p, 1e-300))
        return Finding(
            "off_hours",
            min(100.0, 50.0 + max(by_window if full else 0.0, by_burst if burst else 0.0)),
            f"{event.machine_id} made {count} accesses within {minutes} minutes at {hour} UTC, "
            f"a time of day when it is nearly idle (at most {before} in "
            f"{cfg.off_hours_window_s // 60} minutes before, about "
            f"{lam * 3600:.1f} an hour expected).",
            {"events": count, "minutes": minutes, "resource": event.resource},
            {
                "most_events_at_this_time": before,
                "events_per_hour_at_this_time": round(lam * 3600, 2),
                "share_of_busiest_hour": round(expected_now / peak, 3) if peak else 0.0,
                "days_active_at_this_time": days_near,
                "window_minutes": cfg.off_hours_window_s // 60,
            },
        )

    # Everything it learns is learned in `score` as intervals close: running it is scoring it,
    # one call fewer per event than `Detector.run`.
    run = score
