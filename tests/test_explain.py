"""`detectors.explain` over state built by the detection core, and `auditwatch explain` from
event files and from a worker's HTTP endpoint (no Kafka)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.core import DetectionCore, DetectorConfig
from detectors.explain import explain_machine
from schemas.codec import BundledSchemas
from schemas.event import AuditEvent
from streams.cli import main as cli
from streams.processor import MemoryStore, Processor
from tests.traffic import BASE_MS

HOUR = 3_600_000
A = "api-7d9f8b6c4-x2k9p"
B = "api-7d9f8b6c4-b5c8d"


def event(
    i: int, machine: str, ts: int, resource: str, op: str = "SELECT", ok: bool = True
) -> AuditEvent:
    return AuditEvent(
        event_id=f"{machine}-{i}",
        ts_us=ts * 1000,
        machine_id=machine,
        resource=resource,
        operation=op,
        outcome="SUCCESS" if ok else "FAILURE",
    )


def business_hours(
    machine: str, start: int = BASE_MS + 9 * HOUR, hours: int = 3
) -> list[AuditEvent]:
    """One access every 10 s from 09:00 to 12:00 UTC over four tables; every tenth fails."""
    return [
        event(i, machine, start + i * 10_000, f"postgres://db/public.t{i % 4}", ok=i % 10 != 0)
        for i in range(hours * 360)
    ]


@pytest.fixture
def core() -> DetectionCore:
    return DetectionCore(DetectorConfig(warmup_s=1800, warmup_events=100))


def feed(core: DetectionCore, store: MemoryStore, events: list[AuditEvent]) -> None:
    for e in sorted(events, key=lambda e: e.ts_us):
        core.observe(e, store, 0, 0)


def test_unknown_machine_is_none(core: DetectionCore) -> None:
    store = MemoryStore()
    feed(core, store, business_hours(A, hours=1))
    assert explain_machine(store, core, "never-seen") is None


def test_baseline_of_a_learned_machine(core: DetectionCore) -> None:
    store = MemoryStore()
    events = business_hours(A)
    feed(core, store, events)
    before = copy.deepcopy(store.data)
    e = explain_machine(store, core, A)
    assert e is not None
    # Reading changes nothing.
    assert store.data == before
    # JSON-able as it stands (the HTTP endpoint and --json print it).
    assert orjson.loads(orjson.dumps(e)) == e

    assert e["events"] == len(events)
    assert e["first_seen"] == "2026-01-01T09:00:00.000Z"
    assert e["warmup"]["own"] and e["warmup"]["can_page"]
    # Only the hours it was seen in are learned; the busiest is one of them, near 360/h.
    learned = [h for h, seen in enumerate(e["rate"]["hour_learned_utc"]) if seen]
    assert learned == [9, 10, 11]
    assert e["rate"]["busiest_hour_utc"] in learned
    assert 300 <= e["rate"]["expected_per_hour_utc"][10] <= 420
    assert e["rate"]["interval_s"] == 60
    # Four tables, most recently used first, each with its last use.
    recent = e["resources"]["recent"]
    assert e["resources"]["known"] == 4
    assert [r["resource"] for r in recent] == [
        f"postgres://db/public.t{i % 4}" for i in range(len(events) - 1, len(events) - 5, -1)
    ]
    assert recent[0]["last_seen"] == "2026-01-01T11:59:50.000Z"
    assert e["operations"]["read_only"] is True
    assert [o["operation"] for o in e["operations"]["recent"]] == ["SELECT"]
    # One access in ten fails: that is its normal (clipped as the core learns it).
    assert 0.05 <= e["failure_ratio"]["learned"] <= 0.12
    assert e["failure_ratio"]["page_needs_ratio"] >= 0.3
    assert e["open_alerts"] == []
    assert e["group"] == {
        "name": "api",
        "source": "machine id rules",
        "known": True,
        "members": 1,
        "warm": True,
        "last_member_joined": "2026-01-01T09:00:00.000Z",
    }
    assert e["config_version"] == core.config_version


def test_warm_up_peers_and_writes(core: DetectionCore) -> None:
    store = MemoryStore()
    feed(core, store, business_hours(A))
    # A new replica of the same deployment, ten events old: judged by its warm group.
    late = BASE_MS + 12 * HOUR
    replica = [event(i, B, late + i * 1000, "postgres://db/public.t1") for i in range(10)]
    replica.append(event(99, B, late + 20_000, "postgres://db/public.t1", op="DELETE"))
    feed(core, store, replica)
    e = explain_machine(store, core, B, top=5)
    assert e is not None
    assert e["warmup"]["own"] is False
    assert e["warmup"]["by_peers"] is True and e["warmup"]["can_page"] is True
    assert e["warmup"]["events"] == 11 and e["warmup"]["events_needed"] == 100
    assert e["group"]["members"] == 2
    ops = {o["operation"]: o for o in e["operations"]["recent"]}
    assert ops["DELETE"]["destructive"] and ops["DELETE"]["write"]
    assert not ops["SELECT"]["write"]
    assert e["operations"]["read_only"] is False
    # A DELETE from a replica of a read-only group opened an operation alert.
    assert [a["detector"] for a in e["open_alerts"]] == ["operation"]
    assert e["open_alerts"][0]["alert_id"].startswith("a-")


def test_explicit_group_and_top(core: DetectionCore) -> None:
    store = MemoryStore()
    events = [event(i, "svc", BASE_MS + i * 1000, f"s3://bucket/k{i}") for i in range(30)]
    feed(core, store, events)
    e = explain_machine(store, core, "svc", group="svc", group_source="its events", top=3)
    assert e is not None
    assert e["group"]["name"] == "svc" and e["group"]["source"] == "its events"
    assert e["resources"]["known"] == 30
    assert len(e["resources"]["recent"]) == 3
    assert e["warmup"]["can_page"] is False
    assert e["rate"]["busiest_hour_utc"] is None  # no interval learned yet


def write_jsonl(path: Path, events: list[AuditEvent]) -> None:
    path.write_bytes(b"".join(orjson.dumps(ev.to_json()) + b"\n" for ev in events))


def test_cli_explains_from_event_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = business_hours(A)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)

    assert cli.main(["explain", A, "--events", str(path), "--json"]) == 0
    printed: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    # The same answer as the core fed directly, with the defaults the CLI uses.
    core = DetectionCore(DetectorConfig())
    store = MemoryStore()
    feed(core, store, events)
    direct = explain_machine(store, core, A, group="api", group_source="its events")
    assert printed == direct

    assert cli.main(["explain", A, "--events", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(A)
    assert "peer group   api (its events)" in text
    assert "can page     yes" in text
    assert "postgres://db/public.t3" in text

    assert cli.main(["explain", "nobody", "--events", str(path)]) == 1
    assert "does not appear" in capsys.readouterr().err


def test_cli_reports_workers_it_cannot_reach(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens there.
    rc = cli.main(["explain", A, "--url", "http://127.0.0.1:9", "--timeout", "2"])
    assert rc == 1
    assert "cannot connect" in capsys.readouterr().err


def test_cli_asks_workers_for_top_and_needs_a_url_at_port_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    from streams.ops.config import Config
    from streams.ops.metrics import HttpServer, Telemetry

    cfg_path = tmp_path / "aw.yaml"
    cfg_path.write_text("http:\n  port: 0\n")
    assert cli.main(["explain", A, "--config", str(cfg_path)]) == 2
    assert "give --url" in capsys.readouterr().err

    # A worker whose processing thread explains from a store fed with A's events.
    core = DetectionCore(DetectorConfig())
    store = MemoryStore()
    feed(core, store, business_hours(A))
    t = Telemetry(Config(), Processor(Config(), BundledSchemas()))
    server = HttpServer(t, "127.0.0.1", 0)
    host, port = server.start()
    stop = threading.Event()

    def answer(machine: str, group: str | None, top: int) -> Any:
        return {
            "found": True,
            **(explain_machine(store, core, machine, group=group, top=top) or {}),
        }

    def loop() -> None:  # stands in for the worker's main loop
        while not stop.is_set():
            t.tick(answer)
            stop.wait(0.01)

    threading.Thread(target=loop, daemon=True).start()
    try:
        url = f"http://{host}:{port}"
        args = ["explain", A, "--url", url, "--json", "--config", str(cfg_path)]
        assert cli.main([*args, "--top", "2"]) == 0
        assert len(orjson.loads(capsys.readouterr().out)["resources"]["recent"]) == 2
        assert cli.main(args) == 0
        assert len(orjson.loads(capsys.readouterr().out)["resources"]["recent"]) > 2
    finally:
        stop.set()
        server.stop()


def test_plotted_page_threshold_is_where_the_rate_detector_pages() -> None:
    """`machine_rate_band(...).high` includes the recent-peak condition: a burst just below
    it does not page, one just above it does, for a machine with routine bursts."""
    import math

    from detectors.band import machine_rate_band, rate_band, recent_peak
    from detectors.core import MACHINE, MachineState

    cfg = DetectorConfig(warmup_s=1800, warmup_events=100)
    core = DetectionCore(cfg)
    store = MemoryStore()
    start = BASE_MS
    events = [event(i, A, start + i * 10_000, "postgres://db/public.t0") for i in range(6 * 360)]
    # A routine burst every half hour: 40 accesses in one minute.
    for h in range(12):
        t0 = start + h * 1_800_000 + 5_000
        events += [
            event(10_000 + h * 100 + j, A, t0 + j * 1000, "postgres://db/public.t0")
            for j in range(40)
        ]
    feed(core, store, events)
    ts = start + 6 * HOUR + 60_000 * 3  # a fresh interval after the last event
    assert ts % 60_000 == 0  # its start: a burst from here falls in that one interval
    raw = store.get(MACHINE, A)
    assert raw is not None
    state = orjson.loads(raw)
    mcfg = core.config_for(A, core.group_of(events[0]))
    band = machine_rate_band(mcfg, state, ts)
    plain = rate_band(mcfg.rate, MachineState.from_dict(dict(state)).rate, ts)
    assert band is not None and plain is not None and band.warm
    peak = recent_peak(mcfg, state["pk"], ts)
    assert peak >= 40 and band.peak_floor == pytest.approx(mcfg.rate_peak_ratio * peak)
    # The peak condition is what sets the line here: the learned level clips the bursts out.
    assert band.high == band.peak_floor > plain.high

    def pages(count: int) -> bool:
        c, s = copy.deepcopy(core), copy.deepcopy(store)
        burst = [
            event(90_000 + j, A, ts + 200 * j, "postgres://db/public.t0") for j in range(count)
        ]
        found = [a for e in burst for a in c.observe(e, s, 0, 0)]
        return any(a.detector == "access_rate" for a in found)

    assert not pages(math.floor(band.high) - 1)
    assert pages(math.ceil(band.high) + 1)
