"""`auditwatch config check`: effective values with secrets masked, exit 2 naming the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streams.cli.main import main
from streams.ops.config import load_config


def test_valid_config_prints_effective_values_with_secrets_masked(
    tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / "tuned.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"librdkafka": {"sasl.password": "hunter2", "security.protocol": "SSL"}},
                "input": {
                    "schema_registry": {"url": "http://reg:8081", "basic_auth_user_info": "u:pw"}
                },
                "detectors": {"cooldown_s": 600, "rate": {"min_ratio": 5}},
            }
        )
    )
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "hunter2" not in out and "u:pw" not in out
    effective = yaml.safe_load(out)
    # Set values, and the defaults of everything not set.
    assert effective["detectors"]["cooldown_s"] == 600
    assert effective["detectors"]["rate"]["min_ratio"] == 5
    assert effective["detectors"]["rate"]["z"] == 6.0
    assert effective["topics"]["events"] == "audit.events"
    assert effective["kafka"]["librdkafka"] == {
        "sasl.password": "**********",
        "security.protocol": "SSL",
    }
    assert effective["input"]["schema_registry"]["basic_auth_user_info"] == "**********"
    version = load_config(path).detectors.build().version()
    assert f"# config_version: {version}" in out
    assert "valid" in err and version in err


def test_invalid_config_exits_2_naming_key_and_value(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("detectors:\n  cooldown_s: -5\n  rate:\n    z: lots\n  colour: blue\n")
    assert main(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "detectors.cooldown_s = -5" in err
    assert "detectors.rate.z = 'lots'" in err
    assert "detectors.colour: unknown key" in err


def test_unreadable_or_not_yaml_config_exits_2(tmp_path: Path, capsys: Any) -> None:
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    bad = tmp_path / "broken.yaml"
    bad.write_text("detectors: [unclosed\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
