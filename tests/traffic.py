"""Small, exact test traffic: a few machines at steady rates, plus injected anomalies whose
times and machines the tests know."""

from __future__ import annotations

from typing import Any

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def steady(
    machine: str,
    resources: list[str],
    start_ms: int,
    seconds: int,
    every_ms: int = 1000,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """One event every `every_ms`, cycling through `resources`."""
    return [
        {
            "event_id": f"{prefix}{machine}-{i}",
            "timestamp": start_ms + i * every_ms,
            "machine_id": machine,
            "resource": resources[i % len(resources)],
            "operation": "SELECT",
            "outcome": "SUCCESS",
        }
        for i in range(seconds * 1000 // every_ms)
    ]


def fan_out(machine: str, at_ms: int, n: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"fanout-{machine}-{i}",
            "timestamp": at_ms + i * 500,
            "machine_id": machine,
            "resource": f"secrets://prod/other-team-{i}/api-token",
            "operation": "GetSecretValue",
            "outcome": "SUCCESS",
        }
        for i in range(n)
    ]


def burst(
    machine: str, resource: str, at_ms: int, n: int = 400, over_ms: int = 60_000
) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"burst-{machine}-{i}",
            "timestamp": at_ms + i * over_ms // n,
            "machine_id": machine,
            "resource": resource,
            "operation": "SELECT",
            "outcome": "SUCCESS",
        }
        for i in range(n)
    ]


def scenario() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Two machines for 3 hours, then a fan-out on one and a rate burst on the other.
    Returns (events sorted by time, {machine: expected detector})."""
    a, b = "billing-api-6f7c9d8b4-q2w7x", "ingest-worker-07"
    events = steady(
        a, ["postgres://billing-db/public.invoices", "redis://cache/session"], BASE_MS, 3 * 3600
    )
    events += steady(
        b,
        ["s3://raw-events/2026/01/part-0001.json", "kafka://topic/ingest"],
        BASE_MS,
        3 * 3600,
        2000,
    )
    events += fan_out(b, BASE_MS + 2 * 3600 * 1000 + 600_000)
    events += burst(
        a, "postgres://billing-db/public.invoices", BASE_MS + 2 * 3600 * 1000 + 1_800_000
    )
    events.sort(key=lambda e: e["timestamp"])
    return events, {a: "access_rate", b: "new_resource"}
