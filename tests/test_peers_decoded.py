"""What a view of a peer group (detectors.peers) reads: every change to the store, its own
writes and another worker's records merged in by the peer table, and no write changes what
another view holds (a cache of decoded records must keep it so). Off hours' neighbourhood
pickers answer as the plain maxima they replace. In-process, no Kafka: the peer table's merge
is pure (the topic's round trip is tests/test_runtime_kafka.py's)."""

from __future__ import annotations

import orjson

from detectors import schedule
from detectors.off_hours import _busiest_near, _near, _pace_near
from detectors.peers import PeerGroup
from detectors.state import MachineState
from streams.processor import MemoryStore
from streams.runtime.peers import PeerTable

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WEEK_S = 7 * 86_400


def _record(kind: bytes, writer: str, key: str) -> bytes:
    return kind + b"\x00" + writer.encode() + b"\x00" + key.encode()


def test_a_group_read_after_another_workers_record_is_the_merge() -> None:
    table = PeerTable("w1")
    group = PeerGroup(table, "g")
    group.join(T0)
    group.join(T0 + 1)
    group.note_window(3, 48, 5)
    assert PeerGroup(table, "g").members == 2
    assert PeerGroup(table, "g").busiest()[3] == 5
    # Another worker's members and busier window arrive from the peers topic.
    table.apply(_record(b"gm", "w2", "g"), orjson.dumps([T0 - 10, 3, T0 + 5]), loading=False)
    table.apply(_record(b"gh", "w2", "g"), orjson.dumps([0] * 3 + [9] + [0] * 44), False)
    merged = PeerGroup(table, "g")
    assert (merged.members, merged.first_ms, merged.last_join_ms) == (5, T0 - 10, T0 + 5)
    assert merged.busiest()[3] == 9
    # Our own join afterwards counts on top of the merge, and is published as ours alone.
    merged.join(T0 + 7)
    assert PeerGroup(table, "g").members == 6
    published = dict(table.drain())
    assert orjson.loads(published[_record(b"gm", "w1", "g")])[1] == 3


def test_writes_never_change_what_other_readers_hold() -> None:
    """Two groups whose records are the same bytes: a write to one must not show in the
    other, nor in a view read before the write."""
    kv = MemoryStore()
    for g in ("a", "b"):
        PeerGroup(kv, g).join(T0)
        PeerGroup(kv, g).note_window(1, 4, 2)
        PeerGroup(kv, g).save_schedule(schedule.note([], 4, 100, 1, 2))
        PeerGroup(kv, g).note_peak("m1", 8, T0 / 1000, WEEK_S)
    a, b = PeerGroup(kv, "a"), PeerGroup(kv, "b")
    before = (b.members, list(b.busiest()), list(b.schedule()))
    assert a.busiest()[1] == 2
    a.join(T0 + 1)
    a.note_window(1, 4, 7)
    a.note_peak("m2", 8, T0 / 1000, WEEK_S)
    a.note_peak("m3", 8, T0 / 1000, WEEK_S)
    assert (b.members, b.busiest(), b.schedule()) == before
    fresh = PeerGroup(kv, "b")
    assert (fresh.members, fresh.busiest(), fresh.schedule()) == before
    assert fresh.recent_peak(T0 / 1000, WEEK_S, "x") == 0.0  # one member noted in b
    # A view keeps the windows it read (off hours reads them before and after a window
    # closes within one event); a new view reads the write.
    assert a.busiest() == [0, 2, 0, 0]
    assert PeerGroup(kv, "a").busiest()[1] == 7
    assert PeerGroup(kv, "a").members == 2
    assert abs(PeerGroup(kv, "a").recent_peak(T0 / 1000, WEEK_S, "m1") - 8.0) < 1e-9


def test_neighbourhood_maxima_are_the_plain_maxima() -> None:
    """Every window and spread, the group's windows kept at this or another number of windows
    (or none), schedules with and without paces: the pickers give what the comprehensions
    over the neighbourhood give."""
    for slots, spread in ((48, 2), (48, 0), (4, 3), (24, 1)):
        kv = MemoryStore()
        peers = PeerGroup(kv, "g")
        peers.join(T0)
        peers.join(T0)
        peers = PeerGroup(kv, "g")
        state = MachineState.new(T0)
        state.hmax = [(7 * i) % 11 for i in range(slots)]
        state.sched = [5, *[i % 3 for i in range(slots)], *[(5 * i) % 9 for i in range(slots)]]
        paces = [(3 * i) % 13 for i in range(slots)]
        group_scheds = ([], [5, *[1] * slots], [5, *[0] * slots, *paces])
        for windows in ([], [(3 * i) % 17 for i in range(slots)], [9, 30], [1] * (slots + 5)):
            kv.set(b"gh", "g", orjson.dumps(windows))
            for group_sched in group_scheds:
                kv.set(b"gs", "g", orjson.dumps(group_sched))
                for window in range(2 * slots):
                    near = _near(window, slots, spread)
                    view = PeerGroup(kv, "g")
                    cells = [(window + d) % slots for d in range(-spread, spread + 1)]
                    want = max(
                        [state.hmax[i] for i in cells]
                        + [windows[i] if i < len(windows) else 0 for i in cells]
                    )
                    assert _busiest_near(state, view, near) == want
                    pace = max(
                        schedule.pace(state.sched, slots, cells),
                        schedule.pace(group_sched, slots, cells),
                    )
                    assert _pace_near(state, view, slots, near) == pace
