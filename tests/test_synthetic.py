"""Tests of the synthetic traffic generator: determinism, ordering, and that every injected
episode is present and looks the way its kind says (without reading labels, except where the
label itself is under test)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter, defaultdict
from typing import Any

import pytest

from streams.tools.readers import EVENT_FIELDS
from streams.tools.synthetic import (
    ANOMALY_KINDS,
    BENIGN_KINDS,
    DAY_MS,
    DEFAULT_START_MS,
    HOUR_MS,
    MINUTE_MS,
    Episode,
    SyntheticConfig,
    SyntheticTraffic,
    demo_config,
)

Event = dict[str, Any]

# Monday 12:00 UTC for a day, warm-up until 22:00: the night and the next morning's business
# hours are both after warm-up, so every kind has the hours it prefers.
FULL = SyntheticConfig(
    seed=11,
    start_ms=DEFAULT_START_MS + 12 * HOUR_MS,
    duration_s=86_400,
    machines=60,
    rate_scale=0.5,
    warmup_s=10 * 3600,
    anomalies=dict.fromkeys(ANOMALY_KINDS, 1),
    benign=dict.fromkeys(BENIGN_KINDS, 1),
)
_ID = re.compile(r"\d{4,}")
_POD = re.compile(r"^(.+)-[bcdfghjklmnpqrstvwxz2456789]{9,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")
_NUMBERED = re.compile(r"^(.+)-\d{2,4}$")


def norm(resource: str) -> str:
    """Object keys and row ids replaced, as downstream normalisation would."""
    return _ID.sub("#", resource)


@pytest.fixture(scope="module")
def full() -> tuple[SyntheticTraffic, list[Event]]:
    traffic = SyntheticTraffic(FULL)
    return traffic, list(traffic)


@pytest.fixture(scope="module")
def by_machine(full: tuple[SyntheticTraffic, list[Event]]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in full[1]:
        out[e["machine_id"]].append(e)
    return out


def episodes_of(traffic: SyntheticTraffic, kind: str) -> list[Episode]:
    eps = [e for e in traffic.episodes if e.kind == kind]
    assert eps, f"no {kind} episode"
    return eps


def split(events: list[Event], ep: Episode) -> tuple[list[Event], list[Event], list[Event]]:
    """Events before, inside and after the episode's window."""
    before = [e for e in events if e["timestamp"] < ep.start_ms]
    inside = [e for e in events if ep.start_ms <= e["timestamp"] < ep.end_ms]
    after = [e for e in events if e["timestamp"] >= ep.end_ms]
    return before, inside, after


def test_same_seed_same_events_other_seed_differs() -> None:
    cfg = SyntheticConfig(
        seed=3,
        duration_s=2 * 3600,
        machines=30,
        warmup_s=3600,
        anomalies={"fan_out": 1, "rate_burst": 1},
        benign={"pod_rotation": 1},
    )
    a, b = SyntheticTraffic(cfg), SyntheticTraffic(cfg)
    first = list(a)
    assert first and first == list(b) == list(a)  # also: iterating twice gives the same
    assert a.episodes == b.episodes and a.machines == b.machines
    other = SyntheticTraffic(dataclasses.replace(cfg, seed=4))
    assert list(itertools.islice(other, 100)) != first[:100]
    # The order of kinds in the config dicts does not matter.
    swapped = dataclasses.replace(cfg, anomalies={"rate_burst": 1, "fan_out": 1})
    assert SyntheticTraffic(swapped).episodes == a.episodes


def test_event_form(full: tuple[SyntheticTraffic, list[Event]]) -> None:
    traffic, events = full
    assert len(events) > 50_000
    known = set(traffic.machines)
    for e in itertools.islice(events, 0, None, 97):
        # Exactly what `produce` and `replay` read from a JSON-lines file.
        assert set(e) == {*EVENT_FIELDS, "attributes"}
        assert isinstance(e["timestamp"], int)
        assert e["outcome"] in ("SUCCESS", "FAILURE", "DENIED")
        assert e["source"] == "synthetic" and e["machine_id"] in known
        assert "%" not in e["resource"] and "://" in e["resource"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e["attributes"].items())
        assert "injected" not in e["attributes"]  # labels are off by default
    # Mutating one event's attributes must not leak into others.
    events[0]["attributes"]["x"] = "y"
    assert "x" not in events[1]["attributes"]
    del events[0]["attributes"]["x"]


def test_time_order_ids_and_window(full: tuple[SyntheticTraffic, list[Event]]) -> None:
    _, events = full
    ts = [e["timestamp"] for e in events]
    assert all(x <= y for x, y in itertools.pairwise(ts))
    assert FULL.start_ms <= ts[0] and ts[-1] < FULL.end_ms
    assert len({e["event_id"] for e in events}) == len(events)


def test_population_shape(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    traffic, events = full
    names = traffic.machines
    pods = [m for m in names if _POD.match(m)]
    assert len(pods) > len(names) / 2
    assert any(m.startswith("ci-runner-") for m in names)
    assert any(_NUMBERED.match(m) and not m.startswith("ci-runner-") for m in names)
    # Replicas of a deployment share their resource set (normalised).
    deployments: dict[str, list[str]] = defaultdict(list)
    for m in pods:
        deployments[_POD.match(m).group(1)].append(m)  # type: ignore[union-attr]
    multi = [d for d, ms in deployments.items() if len(ms) >= 2]
    assert multi
    for d in multi[:5]:
        busy = [m for m in deployments[d] if len(by_machine[m]) > 500]
        sets = [{norm(e["resource"]) for e in by_machine[m]} for m in busy]
        if len(sets) >= 2:
            assert len(set.union(*sets)) == len(set.intersection(*sets)), d
    # Object keys and row ids are inside some resource names.
    assert sum(1 for e in events[:5000] if _ID.search(e["resource"])) > 500
    # Background failures are low.
    failed = sum(e["outcome"] != "SUCCESS" for e in events) / len(events)
    assert 0.003 < failed < 0.05


def test_episodes_are_placed_after_warmup(full: tuple[SyntheticTraffic, list[Event]]) -> None:
    traffic, _ = full
    warm = FULL.start_ms + int(FULL.warmup_s * 1000)
    kinds = {e.kind for e in traffic.episodes}
    assert kinds == set(ANOMALY_KINDS) | set(BENIGN_KINDS)
    for ep in traffic.episodes:
        assert ep.malicious == (ep.kind in ANOMALY_KINDS)
        assert ep.start_ms < ep.end_ms <= FULL.end_ms and ep.description
        if ep.kind != "nightly_batch":
            assert ep.start_ms >= warm, ep
        assert ep.machine_id in traffic.machines
    assert len([e for e in traffic.episodes if e.malicious]) == len(ANOMALY_KINDS)


def test_rate_burst(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    (ep,) = episodes_of(full[0], "rate_burst")
    events = by_machine[ep.machine_id]
    before, inside, _ = split(events, ep)
    hour_before = [e for e in before if e["timestamp"] >= ep.start_ms - HOUR_MS]
    baseline = len(hour_before) / HOUR_MS
    assert len(hour_before) >= 30
    assert len(inside) / (ep.end_ms - ep.start_ms) >= 5 * baseline
    # Same resources as usual: it is the rate that is odd, not what it touches.
    assert {norm(e["resource"]) for e in inside} <= {norm(e["resource"]) for e in before}


def test_fan_out(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    (ep,) = episodes_of(full[0], "fan_out")
    before, inside, _ = split(by_machine[ep.machine_id], ep)
    history = {norm(e["resource"]) for e in before}
    assert len(before) > 100
    new = {norm(e["resource"]) for e in inside} - history
    assert len(new) >= 20
    assert all(r.startswith(("secrets://", "postgres://")) for r in new)


def test_failure_spike(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    (ep,) = episodes_of(full[0], "failure_spike")
    before, inside, _ = split(by_machine[ep.machine_id], ep)

    def failed(evs: list[Event]) -> float:
        return sum(e["outcome"] != "SUCCESS" for e in evs) / len(evs)

    assert len(inside) >= 30
    assert failed(inside) >= 0.5 and failed(before) < 0.05
    assert {"FAILURE", "DENIED"} <= {e["outcome"] for e in inside}


def test_new_identity(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    traffic, _ = full
    (ep,) = episodes_of(traffic, "new_identity")
    before, inside, after = split(by_machine[ep.machine_id], ep)
    assert not before and not after and len(inside) >= 20
    # Matches no peer group: neither a pod nor a numbered instance, and its identity type
    # and network are used by nobody else.
    assert not _POD.match(ep.machine_id) and not _NUMBERED.match(ep.machine_id)
    ident, ip = inside[0]["identity_type"], inside[0]["source_ip"]
    others = [e for m, evs in by_machine.items() if m != ep.machine_id for e in evs[:50]]
    assert ident not in {e["identity_type"] for e in others}
    assert not ip.startswith("10.")
    sensitive = ("secrets://", "s3://db-backups/", "postgres://")
    assert all(e["resource"].startswith(sensitive) for e in inside)
    assert any(e["resource"].startswith("secrets://") for e in inside)


def test_off_hours(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    (ep,) = episodes_of(full[0], "off_hours")
    hour = (ep.start_ms % DAY_MS) // HOUR_MS
    assert hour < 6 or hour >= 20  # at night
    events = by_machine[ep.machine_id]
    _, inside, _ = split(events, ep)
    # The run's only night is 22:00-06:00 (warm-up ends at 22:00); business hours follow.
    night0 = FULL.start_ms + 10 * HOUR_MS
    night = [e for e in events if night0 <= e["timestamp"] < night0 + 8 * HOUR_MS]
    outside = [e for e in night if not ep.start_ms <= e["timestamp"] < ep.end_ms]
    inside_rate = len(inside) / (ep.end_ms - ep.start_ms)
    outside_rate = (len(outside) + 1) / (8 * HOUR_MS - (ep.end_ms - ep.start_ms))
    assert len(inside) >= 20 and inside_rate >= 10 * outside_rate
    # A normal-ish rate: comparable to its own daytime traffic.
    day0 = night0 + 11 * HOUR_MS
    day = [e for e in events if day0 <= e["timestamp"] < day0 + 3 * HOUR_MS]
    assert inside_rate >= 0.2 * len(day) / (3 * HOUR_MS)


def test_operation_shift(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    (ep,) = episodes_of(full[0], "operation_shift")
    before, inside, after = split(by_machine[ep.machine_id], ep)
    destructive = {"DELETE", "DROP", "TRUNCATE"}
    reads = {"SELECT", "GET", "GetObject", "ListObjects", "read"}
    assert len(before) > 100 and {e["operation"] for e in before} <= reads
    assert {e["operation"] for e in after} <= reads
    assert sum(e["operation"] in destructive for e in inside) >= 10
    # The destructive statements hit tables the client normally reads.
    history = {e["resource"] for e in before}
    assert {e["resource"] for e in inside if e["operation"] in destructive} <= history


def test_silence(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    (ep,) = episodes_of(full[0], "silence")
    assert ep.end_ms - ep.start_ms >= 30 * MINUTE_MS
    before, inside, after = split(by_machine[ep.machine_id], ep)
    assert not inside
    gap = ep.end_ms - ep.start_ms
    # Normally busy: it would have sent plenty in a window that long.
    assert len([e for e in before if e["timestamp"] >= ep.start_ms - gap]) >= 20
    assert len([e for e in after if e["timestamp"] < ep.end_ms + gap]) >= 20


def test_pod_rotation_keeps_resources(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    eps = episodes_of(full[0], "pod_rotation")
    old = [e.machine_id for e in eps if "old pod" in e.description]
    new = [e.machine_id for e in eps if "new pod" in e.description]
    assert len(old) == len(new) >= 2
    groups = {_POD.match(m).group(1) for m in old + new}  # type: ignore[union-attr]
    assert len(groups) == 1  # same deployment, new replicaset hash
    assert {m.rsplit("-", 2)[1] for m in old}.isdisjoint({m.rsplit("-", 2)[1] for m in new})
    t = eps[0].start_ms
    old_res = {norm(e["resource"]) for m in old for e in by_machine[m]}
    new_res = {norm(e["resource"]) for m in new for e in by_machine[m]}
    assert new_res and new_res <= old_res
    assert all(e["timestamp"] < t + 5 * MINUTE_MS for m in old for e in by_machine[m])
    assert all(e["timestamp"] >= t for m in new for e in by_machine[m])


def test_autoscale_and_group_deploy(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    traffic, _ = full
    scaled = episodes_of(traffic, "autoscale")
    group = _NUMBERED.match(scaled[0].machine_id).group(1)  # type: ignore[union-attr]
    peers = [
        m
        for m in traffic.machines
        if _NUMBERED.match(m)
        and m.rsplit("-", 1)[0] == group
        and m not in {e.machine_id for e in scaled}
    ]
    assert peers
    peer_res = {norm(e["resource"]) for m in peers for e in by_machine[m]}
    for ep in scaled:
        evs = by_machine[ep.machine_id]
        assert evs and all(e["timestamp"] >= ep.start_ms for e in evs)
        assert {norm(e["resource"]) for e in evs} <= peer_res

    deployed = episodes_of(traffic, "group_deploy")
    assert len(deployed) >= 2 and len({e.start_ms for e in deployed}) == 1
    table = deployed[0].description.rsplit(" ", 1)[1]
    for ep in deployed:
        before, inside, after = split(by_machine[ep.machine_id], ep)
        assert table not in {e["resource"] for e in before}
        assert table in {e["resource"] for e in inside + after}


def test_batch_jobs_only_in_their_window(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    windows: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes_of(full[0], "nightly_batch"):
        windows[ep.machine_id].append(ep)
    for machine, eps in windows.items():
        events = by_machine[machine]
        assert len(events) > 100
        for e in events:
            assert any(ep.start_ms <= e["timestamp"] < ep.end_ms for ep in eps), (machine, e)


def test_traffic_growth_is_labelled(
    full: tuple[SyntheticTraffic, list[Event]], by_machine: dict[str, list[Event]]
) -> None:
    eps = episodes_of(full[0], "traffic_growth")
    assert all(ep.end_ms == FULL.end_ms and not ep.malicious for ep in eps)
    assert all(by_machine[ep.machine_id] for ep in eps)


def test_mark_injected_labels_only_anomalies() -> None:
    cfg = dataclasses.replace(
        FULL, machines=30, rate_scale=0.1, mark_injected=True, benign={"pod_rotation": 1}
    )
    traffic = SyntheticTraffic(cfg)
    labels: Counter[tuple[str, str]] = Counter()
    for e in traffic:
        kind = e["attributes"].get("injected")
        if kind is not None:
            labels[(kind, e["machine_id"])] += 1
    expected = {
        (ep.kind, ep.machine_id) for ep in traffic.episodes if ep.malicious and ep.kind != "silence"
    }
    assert set(labels) == expected


def test_scale_ten_thousand_machines_over_a_day() -> None:
    probe = SyntheticConfig(machines=10_000, duration_s=86_400)
    scale = 450_000 / SyntheticTraffic(probe).expected_events()
    traffic = SyntheticTraffic(dataclasses.replace(probe, rate_scale=scale))
    assert len(traffic.machines) >= 10_000
    seen = {e["machine_id"] for e in traffic}
    assert len(seen) >= 10_000


@pytest.mark.parametrize("hour", [15, 3])  # busy afternoon, quiet night: similar volume
def test_demo_config(hour: int) -> None:
    now = DEFAULT_START_MS + 3 * DAY_MS + hour * HOUR_MS + 1234
    cfg = demo_config(now)
    assert cfg.end_ms == now and cfg.duration_s == 3 * 3600
    traffic = SyntheticTraffic(cfg)
    assert 35 <= len(traffic.machines) <= 45
    n = sum(1 for _ in traffic)
    assert 20_000 <= n <= 40_000
    bad = [e for e in traffic.episodes if e.malicious]
    assert {e.kind for e in bad} >= {"fan_out", "rate_burst"}
    assert all(e.start_ms >= now - HOUR_MS for e in bad)


def test_off_hours_needs_a_night() -> None:
    daytime = SyntheticConfig(
        start_ms=DEFAULT_START_MS + 9 * HOUR_MS,
        duration_s=6 * 3600,
        warmup_s=3600,
        anomalies={"off_hours": 1},
    )
    with pytest.raises(ValueError, match="night"):
        SyntheticTraffic(daytime)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown anomalies kind"):
        SyntheticConfig(anomalies={"port_scan": 1})
    with pytest.raises(ValueError, match="machines"):
        SyntheticConfig(machines=3)
    with pytest.raises(ValueError, match="warmup_s"):
        SyntheticConfig(duration_s=3600, warmup_s=3600, anomalies={"fan_out": 1})
