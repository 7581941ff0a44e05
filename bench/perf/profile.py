"""Sampling profile of an `auditwatch run` worker with py-spy, turned into a per-stage budget.

py-spy attaches to the worker's pid (`py-spy record --format raw`, 100 samples a second,
blocking so each stack is consistent) and writes collapsed stacks. Each sample is charged to
one stage by the innermost auditwatch frame on its stack, in the runtime's one pass per event
(`streams/runtime/`): the loop's consume, each record's task (`Task.process`: the processor's
decode, admit and detect, and the detection core below them), the produce of its outputs, and
the periodic commit (working copy flushed into the partition state, changelog and peer
records produced, acknowledgements awaited, offsets committed). State access through
`TaskStore` is charged by who asked: `Processor.admit` (the dedupe index), the commit (the
working copy's flush), else detection. Samples with no auditwatch frame are charged by their
innermost confluent-kafka frame. Some frames are charged by their source line
(`self.consumer.consume(` in the loop is consuming, `orjson.loads(raw)` in `DetectionCore` is
loading machine state), which is how time in C extensions, invisible to py-spy without native
frames, is still placed. A stage's budget is its samples / rate / events processed, in
microseconds per event; startup and recovery samples (imports, topic checks, the peer table's
load, partition restores, everything before the loop runs) are left out.
"""

from __future__ import annotations

import linecache
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 100
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")
_OURS = ("streams/", "detectors/", "schemas/")

STARTUP = "startup and recovery (imports, topic checks, peer table load, partition restore)"
STATE = "detection: state get/set (partition state, peer table)"
DEDUPE_STATE = "dedupe: state get/set of event ids"
CONSUME = "consume (poll, librdkafka)"
PRODUCE = "produce (outputs, librdkafka)"
DELIVERY = "produce: delivery reports (poll)"
COMMIT_STATE = "commit: working copy flushed into the partition state"
COMMIT_RECORDS = "commit: changelog and peer records"
COMMIT_WAIT = "commit: acknowledgements, offsets, transaction"
COMMIT_INDEX = "commit: event-id index written (SQLite)"
SNAPSHOT = "commit: local snapshot"
TASK = "runtime: task (route, emit)"
LOOP = "runtime: loop (batch, positions, punctuate)"
ROUTE = "runtime: routing (machine's partition)"
PEERS_READ = "runtime: peers topic read (other workers' records)"
TELEMETRY = "telemetry (latency histograms, stats, metrics)"
# The per-stage budget, as sums of the fine stages above (matched by prefix).
GROUPS = (
    ("consume (poll)", (CONSUME,)),
    ("decode + validate", ("decode (fastavro)", "validate (event_from_mapping)")),
    ("dedupe (digest, event-id state)", ("dedupe digest", DEDUPE_STATE)),
    ("archive record encode", ("archive record encode",)),
    ("detection state get/set", (STATE,)),
    ("machine state load/dump (orjson)", ("machine state load", "machine state dump")),
    ("model dump/load (rate, combined)", ("rate model dump", "rate model load", "combined model")),
    (
        "detection core (detectors, peers, alerts)",
        (
            "detector:",
            "detector module:",
            "core:",
            "peer group",
            "alert episodes",
            "storm control",
            "capacity index",
            "alert encode",
        ),
    ),
    ("produce (outputs, delivery reports)", (PRODUCE, DELIVERY)),
    ("commit (flush into state, changelog, acknowledgements, offsets)", ("commit:",)),
    ("runtime glue (loop, task, routing, peers topic)", ("runtime:",)),
    ("processor glue (decode/admit/detect)", ("processor glue", "codec (other)")),
    ("telemetry", (TELEMETRY,)),
    ("other auditwatch modules and threads", ("streams:",)),
)
_STARTUP_FUNCS = (
    "ensure_topics",
    "Worker.start",
    "Worker._add_tasks",
    "Worker._new_task",
    "Worker._on_assign",
    "restore_all",
    "Worker._check_topics",
    "PeerReader.load",
)

# The stores a task hands the processor (state and peer kinds routed apart).
_STORES = ("TaskStore.", "SplitStore.", "MemoryStore.")

_CORE_FUNCS = {
    "_off_hours": "detector: off_hours",
    "_failure": "detector: failure_ratio",
    "_operation": "detector: operation",
    "is_destructive": "detector: operation",
    "is_write": "detector: operation",
    "_peak": "detector: access_rate (peak)",
    "_learn_resource": "detector: new_resource",
    "_learns_quietly": "detector: new_resource",
    "_new_identity": "detector: new_identity",
    "_watch_silence": "detector: silence (watch, sweep)",
    "_sweep": "detector: silence (watch, sweep)",
    "_sweep_if_due": "detector: silence (watch, sweep)",
    "punctuate": "detector: silence (watch, sweep)",
    "expire_idle": "detector: silence (watch, sweep)",
    "_storm_control": "storm control",
    "_rollup": "storm control",
    "_episode": "alert episodes (open/update/resolve)",
    "_alert": "alert episodes (open/update/resolve)",
    "_alert_id": "alert episodes (open/update/resolve)",
    "_resolve_quiet": "alert episodes (open/update/resolve)",
    "_track": "capacity index",
    "group_of": "peer group lookup (name)",
    "config_for": "core: process glue",
    "process": "core: process glue (warm-up, new_resource check)",
    "observe": "core: observe glue",
    "suppressed": "core: process glue",
}


# One detector per module (detectors/base.py's interface).
_DETECTOR_MODULES = {
    "detectors/off_hours.py": "detector: off_hours",
    "detectors/failure.py": "detector: failure_ratio",
    "detectors/operations.py": "detector: operation",
    "detectors/resources.py": "detector: new_resource",
    "detectors/config.py": "core: process glue",
    "detectors/base.py": "core: process glue",
}


def _parse(frame: str) -> tuple[str, str, int]:
    m = _FRAME.match(frame)
    if m is None:
        return frame, "", 0
    return m["func"], m["file"], int(m["line"])


def _source(root: Path, file: str, line: int) -> str:
    return linecache.getline(str(root / file), line)


def _runtime(func: str, file: str, line: int, root: Path) -> str | None:
    """The stage of a frame in streams/runtime/."""
    short = func.rsplit(".", 1)[-1]
    module = file.rsplit("/", 1)[-1]
    src = _source(root, file, line)
    if module == "loop.py":
        if ".consume(" in src:
            return CONSUME
        if func in ("Worker._progress", "Worker.explain") or "observe(" in src:
            return TELEMETRY
        if func in ("Worker.commit", "Worker.close"):
            return COMMIT_RECORDS
        if func == "Worker.snapshot":
            return SNAPSHOT
        return LOOP  # run, run_once, _punctuate, _emit, rewind
    if module == "task.py":
        if func.startswith(_STORES):
            return STATE
        return TASK
    if module == "state.py":
        if func == "EventIndex.prefetch":
            return DEDUPE_STATE
        if func.startswith(("PartitionState.", "EventIndex.")) and short in (
            "get",
            "set",
            "delete",
            "_remember",
        ):
            return STATE
        if short == "drain":
            return COMMIT_RECORDS
        if func == "EventIndex.flush":
            return COMMIT_INDEX
        if func.startswith("Snapshots.") or short == "stamp":
            return SNAPSHOT
        return STARTUP  # apply, restore_all, read_partitions, the index's set-up
    if module == "peers.py":
        if func.startswith("PeerTable.") and short in ("get", "set", "delete"):
            return STATE
        if short == "drain":
            return COMMIT_RECORDS
        if short == "note_clock":
            return LOOP
        return PEERS_READ  # PeerReader.poll, PeerTable.apply and the merge
    if module == "commit.py":
        if short == "produce":
            return PRODUCE
        if short == "poll":
            return DELIVERY
        return COMMIT_WAIT  # commit (flush, offsets, transaction), abort
    if module == "routing.py":
        return ROUTE
    return LOOP


def _ours(func: str, file: str, line: int, root: Path) -> str | None:
    """The stage of an auditwatch frame, or None to let the caller's frame decide."""
    short = func.rsplit(".", 1)[-1]
    if file.startswith("streams/runtime/"):
        return _runtime(func, file, line, root)
    if file == "streams/runtime/run.py":
        return None  # _run(): everything the worker does happens below it
    if file == "streams/ops/metrics.py":
        return TELEMETRY
    if file.startswith("detectors/rate.py"):
        if short in ("dump", "state"):
            return "rate model dump"
        if short == "load" or func in ("RateBaseline.__init__", "_Model.__init__"):
            return "rate model load"
        if short == "recent_peak":
            return "detector: access_rate (peak)"
        return "detector: access_rate (rate model)"
    if file == "detectors/core.py":
        src = _source(root, file, line)
        if "orjson.loads" in src or "from_dict" in src or func.endswith("from_dict"):
            return "machine state load (orjson + from_dict)"
        if (
            "orjson.dumps" in src
            or "to_dict" in src
            or func.endswith(("to_dict", "to_list", "_encode_state"))
        ):
            return "machine state dump (to_dict + orjson)"
        if func.startswith(("Episode.", "MachineState.")):
            return "machine state load (orjson + from_dict)"
        if func.startswith("WorkingCopy."):
            return "core: working copy"
        return _CORE_FUNCS.get(short, "core: process glue")
    if file == "detectors/state.py":
        src = _source(root, file, line)
        if func.startswith("WorkingCopy."):
            return "core: working copy"
        if "orjson.dumps" in src or func.endswith(("to_dict", "_encode_state")):
            return "machine state dump (to_dict + orjson)"
        return "machine state load (orjson + from_dict)"
    if file == "detectors/incidents.py":
        if func.startswith("StormControl."):
            return "storm control"
        if func.startswith("Episode.") and func.endswith(("to_list", "from_list")):
            return "machine state load (orjson + from_dict)"
        return "alert episodes (open/update/resolve)"
    if file in _DETECTOR_MODULES:
        return _DETECTOR_MODULES[file]
    if file == "detectors/peers.py":
        return "peer groups (logic)"
    if file == "detectors/silence.py":
        return "detector: silence (watch, sweep)"
    if file == "detectors/capacity.py":
        return "capacity index"
    if file == "detectors/identity.py":
        return (
            "detector: new_identity"
            if func.startswith("NewIdentity.")
            else "peer group lookup (name)"
        )
    if file == "schemas/codec.py":
        if short in (
            "_wire",
            "encode_event_avro",
            "encode_canonical",
            "decode_canonical",
            "decode_wire",
        ):
            return None  # shared helpers: the caller says what they were for
        if short in ("decode_event", "_decode_avro"):
            return "decode (fastavro)"
        if short in ("encode_archive", "sha256"):
            return "archive record encode"
        return "codec (other)"
    if file == "schemas/event.py":
        if short in ("content_digest", "_canonical_bytes"):
            return "dedupe digest"
        if short == "format_rfc3339_ms":
            return None
        return "validate (event_from_mapping)"
    if file == "schemas/alert.py":
        return "alert encode"
    if file == "streams/processor.py":
        if func.startswith(_STORES) and short in ("get", "set", "delete"):
            return STATE
        src = _source(root, file, line)
        if "to_json" in src or "orjson.dumps" in src:
            return "alert encode"
        if "content_digest" in src:
            return "dedupe digest"
        if "sha256(" in src or "encode_archive(" in src:
            return "archive record encode"
        if short == "_decode":
            return "decode (fastavro)"
        return "processor glue (decode/admit/detect)"
    if file == "streams/tools/seed.py":
        return "processor glue (decode/admit/detect)"
    if file == "detectors/combined.py":
        if short in ("dump", "load") or "dump" in func or "load" in func:
            return "combined model dump/load"
        return "detector: combined score"
    module = file.rsplit("/", 1)[-1].removesuffix(".py")
    if file.startswith("detectors/"):
        return f"detector module: {module}"
    if file.startswith("streams/") and file != "streams/cli/main.py":
        # Other threads of the worker (control reader, config reloader) or newer modules.
        return f"streams: {module}"
    return None


def _framework(func: str, file: str) -> str | None:
    if "confluent_kafka" in file:
        return PRODUCE if "produce" in func else CONSUME
    return None


_WAITS = ("Condition.wait", "Event.wait", "_PollLikeSelector.select", "EpollSelector.select")


def waiting(stack: list[str], root: Path) -> bool:
    """A background thread blocked (a lock, a socket, a Kafka poll): py-spy cannot always tell
    these from running Python, and they cost no CPU, so they are not charged to events."""
    if not stack or not stack[0].startswith("Thread._bootstrap"):
        return False
    func, file, line = _parse(stack[-1])
    if func in _WAITS:
        return True
    # Our threads' own consumer polls (the control reader): the C call is not in the stack.
    return file.startswith(_OURS) and ".poll(" in _source(root, file, line)


def _state_caller(frames: list[tuple[str, str, int]], i: int) -> str:
    """Who asked for a state access at frame i: the dedupe index, the commit (the working
    copy's flush), or detection."""
    callers = [f[0] for f in frames[:i] if f[1].startswith(_OURS)]
    if "Worker.commit" in callers or "Worker.close" in callers:
        return COMMIT_STATE
    if "Processor.admit" in callers:
        return DEDUPE_STATE
    return STATE


def classify(stack: list[str], root: Path) -> str:
    frames = [_parse(f) for f in stack]
    background = bool(stack) and stack[0].startswith("Thread._bootstrap")
    if any(
        "importlib" in file or func in _STARTUP_FUNCS or func.endswith("._on_assign")
        for func, file, _ in frames
    ):
        return STARTUP
    if not background and not any(func == "Worker.run" for func, _, _ in frames):
        # The main thread before the loop runs: config, topics, the processor, the control
        # topic's first read.
        return STARTUP
    for i in range(len(frames) - 1, -1, -1):
        func, file, line = frames[i]
        if file.startswith(_OURS):
            stage = _ours(func, file, line, root)
            if stage == STATE:
                return _state_caller(frames, i)
            if stage == "core: working copy" and any(
                f[0] in ("Worker.commit", "Worker.close") for f in frames[:i]
            ):
                # The working copy's flush at a commit (its encoding of the machine states
                # stays "machine state dump").
                return COMMIT_STATE
            if stage is not None:
                return stage
    for func, file, _line in reversed(frames):
        stage = _framework(func, file)
        if stage is not None:
            return stage
    return "other"


def analyse(raw: Path, events: int, root: Path, rate: int = RATE) -> dict[str, Any]:
    """Stages and top self-time functions from py-spy's raw output, per event: one pass does
    all of an event's work, so every sample is charged to the events processed."""
    weight = 1 / events if events else 0.0
    stages: Counter[str] = Counter()
    cost: dict[str, float] = {}
    self_cost: dict[str, float] = {}
    total = 0.0
    startup = 0
    waits = 0
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        stack = stack_text.split(";")
        if waiting(stack, root):
            waits += count
            continue
        stage = classify(stack, root)
        if stage == STARTUP:
            startup += count
            continue
        stages[stage] += count
        c = count * weight * 1e6 / rate
        cost[stage] = cost.get(stage, 0.0) + c
        func, file, _ = _parse(stack[-1])
        key = f"{func} ({file})"
        self_cost[key] = self_cost.get(key, 0.0) + c
        total += c
    grouped: dict[str, float] = {}
    for stage, c in cost.items():
        name = next((g for g, prefixes in GROUPS if stage.startswith(prefixes)), "other")
        grouped[name] = grouped.get(name, 0.0) + c

    def rows(costs: dict[str, float], key: str, limit: int | None = None) -> list[dict[str, Any]]:
        ordered = sorted(costs.items(), key=lambda kv: -kv[1])[:limit]
        return [
            {key: k, "us_per_event": round(v, 1), "share": round(v / total, 4) if total else 0.0}
            for k, v in ordered
        ]

    order = [name for name, _ in GROUPS] + ["other"]
    return {
        "budget": [
            {
                "stage": g,
                "us_per_event": round(grouped[g], 1),
                "share": round(grouped[g] / total, 4) if total else 0.0,
            }
            for g in order
            if g in grouped
        ],
        "samples": samples,
        "startup_samples": startup,
        "waiting_samples": waits,
        "busy_seconds": round((samples - startup - waits) / rate, 1),
        "events": events,
        "us_per_event": round(total, 1),
        "stages": rows(cost, "stage"),
        "top_self": rows(self_cost, "function", 15),
    }


class PySpy:
    """py-spy recording a process until detached."""

    def __init__(self, out: Path, rate: int = RATE) -> None:
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def attach(self, pid: int) -> None:
        exe = Path(sys.executable).with_name("py-spy")
        self.proc = subprocess.Popen(
            [
                str(exe),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def detach(self) -> None:
        # SIGINT makes py-spy write what it has; it also stops by itself when the worker exits.
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def markdown(analysis: dict[str, Any], context: dict[str, Any]) -> str:
    """profile.md: how it was measured, the per-stage budget and the top functions."""
    lines = [
        "# Profile of `auditwatch run` (py-spy)",
        "",
        f"Measured {context.get('when', '')} on {context.get('host', 'this machine')}: "
        f"{analysis['events']:,} events processed by one worker in one pass each "
        f"({context.get('eps', '?')} events/s while profiled; the timed run's figure is in "
        "latest.json), py-spy at "
        f"{RATE} Hz, {analysis['samples']:,} samples, {analysis['busy_seconds']} s busy in "
        f"Python (left out: {analysis['startup_samples']:,} startup and recovery samples, "
        f"{analysis.get('waiting_samples', 0):,} of background threads blocked in a wait).",
        "",
        f"Total: **{analysis['us_per_event']} µs of Python per event** (single worker; "
        "librdkafka's own threads and the broker are not in it).",
        "",
        "Method: see `bench/perf/profile.py`; each sample is charged to the innermost "
        "auditwatch frame (state access through the task's store is charged to whoever asked: "
        "the dedupe index, the commit, or detection), else to the innermost confluent-kafka "
        "frame.",
    ]
    lines += _table("Per-stage budget", "stage", [(s["stage"], s) for s in analysis["budget"]])
    lines += _table("Finer stages", "stage", [(s["stage"], s) for s in analysis["stages"]])
    lines += _table(
        "Top 15 functions by self time",
        "function",
        [(f"`{f['function']}`", f) for f in analysis["top_self"]],
    )
    notes = context.get("notes")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _table(title: str, what: str, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = ["", f"## {title}", "", f"| {what} | µs/event | share |", "|---|---:|---:|"]
    return out + [f"| {name} | {r['us_per_event']} | {r['share']:.1%} |" for name, r in rows]
