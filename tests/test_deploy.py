"""The Docker stack's files agree with each other and with the code (no Docker, no Kafka).

Each test ties a value in one file to the place that consumes it in another, so a rename or
port change on one side fails here instead of at `docker compose up`.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.ops.config import Config, TopicSettings, load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKER_CONFIG = ROOT / "deploy" / "config.docker.yaml"
PYPROJECT = ROOT / "pyproject.toml"

AUDITWATCH_SERVICES = ("topics", "auditwatch", "producer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict), "docker-compose.yml has no services mapping"
    return svcs


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, Any]) -> dict[str, str]:
    return environment(services["kafka"])


@pytest.fixture(scope="module")
def docker_config() -> Config:
    # Through the real loader, so an unknown or invalid key fails here too.
    return load_config(DOCKER_CONFIG)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` (host may be empty) as {NAME: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in value.split(","):
        m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)://([^:/]*):(\d+)\s*", item)
        assert m, f"unparseable listener {item!r} in {value!r}"
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def published_ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(published, target) pairs from the short (`[ip:]pub:target[/proto]`) or long syntax."""
    pairs: set[tuple[int, int]] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            pairs.add((int(entry["published"]), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        assert len(parts) >= 2, f"port {entry!r} is not published on the host"
        pairs.add((int(parts[-2]), int(parts[-1])))
    return pairs


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    assert isinstance(cmd, list), "use the exec (list) form so arguments are not re-split"
    return [str(c) for c in cmd]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: source} for the short volume syntax."""
    out: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out[entry["target"]] = entry["source"]
            continue
        source, target, *_ = str(entry).split(":")
        out[target] = source
    return out


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON (exec) form of the last `instruction` in the Dockerfile."""
    found = re.findall(
        rf"^\s*{instruction}\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.M
    )
    assert found, f"Dockerfile has no {instruction} in exec (JSON) form"
    value = json.loads(found[-1])
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_services_exist(services: dict[str, Any]) -> None:
    assert {"kafka", "topics", "auditwatch"} <= services.keys()


def test_kafka_image_is_apache_kafka_4_0(services: dict[str, Any]) -> None:
    image = services["kafka"].get("image", "")
    assert re.fullmatch(r"apache/kafka:4\.0\.\d+", image), image


def test_config_bootstrap_is_the_internal_advertised_listener(
    services: dict[str, Any], kafka_env: dict[str, str], docker_config: Config
) -> None:
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    internal = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    host, port = advertised[internal]
    assert docker_config.kafka.bootstrap_servers == f"{host}:{port}"
    # Other containers resolve the broker by its compose service name.
    assert host in services, f"{host!r} is not a compose service name"
    # The broker must actually listen on the port it advertises.
    assert listeners(kafka_env["KAFKA_LISTENERS"])[internal][1] == port


def test_external_listener_is_published_on_its_advertised_port(
    services: dict[str, Any], kafka_env: dict[str, str]
) -> None:
    advertised_host, advertised_port = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])[
        "EXTERNAL"
    ]
    listen_port = listeners(kafka_env["KAFKA_LISTENERS"])["EXTERNAL"][1]
    assert advertised_host in {"localhost", "127.0.0.1"}
    assert (advertised_port, listen_port) in published_ports(services["kafka"])


def test_kafka_listener_names_are_consistent(kafka_env: dict[str, str]) -> None:
    protocol_map = dict(
        item.split(":", 1) for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listening = listeners(kafka_env["KAFKA_LISTENERS"])
    controller = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listening) <= set(protocol_map)
    assert controller in listening
    # A controller listener is never advertised to clients.
    assert controller not in listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    voter_port = int(kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1])
    assert voter_port == listening[controller][1]
    assert kafka_env["KAFKA_PROCESS_ROLES"].split(",") == ["broker", "controller"]
    # The `topics` service is the only thing that creates topics.
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_healthcheck_probes_a_listening_port(
    services: dict[str, Any], kafka_env: dict[str, str]
) -> None:
    test = services["kafka"]["healthcheck"]["test"]
    probe = " ".join(test) if isinstance(test, list) else str(test)
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in probe
    m = re.search(r"--bootstrap-server\s+localhost:(\d+)", probe)
    assert m, probe
    internal = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert int(m.group(1)) == listeners(kafka_env["KAFKA_LISTENERS"])[internal][1]


def test_startup_order(services: dict[str, Any]) -> None:
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert (
        services["auditwatch"]["depends_on"]["topics"]["condition"]
        == "service_completed_successfully"
    )
    assert command(services["topics"])[:2] == ["topics", "create"]
    assert command(services["auditwatch"])[0] == "run"
    assert services["producer"].get("profiles") == ["demo"], "demo traffic must be opt-in"


@pytest.mark.parametrize("name", AUDITWATCH_SERVICES)
def test_config_file_is_mounted_where_the_command_reads_it(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service.get("build") in (".", {"context": "."}), "must run the image built here"
    config_path = option(command(service), "--config")
    source = mounts(service).get(config_path)
    assert source is not None, f"{name}: nothing mounted at {config_path}"
    assert (COMPOSE.parent / source).resolve() == DOCKER_CONFIG.resolve()


def test_dockerfile_default_command_reads_the_mounted_config(services: dict[str, Any]) -> None:
    default_cmd = dockerfile_exec_form("CMD")
    assert default_cmd[0] == "run"
    assert option(default_cmd, "--config") == option(command(services["auditwatch"]), "--config")


def test_state_dir_is_a_volume(
    compose: dict[str, Any], services: dict[str, Any], docker_config: Config
) -> None:
    state_dir = docker_config.kafka.state_dir
    assert state_dir in dockerfile_exec_form("VOLUME")
    source = mounts(services["auditwatch"]).get(state_dir)
    assert source is not None, f"auditwatch: no volume at {state_dir}"
    assert source in (compose.get("volumes") or {}), f"{source!r} is not a named volume"


def test_entrypoint_is_the_packaged_console_script() -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["auditwatch"]
    scripts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
    assert "auditwatch" in scripts


def test_dockerfile_runs_as_non_root() -> None:
    users = re.findall(r"^\s*USER\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert users, "Dockerfile never switches away from root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_topic_names_are_the_documented_defaults(docker_config: Config) -> None:
    defaults = TopicSettings()
    for role in ("events", "alerts", "archive", "deadletter"):
        assert getattr(docker_config.topics, role) == getattr(defaults, role), role


def test_topic_replication_fits_the_single_broker(
    docker_config: Config, kafka_env: dict[str, str]
) -> None:
    # Combined mode: every voter is also a broker.
    brokers = len(kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    assert docker_config.topics.replication_factor <= brokers
    assert int(kafka_env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) <= brokers
    assert int(kafka_env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) <= brokers


def test_the_local_broker_lives_under_the_repository_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # .ci/run tails .run/kafka/broker.log on failure and `make kafka-stop` finds the broker
    # there: the module's defaults must name the repository's directories, wherever the
    # module sits inside streams/.
    from streams.ops import kafka_local

    monkeypatch.delenv("AUDITWATCH_RUN_DIR", raising=False)
    monkeypatch.delenv("AUDITWATCH_CACHE_DIR", raising=False)
    root = Path(__file__).resolve().parent.parent
    assert kafka_local.run_dir() == root / ".run" / "kafka"
    assert kafka_local.cache_dir().parent.parent == root / ".cache" / "kafka"
    assert (root / "pyproject.toml").is_file()
