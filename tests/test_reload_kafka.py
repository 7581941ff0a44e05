"""Config reload: the detection settings change under a running worker (SIGHUP, or the file
changing), and what it learned stays."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Producer

from detectors.core import DetectionCore
from streams.ops.config import Config, load_config
from streams.ops.reload import ConfigReloader, merge
from tests.conftest import ROOT, Stack, wait_until
from tests.test_pipeline_kafka import avro
from tests.traffic import BASE_MS, steady

# --- without a broker ------------------------------------------------------------------


def test_merge_takes_only_the_detection_settings() -> None:
    current = Config()
    new = Config.model_validate(
        {
            "kafka": {"consumer_group": "elsewhere"},
            "detectors": {
                "cooldown_s": 60,
                "groups": {"patterns": ["^(?P<group>[a-z]+)"]},
            },
        }
    )
    merged, ignored = merge(current, new)
    assert merged.detectors.cooldown_s == 60
    assert merged.kafka == current.kafka
    assert merged.detectors.groups == current.detectors.groups
    assert len(ignored) == 2
    assert ignored[0].startswith("kafka changed")
    assert "detectors.groups changed" in ignored[1]


class _Processor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.core = DetectionCore(cfg.detectors.build())


def test_file_change_reloads_and_bad_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"detectors": {"cooldown_s": 900}}))
    cfg = load_config(path)
    processor = _Processor(cfg)
    before = processor.core.config_version
    reloader = ConfigReloader(path, cfg, poll_s=0.05).start()
    try:
        path.write_text("detectors: {cooldown_s: -1}\n")
        wait_until(lambda: reloader.refused == 1, timeout=10, what="the bad file refused")
        reloader.apply(processor)
        assert processor.core.config_version == before
        path.write_text(yaml.safe_dump({"detectors": {"cooldown_s": 120, "warmup_s": 10}}))
        wait_until(lambda: reloader.reloads == 1, timeout=10, what="the good file loaded")
        reloader.apply(processor)
        assert processor.core.config.cooldown_s == 120
        assert processor.core.config_version != before
        assert processor.cfg.detectors.warmup_s == 10
    finally:
        reloader.stop()


# --- a worker on the real broker -------------------------------------------------------

MACHINE = "ledger-writer"
KNOWN = ["postgres://ledger/public.entries", "postgres://ledger/public.accounts"]


def alerts_of(s: Stack) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in s.read("alerts")]


def send(s: Stack, events: list[dict[str, Any]]) -> None:
    producer = Producer(s.cfg.kafka.client_config())
    for e in events:
        producer.produce(s.cfg.topics.events, key=e["machine_id"].encode(), value=avro(e))
    assert producer.flush(30) == 0


def event(i: int, ts_ms: int, resource: str) -> dict[str, Any]:
    return {
        "event_id": f"late-{i}",
        "timestamp": ts_ms,
        "machine_id": MACHINE,
        "resource": resource,
        "operation": "SELECT",
        "outcome": "SUCCESS",
    }


@pytest.mark.kafka
def test_sighup_swaps_detection_settings_and_keeps_the_baselines(stack: Any) -> None:
    settings = {
        "detectors__warmup_s": 600,
        "detectors__warmup_events": 20,
        "detectors__cooldown_s": 120,
        "detectors__rate__min_count": 10**9,
    }
    s: Stack = stack(**settings)
    s.create_topics()
    # Started by hand for --reload-poll 0: only SIGHUP may reload here.
    log = (s.root / "worker-0.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "run",
            "-c",
            str(s.config_path),
            "--reload-poll",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    s.workers.append(worker)
    v1 = s.cfg.detectors.build().version()

    # 15 minutes of history (30 events), then a new resource: the machine is learned.
    history = steady(MACHINE, KNOWN, BASE_MS, 900, every_ms=30_000)
    t = BASE_MS + 900_000
    send(s, [*history, event(0, t, "s3://first/x")])
    [first] = wait_until(lambda: alerts_of(s), timeout=90, what="the first alert")
    assert (first["status"], first["config_version"]) == ("opened", v1)

    data = yaml.safe_load(s.config_path.read_text())
    data["detectors"]["cooldown_s"] = "soon"
    s.config_path.write_text(yaml.safe_dump(data))
    worker.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload refused" in s.worker_logs(), what="the bad config refused")

    data["detectors"]["cooldown_s"] = 300
    data["detectors"]["suppress"] = [{"resource": "s3://muted*", "reason": "migration"}]
    data["kafka"]["commit_interval_s"] = 2.0
    s.config_path.write_text(yaml.safe_dump(data))
    v2 = load_config(s.config_path).detectors.build().version()
    worker.send_signal(signal.SIGHUP)
    wait_until(
        lambda: f"detection config version {v1} -> {v2}" in s.worker_logs(),
        what="the new config loaded",
    )
    assert "kafka changed: takes effect only after a restart" in s.worker_logs()

    # Twenty minutes on: a known resource, a suppressed one, a new one. Had the baselines
    # been lost, the machine would be back in its warm-up and nothing would page.
    t2 = t + 1_200_000
    send(
        s,
        [
            event(1, t2, KNOWN[0]),
            event(2, t2 + 1000, "s3://muted/x"),
            event(3, t2 + 2000, "s3://fresh/x"),
        ],
    )

    def after_reload() -> list[dict[str, Any]]:
        return [a for a in alerts_of(s) if a != first]

    later = wait_until(
        lambda: (a := after_reload()) and any(x["status"] == "opened" for x in a) and a,
        timeout=90,
        what="the alerts after the reload",
    )
    assert [(a["status"], a["alert_id"]) for a in later if a["status"] == "resolved"] == [
        ("resolved", first["alert_id"])
    ]
    [opened] = [a for a in later if a["status"] == "opened"]
    assert opened["observed"]["resource"] == "s3://fresh/x"
    assert opened["config_version"] == v2
    # Judged against the history learned before the reload.
    assert opened["expected"]["baseline_since"] == "2026-01-01T00:00:00.000Z"
    # The two of the history, the first new one and the muted one (suppressed, still learned).
    assert opened["expected"]["known_resources"] == 4
    assert not [a for a in later if "muted" in str(a["observed"].get("resource"))]
    assert worker.poll() is None
    assert "in effect (was " + v1 in s.worker_logs()
