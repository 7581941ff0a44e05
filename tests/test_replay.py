"""Replay without Kafka: the same core over files, pages as JSON lines."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import fastavro
import orjson
import pytest

import streams.tools.replay as replay_module
from schemas.codec import BundledSchemas
from schemas.event import Limits, event_from_mapping
from schemas.registry import parsed
from streams.cli.main import main
from streams.ops.config import load_config
from streams.processor import Processor
from streams.tools.partitioning import PartitionedDetection
from streams.tools.replay import replay
from streams.tools.synthetic import SyntheticConfig, SyntheticTraffic
from tests.traffic import BASE_MS, scenario, steady


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


def test_several_processes_differ_from_one_only_where_a_group_spans_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each process is a worker of its own: the partitions it takes share their peer groups'
    # knowledge, the other processes' do not. A group whose machines all hash to one
    # partition is judged the same in any split.
    traffic = SyntheticConfig(
        seed=11,
        start_ms=BASE_MS,
        duration_s=30 * 3600,
        machines=40,
        rate_scale=0.3,
        warmup_s=24 * 3600,
        anomalies={"fan_out": 2, "rate_burst": 1, "failure_spike": 1, "silence": 1},
        benign={"pod_rotation": 1},
    )
    events = list(SyntheticTraffic(traffic))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    cfg = load_config()
    # This file is smaller than what replay splits by default.
    monkeypatch.setattr(replay_module, "_PARALLEL_FROM", 0)
    one, three = io.BytesIO(), io.BytesIO()
    r1 = replay(cfg, [str(path)], one, workers=1)
    r3 = replay(cfg, [str(path)], three, workers=3)
    assert r1.events == r3.events
    split = PartitionedDetection(Processor(cfg, BundledSchemas()), cfg.topics.partitions)
    core = split.processor.core
    spread: dict[str, set[int]] = {}
    for e in events:
        ev = event_from_mapping(e, Limits(), BASE_MS + 40 * 3_600_000)
        spread.setdefault(core.group_of(ev), set()).add(split.partition_of(ev))
    pages1 = {line for line in one.getvalue().splitlines()}
    pages3 = {line for line in three.getvalue().splitlines()}
    local = [g for g, parts in spread.items() if len(parts) == 1]
    assert local  # the comparison below covers some groups
    for line in pages1 ^ pages3:
        assert len(spread[orjson.loads(line)["group"]]) > 1, line
    assert {line for line in pages1 if orjson.loads(line)["group"] in local} == {
        line for line in pages3 if orjson.loads(line)["group"] in local
    }
    pages = [orjson.loads(line) for line in pages1]
    assert len({p["group"] for p in pages}) >= 3
    assert {p["detector"] for p in pages} >= {"silence", "new_resource"}


def test_replay_in_several_processes_keeps_one_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine whose partition sees nothing else, first seen hours after everything else
    # started: new to a worker that has been watching since the start, as in one process.
    early = steady("orders-api-1", ["postgres://db/public.orders"], BASE_MS, 3 * 3600, 10_000)
    cfg = load_config()
    # Hours, not a day, of watching: a new identity pages only with maturity off.
    detectors = cfg.detectors.model_copy(update={"mature_after_s": 0})
    cfg = cfg.model_copy(update={"detectors": detectors})
    split = PartitionedDetection(Processor(cfg, BundledSchemas()), cfg.topics.partitions)
    now = BASE_MS + 4 * 3_600_000

    def partition(events: list[dict[str, object]]) -> int:
        return split.partition_of(event_from_mapping(events[0], Limits(), now))

    late = next(
        e
        for name in ("nightly-export", "nightly-export-2", "nightly-export-3", "batch-export")
        if partition(e := steady(name, ["s3://exports"], BASE_MS + 2 * 3_600_000, 600, 10_000))
        != partition(early)
    )
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in early + late))
    monkeypatch.setattr(replay_module, "_PARALLEL_FROM", 0)
    pages = {}
    for workers in (1, 2):
        buf = io.BytesIO()
        replay(cfg, [str(path)], buf, workers=workers)
        pages[workers] = buf.getvalue()
    assert b'"new_identity"' in pages[1]
    assert pages[2] == pages[1]


def test_a_line_that_is_not_json_is_dead_lettered_as_such_with_its_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [orjson.dumps(e) for e in steady("orders-api", ["postgres://db/t"], BASE_MS, 3)]
    lines = [
        good[0],
        b"GET /healthz HTTP/1.1 200",  # a stray access-log line in the capture
        b'{"event_id": "e-cut", "timestamp": 1767225600000, "machine_id": "orders-',
        *good[1:],
    ]
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    dead = io.BytesIO()
    with caplog.at_level(logging.INFO, logger="auditwatch.processor"):
        result = replay(load_config(), [str(path)], io.BytesIO(), deadletter_out=dead)
    assert (result.records, result.events) == (5, 3)
    assert result.dead_letters == {"json_decode_error": 2}
    letters = [orjson.loads(line) for line in dead.getvalue().splitlines()]
    assert [(d["file"], d["line"], d["reason"]) for d in letters] == [
        (str(path), 2, "json_decode_error"),
        (str(path), 3, "json_decode_error"),
    ]
    # The parser's own words, as the live pipeline's dead letters give them.
    assert all(d["message"].startswith("not valid JSON: ") for d in letters)
    assert "line 1 column 1" in letters[0]["message"]
    assert [d["event_id"] for d in letters] == [None, "e-cut"]
    logged = [r.getMessage() for r in caplog.records if r.name == "auditwatch.processor"]
    assert any(f"at {path}:2:" in m for m in logged), logged
    assert not any("[None]" in m for m in logged), logged


def test_a_capture_shorter_than_the_warm_up_says_every_machine_is_still_learning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.jsonl"
    events = steady("orders-api", ["postgres://db/t"], BASE_MS + 5 * 60_000, 20 * 60, 10_000)
    short.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    out = tmp_path / "pages.jsonl"
    assert main(["replay", "-q", str(short), "--alerts-out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "0 pages" in err
    # The first event is at 00:05 UTC and the warm-up is an hour of event time.
    assert "every machine is still learning" in err
    assert "2026-01-01 01:05:00 UTC" in err
    assert "20 min" in err and "1 h" in err

    events, _ = scenario()  # three hours, with anomalies: pages, and nothing said of learning
    long = tmp_path / "long.jsonl"
    long.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert main(["replay", "-q", str(long), "--alerts-out", str(out)]) == 0
    err = capsys.readouterr().err
    assert " 0 pages" not in err and "learning" not in err
