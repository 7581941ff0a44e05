"""The profile's accounting (bench/perf/profile.py): blocked background threads are not
charged to events."""

from __future__ import annotations

from pathlib import Path

from bench.perf.profile import analyse, classify, waiting

ROOT = Path(__file__).resolve().parents[1]
MAIN = "_run_module_as_main (<frozen runpy>:198);run (streams/app.py:264)"
THREAD = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"


def _control_poll_line() -> int:
    lines = (ROOT / "streams/control.py").read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if "consumer.poll(" in text)


def test_blocked_background_threads_are_waiting_and_work_is_not() -> None:
    poll = f"ControlReader._read (streams/control.py:{_control_poll_line()})"
    assert waiting(f"{THREAD};Condition.wait (threading.py:331)".split(";"), ROOT)
    assert waiting(f"{THREAD};{poll}".split(";"), ROOT)
    # The same wait in the main thread, and a background thread's own work, are charged.
    assert not waiting(f"{MAIN};Condition.wait (threading.py:331)".split(";"), ROOT)
    assert not waiting(f"{THREAD};decode (streams/control.py:1)".split(";"), ROOT)


def test_waits_are_left_out_of_the_budget(tmp_path: Path) -> None:
    raw = tmp_path / "pyspy.raw"
    raw.write_text(
        f"{MAIN};_Model.learn (detectors/rate.py:200) 50\n"
        f"{THREAD};Condition.wait (threading.py:331) 950\n"
    )
    a = analyse(raw, 100, 100, ROOT, rate=100)
    assert a["waiting_samples"] == 950
    assert a["busy_seconds"] == 0.5
    # 50 samples at 100 Hz over 100 events, charged as neither stage's: per message pair.
    assert a["us_per_event"] == 5000.0


def _line_of(path: str, text: str) -> int:
    lines = (ROOT / path).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_polls_through_the_input_aligner_are_consuming() -> None:
    poll = f"InputAligner.poll (streams/align.py:{_line_of('streams/align.py', 'self._poll(0)')})"
    keep = f"InputAligner._keep (streams/align.py:{_line_of('streams/align.py', 'buf.append')})"
    consumer = "BaseConsumer.poll (quixstreams/kafka/consumer.py:307)"
    assert classify(f"{MAIN};{poll};{consumer}".split(";"), ROOT) == "consume (poll, librdkafka)"
    assert classify(f"{MAIN};{poll};{keep}".split(";"), ROOT) == "streams: align"
