"""`alerts --follow` on a terminal: a live table with one row per alert, latest first."""

from __future__ import annotations

import io

from rich.console import Console

from streams.cli.main import LiveAlerts


def state(alert_id: str, status: str, severity: str = "medium", machine: str = "m-1") -> dict:
    return {
        "alert_id": alert_id,
        "status": status,
        "severity": severity,
        "machine_id": machine,
        "detector": "new_resource",
        "score": 60.0,
        "event_time": "2026-01-01T00:00:00.000Z",
        "summary": "m-1 accessed s3://b/[/oops], which it had not used.",
    }


def render(board: LiveAlerts) -> str:
    out = io.StringIO()
    Console(file=out, width=250, force_terminal=False).print(board.table())
    return out.getvalue()


def test_each_alert_is_one_row_updated_in_place_latest_first() -> None:
    board = LiveAlerts()
    board.update(state("a-1", "opened"))
    board.update(state("a-2", "opened", machine="m-2"))
    board.update(state("a-1", "escalated", severity="high"), "acked by alice")
    text = render(board)
    assert [r[7] for r in reversed(board.rows.values())] == ["a-1", "a-2"]
    assert text.count("a-1") == 1 and "escalated" in text and "opened" in text
    assert text.index("a-1") < text.index("a-2")
    assert "acked by alice" in text
    assert "2 alerts, 3 states" in text
    assert "[/oops]" in text  # data, not markup


def test_the_board_keeps_the_most_recently_changed_alerts() -> None:
    board = LiveAlerts(limit=3)
    for i in range(5):
        board.update(state(f"a-{i}", "opened"))
    board.update(state("a-2", "updated"))
    assert list(board.rows) == ["a-3", "a-4", "a-2"]
