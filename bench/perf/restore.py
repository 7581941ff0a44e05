"""Restoring 100,000 machines' state from the changelog: how long until a fresh worker (empty
state directory) is processing again.

**How the changelog is written.** Running 100,000 machines' worth of history through today's
pipeline would take far longer than the benchmark may, so the state is made directly, but by
the real code at both ends:

1. A template: `DetectionCore.observe` over two days of one peer group of five machines that
   share 50 distinct resources (one access every four seconds, in turn), in a `MemoryStore`:
   every record a real machine of that kind has (its machine record with baselines, the group's
   meta, resource, operation and time-of-day keys, the store's first-seen time). Silence watch
   lists and the dedupe index of event ids (stage 1; it grows with events, not machines, about
   50 bytes an event) are not included.
2. 20,000 copies of the group (100,000 machines, ids renamed), one feed message per group,
   keyed by group as the detection stage keys its records, are put on the detection topic; a
   Quix application with the worker's consumer group and the same stateful dataframe on that
   topic writes each record into the partition's store with `set_bytes`, exactly as
   `streams.app` does, so Quix itself produces the changelog in its own format and commits the
   feed's offsets (the worker never sees the feed messages).

**What is timed.** A worker (`auditwatch run`) is started on that consumer group with an empty
state directory; one probe event per detection partition is produced at once: an access by a
restored machine to a resource new to it. Only a restored baseline makes that an alert (an
unknown machine is in warm-up), and Quix processes nothing before recovery ends. The figure is
the time from starting the worker to the last probe's alert; `startup_seconds` is the same
start-to-first-archive time for a worker with nothing to restore, so the difference is the
restore itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.perf.dataset import ROOT
from bench.perf.latency import AlertReader
from bench.perf.measure import CommittedCounter, Worker, produce_records
from bench.perf.phases import PhaseResult, Run, auditwatch_argv
from detectors.core import MACHINE, DetectionCore
from schemas.codec import encode_event_avro
from schemas.event import AuditEvent
from streams.config import Config
from streams.processor import MemoryStore
from streams.producer import to_avro_record
from streams.topics import ensure_topics

T0 = 1_767_225_600_000  # 2026-01-01, as bench.state_size
MEMBERS = 5
RESOURCES = 50
_SEP = "\x1f"
_TEMPLATE_GROUP = "tmpl-api"


@dataclass
class Template:
    records: list[tuple[bytes, str, bytes]]  # kind, key, value
    last_ms: int


def build_template(seconds: int = 2 * 86400, step_s: int = 4) -> Template:
    core = DetectionCore()
    store = MemoryStore()
    ts = T0
    for n, i in enumerate(range(0, seconds, step_s)):
        ts = T0 + i * 1000
        member = n % MEMBERS
        core.observe(
            AuditEvent(
                event_id=f"t{n}",
                ts_us=ts * 1000,
                machine_id=f"{_TEMPLATE_GROUP}-{member + 1}",
                resource=f"postgres://orders-db/public.table_{(n // MEMBERS) % RESOURCES}",
                operation="SELECT",
                outcome="SUCCESS",
            ),
            store,
        )
    records: list[tuple[bytes, str, bytes]] = []
    for kind, table in store.data.items():
        for key, value in table.items():
            # The machines, their group, and the store's first-seen time (not its other
            # store-wide keys).
            ours = key == _TEMPLATE_GROUP or key.startswith(_TEMPLATE_GROUP + _SEP)
            if kind == MACHINE or ours or key == "first":
                records.append((kind, key, value))
    return Template(records, ts)


def _rename(key: str, group: str) -> str:
    return group + key[len(_TEMPLATE_GROUP) :] if key.startswith(_TEMPLATE_GROUP) else key


def feed_messages(template: Template, groups: int) -> Any:
    for g in range(groups):
        group = f"rs{g:05d}-api"
        # Latin-1 carries any bytes through JSON unchanged (values are binary: compressed
        # model masses).
        body = [
            [kind.decode(), _rename(key, group), value.decode("latin-1")]
            for kind, key, value in template.records
        ]
        yield group.encode(), orjson.dumps(body)


def write_changelog(cfg: Config, messages: int, timeout: float) -> dict[str, Any]:
    """Run the Quix feeder over the feed already on the detection topic."""
    from quixstreams import Application

    k = cfg.kafka
    app = Application(
        broker_address=k.bootstrap(),
        consumer_group=k.consumer_group,
        auto_offset_reset="earliest",
        commit_interval=k.commit_interval_s,
        processing_guarantee="at-least-once",
        state_dir=k.state_dir + "-feeder",
        loglevel="WARNING",
    )
    topic = app.topic(cfg.topics.detect, key_deserializer="bytes", value_deserializer="bytes")
    written = 0

    def write(value: bytes, _key: Any, _ts: int, _headers: Any, state: Any) -> int:
        nonlocal written
        tx = state._transaction
        for kind, key, val in orjson.loads(value):
            tx.set_bytes(key.encode(), val.encode("latin-1"), kind.encode())
        written += 1
        return 1

    app.dataframe(topic).apply(write, stateful=True, metadata=True)
    started = time.monotonic()
    app.run(count=messages, timeout=timeout, collect=False)
    return {"feed_messages": written, "feed_seconds": round(time.monotonic() - started, 1)}


def probes(template_last_ms: int, partitions_of: dict[int, str]) -> list[tuple[bytes, bytes]]:
    """One event per detection partition: a restored machine touching a new resource."""
    now = int(time.time() * 1000)
    out = []
    for p, group in sorted(partitions_of.items()):
        event: dict[str, Any] = {
            "event_id": f"probe-{p}",
            "timestamp": template_last_ms + 60_000,
            "machine_id": f"{group}-1",
            "resource": f"postgres://probe-db/public.audit_{p}",
            "operation": "SELECT",
            "outcome": "SUCCESS",
        }
        out.append((event["machine_id"].encode(), encode_event_avro(to_avro_record(event, now))))
    return out


def _time_worker(
    run: Run,
    name: str,
    cfg_path: Any,
    cfg: Config,
    events: list[tuple[bytes, bytes]],
    timeout: float,
    want_alerts: set[str],
) -> dict[str, Any]:
    """Start a worker, send `events`, and time the first archive record and the alerts of the
    machines in `want_alerts`."""
    counter = CommittedCounter(cfg, cfg.topics.archive)
    reader = AlertReader(cfg, cfg.topics.alerts)
    worker = Worker(auditwatch_argv(cfg_path), run.dir / name / "worker.log", ROOT)
    produce_records(cfg, cfg.topics.events, events)
    first_archive = None
    alerted: dict[str, float] = {}
    try:
        while time.monotonic() - worker.started < timeout and worker.alive():
            worker.sample()
            t = time.monotonic() - worker.started
            if first_archive is None and counter.count() > 0:
                first_archive = t
            for _arrived, a in list(reader.arrivals):
                m = a.get("machine_id")
                if m in want_alerts and m not in alerted and a.get("detector") == "new_resource":
                    alerted[m] = t
            if first_archive is not None and len(alerted) == len(want_alerts):
                break
            time.sleep(0.1)
    finally:
        rc = worker.stop()
        counter.close()
        reader.close()
    return {
        "first_archive_s": None if first_archive is None else round(first_archive, 2),
        "alerts": len(alerted),
        "all_alerts_s": round(max(alerted.values()), 2)
        if want_alerts and len(alerted) == len(want_alerts)
        else None,
        "peak_rss_mb": round(worker.peak_rss_mb, 1),
        "exit_code": rc,
        "log_tail": None if rc == 0 else worker.log_tail(800),
    }


def restore_phase(run: Run, machines: int, timeout: float) -> PhaseResult:
    result = PhaseResult("restore")
    groups = machines // MEMBERS
    started = time.monotonic()

    # The baseline: a worker with nothing to restore, timed to its first archive record.
    cfg0, path0 = run.config("restore-empty", input_topic=f"{run.prefix}.restore-empty.events")
    ensure_topics(cfg0)
    empty_probe = probes(T0, {0: "nobody"})
    base = _time_worker(run, "restore-empty", path0, cfg0, empty_probe, timeout / 3, set())
    result.extra["startup_seconds"] = base["first_archive_s"]

    template = build_template()
    cfg, path = run.config("restore", input_topic=f"{run.prefix}.restore.events")
    ensure_topics(cfg)
    partitions_of: dict[int, str] = {}

    def note_partition(err: Any, msg: Any) -> None:
        if err is None:
            partitions_of.setdefault(msg.partition(), msg.key().decode())

    from streams.producer import make_producer

    producer = make_producer(cfg, **{"linger.ms": 50})
    total_bytes = 0
    for key, value in feed_messages(template, groups):
        total_bytes += len(value)
        while True:
            try:
                producer.produce(cfg.topics.detect, value, key, on_delivery=note_partition)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    remaining = timeout - (time.monotonic() - started)
    feed = write_changelog(cfg, groups, timeout=max(remaining * 0.6, 10))
    group_bytes = sum(len(k) + len(v) for _kind, k, v in template.records)
    result.extra.update(
        {
            "machines": groups * MEMBERS,
            "groups": groups,
            "state_records": groups * len(template.records),
            "state_bytes": group_bytes * groups,
            "state_bytes_per_machine": group_bytes // MEMBERS,
            "feed_bytes": total_bytes,
            **feed,
        }
    )
    if feed["feed_messages"] < groups:
        result.error = f"the feeder wrote {feed['feed_messages']} of {groups} groups in time"
        result.done = False
        return result

    remaining = timeout - (time.monotonic() - started)
    wanted = {f"{g}-1" for g in partitions_of.values()}
    timed = _time_worker(
        run, "restore", path, cfg, probes(template.last_ms, partitions_of), remaining, wanted
    )
    result.extra["restore"] = timed
    restored = timed["all_alerts_s"]
    result.extra["restore_seconds"] = restored
    result.done = restored is not None
    result.checks["probes_alerted"] = {
        "pass": restored is not None,
        "alerted": timed["alerts"],
        "probes": len(wanted),
        "why": None
        if restored is not None
        else "not every probe of a restored machine alerted before the timeout",
    }
    return result
