"""Off hours judged against schedules (issue 16, point 1): what a machine or its group did at
this time of day on earlier days is normal; an idle time of day needs evidence."""

from __future__ import annotations

import random

from detectors import schedule
from detectors.core import DetectionCore, DetectorConfig
from schemas.event import format_rfc3339_ms, parse_timestamp_us
from streams.processor import MemoryStore
from tests.test_detectors_peers import MIN, T0, Client, pages

S = 1000
HOUR = 60 * MIN
DAY = 24 * HOUR
CFG = DetectorConfig(combined=None)


def off_hours_pages(c: Client) -> list[str]:
    return [a.event_time for a in pages(c.alerts) if a.detector == "off_hours"]


def working_day(c: Client, day: int, per_hour: int = 60) -> None:
    """Busy 08-18 UTC, weekdays only (day 0 is a Thursday: days 2 and 3 are the weekend)."""
    if day % 7 in (2, 3):
        return
    rng = random.Random(day)
    for h in range(8, 18):
        for j in range(per_hour):
            c.send(T0 + day * DAY + h * HOUR + j * HOUR // per_hour + rng.randrange(1000))


def test_schedule_remembers_days_and_forgets_beyond_its_horizon() -> None:
    sched: list[int] = []
    for day in (10, 11, 13):
        sched = schedule.note(sched, 48, day, 6)
    sched = schedule.note(sched, 48, 12, 7)  # a late window of an earlier day
    assert schedule.active_days(sched, 48, 14, [6]) == 3
    assert schedule.active_days(sched, 48, 14, [6, 7]) == 4
    assert schedule.active_days(sched, 48, 13, [6]) == 2  # only days before the one judged
    assert schedule.active_windows(sched, 48, 14) == 4
    assert schedule.active_days(sched, 48, 14 + schedule.DAYS, [6]) == 0


def test_an_hourly_job_at_its_minute_is_not_off_hours_at_night() -> None:
    # A service busy in working hours whose hourly job makes a short burst at minute 7, day
    # and night: at 03:07 the burst is far above the night's average rate, but it is what
    # the machine does at that minute every night.
    c = Client(DetectionCore(CFG), "billing-sync")
    for d in range(8):
        for h in range(24):
            for k in range(4):
                c.send(T0 + d * DAY + h * HOUR + 7 * MIN + k * 12 * S)
        working_day(c, d)
    c.alerts.clear()
    for h in range(24):
        for k in range(4):
            c.send(T0 + 8 * DAY + h * HOUR + 7 * MIN + k * 12 * S)
    assert off_hours_pages(c) == []


def test_sparse_night_activity_seen_on_earlier_nights_is_not_paged() -> None:
    # A few accesses at night on earlier nights (a human checking something, at a different
    # minute each night): the same again is this machine's night, not off hours.
    c = Client(DetectionCore(CFG), "ops-console")
    rng = random.Random(3)
    for d in range(10):
        working_day(c, d)
        t = T0 + d * DAY + 2 * HOUR + rng.randrange(40) * MIN
        for k in range(3):
            c.send(t + k * 25 * S)
    c.alerts.clear()
    t = T0 + 10 * DAY + 2 * HOUR + 15 * MIN
    for k in range(3):
        c.send(t + k * 25 * S)
    assert off_hours_pages(c) == []


def test_an_office_app_busy_at_night_pages_within_two_minutes() -> None:
    # Active only in working hours on weekdays for two weeks; at 02:00 it starts a 20-minute
    # session at one access a minute. Two accesses in a minute at a time of day it was never
    # active on any of its days are the evidence: the page comes with the second.
    c = Client(DetectionCore(CFG), "backoffice")
    for d in range(14):
        working_day(c, d)
    c.alerts.clear()
    start = T0 + 14 * DAY + 2 * HOUR + 20 * S
    for j in range(20):
        c.send(start + j * MIN)
    found = off_hours_pages(c)
    assert found
    assert found[0] <= format_rfc3339_ms(start + 2 * MIN)
    assert parse_timestamp_us(found[0]) // 1000 == start + MIN


def test_a_peer_paged_off_hours_does_not_make_the_hour_normal_for_the_group() -> None:
    kv = MemoryStore()
    core = DetectionCore(CFG)
    a = Client(core, "backoffice-web-7d9f8b6c4-bx2kq", kv)
    b = Client(core, "backoffice-web-7d9f8b6c4-zt5mw", kv)
    for d in range(14):
        working_day(a, d)
        working_day(b, d)
    night = T0 + 14 * DAY + 3 * HOUR + 28 * MIN
    for j in range(35):
        a.send(night + j * MIN)
    assert off_hours_pages(a)
    # The next night, the other pod at the same time: as unusual for it and its group.
    for d in (14,):
        working_day(b, d)
    start = T0 + 15 * DAY + 3 * HOUR + 30 * MIN
    for j in range(30):
        b.send(start + j * MIN)
    found = off_hours_pages(b)
    assert found and found[0] <= format_rfc3339_ms(start + 2 * MIN)


def test_a_tool_used_in_a_few_sessions_has_no_idle_hours_yet() -> None:
    # A human's admin tool: five short sessions in two weeks, at times of day between 09 and
    # 21. A session at another time of the day is not evidence of anything: the tool is idle
    # most of every day.
    c = Client(DetectionCore(CFG), "admintool-dbops")
    for d, h in ((0, 9.5), (3, 14.0), (5, 20.5), (8, 11.0), (11, 17.5)):
        for j in range(10):
            c.send(T0 + d * DAY + int(h * HOUR) + j * 40 * S)
    c.alerts.clear()
    start = T0 + 14 * DAY + int(12.5 * HOUR)
    for j in range(10):
        c.send(start + j * 40 * S)
    assert off_hours_pages(c) == []


def test_a_session_far_faster_than_earlier_nights_trickle_pages_within_two_minutes() -> None:
    # Issue 16's synthetic regression: an office tool with a little activity late on earlier
    # nights (six accesses spread over half an hour) starts a session there at its daytime
    # pace. Six accesses a night were seen here, but never two within two minutes: the
    # session is not that schedule, and it pages on the burst's evidence, not only once it
    # has made more accesses than the trickle ever did (the seventh, three minutes in).
    c = Client(DetectionCore(CFG), "backoffice")
    for d in range(14):
        working_day(c, d)
        if d % 2:
            t = T0 + d * DAY + 2 * HOUR + 2 * MIN
            for k in range(6):
                c.send(t + k * 5 * MIN)
    c.alerts.clear()
    start = T0 + 14 * DAY + 2 * HOUR + 5 * MIN
    for j in range(20):
        c.send(start + j * 30 * S)
    found = off_hours_pages(c)
    assert found
    assert found[0] <= format_rfc3339_ms(start + 2 * MIN)


def test_a_schedule_keeps_each_windows_fastest_pace() -> None:
    sched: list[int] = []
    sched = schedule.note(sched, 48, 10, 6, 4)
    sched = schedule.note(sched, 48, 11, 6, 2)
    sched = schedule.note(sched, 48, 11, 7)
    assert schedule.pace(sched, 48, [6]) == 4
    assert schedule.pace(sched, 48, [7, 8]) == 1
    assert schedule.active_days(sched, 48, 12, [6]) == 2
    # Kept before paces were: an active window's pace is unknown (the count rule alone).
    legacy = [11, *([0] * 48)]
    legacy[7] = 0b11
    assert schedule.pace(legacy, 48, [6]) == schedule.UNKNOWN
    assert schedule.pace(legacy, 48, [7]) == 0
    assert schedule.pace(schedule.note(legacy, 48, 12, 7, 2), 48, [6, 7]) == schedule.UNKNOWN


def test_merged_schedules_keep_every_writers_days_and_merge_again_to_the_same() -> None:
    a = schedule.note(schedule.note([], 3, 40, 2, 5), 3, 38, 0)
    b = schedule.note([], 3, 41, 1)
    c = schedule.note([], 3, 5, 0)  # older than DAYS before the newest day: nothing to keep
    merged = schedule.merge([a, b, c])
    assert merged[0] == 41
    assert schedule.earlier(merged, 3, 42, 2) == 0b10  # day 40
    assert schedule.earlier(merged, 3, 42, 0) == 0b1000  # day 38
    assert schedule.earlier(merged, 3, 42, 1) == 0b1  # day 41
    assert schedule.pace(merged, 3, [2]) == 5
    assert schedule.merge([merged, a]) == merged == schedule.merge([b, a, c])
    assert schedule.merge([]) == []
