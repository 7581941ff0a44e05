"""A real single-node Apache Kafka 4.0.2 broker on loopback for development, tests and CI.

No Docker: the broker's jars are resolved once from Maven Central with ``mvn`` and
``streams/kafka/pom.xml`` into an ignored cache, and the broker runs as a background JVM in
KRaft mode (one process that is both broker and controller) listening on 127.0.0.1 only.

This module imports only the standard library. If ``confluent_kafka`` is installed, the health
check imports it lazily and asks the broker for metadata; otherwise it speaks a minimal
ApiVersions request over a socket.

Usage::

    python -m streams.ops.kafka_local fetch    # resolve the jars once
    python -m streams.ops.kafka_local start    # prints 127.0.0.1:PORT on stdout
    python -m streams.ops.kafka_local status
    python -m streams.ops.kafka_local stop
    python -m streams.ops.kafka_local start --secure   # a second broker: SASL_SSL, SCRAM, ACLs

``--secure`` runs a separate broker (its own run dir and ports; the plaintext one is never
touched) whose client listener is SASL_SSL with SCRAM-SHA-512, the user ``admin`` created at
format time as the only super user of the StandardAuthorizer, and a CA and broker certificate
made at first start with the ``cryptography`` package. Its run dir holds ``client.env``, the
``AUDITWATCH_*`` variables that point every auditwatch client at it::

    set -a; . .run/kafka-secure/client.env; set +a

Environment:

- ``AUDITWATCH_CACHE_DIR``: jar directory (default ``<repo>/.cache/kafka/4.0.2/libs``).
- ``AUDITWATCH_RUN_DIR``: runtime directory (default ``<repo>/.run/kafka``).
- ``AUDITWATCH_KAFKA_PORT``: force the broker port instead of 9092-or-a-free-one.
- ``AUDITWATCH_SECURE_RUN_DIR``: the secure broker's run dir (default ``<repo>/.run/kafka-secure``).
- ``AUDITWATCH_BOOTSTRAP``: an existing broker; wins in :func:`bootstrap_from_env_or_file`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "KafkaLocalError",
    "bootstrap_from_env_or_file",
    "build_parser",
    "cache_dir",
    "fetch_jars",
    "main",
    "run_dir",
    "secure_client_config",
    "secure_client_env",
    "start",
    "status",
    "stop",
]

KAFKA_VERSION = "4.0.2"
SCALA_VERSION = "2.13"
HOST = "127.0.0.1"
DEFAULT_BROKER_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
# The secure broker's preferred ports: stable across restarts when free, so a shell that
# sourced client.env keeps working.
SECURE_BROKER_PORT = 9094
SECURE_CONTROLLER_PORT = 9095
SECURE_ADMIN = "admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"
# Logged by kafka.server.KafkaRaftServer once the controller and broker are both up.
STARTED_MARKER = "Kafka Server started"
JVM_OPTS = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    # An OOM broker that keeps running half-dead would hang CI instead of failing it.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # Kafka logs while its own shutdown hook runs; log4j's hook would only warn about that.
    "-Dlog4j2.shutdownHookEnabled=false",
)
LOG_TAIL_LINES = 40
# A port lost between probing and the JVM binding it is retried with fresh ports this often.
_BIND_ATTEMPTS = 3

PACKAGE_DIR = Path(__file__).resolve().parent
# streams/ops/ -> the repository (a source checkout; `make install` is editable).
REPO_ROOT = PACKAGE_DIR.parent.parent
POM = PACKAGE_DIR / "kafka" / "pom.xml"
KAFKA_JAR = f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"

# Brokers launched by this interpreter, so that they can be reaped: a dead child that is never
# waited for stays a zombie and would still look alive to os.kill(pid, 0).
_children: dict[int, subprocess.Popen[bytes]] = {}


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


# --------------------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Directory holding the broker's runtime jars."""
    env = os.environ.get("AUDITWATCH_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT / ".cache" / "kafka" / KAFKA_VERSION / "libs"


def run_dir(*, secure: bool = False) -> Path:
    """Directory holding the broker's data, configuration, pid, log and bootstrap file."""
    env = os.environ.get("AUDITWATCH_SECURE_RUN_DIR" if secure else "AUDITWATCH_RUN_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT / ".run" / ("kafka-secure" if secure else "kafka")


def _info(message: str) -> None:
    # stdout is reserved for machine-readable output (the bootstrap address).
    print(f"kafka-local: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Serialise fetch/start/stop across processes (e.g. pytest-xdist workers, CI steps)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    # Readers (other processes polling the bootstrap file) never see a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return "(no broker.log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(broker.log is empty)"


# ---------------------------------------------------------------------------------------- jars


def _has_kafka_jar(libs: Path) -> bool:
    return (libs / KAFKA_JAR).is_file()


def fetch_jars() -> Path:
    """Resolve the broker's runtime classpath into :func:`cache_dir` (once) and return it.

    Maven copies into a temporary sibling directory that is renamed into place only when the
    broker jar is there, so an interrupted fetch never leaves a cache that looks complete.
    """
    libs = cache_dir()
    if _has_kafka_jar(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLocalError(
            "mvn (Apache Maven) not found on PATH; it resolves the Kafka jars once. Install it "
            "(e.g. `apt-get install -y maven`) or put the jars in "
            f"{libs} (AUDITWATCH_CACHE_DIR)."
        )
    if not POM.is_file():
        raise KafkaLocalError(f"{POM} is missing; it lists the broker's Maven dependencies.")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with _locked(libs.parent / f".{libs.name}.lock"):
        if _has_kafka_jar(libs):  # another process fetched while we waited for the lock
            return libs
        for stale in libs.parent.glob(f".{libs.name}-*"):  # left by a fetch that was killed
            shutil.rmtree(stale, ignore_errors=True)
        _info(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central (once)...")
        began = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{libs.name}-", dir=libs.parent))
        try:
            cmd = [
                mvn,
                "-B",
                "-q",
                "-Dstyle.color=never",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ]
            done = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
            )
            if done.returncode != 0 or not _has_kafka_jar(tmp):
                output = (done.stdout + done.stderr).strip()[-4000:]
                raise KafkaLocalError(
                    f"mvn could not fetch the Kafka jars (exit {done.returncode}):\n"
                    f"  {' '.join(cmd)}\n{output}"
                )
            if libs.exists():  # a directory without the broker jar is junk, not a cache
                shutil.rmtree(libs)
            tmp.chmod(0o755)  # mkdtemp makes it private; a CI cache may be shared
            tmp.rename(libs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    count = sum(1 for _ in libs.glob("*.jar"))
    _info(f"fetched {count} jars into {libs} in {time.monotonic() - began:.0f} s")
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaLocalError(
            "java not found on PATH (or JAVA_HOME): Kafka 4.0 needs a Java 17+ runtime, e.g. "
            "`apt-get install -y openjdk-17-jre-headless`."
        )
    return found


# --------------------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The JVM binds with SO_REUSEADDR, so TIME_WAIT leftovers must not count as "taken".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_port(exclude: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port not in exclude:
            return port


def _forced_port() -> int | None:
    raw = os.environ.get("AUDITWATCH_KAFKA_PORT", "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise KafkaLocalError(f"AUDITWATCH_KAFKA_PORT={raw!r} is not a TCP port number")
    return port


def _choose_ports(forced: int | None, *, secure: bool = False) -> tuple[int, int]:
    """Broker and controller ports: 9092/9093 (the secure broker: 9094/9095) when free,
    otherwise free ephemeral ones."""
    preferred, preferred_controller = (
        (SECURE_BROKER_PORT, SECURE_CONTROLLER_PORT)
        if secure
        else (DEFAULT_BROKER_PORT, DEFAULT_CONTROLLER_PORT)
    )
    if forced is not None:
        if not _port_free(forced):
            raise KafkaLocalError(
                f"AUDITWATCH_KAFKA_PORT={forced} is already in use on {HOST}; free it or unset "
                "the variable to let a free port be chosen"
            )
        broker = forced
    elif _port_free(preferred):
        broker = preferred
    else:
        broker = _ephemeral_port(set())
        _info(f"port {preferred} is in use; the broker will listen on {HOST}:{broker}")
    if broker != preferred_controller and _port_free(preferred_controller):
        controller = preferred_controller
    else:
        controller = _ephemeral_port({broker})
    return broker, controller


# ----------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphan nobody reaped yet (e.g. PID 1 in a container that does not wait) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _cmdline(pid: int) -> list[str]:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.is_dir():
        with contextlib.suppress(OSError):
            return [arg for arg in proc.read_bytes().decode(errors="replace").split("\0") if arg]
        return []
    # No procfs (macOS): ps prints the whole command line; splitting on spaces is good enough
    # for the exact-match test below because our paths are passed as separate arguments.
    done = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return done.stdout.split()


def _is_our_broker(pid: int, rd: Path) -> bool:
    """True if pid is a broker started from rd (pids get recycled; never signal a stranger)."""
    args = _cmdline(pid)
    return "kafka.Kafka" in args and str(rd / "server.properties") in args


def _running_pid(rd: Path) -> int | None:
    try:
        pid = int((rd / "broker.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        pid = 0
    if pid and _pid_alive(pid) and _is_our_broker(pid, rd):
        return pid
    found = _scan_for_broker(rd)
    if found is not None:
        _write_atomically(rd / "broker.pid", f"{found}\n")
    return found


def _scan_for_broker(rd: Path) -> int | None:
    """A broker running from rd whose pid file is gone or wrong, found by its command line: a
    second broker started on the same data directory corrupts its metadata log."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and _is_our_broker(pid, rd) and _pid_alive(pid):
            return pid
    return None


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _kill(pid: int, timeout: float) -> bool:
    """SIGTERM (Kafka flushes and closes its logs cleanly), then SIGKILL; True if it was hard."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_exit(pid, timeout):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_exit(pid, 10)
    return True


# -------------------------------------------------------------------------------------- health


def _api_versions_ok(bootstrap: str, timeout: float) -> bool:
    """Fallback health check without confluent_kafka: an ApiVersions v0 round trip."""
    host, _, port = bootstrap.rpartition(":")
    correlation_id = 0x41570001
    client_id = b"auditwatch-kafka-local"
    # api_key=18 (ApiVersions), api_version=0, correlation_id, client_id; v0 has no body.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(conn, 4)
            (size,) = struct.unpack(">i", header)
            response = _recv_exactly(conn, size)
    except (OSError, ValueError):
        return False
    if len(response) < 6:
        return False
    got_id, error_code = struct.unpack(">ih", response[:6])
    return bool(got_id == correlation_id and error_code == 0)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            raise ValueError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _healthy(bootstrap: str, timeout: float = 5.0, security: dict[str, str] | None = None) -> bool:
    """The broker answers a metadata request (not just a bound port) and lists itself;
    `security` holds the librdkafka settings of the secure broker's listener."""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError:
        if security:
            # Without a client that speaks TLS and SASL, a TCP handshake is all we can check.
            with contextlib.suppress(OSError):
                host, _, port = bootstrap.rpartition(":")
                socket.create_connection((host, int(port)), timeout=timeout).close()
                return True
            return False
        return _api_versions_ok(bootstrap, timeout)
    admin = AdminClient(
        {
            **(security or {}),
            "bootstrap.servers": bootstrap,
            # Connection-refused chatter during startup polling is expected, not news.
            "log_level": 0,
            "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


# ------------------------------------------------------------------------------ configuration


def _server_properties(rd: Path, broker_port: int, controller_port: int) -> str:
    return f"""\
# Written by streams/ops/kafka_local.py on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{broker_port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={rd / "data"}
# Topics are declared by the application; a typo must fail instead of creating a topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# One node: every internal topic has one replica, or it can never be created.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A restart on existing data is refused (DUPLICATE_BROKER_REGISTRATION) until the previous
# incarnation's session expires, 9 s by default; the heartbeat must stay well inside it.
# Under heavy load (the test suite's processes and a CPU-bound one beside them on 2 cores) the
# controller's event queue fell 5-29 s behind and it fenced its own broker at this timeout.
# 12 s was tried: restarts took 16-17 s instead of 8, and in two of four CI dry runs an
# exactly-once worker stalled after the outage or restart tests' longer restarts. So 4 s
# stays, and the tests that bound wall-clock time run alone (`serial`).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
# Consumers in tests join immediately instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Tests prove log compaction; the default 15 s between cleaner passes makes them slow.
log.cleaner.backoff.ms=1000
"""


# ------------------------------------------------------------------------ the secure broker
# Files in the secure run dir: admin.password (the super user's SCRAM password, chosen at
# format time), tls/ca.pem (what clients trust), tls/broker.p12 (the broker's key and
# certificate; its password is in server.properties), client.env (for `set -a; . client.env`).
_CERT_DAYS = 3650


def _secure_server_properties(
    rd: Path, broker_port: int, controller_port: int, admin_password: str, store_password: str
) -> str:
    tls = rd / "tls"
    base = _server_properties(rd, broker_port, controller_port)
    plain_listeners = (
        f"listeners=PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}\n"
        f"advertised.listeners=PLAINTEXT://{HOST}:{broker_port}\n"
        "inter.broker.listener.name=PLAINTEXT\n"
        "controller.listener.names=CONTROLLER\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
    )
    assert plain_listeners in base
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{SECURE_ADMIN}" password="{admin_password}";'
    )
    secure_listeners = f"""\
listeners=SASL_SSL://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=SASL_SSL://{HOST}:{broker_port}
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
# The controller listener stays plaintext, bound to loopback, for this node only.
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={SCRAM_MECHANISM}
sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PKCS12
ssl.keystore.location={tls / "broker.p12"}
ssl.keystore.password={store_password}
ssl.key.password={store_password}
# The broker is also a client of its own listener (transaction markers).
ssl.truststore.type=PEM
ssl.truststore.location={tls / "ca.pem"}
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# ANONYMOUS is only ever the principal of the plaintext controller listener (this node
# talking to itself on loopback); every client of the SASL_SSL listener is authenticated.
super.users=User:{SECURE_ADMIN};User:ANONYMOUS
"""
    return base.replace(plain_listeners, secure_listeners)


def _secret(path: Path) -> str:
    """The secret stored in `path`, made (random, owner-only file) if there is none."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    import secrets

    text = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(text + "\n")
    return text


def make_test_pki() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server key, server certificate), PEM, for a server on 127.0.0.1 or
    localhost: the secure broker's, and a test's HTTPS server's. No password on the key."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise KafkaLocalError(
            "the secure broker makes its certificates with the `cryptography` package: "
            "`pip install 'cryptography>=42'` (part of the dev extra)"
        ) from None
    import datetime
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)
    valid_from = now - datetime.timedelta(minutes=5)  # a clock a little behind still trusts it
    valid_to = now + datetime.timedelta(days=_CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditwatch local test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(
            # Clients check the host name (librdkafka's default) against these.
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def _make_certificates(tls: Path, store_password: str) -> None:
    """A CA and a broker certificate, unless already there. The CA's key is never written:
    nothing else is ever signed with it."""
    if (tls / "ca.pem").is_file() and (tls / "broker.p12").is_file():
        return
    ca_pem, key_pem, cert_pem = make_test_pki()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from cryptography.hazmat.primitives.serialization import pkcs12

    tls.mkdir(parents=True, exist_ok=True)
    tls.chmod(0o700)
    key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, None)
    store = pkcs12.serialize_key_and_certificates(
        b"broker",
        key,  # type: ignore[arg-type]
        x509.load_pem_x509_certificate(cert_pem),
        [x509.load_pem_x509_certificate(ca_pem)],
        serialization.BestAvailableEncryption(store_password.encode()),
    )
    (tls / "broker.p12").touch(mode=0o600)
    (tls / "broker.p12").write_bytes(store)
    _write_atomically(tls / "ca.pem", ca_pem.decode())


def secure_client_env(rd: Path | None = None) -> dict[str, str]:
    """The environment that points auditwatch's clients at the secure broker of `rd` (the
    secure run dir by default) as its super user: what client.env holds."""
    rd = rd or run_dir(secure=True)
    bootstrap = _read_bootstrap(rd) or _configured_bootstrap(rd)
    if bootstrap is None:
        raise KafkaLocalError(f"no secure broker configured in {rd}; run `start --secure`")
    return {
        "AUDITWATCH_BOOTSTRAP": bootstrap,
        "AUDITWATCH_SECURE_BOOTSTRAP": bootstrap,
        "AUDITWATCH_SECURITY_PROTOCOL": "SASL_SSL",
        "AUDITWATCH_SASL_MECHANISM": SCRAM_MECHANISM,
        "AUDITWATCH_SASL_USERNAME": SECURE_ADMIN,
        "AUDITWATCH_SASL_PASSWORD_FILE": str(rd / "admin.password"),
        "AUDITWATCH_SSL_CA_LOCATION": str(rd / "tls" / "ca.pem"),
    }


def secure_client_config(rd: Path | None = None) -> dict[str, str]:
    """librdkafka settings of the secure broker's super user (bootstrap included)."""
    rd = rd or run_dir(secure=True)
    env = secure_client_env(rd)
    return {
        "bootstrap.servers": env["AUDITWATCH_BOOTSTRAP"],
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.username": SECURE_ADMIN,
        "sasl.password": (rd / "admin.password").read_text().strip(),
        "ssl.ca.location": env["AUDITWATCH_SSL_CA_LOCATION"],
    }


def _write_client_env(rd: Path) -> None:
    lines = [
        "# Written by streams/ops/kafka_local.py start --secure: the secure broker's address",
        "# and super user for every auditwatch client. In a shell: set -a; . THIS_FILE; set +a",
    ]
    lines += [f"{k}={shlex.quote(v)}" for k, v in secure_client_env(rd).items()]
    _write_atomically(rd / "client.env", "\n".join(lines) + "\n")


def _prepare_secure(rd: Path, broker_port: int, controller_port: int) -> list[str]:
    """Write the secure broker's configuration and certificates; the storage format options
    that create its super user."""
    rd.chmod(0o700)  # the admin password and the key store are in here
    if not (rd / "admin.password").is_file():
        # A SCRAM user exists from format time on: new credentials need fresh storage.
        shutil.rmtree(rd / "data", ignore_errors=True)
    admin_password = _secret(rd / "admin.password")
    store_password = _secret(rd / "tls.password")
    _make_certificates(rd / "tls", store_password)
    (rd / "server.properties").touch(mode=0o600)
    (rd / "server.properties").write_text(
        _secure_server_properties(rd, broker_port, controller_port, admin_password, store_password)
    )
    return ["--add-scram", f"{SCRAM_MECHANISM}=[name={SECURE_ADMIN},password={admin_password}]"]


def _security_of(rd: Path, secure: bool) -> dict[str, str] | None:
    if not secure:
        return None
    config = secure_client_config(rd)
    del config["bootstrap.servers"]
    return config


LOG4J2_PROPERTIES = """\
# Written by streams/ops/kafka_local.py. WARN and above, plus the readiness line
# "Kafka Server started" that start() waits for.
status = warn
name = auditwatch-kafka-local
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def _random_cluster_id() -> str:
    # Same shape as `kafka-storage random-uuid` (Uuid.randomUuid: URL-safe base64 of 16 random
    # bytes, no padding) without paying for a JVM start. A leading "-" would read as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(java: str, libs: Path, rd: Path, extra: list[str] | None = None) -> None:
    data = rd / "data"
    if (data / "meta.properties").is_file():
        return
    cluster_id = _random_cluster_id()
    cmd = [
        java,
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={rd / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(rd / "server.properties"),
        "--ignore-formatted",
        *(extra or []),
    ]
    done = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, cwd=rd
    )
    if done.returncode != 0:
        raise KafkaLocalError(
            f"formatting {data} failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()[-4000:]}"
        )


# ------------------------------------------------------------------------------------ lifecycle


def _read_bootstrap(rd: Path) -> str | None:
    try:
        text = (rd / "bootstrap").read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def _configured_bootstrap(rd: Path) -> str | None:
    """The advertised listener of the broker configured in rd (for a broker still starting)."""
    try:
        lines = (rd / "server.properties").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line.startswith("advertised.listeners=") and "://" in line:
            return line.partition("//")[2].strip()
    return None


def _forget(rd: Path) -> None:
    for name in ("broker.pid", "bootstrap"):
        (rd / name).unlink(missing_ok=True)


def _launch(java: str, libs: Path, rd: Path) -> subprocess.Popen[bytes]:
    log = rd / "broker.log"
    if log.exists():  # keep the previous run's log for post-mortems, but only one
        log.replace(rd / "broker.log.1")
    cmd = [
        java,
        *JVM_OPTS,
        f"-XX:ErrorFile={rd / 'hs_err_pid%p.log'}",
        f"-Dlog4j2.configurationFile={rd / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(rd / "server.properties"),
    ]
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=rd,
            # Own session: Ctrl-C in the terminal that ran `start` must not kill the broker.
            start_new_session=True,
        )
    _children[proc.pid] = proc
    _write_atomically(rd / "broker.pid", f"{proc.pid}\n")
    return proc


def _wait_ready(
    pid: int, bootstrap: str, rd: Path, deadline: float, security: dict[str, str] | None = None
) -> None:
    """Block until the broker logged its start and answers metadata; raise if it died."""
    log = rd / "broker.log"
    started = False
    while True:
        if not _pid_alive(pid):
            tail = _log_tail(log)
            hint = ""
            if "UnsupportedClassVersionError" in tail:
                hint = "\nhint: Kafka 4.0 needs Java 17 or newer (see JAVA_HOME / java -version)."
            raise KafkaLocalError(
                f"the broker (pid {pid}) exited during start; last lines of {log}:\n{tail}{hint}"
            )
        if not started:
            with contextlib.suppress(FileNotFoundError):
                started = STARTED_MARKER in log.read_text(errors="replace")
        remaining = deadline - time.monotonic()
        if started and _healthy(bootstrap, max(1.0, min(5.0, remaining)), security):
            return
        if remaining <= 0:
            what = "answered metadata" if started else f"logged {STARTED_MARKER!r}"
            raise TimeoutError(
                f"the broker (pid {pid}) has not {what} in time; last lines of {log}:\n"
                f"{_log_tail(log)}"
            )
        time.sleep(0.2)


def start(*, timeout: float = 90, secure: bool = False) -> str:
    """Start the broker (or reuse the healthy one from this run dir); return its bootstrap.

    The first start formats storage with a random cluster id. Raises KafkaLocalError when Java
    or Maven is missing, the broker dies while starting (with the tail of broker.log), or it is
    not ready within ``timeout`` seconds (the half-started broker is then stopped).
    ``secure``: the SASL_SSL broker of its own run dir (see the module's docstring), which
    also writes client.env there.
    """
    began = time.monotonic()
    deadline = began + timeout
    rd = run_dir(secure=secure)
    hint = " --secure" if secure else ""
    rd.mkdir(parents=True, exist_ok=True)
    with _locked(rd / ".lock"):
        pid = _running_pid(rd)
        if pid is not None:
            bootstrap = _read_bootstrap(rd) or _configured_bootstrap(rd)
            if bootstrap is None:
                raise KafkaLocalError(
                    f"a broker (pid {pid}) runs from {rd} but its address is unknown; "
                    f"run `python -m streams.ops.kafka_local stop{hint}` and start again"
                )
            forced = None if secure else _forced_port()
            if forced is not None and bootstrap != f"{HOST}:{forced}":
                raise KafkaLocalError(
                    f"AUDITWATCH_KAFKA_PORT={forced}, but the broker from {rd} already listens "
                    f"on {bootstrap}; run `python -m streams.ops.kafka_local stop` first"
                )
            try:
                _wait_ready(pid, bootstrap, rd, deadline, _security_of(rd, secure))
            except TimeoutError as exc:
                raise KafkaLocalError(
                    f"{exc}\nThe running broker is not healthy; "
                    f"run `python -m streams.ops.kafka_local stop{hint}` and start again."
                ) from None
            _write_atomically(rd / "bootstrap", f"{bootstrap}\n")
            if secure:
                _write_client_env(rd)
            return bootstrap

        _forget(rd)
        java = _java()
        libs = fetch_jars()
        # The plaintext broker's port variable would put the secure one on the same port.
        forced = None if secure else _forced_port()
        (rd / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            broker_port, controller_port = _choose_ports(forced, secure=secure)
            bootstrap = f"{HOST}:{broker_port}"
            format_options: list[str] = []
            if secure:
                format_options = _prepare_secure(rd, broker_port, controller_port)
            else:
                (rd / "server.properties").write_text(
                    _server_properties(rd, broker_port, controller_port)
                )
            _format_storage(java, libs, rd, format_options)
            proc = _launch(java, libs, rd)
            try:
                _wait_ready(proc.pid, bootstrap, rd, deadline, _security_of(rd, secure))
            except KafkaLocalError:
                _forget(rd)
                lost_race = "Address already in use" in _log_tail(rd / "broker.log")
                if forced is None and lost_race and attempt < _BIND_ATTEMPTS:
                    _info("a chosen port was taken before the broker bound it; retrying")
                    continue
                raise
            except BaseException as exc:  # timeout, Ctrl-C: never leave a half-started broker
                _kill(proc.pid, 10)
                _forget(rd)
                if isinstance(exc, TimeoutError):
                    raise KafkaLocalError(f"{exc}\n(gave up after {timeout:.0f} s)") from None
                raise
            _write_atomically(rd / "bootstrap", f"{bootstrap}\n")
            if secure:
                _write_client_env(rd)
            what = "secure broker (SASL_SSL)" if secure else "broker"
            _info(f"{what} ready at {bootstrap} in {time.monotonic() - began:.1f} s")
            return bootstrap
    raise AssertionError("unreachable: the last attempt returns or raises")


def stop(*, timeout: float = 30, secure: bool = False) -> bool:
    """Stop the broker from this run dir: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns True if a broker was running. Data stays in the run dir for the next start.
    """
    rd = run_dir(secure=secure)
    if not rd.is_dir():
        return False
    with _locked(rd / ".lock"):
        pid = _running_pid(rd)
        if pid is None:
            _forget(rd)
            return False
        began = time.monotonic()
        hard = _kill(pid, timeout)
        _forget(rd)
        elapsed = time.monotonic() - began
        if hard:
            _info(f"broker (pid {pid}) ignored SIGTERM for {timeout:.0f} s; killed it")
        else:
            _info(f"broker (pid {pid}) stopped in {elapsed:.1f} s")
        return True


def status(*, secure: bool = False) -> str | None:
    """The bootstrap address if the broker from this run dir is running and healthy."""
    rd = run_dir(secure=secure)
    if _running_pid(rd) is None:
        return None
    bootstrap = _read_bootstrap(rd)
    if bootstrap is None or not _healthy(bootstrap, security=_security_of(rd, secure)):
        return None
    return bootstrap


def bootstrap_from_env_or_file() -> str | None:
    """``AUDITWATCH_BOOTSTRAP`` if set, else the local broker's address if its process lives.

    Cheap (no network): for deciding whether tests have a broker, not whether it is healthy.
    """
    env = os.environ.get("AUDITWATCH_BOOTSTRAP", "").strip()
    if env:
        return env
    rd = run_dir()
    if _running_pid(rd) is None:
        return None
    return _read_bootstrap(rd)


# ------------------------------------------------------------------------------------------ CLI


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; ``prog`` lets a parent command (``auditwatch kafka``) name itself."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m streams.ops.kafka_local",
        description=(
            f"Run a single-node Apache Kafka {KAFKA_VERSION} broker (KRaft) on {HOST} without "
            "Docker, for development, tests and CI. Needs Java 17+ and, for the one-time jar "
            "fetch, Maven."
        ),
        epilog=(
            "environment: AUDITWATCH_CACHE_DIR (jar cache, default .cache/kafka/"
            f"{KAFKA_VERSION}/libs), AUDITWATCH_RUN_DIR (data, config, pid, log; default "
            ".run/kafka), AUDITWATCH_KAFKA_PORT (force the broker port; default 9092 or a free "
            "port)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "fetch",
        help="download the broker's jars from Maven Central into the cache (once)",
        description="Resolve the broker's jars into the cache unless already there; "
        "prints the cache directory.",
    )
    start_cmd = commands.add_parser(
        "start",
        help="start the broker (or reuse a healthy one) and print its bootstrap address",
        description="Start the broker in the background, wait until it serves metadata, and "
        "print HOST:PORT on stdout. Reuses a healthy broker from the same run dir.",
    )
    secure_help = (
        "the second, secure broker (run dir .run/kafka-secure, ports 9094/9095 when free): a "
        "SASL_SSL listener with SCRAM-SHA-512, super user admin, StandardAuthorizer; it "
        "writes client.env there (`set -a; . .run/kafka-secure/client.env; set +a`)"
    )
    start_cmd.add_argument("--secure", action="store_true", help=secure_help)
    start_cmd.add_argument(
        "--timeout",
        type=float,
        default=90,
        help="seconds to wait for readiness before giving up (default: %(default)s)",
    )
    stop_cmd = commands.add_parser(
        "stop",
        help="stop the broker (SIGTERM, then SIGKILL); data is kept",
        description="Stop the broker started from the run dir; succeeds if none is running.",
    )
    stop_cmd.add_argument(
        "--timeout",
        type=float,
        default=30,
        help="seconds to wait after SIGTERM before SIGKILL (default: %(default)s)",
    )
    stop_cmd.add_argument("--secure", action="store_true", help="the secure broker")
    status_cmd = commands.add_parser(
        "status",
        help="print the bootstrap address if the broker is running and healthy (exit 1 if not)",
        description="Exit 0 and print HOST:PORT if the broker answers metadata, else exit 1.",
    )
    status_cmd.add_argument("--secure", action="store_true", help="the secure broker")
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point for ``python -m streams.ops.kafka_local`` and ``auditwatch kafka``."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch_jars())
        elif args.command == "start":
            print(start(timeout=args.timeout, secure=args.secure))
        elif args.command == "stop":
            if not stop(timeout=args.timeout, secure=args.secure):
                _info("no broker running")
        elif args.command == "status":
            bootstrap = status(secure=args.secure)
            if bootstrap is None:
                _info("not running")
                return 1
            print(bootstrap)
    except KafkaLocalError as exc:
        print(f"kafka-local: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
