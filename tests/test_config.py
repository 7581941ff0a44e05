"""Unit tests for streams.ops.config: defaults, validation messages, config_version, masking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.core import DetectorConfig
from schemas.event import Limits
from streams.ops.config import Config, ConfigError, DetectorSettings, load_config
from tests.conftest import raw_client_config


@pytest.fixture
def write(tmp_path: Path) -> Any:
    def _write(data: Any, text: str | None = None) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(data), encoding="utf-8")
        return path

    return _write


def test_defaults_load() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.kafka.processing_guarantee == "at-least-once"
    assert cfg.topics.events == "audit.events"
    assert cfg.input.format == "auto"
    assert cfg.input.limits() == Limits()
    assert cfg.detectors.build() == DetectorConfig()


@pytest.mark.parametrize("text", ["", "# nothing here\n", "{}\n"])
def test_empty_file_is_defaults(write: Any, text: str) -> None:
    assert load_config(write(None, text)) == Config()


def test_yaml_values_are_applied(write: Any) -> None:
    path = write(
        {
            "kafka": {
                "bootstrap_servers": "broker:9092",
                "processing_guarantee": "exactly-once",
                "librdkafka": {"linger.ms": 5},
            },
            "input": {"format": "json", "max_future_s": 60},
            "detectors": {"cooldown_s": 120, "rate": {"z": 4.5}},
        }
    )
    cfg = load_config(path)
    assert cfg.kafka.processing_guarantee == "exactly-once"
    assert cfg.input.limits().max_future_ms == 60_000
    built = cfg.detectors.build()
    assert built.cooldown_s == 120
    assert built.rate.z == 4.5
    client = cfg.kafka.client_config()
    client.pop("logger", None)  # where librdkafka's log lines go, not a setting of the file
    assert client == raw_client_config("broker:9092", **{"linger.ms": 5})


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        ({"detectors": {"rate": {"z": -1}}}, "detectors.rate.z", "-1"),
        ({"kafka": {"processing_guarantee": "twice"}}, "kafka.processing_guarantee", "'twice'"),
        ({"detectors": {"rate": {"alpha": 1.5}}}, "detectors.rate.alpha", "1.5"),
        ({"input": {"format": "xml"}}, "input.format", "'xml'"),
        ({"topics": {"partitions": 0}}, "topics.partitions", "0"),
        ({"detectors": {"max_resources": "many"}}, "detectors.max_resources", "'many'"),
    ],
)
def test_bad_value_names_key_and_value(write: Any, data: Any, key: str, value: str) -> None:
    path = write(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    line = next(ln for ln in message.splitlines() if key in ln)
    assert value in line


def test_every_bad_key_is_reported(write: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write({"detectors": {"rate": {"z": -1}, "cooldown_s": -5}}))
    assert "detectors.rate.z" in str(info.value)
    assert "detectors.cooldown_s" in str(info.value)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"kafka": {"bootstrap": "x:9092"}}, "kafka.bootstrap"),
        ({"detectors": {"rate": {"zz": 3}}}, "detectors.rate.zz"),
        ({"alerting": {}}, "alerting"),
    ],
)
def test_unknown_key_is_reported_by_name(write: Any, data: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(data))
    line = next(ln for ln in str(info.value).splitlines() if key in ln)
    assert "unknown" in line


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_rejected(write: Any, text: str) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(None, text))


def test_invalid_yaml_rejected(write: Any) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(None, "kafka: [unclosed\n"))


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_are_validated() -> None:
    assert load_config(overrides={"detectors.rate.z": 4.0}).detectors.rate.z == 4.0
    with pytest.raises(ConfigError, match=r"detectors\.rate\.z"):
        load_config(overrides={"detectors.rate.z": -1})


def version(**settings: Any) -> str:
    return DetectorSettings(**settings).build().version()


def test_config_version_stable_for_equal_configs(write: Any) -> None:
    assert version() == version()
    assert version(cooldown_s=900) == version()  # explicit default is the same config
    from_yaml = load_config(write({"detectors": {"rate": {"z": 6.0}, "warmup_s": 3600}}))
    assert from_yaml.detectors.build().version() == version()
    assert len(version()) == 12
    int(version(), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"cooldown_s": 901},
        {"warmup_events": 51},
        {"resource_depth": 3},
        {"max_resources": 999},
        {"resource_horizon_days": 7},
        {"fanout_window_s": 600},
        {"update_every_s": 30},
        {"rate": {"z": 5.0}},
        {"rate": {"interval_s": 30}},
        {"rate": {"min_count": 21}},
    ],
)
def test_config_version_changes_with_a_detector_setting(change: dict[str, Any]) -> None:
    assert version(**change) != version()


def test_masked_hides_librdkafka_secrets() -> None:
    cfg = Config.model_validate(
        {
            "kafka": {
                "bootstrap_servers": "broker:9092",
                "librdkafka": {
                    "security.protocol": "SASL_SSL",
                    "sasl.username": "auditwatch",
                    "sasl.password": "hunter2",
                    "sasl.oauthbearer.client.secret": "s3cr3t",
                },
            },
            "input": {"schema_registry": {"url": "http://sr:8081", "basic_auth_user_info": "u:pw"}},
        }
    )
    masked = cfg.masked()
    lib = masked["kafka"]["librdkafka"]
    assert lib["sasl.password"] != "hunter2"
    assert lib["sasl.oauthbearer.client.secret"] != "s3cr3t"
    assert lib["sasl.username"] == "auditwatch"
    assert lib["security.protocol"] == "SASL_SSL"
    text = repr(masked)
    for secret in ("hunter2", "s3cr3t", "u:pw"):
        assert secret not in text
    # The real values are still there for the clients.
    assert cfg.kafka.client_config()["sasl.password"] == "hunter2"


def _leaf_keys(node: Any, prefix: str = "") -> set[str]:
    """Dotted paths to every setting. Free-form mappings (`kafka.librdkafka: {}`) and lists
    are settings in their own right, not sections, so they count as leaves."""
    if isinstance(node, dict) and node:
        keys: set[str] = set()
        for name, value in node.items():
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        return keys
    return {prefix.rstrip(".")}


def test_example_config_documents_exactly_the_defaults() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "auditwatch.example.yaml"
    # Equal values alone would pass with keys left out (defaults fill them in): the README
    # promises every key is listed, so compare the keys themselves.
    listed = _leaf_keys(yaml.safe_load(example.read_text(encoding="utf-8")))
    expected = _leaf_keys(Config().model_dump())
    assert not expected - listed, f"missing from {example.name}: {sorted(expected - listed)}"
    assert not listed - expected, f"unknown keys in {example.name}: {sorted(listed - expected)}"
    assert load_config(example) == Config()


def test_leaf_keys_names_a_missing_key() -> None:
    full = {"kafka": {"librdkafka": {}, "state_dir": "state"}, "groups": {"patterns": []}}
    assert _leaf_keys(full) == {"kafka.librdkafka", "kafka.state_dir", "groups.patterns"}
    partial = {"kafka": {"librdkafka": {}}, "groups": {"patterns": []}}
    assert _leaf_keys(full) - _leaf_keys(partial) == {"kafka.state_dir"}


def test_deploy_configs_name_every_topic() -> None:
    # The deployment configs spell out each topic name so an operator sees every topic the
    # worker will create or read; a topic added to the model but not to them goes unnoticed.
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    docker = yaml.safe_load((deploy / "config.docker.yaml").read_text(encoding="utf-8"))
    configmap = next(
        doc
        for doc in yaml.safe_load_all((deploy / "k8s" / "configmap.yaml").read_text("utf-8"))
        if doc and doc.get("kind") == "ConfigMap"
    )
    k8s = yaml.safe_load(configmap["data"]["config.yaml"])
    names = {k for k, v in Config().topics.model_dump().items() if isinstance(v, str)}
    assert "control" in names
    for where, cfg in (("config.docker.yaml", docker), ("k8s/configmap.yaml", k8s)):
        assert not names - set(cfg["topics"]), f"{where} lacks topics {names - set(cfg['topics'])}"


def test_a_retired_detector_setting_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A config file written for the release before issue 16 (silence_min_active_hours) still
    loads: the key is ignored and the log says what replaced it."""
    from streams.ops.config import DetectorSettings

    with caplog.at_level("WARNING", logger="auditwatch.config"):
        settings = DetectorSettings.model_validate({"silence_min_active_hours": 12})
    assert settings == DetectorSettings()
    assert "silence_min_active_hours is no longer used" in caplog.text
    assert "silence_expect_share" in caplog.text
