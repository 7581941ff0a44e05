"""Every decoder keeps its contract on fuzzed input (issue 18, point 5): an event (or the
decoder's own record) or the documented rejection, never another exception.

- Each committed seed and each regression input (`regressions/<target>/`, one file per crash
  found, named after it) through its target.
- Our mutation fuzzer over every target: at least 1,000,000 inputs in all, 0 escapes.
- atheris (optional extra `fuzz`), coverage-guided, as a subprocess with bounded runs, when
  it is installed.

Long runs: `make fuzz` (FUZZ_RUNS, FUZZ_SECONDS).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuzz.mutate import CORPUS, REGRESSIONS, fuzz
from tests.fuzz.targets import NAMES, TARGETS

ROOT = Path(__file__).resolve().parents[2]
# The CI budget: 1,000,000 inputs shared among the targets by their weight: the decoders of
# input messages get most; a file reader's input is several records (each then decoded), so
# it gets fewer inputs of more work each.
TOTAL_INPUTS = int(os.environ.get("AUDITWATCH_FUZZ_INPUTS", "1000000"))
WEIGHTS = {
    "event_json": 30,
    "event_auto": 30,
    "event_avro": 24,
    "event_registry": 20,
    "timestamp": 26,
    "reader_jsonl": 8,
    "reader_csv": 7,
    "reader_cloudtrail": 5,
    "reader_k8s": 6,
    "control_record": 14,
    "alert_state": 12,
    "fix_file": 8,
    "dead_letter_record": 6,
    "rejected_event_id": 8,
    "processor_handle": 8,
}


def _inputs(target: str) -> list[tuple[str, Path]]:
    out = []
    for folder in (CORPUS, REGRESSIONS):
        if (folder / target).is_dir():
            out += [(target, p) for p in sorted((folder / target).iterdir())]
    return out


CASES = [case for name in TARGETS for case in _inputs(name)]
# Crashes whose input is too large to keep as a file: made here.
GENERATED = {
    "csv-field-over-the-csv-module-limit": (
        "reader_csv",
        b"timestamp,host\n" + b"x" * 140_000 + b",h\n2026-11-18T10:15:00Z,h\n",
    ),
    "csv-quoted-field-over-the-limit": (
        "reader_csv",
        b'timestamp,host\n1,2\n"' + b"y" * 140_000 + b"\n3,4\n",
    ),
}


def test_every_target_has_seeds_and_a_budget() -> None:
    assert set(WEIGHTS) == set(TARGETS)
    assert all((CORPUS / name).is_dir() for name in TARGETS)


@pytest.mark.parametrize(
    ("target", "path"), CASES, ids=[f"{t}/{p.parent.parent.name}/{p.name}" for t, p in CASES]
)
def test_seed_or_regression_keeps_the_contract(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_regression_keeps_the_contract(name: str) -> None:
    target, data = GENERATED[name]
    TARGETS[target](data)


@pytest.fixture
def quiet_logs():
    # Rejections are logged at info/warning; a million of them would be the test's cost.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_a_million_fuzzed_inputs_and_no_escape(quiet_logs: None) -> None:
    total_weight = sum(WEIGHTS.values())
    lines, crashes, done = [], [], 0
    start, cpu = time.perf_counter(), time.process_time()
    for name, target in TARGETS.items():
        runs = -(-TOTAL_INPUTS * WEIGHTS[name] // total_weight)
        stats = fuzz(name, target, runs, seed=int(os.environ.get("AUDITWATCH_FUZZ_SEED", "0")))
        done += stats.inputs
        crashes += stats.crashes
        lines.append(
            f"{name:20s} {stats.inputs:9,d} inputs {stats.per_second:9,.0f}/s "
            f"({stats.per_cpu_second:,.0f}/s of CPU)"
        )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU time is what the run costs on a core of its own; wall time includes the neighbours'.
    total = f"{'total':20s} {done:9,d} inputs in {elapsed:.1f} s ({cpu:.1f} s of CPU)"
    report = "\n".join([*lines, total])
    print(report)
    detail = "\n\n".join(f"{c.target} {c.data[:200]!r}\n{c.trace}" for c in crashes[:3])
    assert not crashes, (
        f"{len(crashes)} escape(s); keep each under tests/fuzz/regressions/\n{detail}"
    )
    assert done >= TOTAL_INPUTS


ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.skipif(not ATHERIS, reason="atheris not installed (optional extra `fuzz`)")
def test_atheris_coverage_guided_run_finds_no_crash(tmp_path: Path) -> None:
    """Every target from one coverage-guided process (`harness all`: byte 0 picks the
    target), bounded in runs and in time; libFuzzer exits non-zero on a crash and writes the
    input as crash-<sha1> in its working directory."""
    runs = int(os.environ.get("AUDITWATCH_ATHERIS_RUNS", "30000"))
    seconds = int(os.environ.get("AUDITWATCH_ATHERIS_SECONDS", "25"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.harness",
            "all",
            f"-runs={runs}",
            f"-max_total_time={seconds}",
            "-max_len=4096",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-seed=1",
            "-print_final_stats=1",
        ],
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    crashes = sorted(tmp_path.glob("crash-*"))
    found = [
        f"{NAMES[p.read_bytes()[0] % len(NAMES)]}: {p.read_bytes()[1:200]!r}"
        for p in crashes
        if p.read_bytes()
    ]
    assert proc.returncode == 0 and not crashes, (
        f"exit {proc.returncode}, {found}\n{proc.stderr[-3000:]}"
    )
    done = re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    print(f"atheris: {done.group(1) if done else '?'} inputs")
