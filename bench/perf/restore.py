"""Restoring 100,000 machines' state from the changelog: how long until a fresh worker is
processing again.

**How the changelog is written.** Running 100,000 machines' worth of history through the
pipeline would take far longer than the benchmark may, so the state is made directly, but by
the real code at both ends:

1. A template: `DetectionCore.observe` over two days of one peer group of five machines that
   share 50 distinct resources (one access every four seconds, in turn), in a `MemoryStore`:
   every record a real machine of that kind has (its machine record with baselines, the
   group's meta, resource, operation, time-of-day and combined-model records, the store's
   first-seen time). Silence watch lists and the dedupe index of event ids (it grows with
   events, not machines, about 50 bytes an event) are not included.
2. 20,000 copies of the group (100,000 machines, ids renamed) are written as the runtime
   writes its state at a commit, with its own classes: each machine record into the
   `PartitionState` of its machine's input partition (`streams.runtime.routing.Router`, the
   producers' partitioner), drained into that partition of the state changelog topic
   (`<group>.state`: key `kind NUL key`, the format record first); the group records into a
   `PeerTable` under the worker's own writer id (`streams.runtime.loop.instance_id`, as the
   worker computes it from its config), drained into the peers topic. A worker that restarts
   reads exactly these records: its own peer records (the combined model's trees included,
   which a worker restores only from its own writer id) and its partitions' state.

**What is timed.** A worker (`auditwatch run`) is started on that consumer group with a fresh
state directory: no local snapshot and no event-id index, so it restores everything from the
changelog, as a worker on a new host does (a restart on its own state directory reads only the
changelog's tail after its snapshot). One probe event per input partition is produced at once:
an access by a restored machine to a resource new to it and to its group. Only a restored
baseline makes that an alert (an unknown machine is in warm-up), and the runtime processes
nothing of a partition before its restore ends (restore runs in the assignment callback).
`restore_seconds` is the time from starting the worker to the last probe's alert;
`startup_seconds` is the same start-to-first-archive time for a worker with nothing to restore,
so the difference is the restore itself. The worker's own log lines give the split: the peer
table's load (read in full before the worker joins its group) and the restore of its assigned
partitions (`streams.runtime.state.restore_all`, `breakdown`). With time left, the same two
reads are then timed in this process (`in_process`: `PeerReader.load`, and `restore_all` over
every partition with a fresh consumer and no local snapshot).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from bench.perf.dataset import ROOT
from bench.perf.latency import AlertReader
from bench.perf.measure import CommittedCounter, Worker, produce_records, python_module
from bench.perf.phases import PhaseResult, Run
from detectors.core import MACHINE, DetectionCore
from schemas.codec import encode_event_avro
from schemas.event import AuditEvent
from streams.ops.config import Config
from streams.ops.topics import ensure_topics
from streams.processor import MemoryStore
from streams.runtime.loop import default_instance_id, instance_id
from streams.runtime.peers import PEER_KINDS, PeerReader, PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import PartitionState, restore_all, restore_consumer
from streams.tools.producer import to_avro_record

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


def writer_of(cfg: Config) -> str:
    """The writer id the worker started with `cfg` publishes its peer records under."""
    return instance_id(cfg) or default_instance_id(cfg)


def write_state(cfg: Config, template: Template, groups: int) -> dict[str, Any]:
    """The state of `groups` copies of the template, as the runtime's changelog and peers
    topics hold it after a commit. Returns counts, and for each input partition one group
    whose first machine lives there (`probe_groups`)."""
    from streams.tools.producer import make_producer

    partitions = cfg.topics.partitions
    router = Router(cfg.kafka.partitioner, partitions)
    states = [PartitionState(p) for p in range(partitions)]
    peers = PeerTable(writer_of(cfg))
    producer = make_producer(cfg, **{"linger.ms": 50, "batch.size": 1_000_000})
    produce, poll = producer.produce, producer.poll
    state_topic, peers_topic = cfg.state_topic, cfg.peers_topic
    counts = {"state_records": 0, "state_bytes": 0, "peer_records": 0, "peer_bytes": 0}
    probe_groups: dict[int, str] = {}
    failed: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(failed) < 5:
            failed.append(str(err))

    def send(topic: str, key: bytes, value: bytes | None, partition: int, what: str) -> None:
        counts[f"{what}_records"] += 1
        counts[f"{what}_bytes"] += len(key) + len(value or b"")
        while True:
            try:
                produce(topic, value, key, partition, on_delivery=on_delivery)
                return
            except BufferError:
                poll(0.05)

    first = [(kind, key, value) for kind, key, value in template.records if key == "first"]
    for state in states:
        for kind, key, value in first:
            state.set(kind, key, value)
    started = time.monotonic()
    for g in range(groups):
        group = f"rs{g:05d}-api"
        for kind, key, value in template.records:
            if key == "first":
                continue
            name = _rename(key, group)
            if kind in PEER_KINDS:
                peers.set(kind, name, value)
            else:
                p = router.partition(name)
                states[p].set(kind, name, value)
                if name == f"{group}-1":
                    probe_groups.setdefault(p, group)
        for state in states:
            for key, value in state.drain():
                send(state_topic, key, value, state.partition, "state")
            state.data.clear()
        for key, value in peers.drain():
            send(peers_topic, key, value, 0, "peer")
        peers.reset()
        poll(0)
    left = producer.flush(180)
    if left or failed:
        raise RuntimeError(f"{left} state records not delivered: {failed}")
    return {
        **counts,
        "write_seconds": round(time.monotonic() - started, 1),
        "probe_groups": probe_groups,
    }


def probes(template_last_ms: int, partitions_of: dict[int, str]) -> list[tuple[bytes, bytes]]:
    """One event per input partition: a restored machine touching a new resource."""
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


# The worker's own account of its restore (INFO lines of streams.runtime).
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_PEERS = re.compile(r"peer table: (\d+) records read")
# "restored partitions [0, 1, ...]: N changelog records, K keys in S s" (all assigned
# partitions read in one pass), or one line per partition.
_RESTORED = re.compile(
    r"restored partitions? \[?([\d, ]+)\]?: (?:a snapshot and )?(\d+) changelog records, "
    r"(\d+) keys in ([\d.]+) s"
)


def _log_time(line: str) -> float | None:
    m = _LOG_TIME.match(line)
    if m is None:
        return None
    # logging's asctime: local time, milliseconds after the comma.
    stamp, _, ms = m.group(1).partition(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


def breakdown(log: str, started_wall: float) -> dict[str, Any]:
    """Where the worker's restore went, from its INFO log: when the peer table was loaded
    (seconds after start), and each restore of partitions (all assigned ones at once, or
    one at a time), with when it ended."""
    out: dict[str, Any] = {"restores": []}
    for line in log.splitlines():
        if m := _PEERS.search(line):
            out["peer_records"] = int(m.group(1))
            t = _log_time(line)
            out["peers_loaded_at_s"] = None if t is None else round(t - started_wall, 2)
        elif m := _RESTORED.search(line):
            t = _log_time(line)
            out["restores"].append(
                {
                    "partitions": [int(x) for x in m.group(1).split(",") if x.strip()],
                    "records": int(m.group(2)),
                    "keys": int(m.group(3)),
                    "seconds": float(m.group(4)),
                    "done_at_s": None if t is None else round(t - started_wall, 2),
                }
            )
    restores = out["restores"]
    out["state_records"] = sum(r["records"] for r in restores)
    out["state_restore_seconds"] = round(sum(r["seconds"] for r in restores), 1)
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
    # INFO: the runtime logs the peer table's load and each partition's restore.
    argv = python_module(
        "streams.cli.main", "--log-level", "info", "run", "--config", str(cfg_path)
    )
    worker = Worker(argv, run.dir / name / "worker.log", ROOT)
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
    log = worker.log_tail(200_000)
    return {
        "first_archive_s": None if first_archive is None else round(first_archive, 2),
        "alerts": len(alerted),
        "all_alerts_s": round(max(alerted.values()), 2)
        if want_alerts and len(alerted) == len(want_alerts)
        else None,
        "cpu_s": round(worker.cpu_s, 1),
        "peak_rss_mb": round(worker.peak_rss_mb, 1),
        "exit_code": rc,
        "breakdown": breakdown(log, worker.started_wall),
        "log_tail": None if rc == 0 else log[-800:],
    }


def time_in_process(cfg: Config) -> dict[str, Any]:
    """`PeerReader.load` of the peers topic and `restore_all` of every partition of the state
    topic (no local snapshot), as a worker does them, timed here with fresh consumers."""
    client = cfg.kafka.client_config()
    group = cfg.kafka.consumer_group
    reader = PeerReader(restore_consumer(client, group), cfg.peers_topic, PeerTable("bench"))
    started = time.monotonic()
    try:
        peer_records = reader.load()
    finally:
        reader.close()
    peers_s = time.monotonic() - started
    consumer = restore_consumer(client, group)
    started = time.monotonic()
    try:
        states = restore_all(consumer, cfg.state_topic, list(range(cfg.topics.partitions)))
    finally:
        consumer.close()
    state_s = time.monotonic() - started
    keys = sum(state.size() for state in states.values())
    for state in states.values():
        state.seen.close()
    return {
        "peers_load_seconds": round(peers_s, 2),
        "peer_records": peer_records,
        "state_restore_seconds": round(state_s, 2),
        "state_keys": keys,
        "total_seconds": round(peers_s + state_s, 2),
    }


def restore_phase(run: Run, machines: int, timeout: float) -> PhaseResult:
    result = PhaseResult("restore")
    groups = machines // MEMBERS
    started = time.monotonic()
    result.extra["method"] = (
        "a real worker (auditwatch run) started on the written changelog, timed from its "
        "start to the last probe's alert; the worker's log gives the split, and the runtime's "
        "restore functions are timed again in-process when there is time"
    )

    # The baseline: a worker with nothing to restore, timed to its first archive record.
    cfg0, path0 = run.config("restore-empty", input_topic=f"{run.prefix}.restore-empty.events")
    ensure_topics(cfg0)
    empty_probe = probes(T0, {0: "nobody"})
    base = _time_worker(run, "restore-empty", path0, cfg0, empty_probe, timeout / 4, set())
    result.extra["startup_seconds"] = base["first_archive_s"]

    template = build_template()
    cfg, path = run.config("restore", input_topic=f"{run.prefix}.restore.events")
    ensure_topics(cfg)
    written = write_state(cfg, template, groups)
    partitions_of = written.pop("probe_groups")
    group_bytes = sum(len(k) + len(v) for _kind, k, v in template.records)
    result.extra.update(
        {
            "machines": groups * MEMBERS,
            "groups": groups,
            "template_records_per_group": len(template.records),
            "template_bytes_per_machine": group_bytes // MEMBERS,
            **written,
        }
    )
    if len(partitions_of) < cfg.topics.partitions:
        result.error = f"only {len(partitions_of)} partitions have a machine to probe"
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
    remaining = timeout - (time.monotonic() - started)
    # Reading it again takes about as long as the worker's restore did.
    if restored is not None and remaining > restored:
        result.extra["in_process"] = time_in_process(cfg)
    else:
        result.extra["in_process"] = {"skipped": f"{remaining:.0f} s left of the phase timeout"}
    return result
