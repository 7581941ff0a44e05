"""Detection core beyond new resources: failure ratio, operations, peer groups, new identities,
group rules, suppressions and per-group overrides. In-process, no Kafka."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import orjson
import pytest

from detectors.config import DetectorConfig, Override, Suppression
from detectors.core import DetectionCore, MachineState
from detectors.identity import default_group
from detectors.operations import is_destructive, is_write
from detectors.rate import RateParams
from schemas.alert import SEVERITY_RANK, Alert
from schemas.event import AuditEvent
from streams.processor import MemoryStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1000  # one second in ms
MIN = 60 * S
KNOWN = "postgres://orders-db/public.orders"
NO_RATE = RateParams(min_count=10**9)  # keep access_rate out of these scenarios


class Client:
    """One machine's events through a core (and a shared store for peer groups), its state
    serialised between events as the processor does. Collects every alert state."""

    def __init__(self, core: DetectionCore, machine_id: str, kv: MemoryStore | None = None) -> None:
        self.core = core
        self.machine_id = machine_id
        self.kv = kv
        self.state: MachineState | None = None
        self.i = 0
        self.alerts: list[Alert] = []

    def send(
        self,
        ts_ms: int,
        resource: str = KNOWN,
        operation: str = "SELECT",
        outcome: str = "SUCCESS",
        attributes: dict[str, str] | None = None,
    ) -> list[Alert]:
        self.i += 1
        ev = AuditEvent(
            event_id=f"{self.machine_id}-{self.i}",
            ts_us=ts_ms * 1000,
            machine_id=self.machine_id,
            resource=resource,
            operation=operation,
            outcome=outcome,
            attributes=attributes or {},
        )
        state = self.state
        if state is not None:
            state = MachineState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
        self.state, alerts = self.core.process(ev, state, self.kv)
        self.alerts.extend(alerts)
        return alerts

    def of(self, detector: str) -> list[Alert]:
        return [a for a in self.alerts if a.detector == detector]


def pages(alerts: Iterable[Alert]) -> list[Alert]:
    return [a for a in alerts if a.is_page]


def event(machine_id: str, attributes: dict[str, str] | None = None) -> AuditEvent:
    return AuditEvent(
        "e-1", T0 * 1000, machine_id, KNOWN, "SELECT", "SUCCESS", None, None, None, attributes or {}
    )


# --- failure ratio ----------------------------------------------------------------------

FAIL_CONFIG = DetectorConfig(rate=NO_RATE, warmup_s=600, warmup_events=50, cooldown_s=600)


def minute(
    c: Client, i: int, accesses: int, failures: int, outcome: str = "FAILURE"
) -> list[Alert]:
    """Minute `i` after T0: `accesses` events, `failures` of them failing, spread evenly."""
    step = MIN // accesses
    out: list[Alert] = []
    for j in range(accesses):
        failed = (j + 1) * failures // accesses > j * failures // accesses
        out += c.send(T0 + i * MIN + j * step, outcome=outcome if failed else "SUCCESS")
    return out


def background(c: Client, minutes: range, accesses: int = 100, failures: int = 1) -> list[Alert]:
    return [a for i in minutes for a in minute(c, i, accesses, failures)]


def learned_ratio(c: Client) -> float:
    assert c.state is not None
    return float(c.state.fail[3])


@pytest.fixture
def warm_client() -> Client:
    """A machine with 15 minutes of ~1% failures behind it (past its 10-minute warm-up)."""
    c = Client(DetectionCore(FAIL_CONFIG), "orders-api-01")
    assert background(c, range(15)) == []
    return c


@pytest.mark.parametrize("outcome", ["FAILURE", "DENIED"])
def test_failure_storm_after_warmup_pages(warm_client: Client, outcome: str) -> None:
    alerts = minute(warm_client, 15, 100, 40, outcome)
    assert alerts
    first = alerts[0]
    assert (first.detector, first.status) == ("failure_ratio", "opened")
    assert first.is_page
    assert first.observed["failures"] == FAIL_CONFIG.failure_min_count
    assert first.observed["latest_outcome"] == outcome
    assert first.expected["ratio"] == pytest.approx(0.01, abs=0.005)
    assert first.hint
    assert {a.detector for a in alerts} == {"failure_ratio"}


@pytest.mark.parametrize(
    ("accesses", "failures"),
    [(10, 1), (3, 1), (5, 4), (100, 10)],
    ids=["one-failure", "one-of-three", "below-min-count", "below-min-ratio"],
)
def test_small_or_diluted_failures_do_not_alert(
    warm_client: Client, accesses: int, failures: int
) -> None:
    assert minute(warm_client, 15, accesses, failures) == []


def test_no_failure_alert_during_warmup() -> None:
    c = Client(DetectionCore(FAIL_CONFIG), "orders-api-01")
    assert background(c, range(5)) == []
    assert minute(c, 5, 100, 100) == []  # five learned intervals, but only six minutes old


def test_usually_failing_machine_does_not_page_at_a_little_more() -> None:
    c = Client(DetectionCore(FAIL_CONFIG), "flaky-prober-01")
    assert background(c, range(30), failures=40) == []
    assert learned_ratio(c) == pytest.approx(0.4, abs=0.03)
    assert minute(c, 30, 100, 45) == []


def test_usually_failing_machine_pages_when_everything_fails() -> None:
    c = Client(DetectionCore(FAIL_CONFIG), "flaky-prober-01")
    background(c, range(30), failures=40)
    assert pages(minute(c, 30, 100, 100))


def storm_peak(failures: int, accesses: int) -> tuple[float, str]:
    """Highest score and severity a storm reaches, as published."""
    c = Client(DetectionCore(FAIL_CONFIG), "orders-api-01")
    background(c, range(15))
    alerts = minute(c, 15, accesses, failures)
    assert alerts
    top = max(alerts, key=lambda a: a.score)
    return top.score, top.severity


def test_failure_score_grows_with_the_excess() -> None:
    small, medium, large = storm_peak(5, 10), storm_peak(20, 40), storm_peak(60, 100)
    assert small[0] < medium[0] < large[0]
    assert SEVERITY_RANK[small[1]] < SEVERITY_RANK[medium[1]] < SEVERITY_RANK[large[1]]
    assert small[1] == "medium"
    assert large[1] == "critical"


def test_one_storm_does_not_become_the_new_normal(warm_client: Client) -> None:
    [first, *_] = minute(warm_client, 15, 100, 50)
    assert first.is_page
    background(warm_client, range(16, 17))
    assert learned_ratio(warm_client) < 0.05  # the storm was clipped when learned
    quiet = background(warm_client, range(17, 36))
    assert [a.status for a in quiet] == ["resolved"]
    assert learned_ratio(warm_client) < 0.02
    second = minute(warm_client, 36, 100, 50)
    assert second[0].status == "opened"
    assert second[0].is_page
    assert second[0].alert_id != first.alert_id


# --- operations -------------------------------------------------------------------------

# Judged as a deployment with history behind it would be: maturity is test_maturity's.
OP_CONFIG = DetectorConfig(rate=NO_RATE, warmup_s=60, warmup_events=5, mature_after_s=0)


def with_history(
    ops: list[str],
    kv: MemoryStore | None = None,
    machine: str = "reports-01",
    core: DetectionCore | None = None,
) -> tuple[Client, int]:
    """A machine warmed up over 100 s using only `ops`; returns it and the time after."""
    c = Client(core or DetectionCore(OP_CONFIG), machine, kv)
    for k in range(10):
        assert c.send(T0 + k * 10 * S, operation=ops[k % len(ops)]) == []
    return c, T0 + 100 * S


@pytest.mark.parametrize(
    ("history", "new_op", "score", "severity"),
    [
        (["SELECT", "GET"], "DELETE", 80.0, "high"),
        (["SELECT"], "DROP", 80.0, "high"),
        (["SELECT"], "truncate", 80.0, "high"),
        (["s3.amazonaws.com:GetObject"], "s3.amazonaws.com:DeleteObject", 80.0, "high"),
        (["SELECT", "INSERT"], "DELETE", 55.0, "medium"),
        (["GET", "PUT"], "DELETE", 55.0, "medium"),
        (["SELECT"], "INSERT", 50.0, "medium"),
        (["SELECT"], "DESCRIBE", 35.0, "low"),
    ],
    ids=[
        "ro-delete",
        "ro-drop",
        "ro-truncate",
        "ro-s3-delete",
        "writer-delete",
        "writer-http-delete",
        "ro-insert",
        "ro-describe",
    ],
)
def test_new_operation_scores(history: list[str], new_op: str, score: float, severity: str) -> None:
    c, t = with_history(history)
    [alert] = c.send(t, operation=new_op)
    assert (alert.detector, alert.status) == ("operation", "opened")
    assert (alert.score, alert.severity) == (score, severity)
    assert alert.observed["operation"] == new_op.upper()
    assert alert.is_page == (score >= 50)
    assert ("read-only" in alert.summary) == (score in (80.0, 50.0, 35.0))


def test_read_only_client_deleting_is_at_least_high() -> None:
    c, t = with_history(["SELECT", "GET"])
    [alert] = c.send(t, operation="DELETE")
    assert alert.score >= 75
    assert SEVERITY_RANK[alert.severity] >= SEVERITY_RANK["high"]


def test_known_operation_any_case_is_not_news() -> None:
    c, t = with_history(["SELECT", "DELETE"])
    assert c.send(t, operation="delete") == []
    assert c.send(t + S, operation="select") == []


def test_destructive_operation_during_warmup_does_not_alert() -> None:
    c = Client(DetectionCore(OP_CONFIG), "reports-01")
    assert c.send(T0) == []
    assert c.send(T0 + 10 * S, operation="DROP") == []


def test_operation_the_peer_group_uses_is_not_a_finding() -> None:
    kv, core = MemoryStore(), DetectionCore(OP_CONFIG)
    with_history(["SELECT", "DELETE"], kv, "cleanup-01", core)
    reader, t = with_history(["SELECT"], kv, "cleanup-02", core)
    assert reader.send(t, operation="DELETE") == []
    # The control: an operation no peer uses is still judged.
    [alert] = reader.send(t + S, operation="TRUNCATE")
    assert (alert.detector, alert.score) == ("operation", 55.0)  # it now writes (DELETE)


@pytest.mark.parametrize(
    ("operation", "destructive", "write"),
    [
        ("SELECT", False, False),
        ("GET", False, False),
        ("DESCRIBE", False, False),
        ("INSERT", False, True),
        ("UPDATE", False, True),
        ("s3:PutObject", False, True),
        ("DELETE", True, True),
        ("drop", True, True),
        ("TRUNCATE", True, True),
        ("FLUSHALL", True, True),
        ("s3.amazonaws.com:DeleteObject", True, True),
        ("s3.amazonaws.com:GetObject", False, False),
        ("s3.amazonaws.com:ListBuckets", False, False),
        ("s3.amazonaws.com:PutBucketPolicy", True, True),
        ("iam.amazonaws.com:AttachRolePolicy", True, True),
        ("iam.amazonaws.com:DetachRolePolicy", True, True),
        ("secretsmanager.amazonaws.com:GetSecretValue", False, False),
        ("cloudtrail.amazonaws.com:StopLogging", True, True),
        ("ec2.amazonaws.com:TerminateInstances", True, True),
        ("ec2.amazonaws.com:DescribeInstances", False, False),
        ("delete", True, True),  # Kubernetes verbs
        ("deletecollection", True, True),
        ("watch", False, False),
        ("patch", False, True),
    ],
)
def test_operation_classes(operation: str, destructive: bool, write: bool) -> None:
    assert is_destructive(operation) is destructive
    assert is_write(operation) is write


# --- peer groups ------------------------------------------------------------------------

# Judged as a deployment with history behind it would be: maturity is test_maturity's.
PEER_CONFIG = DetectorConfig(rate=NO_RATE, warmup_s=3600, warmup_events=50, mature_after_s=0)
# What every payments-api replica does each minute.
TRAFFIC = (
    ("postgres://payments-db/public.payments", "SELECT"),
    ("postgres://payments-db/public.payments", "INSERT"),
    ("kafka://cluster/payments-events", "PRODUCE"),
    ("secrets://prod/payments-api", "secretsmanager.amazonaws.com:GetSecretValue"),
)
SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the ReplicaSet/pod name alphabet


def pod(k: int, rollout: int = 0) -> str:
    """Replica `k` of ReplicaSet `rollout`: payments-api-<9-char hash>-<5-char suffix>."""

    def word(n: int, length: int) -> str:
        return "".join(SAFE[(n // len(SAFE) ** i) % len(SAFE)] for i in range(length))

    return f"payments-api-{word(rollout + 1000, 9)}-{word(k + 7, 5)}"


class Fleet:
    """Machines sharing one core and one store (a partition, or a replay)."""

    def __init__(self, config: DetectorConfig = PEER_CONFIG, peers: bool = True) -> None:
        self.core = DetectionCore(config)
        self.kv: MemoryStore | None = MemoryStore() if peers else None
        self.machines: dict[str, Client] = {}

    def __getitem__(self, machine_id: str) -> Client:
        if machine_id not in self.machines:
            self.machines[machine_id] = Client(self.core, machine_id, self.kv)
        return self.machines[machine_id]

    def traffic(self, machine_ids: Iterable[str], minutes: range) -> list[Alert]:
        """The usual traffic of each machine, every minute of `minutes` (after T0)."""
        ids = list(machine_ids)
        out: list[Alert] = []
        for i in minutes:
            for m, machine_id in enumerate(ids):
                for k, (resource, op) in enumerate(TRAFFIC):
                    ts = T0 + i * MIN + (m * len(TRAFFIC) + k) * S
                    out += self[machine_id].send(ts, resource, op)
        return out

    @property
    def alerts(self) -> list[Alert]:
        return [a for c in self.machines.values() for a in c.alerts]


def test_pod_names_share_a_group() -> None:
    assert {default_group(pod(k, r)) for k in range(8) for r in range(4)} == {"payments-api"}


@pytest.fixture
def warm_fleet() -> Fleet:
    """Two payments-api replicas, watched for two hours."""
    fleet = Fleet()
    assert fleet.traffic([pod(0), pod(1)], range(120)) == []
    return fleet


def test_new_pod_of_warm_group_is_judged_at_once(warm_fleet: Fleet) -> None:
    new = warm_fleet[pod(2, rollout=1)]
    t = T0 + 120 * MIN
    assert warm_fleet.traffic([new.machine_id], range(120, 122)) == []
    [alert] = new.send(t + 2 * MIN, "vault://kv/root-token")
    assert (alert.detector, alert.status) == ("new_resource", "opened")
    assert alert.group == "payments-api"
    assert alert.observed["resource"] == "vault://kv/root-token"
    assert new.state is not None and new.state.n < PEER_CONFIG.warmup_events


def test_without_peer_groups_a_new_pod_waits_for_its_own_warmup() -> None:
    fleet = Fleet(peers=False)
    fleet.traffic([pod(0), pod(1)], range(120))
    assert fleet[pod(2, rollout=1)].send(T0 + 120 * MIN, "vault://kv/root-token") == []


def test_resource_the_peers_use_is_not_news_to_a_new_pod(warm_fleet: Fleet) -> None:
    new = warm_fleet[pod(3, rollout=1)]
    for k, (resource, op) in enumerate(TRAFFIC):
        assert new.send(T0 + 120 * MIN + k * S, resource, op) == []


def test_pod_rotation_raises_nothing(warm_fleet: Fleet) -> None:
    # Every 30 minutes for four hours, a rollout replaces both replicas with new pods.
    for r in range(1, 9):
        pods = [pod(2 * r, rollout=r), pod(2 * r + 1, rollout=r)]
        start = 120 + (r - 1) * 30
        assert warm_fleet.traffic(pods, range(start, start + 30)) == []
    assert len(warm_fleet.machines) == 18
    assert warm_fleet.alerts == []


def test_new_identity_opens_once(warm_fleet: Fleet) -> None:
    stranger = warm_fleet["reporting-cron"]
    t = T0 + 120 * MIN
    [alert] = stranger.send(t, "postgres://payments-db/public.payments")
    assert (alert.detector, alert.status, alert.severity) == ("new_identity", "opened", "medium")
    assert alert.is_page
    assert alert.observed["group"] == "reporting-cron"
    assert alert.hint
    for k in range(1, 180):  # three hours of its usual traffic
        stranger.send(t + k * MIN, "postgres://payments-db/public.payments")
    assert [a.status for a in stranger.of("new_identity")] == ["opened", "resolved"]
    assert [a.detector for a in stranger.alerts] == ["new_identity", "new_identity"]
    # Its group is known now: another instance of it is not a stranger; nor is a new pod.
    usual = "postgres://payments-db/public.payments"
    assert warm_fleet["reporting-cron-2"].send(t + 200 * MIN, usual) == []
    assert warm_fleet[pod(5, rollout=2)].send(t + 200 * MIN, TRAFFIC[0][0]) == []


def test_first_machines_of_a_fresh_store_are_not_new_identities() -> None:
    fleet = Fleet()
    warmup = PEER_CONFIG.warmup_s * S
    for k, offset in enumerate((0, 30 * MIN, warmup)):  # until the store has watched warmup_s
        assert fleet[f"service-{chr(ord('a') + k)}"].send(T0 + offset) == []
    [alert] = fleet["service-late"].send(T0 + warmup + 1)
    assert alert.detector == "new_identity"


def test_single_new_resource_in_a_group_is_below_a_page(warm_fleet: Fleet) -> None:
    c = warm_fleet[pod(0)]
    t = T0 + 120 * MIN
    [alert] = c.send(t, "s3://exports-a/data")
    assert (alert.detector, alert.status) == ("new_resource", "opened")
    assert (alert.score, alert.severity) == (45.0, "low")
    assert not alert.is_page
    for k, bucket in enumerate(("b", "c"), start=1):
        c.send(t + k * MIN, f"s3://exports-{bucket}/data")
    assert pages(c.alerts)
    assert c.state is not None
    episode = c.state.episodes["new_resource"]
    assert episode.count == 3
    assert episode.score >= 50


def test_single_new_resource_of_a_lone_machine_pages() -> None:
    fleet = Fleet()
    c = fleet["ledger"]
    for k in range(60):
        c.send(T0 + k * MIN)
    [alert] = c.send(T0 + 60 * MIN, "s3://exports-a/data")
    assert (alert.score, alert.severity) == (55.0, "medium")


# --- group rules ------------------------------------------------------------------------


def grouping(*patterns: str, attribute: str | None = None) -> DetectionCore:
    return DetectionCore(DetectorConfig(group_attribute=attribute, group_patterns=patterns))


def test_group_attribute_wins_over_patterns() -> None:
    core = grouping(r"^ci-runner", attribute="k8s.deployment")
    assert core.group_of(event("ci-runner-12", {"k8s.deployment": "builder"})) == "builder"
    assert core.group_of(event("ci-runner-12", {"k8s.deployment": ""})) == "ci-runner"
    assert core.group_of(event("ci-runner-12")) == "ci-runner"


@pytest.mark.parametrize(
    ("pattern", "machine_id", "group"),
    [
        (r"^(?P<env>prod|dev)-(?P<group>[a-z]+)-\d+$", "prod-billing-3", "billing"),
        (r"^(batch)-[a-z]+-\d+$", "batch-nightly-17", "batch"),
        (r"^(?:build)-(\w+?)-(\d+)$", "build-linux-42", "linux"),
        (r"^ci-runner", "ci-runner-8f3k2-pool", "ci-runner"),
        (r"etl", "nightly-etl-job", "etl"),  # searched, not anchored
    ],
    ids=["named", "first-unnamed", "first-of-two", "whole-match", "search"],
)
def test_group_patterns(pattern: str, machine_id: str, group: str) -> None:
    assert grouping(pattern).group_of(event(machine_id)) == group


def test_group_patterns_are_tried_in_order_then_default_rules() -> None:
    core = grouping(r"^(ci)-", r"^(ci-runner)-")
    assert core.group_of(event("ci-runner-12")) == "ci"
    assert core.group_of(event("payments-api-7d9f8b6c4-x2k9p")) == "payments-api"
    assert core.group_of(event("ingest-worker-07")) == "ingest-worker"
    assert core.group_of(event("billing")) == "billing"


@pytest.mark.parametrize(
    "pattern",
    [r"^(?:(?P<group>batch)-job|etl)-\d+$", r"^(a)?etl"],
    ids=["named-group-unused", "first-group-unused"],
)
def test_group_pattern_whose_group_did_not_participate(pattern: str) -> None:
    core = grouping(pattern)
    ev = event("etl-3")
    group = core.group_of(ev)
    assert isinstance(group, str) and group
    _, alerts = core.process(ev, None, MemoryStore())
    assert alerts == []


# --- suppressions -----------------------------------------------------------------------

UNTIL = T0 + 3600 * S


def warm_orders(suppressions: tuple[Suppression, ...]) -> tuple[Client, int]:
    core = DetectionCore(
        DetectorConfig(
            rate=NO_RATE,
            warmup_s=60,
            warmup_events=5,
            mature_after_s=0,
            suppressions=suppressions,
        )
    )
    c = Client(core, "orders-api-7d9f8b6c4-x2k9p")
    for k in range(10):
        assert c.send(T0 + k * 10 * S) == []
    return c, T0 + 100 * S


CACHE_RULE = Suppression(
    machine="orders-api-*",
    resource="s3://build-cache/*",
    detector="new_resource",
    until_ms=UNTIL,
    reason="cache migration",
)


def test_suppression_drops_matching_findings_until_it_expires() -> None:
    c, t = warm_orders((CACHE_RULE,))
    assert c.send(t, "s3://build-cache/2026/x.tar") == []
    assert c.send(UNTIL - 1, "s3://build-cache/shards/a") == []
    assert c.core.suppressed_findings == 2
    # From `until` on (event time), the same kind of finding alerts again.
    [alert] = c.send(UNTIL, "s3://build-cache/objects/b")
    assert (alert.detector, alert.status) == ("new_resource", "opened")
    assert c.core.suppressed_findings == 2


def test_suppression_without_expiry_and_other_detectors() -> None:
    rule = Suppression(machine="orders-api-*", detector="operation")
    c, t = warm_orders((rule,))
    assert c.send(t + 365 * 86_400 * S, operation="DROP") == []
    assert c.core.suppressed_findings == 1
    [alert] = c.send(t + 365 * 86_400 * S + S, "s3://payroll/x")  # not an operation finding
    assert alert.detector == "new_resource"


@pytest.mark.parametrize(
    "rule",
    [
        replace(CACHE_RULE, machine="billing-*"),
        replace(CACHE_RULE, resource="s3://other-cache/*"),
        replace(CACHE_RULE, detector="access_rate"),
        replace(CACHE_RULE, until_ms=T0),
    ],
    ids=["machine", "resource", "detector", "expired"],
)
def test_non_matching_suppression_does_not_suppress(rule: Suppression) -> None:
    c, t = warm_orders((rule,))
    [alert] = c.send(t, "s3://build-cache/2026/x.tar")
    assert alert.detector == "new_resource"
    assert c.core.suppressed_findings == 0


# --- overrides --------------------------------------------------------------------------


def test_group_override_applies_to_its_group_only() -> None:
    quiet_batch = Override(group="batch-*", settings=(("failure_min_count", 50),))
    core = DetectionCore(replace(FAIL_CONFIG, overrides=(quiet_batch,)))
    batch, orders = Client(core, "batch-etl-01"), Client(core, "orders-api-01")
    assert core.config_for(batch.machine_id, "batch-etl").failure_min_count == 50
    assert core.config_for(orders.machine_id, "orders-api") is core.config
    for c in (batch, orders):
        assert background(c, range(15)) == []
    assert minute(batch, 15, 100, 40) == []
    assert pages(minute(orders, 15, 100, 40))
    assert {a.config_version for a in orders.alerts} == {core.config.version()}


def test_machine_override_matches_by_machine_glob() -> None:
    core = DetectionCore(
        DetectorConfig(
            overrides=(Override(machine="orders-api-0[12]", settings=(("cooldown_s", 60),)),)
        )
    )
    assert core.config_for("orders-api-01", "orders-api").cooldown_s == 60
    assert core.config_for("orders-api-03", "orders-api").cooldown_s == 900


def test_rate_override_merges_with_base_rate() -> None:
    base = DetectorConfig(rate=RateParams(min_count=7, interval_s=30))
    z9 = Override(group="batch-*", settings=(("rate", (("z", 9.0),)),))
    core = DetectionCore(replace(base, overrides=(z9,)))
    cfg = core.config_for("batch-etl-01", "batch-etl")
    assert cfg.rate == replace(base.rate, z=9.0)
    assert (cfg.rate.min_count, cfg.rate.interval_s) == (7, 30)
    assert replace(cfg, rate=base.rate, overrides=()) == base  # nothing else changed


def test_later_overrides_win_and_merge() -> None:
    overrides = (
        Override(group="batch-*", settings=(("cooldown_s", 100), ("rate", (("z", 8.0),)))),
        Override(
            machine="batch-etl-01", settings=(("cooldown_s", 200), ("rate", (("min_count", 40),)))
        ),
        Override(group="nomatch", settings=(("cooldown_s", 300),)),
    )
    core = DetectionCore(DetectorConfig(overrides=overrides))
    cfg = core.config_for("batch-etl-01", "batch-etl")
    assert cfg.cooldown_s == 200
    assert (cfg.rate.z, cfg.rate.min_count) == (8.0, 40)
    other = core.config_for("batch-etl-02", "batch-etl")
    assert (other.cooldown_s, other.rate.z, other.rate.min_count) == (100, 8.0, 20)


def test_config_version_changes_with_overrides_and_suppressions() -> None:
    base = DetectorConfig()
    variants = [
        base,
        replace(base, overrides=(Override(group="batch-*", settings=(("cooldown_s", 100),)),)),
        replace(base, overrides=(Override(group="batch-*", settings=(("cooldown_s", 101),)),)),
        replace(base, overrides=(Override(group="batch-*", settings=(("rate", (("z", 9.0),)),)),)),
        replace(base, suppressions=(CACHE_RULE,)),
        replace(base, suppressions=(replace(CACHE_RULE, until_ms=UNTIL + 1),)),
        replace(base, group_patterns=(r"^(ci)-",)),
    ]
    versions = [v.version() for v in variants]
    assert len(set(versions)) == len(versions)
    assert DetectionCore(variants[1]).config_version == variants[1].version()


def test_config_for_is_cached_per_machine() -> None:
    core = DetectionCore(
        DetectorConfig(overrides=(Override(group="batch-*", settings=(("cooldown_s", 60),)),))
    )
    first = core.config_for("batch-etl-01", "batch-etl")
    assert core.config_for("batch-etl-01", "batch-etl") is first
    assert core.config_for("orders-api-01", "orders-api") is core.config
    assert core.config_for("orders-api-01", "orders-api") is core.config
    plain = DetectionCore()
    assert plain.config_for("anything", "anything") is plain.config
