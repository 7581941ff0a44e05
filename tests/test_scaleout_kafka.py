"""Scale-out and recovery on the real broker, judged on what readers of committed data see.

Two workers share eight partitions and one is SIGKILLed mid-transaction; a private broker is
restarted under a running worker; a cleanly stopped worker resumes from its committed offsets.
Each test prints what it measured (duplicates, aborted records, take-over time); run with
`-rP` or `-s` to see it.

The runtime (streams/runtime) processes each event in one pass, in the input partition of its
machine; the tests key events by machine id with murmur2 (`Stack.send`), so none is forwarded
to the repartition topic (`topics.detect`). A worker owns input partition p and repartition
partition p together, and writes partition p's archive records to archive partition p: how
far a worker has got on partition p is the archive's end offset of p (read_uncommitted, so
an open transaction's records count).
"""

from __future__ import annotations

import io
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.alert import PAGE_RANK, SEVERITY_RANK
from schemas.codec import decode_wire
from streams.ops import kafka_local
from streams.ops.config import KafkaSettings
from streams.processor import KEY_SEP, event_id_of
from streams.runtime.routing import murmur2_partition
from streams.tools.replay import replay
from tests.conftest import Stack, wait_until
from tests.test_metrics_kafka import scrape, value, worker_url
from tests.traffic import BASE_MS, fan_out

pytestmark = pytest.mark.kafka

PARTITIONS = 8
MINUTE_MS = 60_000
EVERY_MS = 5_000
# No "-NN" or pod-hash suffix: each machine is its own peer group, so what it pages depends on
# its own events alone, which Kafka (per partition) and replay (by event time) order alike.
MACHINES = [f"svc{i:02d}-worker" for i in range(40)]
# mature_after_s 0: the fleet stands for machines with history behind them, which page a new
# resource or operation at once (maturity is tests/test_maturity.py's).
DETECTORS = {
    "detectors__warmup_s": 600,
    "detectors__warmup_events": 20,
    "detectors__mature_after_s": 0,
}
# A SIGKILLed member keeps its partitions until its session expires (static membership: it
# never leaves the group; kafka.session_timeout_s, 45 s by default) and, under exactly-once,
# the transaction it left open holds back every read_committed reader of the partitions it
# wrote to until the coordinator aborts it (kafka.transaction_timeout_s, 60 s, plus up to 10 s
# until the broker's next sweep). With the defaults a crashed worker's partitions thus stall
# for up to 45 s (at-least-once) or 70 s (exactly-once); short here to keep the test quick.
# Given as librdkafka settings, which win over kafka.session_timeout_s and
# kafka.transaction_timeout_s (the take-over and catch-up times below show both applied).
# The worker derives heartbeat.interval.ms from kafka.session_timeout_s alone (4.5 s for the
# default 45 s), which would leave a 6 s session 1.5 s of slack: a heartbeat every third of
# the session, as Kafka advises, is set here too.
FAST_FAILOVER = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 2000,
    "transaction.timeout.ms": 10000,
}
DEFAULT_SESSION_TIMEOUT_S = KafkaSettings().session_timeout_s
DEFAULT_TRANSACTION_TIMEOUT_S = KafkaSettings().transaction_timeout_s
# Two workers on one host would contend for the default metrics port; the input-quiet watch
# is for topics idle for many minutes.
QUIET = {"http__enabled": False, "monitoring__input_quiet_s": 0}


# ------------------------------------------------------------------------------------ traffic


def steady(machine: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """One SELECT every 5 s over the machine's own four tables."""
    i = MACHINES.index(machine) if machine in MACHINES else 0
    first = start_ms + i * 97  # machines do not tick in lockstep
    return [
        {
            "event_id": f"{machine}-{t}",
            "timestamp": t,
            "machine_id": machine,
            "resource": f"postgres://db{i}/public.t{k % 4}",
            "operation": "SELECT",
            "outcome": "SUCCESS",
        }
        for k, t in enumerate(range(first, end_ms, EVERY_MS))
    ]


def episode(kind: str, machine: str, at_ms: int) -> list[dict[str, Any]]:
    i = MACHINES.index(machine)
    base = {"machine_id": machine, "operation": "SELECT", "outcome": "SUCCESS"}
    if kind == "new_resource":  # a table it never used
        return [
            {
                **base,
                "event_id": f"ep-{machine}-new",
                "timestamp": at_ms,
                "resource": f"postgres://db{i}/public.payroll",
            }
        ]
    if kind == "fan_out":  # a dozen secrets of other teams in six seconds
        return [{**e, "event_id": f"ep-{e['event_id']}"} for e in fan_out(machine, at_ms, n=12)]
    if kind == "failure_ratio":  # ten denials on its usual tables within one minute
        return [
            {
                **base,
                "event_id": f"ep-{machine}-deny-{j}",
                "timestamp": at_ms + j * 3000,
                "resource": f"postgres://db{i}/public.t{j % 4}",
                "outcome": "DENIED",
            }
            for j in range(10)
        ]
    # operation: a read-only client drops one of its tables
    return [
        {
            **base,
            "event_id": f"ep-{machine}-drop",
            "timestamp": at_ms,
            "resource": f"postgres://db{i}/public.t1",
            "operation": "DROP",
        }
    ]


@dataclass
class Traffic:
    history: list[dict[str, Any]]
    live: list[dict[str, Any]]
    episodes: dict[str, str]  # machine -> detector whose page the episode must raise

    @property
    def ids(self) -> set[str]:
        return {e["event_id"] for e in self.history + self.live}


def scale_traffic() -> Traffic:
    """40 machines; 12 minutes of history (every machine warm), then 10 live minutes with one
    episode on a machine of each of the eight partitions, 8.5 minutes in.

    8.5 minutes is less than `warmup_s` (600 s): a worker that took a partition over without
    its baselines, and re-learned from where the dead worker had committed (at best the start
    of the live phase), would find the episode's machine cold and page nothing."""
    a_end = BASE_MS + 12 * MINUTE_MS
    b_end = a_end + 10 * MINUTE_MS
    at = a_end + 8 * MINUTE_MS + 30_000
    history = sorted(
        (e for m in MACHINES for e in steady(m, BASE_MS, a_end)), key=lambda e: e["timestamp"]
    )
    live = [e for m in MACHINES for e in steady(m, a_end, b_end)]
    per_partition: dict[int, str] = {}
    for m in MACHINES:
        per_partition.setdefault(murmur2_partition(m.encode(), PARTITIONS), m)
    assert len(per_partition) == PARTITIONS, "the machines must cover every partition"
    kinds = ["new_resource", "fan_out", "failure_ratio", "operation"] * 2
    episodes = {}
    for p, kind in enumerate(kinds):
        machine = per_partition[p]
        live += episode(kind, machine, at + p * 1000)
        episodes[machine] = "new_resource" if kind == "fan_out" else kind
    live.sort(key=lambda e: e["timestamp"])
    return Traffic(history, live, episodes)


def send_paced(s: Stack, events: list[dict[str, Any]], chunks: int = 50) -> None:
    """`Stack.send` in `chunks` steps a moment apart, as a live source sends: a worker keeps
    pace with its input, so its progress grows in steps a watcher can sample (all at once, a
    fast worker can get through half of it between two samples)."""
    step = -(-len(events) // chunks)
    for i in range(0, len(events), step):
        if i:
            time.sleep(0.05)
        s.send(events[i : i + step])


# ------------------------------------------------------------------------- reading the results


def is_page(alert: dict[str, Any]) -> bool:
    return (
        alert["status"] in ("opened", "escalated") and SEVERITY_RANK[alert["severity"]] >= PAGE_RANK
    )


def page_key(alert: dict[str, Any]) -> tuple[str, str, str]:
    """One page: the same alert (machine, detector, first event, config) in the same state
    at the same severity. Seen twice, on-call was paged twice for one thing."""
    return alert["alert_id"], alert["status"], alert["severity"]


def kafka_pages(s: Stack) -> list[dict[str, Any]]:
    return [a for m in s.read("alerts") if is_page(a := orjson.loads(m.value()))]


def replay_pages(s: Stack, events: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """The pages of one uninterrupted run: `auditwatch replay` of the same events with the
    same config, hence the same alert ids.

    Replay rather than a second, uninterrupted worker on its own topics: it is deterministic
    (no scheduling or partition-interleaving choices), costs about a second instead of a
    second pipeline's minute on a shared two-core box, and test_pipeline_kafka already holds
    Kafka to replay's pages. With one peer group per machine no verdict depends on how the
    partitions interleave, which is the only thing replay orders differently."""
    path = workdir / "reference.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    out = io.BytesIO()
    replay(s.cfg, [str(path)], out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def machine_of(archive_key: bytes) -> str:
    """The machine id in an archive record's key (`machine_id KEY_SEP event_id`)."""
    return archive_key.decode().split(KEY_SEP, 1)[0]


def archive_positions(s: Stack) -> dict[str, tuple[int, int]]:
    """event_id -> (partition, offset) of its committed archive record (the last one, should
    at-least-once have written it twice). The partition is its machine's input partition, the
    offset tells which worker wrote it: it was archived and detected in the same pass."""
    out: dict[str, tuple[int, int]] = {}
    for m in s.read("archive"):
        out[event_id_of(m.key())] = (m.partition(), m.offset())
    return out


class GroupView:
    """The workers' consumer group as the broker sees it: members by client.id with their
    input and repartition partitions, committed offsets, and how far each partition is
    written. Clients are made once and reused (none subscribes, so none joins the group): the
    kill is timed by polling them."""

    def __init__(self, s: Stack) -> None:
        # These clients only watch; their connection errors while a broker restarts are
        # expected and would bury the workers' own logs.
        self.conf = {**s.cfg.kafka.client_config(), "log_level": 2}
        self.group = s.cfg.kafka.consumer_group
        t = s.cfg.topics
        self.events, self.repartition, self.archive = t.events, t.detect, t.archive
        # Everything a worker writes, inside its transactions under exactly-once: the outputs,
        # the repartition topic, the state changelog and the peer table.
        self.written = (
            t.archive,
            t.alerts,
            t.deadletter,
            t.detect,
            s.cfg.state_topic,
            s.cfg.peers_topic,
        )
        self.admin = AdminClient(self.conf)
        # Partitions per topic (the peer table has one), as created before the view.
        self.partitions = partition_counts(self.admin, [self.events, *self.written])
        # Offset lookups answer per the asking consumer's isolation level: read_committed
        # (the default) gets the last stable offset, short of any open transaction.
        self.stable = Consumer({**self.conf, "group.id": self.group, "enable.auto.commit": False})
        self.raw = Consumer(
            {
                **self.conf,
                "group.id": f"scaleout-view-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_uncommitted",
            }
        )

    def close(self) -> None:
        self.stable.close()
        self.raw.close()

    def members(self) -> dict[str, dict[str, set[int]]]:
        """client.id -> topic (input, repartition) -> partitions; {} while the group is
        (re)forming."""
        try:
            future = self.admin.describe_consumer_groups([self.group], request_timeout=10)
            desc = future[self.group].result()
        except KafkaException:
            return {}
        out: dict[str, dict[str, set[int]]] = {}
        for m in desc.members:
            owned = out.setdefault(m.client_id, {self.events: set(), self.repartition: set()})
            for tp in m.assignment.topic_partitions:
                if tp.topic in owned:
                    owned[tp.topic].add(tp.partition)
        return out

    def committed(self, topic: str) -> dict[int, int]:
        """Committed offset per partition; 0 where the group never committed (the
        repartition topic's partitions nothing was consumed from)."""
        parts = [TopicPartition(topic, p) for p in range(self.partitions[topic])]
        return {tp.partition: max(tp.offset, 0) for tp in self.stable.committed(parts, 10)}

    def ends(self, topic: str, *, stable: bool = False) -> dict[int, int]:
        """Per partition: how far it is written (committed transactions or not), or with
        `stable` its last stable offset."""
        consumer = self.stable if stable else self.raw
        deadline = time.monotonic() + 10
        while True:
            try:
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(self.partitions[topic])
                }
            except KafkaException:
                # Leaders of a topic made a moment ago, or of a broker restarting.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def caught_up(self, exactly_once: bool) -> bool:
        """Every input record processed and committed, and every forwarded one too; under
        exactly-once, also no transaction left open on what the workers write."""
        try:
            done, ends = self.committed(self.events), self.ends(self.events)
            if any(ends[p] > done[p] for p in ends):
                return False
            # The repartition topic only where it has records: the group commits offsets
            # there only for partitions it consumed from.
            forwarded = {p: n for p, n in self.ends(self.repartition).items() if n > 0}
            if not exactly_once:
                done = self.committed(self.repartition)
                return all(done[p] >= n for p, n in forwarded.items())
            # No transaction open (a dead worker's, until the coordinator aborts it, holds
            # back every read_committed reader)...
            for topic in self.written:
                if self.ends(topic) != self.ends(topic, stable=True):
                    return False
            # ...and past the group's offsets the repartition topic holds only transaction
            # markers, which consumers never receive, so never commit past.
            done = self.committed(self.repartition)
            return not self.unread(self.repartition, {p: done[p] for p in forwarded})
        except KafkaException:
            return False  # the coordinator moving during a rebalance; ask again

    def unread(self, topic: str, start: dict[int, int]) -> bool:
        """Whether a read_committed consumer finds a record after `start` (or cannot tell)."""
        ends = self.ends(topic)
        todo = [TopicPartition(topic, p, start[p]) for p in start if start[p] < ends[p]]
        if not todo:
            return False
        probe = Consumer(
            {
                **self.conf,
                "group.id": f"scaleout-probe-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            probe.assign(todo)
            pending = {tp.partition for tp in todo}
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                msg = probe.poll(0.2)
                if msg is None:
                    continue
                if msg.error() is None or msg.error().code() != KafkaError._PARTITION_EOF:
                    return True
                pending.discard(msg.partition())
            return bool(pending)
        finally:
            probe.close()


def start_member(s: Stack, name: str) -> subprocess.Popen[bytes]:
    """A worker with its own state directory (another host, hence another static member),
    whose consumer-group member is recognisable by its client.id."""
    return s.start_worker(f"state-{name}", client_id=name)


def partition_counts(admin: AdminClient, names: list[str]) -> dict[str, int]:
    """Partitions of each topic. Topics created a moment ago: the broker answers
    CreateTopics once the controller has them, and its own metadata may lag a little."""

    def listed() -> dict[str, int] | None:
        meta = admin.list_topics(timeout=10).topics
        if not all(name in meta and meta[name].error is None for name in names):
            return None
        return {name: len(meta[name].partitions) for name in names}

    counts: dict[str, int] = wait_until(listed, timeout=30, what=f"the topics {names}")
    return counts


def topic_partitions(s: Stack) -> dict[str, int]:
    """Partitions per topic role; not the peer table's, which has one (every worker reads
    it whole)."""
    roles = {
        role: name
        for role, name in s.cfg.topics.model_dump().items()
        if isinstance(name, str) and role != "peers"
    }
    counts = partition_counts(AdminClient(s.cfg.kafka.client_config()), list(roles.values()))
    return {role: counts[name] for role, name in roles.items()}


# ------------------------------------------------------------------- 1. SIGKILL of one of two


@pytest.mark.serial  # bounds the take-over and catch-up times: measured alone
@pytest.mark.timeout(240)
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_survivor_takes_over_a_sigkilled_worker(
    stack: Callable[..., Stack], tmp_path: Path, guarantee: str
) -> None:
    began = time.monotonic()
    eos = guarantee == "exactly-once"
    s = stack(
        topics__partitions=PARTITIONS,
        kafka__processing_guarantee=guarantee,
        kafka__librdkafka=FAST_FAILOVER,
        **QUIET,
        **DETECTORS,
    )
    traffic = scale_traffic()
    reference = replay_pages(s, traffic.history + traffic.live, tmp_path)
    # The reference itself must page every episode, and nothing else: else this test proves
    # nothing about them.
    assert {(p["machine_id"], p["detector"]) for p in reference} == set(traffic.episodes.items())

    s.create_topics()
    assert set(topic_partitions(s).values()) == {PARTITIONS}
    view = GroupView(s)
    assert view.partitions[s.cfg.peers_topic] == 1
    try:
        victim = start_member(s, "victim")
        survivor = start_member(s, "survivor")
        everything = set(range(PARTITIONS))
        # Each worker owns input partition p with repartition partition p (range assignor).
        wait_until(
            lambda: (
                (m := view.members()).keys() == {"victim", "survivor"}
                and all(
                    m[w][view.events] and m[w][view.repartition] == m[w][view.events] for w in m
                )
                and m["victim"][view.events] | m["survivor"][view.events] == everything
            ),
            timeout=90,
            what="two workers sharing the eight partitions",
        )
        s.send(traffic.history)
        wait_until(lambda: view.caught_up(eos), timeout=120, what="history committed")
        a_end = view.ends(view.events)
        assert all(a_end.values()), f"every input partition carries machines: {a_end}"
        owned = view.members()["victim"]
        mine = owned[view.events]
        assert owned[view.repartition] == mine, owned
        live_on = Counter(
            murmur2_partition(e["machine_id"].encode(), PARTITIONS) for e in traffic.live
        )
        archive_before = view.ends(view.archive)

        def victim_progress() -> float:
            """Share of its live input the victim has ingested, committed or not: its
            machines' archive records (their archive partitions are their input partitions,
            both murmur2 of the machine) as far as the broker has them."""
            try:
                written = view.ends(view.archive)
            except KafkaException:
                return 0.0
            return sum(written[p] - archive_before[p] for p in mine) / sum(live_on[p] for p in mine)

        # Sent from another thread (paced, see send_paced) while this one watches, so the kill
        # cannot come late.
        # Offsets commit once a second, in steps too coarse to aim at; the records the victim
        # writes show it working: under exactly-once, inside an open transaction.
        sender = threading.Thread(target=send_paced, args=(s, traffic.live))
        sender.start()
        try:

            def in_transaction() -> bool:
                """Exactly-once: the victim has archive records in an open transaction (past
                the last stable offset), so the kill lands inside it and aborts them."""
                if not eos:
                    return True
                try:
                    written = view.ends(view.archive)
                    stable = view.ends(view.archive, stable=True)
                except KafkaException:
                    return False
                return any(written[p] > stable[p] for p in mine)

            progress = wait_until(
                lambda: (x := victim_progress()) >= 0.1 and in_transaction() and x,
                timeout=60,
                interval=0.02,
                what="the victim to be part-way through the live phase",
            )
            victim.kill()
            victim.wait()
            killed = time.monotonic()
            # Every archive record from here on is the survivor's: the victim writes no more,
            # and the survivor owns none of its partitions before the victim's session ends.
            killed_at_archive = view.ends(view.archive)
        finally:
            sender.join(60)
        assert view.ends(view.events) == {p: a_end[p] + live_on[p] for p in a_end}
        assert progress < 0.5, (
            f"the victim had done {progress:.0%} of its live input before the kill; the "
            "episodes might already be behind it (make the live phase longer)"
        )
        wait_until(
            lambda: (
                view.members()
                == {"survivor": {view.events: everything, view.repartition: everything}}
            ),
            timeout=60,
            what="the survivor to own all sixteen partitions",
        )
        takeover_s = time.monotonic() - killed
        wait_until(lambda: view.caught_up(eos), timeout=150, what="the survivor to catch up")
        caught_up_s = time.monotonic() - killed
        assert survivor.poll() is None
        # Keyed by machine id with murmur2, every event was in its machine's partition.
        forwarded = sum(view.ends(view.repartition).values())
    finally:
        view.close()
    assert forwarded == 0, f"{forwarded} records on the repartition topic"
    # The victim's session ended after FAST_FAILOVER's session.timeout.ms, not after the
    # default kafka.session_timeout_s: the librdkafka setting won...
    assert takeover_s < DEFAULT_SESSION_TIMEOUT_S - 15, (
        f"the survivor took over {takeover_s:.1f} s after the kill: FAST_FAILOVER's "
        f"session.timeout.ms did not apply (default {DEFAULT_SESSION_TIMEOUT_S:.0f} s)"
    )
    if eos:
        # ...and so did its transaction.timeout.ms: the victim's open transaction, which
        # held back every read_committed reader until aborted, did not last the default.
        assert caught_up_s < DEFAULT_TRANSACTION_TIMEOUT_S - 10, (
            f"caught up {caught_up_s:.1f} s after the kill: FAST_FAILOVER's "
            "transaction.timeout.ms did not apply (default "
            f"{DEFAULT_TRANSACTION_TIMEOUT_S:.0f} s)"
        )

    # (a) Every valid event is in the committed archive, and nothing else is; each in the
    # archive partition of its machine's input partition.
    records = s.read("archive")
    archive = Counter(event_id_of(m.key()) for m in records)
    assert traffic.ids - set(archive) == set()
    assert set(archive) - traffic.ids == set()
    misplaced = [
        (event_id_of(m.key()), m.partition())
        for m in records
        if m.partition() != murmur2_partition(machine_of(m.key()).encode(), PARTITIONS)
    ]
    assert not misplaced, f"archive records outside their machine's partition: {misplaced[:5]}"
    archive_duplicates = sum(n - 1 for n in archive.values())

    # (b) Every page of the uninterrupted reference is paged.
    pages = kafka_pages(s)
    seen = Counter(page_key(p) for p in pages)
    expected = {page_key(p) for p in reference}
    missing = expected - set(seen)
    extra = set(seen) - expected
    # (c) The same page twice: the same alert opened (or escalated to a severity) again.
    page_duplicates = sum(n - 1 for n in seen.values())

    # Episodes the survivor judged on partitions it took over: archived, hence detected in
    # the same pass, after the kill, so on baselines restored from the changelog (too little
    # of the live phase is left before them to warm a machine from scratch).
    where = archive_positions(s)
    taken_over = sorted(
        p["machine_id"]
        for p in pages
        if p["status"] == "opened"
        and (pos := where.get(p["event_ids"][0])) is not None
        and pos[0] in mine
        and pos[1] >= killed_at_archive[pos[0]]
    )
    aborted = len(s.read("archive", isolation="read_uncommitted")) - archive.total()
    print(
        f"\n[{guarantee}] {len(traffic.ids)} events on {PARTITIONS} partitions, "
        f"{len(MACHINES)} machines; victim owned input and repartition {sorted(mine)}, "
        f"killed at {progress:.0%} of its live input; survivor owned everything "
        f"{takeover_s:.1f} s later, caught up after {caught_up_s:.1f} s; episodes it judged "
        f"on taken-over partitions: {taken_over}; archive duplicates {archive_duplicates}, "
        f"aborted archive records {aborted}; pages {len(expected)} expected, {len(seen)} "
        f"distinct, {len(missing)} missing, {len(extra)} not in the reference, "
        f"{page_duplicates} duplicate pages; {time.monotonic() - began:.0f} s"
    )
    assert not missing, f"pages lost: {sorted(missing)}"
    assert taken_over, "no episode was judged by the survivor on a partition it took over"
    if eos:
        assert archive_duplicates == 0
        assert page_duplicates == 0
        assert not extra, f"pages an uninterrupted run does not make: {sorted(extra)}"
        # The kill landed inside a transaction: its records were written, then aborted.
        assert aborted > 0


# ---------------------------------------------------------------- 2. the broker restarts


@pytest.mark.serial  # samples the worker's pace around the restart: measured alone
@pytest.mark.timeout(240)
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_worker_rides_out_a_broker_restart(
    private_broker: str, tmp_path: Path, guarantee: str
) -> None:
    began = time.monotonic()
    eos = guarantee == "exactly-once"
    s = Stack(
        tmp_path,
        private_broker,
        f"broker-restart-{guarantee}",
        topics__partitions=4,
        kafka__processing_guarantee=guarantee,
        **QUIET,
    )
    machines = MACHINES[:20]
    before = sorted(
        (e for m in machines for e in steady(m, BASE_MS, BASE_MS + 20 * MINUTE_MS)),
        key=lambda e: e["timestamp"],
    )
    after = [
        e for m in machines for e in steady(m, BASE_MS + 20 * MINUTE_MS, BASE_MS + 25 * MINUTE_MS)
    ]
    view = None
    try:
        s.create_topics()
        view = GroupView(s)
        # All of it waits in the input topic before the worker starts: it then goes through
        # at its own pace, which the watch below samples undisturbed by a sending thread.
        s.send(before)
        assert sum(view.ends(view.events).values()) == len(before), "not all sent"
        archive_before = view.ends(view.archive)
        worker = s.start_worker()

        def written() -> int:
            """Events ingested so far, committed or not (their archive records)."""
            try:
                ends = view.ends(view.archive)
            except KafkaException:
                return 0
            return sum(ends[p] - archive_before[p] for p in ends)

        # Mid-run: the worker is part-way through, inside a transaction under exactly-once.
        done = wait_until(
            lambda: (n := written()) >= len(before) * 0.2 and n,
            timeout=90,
            interval=0.02,
            what="the worker to be part-way through",
        )
        committed = sum(view.committed(view.events).values())
        assert done < len(before) * 0.8, f"the worker was nearly done ({done}/{len(before)})"
        assert kafka_local.stop(timeout=30), "the private broker was not running"
        down = time.monotonic()
        assert kafka_local.start(timeout=90) == private_broker
        downtime = time.monotonic() - down
        assert worker.poll() is None, "the worker died while the broker was down"
        s.send(after)
        wait_until(lambda: view.caught_up(eos), timeout=150, what="the worker to catch up")
        assert worker.poll() is None
        ids = {e["event_id"]: e for e in before + after}
        archive: Counter[str] = Counter()
        for m in s.read("archive"):
            record = decode_wire(m.value(), "archive_record")
            event_id = event_id_of(m.key())
            sent = ids.get(event_id)
            assert sent is not None, f"archived an event never sent: {m.key()!r}"
            got = record["event"]
            assert (got["machine_id"], got["resource"], got["operation"]) == (
                sent["machine_id"],
                sent["resource"],
                sent["operation"],
            )
            assert machine_of(m.key()) == sent["machine_id"], m.key()
            archive[event_id] += 1
        assert set(ids) - set(archive) == set(), "events lost across the broker restart"
        duplicates = sum(n - 1 for n in archive.values())
        print(
            f"\n[{guarantee}] {len(ids)} events; broker stopped once the worker had ingested "
            f"{done}/{len(before)} ({committed} committed), back {downtime:.1f} s later; "
            f"archive duplicates {duplicates}; {time.monotonic() - began:.0f} s"
        )
        if eos:
            assert duplicates == 0
    except BaseException:
        print(s.worker_logs())
        raise
    finally:
        if view is not None:
            view.close()
        s.stop_all()


# ------------------------------------------------------------ 3. clean stop, then restart


@pytest.mark.timeout(180)
def test_clean_restart_resumes_from_committed_offsets_with_its_baselines(
    stack: Callable[..., Stack],
) -> None:
    s = stack(topics__partitions=4, http__port=0, monitoring__input_quiet_s=0, **DETECTORS)
    s.create_topics()
    machines = MACHINES[:6]
    split = BASE_MS + 12 * MINUTE_MS
    history = sorted(
        (e for m in machines for e in steady(m, BASE_MS, split)), key=lambda e: e["timestamp"]
    )
    later = [e for m in machines for e in steady(m, split, split + 3 * MINUTE_MS)]
    probe = episode("new_resource", machines[0], split + 3 * MINUTE_MS)
    view = GroupView(s)
    try:
        first = s.start_worker()
        s.send(history)
        wait_until(lambda: view.caught_up(False), timeout=120, what="history committed")
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
        # Its normal shutdown left every offset committed...
        assert view.committed(view.events) == view.ends(view.events)

        # Same state directory: the same host restarted, the same static member.
        s.start_worker()
        s.send(later + probe)
        wait_until(lambda: view.caught_up(False), timeout=120, what="restarted worker")
        # Keyed by machine id with murmur2, every event was in its machine's partition.
        assert sum(view.ends(view.repartition).values()) == 0
    finally:
        view.close()
    # ...and the restarted worker read only what came after them: replaying from the start
    # would count the history again (as duplicates, since dedupe would catch them), and
    # detected only those (one detection per valid new event).
    metrics = scrape(worker_url(s, 1))
    assert value(metrics, "auditwatch_events_in_total") == len(later) + 1
    assert value(metrics, "auditwatch_duplicates_total") == 0
    detected = value(metrics, "auditwatch_processing_latency_seconds_count", stage="detect")
    assert detected == len(later) + 1
    archive = Counter(event_id_of(m.key()) for m in s.read("archive"))
    assert archive == Counter(e["event_id"] for e in history + later + probe)
    # Baselines survived: the learned tables are not news, the new one is.
    pages = kafka_pages(s)
    assert [(p["detector"], p["event_ids"]) for p in pages] == [
        ("new_resource", [probe[0]["event_id"]])
    ]
