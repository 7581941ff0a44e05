"""Fixtures for the real-broker tier: a broker, unique topics per test, worker processes.

The broker is $AUDITWATCH_BOOTSTRAP when set (CI starts one), else the local broker from
`auditwatch kafka start`, started here (and stopped at the end) if it is not running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.ops.config import Config, load_config
from streams.ops.topics import ensure_topics
from streams.tools.reading import read_topic

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(interval)


def _xdist_worker() -> bool:
    """Whether this process is one of several pytest-xdist workers. Its session ends before
    the others' do, so it must not stop a broker it started: the controller does that (see
    pytest_unconfigure). kafka_local starts a broker under a lock, so the first worker to
    need one starts it and the others reuse it."""
    return "PYTEST_XDIST_WORKER" in os.environ


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(config.getoption("numprocesses", None)) and not hasattr(config, "workerinput")


_ENV_OF = {False: "AUDITWATCH_BOOTSTRAP", True: "AUDITWATCH_SECURE_BOOTSTRAP"}
_RUNNING_BEFORE = pytest.StashKey[dict[bool, bool]]()


def pytest_configure(config: pytest.Config) -> None:
    if _xdist_controller(config):
        from streams.ops import kafka_local

        config.stash[_RUNNING_BEFORE] = {
            secure: bool(os.environ.get(var)) or kafka_local.status(secure=secure) is not None
            for secure, var in _ENV_OF.items()
        }


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller of an xdist run stops the local brokers its workers started."""
    before = config.stash.get(_RUNNING_BEFORE, None)
    if before is None:
        return
    from streams.ops import kafka_local

    for secure, was_running in before.items():
        if not was_running and kafka_local.status(secure=secure) is not None:
            kafka_local.stop(secure=secure)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort: every xdist worker collects the same order), so that
    a minutes-long test does not start last and leave the other workers idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    env = os.environ.get("AUDITWATCH_BOOTSTRAP")
    if env:
        yield env
        return
    from streams.ops import kafka_local

    running = kafka_local.status()
    if running:
        yield running
        return
    # A JVM starting next to a loaded test run (several xdist workers) may need more than
    # kafka_local's default 90 s; a fixture that gives up fails every test of that worker.
    address = kafka_local.start(timeout=240)
    if _xdist_worker():
        yield address
        return
    try:
        yield address
    finally:
        kafka_local.stop()


@pytest.fixture(scope="session")
def plaintext_bootstrap(bootstrap: str) -> str:
    """A broker without TLS, SASL or an authorizer: `bootstrap` in a plaintext run; in a
    SASL_SSL run (the secure broker's client.env sourced) the local plaintext broker, and the
    test is skipped when none runs."""
    from streams.ops.config import SecuritySettings

    if SecuritySettings().effective().protocol in (None, "PLAINTEXT"):
        return bootstrap
    from streams.ops import kafka_local

    running = kafka_local.status()
    if running is None:
        pytest.skip("a SASL_SSL run and no local plaintext broker")
    return running


def security_from_env() -> dict[str, Any]:
    """librdkafka's TLS and SASL settings from the AUDITWATCH_* variables (none when they are
    unset): for the clients a test builds by hand, so that a run with the secure broker's
    client.env sourced talks SASL_SSL to it like everything else."""
    from streams.ops.config import SecuritySettings

    return SecuritySettings().librdkafka()


def security_settings_from_env() -> dict[str, str]:
    """The kafka.security keys the AUDITWATCH_* variables give, as a config file would say
    them (empty when none is set)."""
    from streams.ops.config import SECURITY_ENV

    given = {name: os.environ[var] for name, var in SECURITY_ENV.items() if os.environ.get(var)}
    if "password" in given:
        given.pop("password_file", None)  # one of the two, as the settings themselves ask
    return given


def raw_client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Settings for a client a test builds by hand: `bootstrap`, the environment's security
    settings, then `extra` (librdkafka names)."""
    return {"bootstrap.servers": bootstrap, **security_from_env(), **extra}


def plaintext_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test with a plaintext broker of its own: drop the AUDITWATCH_* security variables
    (a SASL_SSL test run sets them) for the test and the processes it starts."""
    from streams.ops.config import SECURITY_ENV

    for var in SECURITY_ENV.values():
        monkeypatch.delenv(var, raising=False)


@dataclass(frozen=True)
class SecureBroker:
    """The SASL_SSL broker (`kafka_local start --secure`) as its super user: SCRAM-SHA-512
    over TLS, its CA, and the StandardAuthorizer (only `username` is a super user)."""

    bootstrap: str
    ca_location: str
    username: str
    password: str
    mechanism: str = "SCRAM-SHA-512"

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings for a client of this broker; `overrides` (dotted names with
        `_` for `.`: sasl_username="alice") replace the super user's."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.ca.location": self.ca_location,
        }
        config.update({k.replace("_", "."): v for k, v in overrides.items()})
        return config

    def env(self) -> dict[str, str]:
        """The AUDITWATCH_* variables that point auditwatch (a subprocess) at this broker."""
        return {
            "AUDITWATCH_BOOTSTRAP": self.bootstrap,
            "AUDITWATCH_SECURITY_PROTOCOL": "SASL_SSL",
            "AUDITWATCH_SASL_MECHANISM": self.mechanism,
            "AUDITWATCH_SASL_USERNAME": self.username,
            "AUDITWATCH_SASL_PASSWORD": self.password,
            "AUDITWATCH_SSL_CA_LOCATION": self.ca_location,
        }


def _secure_broker_of(bootstrap: str) -> SecureBroker:
    """The credentials of the secure broker at `bootstrap`: the AUDITWATCH_* variables when
    they name it (client.env sourced), else the files of the secure run dir."""
    from streams.ops import kafka_local

    env = os.environ
    if env.get("AUDITWATCH_BOOTSTRAP") == bootstrap and env.get("AUDITWATCH_SASL_USERNAME"):
        password = env.get("AUDITWATCH_SASL_PASSWORD") or ""
        if not password and env.get("AUDITWATCH_SASL_PASSWORD_FILE"):
            password = Path(env["AUDITWATCH_SASL_PASSWORD_FILE"]).read_text().strip()
        return SecureBroker(
            bootstrap=bootstrap,
            ca_location=env.get("AUDITWATCH_SSL_CA_LOCATION", ""),
            username=env["AUDITWATCH_SASL_USERNAME"],
            password=password,
            mechanism=env.get("AUDITWATCH_SASL_MECHANISM", "SCRAM-SHA-512"),
        )
    config = kafka_local.secure_client_config()
    return SecureBroker(
        bootstrap=bootstrap,
        ca_location=config["ssl.ca.location"],
        username=config["sasl.username"],
        password=config["sasl.password"],
        mechanism=config["sasl.mechanism"],
    )


@pytest.fixture(scope="session")
def secure_broker() -> Iterator[SecureBroker]:
    """$AUDITWATCH_SECURE_BOOTSTRAP when set (CI starts it; client.env sets it), else the
    secure local broker, started here (and stopped at the end) if it is not running."""
    env = os.environ.get("AUDITWATCH_SECURE_BOOTSTRAP")
    if env:
        yield _secure_broker_of(env)
        return
    from streams.ops import kafka_local

    running = kafka_local.status(secure=True)
    if running:
        yield _secure_broker_of(running)
        return
    address = kafka_local.start(secure=True, timeout=240)
    if _xdist_worker():
        yield _secure_broker_of(address)
        return
    try:
        yield _secure_broker_of(address)
    finally:
        kafka_local.stop(secure=True)


def free_port() -> int:
    from streams.ops import kafka_local

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((kafka_local.HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def private_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A broker of this test's own (own run dir, own fixed port), so that stopping or
    restarting it disturbs no other test running at the same time. Stopped at the end
    whatever happens."""
    from streams.ops import kafka_local

    # A fixed port: clients must find the restarted broker where they left it, and the
    # shared broker's 9092 must not be taken by accident.
    monkeypatch.setenv("AUDITWATCH_RUN_DIR", str(tmp_path / "broker"))
    plaintext_only(monkeypatch)
    monkeypatch.setenv("AUDITWATCH_KAFKA_PORT", str(free_port()))
    try:
        bootstrap = kafka_local.start(timeout=90)
        hand_out_a_producer_id(bootstrap)
        yield bootstrap
    finally:
        kafka_local.stop(timeout=30)


def hand_out_a_producer_id(bootstrap: str) -> None:
    """Have a new broker hand out its first producer id. Until it has a block of them from
    its controller it answers "coordinator load in progress", and meanwhile an at-least-once
    worker goes on reading, its idempotent producer holding the archive records back: the
    worker's progress would then show all at once instead of step by step. (An exactly-once
    worker waits for its producer id before it reads.)"""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"private-broker-warm-up-{uuid.uuid4().hex[:8]}",
            "log_level": 2,
        }
    )
    producer.init_transactions(60)
    producer.flush(10)


class Stack:
    """One test's topics, config file and worker processes."""

    def __init__(self, root: Path, bootstrap: str, name: str, **settings: Any) -> None:
        self.root = root
        self.prefix = f"t-{name}-{uuid.uuid4().hex[:8]}"
        data: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "consumer_group": f"{self.prefix}-group",
                "state_dir": str(root / "state"),
                "commit_interval_s": 1.0,
            },
            "topics": {
                role: f"{self.prefix}.{role}"
                for role in (
                    "events",
                    "alerts",
                    "archive",
                    "deadletter",
                    "detect",
                    "control",
                    "state",
                    "peers",
                )
            },
        }
        security = security_settings_from_env()
        if security:
            # Written out, so that a worker started with a stripped environment (a test of
            # what the worker does with the broker away) still talks SASL_SSL in such a run.
            data["kafka"]["security"] = security
        for dotted, value in settings.items():
            node = data
            *parents, leaf = dotted.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.cfg: Config = load_config(self.config_path)
        self.workers: list[subprocess.Popen[bytes]] = []

    def create_topics(self, overrides: dict[str, dict[str, str]] | None = None) -> None:
        ensure_topics(self.cfg, overrides)

    def send(self, events: list[dict[str, Any]]) -> None:
        """Produce `events` as `auditwatch produce` does: Avro, keyed by machine id, placed
        by murmur2 (so a test can know a machine's input partition in advance)."""
        from confluent_kafka import Producer

        from schemas.codec import encode_event_avro
        from streams.tools.producer import to_avro_record

        producer = Producer(
            {**self.cfg.kafka.client_config(), "linger.ms": 20, "partitioner": "murmur2"}
        )
        now = int(time.time() * 1000)
        for e in events:
            producer.produce(
                self.cfg.topics.events,
                key=e["machine_id"].encode(),
                value=encode_event_avro(to_avro_record(e, now)),
            )
            producer.poll(0)
        assert producer.flush(60) == 0

    def start_worker(
        self, state_subdir: str = "state", client_id: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker process; `state_subdir` other than "state" is another host's disk, and
        `client_id` makes its consumer-group member recognisable."""
        cfg_path = self.config_path
        if state_subdir != "state" or client_id:
            data = yaml.safe_load(self.config_path.read_text())
            data["kafka"]["state_dir"] = str(self.root / state_subdir)
            if client_id:
                data["kafka"].setdefault("librdkafka", {})["client.id"] = client_id
            cfg_path = self.root / f"config-{state_subdir}.yaml"
            cfg_path.write_text(yaml.safe_dump(data))
        log = (self.root / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run", "--config", str(cfg_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.workers.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def read(self, role: str, isolation: str = "read_committed") -> list[Any]:
        topic = getattr(self.cfg.topics, role)
        return list(read_topic(self.cfg, topic, isolation=isolation))

    def worker_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.root.glob("worker-*.log"))
        )


@pytest.fixture
def stack(
    tmp_path: Path, bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**settings: Any) -> Stack:
        name = request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[:40]
        s = Stack(tmp_path, bootstrap, name, **settings)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop_all()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(s.worker_logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)
