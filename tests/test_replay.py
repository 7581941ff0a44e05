"""Replay without Kafka: the same core over files, pages as JSON lines."""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import orjson

from schemas.registry import parsed
from streams.config import load_config
from streams.replay import replay
from tests.traffic import scenario


def test_replay_pages_follow_the_alert_contract(tmp_path: Path) -> None:
    events, _ = scenario()
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    buf = io.BytesIO()
    result = replay(load_config(), [str(path)], buf)
    assert result.pages == len(buf.getvalue().splitlines())
    schema = parsed("alert")
    pages = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    assert pages
    for page in pages:
        assert fastavro.validation.validate(page, schema, raise_errors=True)
        assert page["status"] in ("opened", "escalated")
        assert page["severity"] in ("medium", "high", "critical")
        assert 0 <= page["score"] <= 100
        assert page["event_time"].endswith("Z") and len(page["event_ids"]) <= 10
        assert page["summary"].endswith(".")
