"""`auditwatch backtest`: two configs over the same events, the diff, precision/recall, the
progress bar, and the archive topic as a source (real broker)."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas.event import format_rfc3339_ms
from streams.cli.main import main
from streams.ops.config import load_config
from streams.tools.backtest import (
    LABEL_GAP_MS,
    Progress,
    diff_runs,
    labels_from_events,
    labels_from_file,
)
from streams.tools.replay import replay
from tests.conftest import ROOT, Stack
from tests.traffic import BASE_MS, scenario, steady

BILLING, INGEST = "billing-api-6f7c9d8b4-q2w7x", "ingest-worker-07"
FAN_OUT_MS = BASE_MS + 2 * 3600 * 1000 + 600_000
BURST_MS = BASE_MS + 2 * 3600 * 1000 + 1_800_000


def _write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The scenario backtested with a tuned config (access-rate spikes must be 10x the
    expected rate) against the defaults, with labels for both injected anomalies."""
    d = tmp_path_factory.mktemp("backtest")
    events, _ = scenario()
    src = _write_events(d / "events.jsonl", events)
    tuned = d / "tuned.yaml"
    tuned.write_text(yaml.safe_dump({"detectors": {"rate": {"min_ratio": 10}}}))
    current = d / "current.yaml"
    current.write_text("{}\n")
    labels = d / "episodes.jsonl"
    labels.write_bytes(
        orjson.dumps(
            {
                "kind": "fan_out",
                "machine_id": INGEST,
                "start": format_rfc3339_ms(FAN_OUT_MS),
                "end": format_rfc3339_ms(FAN_OUT_MS + 6000),
            }
        )
        + b"\n"
        + orjson.dumps(
            {
                "kind": "rate_burst",
                "machine_id": BILLING,
                "start_ms": BURST_MS,
                "end_ms": BURST_MS + 60_000,
                "malicious": True,
            }
        )
        + b"\n"
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(
            [
                "backtest",
                str(src),
                "--config",
                str(tuned),
                "--compare",
                str(current),
                "--labels",
                str(labels),
                "--json",
                str(d / "out.json"),
                "--html",
                str(d / "report.html"),
            ]
        )
    assert rc == 0, err.getvalue()
    return {
        "dir": d,
        "events": src,
        "text": out.getvalue(),
        "stderr": err.getvalue(),
        "doc": orjson.loads((d / "out.json").read_bytes()),
        "html": (d / "report.html").read_text(),
    }


def test_each_config_pages_exactly_as_replay_does(compared: dict[str, Any]) -> None:
    doc = compared["doc"]
    for name, cfg_file in (("old", "current.yaml"), ("new", "tuned.yaml")):
        buf = io.BytesIO()
        replay(load_config(compared["dir"] / cfg_file), [str(compared["events"])], buf)
        expected = [orjson.loads(line) for line in buf.getvalue().splitlines()]
        assert expected
        assert doc["runs"][name]["page_list"] == expected


def test_diff_reports_the_page_the_tuning_removes(compared: dict[str, Any]) -> None:
    doc, text = compared["doc"], compared["text"]
    new, old = doc["runs"]["new"], doc["runs"]["old"]
    assert "access_rate" not in new["by_detector"] and old["by_detector"]["access_rate"] >= 1
    assert new["by_detector"]["new_resource"] == old["by_detector"]["new_resource"]
    assert new["config_version"] != old["config_version"]
    diff = doc["diff"]
    # The fan-out pages under both configs (different alert ids: matched by time), the burst
    # only under the old one.
    assert diff["both"] >= 1 and diff["only_new"] == []
    assert [(e["machine_id"], e["detector"]) for e in diff["only_old"]] == [
        (BILLING, "access_rate")
    ]
    assert "only old (1):" in text and "access_rate" in text
    assert f"{'access_rate':<20}{0:>8}{old['by_detector']['access_rate']:>8}" in text
    assert new["top_machines"][0]["machine_id"] == INGEST


def test_precision_and_recall_against_labels(compared: dict[str, Any]) -> None:
    doc, text = compared["doc"], compared["text"]
    assert doc["labels"]["episodes"] == 2
    new, old = doc["runs"]["new"]["score"], doc["runs"]["old"]["score"]
    assert old["recall"] == 1.0 and old["precision"] == 1.0
    assert new["recall"] == 0.5 and new["precision"] == 1.0
    assert "recall by kind: rate_burst 0/1, fan_out 1/1" in text
    assert "precision" in text


def test_series_carry_the_learned_band_and_page_markers(compared: dict[str, Any]) -> None:
    series = compared["doc"]["series"]
    assert series["interval_s"] == 60
    by_machine = {m["machine_id"]: m for m in series["machines"]}
    billing = by_machine[BILLING]
    # One event a second: 60 in the busiest minute of every full bucket, and a band learned
    # around it once warm.
    expected = [e for e in billing["band"]["old"]["expected"] if e is not None]
    assert expected and abs(expected[-1] - 60) < 6
    burst_bucket = (BURST_MS - BASE_MS) // (series["bucket_s"] * 1000)
    assert billing["busiest_interval"][burst_bucket] > 300
    # The old config's threshold is below the burst (it paged), the new one's above it.
    assert billing["band"]["old"]["high"][burst_bucket] < billing["busiest_interval"][burst_bucket]
    assert billing["band"]["new"]["high"][burst_bucket] >= 600
    assert {(m["run"], m["detector"]) for m in billing["markers"]} == {("old", "access_rate")}
    assert sum(billing["events_per_bucket"]) == billing["events"]
    assert series["noisiest"][0]["machine_id"] == INGEST
    runs = series["pages_per_detector"]["runs"]
    assert (
        sum(runs["old"]["access_rate"])
        == compared["doc"]["runs"]["old"]["by_detector"]["access_rate"]
    )


def test_html_report_is_self_contained(compared: dict[str, Any]) -> None:
    page = compared["html"].lower()
    for needle in ("<script", "<img", "<link", "@import", "url(", "src=", "href="):
        assert needle not in page
    assert page.count('class="plot"') == 2 + 2  # noisiest, detectors, one per machine
    assert 'data-plot="machine"' in page and "default-src 'none'" in page


def test_labels_from_events_group_by_machine_kind_and_gap() -> None:
    from schemas.event import Limits, event_from_mapping

    def ev(i: int, machine: str, t_ms: int, label: str | None) -> Any:
        attrs = {"label": label} if label else {}
        return event_from_mapping(
            {
                "event_id": str(i),
                "timestamp": t_ms,
                "machine_id": machine,
                "resource": "r",
                "operation": "GET",
                "outcome": "SUCCESS",
                "attributes": attrs,
            },
            Limits(),
            now_ms=2**62,
        )

    t = BASE_MS
    events = [
        ev(1, "a", t, "fan_out"),
        ev(2, "a", t + 60_000, "fan_out"),
        ev(3, "b", t + 60_000, None),
        ev(4, "a", t + 60_000 + LABEL_GAP_MS + 1, "fan_out"),  # a new episode after the gap
        ev(5, "b", t + 120_000, "rate_burst"),
    ]
    eps = labels_from_events(events)
    assert [(e.machine_id, e.kind, e.start_ms - t, e.end_ms - t) for e in eps] == [
        ("a", "fan_out", 0, 60_000),
        ("b", "rate_burst", 120_000, 120_000),
        ("a", "fan_out", 60_000 + LABEL_GAP_MS + 1, 60_000 + LABEL_GAP_MS + 1),
    ]
    assert all(e.malicious for e in eps)


def test_events_labelled_by_the_synthetic_generator_are_scored(tmp_path: Path) -> None:
    from streams.tools.synthetic import SyntheticConfig, SyntheticTraffic

    sc = SyntheticConfig(
        seed=3,
        start_ms=BASE_MS,
        duration_s=4 * 3600,
        machines=12,
        warmup_s=3 * 3600,
        anomalies={"fan_out": 1},
        benign={},
        mark_injected=True,
    )
    path = _write_events(tmp_path / "labelled.jsonl", list(SyntheticTraffic(sc)))
    out = tmp_path / "out.json"
    warm_end = format_rfc3339_ms(BASE_MS + 3 * 3600 * 1000)
    with contextlib.redirect_stdout(io.StringIO()) as text:
        assert (
            main(["backtest", str(path), "-q", "--score-from", warm_end, "--json", str(out)]) == 0
        )
    doc = orjson.loads(out.read_bytes())
    assert doc["labels"]["source"] == "event attribute label/injected"
    assert doc["labels"]["malicious"] == 1
    score = doc["runs"]["new"]["score"]
    assert score["recall"] == 1.0
    assert "against 1 labelled malicious episodes" in text.getvalue()


def test_bad_input_exits_2_with_a_reason(tmp_path: Path, capsys: Any) -> None:
    events = _write_events(tmp_path / "e.jsonl", steady("m", ["r"], BASE_MS, 60))
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"kind": "fan_out", "machine_id": "m", "start": "yesterday"}\n')
    assert main(["backtest", str(events), "--labels", str(labels), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{labels}:1: missing end" in err
    labels.write_text('{"kind": "x", "machine_id": "m", "start": "soon", "end": 5}\n')
    assert main(["backtest", str(events), "--labels", str(labels), "-q"]) == 2
    assert "start: 'soon'" in capsys.readouterr().err
    assert main(["backtest", "-q"]) == 2
    assert "give event FILES or --archive" in capsys.readouterr().err
    assert main(["backtest", str(events), "--from", "2026-01-01T00:00:00Z"]) == 2
    assert "use them with --archive" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"not": "an event"}\n')
    assert main(["backtest", str(empty), "-q"]) == 2
    assert "no valid events" in capsys.readouterr().err


def test_labels_file_accepts_evaluate_episodes(tmp_path: Path) -> None:
    # bench.evaluate writes asdict(Episode): start_ms/end_ms, malicious, description.
    path = tmp_path / "episodes.jsonl"
    path.write_text(
        '{"kind":"pod_rotation","machine_id":"p","start_ms":1,"end_ms":2,'
        '"malicious":false,"description":"d"}\n\n'
    )
    (ep,) = labels_from_file(path)
    assert (ep.kind, ep.start_ms, ep.end_ms, ep.malicious) == ("pod_rotation", 1, 2, False)


def test_diff_matches_overlapping_episodes_only() -> None:
    from streams.tools.backtest import PagedEpisode

    def pe(aid: str, machine: str, det: str, start: int, end: int) -> PagedEpisode:
        return PagedEpisode(aid, machine, det, start, end, 1, "high", {})

    new = [pe("n1", "a", "access_rate", 0, 100), pe("n2", "a", "access_rate", 10**6, 10**6)]
    old = [pe("o1", "a", "access_rate", 50, 200), pe("o2", "a", "new_resource", 0, 100)]
    d = diff_runs(new, old)
    assert [(n.alert_id, o.alert_id) for n, o in d.both] == [("n1", "o1")]
    assert [e.alert_id for e in d.only_new] == ["n2"]
    assert [e.alert_id for e in d.only_old] == ["o2"]


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    tty = _FakeTty()
    p = Progress(tty)
    p.begin("new", 1000)
    p.update(500, force=True)
    p.end(1000)
    shown = tty.getvalue()
    assert "[" + "#" * 12 + "." * 12 + "]" in shown and "500/1,000 events" in shown
    assert "1,000/1,000 events" in shown and shown.endswith("\n")
    for stream, enabled in ((io.StringIO(), True), (_FakeTty(), False)):
        q = Progress(stream, enabled=enabled)
        q.begin("new", 10)
        q.update(5, force=True)
        q.end(10)
        assert stream.getvalue() == ""


def _run_in_pty(argv: list[str], timeout: float = 120) -> str:
    """Run the CLI with stderr on a pseudo-terminal (stdout to a pipe); what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_cli_shows_progress_on_a_terminal_unless_quiet(tmp_path: Path) -> None:
    events = _write_events(tmp_path / "e.jsonl", steady("m", ["r"], BASE_MS, 1800))
    shown = _run_in_pty(["backtest", str(events), "--compare", "/dev/null"])
    assert "new [" in shown and "old [" in shown and "1,800/1,800 events" in shown
    assert "/s" in shown
    quiet = _run_in_pty(["backtest", str(events), "--quiet"])
    assert "events " not in quiet and "[" not in quiet


@pytest.mark.kafka
def test_backtest_over_the_archive_topic_and_a_time_range(
    stack: Any, tmp_path: Path, capsys: Any
) -> None:
    from schemas.codec import encode_archive, sha256
    from schemas.event import Limits, event_from_mapping
    from streams.tools.producer import make_producer

    s: Stack = stack()
    s.create_topics()
    events, _ = scenario()
    producer = make_producer(s.cfg)
    parsed = [event_from_mapping(e, Limits(), now_ms=2**62) for e in events]
    # The active segment is never compacted: readers see re-sent records and must dedupe.
    # Kafka timestamps are processing time, a moment after event time (the copies: 5 min).
    # The source offset keeps the input order of events of the same time (a burst).
    archived = [(ev.timestamp_ms + 1000, i, ev) for i, ev in enumerate(parsed)]
    archived += [(ev.timestamp_ms + 300_000, i, ev) for i, ev in enumerate(parsed[:50])]
    for stamp, offset, ev in sorted(archived, key=lambda a: a[0]):
        producer.produce(
            s.cfg.topics.archive,
            key=ev.event_id.encode(),
            timestamp=stamp,
            value=encode_archive(
                ev,
                original_format="JSON",
                original_sha256=sha256(b""),
                topic="x",
                partition=0,
                offset=offset,
                archived_at_ms=stamp,
            ),
        )
    assert producer.flush(30) == 0

    # The range [1 h, 3 h) of the scenario, from the archive and from a file of that range.
    lo, hi = BASE_MS + 3_600_000, BASE_MS + 3 * 3_600_000
    in_range = [e for e in events if lo <= e["timestamp"] < hi]
    path = _write_events(tmp_path / "range.jsonl", in_range)
    out_a, out_f = tmp_path / "archive.json", tmp_path / "files.json"
    cfg = ["--config", str(s.config_path), "-q"]
    archive_args = ["--archive", "--from", format_rfc3339_ms(lo), "--to", format_rfc3339_ms(hi)]
    archive_args += ["--slack", "600"]
    assert main(["backtest", *archive_args, *cfg, "--json", str(out_a)]) == 0
    assert main(["backtest", str(path), *cfg, "--json", str(out_f)]) == 0
    text = capsys.readouterr().out
    a, f = orjson.loads(out_a.read_bytes()), orjson.loads(out_f.read_bytes())
    assert a["source"]["events"] == len(in_range)
    assert a["source"]["description"].startswith(f"archive topic {s.cfg.topics.archive}")
    # Only the window around the range is fetched: the rest is counted, not read.
    archived_in_window = sum(1 for t, _, _ in archived if lo - 600_000 <= t <= hi + 600_000)
    assert a["source"]["records"] == archived_in_window < len(archived)
    assert (
        f"{len(archived) - archived_in_window:,} records outside it not read"
        in (a["source"]["description"])
    )
    assert a["runs"]["new"]["page_list"] == f["runs"]["new"]["page_list"]
    assert a["runs"]["new"]["pages"] > 0
    assert "backtest over" in text
