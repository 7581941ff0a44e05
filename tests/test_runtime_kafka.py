"""The micro-batch runtime's guarantees (streams/runtime), held against the real broker.

1. Mis-keyed input (no key, another machine's key) goes through the repartition topic once
   and is archived once, with the place and digest of the original record.
2. A SIGKILLed worker restarted on its state directory: under exactly-once every event is
   archived once and no alert state is written twice; under at-least-once nothing is lost;
   either way it is consuming again within 10 s (static membership, transactions fenced).
3. The broker stopped for 90 s under running workers (one of each guarantee): they stay up
   and finish the work by themselves once it is back.
4. A second worker joins mid-stream and is later stopped: nothing lost, and each machine's
   state follows its partition to the new owner and back.

Each test prints what it measured; run with `-rP` or `-s` to see it.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.codec import decode_wire, encode_event_avro, sha256
from schemas.event import format_rfc3339_ms
from streams.ops import kafka_local
from streams.runtime.routing import forwarded_origin, murmur2_partition
from streams.tools.producer import to_avro_record
from tests.conftest import Stack, wait_until
from tests.traffic import BASE_MS

pytestmark = pytest.mark.kafka

PARTITIONS = 4
SEP = "\x1f"
# Eight machines, each its own peer group (no replica suffix), covering the four partitions.
MACHINES = [f"svc{i:02d}-worker" for i in range(8)]
GUARANTEES = ["at-least-once", "exactly-once"]
# Quick to warm, so episodes page within minutes of event time.
DETECTORS = {"detectors__warmup_s": 600, "detectors__warmup_events": 20}
# No HTTP endpoint (workers of concurrent tests would contend for its port) and no
# input-quiet watch (for topics idle for many minutes).
QUIET = {"http__enabled": False, "monitoring__input_quiet_s": 0}


def home(machine: str) -> int:
    return murmur2_partition(machine.encode(), PARTITIONS)


def archive_key(event: dict[str, Any]) -> str:
    return event["machine_id"] + SEP + event["event_id"]


def avro(event: dict[str, Any]) -> bytes:
    return encode_event_avro(to_avro_record(event, int(time.time() * 1000)))


# ------------------------------------------------------------------------------------ traffic


def event(machine: str, t: int, resource: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{machine}-{t}",
        "timestamp": t,
        "machine_id": machine,
        "resource": resource,
        "operation": "SELECT",
        "outcome": "SUCCESS",
        **extra,
    }


def steady(machine: str, start_ms: int, end_ms: int, every_ms: int = 1000) -> list[dict[str, Any]]:
    """One SELECT every `every_ms` over the machine's own four tables."""
    i = MACHINES.index(machine)
    return [
        event(machine, t, f"postgres://db{i}/public.t{k % 4}")
        for k, t in enumerate(range(start_ms + i * 97, end_ms, every_ms))
    ]


def episode(kind: str, machine: str, at: int) -> list[dict[str, Any]]:
    """Something that pages on a warm machine."""
    i = MACHINES.index(machine)
    if kind == "new_resource":
        return [
            {
                **event(machine, at, f"postgres://db{i}/public.payroll{at}"),
                "event_id": f"ep-{machine}-{at}",
            }
        ]
    if kind == "fan_out":
        return [
            {
                **event(machine, at + j * 500, f"secrets://prod/team-{at}-{j}/token"),
                "event_id": f"ep-{machine}-{at}-{j}",
                "operation": "GetSecretValue",
            }
            for j in range(12)
        ]
    if kind == "failure_ratio":
        return [
            {
                **event(machine, at + j * 3000, f"postgres://db{i}/public.t{j % 4}"),
                "event_id": f"ep-{machine}-{at}-{j}",
                "outcome": "DENIED",
            }
            for j in range(10)
        ]
    return [
        {
            **event(machine, at, f"postgres://db{i}/public.t1"),
            "event_id": f"ep-{machine}-{at}",
            "operation": "DROP",
        }
    ]


def busy_traffic(hours: float = 1.5) -> list[dict[str, Any]]:
    """Eight machines at one event a second, with an episode on each every seven minutes
    once warm: about 44,000 events and a few dozen alert states, in event-time order."""
    end = BASE_MS + int(hours * 3600_000)
    kinds = ["new_resource", "fan_out", "failure_ratio", "operation"]
    events: list[dict[str, Any]] = []
    for i, m in enumerate(MACHINES):
        events += steady(m, BASE_MS, end)
        for j, at in enumerate(range(BASE_MS + 20 * 60_000 + i * 5000, end - 60_000, 7 * 60_000)):
            events += episode(kinds[(i + j) % 4], m, at + 500)
    events.sort(key=lambda e: e["timestamp"])
    return events


# -------------------------------------------------------------------- watching the group


class Group:
    """The workers' consumer group as the broker sees it: committed offsets, how far the
    input is written, the members and their input partitions. Its clients never subscribe,
    so they never join the group."""

    def __init__(self, s: Stack) -> None:
        conf = {**s.cfg.kafka.client_config(), "log_level": 2}
        self.topic = s.cfg.topics.events
        self.group = s.cfg.kafka.consumer_group
        # Offset lookups answer per the asking consumer's isolation level: read_committed
        # (the default) gets the last stable offset, short of any open transaction.
        self.consumer = Consumer({**conf, "group.id": self.group, "enable.auto.commit": False})
        self.raw = Consumer(
            {**conf, "group.id": f"{self.group}-view", "isolation.level": "read_uncommitted"}
        )
        self.admin = AdminClient(conf)
        self.partitions = s.cfg.topics.partitions
        self.parts = [TopicPartition(self.topic, p) for p in range(self.partitions)]

    def close(self) -> None:
        self.consumer.close()
        self.raw.close()

    def uncommitted(self, topic: str) -> int | None:
        """Records of `topic` past its last stable offset: in transactions still open."""
        try:
            return sum(
                self.raw.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                - self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(self.partitions)
            )
        except KafkaException:
            return None

    def committed(self) -> dict[int, int] | None:
        """Committed input offset per partition (0: none yet); None if the broker cannot
        say right now (a coordinator moving, a broker restarting)."""
        try:
            got = self.consumer.committed(self.parts, timeout=10)
        except KafkaException:
            return None
        return {tp.partition: max(tp.offset, 0) for tp in got}

    def ends(self) -> dict[int, int] | None:
        try:
            return {
                tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10)[1]
                for tp in self.parts
            }
        except KafkaException:
            return None

    def done(self) -> int | None:
        """Input records committed, or None."""
        c = self.committed()
        return None if c is None else sum(c.values())

    def caught_up(self, total: int | None = None) -> bool:
        """Every input record (and at least `total`) processed and committed."""
        c, e = self.committed(), self.ends()
        if c is None or e is None:
            return False
        return c == e and (total is None or sum(e.values()) >= total)

    def members(self) -> dict[str, set[int]]:
        """client.id -> its input partitions; {} while the group is (re)forming."""
        try:
            desc = self.admin.describe_consumer_groups([self.group], request_timeout=10)
            got = desc[self.group].result()
        except KafkaException:
            return {}
        return {
            m.client_id: {
                tp.partition for tp in m.assignment.topic_partitions if tp.topic == self.topic
            }
            for m in got.members
        }


@pytest.fixture
def group_of() -> Iterator[Callable[[Stack], Group]]:
    made: list[Group] = []

    def make(s: Stack) -> Group:
        made.append(Group(s))
        return made[-1]

    yield make
    for g in made:
        g.close()


def story(s: Stack, lines: int = 60) -> str:
    """The workers' own log lines, and librdkafka's warnings but for refused connections."""
    out = []
    for log in sorted(s.root.glob("worker-*.log")):
        kept = [
            line[:300]
            for line in log.read_text(errors="replace").splitlines()
            if re.match(r"\d{4}-", line)
            and "Connect to" not in line
            and ("auditwatch.librdkafka" not in line or " INFO " not in line)
            and "METADATAUPDATE" not in line
        ]
        out.append(f"--- {log}\n" + "\n".join(kept[-lines:]))
    return "\n".join(out)


def archived(s: Stack) -> Counter[str]:
    return Counter(m.key().decode() for m in s.read("archive"))


def aborted_archive_records(s: Stack) -> int:
    return len(s.read("archive", isolation="read_uncommitted")) - len(s.read("archive"))


# ---------------------------------------------------------------- 1. mis-keyed input


@pytest.mark.timeout(180)
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_miskeyed_events_are_forwarded_once_and_archived_once_with_their_origin(
    stack: Callable[..., Stack], group_of: Callable[[Stack], Group], guarantee: str
) -> None:
    began = time.monotonic()
    s = stack(topics__partitions=PARTITIONS, kafka__processing_guarantee=guarantee, **QUIET)
    s.create_topics()
    s.start_worker()
    events_topic = s.cfg.topics.events
    sent: dict[str, tuple[dict[str, Any], bytes, str]] = {}  # archive key -> (event, value, how)
    messages: list[tuple[str, bytes | None, bytes, int | None]] = []  # (archive key, key, ...)
    for m in MACHINES:
        here = home(m)
        for k in range(12):
            e = event(m, BASE_MS + k * 1000 + MACHINES.index(m), f"postgres://db/public.t{k % 3}")
            value = avro(e)
            if k % 3 == 0:
                how, key, partition = "keyed", m.encode(), None
            elif k % 3 == 1:
                # No key: placed by hand in a partition that is not the machine's.
                how, key, partition = "no_key", None, (here + 1) % PARTITIONS
            else:
                # Another machine's key (one that hashes elsewhere), placed by murmur2.
                other = next(o for o in MACHINES if home(o) != here)
                how, key, partition = "other_key", other.encode(), None
            sent[archive_key(e)] = (e, value, how)
            messages.append((archive_key(e), key, value, partition))

    delivered: dict[str, tuple[int, int]] = {}  # archive key -> (partition, offset)

    def on_delivery(err: Any, msg: Any, ak: str) -> None:
        assert err is None, err
        delivered[ak] = (msg.partition(), msg.offset())

    producer = Producer({**s.cfg.kafka.client_config(), "partitioner": "murmur2"})
    for ak, key, value, partition in messages:
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        producer.produce(
            events_topic,
            value=value,
            key=key,
            on_delivery=lambda err, msg, ak=ak: on_delivery(err, msg, ak),
            **kwargs,
        )
    assert producer.flush(30) == 0
    assert len(delivered) == len(sent)
    for ak, (e, _value, how) in sent.items():
        arrived = delivered[ak][0]
        assert (arrived == home(e["machine_id"])) == (how == "keyed"), (ak, how, arrived)

    group = group_of(s)
    wait_until(lambda: group.caught_up(len(sent)), timeout=90, what="the input committed")
    archive = wait_until(
        lambda: (a := s.read("archive")) and len({m.key() for m in a}) >= len(sent) and a,
        timeout=90,
        what="every event archived",
    )
    counts = Counter(m.key().decode() for m in archive)
    assert set(counts) == set(sent)
    assert [k for k, n in counts.items() if n > 1] == [], "archived more than once"

    for m in archive:
        e, value, how = sent[m.key().decode()]
        record = decode_wire(m.value(), "archive_record")
        assert record["event"]["event_id"] == e["event_id"]
        assert record["event"]["machine_id"] == e["machine_id"]
        # The original record: where it was produced, and the digest of its bytes, also for
        # events that reached their machine's task through the repartition topic.
        assert (
            record["original_topic"],
            record["original_partition"],
            record["original_offset"],
        ) == (events_topic, *delivered[m.key().decode()]), how
        assert record["original_sha256"] == sha256(value), how
        assert record["original_format"] == "AVRO"

    # The repartition topic carries each mis-keyed event once, in its machine's partition,
    # keyed by machine id, with the original bytes and where they came from; nothing else.
    by_value = {value: ak for ak, (_e, value, _how) in sent.items()}
    forwarded: Counter[str] = Counter()
    for m in s.read("detect"):
        ak = by_value.get(m.value())
        assert ak is not None, f"a record on the repartition topic that was never sent: {m.key()!r}"
        e, _value, how = sent[ak]
        assert how != "keyed", f"a correctly keyed event was forwarded: {ak!r}"
        assert m.key() == e["machine_id"].encode()
        assert m.partition() == home(e["machine_id"])
        origin = forwarded_origin(m.headers())
        assert origin is not None
        assert (origin.topic, origin.partition, origin.offset) == (events_topic, *delivered[ak])
        forwarded[ak] += 1
    miskeyed = {ak for ak, (_e, _v, how) in sent.items() if how != "keyed"}
    assert set(forwarded) == miskeyed
    assert [k for k, n in forwarded.items() if n > 1] == [], "forwarded more than once"
    print(
        f"\n[{guarantee}] {len(sent)} events, {len(miskeyed)} mis-keyed and forwarded once; "
        f"{time.monotonic() - began:.0f} s"
    )


# ---------------------------------------------------------------- 2. SIGKILL and restart


def startup_timeline(log: Path) -> str:
    """A worker's own log lines up to its first assignment, timed from its first line."""
    lines = []
    start = None
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ (auditwatch[.\w]*): (.*)", line)
        if m is None or m.group(3) == "auditwatch.librdkafka":
            continue
        at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        start = at if start is None else start
        lines.append(f"  +{at - start:5.2f} s {m.group(4)[:110]}")
        if "assigned partitions" in line:
            break
    return "\n".join(lines)


@pytest.mark.serial  # resumes within 10 s: measured alone
@pytest.mark.timeout(240)
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_sigkilled_worker_restarts_on_its_state_within_seconds(
    stack: Callable[..., Stack], group_of: Callable[[Stack], Group], guarantee: str
) -> None:
    began = time.monotonic()
    eos = guarantee == "exactly-once"
    # The default partition count: a restart restores every one of them.
    s = stack(
        topics__partitions=8,
        kafka__processing_guarantee=guarantee,
        kafka__commit_interval_s=1.0,
        **QUIET,
        **DETECTORS,
    )
    s.create_topics()
    group = group_of(s)
    traffic = busy_traffic()
    total = len(traffic)
    first = s.start_worker()
    s.send(traffic)
    # Mid-stream: some of the input committed, most not; under exactly-once, inside a
    # transaction that has written archive records already.
    at_kill = wait_until(
        lambda: (
            (n := group.done()) is not None
            and n >= total * 0.15
            and (not eos or (group.uncommitted(s.cfg.topics.archive) or 0) > 0)
            and n
        ),
        timeout=90,
        interval=0.02,
        what="the worker to be part-way through",
    )
    first.kill()
    first.wait()
    committed_at_kill = group.done()
    assert committed_at_kill is not None
    assert committed_at_kill < total * 0.8, (
        f"the kill came late ({committed_at_kill}/{total} committed)"
    )

    restarted = time.monotonic()
    second = s.start_worker()  # the same state directory: the same instance id
    # Its first commit of new progress (so within one commit interval of consuming again).
    wait_until(
        lambda: (n := group.done()) is not None and n > committed_at_kill,
        timeout=30,
        interval=0.1,
        what="the restarted worker to commit progress",
    )
    resumed_s = time.monotonic() - restarted
    timeline = startup_timeline(s.root / "worker-1.log")
    wait_until(lambda: group.caught_up(total), timeout=150, what="the restarted worker to finish")
    caught_up_s = time.monotonic() - restarted
    assert second.poll() is None

    counts = archived(s)
    expected = {archive_key(e) for e in traffic}
    missing = expected - set(counts)
    duplicates = {k: n for k, n in counts.items() if n > 1}
    alerts = [m.value() for m in s.read("alerts")]
    alert_dups = {v: n for v, n in Counter(alerts).items() if n > 1}
    aborted = aborted_archive_records(s) if eos else 0
    print(
        f"\n[{guarantee}] {total} events; killed after {at_kill} committed ({committed_at_kill} "
        f"at the kill); restarted worker committed progress {resumed_s:.1f} s after its start, "
        f"caught up after {caught_up_s:.1f} s; archive: {len(missing)} missing, "
        f"{sum(n - 1 for n in duplicates.values())} duplicates, {aborted} aborted records; "
        f"{len(alerts)} alert states, {len(alert_dups)} written twice; "
        f"{time.monotonic() - began:.0f} s"
    )
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected
    assert resumed_s <= 10, (
        f"the restarted worker took {resumed_s:.1f} s to resume; its start:\n{timeline}"
    )
    if eos:
        assert not duplicates, f"archived twice: {sorted(duplicates)[:5]}"
        assert len(alerts) > 20, "the traffic should raise alerts"
        assert not alert_dups, (
            f"alert states written twice: {[orjson.loads(v) for v in alert_dups][:3]}"
        )
        # The kill landed inside a transaction, whose records readers never see.
        assert aborted > 0


# ---------------------------------------------------------------- 3. broker outage


@contextlib.contextmanager
def broker_held_down() -> Iterator[None]:
    """Keep other processes from starting the local broker meanwhile: kafka_local starts and
    stops it under an exclusive flock of `<run dir>/.lock`, so the test suite of another
    checkout of this run dir (its conftest starts the broker when none runs) waits for the
    outage to end instead of cutting it short."""
    lock = kafka_local.run_dir() / ".lock"
    with lock.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


OUTAGE_S = 90


@pytest.mark.slow
@pytest.mark.serial  # gives the workers 120 s after the broker is back: measured alone
@pytest.mark.timeout(480)
def test_workers_ride_out_a_broker_outage(
    tmp_path: Path,
    private_broker: str,
    group_of: Callable[[Stack], Group],
) -> None:
    """A broker is stopped for 90 s under two running workers (one of each guarantee) and
    started again on the same data and port (a broker of this test's own: the shared one
    stays up for the tests that run meanwhile); this test restarts it whatever happens."""
    bootstrap = private_broker
    began = time.monotonic()
    stacks: dict[str, Stack] = {}
    for guarantee in GUARANTEES:
        root = tmp_path / guarantee
        root.mkdir()
        stacks[guarantee] = Stack(
            root,
            bootstrap,
            f"outage-{guarantee}",
            topics__partitions=PARTITIONS,
            kafka__processing_guarantee=guarantee,
            **QUIET,
        )
    before = [e for m in MACHINES for e in steady(m, BASE_MS, BASE_MS + 3600_000)]
    before.sort(key=lambda e: e["timestamp"])
    after = [e for m in MACHINES for e in steady(m, BASE_MS + 3600_000, BASE_MS + 3900_000)]
    groups: dict[str, Group] = {}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    stopped = False
    try:
        for g, s in stacks.items():
            s.create_topics()
            groups[g] = group_of(s)
            workers[g] = s.start_worker()
        for s in stacks.values():
            s.send(before)
        done_before = wait_until(
            lambda: (
                all((n := grp.done()) and n > 0 for grp in groups.values())
                and {g: grp.done() for g, grp in groups.items()}
            ),
            timeout=90,
            interval=0.05,
            what="both workers to have committed some of the input",
        )
        assert any(n < len(before) for n in done_before.values()), "both were done already"
        assert kafka_local.stop(timeout=30), "the broker was not running"
        stopped = True
        down = time.monotonic()
        with broker_held_down():
            while time.monotonic() - down < OUTAGE_S:  # the outage itself, not a wait
                for g, w in workers.items():
                    assert w.poll() is None, f"the {g} worker exited during the outage"
                time.sleep(1)
        assert kafka_local.start(timeout=120) == bootstrap
        stopped = False
        back = time.monotonic()
        for g, w in workers.items():
            assert w.poll() is None, f"the {g} worker exited during the outage"
        for s in stacks.values():
            s.send(after)
        total = len(before) + len(after)
        for g, grp in groups.items():
            wait_until(
                lambda grp=grp: grp.caught_up(total),
                timeout=120,
                what=f"the {g} worker to finish after the outage",
            )
        resumed_s = time.monotonic() - back
        expected = {archive_key(e) for e in before + after}
        report = []
        for g, s in stacks.items():
            assert workers[g].poll() is None, f"the {g} worker exited"
            counts = archived(s)
            missing = expected - set(counts)
            assert not missing, f"{g}: {len(missing)} events lost, e.g. {sorted(missing)[:5]}"
            assert set(counts) == expected
            duplicates = sum(n - 1 for n in counts.values())
            report.append(f"{g}: {done_before[g]} committed before the stop, {duplicates} dups")
            if g == "exactly-once":
                assert duplicates == 0
        print(
            f"\nbroker down {OUTAGE_S} s, back after {back - down:.0f} s; both workers done "
            f"{resumed_s:.0f} s later; {'; '.join(report)}; {time.monotonic() - began:.0f} s"
        )
    except BaseException:
        for s in stacks.values():
            print(story(s))
        raise
    finally:
        try:
            if stopped or kafka_local.status() is None:
                kafka_local.start(timeout=120)
        finally:
            for s in stacks.values():
                s.stop_all()


# ---------------------------------------------------------------- 4. rebalance


def http_url(s: Stack, index: int) -> str:
    """The address worker `index` logged (http.port 0: a free port of its choosing)."""
    log = s.root / f"worker-{index}.log"

    def address() -> str | None:
        m = re.search(r"on http://(127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        return m.group(1) if m else None

    return "http://" + wait_until(address, timeout=60, what=f"worker {index}'s HTTP address")


def explain(url: str, machine: str) -> dict[str, Any] | None:
    """/machines/ID from the worker at `url`, or None if it does not own the machine."""
    try:
        r = httpx.get(f"{url}/machines/{machine}", timeout=30)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


class Stream:
    """Live traffic from a thread: the eight machines' steady SELECTs, one event-second of
    all of them every `pace_s`, from `start_ms` on, until stopped."""

    def __init__(self, s: Stack, start_ms: int, pace_s: float = 0.008) -> None:
        self.s = s
        self.t = start_ms
        self.pace_s = pace_s
        self.sent: list[dict[str, Any]] = []
        self.unsent = -1
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = Producer(
            {**self.s.cfg.kafka.client_config(), "linger.ms": 20, "partitioner": "murmur2"}
        )
        topic = self.s.cfg.topics.events
        while not self.stop.is_set():
            for i, m in enumerate(MACHINES):
                t = self.t + i * 97
                e = event(m, t, f"postgres://db{i}/public.t{(t // 1000) % 4}")
                producer.produce(topic, key=m.encode(), value=avro(e))
                self.sent.append(e)
            self.t += 1000
            producer.poll(0)
            self.stop.wait(self.pace_s)  # the stream's rate, not a synchronisation
        self.unsent = producer.flush(60)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(90)
        assert self.unsent == 0, "the stream's producer did not deliver everything"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_state_follows_partitions_when_a_worker_joins_and_leaves(
    stack: Callable[..., Stack], group_of: Callable[[Stack], Group], guarantee: str
) -> None:
    began = time.monotonic()
    eos = guarantee == "exactly-once"
    s = stack(
        topics__partitions=PARTITIONS,
        kafka__processing_guarantee=guarantee,
        # Static members do not leave the group on SIGTERM: their partitions move once the
        # session times out.
        kafka__session_timeout_s=6,
        http__port=0,
        monitoring__input_quiet_s=0,
        **DETECTORS,
    )
    s.create_topics()
    group = group_of(s)
    everything = set(range(PARTITIONS))
    s.start_worker(client_id="first")
    first_url = http_url(s, 0)
    # Twenty minutes of history: every machine warm, its four tables learned.
    history_end = BASE_MS + 20 * 60_000
    history = sorted(
        (e for m in MACHINES for e in steady(m, BASE_MS, history_end)), key=lambda e: e["timestamp"]
    )
    s.send(history)
    wait_until(lambda: group.caught_up(len(history)), timeout=90, what="history committed")
    first_seen = {m: min(e["timestamp"] for e in history if e["machine_id"] == m) for m in MACHINES}
    learned = Counter(e["machine_id"] for e in history)

    def known(url: str, m: str, at_least: int) -> dict[str, Any] | None:
        """The machine's state at `url` if it is there, learned from its first event on."""
        got = explain(url, m)
        if got is None or got["events"] < at_least:
            return None
        return got

    for m in MACHINES:
        got = known(first_url, m, learned[m])
        assert got is not None and got["warmup"]["own"], (m, got)
    with Stream(s, history_end) as stream:
        wait_until(
            lambda: (n := group.done()) is not None and n > len(history) + 200,
            timeout=60,
            what="the first worker to process live traffic",
        )
        second = s.start_worker("state-second", client_id="second")
        second_url = http_url(s, 1)
        members = wait_until(
            lambda: (
                (m := group.members()).keys() == {"first", "second"}
                and all(m.values())
                and m["first"] | m["second"] == everything
                and m
            ),
            timeout=60,
            what="two workers sharing the partitions",
        )
        at_join = group.committed()
        assert at_join is not None
        moved = [m for m in MACHINES if home(m) in members["second"]]
        assert moved, members
        # The second worker serves the machines of its partitions with their whole history.
        for m in moved:
            got = wait_until(
                lambda m=m: known(second_url, m, learned[m]),
                timeout=60,
                what=f"the second worker to know {m}",
            )
            assert got["first_seen"] == format_rfc3339_ms(first_seen[m]), (m, got)
            assert got["warmup"]["own"], (m, got)
        assert explain(first_url, moved[0]) is None, "the first worker still answers for it"
        # Both process live traffic; then the second stops while the stream goes on.
        wait_until(
            lambda: (
                (c := group.committed()) is not None
                and all(c[p] > at_join[p] for p in members["second"])
            ),
            what="the second worker to process live traffic",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        stopped = time.monotonic()
        wait_until(
            lambda: group.members() == {"first": everything},
            timeout=60,
            what="the first worker to own every partition again",
        )
        takeover_s = time.monotonic() - stopped
        at_takeover = group.committed()
        assert at_takeover is not None
        wait_until(
            lambda: (
                (c := group.committed()) is not None
                and all(c[p] > at_takeover[p] for p in members["second"])
            ),
            timeout=60,
            what="the first worker to process the partitions it took back",
        )
    live = stream.sent
    wait_until(
        lambda: group.caught_up(len(history) + len(live)), timeout=120, what="everything committed"
    )
    everything_sent = history + live
    per_machine = Counter(e["machine_id"] for e in everything_sent)
    # The state of each machine followed its partition there and back: every one of its
    # events counted once, its first event still the first of the history, warm all along.
    for m in MACHINES:
        got = explain(first_url, m)
        assert got is not None, m
        assert got["first_seen"] == format_rfc3339_ms(first_seen[m]), (m, got)
        assert got["events"] == per_machine[m], (m, got["events"], per_machine[m])
        assert got["warmup"]["own"]
    counts = archived(s)
    expected = {archive_key(e) for e in everything_sent}
    missing = expected - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    alerts = [orjson.loads(m.value()) for m in s.read("alerts")]
    print(
        f"\n[{guarantee}] {len(everything_sent)} events; second worker owned "
        f"{sorted(members['second'])} ({', '.join(moved)}); its partitions back "
        f"{takeover_s:.1f} s after SIGTERM; archive {len(missing)} missing, {duplicates} "
        f"duplicates; {len(alerts)} alert states; {time.monotonic() - began:.0f} s"
    )
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected
    if eos:
        assert duplicates == 0
    # Steady traffic on learned tables: no machine was treated as new after a move.
    assert [(a["machine_id"], a["detector"]) for a in alerts] == []
