"""Transport security against the real SASL_SSL broker (`kafka_local start --secure`):
SCRAM-SHA-512 over TLS with a CA made at its first start, the StandardAuthorizer on."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.codec import TransientSchemaError
from streams.cli.config import check as config_check
from streams.ops import kafka_local
from streams.ops.config import SECURITY_ENV, ConfigError, SchemaRegistrySettings, load_config
from streams.ops.registry import RegistrySchemas
from streams.tools.reading import pipeline_lag
from tests.conftest import ROOT, SecureBroker, Stack, wait_until
from tests.registry_stub import RegistryStub
from tests.traffic import scenario

pytestmark = pytest.mark.kafka


def unique(name: str) -> str:
    return f"t-sec-{name}-{uuid.uuid4().hex[:8]}"


def test_secure_broker_serves_its_super_user(secure_broker: SecureBroker) -> None:
    topic = unique("roundtrip")
    admin = AdminClient(secure_broker.client_config())
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    try:
        producer = Producer(secure_broker.client_config())
        producer.produce(topic, b"over TLS")
        assert producer.flush(30) == 0
        consumer = Consumer(
            secure_broker.client_config(
                **{"group.id": unique("g"), "auto.offset.reset": "earliest"}
            )
        )
        consumer.subscribe([topic])
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                m = consumer.poll(0.5)
                if m is not None and m.error() is None:
                    got.append(m.value())
            assert got == [b"over TLS"]
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])


def test_a_plaintext_client_cannot_use_the_sasl_ssl_port(secure_broker: SecureBroker) -> None:
    errors: list[Any] = []
    admin = AdminClient(
        {"bootstrap.servers": secure_broker.bootstrap, "error_cb": errors.append, "log_level": 0}
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    admin.poll(0)
    assert errors, "the broker's refusal was not reported"


# ------------------------------------------------------------ the pipeline over SASL_SSL


def secure_settings(broker: SecureBroker, tmp_path: Path, password: str | None = None) -> Any:
    """kafka.security for a Stack: the password in a file, as a mounted secret would be."""
    secret = tmp_path / "sasl-password"
    secret.write_text((broker.password if password is None else password) + "\n")
    return {
        "protocol": "SASL_SSL",
        "sasl_mechanism": broker.mechanism,
        "username": broker.username,
        "password_file": str(secret),
        "ssl_ca_location": broker.ca_location,
    }


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )


def plaintext_env() -> dict[str, str]:
    """This process's environment without the AUDITWATCH_* security variables (a SASL_SSL
    test run sets them), so that only the config file says how to connect."""
    return {k: v for k, v in os.environ.items() if k not in SECURITY_ENV.values()}


def test_pipeline_runs_over_sasl_ssl(secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Worker, `auditwatch produce`, archive and `auditwatch alerts` all through the SASL_SSL
    listener, configured only in the config file."""
    s = Stack(
        tmp_path,
        secure_broker.bootstrap,
        "sasl-pipeline",
        kafka__security=secure_settings(secure_broker, tmp_path),
    )
    try:
        s.create_topics()
        worker = s.start_worker()
        events, expected = scenario()
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        env = plaintext_env()
        sent = cli("produce", "--config", str(s.config_path), str(path), env=env)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: pipeline_lag(s.cfg) == 0, timeout=120, what="every event committed")
        assert worker.poll() is None, s.worker_logs()
        assert len({m.key() for m in s.read("archive")}) == len(events)
        shown = cli("alerts", "--json", "--config", str(s.config_path), env=env)
        assert shown.returncode == 0, shown.stderr
        alerts = [orjson.loads(line) for line in shown.stdout.splitlines()]
        pages = {
            (a["machine_id"], a["detector"])
            for a in alerts
            if a["status"] == "opened" and a["severity"] in ("medium", "high", "critical")
        }
        assert set(expected.items()) <= pages
        assert secure_broker.password not in s.worker_logs()
    finally:
        s.stop_all()


def test_a_wrong_password_fails_fast_and_says_so(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    s = Stack(
        tmp_path,
        secure_broker.bootstrap,
        "sasl-wrong-password",
        kafka__security=secure_settings(secure_broker, tmp_path, password="not-it"),
    )
    began = time.monotonic()
    done = cli("topics", "create", "--config", str(s.config_path), env=plaintext_env(), timeout=60)
    took = time.monotonic() - began
    assert done.returncode == 1, done.stderr
    assert (
        f"authentication failed for user {secure_broker.username} at {secure_broker.bootstrap}"
        in done.stderr
    ), done.stderr
    assert "not-it" not in done.stderr + done.stdout
    assert took < 10, f"took {took:.1f} s"


def test_config_check_masks_the_passwords(tmp_path: Path, monkeypatch: Any) -> None:
    for var in SECURITY_ENV.values():
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "security": {
                        "protocol": "SASL_SSL",
                        "username": "auditwatch-worker",
                        "password": "file-secret-1",
                        "ssl_key_password": "file-secret-2",
                        "oauthbearer": {"client.secret": "file-secret-3", "scope": "kafka"},
                    },
                    "librdkafka": {"sasl.password": "file-secret-4"},
                }
            }
        )
    )
    done = cli("config", "check", str(path))
    assert done.returncode == 0, done.stderr
    for n in range(1, 5):
        assert f"file-secret-{n}" not in done.stdout + done.stderr
    effective = yaml.safe_load(done.stdout.split("\n", 2)[2])["kafka"]["security"]
    assert effective["username"] == "auditwatch-worker"
    assert effective["password"] == "**********"
    assert effective["oauthbearer"] == {"client.secret": "**********", "scope": "kafka"}

    # The environment's password (a config without one) is masked the same way.
    path.write_text(yaml.safe_dump({"kafka": {"security": {"protocol": "SASL_SSL"}}}))
    monkeypatch.setenv("AUDITWATCH_SASL_USERNAME", "from-env")
    monkeypatch.setenv("AUDITWATCH_SASL_PASSWORD", "env-secret")
    text, _ = config_check(str(path))
    assert "env-secret" not in text
    effective = yaml.safe_load(text)["kafka"]["security"]
    assert (effective["username"], effective["password"]) == ("from-env", "**********")


def test_security_settings_come_from_the_environment_unless_the_file_sets_them(
    tmp_path: Path, monkeypatch: Any
) -> None:
    for var in SECURITY_ENV.values():
        monkeypatch.delenv(var, raising=False)
    assert "security.protocol" not in load_config(None).kafka.client_config()
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("AUDITWATCH_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("AUDITWATCH_SASL_USERNAME", "svc")
    monkeypatch.setenv("AUDITWATCH_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("AUDITWATCH_SSL_CA_LOCATION", "/etc/ca.pem")
    conf = load_config(None).kafka.client_config()
    assert {k: v for k, v in conf.items() if k.startswith(("sasl", "ssl", "security"))} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "from-a-file",
        "ssl.ca.location": "/etc/ca.pem",
    }
    # The file wins over the environment.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"security": {"protocol": "PLAINTEXT"}}}))
    assert "security.protocol" not in load_config(path).kafka.client_config()
    # A SASL protocol without its user is refused when the config is loaded, naming both.
    monkeypatch.delenv("AUDITWATCH_SASL_USERNAME")
    with pytest.raises(ConfigError, match=r"kafka.security.username.*AUDITWATCH_SASL_USERNAME"):
        load_config(None)
    monkeypatch.setenv("AUDITWATCH_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigError, match=r"\$AUDITWATCH_SECURITY_PROTOCOL"):
        load_config(None)


def test_the_schema_registry_client_trusts_the_configured_ca(tmp_path: Path) -> None:
    """An https registry whose certificate a private CA signed: found with ssl_ca_location,
    refused (a transient error, retried) without it."""
    ca_pem, key_pem, cert_pem = kafka_local.make_test_pki()
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "server.pem").write_bytes(cert_pem + key_pem)
    RegistryStub.known = {7}
    server = ThreadingHTTPServer(("127.0.0.1", 0), RegistryStub)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        trusted = SchemaRegistrySettings(url=url, ssl_ca_location=str(tmp_path / "ca.pem"))
        assert RegistrySchemas(trusted).writer_schema(7) is not None
        with pytest.raises(TransientSchemaError, match=r"(?i)certificate"):
            RegistrySchemas(SchemaRegistrySettings(url=url)).writer_schema(7)
    finally:
        server.shutdown()


def test_plaintext_bootstrap_speaks_plaintext(plaintext_bootstrap: str) -> None:
    """The fixture for tests that need a broker without security, whatever the run's mode."""
    admin = AdminClient({"bootstrap.servers": plaintext_bootstrap, "log_level": 0})
    assert admin.list_topics(timeout=10).brokers


def test_a_broker_whose_pid_file_is_gone_is_still_found(tmp_path: Path) -> None:
    """A start that trusted a missing pid file would launch a second broker on the same data
    and corrupt its metadata log (seen on the shared secure broker): the running one is
    found by its command line instead, and its pid file written back."""
    rd = tmp_path / "run"
    rd.mkdir()
    stand_in = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "kafka.Kafka",
            str(rd / "server.properties"),
        ]
    )
    try:
        # Popen returns before the child has exec'd: until then its command line is this
        # process's, and no broker can be found by it.
        cmdline = Path(f"/proc/{stand_in.pid}/cmdline")
        wait_until(lambda: b"kafka.Kafka" in cmdline.read_bytes(), what="the stand-in's exec")
        assert not (rd / "broker.pid").exists()
        assert kafka_local._running_pid(rd) == stand_in.pid
        assert (rd / "broker.pid").read_text().strip() == str(stand_in.pid)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert kafka_local._running_pid(rd) is None
