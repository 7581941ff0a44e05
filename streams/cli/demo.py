"""`auditwatch demo`: the whole product on this machine in one command.

Uses the broker named by $AUDITWATCH_BOOTSTRAP, else starts the local broker if none is
running; creates a fresh set of demo topics, runs the processor as a child process, sends
synthetic traffic with injected anomalies, prints alerts as they arrive, and stops what it
started once the processor has caught up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from schemas.event import format_rfc3339_ms
from streams.ops import kafka_local
from streams.ops.config import load_config
from streams.ops.topics import ensure_topics
from streams.tools.reading import pipeline_lag, read_topic
from streams.tools.synthetic import Episode, SyntheticConfig, SyntheticTraffic, demo_config

PAGE_SEVERITIES = ("medium", "high", "critical")
# A page up to this long before an injected episode starts, or after it ends, is its page:
# the detectors judge a minute or a window when it closes.
_BEFORE_MS, _AFTER_MS = 5 * 60_000, 30 * 60_000


def injected_kind(alert: dict[str, Any], episodes: Sequence[Episode]) -> str | None:
    """The kind of the injected anomaly `alert` pages on, None when it pages on none."""
    from schemas.event import parse_timestamp_us

    ts = parse_timestamp_us(alert["event_time"]) // 1000
    for ep in episodes:
        if (
            ep.malicious
            and ep.machine_id == alert["machine_id"]
            and ep.start_ms - _BEFORE_MS <= ts <= ep.end_ms + _AFTER_MS
        ):
            return ep.kind
    return None


def learning_lines(sc: SyntheticConfig, mature_after_s: int, warmup_s: int) -> list[str]:
    """What the fresh demo deployment is still learning, and until when
    (`detectors.maturity`): its traffic starts at `sc.start_ms`, so nothing is older."""
    from schemas.event import format_rfc3339_ms

    def at(ms: int) -> str:
        return format_rfc3339_ms(ms)[:16].replace("T", " ") + " UTC"

    until = sc.start_ms + mature_after_s * 1000
    if until <= sc.end_ms:
        return []
    return [
        f"learning: new_identity until {at(until)} (a daily cycle of the deployment); "
        f"operations and single new resources of every machine until 24 h after it (or its "
        f"group) was first seen, {at(until)} at the earliest: recorded as info, not paged",
        f"judged now: rate, failures, fan-out, off-hours and silence of each machine after its "
        f"{warmup_s // 60}-minute warm-up (from {at(sc.start_ms + warmup_s * 1000)})",
    ]


def demo(*, duration_limit_s: float = 300, rate: float = 5000) -> int:
    from streams.cli.main import _alert_line

    # A broker named by $AUDITWATCH_BOOTSTRAP (CI's, a shared one) is used as it is: never
    # started or stopped here. Otherwise the local broker is reused when its process lives,
    # even if it is slow to answer right now, and only a broker this demo started is stopped.
    bootstrap = os.environ.get("AUDITWATCH_BOOTSTRAP", "").strip()
    started_broker = False
    if not bootstrap:
        started_broker = kafka_local.bootstrap_from_env_or_file() is None
        bootstrap = kafka_local.start()
    # Demos started within the same second (tests, two terminals) must not share topics.
    run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}"
    work = Path(tempfile.mkdtemp(prefix="auditwatch-demo-"))
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "consumer_group": f"auditwatch-demo-{run_id}",
            "state_dir": str(work / "state"),
            "commit_interval_s": 1.0,
        },
        "topics": {
            role: f"demo-{run_id}.audit.{role}"
            for role in ("events", "alerts", "archive", "deadletter", "detect", "control")
        },
    }
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cfg = load_config(config_path)
    ensure_topics(cfg)
    print(f"demo topics: demo-{run_id}.audit.*  (config: {config_path})", file=sys.stderr)
    # The traffic is fixed here, not by `produce`, so the demo knows what it injects.
    sc = demo_config(int(time.time() * 1000))
    episodes = [ep for ep in SyntheticTraffic(sc).episodes if ep.malicious]
    detectors = cfg.detectors.build()
    learning = learning_lines(sc, detectors.mature_after_s, detectors.warmup_s)
    for line in learning:
        print(line, file=sys.stderr)
    env = {**os.environ, "AUDITWATCH_LOG_LEVEL": "WARNING"}
    processor = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "--config", str(config_path)], env=env
    )
    stop_alerts = threading.Event()
    pages: list[str | None] = []  # the injected kind each page is on, None for none
    recorded: Counter[str] = Counter()  # info records of what is still learning, by detector

    def show_alerts() -> None:
        from rich.console import Console
        from rich.markup import escape

        console = Console(soft_wrap=True)
        for msg in read_topic(cfg, cfg.topics.alerts, follow=True, stop=stop_alerts):
            a = orjson.loads(msg.value())
            if a["status"] == "opened" and "learning_until" in a.get("expected", {}):
                recorded[a["detector"]] += 1
            # On-call sees pages: alerts opening or escalating at medium and above.
            if a["status"] in ("opened", "escalated") and a["severity"] in PAGE_SEVERITIES:
                kind = injected_kind(a, episodes)
                mark = f"[injected {kind}]" if kind else "[NOT injected]"
                console.print(escape(mark) + " " + _alert_line(a))
                pages.append(kind)

    viewer = threading.Thread(target=show_alerts, daemon=True)
    viewer.start()
    deadline = time.monotonic() + duration_limit_s
    try:
        produce = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "produce",
                "--synthetic",
                "--start",
                format_rfc3339_ms(sc.start_ms),
                "--hours",
                str(sc.duration_s / 3600),
                "--warmup-hours",
                str(sc.warmup_s / 3600),
                "--machines",
                str(sc.machines),
                "--anomalies",
                ",".join(f"{k}={n}" for k, n in sc.anomalies.items()),
                "--rate-scale",
                str(sc.rate_scale),
                "--seed",
                str(sc.seed),
                "--rate",
                str(rate),
                "--config",
                str(config_path),
            ],
            env=env,
            check=False,
            timeout=duration_limit_s,
        )
        if produce.returncode != 0:
            print("producing synthetic traffic failed", file=sys.stderr)
            return 1
        # Done when the processor has committed everything that was sent.
        while time.monotonic() < deadline and processor.poll() is None:
            if pipeline_lag(cfg) == 0:
                break
            time.sleep(1)
        time.sleep(2)  # let the viewer print the last alerts it has fetched
        paged = {k for k in pages if k is not None}
        missed = [ep.kind for ep in episodes if ep.kind not in paged]
        others = sum(1 for k in pages if k is None)
        print(
            f"demo done: {len(pages)} pages, {len(pages) - others} on injected anomalies, "
            f"{others} on none; injected {len(episodes)}, "
            + (f"not paged: {', '.join(missed)}" if missed else "every one paged")
            + f"; `auditwatch alerts --config {config_path}` shows them again",
            file=sys.stderr,
        )
        if recorded:
            kinds = ", ".join(f"{d} {n}" for d, n in sorted(recorded.items()))
            print(f"recorded as info while learning (not paged): {kinds}", file=sys.stderr)
        for line in learning:
            print(line, file=sys.stderr)
        return 0 if processor.poll() is None else 1
    except KeyboardInterrupt:
        return 130
    finally:
        stop_alerts.set()
        viewer.join(10)
        if processor.poll() is None:
            processor.send_signal(signal.SIGTERM)
            try:
                processor.wait(30)
            except subprocess.TimeoutExpired:
                processor.kill()
        if started_broker:
            kafka_local.stop()
