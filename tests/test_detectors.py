"""Unit and contract tests for detectors: identity, the rate baseline and the detection core."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import fastavro
import orjson
import pytest
from fastavro.validation import validate

from detectors import resources
from detectors.core import DetectionCore, DetectorConfig, MachineState
from detectors.identity import GroupNames, default_group
from detectors.rate import RateBaseline, RateParams
from detectors.resources import normalise_resource
from schemas.alert import Alert
from schemas.event import AuditEvent, format_rfc3339_ms
from schemas.registry import schema_json

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1000  # one second in ms
KNOWN = "postgres://orders-db/public.orders"

# --- identity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("s3://bucket/2026/11/inv-8341.pdf", "s3://bucket/{n}/{n}"),
        ("postgres://orders-db/public.orders", "postgres://orders-db/public.orders"),
        ("https://api.internal/users/12345/orders", "https://api.internal/users/{n}"),
        ("https://api.internal/v1/users", "https://api.internal/v1/users"),
        ("https://api.internal/users/inv-8341", "https://api.internal/users/inv-{n}"),
        (
            "https://api/users/123e4567-e89b-12d3-a456-426614174000/x",
            "https://api/users/{uuid}",
        ),
        ("https://api/users/123E4567-E89B-12D3-A456-426614174000", "https://api/users/{uuid}"),
        ("s3://b/objects/0123456789abcdef0123", "s3://b/objects/{hex}"),
        ("s3://b/sha-5f3a9c0e1b2d4f6a.png", "s3://b/sha-{hex}.png"),
        ("s3://b/ABCDEF0123456789ABCD", "s3://b/{hex}"),
        ("https://h/items/id=42", "https://h/items/id={n}"),
        ("https://h/a/b?id=5&token=x", "https://h/a/b"),
        ("db/t1", "db/t1"),
        ("vault://kv/api-key-3", "vault://kv/api-key-3"),
        ("postgres://db-01/schema-7", "postgres://db-01/schema-7"),
        ("orders-db/public.orders/rows/991234", "orders-db/public.orders/rows"),
        ("s3://bucket", "s3://bucket"),
        ("s3://", "s3://"),
    ],
)
def test_normalise_resource(resource: str, expected: str) -> None:
    assert normalise_resource(resource) == expected


def test_normalise_resource_depth() -> None:
    r = "s3://bucket/a/b/c/d"
    assert normalise_resource(r, 0) == "s3://bucket"
    assert normalise_resource(r, 1) == "s3://bucket/a"
    assert normalise_resource(r, 3) == "s3://bucket/a/b/c"


def test_ids_past_the_judged_depth_are_normalised_once() -> None:
    # Most resources are unique by what follows the judged segments (an object key, a row
    # id): normalising each again would cost every event. Only the judged part is normalised.
    before = resources._normalise.cache_info()
    for n in range(500):
        assert normalise_resource(f"https://api.internal/v1/billing/{n}") == (
            "https://api.internal/v1/billing"
        )
        assert normalise_resource(f"https://api.internal//v1//billing/{n}?q={n}") == (
            "https://api.internal/v1/billing"
        )
    assert resources._normalise.cache_info().misses - before.misses <= 2


def test_normalising_the_judged_part_is_normalising_the_whole() -> None:
    rng = random.Random(7)
    pieces = ["/", "/", "://", ":", "?", "a", "2345", "=", "x=12", "deadbeefdeadbeef00", "é"]
    pieces += ["123e4567-e89b-12d3-a456-426614174000", "ABCDEF0123456789", "-"]
    for _ in range(20_000):
        r = "".join(rng.choice(pieces) for _ in range(rng.randrange(14)))
        for depth in (-1, 0, 1, 2, 3):
            assert normalise_resource.__wrapped__(r, depth) == resources._normalise.__wrapped__(
                r, depth
            )


def test_object_keys_of_one_prefix_normalise_alike() -> None:
    keys = [
        f"s3://invoices/{y}/{m:02d}/inv-{n}.pdf"
        for y in (2025, 2026)
        for m in (1, 12)
        for n in (1000, 98765)
    ]
    assert {normalise_resource(k) for k in keys} == {"s3://invoices/{n}/{n}"}


def test_hash_after_underscore_is_normalised() -> None:
    assert normalise_resource("s3://b/uploads/img_5f3a9c0e1b2d4f6a.png") == (
        "s3://b/uploads/img_{hex}.png"
    )


@pytest.mark.parametrize(
    ("machine_id", "group"),
    [
        ("api-7d9f8b6c5d-x2k9p", "api"),
        ("orders-worker-5c8d7f9b4-zv2xq", "orders-worker"),
        ("app-bcdfg-7d9f8b6c5d-x2k9p", "app-bcdfg"),
        ("kafka-3", "kafka"),
        ("db-07", "db"),
        ("redis-0", "redis"),
        ("web-12345", "web-12345"),
        ("billing", "billing"),
        ("api-v2", "api-v2"),
        ("api-aeiou-x2k9p", "api-aeiou-x2k9p"),  # vowels: not a ReplicaSet hash
    ],
)
def test_default_group(machine_id: str, group: str) -> None:
    assert default_group(machine_id) == group


def test_group_names_remember_a_bounded_number_of_machines() -> None:
    """GroupNames keeps each machine's group (every event asks) in a bounded dict, and an
    event naming its group by attribute is not answered from it."""
    names = GroupNames("team", [r"^(?P<group>[a-z]+)-box-\d+$"])

    def event(machine: str, **attributes: str) -> AuditEvent:
        return AuditEvent(
            event_id="e",
            ts_us=0,
            machine_id=machine,
            resource="r",
            operation="GET",
            outcome="SUCCESS",
            attributes=attributes,
        )

    assert names.of(event("ci-box-1")) == "ci"
    assert names.of(event("ci-box-1", team="payments")) == "payments"
    assert names.of(event("ci-box-1")) == "ci"
    for i in range(70_000):
        assert names.of(event(f"host{i}")) == f"host{i}"
    assert len(names._by_machine) <= 65_536
    assert names.of(event("kafka-3")) == "kafka"


# --- rate baseline ----------------------------------------------------------------------

INTERVAL_MS = RateParams().interval_s * S


def feed(b: RateBaseline, interval: int, count: int) -> float:
    """`count` events spread over one interval; returns the highest score among them."""
    step = INTERVAL_MS // max(count, 1)
    return max(
        (b.observe(T0 + interval * INTERVAL_MS + j * step) for j in range(count)), default=0.0
    )


def steady(b: RateBaseline, intervals: range, count: int) -> list[float]:
    return [feed(b, i, count) for i in intervals]


def test_rate_no_score_during_warmup() -> None:
    b = RateBaseline(RateParams())
    assert steady(b, range(30), 10) == [0.0] * 30
    assert feed(b, 30, 1000) == 0.0
    assert not b.warm


def test_rate_spike_after_warmup_scores() -> None:
    b = RateBaseline(RateParams())
    assert max(steady(b, range(80), 10)) == 0.0
    assert b.warm
    score = feed(b, 80, 100)
    assert 50.0 <= score <= 100.0


@pytest.mark.parametrize("count", [1, 10, 50, 400])
def test_rate_steady_traffic_scores_zero(count: int) -> None:
    b = RateBaseline(RateParams())
    assert max(steady(b, range(200), count)) == 0.0
    assert b.expected() == pytest.approx(count, rel=0.01)


def test_rate_learns_gradual_growth() -> None:
    params = RateParams(z=3.0, min_ratio=1.5)
    ramp = RateBaseline(params)
    steady(ramp, range(80), 30)
    scores = [feed(ramp, i, round(30 + 30 * (i - 80) / 400)) for i in range(80, 481)]
    assert max(scores) == 0.0
    assert ramp.expected() > 50

    # The control: the same doubling all at once is a spike for the same parameters.
    jump = RateBaseline(params)
    steady(jump, range(80), 30)
    assert feed(jump, 80, 60) >= 50.0


def test_rate_burst_is_not_learned_as_normal() -> None:
    b = RateBaseline(RateParams())
    steady(b, range(80), 10)
    before = b.expected()
    first = feed(b, 80, 200)
    steady(b, range(81, 83), 10)
    assert b.expected() < before * 1.2
    assert feed(b, 83, 200) == pytest.approx(first, abs=1.0)


def test_rate_empty_intervals_count_as_zeros() -> None:
    b = RateBaseline(RateParams())
    steady(b, range(80), 10)
    feed(b, 200, 1)  # 119 empty intervals in between
    assert b.expected() < 2.0


def test_rate_state_round_trip_preserves_behaviour() -> None:
    params = RateParams()
    original = RateBaseline(params)
    steady(original, range(70), 12)
    restored = RateBaseline(params, orjson.loads(orjson.dumps(original.state())))
    assert restored.warm
    counts = [12, 13, 100, 11, 12, 0, 0, 40, 12]
    a = [feed(original, 70 + i, c) for i, c in enumerate(counts)]
    b = [feed(restored, 70 + i, c) for i, c in enumerate(counts)]
    assert b == pytest.approx(a, abs=1e-3)
    assert max(a) >= 50.0
    assert restored.state() == pytest.approx(original.state(), abs=1e-5)


def test_rate_fresh_state_is_cold() -> None:
    assert not RateBaseline(RateParams(), []).warm
    assert RateBaseline(RateParams(), None).state() == [-1, 0, 0.0, 0.0, 0]


def test_rate_river_style_interface() -> None:
    b = RateBaseline(RateParams(warmup_intervals=20))
    assert b.score_one({"value": 1000.0}) == 0.0  # scoring before any learning works
    for _ in range(19):
        b.learn_one({"value": 10.0})
    assert b.score_one({"value": 1000.0}) == 0.0  # still warming up
    b.learn_one({"value": 10.0})
    assert b.n == 20

    state = b.state()
    low, mid, high = (b.score_one({"value": v}) for v in (10.0, 30.0, 100.0))
    assert b.state() == state  # scoring does not learn
    assert low == 0.0
    assert 0.0 < mid < high <= 1.0
    x = {"value": 30.0}
    b.score_one(x)
    assert x == {"value": 30.0}  # nor mutate the input


# --- detection core ---------------------------------------------------------------------

NO_RATE = RateParams(min_count=10**9)  # isolate new_resource from access_rate
CONFIG = DetectorConfig(
    rate=NO_RATE,
    warmup_s=60,
    warmup_events=5,
    mature_after_s=0,  # as with history behind it: maturity is test_maturity's
    fanout_window_s=300,
    cooldown_s=600,
    update_every_s=60,
)


class Machine:
    """One machine's event stream through a core, keeping its state like the processor does:
    serialised between events when `serialise` is set."""

    def __init__(
        self,
        core: DetectionCore,
        machine_id: str = "orders-api-7d9f8b6c5d-x2k9p",
        serialise: bool = False,
    ) -> None:
        self.core = core
        self.machine_id = machine_id
        self.serialise = serialise
        self.state: MachineState | None = None
        self.i = 0
        self.alerts: list[Alert] = []

    def event(self, ts_ms: int, resource: str = KNOWN) -> list[Alert]:
        self.i += 1
        ev = AuditEvent(
            event_id=f"{self.machine_id}-{self.i}",
            ts_us=ts_ms * 1000,
            machine_id=self.machine_id,
            resource=resource,
            operation="SELECT",
            outcome="SUCCESS",
        )
        state = self.state
        if self.serialise and state is not None:
            state = MachineState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
        self.state, alerts = self.core.process(ev, state)
        self.alerts.extend(alerts)
        return alerts

    def warm_up(self, start_ms: int = T0) -> int:
        """Ten events on one resource over 90 s; returns the time just after them."""
        for k in range(10):
            assert self.event(start_ms + k * 10 * S) == []
        return start_ms + 100 * S


@pytest.fixture
def machine() -> Machine:
    return Machine(DetectionCore(CONFIG))


@pytest.mark.parametrize(
    ("events", "spacing_s"),
    [(20, 1), (4, 100)],  # enough events but too little time; enough time but too few events
    ids=["too-short", "too-few"],
)
def test_no_alert_during_warmup(machine: Machine, events: int, spacing_s: int) -> None:
    for k in range(events):
        assert machine.event(T0 + k * spacing_s * S, f"s3://bucket-{k}/x") == []


def test_warmup_is_per_machine() -> None:
    core = DetectionCore(CONFIG)
    old, new = Machine(core, "old-1"), Machine(core, "new-1")
    t = old.warm_up()
    assert old.event(t, "s3://fresh/x") != []
    assert new.event(t, "s3://fresh/x") == []


def test_new_resource_after_warmup_opens_medium_alert(machine: Machine) -> None:
    t = machine.warm_up()
    alerts = machine.event(t, "s3://payroll/2026/01/run-1234.csv")
    assert len(alerts) == 1
    a = alerts[0]
    assert (a.status, a.detector, a.severity) == ("opened", "new_resource", "medium")
    assert a.is_page
    assert a.machine_id == machine.machine_id
    assert a.group == "orders-api"
    assert a.observed["resource"] == "s3://payroll/{n}/{n}"
    assert a.expected["known_resources"] == 1
    assert a.event_ids == [f"{machine.machine_id}-11"]
    assert a.event_time == format_rfc3339_ms(t)
    assert a.config_version == CONFIG.version()
    assert a.hint
    assert "s3://payroll/{n}/{n}" in a.summary


def test_score_before_learn_second_occurrence_is_known(machine: Machine) -> None:
    t = machine.warm_up()
    assert [a.status for a in machine.event(t, "s3://payroll/2026/01/a.csv")] == ["opened"]
    assert machine.event(t + S, "s3://payroll/2026/01/a.csv") == []
    # A different object that normalises to the same resource is not new either.
    assert machine.event(t + 2 * S, "s3://payroll/2025/12/b.csv") == []


def test_fanout_escalates(machine: Machine) -> None:
    t = machine.warm_up()
    alerts = [a for k in range(6) for a in machine.event(t + k * 10 * S, f"s3://bucket-{k}/x")]
    assert alerts[0].status == "opened"
    assert [a.status for a in alerts].count("opened") == 1
    assert len({a.alert_id for a in alerts}) == 1
    last = alerts[-1]
    assert last.status == "escalated"
    assert last.severity in ("high", "critical")
    assert last.observed["new_resources_in_window"] == 6
    assert last.repeat_count == 6


def test_episode_keeps_at_most_ten_sample_event_ids(machine: Machine) -> None:
    t = machine.warm_up()
    for k in range(25):
        machine.event(t + k * 20 * S, f"s3://bucket-{k}/x")
    assert machine.state is not None
    episode = machine.state.episodes["new_resource"]
    assert episode.count == 25
    assert episode.event_ids == [f"{machine.machine_id}-{11 + k}" for k in range(10)]
    assert all(len(a.event_ids) <= 10 for a in machine.alerts)


def test_new_resources_spread_beyond_the_window_do_not_escalate(machine: Machine) -> None:
    t = machine.warm_up()
    alerts = [a for k in range(6) for a in machine.event(t + k * 301 * S, f"s3://bucket-{k}/x")]
    assert [a.status for a in alerts] == ["opened"] + ["updated"] * 5
    assert {a.severity for a in alerts} == {"medium"}
    assert len({a.alert_id for a in alerts}) == 1


def test_repeats_inside_cooldown_do_not_open_a_second_alert(machine: Machine) -> None:
    t = machine.warm_up()
    first = machine.event(t, "s3://new-0/x")
    later = [a for k in range(1, 20) for a in machine.event(t + k * 25 * S, f"s3://new-{k}/x")]
    assert [a.status for a in first] == ["opened"]
    assert later  # updates and escalations of the same episode
    assert "opened" not in {a.status for a in later}
    assert {a.alert_id for a in later} == {first[0].alert_id}


def test_updates_are_rate_limited(machine: Machine) -> None:
    t = machine.warm_up()
    machine.event(t, "s3://new-0/x")
    # k=2 in the window keeps severity medium: no new state within update_every_s.
    assert machine.event(t + 30 * S, "s3://new-1/x") == []
    # Past the fan-out window: one new resource again, an update is due.
    assert [a.status for a in machine.event(t + 400 * S, "s3://new-2/x")] == ["updated"]
    # And the next update is due update_every_s after that one, not after the opening.
    assert machine.event(t + 430 * S, "s3://new-3/x") == []
    assert [a.status for a in machine.event(t + 461 * S, "s3://new-4/x")] == ["escalated"]


def test_quiet_after_cooldown_resolves_then_opens_a_new_alert(machine: Machine) -> None:
    t = machine.warm_up()
    [opened] = machine.event(t, "s3://new-0/x")
    assert machine.event(t + CONFIG.cooldown_s * S) == []  # exactly the cooldown: still open
    [resolved] = machine.event(t + CONFIG.cooldown_s * S + 1)
    assert resolved.status == "resolved"
    assert resolved.alert_id == opened.alert_id
    assert resolved.event_time == format_rfc3339_ms(t + CONFIG.cooldown_s * S)
    assert not resolved.is_page
    assert machine.event(t + CONFIG.cooldown_s * S + 2) == []  # resolved once only
    [reopened] = machine.event(t + CONFIG.cooldown_s * S + 10 * S, "s3://new-1/x")
    assert reopened.status == "opened"
    assert reopened.alert_id != opened.alert_id


def test_resolve_and_open_in_one_event(machine: Machine) -> None:
    t = machine.warm_up()
    machine.event(t, "s3://new-0/x")
    alerts = machine.event(t + CONFIG.cooldown_s * S + 1, "s3://new-1/x")
    assert [a.status for a in alerts] == ["resolved", "opened"]
    assert alerts[0].alert_id != alerts[1].alert_id


def scenario(m: Machine) -> list[Alert]:
    """Warm-up, a fan-out, a quiet period, a new finding; returns every alert state."""
    t = m.warm_up()
    for k in range(8):
        m.event(t + k * 10 * S, f"s3://bucket-{k}/x")
    t += 2000 * S
    m.event(t)
    m.event(t + 5 * S, "kafka://cluster/payments")
    for k in range(3):
        m.event(t + (10 + 301 * k) * S, f"vault://kv/secret-{k}")
    return m.alerts


def test_alert_ids_are_deterministic() -> None:
    a = scenario(Machine(DetectionCore(CONFIG)))
    b = scenario(Machine(DetectionCore(CONFIG)))
    assert [x.to_json() for x in a] == [x.to_json() for x in b]
    assert len({x.alert_id for x in a}) == 2


def test_alert_ids_change_with_config() -> None:
    changed = DetectorConfig(
        rate=NO_RATE,
        warmup_s=60,
        warmup_events=5,
        mature_after_s=0,
        fanout_window_s=300,
        cooldown_s=601,
        update_every_s=60,
    )
    assert changed.version() != CONFIG.version()
    a = scenario(Machine(DetectionCore(CONFIG)))
    b = scenario(Machine(DetectionCore(changed)))
    assert {x.config_version for x in b} == {changed.version()}
    assert not {x.alert_id for x in a} & {x.alert_id for x in b}


def test_config_version_is_stable() -> None:
    assert (
        CONFIG.version()
        == DetectorConfig(
            rate=RateParams(min_count=10**9),
            warmup_s=60,
            warmup_events=5,
            mature_after_s=0,
            fanout_window_s=300,
            cooldown_s=600,
            update_every_s=60,
        ).version()
    )
    assert DetectorConfig().version() != DetectorConfig(rate=RateParams(z=5.0)).version()


# A deployment seeded with history (`mature_after_s=0`): this quiet machine's burst is the
# rate detector's to judge, not one a young deployment records as still learning.
RATE_CONFIG = DetectorConfig(
    rate=RateParams(interval_s=10, warmup_intervals=10, min_count=5),
    warmup_s=60,
    warmup_events=5,
    cooldown_s=600,
    mature_after_s=0,
)


def rate_scenario(m: Machine) -> list[Alert]:
    """Steady traffic, a burst (access_rate), new resources, then a quiet stretch."""
    for k in range(30):
        m.event(T0 + k * 10 * S)
    for k in range(30):
        m.event(T0 + 300 * S + k * 100)
    for k in range(7):
        m.event(T0 + 320 * S + k * 65 * S, f"s3://bucket-{k}/x")
    m.event(T0 + 3000 * S)
    return m.alerts


def test_access_rate_burst_alerts() -> None:
    alerts = rate_scenario(Machine(DetectionCore(RATE_CONFIG)))
    rate = [a for a in alerts if a.detector == "access_rate"]
    assert rate[0].status == "opened"
    assert rate[0].severity in ("medium", "high", "critical")
    assert rate[0].observed["events_in_interval"] >= 5
    assert rate[-1].status == "resolved"


@pytest.mark.parametrize("make", [scenario, rate_scenario], ids=["new_resource", "rate"])
def test_machine_state_round_trip_gives_identical_behaviour(make: Any) -> None:
    config = CONFIG if make is scenario else RATE_CONFIG
    in_memory = make(Machine(DetectionCore(config)))
    m = Machine(DetectionCore(config), serialise=True)
    serialised = make(m)
    assert [a.to_json() for a in serialised] == [a.to_json() for a in in_memory]
    assert m.state is not None
    d = m.state.to_dict()
    assert MachineState.from_dict(orjson.loads(orjson.dumps(d))).to_dict() == d


def test_resources_per_machine_are_bounded() -> None:
    config = DetectorConfig(rate=NO_RATE, warmup_s=60, warmup_events=5, max_resources=10)
    m = Machine(DetectionCore(config))
    t = m.warm_up()
    for k in range(100):
        m.event(t + k * S, "kafka://cluster/hot")  # used all the time: never forgotten
        m.event(t + k * S + 1, f"s3://bucket-{k}/x")
        assert m.state is not None
        assert len(m.state.resources) <= 10
    assert m.state is not None
    assert "kafka://cluster/hot" in m.state.resources
    assert "s3://bucket-99/x" in m.state.resources
    assert "s3://bucket-0/x" not in m.state.resources


def test_resources_outside_the_horizon_are_forgotten_first() -> None:
    config = DetectorConfig(
        rate=NO_RATE, warmup_s=60, warmup_events=5, max_resources=3, resource_horizon_s=3600
    )
    m = Machine(DetectionCore(config))
    t = m.warm_up()
    m.event(t, "s3://old/x")
    later = t + 7200 * S
    for k in range(3):
        m.event(later + k * S, f"s3://new-{k}/x")
    assert m.state is not None
    assert set(m.state.resources) == {"s3://new-0/x", "s3://new-1/x", "s3://new-2/x"}


def test_late_event_does_not_make_a_resource_look_older() -> None:
    config = DetectorConfig(rate=NO_RATE, warmup_s=60, warmup_events=5, max_resources=2)
    m = Machine(DetectionCore(config))
    t = m.warm_up(T0)  # learns KNOWN, last seen at T0 + 90 s
    m.event(t, "s3://a/x")
    m.event(t + 10 * S, "s3://b/x")
    m.event(t - 50 * S, "s3://b/x")  # late copy of an older access
    assert m.state is not None
    assert m.state.resources["s3://b/x"] == t + 10 * S


# --- the alert contract -----------------------------------------------------------------


@pytest.fixture(scope="module")
def alert_schema() -> Any:
    return fastavro.parse_schema(schema_json("alert"))


def all_alerts() -> Iterator[Alert]:
    yield from scenario(Machine(DetectionCore(CONFIG)))
    yield from rate_scenario(Machine(DetectionCore(RATE_CONFIG)))
    spread = Machine(DetectionCore(CONFIG))
    t = spread.warm_up()
    for k in range(3):
        spread.event(t + k * 301 * S, f"s3://bucket-{k}/x")
    yield from spread.alerts


def test_scenarios_cover_every_status() -> None:
    assert {a.status for a in all_alerts()} == {"opened", "updated", "escalated", "resolved"}
    assert {a.detector for a in all_alerts()} == {"new_resource", "access_rate"}


def test_every_alert_validates_against_alert_avsc(alert_schema: Any) -> None:
    alerts = list(all_alerts())
    assert alerts
    for a in alerts:
        assert validate(a.to_json(), alert_schema, raise_errors=True)
