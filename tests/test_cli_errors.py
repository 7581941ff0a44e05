"""The command line's failure modes: alert fields that look like rich markup, a bad log
format from the environment, and operational errors reported in one line (exit 1)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException
from rich.console import Console

from streams.cli.main import _alert_line, _operational_error, _print_table, format_alert_row, main
from tests.conftest import Stack

NASTY = {
    "alert_id": "a-" + "5" * 24,
    "status": "opened",
    "machine_id": "etl-[/oops]-1",
    "group": "etl",
    "detector": "new_resource",
    "severity": "high",
    "score": 70.0,
    "event_time": "2026-01-01T03:00:00.000Z",
    "summary": "etl-[/oops]-1 read s3://b/[/oops] and [bold]s3://c/x[/bold] \\",
}


def rendered(print_to: Any) -> str:
    out = io.StringIO()
    print_to(Console(file=out, width=400, color_system=None))
    return out.getvalue()


def test_alert_fields_that_look_like_markup_are_printed_as_they_are() -> None:
    line = rendered(lambda c: c.print(_alert_line(NASTY, "acked by [red]x[/red]")))
    assert "etl-[/oops]-1: etl-[/oops]-1 read s3://b/[/oops] and [bold]s3://c/x[/bold] \\" in line
    assert "(acked by [red]x[/red])" in line and NASTY["alert_id"] in line
    table = rendered(lambda c: _print_table(c, [format_alert_row(NASTY, "[/]")]))
    for text in ("etl-[/oops]-1", "s3://b/[/oops]", "[bold]s3://c/x[/bold]", "[/]"):
        assert text in table


def test_an_unknown_severity_does_not_crash_the_feed() -> None:
    assert "WEIRD" in rendered(lambda c: c.print(_alert_line({**NASTY, "severity": "weird"})))


def test_log_format_from_the_environment_is_case_insensitive_and_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1"}}))
    monkeypatch.setenv("AUDITWATCH_LOG_FORMAT", "JSON")
    assert main(["config", "check", str(cfg)]) == 0
    monkeypatch.setenv("AUDITWATCH_LOG_FORMAT", "yaml")
    assert main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "log format 'yaml'" in err and "AUDITWATCH_LOG_FORMAT" in err
    assert "Traceback" not in err
    monkeypatch.delenv("AUDITWATCH_LOG_FORMAT")
    monkeypatch.setenv("AUDITWATCH_LOG_LEVEL", "loud")
    assert main(["config", "check", str(cfg)]) == 2
    assert "log level 'loud'" in capsys.readouterr().err


def test_operational_errors_are_one_line() -> None:
    e = KafkaException(KafkaError(KafkaError._TRANSPORT, "all brokers down\nfor good"))
    assert _operational_error(e) == "Kafka: all brokers down for good (_TRANSPORT)"
    assert _operational_error(TimeoutError()) == "timed out"
    assert _operational_error(RuntimeError("topic 'x' does not exist")) == (
        "topic 'x' does not exist"
    )


@pytest.mark.kafka
def test_acting_on_an_alert_without_a_control_topic_is_an_error_not_a_traceback(
    stack: Any, capsys: Any
) -> None:
    s: Stack = stack()  # its unique topics are never created
    rc = main(["alerts", "ack", "a-" + "6" * 24, "--config", str(s.config_path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.strip().splitlines() == [
        f"auditwatch: error: control topic {s.cfg.topics.control!r} does not exist at "
        f"{s.cfg.kafka.bootstrap()} (run `auditwatch topics create`)"
    ]
