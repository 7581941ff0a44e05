"""`auditwatch seed`: build baselines from history so a new deployment is not blind in warm-up.

History (event files, or the archive topic over an event-time range) is validated, sorted by
event time and sent to the repartition topic, each event to its machine's partition, marked
as seed records: the worker learns from them exactly as from live events, through the same
state and changelogs, but raises no alerts. Nothing is archived again. Seed before live traffic
reaches the same machines: baselines learn in event-time order.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from schemas.codec import encode_event_avro
from schemas.event import AuditEvent, event_from_mapping
from streams.ops.config import Config
from streams.processor import MemoryStore, Processor
from streams.tools.reading import read_range, topic_metadata


@dataclass
class SeedStats:
    read: int = 0
    sent: int = 0
    rejected: int = 0
    in_range: int = 0  # archive records read with event time in the range, duplicates too
    not_read: int = 0  # archive records outside the time range's window, never fetched


def events_from_files(
    cfg: Config, paths: list[str], fmt: str, csv_map: dict[str, str], stats: SeedStats
) -> list[AuditEvent]:
    from schemas.codec import BundledSchemas
    from streams.tools.readers import read_records

    processor = Processor(cfg, BundledSchemas())
    store = MemoryStore()
    events: list[AuditEvent] = []
    for rec in read_records(paths, fmt, csv_map):
        stats.read += 1
        _, event = processor.ingest_record(rec, store)
        if event is None:
            stats.rejected += 1
        else:
            events.append(event)
    return events


# Archive records carry processing time as their Kafka timestamp (the producer sets it), which
# comes after the event's own time, except that an event may claim a time up to
# input.max_future_s ahead of the clock (later ones are dead-lettered). So every event at or
# after `since` was archived at or after since - max_future_s, and seeking there loses none;
# this extra allowance covers clock skew between workers, and, at the other end, events
# archived a while after their event time (consumer lag).
ARCHIVE_SKEW_MS = 3_600_000
PROGRESS_EVERY = 2_000  # records between progress updates


def archive_slack_ms(cfg: Config) -> int:
    """Default allowance between event time and archive (Kafka) time: max_future_s + 1 h."""
    return cfg.input.max_future_s * 1000 + ARCHIVE_SKEW_MS


def events_from_archive(
    cfg: Config,
    since_ms: int | None,
    until_ms: int | None,
    stats: SeedStats,
    *,
    slack_ms: int | None = None,
    progress: IO[str] | None = sys.stderr,
    timeout: float = 30.0,
) -> list[AuditEvent]:
    """The archive's events with event time in [since, until), deduplicated by event_id.

    Each partition is read from the first record archived at since - slack (Kafka's time
    index, not a scan from offset 0) and stops at the first record archived after
    until + slack; an event archived later than that after its event time (a long backlog, a
    backfill of old logs) is left out unless `slack_ms` is raised. `stats.not_read` counts
    the records skipped at both ends. Progress goes to `progress` when it is a terminal
    (rich's bar); None silences it."""
    from schemas.codec import decode_wire

    slack = archive_slack_ms(cfg) if slack_ms is None else slack_ms
    if slack < 0:
        raise ValueError(f"the archive slack must be 0 or more, not {slack} ms")
    bar = _ArchiveProgress(progress)
    done = 0  # records read or passed over since the seek: the progress bar's count

    def started(skipped: int, total: int) -> None:
        stats.not_read += skipped
        bar.begin(total)

    def stopped_early(left: int) -> None:
        # Archived after until + slack: that partition has nothing more of the range.
        nonlocal done
        stats.not_read += left
        done += left
        bar.advance(done)

    try:
        seen: set[str] = set()
        found_events: list[tuple[int, str, int, int, AuditEvent]] = []
        for msg in read_range(
            cfg,
            cfg.topics.archive,
            from_ms=None if since_ms is None else since_ms - slack,
            stop_after_ms=None if until_ms is None else until_ms + slack,
            timeout=timeout,
            group_prefix="auditwatch-archive-reader-",
            on_start=started,
            on_stopped_early=stopped_early,
        ):
            stats.read += 1
            done += 1
            if done % PROGRESS_EVERY == 0:
                bar.advance(done)
            archived = decode_wire(msg.value(), "archive_record")
            record = archived["event"]
            ts = record["timestamp"]
            if (since_ms is not None and ts < since_ms) or (
                until_ms is not None and ts >= until_ms
            ):
                continue
            stats.in_range += 1
            # Readers dedupe the archive by event_id: the active segment is never compacted.
            # Only ids within the range are kept, so memory follows the range, not the archive.
            if record["event_id"] in seen:
                continue
            seen.add(record["event_id"])
            event = event_from_mapping(record, cfg.input.limits(), now_ms=2**62)
            origin = (
                archived["original_topic"] or "",
                _or(archived["original_partition"]),
                _or(archived["original_offset"]),
            )
            found_events.append((event.ts_us, *origin, event))
        # Event-time order; events of the same time in the order they arrived (one machine's
        # events share an input partition), as a replay of the source would order them: the
        # archive spreads them over partitions by event_id, which loses that order.
        found_events.sort(key=lambda f: f[:4])
        return [f[4] for f in found_events]
    finally:
        bar.end(done)


def _or(value: int | None) -> int:
    return -1 if value is None else value


class _ArchiveProgress:
    """rich's progress bar over the records to read, on a terminal only."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.bar: Any = None
        self.offset = 0

    def begin(self, total: int) -> None:
        if self.stream is None:
            return
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(file=self.stream), transient=False)
        self.bar.start()
        self.task = self.bar.add_task("reading the archive", total=total)

    def advance(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def end(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            self.bar.stop()
            self.bar = None


def send_seed(cfg: Config, events: list[AuditEvent], stats: SeedStats) -> None:
    """Sort by event time and produce to the repartition topic, each event to the partition
    of its machine, marked as seed records."""
    from streams.runtime.routing import SEED_HEADER, Router
    from streams.tools.producer import make_producer

    events.sort(key=lambda e: e.ts_us)
    producer = make_producer(cfg)
    meta = topic_metadata(producer, cfg.topics.detect, time.monotonic() + 30)
    router = Router(cfg.kafka.partitioner, len(meta.partitions))
    headers = [(SEED_HEADER, b"1")]
    for i, event in enumerate(_progress(events)):
        key = event.machine_id.encode()
        value = encode_event_avro(event.to_avro())
        partition = router.partition(event.machine_id)
        while True:
            try:
                producer.produce(
                    cfg.topics.detect, key=key, value=value, partition=partition, headers=headers
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
        stats.sent += 1
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} seed records were not delivered")


def _progress(events: list[AuditEvent]) -> Iterator[AuditEvent]:
    step = max(len(events) // 10, 1)
    for i, e in enumerate(events):
        if i and i % step == 0:
            print(f"  seeded {i:,}/{len(events):,} events", file=sys.stderr)
        yield e
