"""The worker's own telemetry: Prometheus metrics, health and readiness, explain requests.

One `Telemetry` per `auditwatch run`. The processing thread is its only writer, and it writes
plain Python numbers (the Processor's counters, list-backed histograms) with no lock: at tens
of thousands of events a second a lock or a prometheus_client metric per event would cost
more than the rest of the bookkeeping. The HTTP thread reads them at scrape time through a
custom collector; a scrape may see one counter a few events ahead of another, which
Prometheus tolerates.

Consumer lag comes from librdkafka's statistics (`stats_cb`, every
`monitoring.stats_interval_s`): librdkafka already tracks each assigned partition's end and
committed offsets, so lag costs no extra broker request and is reported per partition by the
one worker that owns it (sum it across workers for the group's lag). It is the committed lag,
what `kafka-consumer-groups --describe` shows.

`InputWatch`, a thread of its own, checks the input topic's end offsets every
`monitoring.input_check_interval_s` and raises the `auditwatch_input_quiet` alert when they
stop moving. Each alert state is kept until the broker acknowledges it (produced again at the
next check if it was refused), and a restarted worker reads the alerts topic before opening
one, so a restart during a quiet spell does not page twice.

Imports: the standard library, prometheus_client, confluent-kafka, orjson, and streams/schemas.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from schemas.alert import Alert
from schemas.event import format_rfc3339_ms
from streams.ops.config import Config
from streams.processor import Output, Processor

log = logging.getLogger("auditwatch.metrics")

# Seconds from a record's Kafka timestamp to the end of its processing: sub-millisecond when
# keeping up, minutes to hours while a backlog drains.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
INPUT_QUIET = "auditwatch_input_quiet"
_now = time.time
SELF = "auditwatch"
# The readiness check's tolerance for a main loop that has not come round (a slow message, a
# registry retry): longer than any normal iteration, shorter than a real hang.
LOOP_STALL_S = 60.0
# Resources and operations an explanation lists unless `?top=` says otherwise.
EXPLAIN_TOP = 20
EXPLAIN_TOP_MAX = 10_000


class Histogram:
    """A Prometheus histogram for one writer thread: a bucket index and two additions per
    observation, no lock. Readers copy the list (atomic under the GIL)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_since(self, ts_ms: int) -> None:
        """Seconds from `ts_ms` (epoch millis) to now: the per-record path, kept to a clock
        read, a bisect and two additions."""
        value = _now() - ts_ms * 0.001
        if value < 0.0:  # noqa: PLR1730 (max() costs a call) the producer's clock is ahead
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        counts = list(self.counts)
        total = self.total
        buckets: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            acc += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
        return buckets, total


class KafkaStats:
    """What librdkafka's statistics say about this worker's consumer."""

    __slots__ = ("assigned", "at", "brokers_up", "group_state", "lag")

    def __init__(self) -> None:
        self.at = 0.0  # time.monotonic() of the last report; 0: none yet
        self.lag: dict[tuple[str, int], int] = {}
        self.assigned: dict[str, tuple[int, ...]] = {}
        self.brokers_up = 0
        self.group_state = "unknown"

    @classmethod
    def parse(cls, raw: str | bytes, topics: Iterable[str]) -> KafkaStats:
        """Lag and assignment of `topics` (changelogs are assigned too, but are not input)."""
        data = orjson.loads(raw)
        out = cls()
        out.at = time.monotonic()
        out.brokers_up = sum(
            1
            for b in data.get("brokers", {}).values()
            if b.get("nodeid", -1) >= 0 and b.get("state") == "UP"
        )
        cgrp = data.get("cgrp") or {}
        out.group_state = f"{cgrp.get('state', 'unknown')}/{cgrp.get('join_state', 'unknown')}"
        for topic in topics:
            parts = (data.get("topics", {}).get(topic) or {}).get("partitions", {})
            mine = []
            for p in parts.values():
                partition = int(p.get("partition", -1))
                # -1 is librdkafka's internal "unassigned" partition; "none" is not ours.
                if partition < 0 or p.get("fetch_state", "none") == "none":
                    continue
                mine.append(partition)
                lag = int(p.get("consumer_lag", -1))
                if lag >= 0:  # -1: nothing committed yet, or end offset not known yet
                    out.lag[(topic, partition)] = lag
            out.assigned[topic] = tuple(sorted(mine))
        return out

    @property
    def group_joined(self) -> bool:
        return self.group_state == "up/steady"


class ExplainRequests:
    """Hands `/machines/ID` requests from the HTTP thread to the processing thread, which
    alone may touch the state stores (it opens and closes them on rebalance, and holds the
    uncommitted writes of the current checkpoint)."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, str | None, int, Future[Any]]] = deque()

    def __bool__(self) -> bool:
        return bool(self.pending)

    def ask(
        self, machine_id: str, group: str | None, timeout: float, top: int = EXPLAIN_TOP
    ) -> Any:
        """Called on the HTTP thread; raises TimeoutError when the worker does not answer."""
        fut: Future[Any] = Future()
        self.pending.append((machine_id, group, top, fut))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise TimeoutError from None

    def serve(self, answer: Callable[[str, str | None, int], Any]) -> None:
        """Called on the processing thread, between messages; `answer(machine_id, group,
        top)`."""
        while self.pending:
            machine_id, group, top, fut = self.pending.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(answer(machine_id, group, top))
            except Exception as e:  # reported to the HTTP client, not fatal to the worker
                fut.set_exception(e)


class Telemetry:
    """Everything the worker reports about itself; see the module docstring for threading."""

    def __init__(self, cfg: Config, processor: Processor) -> None:
        self.cfg = cfg
        self.processor = processor
        self.started = time.monotonic()
        self.latency = {"ingest": Histogram(), "detect": Histogram()}
        self.pages: Counter[tuple[str, str]] = Counter()
        # Written by InputWatch's thread only: each counter keeps a single writer.
        self.watch_pages: Counter[tuple[str, str]] = Counter()
        self.stats = KafkaStats()
        # Rounds of the main loop; readers note when it last moved (no clock read per round).
        self.rounds = 0
        self._rounds_seen = (0, 0.0)  # (rounds, time.monotonic() when first seen so)
        self.explain = ExplainRequests()
        self.input_quiet = False
        self.input_idle_s: float | None = None
        # The control-topic reader (acks and snoozes), set by the runtime once it starts.
        self.control: Any = None
        # The runtime's worker (streams.runtime.loop), for its rewinds, restores and tasks.
        self.worker: Any = None
        # What start-up waits for (the broker, its topics), shown on /readyz; None once not.
        self.waiting: str | None = None
        self.state_dir = cfg.kafka.state_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        ProcessCollector(namespace="", registry=self.registry)

    # --- processing thread --------------------------------------------------------------
    def observe(self, stage: str, record_ts_ms: int) -> None:
        """Latency of one record: from its Kafka timestamp to now (the runtime binds
        `latency[stage].observe_since` once instead, to skip the lookup per record)."""
        self.latency[stage].observe_since(record_ts_ms)

    def count_pages(self, outputs: list[Output]) -> None:
        for out in outputs:
            a = out.alert
            if a is not None and a.is_page:
                self.pages[(a.detector, a.severity)] += 1

    def tick(self, answer: Callable[[str, str | None, int], Any]) -> None:
        """Once per round of the main loop (once per message): proves it is alive, answers
        explain requests."""
        self.rounds += 1
        if self.explain.pending:
            self.explain.serve(answer)

    def on_stats(self, raw: str) -> None:
        """librdkafka's stats_cb (on the processing thread, inside the consumer's poll)."""
        try:
            self.stats = KafkaStats.parse(raw, (self.cfg.topics.events, self.cfg.topics.detect))
        except Exception:
            log.warning("could not read librdkafka statistics", exc_info=True)

    # --- HTTP thread ---------------------------------------------------------------------
    def loop_age(self) -> float | None:
        """Seconds since the main loop was last seen to move on (None: it never ran)."""
        rounds, since = self._rounds_seen
        now = time.monotonic()
        current = self.rounds
        if current != rounds:
            self._rounds_seen = (current, now)
            return 0.0
        return None if current == 0 else now - since

    def owns_input_partition_zero(self) -> bool:
        return 0 in self.stats.assigned.get(self.cfg.topics.events, ())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        stats = self.stats
        stats_fresh = (
            stats.at > 0 and now - stats.at <= 3 * self.cfg.monitoring.stats_interval_s + 5
        )
        checks = {
            # Not set during state recovery: the worker is not processing yet.
            "processing": (age := self.loop_age()) is not None and age <= LOOP_STALL_S,
            "broker_reachable": stats_fresh and stats.brokers_up > 0,
            # Joined the group and got its assignment (possibly empty: more workers than
            # partitions is a valid standby, and must not stall a rolling update).
            "group_joined": stats_fresh and stats.group_joined,
        }
        waiting = self.waiting
        ready = all(checks.values()) and waiting is None
        body: dict[str, Any] = {
            "ready": ready,
            "checks": checks,
            "group_state": stats.group_state,
            "assigned": {t: list(p) for t, p in stats.assigned.items()},
        }
        if waiting is not None:
            body["waiting"] = waiting
        return ready, body

    def set_waiting(self, what: str | None) -> None:
        self.waiting = what

    def health(self) -> dict[str, Any]:
        age = self.loop_age()
        return {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self.started, 1),
            # How long since the main loop last came round, as far as the probes have seen.
            "loop_age_s": None if age is None else round(age, 1),
        }

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # a snapshot being renamed into place
    return total


# Processor counter -> (metric, help). Counters absent from the Processor read as 0.
_COUNTERS = {
    "events_in": ("events_in", "Messages read from the input topic."),
    "archived": ("archived", "Valid events written to the archive topic."),
    "duplicates": ("duplicates", "Exact re-sends of an archived event (not archived again)."),
    "key_mismatch": ("key_mismatch", "Messages keyed by something other than their machine_id."),
    "forwarded": (
        "forwarded",
        "Events read in another partition than their machine's, forwarded once to the "
        "repartition topic (producers keying by something else, or another partitioner).",
    ),
    "processing_errors": ("processing_errors", "Records whose processing raised (a bug; logged)."),
    "detector_errors": ("detector_errors", "Events whose detection raised (logged; skipped)."),
    "registry_retries": ("registry_retries", "Schema registry lookups retried."),
    "seeded": ("seeded_events", "History events learned from `auditwatch seed`."),
}


class _Collector:
    """Reads Telemetry at scrape time (the HTTP thread)."""

    def __init__(self, t: Telemetry) -> None:
        self.t = t

    def collect(self) -> Iterator[Metric]:
        t = self.t
        # dict() of a Counter is one C-level copy: consistent against the writer thread.
        m = dict(t.processor.metrics)
        core = t.processor.core
        for key, (name, text) in _COUNTERS.items():
            c = CounterMetricFamily(f"auditwatch_{name}", text)
            c.add_metric([], m.get(key, 0))
            yield c
        dead = CounterMetricFamily(
            "auditwatch_deadlettered", "Messages dead-lettered, by reason.", labels=["reason"]
        )
        for key, n in sorted(m.items()):
            if key.startswith("deadlettered."):
                dead.add_metric([key.split(".", 1)[1]], n)
        yield dead
        states = CounterMetricFamily(
            "auditwatch_alert_states", "Alert states written, by status.", labels=["status"]
        )
        for key, n in sorted(m.items()):
            if key.startswith("alerts."):
                states.add_metric([key.split(".", 1)[1]], n)
        yield states
        yield _signatures(m, t.processor.keyring is not None)
        pages = CounterMetricFamily(
            "auditwatch_pages",
            "Pages (opened or escalated, severity medium or above), by detector and severity.",
            labels=["detector", "severity"],
        )
        both = Counter(dict(t.pages))
        both.update(dict(t.watch_pages))
        for (detector, severity), n in sorted(both.items()):
            pages.add_metric([detector, severity], n)
        yield pages
        suppressed = CounterMetricFamily(
            "auditwatch_suppressed_findings", "Findings dropped by a configured suppression."
        )
        suppressed.add_metric([], core.suppressed_findings)
        yield suppressed

        lag = GaugeMetricFamily(
            "auditwatch_consumer_lag",
            "Offsets not yet committed, per partition this worker owns (librdkafka stats). "
            "Under exactly-once an idle partition of a transactional topic shows 1: the "
            "commit marker of its last transaction.",
            labels=["topic", "partition"],
        )
        stats = t.stats
        for (topic, partition), n in sorted(stats.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        assigned = GaugeMetricFamily(
            "auditwatch_assigned_partitions",
            "Partitions this worker consumes, by topic.",
            labels=["topic"],
        )
        for topic, parts in sorted(stats.assigned.items()):
            assigned.add_metric([topic], len(parts))
        yield assigned

        latency = HistogramMetricFamily(
            "auditwatch_processing_latency_seconds",
            "From a record's Kafka timestamp to the end of its processing, by stage (ingest: "
            "every input record; detect: the end of detection, for each valid new event).",
            labels=["stage"],
        )
        for stage, h in t.latency.items():
            buckets, total = h.snapshot()
            latency.add_metric([stage], buckets, total)
        yield latency

        # The capacity index of each detection partition (machines seen since start).
        indexes = list(getattr(core, "_indexes", {}).values())
        tracked = GaugeMetricFamily(
            "auditwatch_machines_tracked", "Machines in this worker's in-memory capacity index."
        )
        tracked.add_metric([], sum(len(i.last_seen) for i in indexes))
        yield tracked
        evicted = CounterMetricFamily(
            "auditwatch_machines_evicted",
            "Machines forgotten: beyond detectors.max_machines, or idle past the horizon.",
        )
        evicted.add_metric([], core.evictions)
        yield evicted
        state = GaugeMetricFamily(
            "auditwatch_state_bytes",
            "Size on disk of the worker's state directory (local snapshots of its partitions).",
        )
        state.add_metric([], _dir_bytes(t.state_dir))
        yield state

        quiet = GaugeMetricFamily(
            "auditwatch_input_quiet",
            "1 while the input topic has had no new record for monitoring.input_quiet_s.",
        )
        quiet.add_metric([], 1.0 if t.input_quiet else 0.0)
        yield quiet
        if t.input_idle_s is not None:
            idle = GaugeMetricFamily(
                "auditwatch_input_idle_seconds",
                "Seconds since the input topic's end offsets last moved (as this worker saw).",
            )
            idle.add_metric([], round(t.input_idle_s, 1))
            yield idle
        if t.worker is not None:
            yield from _runtime(t.worker)
        if t.control is not None:
            control = GaugeMetricFamily(
                "auditwatch_control_reader_healthy",
                "1 while acknowledgements and snoozes are being read from the control topic; "
                "0 while the reader retries after an error (see the worker's log).",
            )
            control.add_metric([], 1.0 if t.control.healthy else 0.0)
            yield control
        ready, _ = t.readiness()
        up = GaugeMetricFamily("auditwatch_ready", "1 when /readyz would answer 200.")
        up.add_metric([], 1.0 if ready else 0.0)
        yield up
        info = GaugeMetricFamily(
            "auditwatch_build_info",
            "Constant 1, labelled with the detection config version and consumer group.",
            labels=["config_version", "consumer_group"],
        )
        info.add_metric([core.config_version, t.cfg.kafka.consumer_group], 1.0)
        yield info


def _signatures(m: dict[str, int], signing: bool) -> Metric:
    """Signature verdicts of the events of signing machines (schemas.signing). With keys
    configured every verdict is there from the start, at 0: an alert on a rise of forged
    events then needs no series to appear first."""
    from schemas.signing import Verdict

    counts = dict.fromkeys((v.value for v in Verdict), 0) if signing else {}
    for key, n in m.items():
        if key.startswith("signatures."):
            counts[key.split(".", 1)[1]] = n
    family = CounterMetricFamily(
        "auditwatch_signatures",
        "Events of signing machines by their signature's verdict (verified, missing, "
        "unknown_key_id, bad_signature: all but verified are archived as unverified).",
        labels=["verdict"],
    )
    for verdict, n in sorted(counts.items()):
        family.add_metric([verdict], n)
    return family


def _runtime(w: Any) -> Iterator[Metric]:
    # Read while the processing thread writes: each figure is one step under the GIL.
    figures: list[tuple[Any, str, str, float]] = [
        (
            GaugeMetricFamily,
            "auditwatch_runtime_partitions",
            "Input partitions this worker owns (one task each, with its state).",
            len(w.tasks),
        ),
        (
            CounterMetricFamily,
            "auditwatch_runtime_rewinds",
            "Times the worker went back to its last commit (a failed delivery or commit, a "
            "fenced or aborted transaction, lost partitions).",
            w.rewinds,
        ),
        (
            CounterMetricFamily,
            "auditwatch_runtime_restores",
            "Partition states restored from the changelog (assignments and rewinds).",
            w.restores,
        ),
    ]
    for family, name, text, value in figures:
        metric = family(name, text)
        metric.add_metric([], value)
        yield metric


class _Handler(BaseHTTPRequestHandler):
    telemetry: Telemetry
    explain_timeout_s = 10.0
    server_version = "auditwatch"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        t = self.telemetry
        if path == "/metrics":
            self._send(200, t.scrape(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, t.health())
        elif path == "/readyz":
            ready, body = t.readiness()
            self._json(200 if ready else 503, body)
        elif path.startswith("/machines/") and len(path) > len("/machines/"):
            query = parse_qs(url.query)
            group = query.get("group", [None])[0]
            raw_top = query.get("top", [str(EXPLAIN_TOP)])[0]
            try:
                top = int(raw_top)
            except ValueError:
                top = 0
            if not 1 <= top <= EXPLAIN_TOP_MAX:
                self._json(
                    400, {"error": f"top={raw_top!r}: give a whole number 1 to {EXPLAIN_TOP_MAX}"}
                )
                return
            self._explain(unquote(path[len("/machines/") :]), group, top)
        else:
            self._json(404, {"error": f"no such endpoint {path}", "endpoints": _ENDPOINTS})

    def _explain(self, machine_id: str, group: str | None, top: int) -> None:
        try:
            body = self.telemetry.explain.ask(machine_id, group, self.explain_timeout_s, top)
        except TimeoutError:
            self._json(
                503,
                {
                    "error": "the worker did not answer in time (starting, recovering state "
                    "or stuck); try again",
                },
            )
            return
        except Exception as e:
            log.exception("explain %s failed", machine_id)
            self._json(500, {"error": f"explain failed: {e}"})
            return
        self._json(200 if body.get("found") else 404, body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, orjson.dumps(body, option=orjson.OPT_INDENT_2), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.client_address[0], *args)


_ENDPOINTS = ["/metrics", "/healthz", "/readyz", "/machines/MACHINE_ID[?group=GROUP&top=N]"]


class HttpServer:
    """The HTTP endpoint on a daemon thread; `start` returns the bound (host, port)."""

    def __init__(self, telemetry: Telemetry, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"telemetry": telemetry})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="auditwatch-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        self.thread.start()
        return self.address

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_http(telemetry: Telemetry, cfg: Config) -> HttpServer | None:
    """Serve the endpoint if `http.enabled`. A port that cannot be bound is logged, not fatal:
    auditing goes on without its metrics (and the "worker down" rule notices)."""
    h = cfg.http
    if not h.enabled:
        return None
    try:
        server = HttpServer(telemetry, h.host, h.port)
    except OSError as e:
        log.error(
            "cannot serve metrics on %s:%d (http.host/http.port): %s; running without them",
            h.host,
            h.port,
            e.strerror or e,
        )
        return None
    host, port = server.start()
    log.info("serving /metrics, /healthz, /readyz and /machines/ID on http://%s:%d", host, port)
    return server


class InputWatch:
    """Raises `auditwatch_input_quiet` when the input topic's end offsets stop moving.

    Every worker measures (the metric); only the worker that owns input partition 0 writes the
    alert, so a topic-wide outage pages once. The alert id is a hash of the topic and the end
    offsets at which it went quiet, so even two workers writing it during a rebalance name the
    same alert. It resolves when records arrive again.

    `recall(alert_id)` is asked, before an alert is opened, for the last status already
    written for that id (None: none); "opened" means a previous run of this worker (or
    another owner of partition 0) opened it, and it is adopted instead of written again. If it
    raises, the alert is opened anyway."""

    def __init__(
        self,
        cfg: Config,
        telemetry: Telemetry,
        config_version: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        recall: Callable[[str], str | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.telemetry = telemetry
        self.config_version = config_version
        self.clock = clock
        self.wall_ms = wall_ms
        self.recall = recall
        self.ends: int | None = None
        self.changed_at = clock()
        self.changed_wall_ms = wall_ms()
        self.open_alert: Alert | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        # Alert states not yet acknowledged by the broker, oldest first.
        self.outbox: deque[_Outgoing] = deque()
        self._written: dict[str, int] = {}  # alert_id -> seq of its newest acknowledged state

    def observe(self, ends: int, owner: bool) -> Alert | None:
        """One check of the input's summed end offsets; the alert state to write, if any."""
        now = self.clock()
        if ends != self.ends:
            self.ends, self.changed_at, self.changed_wall_ms = ends, now, self.wall_ms()
            self.telemetry.input_quiet = False
            self.telemetry.input_idle_s = 0.0
            if self.open_alert is not None:
                resolved = self._alert("resolved", self.open_alert.alert_id, now, ends)
                self.open_alert = None
                return resolved
            return None
        idle = now - self.changed_at
        self.telemetry.input_idle_s = idle
        quiet_s = self.cfg.monitoring.input_quiet_s
        if not quiet_s or idle < quiet_s:
            return None
        self.telemetry.input_quiet = True
        if self.open_alert is not None or not owner:
            return None
        blob = "\x1f".join((SELF, INPUT_QUIET, self.cfg.topics.events, str(ends)))
        alert_id = "a-" + hashlib.sha256(blob.encode()).hexdigest()[:24]
        if self.recall is not None:
            try:
                previous = self.recall(alert_id)
            except Exception as e:
                # A page twice is the lesser harm than none at all.
                log.warning(
                    "input watch: cannot read earlier states of %s (%s); opening it, which "
                    "may repeat a page sent before a restart",
                    alert_id,
                    e,
                )
                previous = None
            if previous == "opened":
                log.info("%s %s is already open (written before a restart)", INPUT_QUIET, alert_id)
                self.open_alert = self._alert("opened", alert_id, now, ends)
                return None
        self.open_alert = self._alert("opened", alert_id, now, ends)
        return self.open_alert

    def _alert(self, status: str, alert_id: str, now: float, ends: int) -> Alert:
        topic = self.cfg.topics.events
        idle = now - self.changed_at
        wall = self.wall_ms()
        summary = (
            f"Input topic {topic} has had no new records for {_duration(idle)} (end offsets "
            f"unchanged at {ends}); auditing sees nothing until they resume."
            if status == "opened"
            else f"Input topic {topic} is receiving records again."
        )
        return Alert(
            alert_id=alert_id,
            status=status,
            machine_id=SELF,
            group=SELF,
            detector=INPUT_QUIET,
            severity="high",
            score=75.0,
            event_time=format_rfc3339_ms(wall),
            summary=summary,
            observed={"topic": topic, "quiet_s": round(idle), "end_offsets": ends},
            expected={"max_quiet_s": self.cfg.monitoring.input_quiet_s},
            event_ids=[],
            config_version=self.config_version(),
            first_event_time=format_rfc3339_ms(self.changed_wall_ms),
            last_event_time=format_rfc3339_ms(wall),
            repeat_count=1,
            hint="Check the producers and log shippers that feed the input topic, and their "
            "credentials; a deployment that went quiet on purpose can raise "
            "monitoring.input_quiet_s or set it to 0.",
        )

    # --- thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="auditwatch-input-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import Consumer, Producer

        client = self.cfg.kafka.client_config()
        # Never subscribes or commits: the group id is only required by the client.
        consumer = Consumer({**client, "group.id": f"{self.cfg.kafka.consumer_group}-watch"})
        self._producer = Producer({**client, "enable.idempotence": True, "linger.ms": 0})
        if self.recall is None:
            self.recall = lambda alert_id: last_alert_status(self.cfg, alert_id)
        try:
            while not self._stop.wait(self.cfg.monitoring.input_check_interval_s):
                consumer.poll(0)  # hands librdkafka's queued log lines to our logger
                self.send()
                try:
                    ends = _end_offsets(consumer, self.cfg.topics.events)
                except Exception as e:
                    # A broker that cannot be reached says nothing about the input: keep the
                    # clock running and try again (the readiness check reports the broker).
                    log.warning(
                        "input watch: cannot read end offsets of %s: %s", self.cfg.topics.events, e
                    )
                    continue
                alert = self.observe(ends, self.telemetry.owns_input_partition_zero())
                if alert is not None:
                    self._write(alert)
        finally:
            consumer.close()
            self.send()
            for item in self.outbox:
                log.error(
                    "%s %s of %s was not written to %s before the watch stopped",
                    INPUT_QUIET,
                    item.alert.status,
                    item.alert.alert_id,
                    self.cfg.topics.alerts,
                )

    def _write(self, alert: Alert) -> None:
        level = logging.WARNING if alert.status == "opened" else logging.INFO
        log.log(level, "%s %s: %s", INPUT_QUIET, alert.status, alert.summary)
        self.outbox.append(_Outgoing(alert))
        self.send()

    def send(self, timeout: float = 10.0) -> None:
        """Produce the states in the outbox not yet produced (or refused: again), wait up to
        `timeout` for the broker, and drop those it acknowledged. One still in flight stays
        as it is: librdkafka reports it within message.timeout.ms, and producing it again
        meanwhile could write it twice."""
        if not self.outbox:
            return
        for item in list(self.outbox):
            if item.state == "failed" and self._superseded(item):
                # A later state of the same alert is written or on its way: this one after
                # it would leave the older state as the latest.
                self.outbox.remove(item)
                continue
            if item.state in ("new", "failed"):
                item.state = "in_flight"
                try:
                    self._producer.produce(
                        self.cfg.topics.alerts,
                        key=item.alert.alert_id.encode(),
                        value=orjson.dumps(item.alert.to_json()),
                        on_delivery=item.delivered,
                    )
                except Exception as e:  # a full local queue, a fatal producer error
                    item.delivered(e, None)
        self._producer.flush(timeout)
        for item in list(self.outbox):
            alert = item.alert
            if item.state == "done":
                self.outbox.remove(item)
                self._written[alert.alert_id] = max(item.seq, self._written.get(alert.alert_id, 0))
                if alert.is_page:
                    self.telemetry.watch_pages[(alert.detector, alert.severity)] += 1
            elif item.state == "failed":
                log.error(
                    "%s %s of %s not written to %s (%s); retrying at the next check",
                    INPUT_QUIET,
                    alert.status,
                    alert.alert_id,
                    self.cfg.topics.alerts,
                    item.error,
                )
            elif item.state == "in_flight":
                log.warning(
                    "%s %s of %s not acknowledged by the broker within %.0f s; still trying",
                    INPUT_QUIET,
                    alert.status,
                    alert.alert_id,
                    timeout,
                )

    def _superseded(self, item: _Outgoing) -> bool:
        alert_id = item.alert.alert_id
        return self._written.get(alert_id, 0) > item.seq or any(
            later.alert.alert_id == alert_id and later.seq > item.seq for later in self.outbox
        )


class _Outgoing:
    """One alert state on its way to the alerts topic; `delivered` is its delivery callback
    (called inside the producer's flush/poll, on the watch's thread)."""

    _next = 0

    def __init__(self, alert: Alert) -> None:
        self.alert = alert
        self.state = "new"  # new -> in_flight -> done | failed (-> in_flight again)
        self.error: Any = None
        _Outgoing._next += 1
        self.seq = _Outgoing._next

    def delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.state, self.error = "done", None
        else:
            self.state, self.error = "failed", err


def last_alert_status(cfg: Config, alert_id: str, timeout: float = 60.0) -> str | None:
    """The status of the latest state of `alert_id` on the alerts topic (None: none).

    Only alerts written since an hour before the input's newest record are read (the quiet
    spell, and so the alert, began after that record; the hour covers producer clocks that
    run ahead); without that record's time, the whole topic is read."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    consumer = Consumer(
        {
            **cfg.kafka.client_config(),
            "group.id": f"{cfg.kafka.consumer_group}-watch",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    deadline = time.monotonic() + timeout

    def watermarks(tp: Any) -> tuple[int, int]:
        # A topic created a moment ago may not have its partition leaders yet.
        while True:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                return int(low), int(high)
            except KafkaException as e:
                err = e.args[0]
                transient = err.retriable() or err.code() in (
                    KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE,
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._TIMED_OUT,
                    KafkaError._TRANSPORT,
                )
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def read(parts: list[Any]) -> Iterator[Any]:
        """Messages of `parts` (TopicPartitions with start offsets) up to their ends."""
        pending = set()
        for tp in parts:
            low, high = watermarks(tp)
            # tp.offset is OFFSET_BEGINNING (negative) or an offset; empty ranges are skipped.
            if high > max(low, tp.offset):
                pending.add(tp.partition)
        if not pending:
            return
        consumer.assign([tp for tp in parts if tp.partition in pending])
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {parts[0].topic} took over {timeout:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(f"reading {msg.topic()}: {msg.error()}")
            yield msg
        consumer.unassign()

    def partitions(topic: str) -> list[int]:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic} not available: {meta.error if meta else 'missing'}")
        return sorted(meta.partitions)

    try:
        events = cfg.topics.events
        newest: int | None = None
        tails = []
        for p in partitions(events):
            low, high = watermarks(TopicPartition(events, p))
            if high > low:
                tails.append(TopicPartition(events, p, high - 1))
        seen = {tp.partition: 0 for tp in tails}
        for msg in read(tails):
            seen[msg.partition()] = max(seen[msg.partition()], msg.timestamp()[1])
        # A partition whose last offset is a transaction marker (or expired) gives no time.
        if seen and all(seen.values()):
            newest = max(seen.values())
        alerts = cfg.topics.alerts
        starts = [TopicPartition(alerts, p, OFFSET_BEGINNING) for p in partitions(alerts)]
        if newest is not None:
            since = newest - 3_600_000
            starts = consumer.offsets_for_times(
                [TopicPartition(alerts, tp.partition, since) for tp in starts], timeout=timeout
            )
            # -1: no record that recent in the partition, nothing to read there.
            starts = [tp for tp in starts if tp.offset >= 0]
        status = None
        key = alert_id.encode()
        for msg in read(starts):
            if msg.key() == key and msg.value() is not None:
                status = orjson.loads(msg.value()).get("status")
        return status
    finally:
        consumer.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _end_offsets(consumer: Any, topic: str, timeout: float = 10.0) -> int:
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise RuntimeError(f"topic {topic} not available: {meta.error if meta else 'missing'}")
    total = 0
    for p in meta.partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        total += high
    return total
