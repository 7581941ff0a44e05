"""The profile's accounting (bench/perf/profile.py): blocked background threads are not
charged to events, and the runtime's frames are charged to what they do."""

from __future__ import annotations

from pathlib import Path

from bench.perf.profile import (
    COMMIT_INDEX,
    COMMIT_STATE,
    COMMIT_WAIT,
    CONSUME,
    DEDUPE_STATE,
    GROUPS,
    PRODUCE,
    STARTUP,
    STATE,
    TASK,
    analyse,
    classify,
    waiting,
)

ROOT = Path(__file__).resolve().parents[1]
THREAD = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"


def _line_of(path: str, text: str) -> int:
    lines = (ROOT / path).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def _loop(text: str) -> str:
    return f"streams/runtime/loop.py:{_line_of('streams/runtime/loop.py', text)}"


# The worker's main thread once its loop runs.
MAIN = (
    "_run_module_as_main (<frozen runpy>:198);_run (streams/runtime/run.py:90);"
    f"Worker.run ({_loop('self.run_once()')})"
)
RUN_ONCE = f"{MAIN};Worker.run_once ({_loop('task.finish(item)')});Task.finish "
TASK_PROCESS = f"{RUN_ONCE}(streams/runtime/task.py:100)"
COMMIT = f"{MAIN};Worker.commit (streams/runtime/loop.py:400)"


def _stack(text: str) -> list[str]:
    return text.split(";")


def test_blocked_background_threads_are_waiting_and_work_is_not() -> None:
    line = _line_of("streams/ops/control.py", "consumer.poll(")
    poll = f"ControlReader._read (streams/ops/control.py:{line})"
    assert waiting(_stack(f"{THREAD};Condition.wait (threading.py:331)"), ROOT)
    assert waiting(_stack(f"{THREAD};{poll}"), ROOT)
    # The same wait in the main thread, and a background thread's own work, are charged.
    assert not waiting(_stack(f"{MAIN};Condition.wait (threading.py:331)"), ROOT)
    assert not waiting(_stack(f"{THREAD};decode (streams/ops/control.py:1)"), ROOT)


def test_waits_and_startup_are_left_out_of_the_budget(tmp_path: Path) -> None:
    raw = tmp_path / "pyspy.raw"
    raw.write_text(
        f"{MAIN};_Model.learn (detectors/rate.py:200) 50\n"
        f"{THREAD};Condition.wait (threading.py:331) 950\n"
        "_run_module_as_main (<frozen runpy>:198);_run (streams/runtime/run.py:70) 30\n"
    )
    a = analyse(raw, 100, ROOT, rate=100)
    assert a["waiting_samples"] == 950
    assert a["startup_samples"] == 30
    assert a["busy_seconds"] == 0.5
    # One pass: 50 samples at 100 Hz over 100 events.
    assert a["us_per_event"] == 5000.0
    assert a["budget"] == [
        {"stage": "detection core (detectors, peers, alerts)", "us_per_event": 5000.0, "share": 1.0}
    ]


def test_the_loop_consumes_and_commits() -> None:
    consume = f"{MAIN};Worker.run_once ({_loop('self.consumer.consume(')})"
    assert classify(_stack(consume), ROOT) == CONSUME
    flush = _line_of("streams/runtime/commit.py", "self.producer.flush(")
    wait = f"{COMMIT};AtLeastOnce.commit (streams/runtime/commit.py:{flush})"
    assert classify(_stack(wait), ROOT) == COMMIT_WAIT
    # The working copy's machine states written into the partition's state at a commit.
    kv_set = _line_of("detectors/core.py", "kv.set(MACHINE")
    flush_state = (
        f"{COMMIT};DetectionCore.flush (detectors/core.py:470);"
        f"WorkingCopy.flush (detectors/core.py:{kv_set});"
        "PartitionState.set (streams/runtime/state.py:60)"
    )
    assert classify(_stack(flush_state), ROOT) == COMMIT_STATE
    index = f"{COMMIT};EventIndex.flush (streams/runtime/state.py:110)"
    assert classify(_stack(index), ROOT) == COMMIT_INDEX


def test_a_tasks_work_is_charged_by_what_it_does() -> None:
    assert classify(_stack(TASK_PROCESS), ROOT) == TASK
    admit = f"{TASK_PROCESS};Processor.admit (streams/processor.py:200)"
    get = "PartitionState.get (streams/runtime/state.py:50)"
    assert classify(_stack(f"{admit};{get}"), ROOT) == DEDUPE_STATE
    index = "EventIndex.get (streams/runtime/state.py:80)"
    assert classify(_stack(f"{admit};{get};{index}"), ROOT) == DEDUPE_STATE
    detect = (
        f"{TASK_PROCESS};Processor.detect (streams/processor.py:280);"
        "DetectionCore.observe (detectors/core.py:560)"
    )
    assert classify(_stack(f"{detect};{get}"), ROOT) == STATE
    peers = "PeerTable.get (streams/runtime/peers.py:80)"
    assert classify(_stack(f"{detect};{peers}"), ROOT) == STATE
    produce = (
        f"{TASK_PROCESS};Worker._emit (streams/runtime/loop.py:200);"
        "AtLeastOnce.produce (streams/runtime/commit.py:60)"
    )
    assert classify(_stack(produce), ROOT) == PRODUCE
    line = _line_of("streams/processor.py", "= self._decode(value, ")
    decode = f"{TASK_PROCESS};Processor.decode (streams/processor.py:{line})"
    assert classify(_stack(decode), ROOT) == "processor glue (decode/admit/detect)"
    fastavro = f"{decode};_decode_avro (schemas/codec.py:120)"
    assert classify(_stack(fastavro), ROOT) == "decode (fastavro)"


def test_restore_and_the_main_thread_before_the_loop_are_startup() -> None:
    restore = (
        f"{MAIN};Worker.run_once ({_loop('self.consumer.consume(')});"
        "Worker._on_assign (streams/runtime/loop.py:230);"
        "Worker._add_tasks (streams/runtime/loop.py:240);"
        "restore_all (streams/runtime/state.py:350);"
        "PartitionState.apply (streams/runtime/state.py:200)"
    )
    assert classify(_stack(restore), ROOT) == STARTUP
    before = "_run_module_as_main (<frozen runpy>:198);_run (streams/runtime/run.py:70)"
    assert classify(_stack(f"{before};Processor.__init__ (streams/processor.py:120)"), ROOT) == (
        STARTUP
    )


def test_no_stage_is_left_from_the_quix_engine() -> None:
    names = [g for g, _ in GROUPS] + [p for _, prefixes in GROUPS for p in prefixes]
    assert not [n for n in names if "Quix" in n or "align" in n]


def test_each_detector_module_and_the_batched_id_lookup_have_their_stage() -> None:
    detect = (
        f"{TASK_PROCESS};Processor.detect (streams/processor.py:280);"
        "DetectionCore.observe (detectors/core.py:300)"
    )
    for frame, stage in (
        ("OffHours.score (detectors/off_hours.py:60)", "detector: off_hours"),
        ("FailureRatio.score (detectors/failure.py:40)", "detector: failure_ratio"),
        ("NewOperation.score (detectors/operations.py:40)", "detector: operation"),
        ("normalise_resource (detectors/resources.py:40)", "detector: new_resource"),
        ("NewIdentity.score (detectors/identity.py:80)", "detector: new_identity"),
        ("recent_peak (detectors/rate.py:1214)", "detector: access_rate (peak)"),
        ("StormControl.apply (detectors/incidents.py:290)", "storm control"),
        ("Incidents.episode (detectors/incidents.py:140)", "alert episodes (open/update/resolve)"),
        ("WorkingCopy.get (detectors/state.py:140)", "core: working copy"),
    ):
        assert classify(_stack(f"{detect};{frame}"), ROOT) == stage, frame
    prefetch = (
        f"{MAIN};Worker.run_once ({_loop('task.seen_ids(items)')});"
        "Task.seen_ids (streams/runtime/task.py:120);"
        "EventIndex.prefetch (streams/runtime/state.py:90)"
    )
    assert classify(_stack(prefetch), ROOT) == DEDUPE_STATE
