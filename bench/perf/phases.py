"""The timed phases over the preloaded dataset: ceiling, auditwatch (and floor), faust peer,
replay.

Each Kafka phase has its own consumer group, output topics and state directory, and reads the
one shared input topic; each is checked after it is timed: the archive must hold exactly the
dataset's event ids, and (for the pipelines) the pages on the alerts topic are compared with
replay's.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.perf.dataset import ROOT, Dataset
from bench.perf.measure import (
    CommittedCounter,
    Progress,
    TopicCounter,
    TopicKeys,
    Worker,
    Workers,
    committed_count,
    group_assignment,
    python_module,
    read_keys,
    read_values,
    watch,
)
from schemas.alert import PAGE_RANK, SEVERITY_RANK
from streams.ops.config import Config, load_config
from streams.ops.topics import ensure_topics
from streams.processor import KEY_SEP


@dataclass
class Run:
    """One harness run: where it writes, its topic prefix and the shared input topic."""

    dir: Path
    prefix: str
    bootstrap: str
    dataset: Dataset
    input_topic: str
    commit_interval_s: float = 5.0
    librdkafka: dict[str, str] = field(default_factory=dict)
    kafka: dict[str, Any] = field(default_factory=dict)  # other kafka.* settings
    notes: list[str] = field(default_factory=list)

    def config(
        self,
        phase: str,
        *,
        guarantee: str = "at-least-once",
        input_topic: str | None = None,
        partitions: int = 8,
        kafka: dict[str, Any] | None = None,
    ) -> tuple[Config, Path]:
        """A phase's config file: its own group, output topics and state dir (`kafka`: more
        kafka.* settings for this phase only)."""
        d = self.dir / phase
        d.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}.{phase}"
        data: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": self.bootstrap,
                "consumer_group": f"{name}-group",
                "state_dir": str(d / "state"),
                "commit_interval_s": self.commit_interval_s,
                "processing_guarantee": guarantee,
                "librdkafka": dict(self.librdkafka),
                **self.kafka,
                **(kafka or {}),
            },
            "topics": {
                "events": input_topic or self.input_topic,
                "alerts": f"{name}.alerts",
                "archive": f"{name}.archive",
                "deadletter": f"{name}.deadletter",
                "detect": f"{name}.detect",
                "partitions": partitions,
            },
        }
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_config(path), path


_KEY_SEP = KEY_SEP.encode()


def is_page(alert: dict[str, Any]) -> bool:
    return (
        alert.get("status") in ("opened", "escalated")
        and SEVERITY_RANK.get(str(alert.get("severity")), -1) >= PAGE_RANK
    )


PageKey = tuple[str, str, str, str]


def page_key(alert: dict[str, Any]) -> PageKey:
    return (
        str(alert["alert_id"]),
        str(alert["status"]),
        str(alert["severity"]),
        str(alert["detector"]),
    )


def compare_pages(got: list[PageKey] | None, want: list[PageKey] | None) -> dict[str, Any]:
    """Pages as (alert_id, status, severity, detector), compared as multisets; the counts by
    detector say where two runs part."""
    if got is None or want is None:
        return {"pass": None, "why": "a run did not complete, nothing to compare"}
    from collections import Counter

    g, w = Counter(got), Counter(want)
    only_got, only_want = g - w, w - g
    detectors = sorted({k[3] for k in g} | {k[3] for k in w})
    return {
        "pass": not only_got and not only_want,
        "pages": sum(g.values()),
        "replay_pages": sum(w.values()),
        "same": sum((g & w).values()),
        "only_here": sum(only_got.values()),
        "only_in_replay": sum(only_want.values()),
        "by_detector": {
            d: {
                "here": sum(n for k, n in g.items() if k[3] == d),
                "replay": sum(n for k, n in w.items() if k[3] == d),
                "same": sum(n for k, n in (g & w).items() if k[3] == d),
            }
            for d in detectors
        },
    }


def check_archive(
    archive: TopicKeys, dataset: Dataset, expected_ids: set[bytes], complete: bool = True
) -> dict[str, Any]:
    """The archive must hold every input event id and nothing else (duplicates are allowed
    under at-least-once, and counted). A run stopped by its timeout cannot have archived
    everything: then the check passes no verdict (pass None) and records what was there.
    Archive keys are `machine_id US event_id` (`streams.processor.archive_key`): the event id
    is what follows the last separator."""
    records, keys = archive.records, archive.keys
    ids = {k.rpartition(_KEY_SEP)[2] for k in keys}
    missing = len(expected_ids - ids)
    extra = len(ids - expected_ids)
    return {
        "pass": (missing == 0 and extra == 0) if complete else None,
        "why": None if complete else "stopped by the phase timeout; counts are what it archived",
        "input": dataset.events,
        "archived_records": records,
        "archived_distinct": len(keys),
        "missing": missing,
        "unexpected": extra,
        "duplicates": records - len(keys),
    }


def read_pages(cfg: Config) -> tuple[list[PageKey], int]:
    """(pages, alert states) on the alerts topic."""
    alerts = [orjson.loads(v) for v in read_values(cfg, cfg.topics.alerts, timeout=60)]
    return [page_key(a) for a in alerts if is_page(a)], len(alerts)


@dataclass
class PhaseResult:
    name: str
    progress: Progress | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    pages: list[PageKey] | None = None
    error: str | None = None
    done: bool | None = None  # for phases without a Progress of their own

    @property
    def complete(self) -> bool:
        if self.progress is None:
            return bool(self.done)
        return self.progress.complete

    def eps(self) -> float | None:
        return self.progress.eps() if self.progress is not None else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"complete": self.complete}
        if self.progress is not None:
            out.update(self.progress.to_json())
        out.update(self.extra)
        out["checks"] = self.checks
        if self.error:
            out["error"] = self.error
        return out


# Workers that only archive: their work ends with their last archive record.
_ARCHIVE_ONLY = ("ceiling",)


def kafka_phase(
    run: Run,
    name: str,
    argv: list[str],
    cfg: Config,
    *,
    timeout: float,
    expected_ids: set[bytes],
    profile: Any = None,
    workers: int = 1,
) -> PhaseResult:
    """Start a worker (or `workers` of them in one consumer group, each with its own state
    directory) over the shared input, time it to the end of its work, stop it, check its
    archive, and read its pages (when it has an alerts stage)."""
    result = PhaseResult(name)
    ensure_topics(cfg)
    # Transaction markers take offsets too, so watermarks overcount an exactly-once archive.
    counter: TopicCounter | CommittedCounter = (
        CommittedCounter(cfg, cfg.topics.archive)
        if cfg.kafka.processing_guarantee == "exactly-once"
        else TopicCounter(cfg, cfg.topics.archive)
    )
    worker: Worker | Workers = (
        Worker(argv, run.dir / name / "worker.log", ROOT)
        if workers == 1
        else Workers(argv, run.dir / name, workers, ROOT)
    )
    try:
        if profile is not None:
            profile.attach(worker.pid)
        result.progress = watch(worker, counter.count, run.dataset.events, timeout)
        if isinstance(worker, Workers):
            # Asked while both still run: how the group split the partitions between them.
            result.extra["assignment"] = group_assignment(cfg, cfg.kafka.consumer_group)
            result.extra["cpu_s_by_worker"] = worker.cpu_by_worker()
    finally:
        if profile is not None:
            profile.detach()
        rc = worker.stop()
        counter.close()
    result.extra["exit_code"] = rc
    metrics = _worker_metrics(worker.log_tail(20_000))
    if metrics:
        result.extra["worker_metrics"] = metrics
    if result.progress.exited_early:
        result.error = f"worker exited early (rc {rc}): {worker.log_tail(1500)}"
        return result
    archive = read_keys(cfg, cfg.topics.archive, timeout=60)
    result.checks["archive"] = check_archive(
        archive, run.dataset, expected_ids, complete=result.progress.complete
    )
    detects = name not in _ARCHIVE_ONLY
    _refine(result.progress, archive, worker.started_wall, detects=detects)
    if detects:
        # One pass: an event's archive record is produced just before it is detected, in the
        # same call, so what is archived is detected too. The input offsets the worker
        # committed (it commits on stop) say so; events it forwarded to the repartition topic
        # (none in this dataset: it is keyed by machine) count once that record is committed.
        detected = committed_count(cfg, cfg.kafka.consumer_group, cfg.topics.events)
        forwarded = TopicCounter(cfg, cfg.topics.detect)
        try:
            pending = max(
                forwarded.count()
                - committed_count(cfg, cfg.kafka.consumer_group, cfg.topics.detect),
                0,
            )
        finally:
            forwarded.close()
        detected -= pending
        result.extra["archived"] = result.progress.processed
        result.extra["detected"] = detected
        result.extra["forwarded_pending"] = pending
        result.checks["detection_stage"] = {
            "pass": detected >= run.dataset.events if result.progress.complete else None,
            "detected": detected,
        }
        if not result.progress.complete:
            result.progress.processed = min(result.progress.processed, detected)
        pages, alerts = read_pages(cfg)
        result.extra["alert_states"] = alerts
        result.pages = pages if result.complete else None
    return result


def _refine(p: Progress, archive: TopicKeys, started_wall: float, detects: bool) -> None:
    """Sharpen the sampled times with the archive records' own timestamps (set when each was
    produced): the first one is when output began; without detection the last one is when the
    work ended. With it, the end stays the end of the worker's busy time (the last event's
    detection, its alerts and the commit come after its archive record)."""
    if archive.first_ms is None or archive.last_ms is None:
        return
    p.first_output_s = archive.first_ms / 1000 - started_wall
    last = archive.last_ms / 1000 - started_wall
    if p.complete:
        p.done_s = last if not detects else max(p.done_s or last, last)


def _worker_metrics(log: str) -> dict[str, Any] | None:
    # `auditwatch run` prints its counters as one JSON line on exit.
    for raw in reversed(log.splitlines()):
        line = raw.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return None


def auditwatch_argv(config_path: Path) -> list[str]:
    return python_module(
        "streams.cli.main", "--log-level", "warning", "run", "--config", str(config_path)
    )


def ceiling_argv(config_path: Path) -> list[str]:
    return python_module("bench.ceiling", "--config", str(config_path))


def floor_argv(config_path: Path) -> list[str]:
    return python_module(
        "bench.floor", "--log-level", "warning", "run", "--config", str(config_path)
    )


def faust_argv(config_path: Path, datadir: Path) -> list[str]:
    return python_module(
        "bench.faust_peer", "--config", str(config_path), "--datadir", str(datadir)
    )


_READ = re.compile(r"read ([\d,]+) records")
# "worker 2/2: " when replay detects in several processes, each printing its own progress.
_DETECTED = re.compile(r"(?:worker (\d+)/\d+: )?detected over ([\d,]+)/")
_DONE = re.compile(r"replayed ([\d,]+) records: ([\d,]+) events")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _detect_rate(
    detects: list[tuple[float, int]], reads: list[tuple[float, int]], n: int
) -> float | None:
    """Events/s of one detection worker from its progress lines (time, events so far)."""
    if len(detects) >= 2:
        (t0, n0), (t1, n1) = detects[0], detects[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None
    if detects and reads and reads[-1][1] == n and detects[0][0] > reads[-1][0]:
        # One line: time from the end of the read pass (sorting included: conservative).
        return detects[0][1] / (detects[0][0] - reads[-1][0])
    return None


def replay_phase(run: Run, cfg_path: Path, timeout: float) -> PhaseResult:
    """`auditwatch replay` of the dataset's JSON lines, timed from process start to exit.

    Replay makes two passes: it reads and dedupes every record, then detects over the events
    in event-time order (in one process per CPU, each over whole detect partitions); each pass,
    and each detection process, prints a progress line every 100,000. The harness stamps those
    lines as they appear, so a run stopped by the timeout still yields each pass's rate, and
    its events/s is projected from them (per-event costs add: 1 / (1/read + 1/detect)) and
    marked as such; the detection processes' rates add. Stopped before the detection pass
    printed at all, it has no figure. CPU time and peak RSS include the detection processes'."""
    result = PhaseResult("replay")
    d = run.dir / "replay"
    pages_path = d / "pages.jsonl"
    log_path = d / "replay.log"
    argv = python_module(
        "streams.cli.main",
        "replay",
        str(run.dataset.jsonl_path),
        "--alerts-out",
        str(pages_path),
        "--config",
        str(cfg_path),
    )
    worker = Worker(argv, log_path, ROOT)
    reads: list[tuple[float, int]] = []
    detects: dict[str, list[tuple[float, int]]] = {}  # by detection worker
    seen = 0
    while True:
        alive = worker.alive()
        worker.sample()
        t = time.monotonic() - worker.started
        text = log_path.read_text(errors="replace")
        for line in text[seen:].splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a line still being written: read it next time
            seen += len(line)
            if m := _READ.search(line):
                reads.append((t, _number(m.group(1))))
            elif m := _DETECTED.search(line):
                detects.setdefault(m.group(1) or "", []).append((t, _number(m.group(2))))
        if not alive or t >= timeout:
            break
        time.sleep(0.2)
    progress = Progress(first_output_s=0.0)
    progress.wall_s = time.monotonic() - worker.started
    progress.cpu_s = worker.cpu_s
    progress.peak_rss_mb = worker.peak_rss_mb
    finished = not worker.alive()
    rc = worker.stop()
    log = worker.log_tail(50_000)
    result.extra["exit_code"] = rc
    n = run.dataset.events
    read_eps = reads[-1][1] / reads[-1][0] if reads else None
    # The detection workers run side by side: their rates add.
    rates = [_detect_rate(lines, reads, n) for lines in detects.values()]
    detect_eps = sum(r for r in rates if r) if rates and all(rates) else None
    result.extra["read_pass_eps"] = round(read_eps) if read_eps else None
    result.extra["detect_pass_eps"] = round(detect_eps) if detect_eps else None
    done = _DONE.search(log)
    if finished and rc == 0 and done:
        progress.complete = True
        progress.processed = n
        progress.done_s = progress.wall_s
        events = _number(done.group(2))
        result.checks["archive"] = {"pass": events == n, "input": n, "accepted_events": events}
        result.pages = [
            page_key(orjson.loads(line)) for line in pages_path.read_bytes().splitlines() if line
        ]
        result.extra["pages"] = len(result.pages)
        result.extra["eps_method"] = "measured: events / wall time, process start to exit"
    else:
        progress.processed = reads[-1][1] if reads else 0
        if read_eps and detect_eps:
            progress.projected_eps = 1 / (1 / read_eps + 1 / detect_eps)
            result.extra["eps_method"] = (
                "projected from the two passes' measured rates (stopped by the timeout)"
            )
        else:
            result.extra["eps_method"] = (
                "none: stopped before the detection pass showed its rate; see read_pass_eps"
            )
        result.checks["archive"] = {
            "pass": None,
            "why": "replay stopped by the phase timeout",
            "read": progress.processed,
            "detected": sum(lines[-1][1] for lines in detects.values()),
        }
        if finished:
            result.error = f"replay failed (rc {rc}): {log[-1500:]}"
    result.progress = progress
    return result
