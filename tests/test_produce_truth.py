"""`auditwatch produce` says what happened to every input record: delivered, skipped (named by
file:line, with the reason) or not delivered (named, and written to --failed-out), and exits 1
unless every record was delivered. `--synthetic --out` writes traffic and its labels instead."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.cli.main import build_parser, main
from tests.conftest import Stack
from tests.traffic import BASE_MS, steady

UNREACHABLE = "127.0.0.1:1"


def _events(n: int, machine: str = "etl-node-07") -> list[dict[str, Any]]:
    return steady(machine, ["postgres://dw/public.facts"], BASE_MS, 3600, every_ms=60_000)[:n]


def _jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _unreachable_config(tmp_path: Path) -> Path:
    path = tmp_path / "unreachable.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": UNREACHABLE},
                "topics": {"events": f"t-unreachable-{time.monotonic_ns()}.events"},
            }
        )
    )
    return path


def _summary(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sent ")]
    assert lines, err
    return lines[-1]


# -- delivery ------------------------------------------------------------------------------


def test_delivery_to_an_unreachable_broker_is_bounded_by_the_default_timeout(
    tmp_path: Path,
) -> None:
    """The producer itself, whatever the command checks before it (a broker can go away
    mid-run): every queued event is reported as not delivered within the default timeout."""
    from streams.ops.config import load_config
    from streams.tools.producer import Record, produce_events

    cfg = load_config(_unreachable_config(tmp_path))
    records = [Record(f"e{i}", e) for i, e in enumerate(_events(3), 1)]
    t0 = time.monotonic()
    stats = produce_events(cfg, records, progress=False)
    elapsed = time.monotonic() - t0
    assert (stats.delivered, stats.failed, stats.skipped) == (0, 3, 0)
    assert elapsed <= 30, f"took {elapsed:.1f} s"


def test_produce_to_an_unreachable_broker_exits_1_within_30_s(tmp_path: Path, capsys: Any) -> None:
    one = _jsonl(tmp_path / "one.jsonl", [orjson.dumps(e) for e in _events(1)])
    t0 = time.monotonic()
    rc = main(["produce", str(one), "--config", str(_unreachable_config(tmp_path))])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1, err
    assert elapsed <= 30, f"took {elapsed:.1f} s"
    assert UNREACHABLE in err or "not delivered 1" in err, err


def _avro_ids(s: Stack) -> list[str]:
    from schemas.codec import decode_wire

    return [decode_wire(m.value(), "audit_event")["event_id"] for m in s.read("events")]


@pytest.mark.kafka
def test_not_delivered_events_are_named_and_written_for_a_resend(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack()
    s.create_topics()
    events = _events(5)
    lines = [orjson.dumps(e) for e in events]
    lines.insert(2, b"{not json")
    src = _jsonl(tmp_path / "batch.jsonl", lines)
    failed = tmp_path / "failed.jsonl"
    cfg = ["--config", str(s.config_path)]
    # The broker is there, the topic is not (and is not created on demand).
    missing = ["--topic", f"{s.prefix}.missing", "--delivery-timeout", "2"]
    t0 = time.monotonic()
    rc = main(["produce", str(src), *missing, "--failed-out", str(failed), *cfg])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1, err
    summary = _summary(err)
    assert summary.startswith("sent 0 events") and "not delivered 5" in summary
    assert "skipped 1" in summary and f"skipped {src}:3: not JSON" in err
    assert f"not delivered {src}:1: not acknowledged within 2 s" in err
    assert elapsed < 15, f"took {elapsed:.1f} s"
    # In input order, in the event form `produce` reads: re-sending them is one command.
    resent = [orjson.loads(line) for line in failed.read_bytes().splitlines()]
    assert [e["event_id"] for e in resent] == [e["event_id"] for e in events]
    assert main(["produce", str(failed), *cfg]) == 0
    assert sorted(_avro_ids(s)) == sorted(e["event_id"] for e in events)


@pytest.mark.kafka
def test_a_large_input_stops_at_the_first_failed_delivery_and_is_accounted_in_full(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack()
    failed = tmp_path / "failed.jsonl"
    synthetic = ["--synthetic", "--start", "2026-01-05T08:00:00Z", "--hours", "2"]
    synthetic += ["--machines", "200", "--seed", "3"]
    t0 = time.monotonic()
    rc = main(
        [
            "produce",
            *synthetic,
            "--topic",
            f"{s.prefix}.missing",
            "--delivery-timeout",
            "1",
            "--failed-out",
            str(failed),
            "--config",
            str(s.config_path),
        ]
    )
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1, err
    summary = _summary(err)
    not_delivered = int(summary.split("not delivered ")[1].split()[0].replace(",", ""))
    # The same traffic, written to a file: the count to expect.
    out = tmp_path / "all.jsonl"
    assert main(["produce", *synthetic, "--out", str(out)]) == 0
    generated = [orjson.loads(line)["event_id"] for line in out.read_bytes().splitlines()]
    assert summary.startswith("sent 0 events") and not_delivered == len(generated)
    assert "stopped sending at synthetic event " in err
    written = [orjson.loads(line)["event_id"] for line in failed.read_bytes().splitlines()]
    assert written == generated
    assert elapsed < 60, f"took {elapsed:.1f} s"


@pytest.mark.kafka
def test_an_event_the_broker_refuses_is_reported_and_the_rest_delivered(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack()
    s.create_topics()
    events = _events(3)
    # More than message.max.bytes: refused for itself, the broker is fine.
    events[1]["attributes"] = {"blob": "x" * 2_000_000}
    src = _jsonl(tmp_path / "big.jsonl", [orjson.dumps(e) for e in events])
    rc = main(["produce", str(src), "--encoding", "json", "--config", str(s.config_path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    summary = _summary(err)
    assert summary.startswith("sent 2 events") and "not delivered 1" in summary
    assert f"{src}:2" in err
    assert len(s.read("events")) == 2


# -- skips ---------------------------------------------------------------------------------


def _mixed_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    good = _events(3)
    no_machine = dict(good[1])
    del no_machine["machine_id"]
    lines = [
        orjson.dumps(good[0]),  # 1
        b"{not json",  # 2
        b"",  # 3: blank, not a record
        orjson.dumps(no_machine),  # 4: JSON, but not a valid event
        b"[1, 2]",  # 5: JSON, not an object
        orjson.dumps(good[2]),  # 6
    ]
    return _jsonl(tmp_path / "mixed.jsonl", lines), [good[0], good[2]]


@pytest.mark.kafka
def test_every_skipped_line_is_counted_once_and_named_by_its_line(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack()
    s.create_topics()
    src, good = _mixed_file(tmp_path)
    rc = main(["produce", str(src), "--config", str(s.config_path)])
    err = capsys.readouterr().err
    # A skipped line is an event that did not arrive: the status says so.
    assert rc == 1, err
    summary = _summary(err)
    assert summary.startswith("sent 2 events") and "skipped 3" in summary
    assert "not delivered 0" in summary
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[1] for line in skipped] == ["2", "4", "5"], skipped
    assert "missing_field" in skipped[1]
    assert len(s.read("events")) == len(good)


@pytest.mark.kafka
def test_json_encoding_counts_the_lines_it_cannot_send(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack()
    s.create_topics()
    src, _good = _mixed_file(tmp_path)
    rc = main(["produce", str(src), "--encoding", "json", "--config", str(s.config_path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    summary = _summary(err)
    # The invalid event is sent as it is, for the processor to dead-letter with the reason;
    # the line that is not JSON and the array cannot be sent at all.
    assert summary.startswith("sent 3 events") and "skipped 2" in summary
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[1] for line in skipped] == ["2", "5"], skipped
    assert len(s.read("events")) == 3


@pytest.mark.kafka
def test_a_clean_file_exits_0_with_every_event_delivered(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    s: Stack = stack()
    s.create_topics()
    src = _jsonl(tmp_path / "clean.jsonl", [orjson.dumps(e) for e in _events(4)])
    assert main(["produce", str(src), "--config", str(s.config_path)]) == 0
    summary = _summary(capsys.readouterr().err)
    assert summary.startswith("sent 4 events") and "skipped 0" in summary
    assert "not delivered 0" in summary
    assert len(s.read("events")) == 4


# -- progress ------------------------------------------------------------------------------


def test_the_synthetic_total_is_the_number_of_events_generated() -> None:
    from streams.cli.main import _synthetic_events

    args = build_parser().parse_args(
        ["produce", "--synthetic", "--hours", "1", "--machines", "30", "--anomalies", "fan_out=1"]
    )
    records, total, _traffic = _synthetic_events(args)
    assert total == sum(1 for _ in records)


# -- synthetic traffic to a file -----------------------------------------------------------


def test_synthetic_out_writes_events_and_labels_without_kafka(tmp_path: Path, capsys: Any) -> None:
    from streams.tools.synthetic import SyntheticConfig, SyntheticTraffic

    out, labels = tmp_path / "events.jsonl", tmp_path / "episodes.jsonl"
    t0 = time.monotonic()
    rc = main(
        [
            "produce",
            "--synthetic",
            "--start",
            "2026-01-05T00:00:00Z",
            "--hours",
            "4",
            "--warmup-hours",
            "2",
            "--machines",
            "20",
            "--anomalies",
            "fan_out=1,silence=1",
            "--benign",
            "pod_rotation=1",
            "--out",
            str(out),
            "--labels-out",
            str(labels),
            "--config",
            str(_unreachable_config(tmp_path)),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert time.monotonic() - t0 < 30  # no broker was waited for
    expected = SyntheticTraffic(
        SyntheticConfig(
            seed=7,
            start_ms=1_767_571_200_000,
            duration_s=4 * 3600,
            machines=20,
            warmup_s=2 * 3600,
            anomalies={"fan_out": 1, "silence": 1},
            benign={"pod_rotation": 1},
        )
    )
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert written == list(expected)
    episodes = [orjson.loads(line) for line in labels.read_bytes().splitlines()]
    assert episodes == [asdict(ep) for ep in expected.episodes]
    assert {e["kind"] for e in episodes if e["malicious"]} == {"fan_out", "silence"}
    assert "pod_rotation" in {e["kind"] for e in episodes if not e["malicious"]}
    assert f"wrote {len(written):,} events to {out}" in err


def test_the_readme_tuning_loop_generates_bench_evaluate_traffic() -> None:
    """The README's tuning loop shows figures measured on `bench.evaluate`'s traffic: the
    command that replaced it must generate the same events and labels."""
    from bench.evaluate import suite_config
    from streams.cli.main import _synthetic_events

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command = readme.split("auditwatch produce --synthetic --start", 1)[1].split("```", 1)[0]
    argv = ["produce", "--synthetic", "--start", *command.replace("\\\n", " ").split()]
    _records, _total, traffic = _synthetic_events(build_parser().parse_args(argv))
    suite = suite_config(machines=60, days=2, warmup_days=1, per_kind=2, benign_per_kind=1)

    def nonzero(counts: dict[str, int]) -> dict[str, int]:
        return {k: n for k, n in counts.items() if n}

    got = traffic.config
    assert (got.anomalies, nonzero(got.benign)) == (suite.anomalies, nonzero(suite.benign))
    assert (got.seed, got.start_ms, got.duration_s, got.warmup_s) == (
        suite.seed,
        suite.start_ms,
        suite.duration_s,
        suite.warmup_s,
    )
    assert (got.machines, got.rate_scale, got.mark_injected) == (
        suite.machines,
        suite.rate_scale,
        suite.mark_injected,
    )


# -- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--hours", "3"],  # a synthetic option with files
        ["--out", "x.jsonl"],  # --out is for --synthetic
        ["--delivery-timeout", "0"],
        ["--csv-map", "nonsense"],
        ["MISSING.jsonl"],  # every file is checked before anything is sent
    ],
)
def test_usage_errors_exit_2_before_sending(argv: list[str], tmp_path: Path, capsys: Any) -> None:
    src = _jsonl(tmp_path / "ok.jsonl", [orjson.dumps(e) for e in _events(1)])
    t0 = time.monotonic()
    rc = main(["produce", str(src), *argv, "--config", str(_unreachable_config(tmp_path))])
    assert rc == 2, capsys.readouterr().err
    assert time.monotonic() - t0 < 5  # refused before any delivery was attempted


def test_help_states_the_default_delivery_timeout(capsys: Any) -> None:
    from streams.tools.producer import DEFAULT_DELIVERY_TIMEOUT_S

    with pytest.raises(SystemExit):
        main(["produce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"message.timeout.ms; default {DEFAULT_DELIVERY_TIMEOUT_S:g}," in text
