"""The detection core's cost per event, in process: no Kafka, no decode, no dedupe.

Feeds the bench dataset's events (already validated into `AuditEvent`s) through the path
replay and a worker use for detection (`Processor.detect` per event, one store per input
partition, the working copy of machine states, the silence punctuation), and reports
microseconds per event of detection. Two shapes of traffic:

- `sparse`: the dataset as it is (about 10,000 machines, most sending a few events an hour);
- `dense`: the same events onto a few machines (`--dense-machines`), many events each.

Times are the process's CPU time (a shared box's waits for a core are not the core's cost).

Each shape is run `--repeats` times on fresh state (the process's lru caches cleared too);
the fastest run counts (the others are load on a shared box). It also writes a digest of
every alert state and of the final machine states, so two versions of the code can be
compared for identical behaviour: run it once with PYTHONPATH pointing at each checkout and
compare the digests and the times in the same sitting, e.g.

    nice -n 19 env PYTHONPATH=/work/main python bench/core_speed.py --out /tmp/a.json
    nice -n 19 env PYTHONPATH=$PWD python bench/core_speed.py --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from schemas.codec import BundledSchemas
from schemas.event import AuditEvent, Limits, event_from_mapping
from streams.ops.config import Config
from streams.processor import Origin, Processor
from streams.tools.partitioning import PartitionedDetection

DATASET = Path("/work/main/.cache/bench/dataset-2e6137cf831acdd6/events.jsonl")


def load_events(path: Path, limit: int) -> list[AuditEvent]:
    limits = Limits()
    out: list[AuditEvent] = []
    with path.open("rb") as f:
        for line in f:
            if len(out) >= limit:
                break
            out.append(event_from_mapping(orjson.loads(line), limits, 2**62))
    # Replay detects in event-time order (a stable sort keeps file order on ties).
    out.sort(key=lambda e: e.ts_us)
    return out


def densify(events: list[AuditEvent], machines: int) -> list[AuditEvent]:
    """The same events onto `machines` machines of two peer groups."""
    return [
        replace(e, machine_id=f"dense-{'ab'[i % 2]}-{i % machines}") for i, e in enumerate(events)
    ]


def run_once(events: list[AuditEvent], batch: int, commit_every: int) -> tuple[float, str]:
    """Detection over `events` as a worker runs it: each event through `Processor.detect` in
    its machine's partition, every partition punctuated (silence clocks) after each `batch`
    events, the working copy flushed into the stores every `commit_every` events."""
    cfg = Config()
    processor = Processor(cfg, BundledSchemas())
    processor.core.watching_since_ms = events[0].timestamp_ms
    detection = PartitionedDetection(
        processor, cfg.topics.partitions, working_copy=cfg.kafka.working_copy_machines
    )
    # Where each event goes, worked out before the clock starts (routing is not detection).
    # The partition's clock name and the event time too: the runtime's bookkeeping, not the
    # detection core's.
    routed = []
    for event in events:
        p = detection.partition_of(event)
        routed.append(
            (event, p, detection.store(p), Origin("bench", p, 0), str(p), event.timestamp_ms)
        )
    stores = detection.stores
    clocks: dict[str, int] = {}
    # Every repeat starts as a fresh process would: the detectors' module-level caches (the
    # resource normalisation's above all) would otherwise hold every resource of the events
    # from the previous repeat, which a live stream of new ids never repeats.
    for obj in gc.get_objects():
        if isinstance(obj, functools._lru_cache_wrapper):
            obj.cache_clear()
    detect, punctuate, flush = processor.detect, processor.punctuate, detection.flush
    outputs: list[Any] = []
    # The collector as the version under test runs it in a worker (before it had settings of
    # its own, the interpreter's defaults).
    try:
        from streams.ops.collector import tuned_for_detection
    except ImportError:
        gc.collect()
        collecting: AbstractContextManager[None] = nullcontext()
    else:
        collecting = tuned_for_detection()
    with collecting:
        t0 = time.process_time()
        for i, (event, p, store, origin, source, ts) in enumerate(routed, 1):
            out = detect(event, store, origin, False, p)
            if out:
                outputs.extend(out)
            if ts > clocks.get(source, -1):
                clocks[source] = ts
            if i % batch == 0:
                for q, s in stores.items():
                    outputs.extend(punctuate(s, q, clocks))
            if i % commit_every == 0:
                flush()
        flush()
        elapsed = time.process_time() - t0
    digest = hashlib.sha256()
    for out in outputs:
        digest.update(out.value)
        digest.update(b"\n")
    # The stores as written at the end (machine states, peer groups, combined models): what
    # was learned must be identical too, not only what paged.
    for kept in [*(detection.local[q] for q in sorted(detection.local)), detection.shared]:
        for kind in sorted(kept.data):
            table = kept.data[kind]
            for key in sorted(table):
                digest.update(kind + b"/" + key.encode() + b"=" + table[key])
    return elapsed, f"{digest.hexdigest()[:16]} ({len(outputs)} alert states)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATASET)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--dense-machines", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000, help="events between punctuations")
    ap.add_argument("--commit-every", type=int, default=10_000, help="events between flushes")
    ap.add_argument("--shapes", default="sparse,dense")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    base = load_events(args.data, args.events)
    # Which checkout's code was measured.
    code = Path(sys.modules[Processor.__module__].__file__ or "").parent.parent
    result: dict[str, Any] = {"events": len(base), "code": str(code)}
    for shape in args.shapes.split(","):
        events = base if shape == "sparse" else densify(base, args.dense_machines)
        times, digests = [], set()
        for _ in range(args.repeats):
            elapsed, digest = run_once(events, args.batch, args.commit_every)
            times.append(elapsed)
            digests.add(digest)
        best = min(times)
        result[shape] = {
            "us_per_event": round(best / len(events) * 1e6, 2),
            "runs_us_per_event": [round(t / len(events) * 1e6, 2) for t in times],
            "digest": sorted(digests),
        }
        print(f"{shape}: {result[shape]}", file=sys.stderr)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
