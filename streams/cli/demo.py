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
from pathlib import Path

import orjson
import yaml

from streams.ops import kafka_local
from streams.ops.config import load_config
from streams.ops.topics import ensure_topics
from streams.tools.reading import pipeline_lag, read_topic

PAGE_SEVERITIES = ("medium", "high", "critical")


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
    env = {**os.environ, "AUDITWATCH_LOG_LEVEL": "WARNING"}
    processor = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "--config", str(config_path)], env=env
    )
    stop_alerts = threading.Event()
    pages = 0

    def show_alerts() -> None:
        nonlocal pages
        from rich.console import Console

        console = Console(soft_wrap=True)
        for msg in read_topic(cfg, cfg.topics.alerts, follow=True, stop=stop_alerts):
            a = orjson.loads(msg.value())
            # On-call sees pages: alerts opening or escalating at medium and above.
            if a["status"] in ("opened", "escalated") and a["severity"] in PAGE_SEVERITIES:
                console.print(_alert_line(a))
                pages += 1

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
        print(
            f"demo done: {pages} pages; `auditwatch alerts --config {config_path}` shows them "
            "again",
            file=sys.stderr,
        )
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
