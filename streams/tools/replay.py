"""`auditwatch replay`: the same processor and detection core over event files, without Kafka.

Events are validated and deduplicated in file order (as a topic would deliver them), then run
through detection in event-time order. Pages (opened and escalated alerts of severity medium
or above) go to `--alerts-out` as JSON lines, in the alerts topic's JSON form.

Detection state is per input partition (streams.tools.partitioning), with peer-group knowledge
shared by all of them, as in one worker. The partitions can be detected in separate
processes (`workers`): each takes whole partitions and runs its events in the same event-time
order, like a worker of its own (its peer-group knowledge is its partitions'), and the pages
are merged back by event.
"""

from __future__ import annotations

import heapq
import multiprocessing
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

import orjson

from schemas.codec import BundledSchemas, decode_wire
from schemas.event import AuditEvent, format_rfc3339_ms
from streams.ops.collector import tuned_for_detection
from streams.ops.config import Config
from streams.processor import MemoryStore, Processor
from streams.tools.partitioning import PartitionedDetection
from streams.tools.readers import read_records


@dataclass
class ReplayResult:
    records: int = 0
    events: int = 0
    pages: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    # Set when no page was written and the capture is shorter than the shortest warm-up any
    # machine has: every machine was still learning, none could have been judged.
    warmup_s: int | None = None

    @property
    def learning_until_ms(self) -> int | None:
        """The event time from which the first machines would be judged, when the capture
        ended before it (see `warmup_s`); None otherwise."""
        if self.warmup_s is None or self.first_event_ms is None:
            return None
        return self.first_event_ms + self.warmup_s * 1000

    def still_learning(self) -> str | None:
        """Why a replay wrote no page, when the capture was too short for any: in words."""
        until = self.learning_until_ms
        if until is None or self.warmup_s is None or self.last_event_ms is None:
            return None
        assert self.first_event_ms is not None
        when = format_rfc3339_ms(until)[:19].replace("T", " ")
        span = _duration(self.last_event_ms - self.first_event_ms)
        return (
            f"every machine is still learning until {when} UTC at the earliest: the capture "
            f"spans {span} of event time, the warm-up (detectors.warmup_s) is "
            f"{_duration(self.warmup_s * 1000)}; replay a longer capture to have machines judged"
        )


def _duration(ms: int) -> str:
    s = ms / 1000
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f}".removesuffix(".0") + " h"


def replay(
    cfg: Config,
    paths: list[str],
    alerts_out: IO[bytes],
    *,
    fmt: str = "jsonl",
    csv_map: dict[str, str] | None = None,
    deadletter_out: IO[bytes] | None = None,
    progress: bool = False,
    workers: int = 1,
) -> ReplayResult:
    """`workers`: detect in that many processes (at most one per detect partition; below
    20,000 events, one)."""
    processor = Processor(cfg, BundledSchemas())
    store = MemoryStore()
    result = ReplayResult()
    events: list[AuditEvent] = []
    for rec in read_records(paths, fmt, csv_map):
        result.records += 1
        outputs, event = processor.ingest_record(rec, store)
        for out in outputs:
            if out.kind == "deadletter":
                dl = decode_wire(out.value, "dead_letter")
                result.dead_letters[dl["reason"]] += 1
                if deadletter_out is not None:
                    deadletter_out.write(
                        orjson.dumps(
                            {
                                "reason": dl["reason"],
                                "message": dl["message"],
                                "file": rec.path,
                                "line": rec.line,
                                "event_id": dl["event_id"],
                                "value": rec.value.decode("utf-8", "replace")[:2000],
                            }
                        )
                        + b"\n"
                    )
        if event is not None:
            events.append(event)
        if progress and result.records % 100_000 == 0:
            print(f"  read {result.records:,} records", file=sys.stderr)
    result.duplicates = processor.metrics["duplicates"]
    # Stable sort: events with equal timestamps keep file order, as a topic would keep them.
    events.sort(key=lambda e: e.ts_us)
    result.events = len(events)
    if events:
        # The detection core's clock starts at the first event it sees; each process sees
        # only its partitions', so every one starts at the first event of all.
        processor.core.watching_since_ms = events[0].timestamp_ms
    # The events stay for the whole run (and shared with forked workers): out of every
    # collection, which then runs as a worker's does.
    with tuned_for_detection():
        shares = _shares(processor, cfg, events, workers)
        _FORKED.append((processor, cfg, events, shares, progress))
        try:
            if len(shares) == 1:
                parts = [_detect_share(0)]
            else:
                # SIGTERM would end this process and leave the workers running: stop them too.
                on_term = signal.signal(signal.SIGTERM, _terminated)
                try:
                    with multiprocessing.get_context("fork").Pool(len(shares)) as pool:
                        parts = pool.map(_detect_share, range(len(shares)))
                finally:
                    signal.signal(signal.SIGTERM, on_term)
        finally:
            _FORKED.clear()
    for pages, statuses in parts:
        result.alerts.update(statuses)
        result.pages += len(pages)
    for _i, value in heapq.merge(*(pages for pages, _ in parts), key=lambda page: page[0]):
        alerts_out.write(value + b"\n")
    if events:
        result.first_event_ms = events[0].timestamp_ms
        result.last_event_ms = events[-1].timestamp_ms
        # The least event time any machine needs from the capture's first event before it is
        # judged, by itself or by its peer group: `warmup_s`, of the base settings or of an
        # override.
        config = processor.core.config
        warmup_s = min(
            [config.warmup_s]
            + [int(v) for o in config.overrides for k, v in o.settings if k == "warmup_s"]
        )
        if not result.pages and result.last_event_ms - result.first_event_ms < warmup_s * 1000:
            result.warmup_s = warmup_s
    return result


# What the detection workers inherit from replay() across fork: (processor, config, events,
# each worker's event indexes, progress).
_FORKED: list[tuple[Processor, Config, list[AuditEvent], list[list[int]], bool]] = []
# Fewer events than this are not worth a process each.
_PARALLEL_FROM = 20_000


def _terminated(signum: int, _frame: object) -> None:
    # Leaving the pool's `with` terminates its workers.
    raise SystemExit(128 + signum)


def _shares(
    processor: Processor, cfg: Config, events: list[AuditEvent], workers: int
) -> list[list[int]]:
    """Event indexes per worker: whole detect partitions each, the busiest partitions first to
    the least loaded worker."""
    workers = min(workers, cfg.topics.partitions)
    if workers <= 1 or len(events) < _PARALLEL_FROM:
        return [list(range(len(events)))]
    split = PartitionedDetection(processor, cfg.topics.partitions)
    by_partition: dict[int, list[int]] = {}
    for i, event in enumerate(events):
        by_partition.setdefault(split.partition_of(event), []).append(i)
    loads = [0] * workers
    owner: dict[int, int] = {}
    for p, idx in sorted(by_partition.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        w = loads.index(min(loads))
        owner[p] = w
        loads[w] += len(idx)
    shares: list[list[int]] = [[] for _ in range(workers)]
    for p, idx in by_partition.items():
        shares[owner[p]].extend(idx)
    for share in shares:
        share.sort()
    return [share for share in shares if share]


def _detect_share(w: int) -> tuple[list[tuple[int, bytes]], Counter[str]]:
    """Detection over worker `w`'s events, in event-time order: its pages (with the index of
    the event that raised them, for the merge) and its alert states by status."""
    processor, cfg, events, shares, progress = _FORKED[-1]
    share = shares[w]
    # One store per detect partition, as the pipeline keeps them (see streams.tools.partitioning).
    detection = PartitionedDetection(
        processor, cfg.topics.partitions, working_copy=cfg.kafka.working_copy_machines
    )
    pages: list[tuple[int, bytes]] = []
    statuses: Counter[str] = Counter()
    who = f"worker {w + 1}/{len(shares)}: " if len(shares) > 1 else ""
    split = len(shares) > 1
    done = -1
    for n, i in enumerate(share, 1):
        if split:
            # The other processes' events move the silence clocks as the other workers'
            # published clocks would.
            for j in range(done + 1, i):
                for out in detection.advance(events[j]):
                    assert out.alert is not None
                    statuses[out.alert.status] += 1
                    if out.alert.is_page:
                        pages.append((j, out.value))
            done = i
        for out in detection.detect(events[i], i + 1):
            assert out.alert is not None
            statuses[out.alert.status] += 1
            if out.alert.is_page:
                pages.append((i, out.value))
        if progress and n % 100_000 == 0:
            print(f"  {who}detected over {n:,}/{len(share):,} events", file=sys.stderr)
    detection.flush()
    return pages, statuses
