"""`auditwatch seed`: build baselines from history so a new deployment is not blind in warm-up.

History (event files, or the archive topic over an event-time range) is validated, sorted by
event time and sent to the detection stage's topic marked as seed records: the detection
stage learns from them exactly as from live events, through the same state stores and
changelogs, but raises no alerts. Nothing is archived again. Seed before live traffic
reaches the same machines: baselines learn in event-time order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.codec import SEED_SOURCE, encode_detect
from schemas.event import AuditEvent, event_from_mapping
from streams.config import Config
from streams.processor import MemoryStore, Origin, Processor

SEED_HEADER = "auditwatch-seed"


@dataclass
class SeedStats:
    read: int = 0
    sent: int = 0
    rejected: int = 0


def events_from_files(
    cfg: Config, paths: list[str], fmt: str, csv_map: dict[str, str], stats: SeedStats
) -> list[AuditEvent]:
    from schemas.codec import BundledSchemas
    from streams.readers import read_records

    processor = Processor(cfg, BundledSchemas())
    store = MemoryStore()
    events: list[AuditEvent] = []
    for rec in read_records(paths, fmt, csv_map):
        stats.read += 1
        _, event = processor.ingest(rec.value, None, Origin(rec.path, None, rec.line), store)
        if event is None:
            stats.rejected += 1
        else:
            events.append(event)
    return events


def events_from_archive(
    cfg: Config, since_ms: int | None, until_ms: int | None, stats: SeedStats
) -> list[AuditEvent]:
    from schemas.codec import decode_wire
    from streams.reading import read_topic

    seen: set[str] = set()
    events: list[AuditEvent] = []
    for msg in read_topic(cfg, cfg.topics.archive):
        stats.read += 1
        record = decode_wire(msg.value(), "archive_record")["event"]
        # Readers dedupe the archive by event_id: the active segment is never compacted.
        if record["event_id"] in seen:
            continue
        seen.add(record["event_id"])
        ts = record["timestamp"]
        if (since_ms is not None and ts < since_ms) or (until_ms is not None and ts >= until_ms):
            continue
        events.append(event_from_mapping(record, cfg.input.limits(), now_ms=2**62))
    return events


def send_seed(cfg: Config, events: list[AuditEvent], stats: SeedStats) -> None:
    """Sort by event time and produce to the detection topic, keyed by peer group."""
    from detectors.core import DetectionCore
    from streams.producer import make_producer

    core = DetectionCore(cfg.detectors.build())
    events.sort(key=lambda e: e.ts_us)
    producer = make_producer(cfg)
    headers = [(SEED_HEADER, b"1")]
    for i, event in enumerate(_progress(events)):
        key = core.group_of(event).encode()
        while True:
            try:
                producer.produce(
                    cfg.topics.detect,
                    key=key,
                    value=encode_detect(event, SEED_SOURCE),
                    headers=headers,
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


def is_seed(headers: object) -> bool:
    """Whether a detection-topic record carries the seed marker."""
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == SEED_HEADER for k, _ in items)  # type: ignore[attr-defined]
