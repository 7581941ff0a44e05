"""Maturity before paging (detectors.maturity): what needs history the deployment has not
watched is recorded as info; what a machine's own run shows pages after its warm-up.
In-process, no Kafka."""

from __future__ import annotations

from dataclasses import replace

import orjson

from detectors.base import Finding
from detectors.config import DetectorConfig
from detectors.core import DetectionCore, MachineState
from detectors.maturity import DAILY_CYCLE_MS, FANOUT_PAGES_FROM, QUIET_RATE, learning_until
from detectors.rate import RateParams
from schemas.alert import Alert
from schemas.event import AuditEvent
from streams.processor import MemoryStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
H = 60 * MIN
DAY = DAILY_CYCLE_MS
USUAL = "postgres://orders-db/public.orders"
# access_rate kept out: these scenarios are about what needs history, not about bursts.
CONFIG = DetectorConfig(rate=RateParams(min_count=10**9), warmup_s=3600, warmup_events=50)


class Store:
    """Machines sharing one core and one store, each machine's state serialised between
    events as the processor does."""

    def __init__(self, config: DetectorConfig = CONFIG) -> None:
        self.core = DetectionCore(config)
        self.kv = MemoryStore()
        self.states: dict[str, MachineState | None] = {}
        self.n = 0

    def send(
        self, machine: str, ts: int, resource: str = USUAL, operation: str = "SELECT"
    ) -> list[Alert]:
        self.n += 1
        ev = AuditEvent(f"e-{self.n}", ts * 1000, machine, resource, operation, "SUCCESS")
        state = self.states.get(machine)
        if state is not None:
            state = MachineState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
        self.states[machine], alerts = self.core.process(ev, state, self.kv)
        return alerts

    def usual(self, machine: str, start: int, minutes: int) -> list[Alert]:
        """A read-only client's usual traffic, one SELECT a minute."""
        return [a for i in range(minutes) for a in self.send(machine, start + i * MIN)]


def test_rule_pages_only_what_the_history_behind_it_can_judge() -> None:
    def f(detector: str, **observed: str | int) -> Finding:
        return Finding(detector, 60.0, "", dict(observed), {})

    young, old = T0, T0 - 2 * DAY
    at = T0 + 2 * H
    # A plain new identity needs a daily cycle of the deployment; a hostile one never waits.
    assert learning_until(f("new_identity"), at, young, at, at) == young + DAY
    assert learning_until(f("new_identity"), at, old, at, at) is None
    assert learning_until(f("new_identity", code_points="U+0430"), at, young, at, at) is None
    # Operations and single new resources need a daily cycle of the machine or its group.
    assert learning_until(f("operation"), at, old, young, young) == young + DAY
    assert learning_until(f("operation"), at, old, young, old) is None  # a warm group
    one = f("new_resource", new_resources_in_window=1)
    assert learning_until(one, at, old, young, young) == young + DAY
    # A fan-out is the machine's own run against itself: it pages after the warm-up.
    fan = f("new_resource", new_resources_in_window=FANOUT_PAGES_FROM)
    assert learning_until(fan, at, young, young, young) is None
    for own_run in ("access_rate", "failure_ratio", "off_hours", "silence", "combined"):
        assert learning_until(f(own_run), at, young, young, young) is None

    # A quiet machine's burst needs a daily cycle of the machine or its group; a busy one's
    # is judged against its own run.
    def burst(mean: float) -> Finding:
        return Finding("access_rate", 60.0, "", {}, {"mean": mean})

    assert learning_until(burst(QUIET_RATE / 2), at, old, young, young) == young + DAY
    assert learning_until(burst(QUIET_RATE / 2), at, old, young, old) is None
    assert learning_until(burst(QUIET_RATE), at, young, young, young) is None
    # The bound is the configured one, and 0 pages on everything as before.
    assert learning_until(f("operation"), at, old, young, young, H) is None
    assert learning_until(f("new_identity"), at, young, young, young, 0) is None


def test_new_identity_is_info_until_the_deployment_watched_a_daily_cycle() -> None:
    s = Store()
    s.usual("orders-api", T0, 3 * 60)
    # A nightly job seen for the first time three hours into the deployment's life.
    [info] = s.send("nightly-billing-export", T0 + 3 * H)
    assert (info.detector, info.status, info.severity) == ("new_identity", "opened", "info")
    assert not info.is_page
    assert info.expected["learning_until"] == "2026-01-02T00:00:00.000Z"
    assert info.observed["score_when_mature"] == 60.0
    assert "learning until 2026-01-02 00:00 UTC" in info.summary
    # The same stranger a day later pages, as it did before the rule.
    [page] = s.send("reporting-cron", T0 + DAY + 10 * MIN)
    assert (page.detector, page.severity) == ("new_identity", "medium")
    assert page.is_page


def test_an_imitating_identity_pages_while_the_deployment_is_learning() -> None:
    s = Store()
    s.usual("payments-api", T0, 90)
    alerts = s.send("p\u0430yments-api", T0 + 2 * H)  # a Cyrillic a
    [page] = [a for a in alerts if a.detector == "new_identity"]
    assert page.is_page and page.severity == "high"
    assert page.observed["imitates"] == "payments-api"


def test_operation_of_a_client_seen_for_hours_is_info_then_pages_after_a_day() -> None:
    s = Store()
    assert s.usual("admin-tool", T0, 2 * 60) == []
    [info] = s.send("admin-tool", T0 + 2 * H, USUAL, "DELETE")
    assert (info.detector, info.severity, info.is_page) == ("operation", "info", False)
    assert info.observed["score_when_mature"] == 80.0
    assert info.expected["learning_until"] == "2026-01-02T00:00:00.000Z"
    s.usual("cleanup-tool", T0 + 2 * H, 23 * 60)
    [page] = s.send("cleanup-tool", T0 + 2 * H + DAY, USUAL, "DROP")
    assert (page.detector, page.severity) == ("operation", "high")
    assert page.is_page


def test_a_new_replica_of_a_group_watched_for_a_day_is_judged_by_the_group() -> None:
    s = Store()
    s.usual("orders-worker-01", T0, 25 * 60)
    # A replica that joined minutes ago, of a group watched for 25 hours.
    s.usual("orders-worker-02", T0 + 25 * H, 5)
    alerts = s.send("orders-worker-02", T0 + 25 * H + 6 * MIN, USUAL, "TRUNCATE")
    [page] = [a for a in alerts if a.detector == "operation"]
    assert page.is_page


def test_a_single_new_resource_is_info_while_learning_a_fan_out_pages() -> None:
    s = Store()
    s.usual("etl-node", T0, 2 * 60)
    t = T0 + 2 * H
    [one] = s.send("etl-node", t, "postgres://billing-db/public.invoices")
    assert (one.detector, one.severity) == ("new_resource", "info")
    fan = [
        a
        for k in range(2, 8)
        for a in s.send("etl-node", t + k * 10_000, f"postgres://db-{k}/public.t{k}")
    ]
    paging = [a for a in fan if a.is_page and a.detector == "new_resource"]
    # The info record opened an episode; the fan-out's page is still the first on-call sees.
    assert paging and paging[0].status == "opened"
    paged = [a.observed["new_resources_in_window"] for a in fan if a.is_page]
    assert all(isinstance(k, int) and k >= FANOUT_PAGES_FROM for k in paged)


def test_mature_after_zero_pages_from_the_warm_up_on() -> None:
    s = Store(replace(CONFIG, mature_after_s=0))
    s.usual("admin-tool", T0, 2 * 60)
    [page] = s.send("admin-tool", T0 + 2 * H, USUAL, "DELETE")
    assert (page.detector, page.severity) == ("operation", "high")


def test_a_quiet_machines_first_burst_is_info_until_a_day_a_busy_ones_pages() -> None:
    """Fails before the access-rate rule: the demo's and the README example's CI runner,
    at about one access a minute, paged its first build of the evening as CRITICAL
    access_rate in a deployment three hours old, with no build of its pool watched yet to
    judge it by. A service at several accesses a minute that bursts pages as before, and
    the runner's burst pages once it has been watched for a daily cycle."""
    s = Store(DetectorConfig(warmup_s=3600, warmup_events=50))

    def run(machine: str, start: int, minutes: int, per_minute: int) -> list[Alert]:
        return [
            a
            for i in range(minutes)
            for k in range(per_minute)
            for a in s.send(machine, start + i * MIN + k * (50_000 // per_minute))
        ]

    def rate(alerts: list[Alert]) -> list[Alert]:
        return [a for a in alerts if a.detector == "access_rate"]

    assert not rate(run("ci-runner-1", T0, 3 * 60, 1) + run("api-1", T0, 3 * 60, 6))
    [first] = rate(run("ci-runner-1", T0 + 3 * H, 1, 30))[:1]
    assert first.severity == "info" and not first.is_page
    assert first.expected["learning_until"] == "2026-01-02T00:00:00.000Z"
    assert rate(run("api-1", T0 + 3 * H, 1, 90))[0].is_page
    # A day on, a bigger build than its first is no longer recorded only.
    run("ci-runner-1", T0 + 3 * H + MIN, 22 * 60, 1)
    assert any(a.is_page for a in rate(run("ci-runner-1", T0 + 25 * H + MIN, 1, 60)))
