"""`auditwatch replay`: the same processor and detection core over event files, without Kafka.

Events are validated and deduplicated in file order (as a topic would deliver them), then run
through detection in event-time order. Pages (opened and escalated alerts of severity medium
or above) go to `--alerts-out` as JSON lines, in the alerts topic's JSON form.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

import orjson

from schemas.codec import BundledSchemas, decode_wire
from schemas.event import AuditEvent
from streams.config import Config
from streams.partitioning import PartitionedDetection
from streams.processor import MemoryStore, Processor
from streams.readers import read_records


@dataclass
class ReplayResult:
    records: int = 0
    events: int = 0
    pages: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0


def replay(
    cfg: Config,
    paths: list[str],
    alerts_out: IO[bytes],
    *,
    fmt: str = "jsonl",
    csv_map: dict[str, str] | None = None,
    deadletter_out: IO[bytes] | None = None,
    progress: bool = False,
) -> ReplayResult:
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
    # One store per detect partition, as the pipeline keeps them (see streams.partitioning).
    detection = PartitionedDetection(
        processor, cfg.topics.partitions, working_copy=cfg.kafka.working_copy_machines
    )
    for i, event in enumerate(events, 1):
        for out in detection.detect(event, i):
            assert out.alert is not None
            result.alerts[out.alert.status] += 1
            if out.alert.is_page:
                result.pages += 1
                alerts_out.write(out.value + b"\n")
        if progress and i % 100_000 == 0:
            print(f"  detected over {i:,}/{len(events):,} events", file=sys.stderr)
    detection.flush()
    return result
