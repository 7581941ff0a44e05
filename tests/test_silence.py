"""Silence against the machine's rhythm (detectors.silence): the rule's cases, no Kafka.

Each test drives one detection partition (a core and a memory store) minute by minute, the
partition's clock moved by the runtime's punctuation as a worker's would be, so a machine
that sends nothing is still judged.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from detectors.config import DetectorConfig
from detectors.core import DetectionCore
from detectors.silence import learn
from detectors.state import MachineState, _decode_state, _encode_state
from schemas.alert import Alert
from schemas.event import AuditEvent
from streams.processor import MemoryStore

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_767_571_200_000  # Monday 2026-01-05 00:00 UTC
# The combined model is beside the point here and the slowest part of a long stream.
CONFIG = replace(DetectorConfig(), combined=None)


class Partition:
    def __init__(self, cfg: DetectorConfig = CONFIG) -> None:
        self.core = DetectionCore(cfg)
        self.kv = MemoryStore()
        self.alerts: list[Alert] = []
        self.n = 0

    def run(self, events: Iterable[tuple[int, str]], until_ms: int) -> None:
        """Deliver (time, machine) events in time order, moving the clock every minute."""
        tick = T0
        for ts, machine in sorted(events):
            while tick + MIN <= ts:
                tick += MIN
                self.alerts += self.core.punctuate(self.kv, None, {"input-0": tick})
            self.n += 1
            ev = AuditEvent(
                event_id=f"{machine}-{self.n}",
                ts_us=ts * 1000,
                machine_id=machine,
                resource="kafka://topic/ledger.entries",
                operation="consume",
                outcome="SUCCESS",
            )
            self.alerts += self.core.observe(ev, self.kv, None, "input-0")
        while tick + MIN <= until_ms:
            tick += MIN
            self.alerts += self.core.punctuate(self.kv, None, {"input-0": tick})

    def silence_pages(self, machine: str) -> list[Alert]:
        return [
            a
            for a in self.alerts
            if a.detector == "silence" and a.machine_id == machine and a.is_page
        ]


def at_ms(alert: Alert) -> int:
    return int(datetime.fromisoformat(alert.event_time.replace("Z", "+00:00")).timestamp() * 1000)


def poisson(rng: random.Random, machine: str, per_min: float, start: int, end: int) -> list:
    out, t = [], start
    while True:
        t += int(rng.expovariate(per_min) * MIN) + 1
        if t >= end:
            return out
        out.append((t, machine))


def test_a_machine_first_seen_today_has_no_expectation() -> None:
    # The demo's nightly job, paged CRITICAL 35 minutes after it first appeared: busy for an
    # hour and a half, then done. Nothing on an earlier day says it should go on.
    rng = random.Random(1)
    p = Partition()
    start = T0 + 9 * DAY + 2 * HOUR
    events = poisson(rng, "nightly-new-export", 8, start, start + 90 * MIN)
    events += poisson(rng, "clock", 2, start - HOUR, start + 8 * HOUR)
    p.run(events, start + 8 * HOUR)
    assert p.silence_pages("nightly-new-export") == []


def test_an_always_active_machine_that_stops_is_paged_within_15_minutes() -> None:
    # A queue consumer at 1.25 events a minute, day and night for four days, stops at 10:00.
    rng = random.Random(2)
    p = Partition()
    stop = T0 + 4 * DAY + 10 * HOUR
    events = poisson(rng, "ledger-consumer-1", 1.25, T0, stop)
    events += poisson(rng, "ledger-consumer-1", 1.25, stop + 90 * MIN, stop + 4 * HOUR)
    last = max(t for t, _ in events if t < stop)
    p.run(events, stop + 4 * HOUR)
    (page,) = p.silence_pages("ledger-consumer-1")
    assert at_ms(page) - last <= 15 * MIN
    assert "longest gap" in page.summary


def test_the_quiet_that_ends_a_silence_is_not_learned_as_a_usual_gap() -> None:
    # Stopped for 90 minutes on one day and again at the same time the next day: the first
    # outage must not teach the rhythm that 90 quiet minutes at 10:00 are normal.
    rng = random.Random(3)
    p = Partition()
    events = []
    t = T0
    for d in (3, 4):
        stop = T0 + d * DAY + 10 * HOUR
        events += poisson(rng, "ledger-consumer-2", 1.25, t, stop)
        t = stop + 90 * MIN
    events += poisson(rng, "ledger-consumer-2", 1.25, t, t + 2 * HOUR)
    p.run(events, t + 2 * HOUR)
    pages = p.silence_pages("ledger-consumer-2")
    assert [(at_ms(a) - T0) // DAY for a in pages] == [3, 4]


def test_a_nightly_job_is_not_paged_after_its_run() -> None:
    # One run a night from about 02:00, 35 to 80 minutes long: each run ends where earlier
    # runs ended, with a day's gap after it.
    rng = random.Random(4)
    p = Partition()
    events = []
    for d in range(10):
        s = T0 + d * DAY + 2 * HOUR + rng.randint(0, 6) * MIN
        events += poisson(rng, "nightly-ledger-export", 4, s, s + rng.randint(35, 80) * MIN)
    p.run(events, T0 + 10 * DAY)
    assert p.silence_pages("nightly-ledger-export") == []


def test_a_weekly_job_is_not_paged_between_its_runs() -> None:
    rng = random.Random(5)
    p = Partition()
    events = []
    for week in range(3):
        s = T0 + week * 7 * DAY + 13 * HOUR
        events += poisson(rng, "weekly-billing-close", 2, s, s + 2 * HOUR)
    p.run(events, T0 + 17 * DAY)
    assert p.silence_pages("weekly-billing-close") == []


def test_a_ci_runner_is_not_paged_between_jobs_or_after_its_working_day() -> None:
    # Jobs of 4-15 minutes at 2.5 events a minute in working hours on weekdays, pauses of
    # about 25 minutes (exponential) between them; two weeks of it.
    rng = random.Random(6)
    p = Partition()
    events = []
    for d in range(12):
        if d % 7 >= 5:
            continue
        t = T0 + d * DAY + int(rng.uniform(8, 9.5) * HOUR)
        while t < T0 + d * DAY + 18 * HOUR:
            length = rng.randint(4, 15) * MIN
            events += poisson(rng, "ci-runner-1", 2.5, t, t + length)
            t += length + int(rng.expovariate(1 / 25) * MIN)
    p.run(events, T0 + 12 * DAY)
    scored = [a for a in p.silence_pages("ci-runner-1") if at_ms(a) >= T0 + 7 * DAY]
    assert scored == []


def test_an_office_hours_machine_is_not_expected_at_night_after_one_night_session() -> None:
    # Weekdays 08-18; one night it was busy from 01:00 to 01:40 (someone's batch); from
    # then on, the nights are as quiet as ever and are not silence.
    rng = random.Random(7)
    p = Partition()
    events = []
    for d in range(10):
        if d % 7 < 5:
            events += poisson(
                rng, "backoffice-web-1", 0.75, T0 + d * DAY + 8 * HOUR, T0 + d * DAY + 18 * HOUR
            )
    events += poisson(rng, "backoffice-web-1", 1.0, T0 + 8 * DAY + HOUR, T0 + 8 * DAY + 100 * MIN)
    p.run(events, T0 + 10 * DAY)
    assert p.silence_pages("backoffice-web-1") == []


def test_the_rhythm_is_bounded_and_kept_with_the_machine_state() -> None:
    rhythm: list[int] = []
    last = T0
    rng = random.Random(8)
    for t, _ in poisson(rng, "m", 0.5, T0, T0 + 40 * DAY):
        learn(rhythm, last, t, False)
        last = t
    assert len(rhythm) == 74
    assert all(0 <= x <= 0xFF for x in rhythm[2:26])  # seven earlier days and today
    state = MachineState.new(T0)
    state.silence = rhythm
    assert _decode_state(_encode_state(state)).silence == rhythm
    # A record from before the rhythm loads with none (not paged until learned again).
    old = _encode_state(MachineState.new(T0)).replace(b',"sl":[]', b"")
    assert b'"sl"' not in old and _decode_state(old).silence == []
