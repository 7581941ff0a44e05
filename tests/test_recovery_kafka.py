"""Crash recovery on the real broker: SIGKILL mid-stream, restart, nothing lost, nothing
re-learned."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.processor import event_id_of
from streams.tools.reading import pipeline_lag
from tests.conftest import Stack, wait_until
from tests.traffic import BASE_MS, steady

pytestmark = pytest.mark.kafka

MACHINE = "reports-job-5c8d7f9b6-m4n8p"
LEARNED = [f"postgres://warehouse/public.table_{i}" for i in range(8)]


def lag(stack: Stack) -> int:
    return pipeline_lag(stack.cfg)


def new_resource_pages(stack: Stack) -> list[dict[str, Any]]:
    alerts = [orjson.loads(m.value()) for m in stack.read("alerts")]
    return [a for a in alerts if a["detector"] == "new_resource" and a["status"] == "opened"]


@pytest.mark.parametrize("restart_state", ["same_dir", "fresh_dir"])
def test_sigkill_mid_stream_loses_nothing_and_keeps_baselines(
    stack: Any, restart_state: str
) -> None:
    # A fresh state dir is another host: another static member (instance id from the dir),
    # so the killed one holds its partitions until its session times out. 6 s instead of
    # the default 45 s: the restore is under test here, not the timeout.
    s: Stack = stack(kafka__session_timeout_s=6)
    s.create_topics()
    first = s.start_worker()
    # Phase A: two hours of history teach the machine its eight tables.
    history = steady(MACHINE, LEARNED, BASE_MS, 2 * 3600, prefix="a-")
    s.send(history)
    wait_until(lambda: lag(s) == 0, timeout=120, what="phase A committed")
    assert new_resource_pages(s) == []

    # Phase B: much more of the same traffic; kill the worker while it is working through it.
    more = steady(MACHINE, LEARNED, BASE_MS + 2 * 3600 * 1000, 10 * 3600, every_ms=500, prefix="b-")
    s.send(more)
    wait_until(
        lambda: 0 < lag(s) < len(more) * 0.8,
        timeout=60,
        interval=0.05,
        what="worker part-way through phase B",
    )
    first.kill()
    first.wait()
    assert lag(s) > 0, "the kill should land mid-stream"

    s.start_worker("state" if restart_state == "same_dir" else "state-restored")
    wait_until(lambda: lag(s) == 0, timeout=180, what="restarted worker to catch up")

    archived = {event_id_of(m.key()) for m in s.read("archive")}
    assert archived == {e["event_id"] for e in history + more}
    # Nothing it had learned before its last commit is 'new' after the restart.
    assert new_resource_pages(s) == []

    # And the detector still works: a table it never used does page.
    probe = {
        "event_id": "probe",
        "timestamp": more[-1]["timestamp"] + 1000,
        "machine_id": MACHINE,
        "resource": "postgres://warehouse/public.payroll",
        "operation": "SELECT",
        "outcome": "SUCCESS",
    }
    s.send([probe])
    pages = wait_until(lambda: new_resource_pages(s), timeout=60, what="probe page")
    assert [p["event_ids"] for p in pages] == [["probe"]]
