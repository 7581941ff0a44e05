"""The producer and on-call commands against the real broker."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import decode_wire
from streams.cli.main import main
from streams.processor import event_id_of
from streams.tools.reading import pipeline_lag
from tests.conftest import Stack, wait_until
from tests.traffic import BASE_MS, fan_out, steady

pytestmark = pytest.mark.kafka


def test_produce_files_then_read_alerts(stack: Any, tmp_path: Path, capsys: Any) -> None:
    # Two hours stand for a machine with history: its first new resource pages at once.
    s: Stack = stack(detectors__mature_after_s=0)
    s.create_topics()
    machine = "etl-node-03"
    history = steady(machine, ["postgres://dw/public.facts"], BASE_MS, 2 * 3600, every_ms=2000)
    jsonl = tmp_path / "history.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in history))
    # The fan-out arrives as CSV with the producer's own column names.
    attack = fan_out(machine, BASE_MS + 2 * 3600 * 1000 + 60_000, n=8)
    csv_path = tmp_path / "attack.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "time", "host", "object", "action", "result", "team"])
        for e in attack:
            w.writerow(
                [e["event_id"], e["timestamp"], machine, e["resource"], "read", "success", "data"]
            )

    cfg = ["--config", str(s.config_path)]
    assert main(["produce", str(jsonl), *cfg]) == 0
    assert (
        main(
            [
                "produce",
                str(csv_path),
                "--format",
                "csv",
                "--encoding",
                "json",
                "--csv-map",
                "event_id=id,timestamp=time,machine_id=host,resource=object,operation=action,"
                "outcome=result",
                *cfg,
            ]
        )
        == 0
    )
    assert "sent 8 events" in capsys.readouterr().err

    s.start_worker()
    wait_until(
        lambda: pipeline_lag(s.cfg) == 0,
        timeout=120,
        what="processor to commit every event",
    )
    archive = {
        event_id_of(m.key()): decode_wire(m.value(), "archive_record") for m in s.read("archive")
    }
    assert len(archive) == len(history) + len(attack)
    csv_record = archive[attack[0]["event_id"]]
    assert csv_record["original_format"] == "JSON"
    assert csv_record["event"]["attributes"] == {"team": "data"}

    assert main(["alerts", "--json", "--min-severity", "medium", *cfg]) == 0
    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert alerts and {a["machine_id"] for a in alerts} == {machine}
    assert {a["detector"] for a in alerts} == {"new_resource"}
    assert alerts[0]["status"] == "opened" and alerts[0]["event_ids"] == [attack[0]["event_id"]]

    assert main(["alerts", *cfg]) == 0
    table = capsys.readouterr().out
    assert "alert states" in table and "new_resource" in table


def test_produce_synthetic_sends_what_it_generates(stack: Any, capsys: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    assert (
        main(
            [
                "produce",
                "--synthetic",
                "--hours",
                "0.25",
                "--machines",
                "12",
                "--anomalies",
                "fan_out=1",
                "--config",
                str(s.config_path),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "injecting fan_out" in err
    sent = int(err.split("sent ")[1].split(" events")[0].replace(",", ""))
    assert sent > 0
    assert len(s.read("events")) == sent
