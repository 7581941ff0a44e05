"""Measuring instruments shared by the phases: worker processes, topic counts, preloading.

A phase's worker runs as its own process (as in production), and the harness watches it from
outside: the sum of the output topic's high watermarks says how far stage 1 got, and the
worker's CPU time (from /proc) says when it has stopped working, which is how the end of a
two-stage pipeline is seen without waiting for a commit. Peak RSS is the kernel's high-water
mark (VmHWM) of the worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.ops.config import Config

_TICK = os.sysconf("SC_CLK_TCK")
# A worker using less than this share of one core over IDLE_WINDOW_S has drained its input.
IDLE_CORE_SHARE = 0.2
IDLE_WINDOW_S = 1.0
POLL_S = 0.2


def _stat(pid: int) -> list[bytes] | None:
    """Fields of stat(5) from the 3rd on (after the ")" that closes the command name)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (replay's detection workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) and of its children, live or
    waited for; None once it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    # utime, stime, cutime, cstime: fields 14 to 17 of stat(5).
    total = sum(int(f) for f in fields[11:15])
    for child in children(pid):
        cf = _stat(child)
        if cf is not None:
            total += int(cf[11]) + int(cf[12])
    return total / _TICK


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of a process plus its live children's (an upper bound for forked
    workers: pages they still share with the parent count twice)."""
    own = _hwm_mb(pid)
    if own is None:
        return None
    return own + sum(_hwm_mb(c) or 0.0 for c in children(pid))


class Worker:
    """A subprocess with its log in a file; stopped with SIGTERM (then SIGKILL) by its pid."""

    def __init__(
        self, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
    ):
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env
        )
        self.peak_rss_mb = 0.0
        self.cpu_s = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sample(self) -> float | None:
        """Refresh CPU time and peak RSS; returns the CPU time (None once exited)."""
        cpu = cpu_seconds(self.pid)
        rss = peak_rss_mb(self.pid)
        if rss is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if cpu is not None:
            self.cpu_s = cpu
        return cpu

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        self.sample()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Workers:
    """Several workers of one consumer group, watched as one: CPU summed, peak RSS the
    largest, alive while all are. Each gets its own copy of the config with its own state
    directory (two workers must not share an event-id index or snapshots)."""

    def __init__(self, argv: list[str], phase_dir: Path, n: int, cwd: Path) -> None:
        config = Path(argv[argv.index("--config") + 1])
        data = yaml.safe_load(config.read_text())
        self.workers: list[Worker] = []
        for i in range(n):
            own = phase_dir / f"worker-{i}"
            own.mkdir(parents=True, exist_ok=True)
            data["kafka"]["state_dir"] = str(own / "state")
            # Each its own metrics endpoint (any free port), as two pods would have.
            data.setdefault("http", {})["port"] = 0
            (own / "config.yaml").write_text(yaml.safe_dump(data))
            args = [str(own / "config.yaml") if a == str(config) else a for a in argv]
            env = {**os.environ, "AUDITWATCH_INSTANCE_ID": f"{phase_dir.name}-{i}"}
            self.workers.append(Worker(args, own / "worker.log", cwd, env=env))
        self.started = min(w.started for w in self.workers)
        self.started_wall = min(w.started_wall for w in self.workers)
        self.peak_rss_mb = 0.0
        self.cpu_s = 0.0

    @property
    def pid(self) -> int:
        return self.workers[0].pid

    def sample(self) -> float | None:
        cpus = [w.sample() for w in self.workers]
        self.peak_rss_mb = max(w.peak_rss_mb for w in self.workers)
        self.cpu_s = sum(w.cpu_s for w in self.workers)
        return None if any(c is None for c in cpus) else self.cpu_s

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)

    def stop(self, timeout: float = 30.0) -> int:
        codes = [w.stop(timeout) for w in self.workers]
        return next((c for c in codes if c), 0)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- worker {i} ---\n{w.log_tail(chars // len(self.workers))}"
            for i, w in enumerate(self.workers)
        )

    def cpu_by_worker(self) -> list[float]:
        return [round(w.cpu_s, 2) for w in self.workers]


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class TopicCounter:
    """Records in a topic (sum of high minus low watermarks), polled cheaply and often."""

    def __init__(self, cfg: Config, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            {**cfg.kafka.client_config(), "group.id": "bench-counter", "enable.auto.commit": False}
        )
        self.parts: list[TopicPartition] = []
        self.last = 0

    def count(self) -> int:
        if not self.parts:
            meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                return 0
            self.parts = [TopicPartition(self.topic, p) for p in sorted(meta.partitions)]
        total = 0
        for tp in self.parts:
            try:
                low, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            except KafkaException:
                # A topic created a moment ago may not have its leaders yet: ask next time.
                return self.last
            total += max(high - low, 0)
        self.last = total
        return total

    def close(self) -> None:
        self.consumer.close()


class CommittedCounter:
    """Records of a topic visible to a read_committed reader, counted by a background thread:
    exact under exactly-once too, where transaction markers make watermarks overcount."""

    def __init__(self, cfg: Config, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        self.n = 0
        self._stop = threading.Event()
        self.consumer = Consumer(
            {
                **cfg.kafka.client_config(),
                "group.id": "bench-committed-counter",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.n += sum(1 for m in self.consumer.consume(1000, 0.1) if m.error() is None)

    def count(self) -> int:
        return self.n

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.consumer.close()


@dataclass
class Progress:
    """What a watched run did: `processed` output records by `done_s` (seconds after start);
    `complete` when it reached its target and went idle before the timeout."""

    complete: bool = False
    processed: int = 0
    first_output_s: float | None = None
    done_s: float | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    exited_early: bool = False
    projected_eps: float | None = None  # when the rate is derived rather than timed whole
    samples: list[tuple[float, int, float]] = field(default_factory=list)

    def eps(self) -> float | None:
        """Output records per second from the first output to the end of the work."""
        if self.projected_eps is not None:
            return self.projected_eps
        if self.first_output_s is None or self.done_s is None or self.processed == 0:
            return None
        span = self.done_s - self.first_output_s
        return self.processed / span if span > 0 else None

    def steady_per_cpu_s(self) -> float | None:
        """Output records per CPU-second of the worker from its first output to the end of
        its work, from the samples: the steady state, without the CPU of start-up (imports,
        group join, restore) that `events_per_cpu_s` includes."""
        if self.first_output_s is None or self.done_s is None:
            return None
        window = [
            s
            for s in self.samples
            if s[1] > 0 and self.first_output_s - POLL_S <= s[0] <= self.done_s + POLL_S
        ]
        if len(window) < 2:
            return None
        (_t0, n0, c0), (_t1, n1, c1) = window[0], window[-1]
        return (n1 - n0) / (c1 - c0) if c1 > c0 and n1 > n0 else None

    def to_json(self) -> dict[str, Any]:
        eps = self.eps()
        steady = self.steady_per_cpu_s()
        return {
            "complete": self.complete,
            "processed": self.processed,
            "eps": round(eps) if eps is not None else None,
            "first_output_s": _r(self.first_output_s),
            "done_s": _r(self.done_s),
            "wall_s": _r(self.wall_s),
            "worker_cpu_s": _r(self.cpu_s),
            "events_per_cpu_s": round(self.processed / self.cpu_s) if self.cpu_s else None,
            "steady_events_per_cpu_s": round(steady) if steady else None,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "exited_early": self.exited_early,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def watch(
    worker: Worker | Workers,
    counter: Callable[[], int],
    target: int,
    timeout: float,
    on_tick: Callable[[], None] | None = None,
) -> Progress:
    """Follow a worker until `counter()` reaches `target` and the worker is idle, or until
    `timeout` seconds after it started. The end of the work is the end of the last busy
    sample, so the idle detection itself is not counted."""
    p = Progress()
    history: list[tuple[float, float]] = []  # (t, cpu)
    last_busy = 0.0
    while True:
        time.sleep(POLL_S)
        t = time.monotonic() - worker.started
        cpu = worker.sample()
        n = counter()
        if on_tick is not None:
            on_tick()
        if cpu is None or not worker.alive():
            p.exited_early = True
            p.processed = n
            p.done_s = t
            break
        if history:
            prev_t, prev_cpu = history[-1]
            if (cpu - prev_cpu) / max(t - prev_t, 1e-6) > IDLE_CORE_SHARE:
                last_busy = t
        history.append((t, cpu))
        p.samples.append((round(t, 2), n, round(cpu, 2)))
        if n > 0 and p.first_output_s is None:
            p.first_output_s = t
        window = [c for (ht, c) in history if ht >= t - IDLE_WINDOW_S]
        idle = (
            t - history[0][0] >= IDLE_WINDOW_S
            and (cpu - window[0]) / IDLE_WINDOW_S < IDLE_CORE_SHARE
        )
        if n >= target and idle:
            p.complete = True
            p.processed = n
            p.done_s = last_busy or t
            break
        if t >= timeout:
            p.processed = n
            p.done_s = t
            break
    p.wall_s = time.monotonic() - worker.started
    p.cpu_s = worker.cpu_s
    p.peak_rss_mb = worker.peak_rss_mb
    return p


def produce_records(
    cfg: Config,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    *,
    rate: float | None = None,
    on_sent: Callable[[int, float], None] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[int, float]:
    """Send pre-encoded (key, value) records, as fast as possible or paced at `rate`/s;
    `on_sent(i, wall_time)` is called as each is handed to the client. Returns (sent, seconds)."""
    from streams.tools.producer import make_producer

    # Bigger batches than the CLI's: preloading is about filling the topic quickly.
    producer = make_producer(cfg, **({} if rate else {"linger.ms": 50, "batch.size": 1_000_000}))
    failed: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None and len(failed) < 5:
            failed.append(str(err))

    start = time.monotonic()
    sent = 0
    produce, poll = producer.produce, producer.poll
    for key, value in records:
        if rate and sent % 50 == 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                produce(topic, value=value, key=key, on_delivery=on_delivery, headers=headers)
                break
            except BufferError:
                poll(0.05)
        if on_sent is not None:
            on_sent(sent, time.time())
        sent += 1
        if sent % 1000 == 0:
            poll(0)
    remaining = producer.flush(120)
    if remaining or failed:
        raise RuntimeError(f"{remaining} records not delivered to {topic}: {failed}")
    return sent, time.monotonic() - start


@dataclass
class TopicKeys:
    """A whole topic's keys and the span of its records' timestamps (epoch ms)."""

    records: int = 0
    keys: set[bytes] = field(default_factory=set)
    first_ms: int | None = None
    last_ms: int | None = None


def read_keys(cfg: Config, topic: str, timeout: float = 60.0) -> TopicKeys:
    """Every key of a topic (read_committed) and its timestamp span, without decoding values."""
    from streams.tools.reading import read_topic

    out = TopicKeys()
    first, last = 2**62, 0
    for msg in read_topic(cfg, topic, timeout=timeout):
        out.records += 1
        k = msg.key()
        if k is not None:
            out.keys.add(k)
        ts = msg.timestamp()[1]
        first, last = min(first, ts), max(last, ts)
    if out.records:
        out.first_ms, out.last_ms = first, last
    return out


def read_values(cfg: Config, topic: str, timeout: float = 60.0) -> list[bytes]:
    from streams.tools.reading import read_topic

    return [m.value() for m in read_topic(cfg, topic, timeout=timeout)]


_COORDINATOR_ERRORS = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
)


def committed_count(cfg: Config, group: str, topic: str) -> int:
    """Messages of `topic` that consumer group `group` has committed (from the low
    watermark): for the detection topic, the events the detection stage finished."""
    consumer = Consumer(
        {**cfg.kafka.client_config(), "group.id": group, "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        deadline = time.monotonic() + 60
        while True:
            try:
                committed = consumer.committed(parts, timeout=10)
                break
            except KafkaException as e:
                # The group's coordinator moving or loading (NOT_COORDINATOR right after the
                # worker left, a broker restarted): ask again.
                err = e.args[0]
                transient = err.retriable() or err.code() in _COORDINATOR_ERRORS
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        total = 0
        for tp in committed:
            if tp.offset >= 0:
                low, _high = consumer.get_watermark_offsets(tp, timeout=10)
                total += tp.offset - low
        return total
    finally:
        consumer.close()


def group_assignment(cfg: Config, group: str) -> dict[str, list[str]]:
    """What each member of a consumer group owns now, by its group.instance.id (or member
    id): `topic[partition]` strings, sorted."""
    admin = AdminClient(cfg.kafka.client_config())
    desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    out: dict[str, list[str]] = {}
    for m in desc.members:
        parts = m.assignment.topic_partitions if m.assignment is not None else []
        out[m.group_instance_id or m.member_id] = sorted(
            f"{tp.topic}[{tp.partition}]" for tp in parts
        )
    return out


def delete_topics(cfg: Config, prefix: str) -> int:
    """Delete every topic whose name starts with `prefix` (the run's own topics)."""
    admin = AdminClient(cfg.kafka.client_config())
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if not names:
        return 0
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        try:
            fut.result()
        except Exception as e:  # a topic already gone is fine; anything else is only logged
            print(f"  could not delete a topic: {e}", file=sys.stderr)
    return len(names)
