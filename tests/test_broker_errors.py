"""A wrong or dead broker address: one-shot commands fail within seconds naming the address
and the setting to change; the services (`run`, `webhook`) wait for the broker, say so in
their log and on /readyz, start once it answers and log what they did when stopped."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from streams.cli.webhook import describe_url
from streams.ops.logs import LibrdkafkaFilter
from tests.conftest import ROOT, Stack, wait_until
from tests.test_control_kafka import Forwarder

# Bounds of seconds on a CLI that starts, fails and exits: measured alone (`make test`'s
# serial pass), not next to two other test processes.
pytestmark = pytest.mark.serial

DEAD = "127.0.0.1:1"  # port 1: nothing listens, the connection is refused at once

ONE_SHOT = [
    ["topics", "create"],
    ["alerts"],
    ["alerts", "--json"],
    ["deadletter", "list"],
    ["deadletter", "redrive", "--dry-run"],
    ["produce", "--synthetic"],
    ["seed", "--from-archive"],
    ["backtest", "--archive"],
]


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of `auditwatch ARGS` as a process of its own."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr.decode(errors="replace"), time.monotonic() - started


def dead_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITWATCH_")}
    return {**env, "AUDITWATCH_BOOTSTRAP": DEAD, **extra}


@pytest.mark.parametrize("args", ONE_SHOT, ids=lambda a: " ".join(a[:2]))
def test_a_one_shot_command_fails_fast_naming_the_address_and_the_setting(
    args: list[str],
) -> None:
    rc, err, seconds = cli(args, dead_env())
    assert rc == 1, err
    # Python's start and imports included; librdkafka's own timeouts were 18 to 50 s.
    assert seconds < 10, f"{' '.join(args)} took {seconds:.1f} s"
    assert f"cannot reach the Kafka broker at {DEAD}: connection refused" in err, err
    assert "$AUDITWATCH_BOOTSTRAP" in err and "kafka.bootstrap_servers" in err, err
    assert "Traceback" not in err, err
    assert "rdkafka" not in err, err  # librdkafka's own lines are not the answer
    assert len(err.strip().splitlines()) <= 4, err


def test_the_message_names_the_config_file_setting_when_that_gave_the_address(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:2"}}))
    rc, err, seconds = cli(["deadletter", "list", "--config", str(cfg)], dead_env())
    assert rc == 1 and seconds < 10, err
    assert "at 127.0.0.1:2" in err and "kafka.bootstrap_servers in the config file" in err, err


def test_a_name_that_does_not_resolve_is_said_so() -> None:
    rc, err, seconds = cli(
        ["topics", "create"], dead_env(AUDITWATCH_BOOTSTRAP="no-such-broker.invalid:9092")
    )
    assert rc == 1 and seconds < 10, err
    assert "no-such-broker.invalid:9092: the host name does not resolve" in err, err


def test_the_help_documents_the_exit_statuses() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    text = done.stdout.decode()
    assert "Exit status" in text and "1 " in text and "2 " in text, text


# -- librdkafka's own lines ---------------------------------------------------------------------


def librdkafka_records(
    lines: list[tuple[int, str, str]], shown: int = logging.INFO
) -> list[logging.LogRecord]:
    """What the filter lets through, from `shown` up, when confluent-kafka logs `lines`
    (level, facility, text) as it does: `logger.log(level, "%s [%s] %s", facility, client,
    text)`."""
    logger = logging.getLogger(f"auditwatch.librdkafka.test{id(lines)}.{shown}")
    logger.propagate = False
    logger.setLevel(shown)
    logger.addFilter(LibrdkafkaFilter())
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())
    for level, facility, text in lines:
        logger.log(level, "%s [%s] %s", facility, "rdkafka#consumer-1", text)
    return seen


def test_a_refused_connection_is_one_warning_not_an_error_per_attempt() -> None:
    refused = (
        "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
        "failed: Connection refused (after {}ms in state CONNECT)"
    )
    seen = librdkafka_records([(logging.ERROR, "FAIL", refused.format(i)) for i in range(14)])
    assert [r.levelname for r in seen] == ["WARNING"]
    assert "Connection refused" in seen[0].getMessage()


def test_the_first_producer_id_of_a_fresh_broker_is_not_a_warning() -> None:
    getpid = (
        "[thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:9092/1: "
        "Broker: Coordinator load in progress: retrying"
    )
    other = "[thrd:main]: Topic x partition count changed from 8 to 4"
    lines = [(logging.WARNING, "GETPID", getpid), (logging.WARNING, "PARTCNT", other)]
    seen = librdkafka_records(lines)
    assert [r.args[0] for r in seen] == ["PARTCNT"]  # type: ignore[index]
    seen = librdkafka_records(lines, shown=logging.DEBUG)
    assert [(r.levelname, r.args[0]) for r in seen] == [  # type: ignore[index]
        ("DEBUG", "GETPID"),
        ("WARNING", "PARTCNT"),
    ]


# -- the webhook's address ----------------------------------------------------------------------


def test_the_webhook_address_keeps_its_path_and_masks_secrets() -> None:
    assert describe_url("https://alerts.example.com/hooks/oncall") == (
        "https://alerts.example.com/hooks/oncall"
    )
    assert describe_url("https://bot:s3cret@alerts.example.com/in?token=abc&x=1") == (
        "https://***@alerts.example.com/in?***"
    )
    # Chat services put the token in the path: its last part, long and random, is masked.
    slack = describe_url(
        "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/Zk3xQ9mP2vL8rT4wY6nB1cD7"
    )
    assert slack == "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF2/Zk3x***"


# -- services -----------------------------------------------------------------------------------


def worker_address(log: Path) -> str:
    def address() -> str | None:
        m = re.search(r"on http://(127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        return m.group(1) if m else None

    return "http://" + wait_until(address, timeout=60, what="the worker's HTTP address")


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_run_waits_for_a_dead_broker_says_so_and_stops_on_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": DEAD, "state_dir": str(tmp_path / "state")},
                "http": {"port": 0},
            }
        )
    )
    log = tmp_path / "run.log"
    proc = start(["run", "--config", str(cfg)], log, dead_env())
    try:
        url = worker_address(log)
        wait_until(
            lambda: log.read_text().count(f"waiting for the Kafka broker at {DEAD}") >= 2,
            timeout=60,
            what="two waiting lines",
        )
        r = httpx.get(url + "/readyz", timeout=10)
        assert r.status_code == 503
        assert f"waiting for the Kafka broker at {DEAD}: connection refused" in r.json()["waiting"]
        assert proc.poll() is None, log.read_text()
    finally:
        rc = stop(proc)
    text = log.read_text()
    assert rc == 0, text
    assert "SIGTERM: stopping" in text, text
    assert "Traceback" not in text, text
    assert "{}" not in text.splitlines(), text
    assert "kafka.bootstrap_servers" in text


@pytest.mark.kafka
@pytest.mark.timeout(600)
def test_run_starts_once_the_broker_answers_and_logs_what_it_did_on_sigterm(
    stack: Any, bootstrap: str
) -> None:
    s: Stack = stack(http__port=0, monitoring__input_quiet_s=0)
    s.create_topics()
    relay = Forwarder(bootstrap)
    data = yaml.safe_load(s.config_path.read_text())
    # Not listening yet: the address refuses connections until the relay starts.
    data["kafka"]["bootstrap_servers"] = f"127.0.0.1:{relay.port}"
    cfg = s.root / "late.yaml"
    cfg.write_text(yaml.safe_dump(data))
    log = s.root / "worker-0.log"
    proc = start(["run", "--config", str(cfg)], log, dead_env())
    try:
        url = worker_address(log)
        wait_until(
            lambda: f"waiting for the Kafka broker at 127.0.0.1:{relay.port}" in log.read_text(),
            timeout=60,
            what="the waiting line",
        )
        relay.open()
        wait_until(
            lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200,
            timeout=180,
            what="/readyz 200 once the broker answers",
        )
        assert "waiting" not in httpx.get(url + "/readyz", timeout=10).json()
        s.send(
            [
                {
                    "event_id": f"e{i}",
                    "timestamp": int(time.time() * 1000),
                    "machine_id": "late-1",
                    "resource": "s3://b/x",
                    "operation": "GetObject",
                    "outcome": "SUCCESS",
                }
                for i in range(5)
            ]
        )
        wait_until(lambda: len(s.read("archive")) >= 5, timeout=120, what="the events archived")
    finally:
        rc = stop(proc)
        relay.close()
    text = log.read_text()
    assert rc == 0, text
    assert "answers after" in text, text
    stopped = [line for line in text.splitlines() if "stopped:" in line]
    assert stopped, text
    assert "5 events in" in stopped[-1] and "committed" in stopped[-1], stopped
    assert "partitions" in stopped[-1], stopped
    assert "{}" not in text.splitlines(), text
    assert "Traceback" not in text, text


def test_webhook_waits_for_a_dead_broker_and_keeps_the_url_path(tmp_path: Path) -> None:
    log = tmp_path / "webhook.log"
    url = "http://127.0.0.1:9/hooks/oncall"
    proc = start(["webhook", "--url", url], log, dead_env())
    try:
        wait_until(
            lambda: log.read_text().count(f"waiting for the Kafka broker at {DEAD}") >= 2,
            timeout=60,
            what="two waiting lines",
        )
        assert proc.poll() is None, log.read_text()
    finally:
        rc = stop(proc)
    text = log.read_text()
    assert rc == 0, text
    assert "Traceback" not in text, text
    assert f"webhook {url}: delivered 0" in text, text
    assert text.count("rdkafka") <= 1, text


@pytest.mark.kafka
def test_run_stops_on_a_wrong_topic_layout_with_one_line_not_a_traceback(
    stack: Any,
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    s: Stack = stack(http__port=0)
    # The repartition topic with fewer partitions than the input: the worker cannot pair them.
    admin = AdminClient(s.cfg.kafka.client_config())
    admin.create_topics([NewTopic(s.cfg.topics.detect, 2, 1)])[s.cfg.topics.detect].result(30)
    s.create_topics()
    log = s.root / "layout.log"
    proc = start(["run", "--config", str(s.config_path)], log, dead_env())
    try:
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:  # a worker that did not stop must not outlive the test
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 1, text
    assert "Traceback" not in text, text
    [line] = [x for x in text.splitlines() if "ERROR" in x]
    assert f"run stopped: {s.cfg.topics.detect} has 2 partitions" in line, text


def test_an_address_that_accepts_but_never_answers_fails_within_the_deadline() -> None:
    # A listening socket that nobody serves: connections open, no Kafka answer ever comes
    # (a wrong port on a busy host). Without the check, each client waited its own 30 s.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        rc, err, seconds = cli(["topics", "create"], dead_env(AUDITWATCH_BOOTSTRAP=address))
    assert rc == 1 and seconds < 10, (seconds, err)
    assert f"cannot reach the Kafka broker at {address}: no answer within 4 s" in err, err
