"""In-process timing of the runtime's per-event work outside detection, with no broker.

`python bench/floor_speed.py [--events N] [--repeats R] [--out FILE]` reads the first N events
of the bench dataset (`bench/perf/dataset.py`: `events.wire` for Avro, `events.jsonl` for
JSON) and drives one `streams.runtime.task.Task` over them as the runtime's loop does (batches
of 1,000: `prepare` each record, `seen_ids`, `finish` each), with detection switched off as in
`bench/floor.py`: decode, validation, the routing check, the dedupe digest and event-id state,
the archive record and the task glue. It also times the stages on their own (decode and
validate; digest; archive encode), and the worker's loop around the task (`loop`:
`Worker.run_once` over the same records from a stub consumer into a stub commit policy: the
per-record bookkeeping, offsets, latency histograms, punctuation and the task), and prints
microseconds of CPU per event (process time: the box is shared), best of R repeats, as JSON.

The processor's clock is fixed, so the output records are a function of the input alone:
`outputs_sha256` hashes every record emitted (the archive records and the dead letters of a
few malformed values added to the input), so two versions of the code can be checked for
byte-identical output over the whole sample as well as timed. Run it as a file, not a module,
so that `PYTHONPATH` picks the code under test (another checkout's, for a before/after):

    PYTHONPATH=/work/main nice -n 19 python bench/floor_speed.py --out /tmp/before.json
    PYTHONPATH=$PWD nice -n 19 python bench/floor_speed.py --out /tmp/after.json

Only what both versions have is imported: the worker, the task, the processor and the codec.
The loop's outputs are checked equal to the task's.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from schemas.codec import BundledSchemas, decode_event, encode_archive, sha256
from streams import processor as processor_module
from streams.ops.config import Config
from streams.ops.metrics import Telemetry
from streams.processor import Processor
from streams.runtime.loop import Worker
from streams.runtime.peers import PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import PartitionState
from streams.runtime.task import Task

DATASET = Path(
    os.environ.get("AUDITWATCH_BENCH_DATASET", "/work/main/.cache/bench/dataset-2e6137cf831acdd6")
)
NOW_MS = 1_800_000_000_000  # after every dataset event, within no future limit's reach
BATCH = 1000
_FRAME = struct.Struct(">HI")
# Malformed values with a dead letter each, so their bytes are in the identity hash too.
MALFORMED = [
    b"",
    b"\x00\x00\x00",
    b"\x07garbage",
    b"{not json",
    b'{"event_id": "x1", "timestamp": "yesterday", "machine_id": "m"}',
    b'{"timestamp": 1767571200000, "machine_id": "m", "resource": "r", "operation": "o",'
    b' "outcome": "MAYBE"}',
    b'{"timestamp": 1767571200000, "machine_id": "m\\u0007", "resource": "r",'
    b' "operation": "o", "outcome": "SUCCESS"}',
    b'{"timestamp": 1767571200000, "resource": "r", "operation": "o", "outcome": "SUCCESS"}',
    b'{"timestamp": 99999999999999999, "machine_id": "m", "resource": "r", "operation": "o",'
    b' "outcome": "SUCCESS"}',
    b'{"timestamp": "2026-01-05T00:00:00+25:00", "machine_id": "m", "resource": "r",'
    b' "operation": "o", "outcome": "SUCCESS"}',
    b'{"timestamp": 1767571200000, "machine_id": "m", "resource": "r", "operation": "o",'
    b' "outcome": "SUCCESS", "attributes": {"a": 1}}',
    b"[1, 2, 3]",
]


class Msg:
    """What a task reads of a consumed record."""

    __slots__ = ("_key", "_offset", "_value")

    def __init__(self, offset: int, key: bytes | None, value: bytes) -> None:
        self._offset, self._key, self._value = offset, key, value

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, NOW_MS


TOPIC = Config().topics.events


def read_avro(n: int) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    with open(DATASET / "events.wire", "rb") as f:
        while len(out) < n:
            head = f.read(_FRAME.size)
            if len(head) < _FRAME.size:
                break
            klen, vlen = _FRAME.unpack(head)
            out.append((f.read(klen), f.read(vlen)))
    return out


def read_json(n: int) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    with open(DATASET / "events.jsonl", "rb") as f:
        for line in f:
            if len(out) >= n:
                break
            value = line.rstrip(b"\n")
            out.append((value[value.index(b'"machine_id":"') + 14 :].split(b'"', 1)[0], value))
    return out


def _no_alerts(self: Any, *_args: Any, **_kwargs: Any) -> list[Any]:
    return []


def new_task(emitted: list[bytes]) -> Task:
    cfg = Config()

    def emit(role: str, key: bytes | None, value: bytes, partition: int, headers: Any) -> None:
        emitted.append(role.encode() + b"\x00" + (key or b"") + b"\x00" + value)

    return Task(
        0,
        PartitionState(0),
        PeerTable("bench"),
        Processor(cfg, BundledSchemas(), clock=lambda: NOW_MS),
        Router("murmur2", 1),
        cfg.topics.detect,
        emit,
        None,
    )


def run_task(records: list[tuple[bytes, bytes]]) -> tuple[float, str]:
    """Seconds for the whole sample through a fresh task, and the hash of its outputs."""
    emitted: list[bytes] = []
    task = new_task(emitted)
    msgs = [Msg(i, k, v) for i, (k, v) in enumerate(records)]
    gc.collect()
    t0 = time.process_time()
    for i in range(0, len(msgs), BATCH):
        items = []
        for msg in msgs[i : i + BATCH]:
            item = task.prepare(msg)
            if item is not None:
                items.append(item)
        task.seen_ids(items)
        for item in items:
            task.finish(item)
    elapsed = time.process_time() - t0
    h = hashlib.sha256()
    for out in emitted:
        h.update(len(out).to_bytes(4, "big") + out)
    return elapsed, h.hexdigest()


class _Consumer:
    """Hands the records out in batches of `BATCH`, whatever the worker's setting, as the
    task alone is driven."""

    def __init__(self, msgs: list[Msg]) -> None:
        self.msgs, self.at = msgs, 0

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        batch = self.msgs[self.at : self.at + BATCH]
        self.at += len(batch)
        return batch


class _Policy:
    """Keeps what the worker produces, in the emit format of `new_task`."""

    def __init__(self, roles: dict[str, str], emitted: list[bytes]) -> None:
        self.roles, self.emitted = roles, emitted

    def produce(self, topic: str, key: bytes | None, value: bytes, *_args: Any) -> None:
        self.emitted.append(self.roles[topic].encode() + b"\x00" + (key or b"") + b"\x00" + value)

    def poll(self) -> None:
        pass


def run_loop(records: list[tuple[bytes, bytes]]) -> tuple[float, str]:
    """Seconds for the sample through `Worker.run_once` (one task, batches of 1,000), and the
    hash of its outputs."""
    cfg = Config()
    emitted: list[bytes] = []
    processor = Processor(cfg, BundledSchemas(), clock=lambda: NOW_MS)
    worker = Worker(cfg, processor, Telemetry(cfg, processor))
    worker.consumer = _Consumer([Msg(i, k, v) for i, (k, v) in enumerate(records)])
    worker.policy = _Policy({t: r for r, t in worker.outputs.items()}, emitted)  # type: ignore[assignment]
    worker.tasks = {
        0: Task(
            0,
            PartitionState(0),
            worker.peers,
            processor,
            Router("murmur2", 1),
            cfg.topics.detect,
            worker._emit,
            worker.telemetry,
        )
    }
    gc.collect()
    t0 = time.process_time()
    while worker.run_once():
        pass
    elapsed = time.process_time() - t0
    h = hashlib.sha256()
    for out in emitted:
        h.update(len(out).to_bytes(4, "big") + out)
    return elapsed, h.hexdigest()


def run_stages(records: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """Seconds for decode+validate, the content digest and the archive encode on their own."""
    limits = Config().input.limits()
    resolver = BundledSchemas()
    values = [v for _, v in records]
    gc.collect()
    t0 = time.process_time()
    events = [
        decode_event(v, fmt="auto", resolver=resolver, limits=limits, now_ms=NOW_MS).event
        for v in values
    ]
    t1 = time.process_time()
    for e in events:
        e.content_digest()
    t2 = time.process_time()
    for off, (e, v) in enumerate(zip(events, values, strict=True)):
        encode_archive(
            e,
            original_format="AVRO",
            original_sha256=sha256(v),
            topic=TOPIC,
            partition=0,
            offset=off,
            archived_at_ms=NOW_MS,
        )
    t3 = time.process_time()
    return {"decode_validate": t1 - t0, "digest": t2 - t1, "archive_encode": t3 - t2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    processor_module.Processor.detect = _no_alerts  # type: ignore[method-assign]
    processor_module.Processor.punctuate = _no_alerts  # type: ignore[method-assign]
    result: dict[str, Any] = {
        "code": str(Path(processor_module.__file__).resolve().parents[1]),
        "events": args.events,
        "repeats": args.repeats,
    }
    for fmt, records in (("avro", read_avro(args.events)), ("json", read_json(args.events))):
        n = len(records)
        task_times, loop_times, hashes = [], [], set()
        stages: dict[str, list[float]] = {}
        sample = records + [(b"m", v) for v in MALFORMED]
        for _ in range(args.repeats):
            elapsed, digest = run_task(sample)
            task_times.append(elapsed)
            hashes.add(digest)
            elapsed, digest = run_loop(sample)
            loop_times.append(elapsed)
            hashes.add(digest)
            for name, sec in run_stages(records).items():
                stages.setdefault(name, []).append(sec)
        assert len(hashes) == 1, "outputs differ between repeats, or the loop's from the task's"
        result[fmt] = {
            "task_us_per_event": round(min(task_times) / n * 1e6, 2),
            "loop_us_per_event": round(min(loop_times) / n * 1e6, 2),
            **{f"{k}_us_per_event": round(min(v) / n * 1e6, 2) for k, v in stages.items()},
            "outputs_sha256": hashes.pop(),
        }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
