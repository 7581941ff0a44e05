"""Alert latency at an offered load: produce time of the triggering event to the alert's
arrival on the alerts topic.

A phase has its own input topic and consumer group. The first `warmup` events of the dataset
are preloaded and processed first (untimed), so the detectors have baselines and peer groups
to judge by; then the next `rate * seconds` events are produced at `rate` events/s while a
reader follows the alerts topic (read_committed, so under exactly-once an alert counts only
once its transaction is committed, when a consumer can first see it).

**The triggering event of an alert state** (alerts carry the episode's first ten event ids,
`schemas/alert.avsc`, and `DetectionCore._episode` appends the current event while there are
fewer than ten): for `opened`, `event_ids[0]`, the event the episode opened on; for `updated`
and `escalated`, `event_ids[-1]` when `repeat_count == len(event_ids)` (the list is not yet
full, so its last id is the event that caused this state). Other states have no triggering
event in the alert and are not timed: `resolved` (caused by a later event of the machine, not
named), repeats past the tenth, `silence` (caused by the absence of events; its anchor id is not
an event) and storm roll-ups (no ids). Alerts whose trigger was not produced in the timed
window (the warm-up's) are not timed either.

Latency = the reader's wall clock when the alert arrives - the wall clock when the triggering
event was handed to the producer client (same host, same clock), in milliseconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.perf.dataset import ROOT
from bench.perf.measure import CommittedCounter, Worker, produce_records, watch
from bench.perf.phases import PhaseResult, Run, auditwatch_argv
from streams.ops.config import Config
from streams.ops.topics import ensure_topics


def trigger_event_id(alert: dict[str, Any]) -> str | None:
    """The id of the event that caused this alert state, when the alert names it."""
    ids = alert.get("event_ids") or []
    if not ids or alert.get("detector") in ("silence", "storm"):
        return None
    status = alert.get("status")
    if status == "opened":
        return str(ids[0])
    if status in ("updated", "escalated") and alert.get("repeat_count") == len(ids):
        return str(ids[-1])
    return None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass
class AlertReader:
    """Follows an alerts topic from the beginning in a thread, stamping arrival times."""

    cfg: Config
    topic: str
    arrivals: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.consumer = Consumer(
            {
                **self.cfg.kafka.client_config(),
                "group.id": f"{self.cfg.kafka.consumer_group}-latency-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 20,
            }
        )
        meta = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(500, 0.05):
                if msg.error() is None:
                    self.arrivals.append((time.time(), orjson.loads(msg.value())))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()


def wait_done(
    worker: Worker, counter: CommittedCounter, target: int, timeout: float, settle_s: float
) -> bool:
    """Wait until `target` archive records are committed and the worker has gone idle (its
    detection stage is done too), then `settle_s` more for the last alerts to be committed
    and fetched. False at `timeout` seconds after the worker started, or if it exits."""
    p = watch(worker, counter.count, target, timeout)
    if p.complete:
        time.sleep(settle_s)
    return p.complete


def latency_phase(
    run: Run,
    name: str,
    *,
    guarantee: str,
    warmup: int,
    rate: float,
    seconds: float,
    timeout: float,
    commit_interval_s: float | None = None,
) -> PhaseResult:
    """Warm up on `warmup` events, then offer `rate` events/s for `seconds`; everything,
    warm-up included, ends by `timeout` seconds after the worker started.
    `commit_interval_s` overrides the run's commit interval for this phase."""
    result = PhaseResult(name)
    ds = run.dataset
    timed = min(int(rate * seconds), max(ds.events - warmup, 0))
    warmup = min(warmup, ds.events - timed)
    interval = run.commit_interval_s if commit_interval_s is None else commit_interval_s
    cfg, path = run.config(
        name,
        guarantee=guarantee,
        input_topic=f"{run.prefix}.{name}.events",
        kafka={"commit_interval_s": interval},
    )
    ensure_topics(cfg)
    produce_records(cfg, cfg.topics.events, ds.records(0, warmup))
    counter = CommittedCounter(cfg, cfg.topics.archive)
    # Under exactly-once the last outputs become visible at the next commit.
    settle = interval + 1.0 if guarantee == "exactly-once" else 1.0
    worker = Worker(auditwatch_argv(path), run.dir / name / "worker.log", ROOT)
    reader: AlertReader | None = None
    sent_at = [0.0] * timed
    try:
        warm = wait_done(worker, counter, warmup, timeout * 0.5, settle)
        result.extra["warmup"] = {
            "events": warmup,
            "complete": warm,
            "seconds": round(time.monotonic() - worker.started, 2),
        }
        if not worker.alive():
            result.error = f"worker exited during warm-up: {worker.log_tail(1500)}"
            return result
        reader = AlertReader(cfg, cfg.topics.alerts)

        def on_sent(i: int, t: float) -> None:
            sent_at[i] = t

        t_start = time.monotonic()
        sent, produce_s = produce_records(
            cfg, cfg.topics.events, ds.records(warmup, warmup + timed), rate=rate, on_sent=on_sent
        )
        drained = wait_done(worker, counter, warmup + timed, timeout, settle)
        result.done = drained and warm
        result.extra["peak_rss_mb"] = round(worker.peak_rss_mb, 1)
        result.extra.update(
            {
                "offered_rate": rate,
                "timed_events": sent,
                "achieved_rate": round(sent / produce_s) if produce_s else None,
                "produce_seconds": round(produce_s, 2),
                "drained": drained,
                "drain_seconds_after_produce": round(time.monotonic() - t_start - produce_s, 2),
            }
        )
    finally:
        worker.stop()
        counter.close()
        if reader is not None:
            reader.close()
    base = f"syn-{ds.params.seed}-"
    latencies: list[float] = []
    alerts = 0
    for arrived, alert in reader.arrivals if reader is not None else []:
        alerts += 1
        trigger = trigger_event_id(alert)
        if trigger is None or not trigger.startswith(base):
            continue
        n = int(trigger[len(base) :]) - warmup
        if 0 <= n < timed and sent_at[n]:
            latencies.append((arrived - sent_at[n]) * 1000)
    result.extra.update(
        {
            "guarantee": guarantee,
            "commit_interval_s": interval,
            "alert_states": alerts,
            "timed_alerts": len(latencies),
            "percentiles_over": "alerts that arrived; a lower bound unless complete",
            "p50_ms": _r(percentile(latencies, 50)),
            "p99_ms": _r(percentile(latencies, 99)),
            "max_ms": _r(max(latencies) if latencies else None),
        }
    )
    result.checks["latency_samples"] = {
        "pass": bool(latencies),
        "why": None if latencies else "no alert with a timed triggering event arrived",
    }
    return result


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
