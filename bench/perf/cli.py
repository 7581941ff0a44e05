"""`python -m bench.perf` (`make bench`): measure auditwatch's throughput, latency, state size
and restore time on one dataset, write bench/results/latest.json and print a table.

Phases, one after the other on the same broker and data (skip any with --skip):

  ceiling     plain confluent-kafka consumer: fastavro decode + archive record (bench/ceiling.py)
  auditwatch  `auditwatch run`, default detectors, archive and alerts, at-least-once
  faust       the same one-pass work as a faust-streaming app (bench/faust_peer.py; needs the
              bench extra)
  replay      `auditwatch replay` of the same events from a JSON-lines file
  state       serialised state of a machine with 50 distinct resources (bench.state_size)
  restore     a fresh worker restoring --restore-machines machines' state from the changelog
  latency     alert latency at an offered load (--latency-rate; by default 0.25 x the
              ceiling measured in this run), at-least-once
  eos         the same under exactly-once at --eos-commit-interval (default 1 s)
  profile     only with --profile: `auditwatch run` again under py-spy -> profile.md

Optional phases, only when asked for with --with (floor runs between ceiling and auditwatch,
the other two after auditwatch):

  floor       `auditwatch run` with the detection core taken out (bench/floor.py): the most a
              faster detection core could give on this runtime and topology
  eos_run     `auditwatch run` exactly-once at --eos-commit-interval: throughput
  pair        two `auditwatch run` workers in one group, exactly-once at --eos-commit-interval,
              on this one box (they share its cores with the broker): together they must
              archive every event exactly once; their combined throughput and CPU

(The `engine` phase, the ceiling's work as a Quix Streams app, went with Quix Streams:
`auditwatch run` no longer runs on it; see bench/README.md.)

Every Kafka phase is checked as well as timed: its archive must hold exactly the dataset's
event ids, and the pipelines' pages are compared with replay's. A phase that cannot finish in
its time (--phase-timeout, shrunk when the run is late for --budget) is stopped and reported
with its figures over what it processed and "complete": false. The dataset is generated once
into .cache/bench/ (not timed) and preloaded into an 8-partition topic per run. Uses
$AUDITWATCH_BOOTSTRAP, else the local broker, starting (and then stopping) one if needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.perf.dataset import DEFAULT_CACHE, ROOT, Dataset, DatasetParams, generate
from schemas.avro_write import ARCHIVE_WRITER

PHASES = ("ceiling", "auditwatch", "faust", "replay", "state", "restore", "latency", "eos")
OPTIONAL = ("floor", "eos_run", "pair")
# Optional phases that no longer exist, and why.
REMOVED = {
    "engine": "the Quix Streams engine phase was removed: auditwatch run no longer uses Quix",
}
# The least each phase needs (seconds, checks included): a late run shrinks earlier phases'
# timeouts so that these still fit in the budget.
_RESERVE = {
    "ceiling": 25,
    "floor": 30,
    "eos_run": 35,
    "pair": 40,
    "auditwatch": 35,
    "faust": 35,
    "replay": 25,
    "latency": 45,
    "eos": 50,
    "restore": 80,
    "state": 25,
    "profile": 40,
}
_MIN_TIMEOUT = 15.0
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_PROFILE = ROOT / "bench" / "results" / "profile.md"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=1_000_000, help="dataset size (default 1M)")
    p.add_argument(
        "--machines", type=int, default=10_000, help="machines in the dataset (default 10,000)"
    )
    p.add_argument(
        "--history-hours",
        type=float,
        default=24.0,
        help="event time the dataset spans; detectors warm up in the first hour (default 24)",
    )
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}")
    p.add_argument(
        "--with",
        dest="with_",
        default="",
        metavar="PHASES",
        help=f"comma-separated optional phases to add: {','.join(OPTIONAL)}",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=60.0,
        help="seconds a throughput phase (ceiling, auditwatch, faust) may take (default 60)",
    )
    p.add_argument(
        "--replay-timeout",
        type=float,
        default=90.0,
        help="seconds replay may take: it reads everything, then detects (default 90)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=570.0,
        help="seconds for the whole run, dataset generation included; phases are cut short to "
        "fit (default 570, under 10 minutes)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="offered events/s in the latency phases (default: 0.25 x this run's ceiling_eps, "
        "or 5,000 when the ceiling was skipped)",
    )
    p.add_argument(
        "--eos-commit-interval",
        type=float,
        default=1.0,
        help="kafka.commit_interval_s of the exactly-once phases (eos, eos_run, pair; default 1)",
    )
    p.add_argument("--latency-seconds", type=float, default=5.0, help="how long it is offered")
    p.add_argument(
        "--latency-warmup",
        type=int,
        default=30_000,
        help="events processed (untimed) before the offered load, so detectors have baselines",
    )
    p.add_argument("--latency-timeout", type=float, default=65.0)
    p.add_argument("--restore-machines", type=int, default=100_000)
    p.add_argument("--restore-timeout", type=float, default=130.0)
    p.add_argument("--commit-interval", type=float, default=5.0, help="kafka.commit_interval_s")
    p.add_argument(
        "--librdkafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka setting for every Kafka phase (kafka.librdkafka), repeatable",
    )
    p.add_argument(
        "--kafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a kafka.* setting of auditwatch for every pipeline phase (e.g. "
        "max_input_skew_s=300, working_copy_machines=0), as YAML, repeatable",
    )
    p.add_argument("--profile", action="store_true", help="also profile auditwatch with py-spy")
    p.add_argument("--profile-out", type=Path, default=DEFAULT_PROFILE)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--keep", action="store_true", help="keep the run's topics and state dirs")
    return p


class Budget:
    """Per-phase timeouts that keep the whole run inside its budget."""

    def __init__(self, seconds: float, phases: list[str]) -> None:
        self.deadline = time.monotonic() + seconds
        self.pending = list(phases)

    def timeout(self, phase: str, wanted: float) -> float:
        if phase in self.pending:
            self.pending.remove(phase)
        later = sum(_RESERVE[p] for p in self.pending)
        left = self.deadline - time.monotonic() - later
        return round(max(_MIN_TIMEOUT, min(wanted, left)), 1)


def _log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _broker() -> tuple[str, bool]:
    """(bootstrap, whether we started the broker)."""
    env = os.environ.get("AUDITWATCH_BOOTSTRAP")
    if env:
        return env, False
    from streams.ops import kafka_local

    running = kafka_local.status()
    if running:
        return running, False
    _log("starting the local Kafka broker")
    return kafka_local.start(), True


def faust_unavailable() -> str | None:
    """Why the faust peer cannot run here (the bench extra is missing), or None."""
    try:
        import faust  # noqa: F401
    except Exception as e:  # ImportError, or faust failing on this Python
        return (
            f"faust-streaming cannot be imported ({type(e).__name__}: {e}); "
            "pip install -e '.[bench]'"
        )
    return None


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _target(value: float | None, op: str, target: float, complete: bool = True) -> dict[str, Any]:
    ok = None if value is None else (value >= target if op == ">=" else value <= target)
    if not complete and ok:
        # A latency over the alerts that made it before the timeout is a lower bound, and a
        # ratio of incomplete runs is only indicative: no pass without a complete run.
        ok = None
    return {"value": value, "op": op, "target": target, "pass": ok, "complete": complete}


def targets(
    r: dict[str, Any], complete: dict[str, bool], commit_interval_s: float
) -> dict[str, Any]:
    """The runtime issue's targets: pass is None when the figure is missing, or would pass
    only on the strength of a run that did not complete. `commit_interval_s` is the
    exactly-once phases' commit interval."""
    ceil, ceil_cpu = r.get("ceiling_eps"), r.get("ceiling_events_per_cpu_s")
    done = {k: bool(complete.get(k)) for k in (*PHASES, *OPTIONAL)}

    def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
        return round(a / b, digits) if a and b else None

    eos_limit = commit_interval_s * 1000 + 1000
    restore_rss = r.get("restore_peak_rss_mb")
    return {
        "pipeline_vs_ceiling": _target(
            ratio(r.get("pipeline_eps"), ceil), ">=", 0.5, done["auditwatch"] and done["ceiling"]
        ),
        "pipeline_vs_ceiling_per_cpu_s": _target(
            ratio(r.get("pipeline_events_per_cpu_s"), ceil_cpu),
            ">=",
            0.5,
            done["auditwatch"] and done["ceiling"],
        ),
        "eos_run_vs_ceiling": _target(
            ratio(r.get("eos_run_eps"), ceil), ">=", 0.4, done["eos_run"] and done["ceiling"]
        ),
        "p99_alert_latency_ms": _target(r.get("p99_alert_latency_ms"), "<=", 1000, done["latency"]),
        "eos_p99_alert_latency_ms": _target(
            r.get("eos_p99_alert_latency_ms"), "<=", eos_limit, done["eos"]
        ),
        # 50,000 is the target, 100,000 the goal.
        "replay_eps": _target(r.get("replay_eps"), ">=", 50_000, done["replay"]),
        "state_bytes_per_machine": _target(r.get("state_bytes_per_machine"), "<=", 8192),
        "restore_seconds_100k": _target(r.get("restore_seconds_100k"), "<=", 30, done["restore"]),
        "restore_peak_rss_mb": _target(restore_rss, "<=", 2048, done["restore"]),
    }


def run_phases(
    args: argparse.Namespace, dataset: Dataset, bootstrap: str, budget: Budget, skip: set[str]
) -> dict[str, Any]:
    from bench.perf import phases as ph
    from bench.perf.latency import latency_phase
    from bench.perf.measure import delete_topics, produce_records
    from bench.perf.restore import restore_phase

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    run = ph.Run(
        dir=args.cache_dir / "runs" / f"{stamp}-{prefix}",
        prefix=prefix,
        bootstrap=bootstrap,
        dataset=dataset,
        input_topic=f"{prefix}.input",
        commit_interval_s=args.commit_interval,
        librdkafka=_settings(args.librdkafka),
        kafka={k: yaml.safe_load(v) for k, v in _settings(args.kafka, "--kafka").items()},
    )
    run.dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"phases": {}, "skipped": {}}
    results: dict[str, ph.PhaseResult] = {}
    try:
        cfg, _ = run.config("input")
        _create_input(cfg, run.input_topic)
        _log(f"preloading {dataset.events:,} events into {run.input_topic}")
        sent, secs = produce_records(cfg, run.input_topic, dataset.records())
        out["preload"] = {"events": sent, "seconds": round(secs, 1), "topic": run.input_topic}
        expected = {dataset.event_id(n).encode() for n in range(dataset.events)}

        def kafka(name: str, argv_for: Any) -> None:
            timeout = budget.timeout(name, args.phase_timeout)
            _log(f"{name}: timeout {timeout:.0f} s")
            cfg, path = run.config(name)
            try:
                results[name] = ph.kafka_phase(
                    run, name, argv_for(path), cfg, timeout=timeout, expected_ids=expected
                )
            except Exception as e:  # recorded, so the other phases still run
                results[name] = ph.PhaseResult(name, error=f"{type(e).__name__}: {e}")
            _log(f"{name}: {_summary(results[name])}")

        if "ceiling" not in skip:
            kafka("ceiling", ph.ceiling_argv)
        if "floor" in args.with_phases:
            kafka("floor", ph.floor_argv)
        if "auditwatch" not in skip:
            kafka("auditwatch", ph.auditwatch_argv)
        for name, workers in (("eos_run", 1), ("pair", 2)):
            if name not in args.with_phases:
                continue
            timeout = budget.timeout(name, args.phase_timeout)
            _log(f"{name}: {workers} worker(s), exactly-once, timeout {timeout:.0f} s")
            cfg, path = run.config(
                name,
                guarantee="exactly-once",
                kafka={"commit_interval_s": args.eos_commit_interval},
            )
            try:
                results[name] = ph.kafka_phase(
                    run,
                    name,
                    ph.auditwatch_argv(path),
                    cfg,
                    timeout=timeout,
                    expected_ids=expected,
                    workers=workers,
                )
            except Exception as e:
                results[name] = ph.PhaseResult(name, error=f"{type(e).__name__}: {e}")
            _log(f"{name}: {_summary(results[name])}")
        if "faust" not in skip:
            why = faust_unavailable()
            if why:
                out["skipped"]["faust"] = why
                budget.timeout("faust", 0)
            else:
                kafka("faust", lambda path: ph.faust_argv(path, path.parent / "faust-data"))
        if "replay" not in skip:
            timeout = budget.timeout("replay", args.replay_timeout)
            _log(f"replay: timeout {timeout:.0f} s")
            _, path = run.config("replay")
            results["replay"] = ph.replay_phase(run, path, timeout)
            _log(f"replay: {_summary(results['replay'])}")
        want = results["replay"].pages if "replay" in results else None
        for name in ("auditwatch", "faust"):
            if name in results and results[name].error is None:
                results[name].checks["pages_equal_replay"] = ph.compare_pages(
                    results[name].pages, want
                )
        if "restore" not in skip:
            timeout = budget.timeout("restore", args.restore_timeout)
            _log(f"restore: {args.restore_machines:,} machines, timeout {timeout:.0f} s")
            try:
                results["restore"] = restore_phase(run, args.restore_machines, timeout)
            except Exception as e:
                results["restore"] = ph.PhaseResult("restore", error=f"{type(e).__name__}: {e}")
            _log(f"restore: {_summary(results['restore'])}")
        if "state" not in skip:
            budget.timeout("state", 0)
            from bench.state_size import measure

            started = time.monotonic()
            size = measure(50)
            out["state"] = {**size, "seconds": round(time.monotonic() - started, 1)}
        # Offered at a quarter of what the least work reaches on this box in this run, so
        # the latency is the pipeline's, not a queue's (20k/s offered to a 4k/s pipeline
        # measured only how long the backlog took to drain).
        ceiling = results.get("ceiling")
        ceiling_eps = ceiling.eps() if ceiling is not None and ceiling.error is None else None
        rate = args.latency_rate or (0.25 * ceiling_eps if ceiling_eps else 5_000.0)
        out["latency_rate"] = round(rate)
        for name, guarantee in (("latency", "at-least-once"), ("eos", "exactly-once")):
            if name in skip:
                continue
            timeout = budget.timeout(name, args.latency_timeout)
            _log(
                f"{name}: {rate:,.0f} events/s for {args.latency_seconds} s, "
                f"timeout {timeout:.0f} s"
            )
            try:
                results[name] = latency_phase(
                    run,
                    name,
                    guarantee=guarantee,
                    warmup=args.latency_warmup,
                    rate=rate,
                    seconds=args.latency_seconds,
                    timeout=timeout,
                    commit_interval_s=args.eos_commit_interval
                    if guarantee == "exactly-once"
                    else None,
                )
            except Exception as e:
                results[name] = ph.PhaseResult(name, error=f"{type(e).__name__}: {e}")
            _log(f"{name}: {_summary(results[name])}")
        if args.profile:
            out["profile"] = _profile(args, run, budget, expected)
    finally:
        for name, r in results.items():
            out["phases"][name] = r.to_json()
        if not args.keep:
            n = delete_topics(_any_config(run), prefix)
            out["deleted_topics"] = n
            for d in run.dir.glob("*/state*"):
                shutil.rmtree(d, ignore_errors=True)
            for d in run.dir.glob("*/faust-data"):
                shutil.rmtree(d, ignore_errors=True)
        out["run_dir"] = str(run.dir)
    out["results"] = results
    return out


def _any_config(run: Any) -> Any:
    cfg, _ = run.config("input")
    return cfg


def _create_input(cfg: Any, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(cfg.kafka.client_config())
    fut = admin.create_topics(
        [NewTopic(topic, cfg.topics.partitions, cfg.topics.replication_factor)],
        request_timeout=30,
    )[topic]
    fut.result()


def _profile(
    args: argparse.Namespace, run: Any, budget: Budget, expected: set[bytes]
) -> dict[str, Any]:
    from bench.perf import phases as ph
    from bench.perf.profile import PySpy, analyse, markdown

    timeout = budget.timeout("profile", args.phase_timeout)
    _log(f"profile: auditwatch under py-spy, timeout {timeout:.0f} s")
    cfg, path = run.config("profile")
    raw = run.dir / "profile" / "pyspy.raw"
    spy = PySpy(raw)
    r = ph.kafka_phase(
        run,
        "profile",
        ph.auditwatch_argv(path),
        cfg,
        timeout=timeout,
        expected_ids=expected,
        profile=spy,
    )
    if not raw.exists() or r.progress is None:
        return {"error": r.error or "py-spy wrote no profile"}
    # One pass: an event is archived and detected in the same call (phases.kafka_phase).
    analysis = analyse(raw, r.progress.processed, ROOT)
    eps = r.eps()
    md = markdown(
        analysis,
        {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
            "eps": f"{eps:,.0f}" if eps else "?",
            "notes": [
                f"dataset: {run.dataset.events:,} events, {run.dataset.meta['machines']:,} "
                f"machines, {'complete' if r.complete else 'stopped by the timeout'}",
                f"raw py-spy stacks: {raw}",
            ],
        },
    )
    args.profile_out.parent.mkdir(parents=True, exist_ok=True)
    args.profile_out.write_text(md)
    _log(f"profile written to {args.profile_out}")
    return {**analysis, "complete": r.complete, "eps_while_profiled": eps, "raw": str(raw)}


def _summary(r: Any) -> str:
    if r.error:
        return f"ERROR {r.error[:300]}"
    eps = r.eps()
    parts = [("complete" if r.complete else "INCOMPLETE")]
    if eps:
        parts.append(f"{eps:,.0f} events/s")
    for k in ("p50_ms", "p99_ms", "restore_seconds"):
        if r.extra.get(k) is not None:
            parts.append(f"{k} {r.extra[k]}")
    failed = [k for k, v in r.checks.items() if isinstance(v, dict) and v.get("pass") is False]
    if failed:
        parts.append("FAILED checks: " + ", ".join(failed))
    return ", ".join(parts)


def headline(out: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    res = out["results"]

    def eps(name: str) -> int | None:
        r = res.get(name)
        e = r.eps() if r is not None and r.error is None else None
        return None if e is None else round(e)

    def extra(name: str, key: str) -> Any:
        r = res.get(name)
        return None if r is None else r.extra.get(key)

    def per_cpu(name: str) -> int | None:
        # Steady state: from the first output to the end of the work, start-up left out.
        r = res.get(name)
        if r is None or r.error is not None or r.progress is None:
            return None
        e = r.progress.steady_per_cpu_s()
        return None if e is None else round(e)

    aw = res.get("auditwatch")
    ours, peer = per_cpu("auditwatch"), per_cpu("faust")
    return {
        "events": dataset.events,
        "machines": dataset.meta["machines"],
        "ceiling_eps": eps("ceiling"),
        "pipeline_eps": eps("auditwatch"),
        "faust_eps": eps("faust"),
        "floor_eps": eps("floor"),
        "ceiling_events_per_cpu_s": per_cpu("ceiling"),
        "pipeline_events_per_cpu_s": per_cpu("auditwatch"),
        "faust_events_per_cpu_s": per_cpu("faust"),
        "floor_events_per_cpu_s": per_cpu("floor"),
        "replay_eps": eps("replay"),
        "p50_alert_latency_ms": extra("latency", "p50_ms"),
        "p99_alert_latency_ms": extra("latency", "p99_ms"),
        "eos_p99_alert_latency_ms": extra("eos", "p99_ms"),
        "state_bytes_per_machine": out.get("state", {}).get("total_bytes"),
        "restore_seconds_100k": extra("restore", "restore_seconds"),
        "restore_peak_rss_mb": (extra("restore", "restore") or {}).get("peak_rss_mb"),
        "eos_run_eps": eps("eos_run"),
        "eos_run_events_per_cpu_s": per_cpu("eos_run"),
        "pair_eps": eps("pair"),
        "pair_events_per_cpu_s": per_cpu("pair"),
        "pipeline_vs_faust_per_cpu_s": round(ours / peer, 2) if ours and peer else None,
        "peak_rss_mb": round(aw.progress.peak_rss_mb, 1)
        if aw is not None and aw.progress is not None
        else None,
    }


_ROWS = (
    ("ceiling_eps", "ceiling", "events/s"),
    ("pipeline_eps", "auditwatch", "events/s"),
    ("faust_eps", "faust", "events/s"),
    ("floor_eps", "floor", "events/s"),
    ("ceiling_events_per_cpu_s", "ceiling", "per CPU-s"),
    ("pipeline_events_per_cpu_s", "auditwatch", "per CPU-s"),
    ("faust_events_per_cpu_s", "faust", "per CPU-s"),
    ("floor_events_per_cpu_s", "floor", "per CPU-s"),
    ("replay_eps", "replay", "events/s"),
    ("p50_alert_latency_ms", "latency", "ms"),
    ("p99_alert_latency_ms", "latency", "ms"),
    ("eos_p99_alert_latency_ms", "eos", "ms"),
    ("state_bytes_per_machine", "state", "bytes"),
    ("restore_seconds_100k", "restore", "s"),
    ("restore_peak_rss_mb", "restore", "MB"),
    ("eos_run_eps", "eos_run", "events/s"),
    ("eos_run_events_per_cpu_s", "eos_run", "per CPU-s"),
    ("pair_eps", "pair", "events/s"),
    ("pair_events_per_cpu_s", "pair", "per CPU-s"),
    ("pipeline_vs_faust_per_cpu_s", "faust", "ratio"),
    ("peak_rss_mb", "auditwatch", "MB"),
)


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['events']:,} events, {report['machines']:,} machines "
        f"(load average {report['host']['loadavg_start']:.1f} at start)",
        f"{'figure':<26} {'value':>12} {'unit':<9} {'complete':<9} checks",
    ]
    for key, phase, unit in _ROWS:
        value = report.get(key)
        if phase in OPTIONAL and phase not in report["complete"]:
            continue
        text = "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
        complete = report["complete"].get(phase)
        checks = report["checks"].get(phase) or {}
        verdict = ", ".join(
            f"{k} {'ok' if v.get('pass') else 'FAIL' if v.get('pass') is False else 'n/a'}"
            for k, v in checks.items()
            if isinstance(v, dict)
        )
        lines.append(
            f"{key:<26} {text:>12} {unit:<9} {'-' if complete is None else str(complete):<9} "
            f"{verdict}"
        )
    lines.append(
        "targets: "
        + ", ".join(
            f"{k} {'ok' if v['pass'] else 'miss' if v['pass'] is False else 'n/a'}"
            for k, v in report["targets"].items()
        )
    )
    return "\n".join(lines)


def _settings(pairs: list[str], flag: str = "--librdkafka") -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(PHASES)
    if unknown:
        print(
            f"bench: unknown phase(s) in --skip: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PHASES)}",
            file=sys.stderr,
        )
        return 2
    args.with_phases = {s.strip() for s in args.with_.split(",") if s.strip()}
    unknown = args.with_phases - set(OPTIONAL)
    if unknown:
        print(
            f"bench: unknown phase(s) in --with: {', '.join(sorted(unknown))}; "
            f"optional: {', '.join(OPTIONAL)}",
            file=sys.stderr,
        )
        for name in sorted(unknown & set(REMOVED)):
            print(f"bench: {name}: {REMOVED[name]}", file=sys.stderr)
        return 2
    try:
        params = DatasetParams(args.events, args.machines, args.history_hours, args.seed)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()[0]
    planned = (
        [p for p in PHASES if p not in skip]
        + sorted(args.with_phases)
        + (["profile"] if args.profile else [])
    )
    budget = Budget(args.budget, planned)
    _log(f"archive writer: {ARCHIVE_WRITER}")
    dataset = generate(params, args.cache_dir, log=_log)
    bootstrap, started_broker = _broker()
    try:
        out = run_phases(args, dataset, bootstrap, budget, skip)
    finally:
        if started_broker:
            from streams.ops import kafka_local

            kafka_local.stop()
    results = out.pop("results")
    report: dict[str, Any] = headline({**out, "results": results}, dataset)
    report["complete"] = {name: r.complete and r.error is None for name, r in results.items()}
    if "state" in out:
        report["complete"]["state"] = True
    report["checks"] = {name: r.checks for name, r in results.items()}
    report["targets"] = targets(report, report["complete"], args.eos_commit_interval)
    report["params"] = {
        "events": args.events,
        "machines": args.machines,
        "history_hours": args.history_hours,
        "seed": args.seed,
        "skip": sorted(skip),
        "with": sorted(args.with_phases),
        "phase_timeout": args.phase_timeout,
        "replay_timeout": args.replay_timeout,
        "budget": args.budget,
        "latency_rate": out.get("latency_rate"),
        "eos_commit_interval_s": args.eos_commit_interval,
        "latency_seconds": args.latency_seconds,
        "latency_warmup": args.latency_warmup,
        "restore_machines": args.restore_machines,
        "commit_interval_s": args.commit_interval,
        "partitions": 8,
    }
    report["dataset"] = {k: v for k, v in dataset.meta.items() if k != "episodes"}
    report["host"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
    }
    report["git"] = _git()
    # Which archive writer the workers ran: the one generated from archive_record.avsc, or
    # fastavro's (several times slower) for a schema the generator does not cover.
    report["archive_writer"] = ARCHIVE_WRITER
    report["started_at"] = started_at.isoformat(timespec="seconds")
    report["seconds"] = round(time.monotonic() - started, 1)
    report.update(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(report))
    print(f"written to {args.out} in {report['seconds']:.0f} s", file=sys.stderr)
    return 0
