"""`auditwatch compliance check`: evidence that the audit record is kept, complete and whole.

Four parts, each a section of the report:

- **Topics**: the archive, dead-letter and ledger topics are configured to keep what they hold:
  the archive compacted and nothing else (`cleanup.policy=compact`: a deletion policy would drop
  events by age), no `retention.ms`/`retention.bytes` other than the configured
  `topics.archive_retention_ms` (-1: forever) on the archive and the dead letters, the dead
  letters never compacted (their key is the input's, so compaction would keep one per
  machine), unclean leader election off; and on a cluster of 3 brokers or more, replication 3
  or more with `min.insync.replicas` 2 or more (on fewer brokers: not applicable).
- **Producers** over a window (`--since`, default the last 24 hours, read from the archive
  from that time via offsets_for_times): a producer is a machine (`machine_id`, the one
  identity every event has; `source` is only an optional label of the emitting agent, so it
  is itself one of the fields measured). Per producer, the share of its events that carry each
  optional field (`source_ip`, `identity_type`, `source`, `attributes` non-empty), and the
  largest gap in its event times against its usual cadence (the median interval): gaps over
  `gap_factor` times the cadence and over `min_gap_s` are listed.
- **Dead letters** over the same window: counts and rate per reason, the rate over archived
  plus dead-lettered input.
- **Reconciliation** per input partition, from the runtime's ledger (streams.runtime.ledger):
  records read = archived + dead-lettered + recognised duplicates + forwarded (repartition:
  + seeded history); every event forwarded from a partition was processed by the task of its
  machine or is still waiting in the repartition topic; and the archive and the dead-letter
  topic hold what the ledger says they do, counted by the input partition and offset each
  record came from over the ledger's range (distinct archive keys, since the active segment is
  not compacted and an at-least-once restart may write a record twice; distinct origins of
  dead letters, for the same reason).

Findings fail the check (exit 1): a topic setting that can lose records, records read and
accounted for nowhere, the archive or the dead letters holding fewer than counted, forwarded
events gone. Warnings are listed but do not fail it (`--strict` makes them fail): gaps, a
dead-letter rate over the threshold, offsets passed over, more in the archive than counted
(a pipeline still running, or an at-least-once restart before its next commit).

Imports: the standard library, confluent_kafka, orjson, schemas and streams.ops (the
repartition headers from streams.runtime.routing, read lazily).
"""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from streams.ops.config import Config
from streams.ops.topics import ledger_topic

OPTIONAL_FIELDS = ("source_ip", "identity_type", "source", "attributes")
# Per producer, at most this many event times are kept for the gap measure (a long window of
# a busy machine): the newest are what an auditor asks about.
_MAX_TIMES = 200_000

Progress = Callable[[str, int, int | None], None]


@dataclass
class Finding:
    area: str  # topics, reconciliation, producers, deadletters, records (damaged ones)
    subject: str  # a topic, a partition, a machine
    message: str


@dataclass
class Report:
    bootstrap: str
    checked_at_ms: int
    since_ms: int
    brokers: int
    guarantee: str
    topics: list[dict[str, Any]] = field(default_factory=list)
    producers: dict[str, Any] = field(default_factory=dict)
    deadletters: dict[str, Any] = field(default_factory=dict)
    reconciliation: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def passed(self, strict: bool = False) -> bool:
        return not self.findings and not (strict and self.warnings)

    def to_json(self, strict: bool = False) -> dict[str, Any]:
        return {
            "passed": self.passed(strict),
            "strict": strict,
            "bootstrap": self.bootstrap,
            "checked_at_ms": self.checked_at_ms,
            "since_ms": self.since_ms,
            "brokers": self.brokers,
            "guarantee": self.guarantee,
            "findings": [asdict(f) for f in self.findings],
            "warnings": [asdict(f) for f in self.warnings],
            "topics": self.topics,
            "producers": self.producers,
            "deadletters": self.deadletters,
            "reconciliation": self.reconciliation,
        }


# -- topic configs ---------------------------------------------------------------------------


def topic_findings(
    role: str,
    configs: dict[str, str | None],
    replication: int,
    brokers: int,
    retention_ms: int,
) -> tuple[list[str], list[str]]:
    """(findings, notes) for one topic's effective configs. `role`: archive, deadletter or
    ledger; `retention_ms`: the configured topics.archive_retention_ms."""
    found: list[str] = []
    notes: list[str] = []
    policy = {p.strip() for p in (configs.get("cleanup.policy") or "").split(",") if p.strip()}
    if role in ("archive", "ledger"):
        if policy != {"compact"}:
            found.append(
                f"cleanup.policy={','.join(sorted(policy))}, expected compact (a deletion policy "
                "drops records by age or size)"
            )
        wanted = str(retention_ms) if role == "archive" else "-1"
    else:
        if "compact" in policy:
            found.append(
                f"cleanup.policy={','.join(sorted(policy))}: compaction keeps one dead letter "
                "per key (the input's key, a machine) and drops the others"
            )
        wanted = str(retention_ms)
    if configs.get("retention.ms") != wanted:
        found.append(
            f"retention.ms={configs.get('retention.ms')}, expected {wanted} (the configured "
            "retention, topics.archive_retention_ms)"
            if role != "ledger"
            else f"retention.ms={configs.get('retention.ms')}, expected -1"
        )
    if configs.get("retention.bytes") not in (None, "-1"):
        found.append(
            f"retention.bytes={configs.get('retention.bytes')}: records would be deleted by size"
        )
    if configs.get("unclean.leader.election.enable") == "true":
        found.append(
            "unclean.leader.election.enable=true: a failover may drop acknowledged records"
        )
    if brokers >= 3:
        isr = int(configs.get("min.insync.replicas") or 1)
        if replication < 3:
            found.append(
                f"replication factor {replication} on a {brokers}-broker cluster (want 3+)"
            )
        if isr < 2:
            found.append(
                f"min.insync.replicas={isr}: one broker's loss can lose acknowledged records"
            )
        elif isr >= replication:
            found.append(
                f"min.insync.replicas={isr} with replication {replication}: a single broker "
                "down stops every write"
            )
    else:
        notes.append(
            f"replication and min.insync.replicas: not applicable ({brokers} "
            f"broker{'s' if brokers != 1 else ''})"
        )
    return found, notes


def check_topics(
    cfg: Config, admin: Any, timeout: float = 15.0
) -> tuple[int, list[dict[str, Any]]]:
    """(broker count, one entry per checked topic with its settings, findings and notes)."""
    from confluent_kafka.admin import ConfigResource

    meta = admin.list_topics(timeout=timeout)
    brokers = len(meta.brokers)
    out = []
    roles = (
        ("archive", cfg.topics.archive),
        ("deadletter", cfg.topics.deadletter),
        ("ledger", ledger_topic(cfg)),
    )
    for role, name in roles:
        topic = meta.topics.get(name)
        if topic is None or topic.error is not None:
            out.append(
                {
                    "role": role,
                    "topic": name,
                    "exists": False,
                    "findings": [f"topic {name} does not exist (`auditwatch topics create`)"],
                    "notes": [],
                }
            )
            continue
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        entries = admin.describe_configs([res], request_timeout=timeout)[res].result()
        configs = {k: v.value for k, v in entries.items()}
        replication = min((len(p.replicas) for p in topic.partitions.values()), default=0)
        found, notes = topic_findings(
            role, configs, replication, brokers, cfg.topics.archive_retention_ms
        )
        shown = (
            "cleanup.policy",
            "retention.ms",
            "retention.bytes",
            "min.insync.replicas",
            "unclean.leader.election.enable",
        )
        out.append(
            {
                "role": role,
                "topic": name,
                "exists": True,
                "partitions": len(topic.partitions),
                "replication": replication,
                "configs": {k: configs.get(k) for k in shown},
                "findings": found,
                "notes": notes,
            }
        )
    return brokers, out


# -- reading ---------------------------------------------------------------------------------


def _consumer(cfg: Config) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            **cfg.kafka.client_config(),
            "group.id": f"auditwatch-compliance-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )


def scan(
    cfg: Config,
    topic: str,
    starts: dict[int, int] | int | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Iterator[Any]:
    """Every committed record of `topic` up to its end as of now. `starts`: per partition the
    first offset to read, or one time (epoch ms) for every partition (offsets_for_times), or
    None for the beginning."""
    from confluent_kafka import KafkaError, TopicPartition

    consumer = _consumer(cfg)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return
        parts = sorted(meta.partitions)
        begin: dict[int, int] = {}
        ends: dict[int, int] = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            begin[p], ends[p] = low, high
        if isinstance(starts, int):
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, starts) for p in parts], timeout=timeout
            )
            # -1: nothing that recent in the partition.
            begin = {
                tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition]) for tp in found
            }
        elif isinstance(starts, dict):
            begin = {p: max(begin[p], starts.get(p, begin[p])) for p in parts}
        todo = {p: ends[p] for p in parts if ends[p] > begin[p]}
        if not todo:
            return
        total = sum(todo[p] - begin[p] for p in todo)
        consumer.assign([TopicPartition(topic, p, begin[p]) for p in todo])
        done = 0
        deadline = time.monotonic() + timeout
        while todo:
            msgs = consumer.consume(5000, 0.5)
            if not msgs and time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end offsets {todo}")
            for msg in msgs:
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    # With read_committed the last offsets may be transaction markers, never
                    # delivered: the end of the partition is reached.
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.pop(p, None)
                        continue
                    raise RuntimeError(f"reading {topic}: {err.str()}")
                deadline = time.monotonic() + timeout
                end = todo.get(p)
                if end is None or msg.offset() >= end:
                    continue
                done += 1
                yield msg
                if msg.offset() + 1 >= end:
                    todo.pop(p, None)
            if progress is not None:
                progress(topic, done, total)
    finally:
        consumer.close()


def read_ledger(cfg: Config) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest ledger record per (topic, partition)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for msg in scan(cfg, ledger_topic(cfg)):
        value = msg.value()
        if value is None:
            continue
        rec = orjson.loads(value)
        out[(rec["topic"], int(rec["partition"]))] = rec
    return out


# -- the window: producers and dead letters ---------------------------------------------------


def producer_stats(
    records: Iterator[dict[str, Any]], gap_factor: float, min_gap_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(completeness, gaps) over decoded archive records (each once, by key)."""
    counts: Counter[str] = Counter()
    fields: dict[str, Counter[str]] = defaultdict(Counter)
    times: dict[str, list[int]] = defaultdict(list)
    for rec in records:
        e = rec["event"]
        m = e["machine_id"]
        counts[m] += 1
        f = fields[m]
        for name in OPTIONAL_FIELDS:
            if e.get(name):
                f[name] += 1
        t = times[m]
        if len(t) < _MAX_TIMES:
            t.append(int(e["timestamp"]))
    total = sum(counts.values())
    overall = {
        name: (sum(fields[m][name] for m in counts) / total if total else None)
        for name in OPTIONAL_FIELDS
    }
    per = {
        m: {
            "events": n,
            "fields": {name: round(fields[m][name] / n, 4) for name in OPTIONAL_FIELDS},
        }
        for m, n in sorted(counts.items())
    }
    gaps: list[dict[str, Any]] = []
    for m, t in times.items():
        if len(t) < 3:
            continue
        t.sort()
        intervals = [b - a for a, b in itertools.pairwise(t)]
        usual = statistics.median(intervals)
        largest = max(intervals)
        at = intervals.index(largest)
        if largest >= min_gap_s * 1000 and largest >= gap_factor * max(usual, 1):
            gaps.append(
                {
                    "machine_id": m,
                    "largest_gap_s": largest / 1000,
                    "usual_interval_s": usual / 1000,
                    "from_ms": t[at],
                    "to_ms": t[at + 1],
                    "events": len(t),
                }
            )
    gaps.sort(key=lambda g: g["largest_gap_s"], reverse=True)
    completeness = {
        "events": total,
        "producers": len(counts),
        "overall": overall,
        "per_producer": per,
    }
    return completeness, gaps


class Damaged:
    """Records of the archive or dead-letter topic that do not decode: skipped by the scans
    (one must not stop the check) and reported as findings, since an output record nobody can
    read is an audit problem. By topic, each record once however many scans met it."""

    def __init__(self) -> None:
        self.records: dict[str, dict[tuple[int, int], str]] = {}

    def read(self, msg: Any, name: str) -> dict[str, Any] | None:
        """The decoded record, or None (noted) for a damaged one."""
        from schemas.codec import decode_wire

        try:
            return decode_wire(msg.value() or b"", name)
        except ValueError as e:
            where = (msg.partition(), msg.offset())
            self.records.setdefault(msg.topic(), {}).setdefault(where, str(e))
            return None

    def findings(self) -> list[Finding]:
        out = []
        for topic, records in sorted(self.records.items()):
            places = sorted(records)
            shown = "; ".join(f"[{p}]@{o}: {records[(p, o)]}" for p, o in places[:3])
            more = f"; and {len(places) - 3} more" if len(places) > 3 else ""
            out.append(
                Finding(
                    "records",
                    topic,
                    f"{len(places)} damaged record(s) that do not decode, skipped by this "
                    f"check: {shown}{more}",
                )
            )
        return out


def _decoded(
    cfg: Config,
    topic: str,
    since_ms: int,
    progress: Progress | None,
    damaged: Damaged | None = None,
) -> Iterator[dict[str, Any]]:
    damaged = damaged if damaged is not None else Damaged()
    seen: set[bytes] = set()
    for msg in scan(cfg, topic, since_ms, progress):
        key = msg.key()
        if key is not None:
            if key in seen:  # an at-least-once re-send, or not compacted yet
                continue
            seen.add(key)
        rec = damaged.read(msg, "archive_record")
        if rec is not None:
            yield rec


def deadletter_stats(
    cfg: Config,
    since_ms: int,
    archived: int,
    progress: Progress | None,
    damaged: Damaged | None = None,
) -> dict[str, Any]:
    damaged = damaged if damaged is not None else Damaged()
    reasons: Counter[str] = Counter()
    origins: set[tuple[Any, Any, Any]] = set()
    for msg in scan(cfg, cfg.topics.deadletter, since_ms, progress):
        d = damaged.read(msg, "dead_letter")
        if d is None or d["stage"] == "webhook":  # webhook: alert states, not input
            continue
        origin = (d["topic"], d["partition"], d["offset"])
        if d["partition"] is not None and origin in origins:
            continue
        origins.add(origin)
        reasons[d["reason"]] += 1
    total = sum(reasons.values())
    base = total + archived
    return {
        "total": total,
        "archived": archived,
        "rate": total / base if base else 0.0,
        "by_reason": {
            r: {"count": n, "rate": n / base if base else 0.0} for r, n in reasons.most_common()
        },
    }


# -- reconciliation --------------------------------------------------------------------------


def _zero() -> dict[str, int]:
    return {"archived": 0, "deadlettered": 0, "duplicates": 0}


def reconcile(
    cfg: Config,
    ledger: dict[tuple[str, int], dict[str, Any]],
    archive_origins: dict[int, dict[int, int]],
    deadletter_origins: dict[int, set[int]],
    waiting: dict[int, int],
    ends: dict[int, int],
) -> tuple[dict[str, Any], list[Finding], list[Finding]]:
    """The per-partition reconciliation from the ledger and what was counted in the topics.

    `archive_origins`: input partition -> {origin offset: distinct archive keys};
    `deadletter_origins`: input partition -> distinct origin offsets of dead letters;
    `waiting`: input partition -> forwarded events of it still unread in the repartition topic;
    `ends`: the input topic's end offset per partition."""
    events, detect = cfg.topics.events, cfg.topics.detect
    findings: list[Finding] = []
    warnings: list[Finding] = []
    inputs = sorted(p for (t, p) in ledger if t == events)
    # What the tasks of the repartition topic did with events of each input partition.
    resolved: dict[int, dict[str, int]] = defaultdict(_zero)
    rows_r = []
    for (t, q), rec in sorted(ledger.items()):
        if t != detect:
            continue
        for p, row in rec.get("by_origin", {}).items():
            for k, n in row.items():
                resolved[int(p)][k] += n
        rows_r.append(_row(rec))
        left = rows_r[-1]["unaccounted"]
        if left:
            findings.append(
                Finding(
                    "reconciliation",
                    f"{detect}[{q}]",
                    f"{left} records read and neither archived, dead-lettered, recognised "
                    "as duplicates nor seeded",
                )
            )
    rows = []
    for p in inputs:
        rec = ledger[(events, p)]
        row = _row(rec)
        sub = f"{events}[{p}]"
        if row["unaccounted"]:
            findings.append(
                Finding(
                    "reconciliation",
                    sub,
                    f"{row['unaccounted']} records read and neither archived, dead-lettered, "
                    "recognised as duplicates nor forwarded",
                )
            )
        if row["skipped_offsets"]:
            warnings.append(
                Finding(
                    "reconciliation",
                    sub,
                    f"{row['skipped_offsets']} offsets passed over between records read "
                    "(aborted transactions or markers of a transactional producer, or records "
                    "deleted by retention before they were read)",
                )
            )
        r = resolved.get(p, _zero())
        expect_archive = row["archived"] + r["archived"]
        expect_dl = row["deadlettered"] + r["deadlettered"]
        first, nxt = row["first_offset"], row["next_offset"]
        in_archive = sum(n for off, n in archive_origins.get(p, {}).items() if first <= off < nxt)
        in_dl = sum(1 for off in deadletter_origins.get(p, ()) if first <= off < nxt)
        forwarded_done = sum(r.values())
        wait = waiting.get(p, 0)
        gone = row["forwarded"] - forwarded_done - wait
        row.update(
            {
                "archived_total": expect_archive,
                "deadlettered_total": expect_dl,
                "duplicates_total": row["duplicates"] + r["duplicates"],
                "forwarded_processed": forwarded_done,
                "forwarded_waiting": wait,
                "in_archive": in_archive,
                "in_deadletter": in_dl,
                "not_yet_read": max(0, ends.get(p, nxt) - nxt),
            }
        )
        if gone > 0:
            findings.append(
                Finding(
                    "reconciliation",
                    sub,
                    f"{gone} forwarded events neither processed by their machine's task nor "
                    f"waiting in {detect}",
                )
            )
        if in_archive < expect_archive:
            findings.append(
                Finding(
                    "reconciliation",
                    sub,
                    f"the archive holds {in_archive} events from offsets {first}-{nxt - 1}, "
                    f"the ledger counted {expect_archive} archived: "
                    f"{expect_archive - in_archive} missing",
                )
            )
        elif in_archive > expect_archive:
            warnings.append(
                Finding(
                    "reconciliation",
                    sub,
                    f"the archive holds {in_archive - expect_archive} more events from offsets "
                    f"{first}-{nxt - 1} than the ledger counted (a pipeline still running, or "
                    "an at-least-once restart before its next commit)",
                )
            )
        if in_dl < expect_dl:
            findings.append(
                Finding(
                    "reconciliation",
                    sub,
                    f"the dead-letter topic holds {in_dl} dead letters from offsets "
                    f"{first}-{nxt - 1}, the ledger counted {expect_dl}: "
                    f"{expect_dl - in_dl} missing",
                )
            )
        rows.append(row)
    unledgered = sorted(p for p, end in ends.items() if end > 0 and p not in inputs)
    if unledgered:
        findings.append(
            Finding(
                "reconciliation",
                events,
                f"partitions {','.join(map(str, unledgered))} have records but no ledger "
                "(the pipeline has not committed on them, or runs without the ledger topic)",
            )
        )
    return {"input": rows, "repartition": rows_r}, findings, warnings


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    outcomes = ("archived", "deadlettered", "duplicates", "forwarded", "seeded")
    row = {
        "topic": rec["topic"],
        "partition": int(rec["partition"]),
        "first_offset": int(rec["first_offset"]),
        "next_offset": int(rec["next_offset"]),
        "read": int(rec["read"]),
        "skipped_offsets": int(rec.get("skipped_offsets", 0)),
        **{k: int(rec.get(k, 0)) for k in outcomes},
        "writer": rec.get("writer"),
        "guarantee": rec.get("guarantee"),
        "committed_at_ms": rec.get("committed_at_ms"),
    }
    row["unaccounted"] = row["read"] - sum(row[k] for k in outcomes)
    return row


def _archive_origins(
    cfg: Config, progress: Progress | None, damaged: Damaged
) -> dict[int, dict[int, int]]:
    """Input partition -> {origin offset: distinct archive keys} over the whole archive."""
    events = cfg.topics.events
    seen: set[int] = set()
    out: dict[int, dict[int, int]] = defaultdict(dict)
    for msg in scan(cfg, cfg.topics.archive, None, progress):
        key = msg.key()
        h = hash(key)
        if h in seen:
            continue
        seen.add(h)
        rec = damaged.read(msg, "archive_record")
        if rec is None or rec["original_topic"] != events or rec["original_partition"] is None:
            continue
        row = out[rec["original_partition"]]
        off = rec["original_offset"]
        row[off] = row.get(off, 0) + 1
    return out


def _deadletter_origins(
    cfg: Config, progress: Progress | None, damaged: Damaged
) -> dict[int, set[int]]:
    events = cfg.topics.events
    out: dict[int, set[int]] = defaultdict(set)
    for msg in scan(cfg, cfg.topics.deadletter, None, progress):
        d = damaged.read(msg, "dead_letter")
        if (
            d is not None
            and d["topic"] == events
            and d["partition"] is not None
            and d["offset"] is not None
        ):
            out[d["partition"]].add(d["offset"])
    return out


def _waiting(
    cfg: Config, ledger: dict[tuple[str, int], dict[str, Any]], progress: Progress | None
) -> dict[int, int]:
    """Input partition -> its forwarded events in the repartition topic after the offset its
    task's ledger has counted up to (not processed yet as of the ledger)."""
    from streams.runtime.routing import forwarded_origin, is_seed

    detect = cfg.topics.detect
    starts = {q: int(rec["next_offset"]) for (t, q), rec in ledger.items() if t == detect}
    out: Counter[int] = Counter()
    for msg in scan(cfg, detect, starts, progress):
        headers = msg.headers()
        if is_seed(headers):
            continue
        origin = forwarded_origin(headers)
        if (
            origin is not None
            and origin.topic == cfg.topics.events
            and origin.partition is not None
        ):
            out[origin.partition] += 1
    return dict(out)


def _end_offsets(cfg: Config, topic: str) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    consumer = _consumer(cfg)
    try:
        meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


# -- the whole check -------------------------------------------------------------------------


def check(
    cfg: Config,
    since_ms: int,
    gap_factor: float = 10.0,
    min_gap_s: float = 3600.0,
    max_deadletter_rate: float = 0.01,
    progress: Progress | None = None,
) -> Report:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(cfg.kafka.client_config())
    brokers, topics = check_topics(cfg, admin)
    report = Report(
        bootstrap=cfg.kafka.bootstrap(),
        checked_at_ms=int(time.time() * 1000),
        since_ms=since_ms,
        brokers=brokers,
        guarantee=cfg.kafka.processing_guarantee,
        topics=topics,
    )
    for t in topics:
        for msg in t["findings"]:
            report.findings.append(Finding("topics", t["topic"], msg))
    exists = {t["role"]: t["exists"] for t in topics}
    damaged = Damaged()

    if exists["archive"]:
        completeness, gaps = producer_stats(
            _decoded(cfg, cfg.topics.archive, since_ms, progress, damaged), gap_factor, min_gap_s
        )
    else:
        completeness, gaps = producer_stats(iter(()), gap_factor, min_gap_s)
    report.producers = {
        **completeness,
        "gaps": gaps,
        "gap_factor": gap_factor,
        "min_gap_s": min_gap_s,
    }
    for g in gaps:
        report.warnings.append(
            Finding(
                "producers",
                g["machine_id"],
                f"no events for {_span(g['largest_gap_s'])} (usually one every "
                f"{_span(g['usual_interval_s'])})",
            )
        )
    if exists["deadletter"]:
        report.deadletters = deadletter_stats(
            cfg, since_ms, completeness["events"], progress, damaged
        )
        report.deadletters["max_rate"] = max_deadletter_rate
        if report.deadletters["rate"] > max_deadletter_rate:
            report.warnings.append(
                Finding(
                    "deadletters",
                    cfg.topics.deadletter,
                    f"dead-letter rate {report.deadletters['rate']:.2%} over "
                    f"{max_deadletter_rate:.2%}",
                )
            )

    if exists["ledger"]:
        ledger = read_ledger(cfg)
        archive = _archive_origins(cfg, progress, damaged) if exists["archive"] else {}
        dls = _deadletter_origins(cfg, progress, damaged) if exists["deadletter"] else {}
        waiting = _waiting(cfg, ledger, progress)
        ends = _end_offsets(cfg, cfg.topics.events)
        report.reconciliation, found, warned = reconcile(cfg, ledger, archive, dls, waiting, ends)
        report.findings.extend(found)
        report.warnings.extend(warned)
    report.findings.extend(damaged.findings())
    return report


def parse_since(text: str, now_ms: int) -> int:
    """`24h`, `90m`, `7d`, `3600s` before now, or a time (RFC 3339 or epoch ms)."""
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    t = text.strip()
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return now_ms - int(float(t[:-1]) * units[t[-1]])
    from schemas.event import parse_timestamp_us

    return parse_timestamp_us(t) // 1000


# -- rendering -------------------------------------------------------------------------------


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(ms: int) -> str:
    from schemas.event import format_rfc3339_ms

    return format_rfc3339_ms(ms)


def _verdict(report: Report, strict: bool) -> str:
    if report.passed(strict):
        extra = f", {len(report.warnings)} warnings" if report.warnings else ""
        return f"PASS: no findings{extra}"
    n = len(report.findings) + (len(report.warnings) if strict else 0)
    return f"FAIL: {n} finding{'s' if n != 1 else ''}"


def render_text(report: Report, strict: bool = False) -> str:
    """The human summary printed on stdout."""
    lines = [
        f"compliance check of {report.bootstrap} ({report.brokers} broker"
        f"{'s' if report.brokers != 1 else ''}, {report.guarantee}), window since "
        f"{_when(report.since_ms)}",
        _verdict(report, strict),
    ]
    for f in report.findings:
        lines.append(f"  finding  [{f.area}] {f.subject}: {f.message}")
    for f in report.warnings:
        lines.append(f"  warning  [{f.area}] {f.subject}: {f.message}")
    lines.append("topics:")
    for t in report.topics:
        state = "ok" if not t["findings"] else "FINDINGS"
        extra = "; ".join(t["notes"])
        lines.append(f"  {t['role']:<11} {t['topic']}: {state}" + (f" ({extra})" if extra else ""))
    rec = report.reconciliation
    if rec:
        lines.append(
            "reconciliation (input partitions: read = archived + dead-lettered + "
            "duplicates + forwarded):"
        )
        for r in rec["input"]:
            lost = f" + {r['unaccounted']} UNACCOUNTED" if r["unaccounted"] else ""
            lines.append(
                f"  {r['topic']}[{r['partition']}] offsets {r['first_offset']}-"
                f"{r['next_offset'] - 1}: read {r['read']} = {r['archived']} + "
                f"{r['deadlettered']} + {r['duplicates']} + {r['forwarded']}{lost}; "
                f"in archive {r['in_archive']} of {r['archived_total']}, dead letters "
                f"{r['in_deadletter']} of {r['deadlettered_total']}"
            )
    p = report.producers
    if p:
        lines.append(f"producers: {p['producers']} machines, {p['events']} events in the window")
        for name, share in p["overall"].items():
            lines.append(f"  {name:<14} {'-' if share is None else f'{share:.1%}'}")
    d = report.deadletters
    if d:
        lines.append(f"dead letters: {d['total']} in the window ({d['rate']:.2%})")
        for reason, v in d["by_reason"].items():
            lines.append(f"  {reason:<24} {v['count']:>8} {v['rate']:.2%}")
    return "\n".join(lines)


def render_markdown(report: Report, strict: bool = False, top: int = 20) -> str:
    """The report as Markdown, for an auditor's file."""
    out = [
        "# auditwatch compliance check",
        "",
        f"- Broker: `{report.bootstrap}` ({report.brokers} broker"
        f"{'s' if report.brokers != 1 else ''}), processing guarantee {report.guarantee}",
        f"- Checked at {_when(report.checked_at_ms)}; window since {_when(report.since_ms)}",
        f"- Result: **{_verdict(report, strict)}**",
        "",
        "## Findings",
        "",
    ]
    if not report.findings and not report.warnings:
        out.append("None.")
    for f in report.findings:
        out.append(f"- **finding** ({f.area}) `{f.subject}`: {_md(f.message)}")
    for f in report.warnings:
        out.append(f"- warning ({f.area}) `{f.subject}`: {_md(f.message)}")
    out += [
        "",
        "## Topics",
        "",
        "| role | topic | cleanup.policy | retention.ms | "
        "retention.bytes | replication | min.insync.replicas | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in report.topics:
        c = t.get("configs", {})
        result = "; ".join(t["findings"]) or "ok" + (
            f" ({'; '.join(t['notes'])})" if t["notes"] else ""
        )
        out.append(
            f"| {t['role']} | `{t['topic']}` | {c.get('cleanup.policy', '-')} | "
            f"{c.get('retention.ms', '-')} | {c.get('retention.bytes', '-')} | "
            f"{t.get('replication', '-')} | {c.get('min.insync.replicas', '-')} | {_md(result)} |"
        )
    rec = report.reconciliation
    out += ["", "## Reconciliation", ""]
    if not rec:
        out.append("No ledger topic: nothing to reconcile.")
    else:
        out += [
            "Per input partition, from the runtime's ledger: records read = archived + "
            "dead-lettered + duplicates + forwarded. Forwarded events are processed by their "
            "machine's task; the totals include them. The archive and dead-letter columns are "
            "counted in those topics (distinct keys, distinct origins) over the ledger's offsets.",
            "",
            "| partition | offsets | read | archived | dead-lettered | duplicates | forwarded | "
            "unaccounted | archived (total) | in archive | dead letters (total) | "
            "in dead-letter topic | forwarded waiting | not yet read |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rec["input"]:
            out.append(
                f"| {r['partition']} | {r['first_offset']}-{r['next_offset'] - 1} | {r['read']} | "
                f"{r['archived']} | {r['deadlettered']} | {r['duplicates']} | {r['forwarded']} | "
                f"{r['unaccounted']} | {r['archived_total']} | {r['in_archive']} | "
                f"{r['deadlettered_total']} | {r['in_deadletter']} | {r['forwarded_waiting']} | "
                f"{r['not_yet_read']} |"
            )
        if rec["repartition"]:
            out += [
                "",
                "Repartition partitions: read = archived + dead-lettered + duplicates + seeded.",
                "",
                "| partition | read | archived | dead-lettered | duplicates | seeded | "
                "unaccounted |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in rec["repartition"]:
                out.append(
                    f"| {r['partition']} | {r['read']} | {r['archived']} | {r['deadlettered']} | "
                    f"{r['duplicates']} | {r['seeded']} | {r['unaccounted']} |"
                )
    p = report.producers
    out += ["", "## Producers", ""]
    if p:
        out.append(
            f"{p['producers']} producers (machines), {p['events']} events archived in the "
            "window. Share of events carrying each optional field:"
        )
        out += ["", "| field | all producers |", "|---|---|"]
        for name, share in p["overall"].items():
            out.append(f"| {name} | {'-' if share is None else f'{share:.1%}'} |")
        partial = [
            (m, v)
            for m, v in p["per_producer"].items()
            if any(0 < s < 1 for s in v["fields"].values())
        ]
        if partial:
            out += [
                "",
                f"Producers that set a field on some events only ({len(partial)}; "
                f"first {min(top, len(partial))}):",
                "",
                "| machine | events | " + " | ".join(OPTIONAL_FIELDS) + " |",
                "|---|---|" + "---|" * len(OPTIONAL_FIELDS),
            ]
            for m, v in partial[:top]:
                shares = " | ".join(f"{v['fields'][f]:.0%}" for f in OPTIONAL_FIELDS)
                out.append(f"| `{_md(m)}` | {v['events']} | {shares} |")
        gaps = p["gaps"]
        out += [
            "",
            f"Gaps (over {p['gap_factor']:g} x the usual interval and "
            f"{_span(p['min_gap_s'])}): {len(gaps)}",
        ]
        if gaps:
            out += [
                "",
                "| machine | largest gap | usual interval | from | to |",
                "|---|---|---|---|---|",
            ]
            for g in gaps[:top]:
                out.append(
                    f"| `{_md(g['machine_id'])}` | {_span(g['largest_gap_s'])} | "
                    f"{_span(g['usual_interval_s'])} | {_when(g['from_ms'])} | "
                    f"{_when(g['to_ms'])} |"
                )
    d = report.deadletters
    out += ["", "## Dead letters", ""]
    if d:
        out.append(
            f"{d['total']} dead letters in the window, rate {d['rate']:.2%} "
            f"(warning over {d['max_rate']:.2%})."
        )
        if d["by_reason"]:
            out += ["", "| reason | count | rate |", "|---|---|---|"]
            for reason, v in d["by_reason"].items():
                out.append(f"| {reason} | {v['count']} | {v['rate']:.2%} |")
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    """Table-safe: a pipe or a newline in a machine id must not break the table."""
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")
