"""The runtime's parts that need no broker: partition state and its changelog records, the
peer table's merge rules, the task store's routing of kinds, the partitioners."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import orjson
import pytest

from detectors import schedule
from detectors.combined import COMBINED
from detectors.core import MACHINE
from streams.processor import Origin, SplitStore
from streams.runtime.peers import META, OPERATION, RESOURCE, SCHEDULE, WINDOWS, PeerTable
from streams.runtime.routing import Router, forwarded_origin, murmur2_partition, origin_header
from streams.runtime.state import (
    FORMAT,
    FORMAT_KEY,
    EventIndex,
    PartitionState,
    Snapshots,
    StateFormatError,
)


def test_changes_become_changelog_records_once_and_restore_to_the_same_state() -> None:
    state = PartitionState(3)
    state.set(MACHINE, "orders-api-1", b"state-1")
    state.set(b"e", "m\x1fid-1", b"digest")
    state.set(b"e", "m\x1fid-2", b"digest")
    state.delete(b"e", "m\x1fid-2")
    state.delete(MACHINE, "never-set")
    records = list(state.drain())
    # The format record leads the partition's first records.
    assert records[0] == (FORMAT_KEY, FORMAT)
    assert records[1:] == [
        (b"m\x00orders-api-1", b"state-1"),
        (b"e\x00m\x1fid-1", b"digest"),
        (b"e\x00m\x1fid-2", None),
    ]
    assert list(state.drain()) == []
    state.set(MACHINE, "orders-api-1", b"state-2")
    assert list(state.drain()) == [(b"m\x00orders-api-1", b"state-2")]

    restored = PartitionState(3)
    for key, value in [*records, (b"m\x00orders-api-1", b"state-2")]:
        restored.apply(key, value)
    assert restored.data == state.data == {MACHINE: {"orders-api-1": b"state-2"}}
    assert restored.get(b"e", "m\x1fid-1") == b"digest"
    assert restored.get(b"e", "m\x1fid-2") is None
    assert restored.formatted and list(restored.drain()) == []


def test_the_event_id_index_is_on_disk_behind_a_bounded_cache(tmp_path: Path) -> None:
    path = tmp_path / "p.ids"
    index = EventIndex(path, cache_size=1_000)
    for i in range(3_000):
        index.set(f"m\x1fid-{i}", b"d%d" % i)
    assert len(index.cache) == 1_000
    # Not on disk before a flush (a flush follows a commit): ids of uncommitted work never are.
    assert EventIndex(path).get("m\x1fid-0") is None
    assert index.get("m\x1fid-0") == b"d0"
    index.flush()
    index.delete("m\x1fid-1")
    index.stamp(42)
    index.close()
    again = EventIndex(path, cache_size=1_000)
    assert again.cache == {} and again.stamped() == 42 and len(again) == 2_999
    assert again.get("m\x1fid-2999") == b"d2999" and again.get("m\x1fid-1") is None
    assert len(again.cache) == 1
    again.clear()
    assert again.stamped() is None and again.get("m\x1fid-2") is None


def test_a_batch_of_event_ids_is_looked_up_in_one_query(tmp_path: Path) -> None:
    path = tmp_path / "p.ids"
    index = EventIndex(path, cache_size=10)
    for i in range(0, 2_000, 2):  # the even ids are on disk
        index.set(f"m\x1fid-{i}", b"d%d" % i)
    index.flush()
    index.close()
    index = EventIndex(path, cache_size=1_000)
    statements: list[str] = []
    index.db.set_trace_callback(statements.append)
    batch = [f"m\x1fid-{i}" for i in range(1_000, 1_950)]
    index.prefetch(batch)
    assert len(statements) == 2  # 950 ids: two chunks of at most 900
    statements.clear()
    got = {k: index.get(k) for k in batch}
    assert statements == []  # found or known absent: no query per id
    assert got == {
        k: (b"d%d" % int(k.rsplit("-", 1)[1]) if int(k.rsplit("-", 1)[1]) % 2 == 0 else None)
        for k in batch
    }


def test_an_id_absent_at_prefetch_is_found_once_set_flushed_and_evicted(tmp_path: Path) -> None:
    # The absent set is a snapshot of the file: an id archived since must never read as new
    # again, even when the cache has let it go.
    index = EventIndex(tmp_path / "p.ids", cache_size=2)
    index.prefetch(["m\x1fa", "m\x1fb"])
    assert index.get("m\x1fa") is None
    index.set("m\x1fa", b"digest-a")
    assert index.get("m\x1fa") == b"digest-a"
    index.flush()
    for i in range(5):  # evicts a from the cache
        index.set(f"m\x1fother-{i}", b"x")
    assert "m\x1fa" not in index.cache
    assert index.get("m\x1fa") == b"digest-a"
    index.prefetch(["m\x1fb"])
    index.delete("m\x1fb")
    assert index.get("m\x1fb") is None
    index.clear()
    assert index.absent == set()


def test_a_changelog_of_another_format_is_refused_with_the_way_out() -> None:
    state = PartitionState(0)
    with pytest.raises(StateFormatError, match="auditwatch seed --from-archive"):
        state.apply(FORMAT_KEY, b"1")


def test_a_snapshot_gives_back_the_state_and_its_changelog_offset(tmp_path: Path) -> None:
    snapshots = Snapshots(tmp_path / "group", "g.state")
    assert snapshots.read(4) is None
    state = PartitionState(4)
    state.set(MACHINE, "m-1", b"s")
    snapshots.write(state, 1234)
    assert snapshots.read(4) == (1234, {MACHINE: {"m-1": b"s"}})
    # Unreadable, or of another format: not used (the changelog is read whole instead).
    snapshots.path(4).write_bytes(b"garbage")
    assert snapshots.read(4) is None
    snapshots.path(4).write_bytes(pickle.dumps((b"1", 5, {})))
    assert snapshots.read(4) is None


def _apply_all(table: PeerTable, records: list[tuple[bytes, bytes | None]], loading: bool) -> None:
    for key, value in records:
        table.apply(key, value, loading)


def test_peer_records_of_two_writers_merge_without_losing_an_update() -> None:
    a, b = PeerTable("a"), PeerTable("b")
    # Each writer saw members of the group join: a two, b one.
    a.set(META, "orders-api", orjson.dumps([1_000, 2, 5_000]))
    b.set(META, "orders-api", orjson.dumps([800, 1, 9_000]))
    a.set(RESOURCE, "orders-api\x1fpostgres://db", b"100")
    b.set(RESOURCE, "orders-api\x1fpostgres://db", b"300")
    b.set(OPERATION, "orders-api\x1fDELETE", b"50")
    a.set(WINDOWS, "orders-api", orjson.dumps([0, 7, 1]))
    b.set(WINDOWS, "orders-api", orjson.dumps([4, 2, 1]))
    a.set(COMBINED, "orders-api", b"a-trees")
    b.set(COMBINED, "orders-api", b"b-trees")
    # Schedules of two windows a day: a saw window 0 active on day 10 (pace 3), b window 1 on
    # day 11 and window 0 on day 11 (pace 1).
    a.set(SCHEDULE, "orders-api", orjson.dumps(schedule.note([], 2, 10, 0, 3)))
    b.set(
        SCHEDULE, "orders-api", orjson.dumps(schedule.note(schedule.note([], 2, 11, 1), 2, 11, 0))
    )
    from_a, from_b = list(a.drain()), list(b.drain())
    _apply_all(a, from_b, loading=False)
    _apply_all(b, from_a, loading=False)
    for table in (a, b):
        assert orjson.loads(table.get(META, "orders-api") or b"") == [800, 3, 9_000]
        assert table.get(RESOURCE, "orders-api\x1fpostgres://db") == b"300"
        assert table.get(OPERATION, "orders-api\x1fDELETE") == b"50"
        assert orjson.loads(table.get(WINDOWS, "orders-api") or b"") == [4, 7, 1]
        sched = orjson.loads(table.get(SCHEDULE, "orders-api") or b"")
        assert schedule.earlier(sched, 2, 12, 0) == 0b11  # days 11 (b) and 10 (a)
        assert schedule.earlier(sched, 2, 12, 1) == 0b1
        assert schedule.pace(sched, 2, [0]) == 3
    # The combined model's trees have one writer each.
    assert a.get(COMBINED, "orders-api") == b"a-trees"
    assert b.get(COMBINED, "orders-api") == b"b-trees"

    # A new member joins on a: it publishes its own count only, so b's member is kept.
    merged = orjson.loads(a.get(META, "orders-api") or b"")
    a.set(META, "orders-api", orjson.dumps([merged[0], merged[1] + 1, 9_500]))
    (key, value), *_ = [r for r in a.drain() if r[0].startswith(META)]
    assert key == META + b"\x00a\x00orders-api"
    assert orjson.loads(value or b"")[1] == 3
    b.apply(key, value, loading=False)
    assert orjson.loads(b.get(META, "orders-api") or b"") == [800, 4, 9_500]


def test_a_restarted_writer_takes_its_own_records_back_only_while_loading() -> None:
    before = PeerTable("a")
    before.set(COMBINED, "g", b"trees")
    before.set(RESOURCE, "g\x1fr", b"10")
    before.note_clock(2, 123)
    records = list(before.drain())
    late = PeerTable("a")
    _apply_all(late, records, loading=False)
    assert late.get(COMBINED, "g") is None
    again = PeerTable("a")
    _apply_all(again, records, loading=True)
    assert again.get(COMBINED, "g") == b"trees"
    assert again.get(RESOURCE, "g\x1fr") == b"10"
    assert again.clocks == {"2": 123} and again.own_clocks == {"2": 123}
    assert list(again.drain()) == []


def test_the_task_store_keeps_peer_kinds_in_the_shared_table() -> None:
    peers = PeerTable("w")
    one, two = SplitStore(PartitionState(1), peers), SplitStore(PartitionState(2), peers)
    one.set(RESOURCE, "g\x1fr", b"5")
    one.set(MACHINE, "m-1", b"s")
    assert two.get(RESOURCE, "g\x1fr") == b"5"
    assert two.get(MACHINE, "m-1") is None and one.get(MACHINE, "m-1") == b"s"
    one.delete(MACHINE, "m-1")
    assert one.get(MACHINE, "m-1") is None


@pytest.mark.parametrize("machine", ["orders-api-1", "", "ä-machine", "x" * 301])
def test_routing_follows_the_producers_partitioner(machine: str) -> None:
    assert Router("murmur2", 8).partition(machine) == murmur2_partition(machine.encode(), 8)
    crc = zlib.crc32(machine.encode()) % 12
    assert Router("consistent_random", 12).partition(machine) == crc


def test_a_forwarded_record_names_where_it_was_first_read() -> None:
    origin = Origin("audit.events", 5, 1234)
    assert forwarded_origin([("other", b"x"), origin_header(origin)]) == origin
    assert forwarded_origin(None) is None and forwarded_origin([("other", b"x")]) is None
