"""Unit tests for the detection rules in streams.ops.config: peer-group patterns, suppressions with
expiry, per-group and per-machine overrides, and how they reach the detection core."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from detectors.config import DetectorConfig, Override, Suppression
from detectors.core import DetectionCore
from schemas.event import AuditEvent
from streams.ops.config import Config, ConfigError, DetectorPatch, DetectorSettings, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "auditwatch.example.yaml"


def ms(*args: int, tz: Any = UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


@pytest.fixture
def load(tmp_path: Path) -> Any:
    """Write YAML text to a file and load it; returns (config, path)."""

    def _load(text: str) -> Config:
        path = tmp_path / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return load_config(path)

    return _load


def error_line(message: str, key: str) -> str:
    return next(ln for ln in message.splitlines() if key in ln)


# --- group patterns ---------------------------------------------------------------------


def test_group_settings_reach_the_core(load: Any) -> None:
    cfg = load(
        "detectors:\n"
        "  groups:\n"
        "    attribute: k8s.deployment\n"
        "    patterns: ['^(?P<group>ci-runner)-\\d+$', '^(batch)-']\n"
    ).detectors.build()
    assert cfg.group_attribute == "k8s.deployment"
    assert cfg.group_patterns == (r"^(?P<group>ci-runner)-\d+$", "^(batch)-")
    core = DetectionCore(cfg)

    def group(machine_id: str, **attributes: str) -> str:
        ev = AuditEvent("e", 1, machine_id, "db://x", "SELECT", "SUCCESS", attributes=attributes)
        return core.group_of(ev)

    assert group("ci-runner-12") == "ci-runner"
    assert group("batch-nightly-3") == "batch"
    assert group("ci-runner-12", **{"k8s.deployment": "builder"}) == "builder"


@pytest.mark.parametrize("pattern", ["(unclosed", "^[a-", "*runner", "(?P<group>a)(?P<group>b)"])
def test_invalid_group_pattern_names_key_and_pattern(load: Any, pattern: str) -> None:
    text = yaml.safe_dump({"detectors": {"groups": {"patterns": ["^ok-", pattern]}}})
    with pytest.raises(ConfigError) as info:
        load(text)
    line = error_line(str(info.value), "detectors.groups.patterns")
    assert repr(pattern) in line
    assert "regular expression" in line


# --- suppressions -----------------------------------------------------------------------


def suppression(load: Any, until: str) -> Suppression:
    cfg = load(
        "detectors:\n"
        "  suppress:\n"
        "    - machine: ci-runner-*\n"
        "      resource: s3://build-cache/*\n"
        "      detector: new_resource\n"
        f"      until: {until}\n"
        "      reason: cache migration\n"
    )
    [s] = cfg.detectors.build().suppressions
    return s


def test_suppression_fields_are_built(load: Any) -> None:
    s = suppression(load, "2027-01-31")
    assert (s.machine, s.resource, s.detector, s.reason) == (
        "ci-runner-*",
        "s3://build-cache/*",
        "new_resource",
        "cache migration",
    )


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("2027-01-31", ms(2027, 1, 31)),  # a date: midnight UTC at its start
        ("2027-01-31T12:00:00+02:00", ms(2027, 1, 31, 10)),
        ("2027-01-31T00:00:00+02:00", ms(2027, 1, 30, 22)),
        ("2027-01-31T12:00:00Z", ms(2027, 1, 31, 12)),
        ("'2027-01-31T12:00:00-05:00'", ms(2027, 1, 31, 17)),  # quoted: parsed by pydantic
        ("2027-01-31 12:00:00", ms(2027, 1, 31, 12)),  # no zone: taken as UTC
        ("null", None),
    ],
)
def test_suppression_until(load: Any, until: str, expected: int | None) -> None:
    assert suppression(load, until).until_ms == expected


@pytest.mark.parametrize("via", ["quoted-yaml", "override"])
def test_suppression_until_string_keeps_its_offset(load: Any, via: str) -> None:
    text = "2027-01-31T00:00:00+02:00"
    if via == "quoted-yaml":
        until_ms = suppression(load, f"'{text}'").until_ms
    else:
        cfg = load_config(overrides={"detectors.suppress": [{"until": text}]})
        until_ms = cfg.detectors.build().suppressions[0].until_ms
    assert until_ms == ms(2027, 1, 30, 22)


def test_suppression_unknown_key_is_named(load: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load("detectors:\n  suppress:\n    - machine: x\n      expires: 2027-01-01\n")
    assert "unknown" in error_line(str(info.value), "detectors.suppress.0.expires")


# --- overrides --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"bogus": 1}, "detectors.overrides.0.settings.bogus"),
        ({"rate": {"zz": 3}}, "detectors.overrides.0.settings.rate.zz"),
        ({"suppress": []}, "detectors.overrides.0.settings.suppress"),
    ],
)
def test_override_unknown_keys_are_named(load: Any, settings: dict[str, Any], key: str) -> None:
    text = yaml.safe_dump(
        {"detectors": {"overrides": [{"group": "batch-*", "settings": settings}]}}
    )
    with pytest.raises(ConfigError) as info:
        load(text)
    assert "unknown" in error_line(str(info.value), key)


@pytest.mark.parametrize(
    ("settings", "key", "value"),
    [
        ({"failure_min_count": 0}, "detectors.overrides.0.settings.failure_min_count", "0"),
        ({"failure_min_ratio": 1.5}, "detectors.overrides.0.settings.failure_min_ratio", "1.5"),
        ({"rate": {"z": -1}}, "detectors.overrides.0.settings.rate.z", "-1"),
    ],
)
def test_override_bad_values_are_named(
    load: Any, settings: dict[str, Any], key: str, value: str
) -> None:
    text = yaml.safe_dump({"detectors": {"overrides": [{"settings": settings}]}})
    with pytest.raises(ConfigError) as info:
        load(text)
    assert value in error_line(str(info.value), key)


def test_override_needs_settings(load: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load("detectors:\n  overrides:\n    - group: batch-*\n")
    assert "detectors.overrides.0.settings" in str(info.value)


def test_detector_patch_rejects_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        DetectorPatch.model_validate({"bogus": 1})


def test_overrides_build_into_override_tuples(load: Any) -> None:
    cfg = load(
        "detectors:\n"
        "  overrides:\n"
        "    - group: batch-*\n"
        "      settings: {rate: {z: 9}, cooldown_s: 3600}\n"
        "    - machine: batch-etl-01\n"
        "      settings: {failure_min_count: 50}\n"
    ).detectors.build()
    first, second = cfg.overrides
    assert isinstance(first, Override)
    assert (first.machine, first.group) == ("*", "batch-*")
    assert ("rate", (("z", 9.0),)) in first.settings
    assert ("cooldown_s", 3600) in first.settings
    assert len(first.settings) == 2  # unset patch fields are not carried
    assert second == Override(machine="batch-etl-01", settings=(("failure_min_count", 50),))
    hash(cfg.overrides)  # hashable: part of the config version

    core = DetectionCore(cfg)
    effective = core.config_for("batch-etl-01", "batch-etl")
    assert (effective.rate.z, effective.cooldown_s, effective.failure_min_count) == (9.0, 3600, 50)
    assert effective.rate.min_count == cfg.rate.min_count
    assert core.config_for("orders-api-01", "orders-api") is core.config


def version(**settings: Any) -> str:
    return DetectorSettings(**settings).build().version()


@pytest.mark.parametrize(
    "change",
    [
        {"groups": {"patterns": ["^(ci)-"]}},
        {"groups": {"attribute": "k8s.deployment"}},
        {"suppress": [{"machine": "ci-*"}]},
        {"suppress": [{"machine": "ci-*", "until": "2027-01-31"}]},
        {"overrides": [{"group": "batch-*", "settings": {"cooldown_s": 60}}]},
        {"overrides": [{"group": "batch-*", "settings": {"rate": {"z": 9}}}]},
    ],
)
def test_config_version_changes_with_rules(change: dict[str, Any]) -> None:
    assert version(**change) != version()


def test_config_version_tells_rule_variants_apart() -> None:
    a = version(overrides=[{"group": "batch-*", "settings": {"cooldown_s": 60}}])
    b = version(overrides=[{"group": "batch-*", "settings": {"cooldown_s": 61}}])
    c = version(suppress=[{"machine": "ci-*", "until": "2027-01-31"}])
    d = version(suppress=[{"machine": "ci-*", "until": "2027-02-01"}])
    assert len({a, b, c, d}) == 4
    assert a == version(overrides=[{"group": "batch-*", "settings": {"cooldown_s": 60}}])


# --- the example config -----------------------------------------------------------------


def test_example_config_loads_to_the_defaults() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg == Config()
    built = cfg.detectors.build()
    assert built == DetectorConfig()
    assert (built.group_patterns, built.suppressions, built.overrides) == ((), (), ())
    assert built.group_attribute is None


def test_examples_in_the_example_config_comments_are_valid(load: Any) -> None:
    # The rules shown in deploy/auditwatch.example.yaml's comments, as a user would paste them.
    cfg = load(
        "detectors:\n"
        "  groups:\n"
        "    attribute: k8s.deployment\n"
        "    patterns: ['^(?P<group>ci-runner)-\\d+$']\n"
        '  suppress: [{machine: "ci-runner-*", resource: "s3://build-cache/*",\n'
        '              detector: new_resource, until: 2027-01-31, reason: "..."}]\n'
        '  overrides: [{group: "batch-*", settings: {rate: {z: 8}, cooldown_s: 3600}}]\n'
    ).detectors.build()
    assert cfg.suppressions[0].until_ms == ms(2027, 1, 31)
    assert cfg.overrides[0].settings == (("cooldown_s", 3600), ("rate", (("z", 8.0),)))
