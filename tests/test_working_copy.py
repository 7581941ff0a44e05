"""The detection core's working copy: machine states kept decoded between checkpoints must
page, and leave in the stores, exactly what writing every event's state through does."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from detectors.base import Finding, Seen
from detectors.core import MACHINE, DetectionCore, DetectorConfig, WorkingCopy
from detectors.operations import NewOperation
from schemas.codec import BundledSchemas
from schemas.event import AuditEvent, Limits, event_from_mapping
from streams.ops.config import Config
from streams.processor import MemoryStore, Processor
from streams.tools.partitioning import PartitionedDetection
from streams.tools.synthetic import SyntheticConfig, SyntheticTraffic
from tests.traffic import BASE_MS, steady

TRAFFIC = SyntheticConfig(
    seed=5,
    start_ms=BASE_MS,
    duration_s=30 * 3600,
    machines=30,
    rate_scale=0.3,
    warmup_s=24 * 3600,
    anomalies={"fan_out": 1, "rate_burst": 1, "failure_spike": 1, "silence": 1},
    benign={"pod_rotation": 1},
)


def events() -> list[AuditEvent]:
    now = TRAFFIC.end_ms + 3_600_000
    out = [event_from_mapping(d, Limits(), now) for d in SyntheticTraffic(TRAFFIC)]
    out.sort(key=lambda e: e.ts_us)
    return out


def run(
    evs: list[AuditEvent], working_copy: int, flush_every: int = 97
) -> tuple[list[bytes], PartitionedDetection]:
    processor = Processor(Config(), BundledSchemas())
    detection = PartitionedDetection(
        processor, 8, working_copy=working_copy, flush_every=flush_every
    )
    alerts = [out.value for i, e in enumerate(evs) for out in detection.detect(e, i)]
    detection.flush()
    return alerts, detection


# A small bound and frequent flushes: states are dropped and read back from the stores often,
# as on a worker with more machines than its bound. No flush until the end: the stores hold
# nothing the working copy changed, so any read that bypasses it shows.
@pytest.fixture(scope="module")
def written_through() -> tuple[list[AuditEvent], list[bytes], PartitionedDetection]:
    """The events and the reference run (every state written through), which do not depend
    on the flush interval: made once for both of them."""
    evs = events()
    through, plain = run(evs, working_copy=0)
    return evs, through, plain


@pytest.mark.parametrize("flush_every", [97, 10**9])
def test_working_copy_pages_and_stores_exactly_as_writing_through(
    flush_every: int, written_through: tuple[list[AuditEvent], list[bytes], PartitionedDetection]
) -> None:
    evs, through, plain = written_through
    kept, live = run(evs, working_copy=5, flush_every=flush_every)
    assert kept == through
    detectors = Counter(a.split(b'"detector":"')[1].split(b'"')[0] for a in through)
    # The sweep's and the resolver's reads of other machines' states went through it too.
    assert detectors[b"silence"] >= 1 and len(detectors) >= 4
    assert live.local.keys() == plain.local.keys()
    for p, store in plain.local.items():
        assert live.local[p].data == store.data, p
    # The group knowledge too, the combined models kept live until the flush included.
    assert live.shared.data == plain.shared.data
    working = live.processor.core.working
    assert working is not None and not working.dirty_partitions()
    assert len(working.states) <= 5


def machine_events(n: int, start_ms: int = BASE_MS) -> list[AuditEvent]:
    return [
        event_from_mapping(d, Limits(), start_ms + 10 * 86_400_000)
        for d in steady("orders-api-1", ["postgres://db/public.orders"], start_ms, n)
    ]


def event(i: int, machine: str) -> AuditEvent:
    return AuditEvent(
        event_id=f"e{i}",
        ts_us=(BASE_MS + i * 1000) * 1000,
        machine_id=machine,
        resource="redis://cache/k",
        operation="GET",
        outcome="SUCCESS",
    )


def ten_events_seen(n: int) -> tuple[DetectionCore, MemoryStore, list[AuditEvent]]:
    """A core with a working copy that has seen the first 10 of n events of one machine."""
    core = DetectionCore()
    core.keep_working_copy(100)
    store = MemoryStore()
    evs = machine_events(n)
    for e in evs[:10]:
        core.observe(e, store, 0)
    return core, store, evs


def test_a_dropped_partition_keeps_only_what_was_flushed() -> None:
    core, store, evs = ten_events_seen(20)
    # Nothing reaches the store before a flush: a checkpoint writes it.
    assert store.get(MACHINE, "orders-api-1") is None
    assert core.flush({0: store}.__getitem__) == 1
    flushed = store.get(MACHINE, "orders-api-1")
    assert flushed is not None
    for e in evs[10:]:
        core.observe(e, store, 0)
    # The checkpoint these belong to is abandoned (a lost partition): they must not be
    # written later, and the next event starts from the committed state.
    assert core.working is not None
    core.working.drop(0)
    assert core.flush({0: store}.__getitem__) == 0
    assert store.get(MACHINE, "orders-api-1") == flushed
    core.observe(evs[10], store, 0)
    assert core.working.states[(0, "orders-api-1")].n == 11


def test_evicted_machines_leave_the_store_and_the_working_copy() -> None:
    core = DetectionCore(dataclasses.replace(DetectorConfig(), max_machines=2))
    core.keep_working_copy(100)
    store = MemoryStore()
    for i, machine in enumerate(["a-1", "b-1", "c-1"]):
        core.observe(event(i, machine), store, 0)
    core.flush({0: store}.__getitem__)
    assert set(store.machines) == {"b-1", "c-1"}
    assert core.working is not None
    assert {m for _, m in core.working.states} == {"b-1", "c-1"}


def test_the_bound_applies_after_each_flush() -> None:
    working = WorkingCopy(3)
    store = MemoryStore()
    core = DetectionCore()
    core.working = working
    for i in range(10):
        core.observe(event(i, f"m-{i}"), store, i % 2)
    # Between flushes it holds what changed: nothing may be dropped before it is written.
    assert len(working.states) == 10
    assert core.flush({0: store, 1: store}.__getitem__) == 10
    assert len(store.machines) == 10
    # The most recently used stay.
    assert [m for _, m in working.states] == ["m-7", "m-8", "m-9"]
    with pytest.raises(ValueError, match="max_machines"):
        WorkingCopy(-1)


def test_a_failed_event_leaves_no_half_applied_state() -> None:
    core, store, evs = ten_events_seen(30)
    core.flush({0: store}.__getitem__)
    committed = store.get(MACHINE, "orders-api-1")
    for e in evs[10:20]:
        core.observe(e, store, 0)

    class Broken(NewOperation):
        def score(self, seen: Seen) -> Finding | None:
            raise RuntimeError("detector bug")

    # After the rate model has learned the event: the state object is half changed.
    detectors = core.detectors
    core.wire([Broken() if isinstance(d, NewOperation) else d for d in detectors])
    with pytest.raises(RuntimeError, match="detector bug"):
        core.observe(evs[20], store, 0)
    core.wire(detectors)
    assert core.flush({0: store}.__getitem__) == 0
    assert store.get(MACHINE, "orders-api-1") == committed
    core.observe(evs[21], store, 0)
    assert core.working is not None
    assert core.working.states[(0, "orders-api-1")].n == 11
