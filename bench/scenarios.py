"""A second labelled scenario generator, written apart from `streams.tools.synthetic`.

The first generator's suite is what the detectors were developed against; a second one, with
other machine families and other anomaly implementations, tells whether they work on traffic
they were not shaped by. Only the output formats are shared: events are the audit event dicts
`auditwatch replay` reads, and labels are `streams.tools.synthetic.Episode`, so
`bench.evaluate.score` scores both suites by the same definitions.

One scenario per seed: `days` of traffic from a Monday 00:00 UTC, the first `history_days`
history (warm-up, not scored), the rest scored. 16 days with 14 of history by default: a
weekly batch has run twice before the scored days, on the same weekday and hour.

Machine families (each machine's activity is an expected events-per-minute array over the
whole scenario; events are Poisson draws from it, spread uniformly inside each minute):

- `api`: Kubernetes deployments of three pods, always active, busier in the day; rolled out
  (new pods, old pods gone) every few days;
- `consumer`: numbered queue consumers at a flat rate, day and night;
- `backoffice`: an office-hours application, weekdays 08-18 only, never at night;
- `reader`: numbered read-only clients (SELECT, GET and nothing else);
- `render-worker`: an autoscaling group, three instances always, more from late morning to
  late afternoon on weekdays, each scale-out under new instance numbers;
- `cron-*`: jobs every 5 and 15 minutes, hourly at a fixed minute, and every 6 hours;
- `ci-runner`: busy in jobs during working hours on weekdays, now and then a run at night;
- `nightly-*`: one run a night at a fixed time; `weekly-*`: one run a week;
- `admintool-*`: a human's command-line tool, a few short sessions a week.

Labelled kinds. Malicious (each injected `per_kind` times per seed, in the scored days):
rate_burst, fan_out, failure_spike, new_identity, off_hours, operation_shift, silence (the
names of `streams.tools.synthetic`, so per-kind rows and the silence target line up).
Benign (must not page; each labelled at least `per_kind` times per seed in the scored days):
cron_job (a cron machine's scored day), ci_workday (a runner's working day), ci_night_run,
nightly_batch, weekly_batch, admin_tool (a session), autoscale (a scaled-out instance's life),
pod_churn (a rollout's new and old pods), new_replica (a pod or instance added to a known
group). A scheduled run or a machine
that stops is labelled until `_SETTLE_MS` after its last event, so the quiet after it counts
as the benign change it is.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.tools.synthetic import ANOMALY_KINDS, DEFAULT_START_MS, Episode

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
DAY_MIN = 1440

# The label names of the first suite, so per-kind rows and the silence target line up.
MALICIOUS_KINDS = ANOMALY_KINDS
BENIGN_KINDS = (
    "cron_job",
    "ci_workday",
    "ci_night_run",
    "nightly_batch",
    "weekly_batch",
    "admin_tool",
    "autoscale",
    "pod_churn",
    "new_replica",
)

_SETTLE_MS = 2 * HOUR_MS
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes draws name suffixes from
_MAL_GAP_MS = 3 * HOUR_MS
_WEEKLY = ("invoice-archive", "index-compact", "cost-report", "backup-verify", "license-scan")
_FAN_OUT_DBS = (
    "hr",
    "payroll",
    "secrets",
    "legal",
    "audit",
)  # two injections on one machine are at least this far apart


@dataclass(frozen=True)
class ScenarioConfig:
    """One scenario. `rate_scale` multiplies every rate (1.0: about 30,000 events a day);
    `per_kind` is the number of episodes of each kind in the scored days."""

    seed: int
    days: float = 16.0
    history_days: float = 14.0
    rate_scale: float = 1.0
    per_kind: int = 5
    start_ms: int = DEFAULT_START_MS

    def __post_init__(self) -> None:
        if self.history_days < 14:
            raise ValueError("history_days must be >= 14: weekly jobs need two weeks")
        if self.days - self.history_days < 1:
            raise ValueError("days must leave at least one scored day after the history")
        if self.per_kind < 1 or self.rate_scale <= 0:
            raise ValueError("per_kind must be >= 1 and rate_scale > 0")

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.days * DAY_MS)

    @property
    def history_end_ms(self) -> int:
        return self.start_ms + int(self.history_days * DAY_MS)


@dataclass
class _Machine:
    name: str
    family: str
    rate: npt.NDArray[np.float64]  # expected events per minute, one slot per minute
    resources: list[str]
    operations: list[str]
    fail_p: float
    identity_type: str
    source_ip: str
    attributes: dict[str, str]
    # (start_ms, end_ms, kind) windows where event content is altered
    alter: list[tuple[int, int, str]] = field(default_factory=list)


class Scenario:
    """The machines, labels and events of one `ScenarioConfig`; the same config gives the
    same events and labels."""

    def __init__(self, cfg: ScenarioConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"scenarios:{cfg.seed}")
        self.minutes = int(cfg.days * DAY_MIN)
        self.machines: list[_Machine] = []
        self.episodes: list[Episode] = []
        self._busy: dict[str, list[tuple[int, int]]] = {}
        self._ip = 0
        self._build()
        self.episodes.sort(key=lambda e: (e.start_ms, e.machine_id, e.kind))

    # -- helpers ---------------------------------------------------------------------------

    def _zeros(self) -> npt.NDArray[np.float64]:
        return np.zeros(self.minutes, dtype=np.float64)

    def _minute(self, t_ms: int) -> int:
        return max(0, min(self.minutes, (t_ms - self.cfg.start_ms) // MINUTE_MS))

    def _day_start(self, day: int) -> int:
        return self.cfg.start_ms + day * DAY_MS

    def _pod(self, deployment: str, rs_hash: str) -> str:
        return f"{deployment}-{rs_hash}-" + "".join(self.rng.choice(_SAFE) for _ in range(5))

    def _hash(self) -> str:
        return "".join(self.rng.choice(_SAFE) for _ in range(self.rng.randint(8, 10)))

    def _add(
        self,
        name: str,
        family: str,
        rate: npt.NDArray[np.float64],
        resources: list[str],
        operations: list[str],
        *,
        fail_p: float = 0.004,
        identity_type: str = "service-account",
        attributes: dict[str, str] | None = None,
    ) -> _Machine:
        self._ip += 1
        m = _Machine(
            name,
            family,
            rate,
            resources,
            operations,
            fail_p,
            identity_type,
            f"10.{40 + self._ip // 250}.{self._ip % 250}.{10 + self._ip % 200}",
            attributes or {},
        )
        self.machines.append(m)
        return m

    def _label(self, kind: str, machine: str, start: int, end: int, desc: str) -> None:
        # Labels are only for the scored days; a settle time past the end is cut there.
        if start < self.cfg.history_end_ms or start >= self.cfg.end_ms:
            raise ValueError(f"{kind} label on {machine} outside the scored days")
        malicious = kind in MALICIOUS_KINDS
        end = min(end, self.cfg.end_ms)
        self.episodes.append(Episode(kind, machine, start, end, malicious, desc))

    def _diurnal(self, night: float, day: float, weekend: float = 0.6) -> npt.NDArray[np.float64]:
        minute = np.arange(self.minutes)
        hour = (minute % DAY_MIN) / 60.0
        weekday = (minute // DAY_MIN) % 7  # the scenario starts on a Monday
        # a smooth day: low at 03:00, high at 15:00
        shape = 0.5 - 0.5 * np.cos((hour - 3.0) / 24.0 * 2 * np.pi)
        r = night + (day - night) * shape
        return np.where(weekday >= 5, r * weekend, r)

    def _scored_slot(self, machine: str, length_ms: int, lo_h: float, hi_h: float) -> int:
        start = self._try_slot(machine, length_ms, lo_h, hi_h)
        if start is None:
            raise ValueError(f"no free slot on {machine}; lower per_kind")
        return start

    def _slot_among(
        self, machines: list[str], length_ms: int, lo_h: float, hi_h: float
    ) -> tuple[str, int]:
        for name in self.rng.sample(machines, len(machines)):
            start = self._try_slot(name, length_ms, lo_h, hi_h)
            if start is not None:
                return name, start
        raise ValueError(f"no free slot among {len(machines)} machines; lower per_kind")

    def _try_slot(self, machine: str, length_ms: int, lo_h: float, hi_h: float) -> int | None:
        """A start in the scored days, between lo_h and hi_h o'clock, ending an hour before
        the scenario does, and clear of the machine's other injections."""
        cfg = self.cfg
        first_day = int(cfg.history_days)
        last_day = int(cfg.days) - 1
        for _ in range(500):
            day = self.rng.randint(first_day, last_day)
            start = self._day_start(day) + int(self.rng.uniform(lo_h, hi_h) * HOUR_MS)
            start -= start % 1000
            if start < cfg.history_end_ms or start + length_ms > cfg.end_ms - HOUR_MS:
                continue
            taken = self._busy.setdefault(machine, [])
            if all(
                start + length_ms + _MAL_GAP_MS <= s or e + _MAL_GAP_MS <= start for s, e in taken
            ):
                taken.append((start, start + length_ms))
                return start
        return None

    # -- the fleet ---------------------------------------------------------------------------

    def _build(self) -> None:
        cfg, rng = self.cfg, self.rng
        k = cfg.per_kind
        days = int(cfg.days)
        first_scored = int(cfg.history_days)

        # api deployments; the first two are rolled out during the scored days, the others
        # carry the injections into always-active machines.
        api_specs = [
            (
                "checkout-api",
                "postgres://orders-db/public.orders/id={}",
                ["SELECT", "INSERT", "UPDATE"],
            ),
            ("catalog-api", "https://search.internal/v2/items/{}", ["GET", "POST"]),
            ("session-api", "redis://sessions-01/sess:{}", ["GET", "SET", "EXPIRE"]),
            ("pricing-api", "postgres://pricing-db/public.prices/sku={}", ["SELECT", "UPDATE"]),
        ]
        self.targets_always: list[str] = []
        for i, (dep, template, ops) in enumerate(api_specs):
            rolled = i < 2
            per_pod = self._diurnal(0.4, 1.6)
            resources = [template.format(rng.randint(10_000, 999_999)) for _ in range(60)]
            resources += [template.split("/{")[0].rsplit("/", 1)[0] + "/health"]
            # rollouts: every 3-5 days during history; the rolled ones once on each scored day
            times = []
            t = self._day_start(rng.randint(1, 3)) + int(rng.uniform(9, 16) * HOUR_MS)
            while t < cfg.history_end_ms - DAY_MS:
                times.append(t)
                t += rng.randint(3, 5) * DAY_MS + int(rng.uniform(-3, 3) * HOUR_MS)
            if rolled:
                for d in range(first_scored, days):
                    times.append(self._day_start(d) + int(rng.uniform(10, 15) * HOUR_MS))
            starts = [cfg.start_ms, *times]
            ends = [*times, cfg.end_ms]
            attrs = {"namespace": dep.split("-")[0], "cluster": "prod-west"}
            for gen, (s, e) in enumerate(zip(starts, ends, strict=True)):
                rs = self._hash()
                for p in range(3):
                    # pods are replaced one at a time, a minute apart
                    ps = s + p * MINUTE_MS if gen else s
                    pe = e + p * MINUTE_MS if e < cfg.end_ms else e
                    name = self._pod(dep, rs)
                    rate = self._zeros()
                    a, b = self._minute(ps), self._minute(pe)
                    rate[a:b] = per_pod[a:b]
                    self._add(name, "api", rate, resources, ops, attributes=attrs)
                    if gen and ps >= cfg.history_end_ms:
                        self._label(
                            "pod_churn", name, ps, ps + HOUR_MS, f"rollout of {dep}: new pod"
                        )
                    if e < cfg.end_ms and pe - MINUTE_MS >= cfg.history_end_ms:
                        self._label(
                            "pod_churn",
                            name,
                            pe - MINUTE_MS,
                            pe + _SETTLE_MS,
                            f"rollout of {dep}: old pod gone",
                        )
                    if not rolled and gen == len(starts) - 1:
                        self.targets_always.append(name)
        # new replicas: pods added to the unrolled deployments (their live replicaset), and
        # consumers numbered after the existing ones
        live = {m.name.rsplit("-", 2)[0]: m for m in self.machines if m.name in self.targets_always}

        # The families that carry injections have at least `per_kind` machines, so each
        # injection of a kind can land on a machine that kind has not touched yet: a second
        # burst on a machine measures what the first one taught its baseline, not detection.
        targets = max(3, k)
        consumers = []
        for i in range(1, targets + 1):
            name = f"ledger-consumer-{i}"
            rate = self._zeros() + 2.5
            self._add(
                name,
                "consumer",
                rate,
                [
                    "kafka://topic/ledger.entries",
                    "kafka://topic/ledger.dlq",
                    "postgres://ledger-db/public.entries",
                ],
                ["consume", "consume", "INSERT", "commit"],
                attributes={"namespace": "ledger"},
            )
            consumers.append(name)
        self.targets_always += consumers

        for j in range(k):
            t = self._scored_slot(f"new-replica-{j}", HOUR_MS, 8, 20)
            if j % 2 == 0:
                dep = sorted(live)[j // 2 % len(live)]
                proto = live[dep]
                rs = proto.name.rsplit("-", 2)[1]
                name = self._pod(dep, rs)
                rate = self._zeros()
                a = self._minute(t)
                rate[a:] = self._diurnal(0.4, 1.6)[a:]
                self._add(
                    name,
                    "api",
                    rate,
                    proto.resources,
                    proto.operations,
                    attributes=proto.attributes,
                )
            else:
                base = consumers[0]
                proto = next(m for m in self.machines if m.name == base)
                name = f"ledger-consumer-{targets + j}"
                rate = self._zeros()
                rate[self._minute(t) :] = 2.5
                self._add(
                    name,
                    "consumer",
                    rate,
                    proto.resources,
                    proto.operations,
                    attributes=proto.attributes,
                )
            self._label("new_replica", name, t, t + HOUR_MS, "a replica added to a known group")

        # office-hours backoffice pods: weekdays 08-18, nothing at night
        office = []
        minute = np.arange(self.minutes)
        hour = (minute % DAY_MIN) / 60.0
        weekday = (minute // DAY_MIN) % 7
        rs = self._hash()
        for _ in range(targets):
            rate = np.where((weekday < 5) & (hour >= 8) & (hour < 18), 1.5, 0.0)
            name = self._pod("backoffice-web", rs)
            res = [
                f"postgres://crm-db/public.customers/id={rng.randint(10_000, 999_999)}"
                for _ in range(40)
            ]
            self._add(
                name, "backoffice", rate, res, ["SELECT", "UPDATE"], attributes={"namespace": "crm"}
            )
            office.append(name)

        # read-only clients
        readers = []
        for i in range(1, targets + 1):
            name = f"report-reader-{i}"
            res = [f"postgres://warehouse-db/public.sales_{m:02d}" for m in range(1, 13)]
            res += [f"s3://reports-bucket/monthly/{m:02d}.parquet" for m in range(1, 13)]
            self._add(
                name,
                "reader",
                self._diurnal(0.2, 1.0),
                res,
                ["SELECT", "GetObject"],
                attributes={"namespace": "bi"},
            )
            readers.append(name)

        # autoscaling: three instances always; weekdays, 2-3 more from about 11:00 to 17:00
        asg_res = [f"s3://render-jobs/in/{rng.randint(10_000, 999_999)}.json" for _ in range(50)]
        asg_ops = ["GetObject", "PutObject", "GetObject"]
        for i in range(1, 4):
            self._add(
                f"render-worker-{i:02d}",
                "autoscale",
                self._zeros() + 0.8,
                asg_res,
                asg_ops,
                identity_type="iam-role",
            )
        number = 4
        for d in range(days):
            if d % 7 >= 5:
                continue
            extra = rng.randint(2, 3)
            if d >= first_scored:
                extra = max(extra, -(-k // (days - first_scored)))
            for _ in range(extra):
                s = self._day_start(d) + int(rng.uniform(10.5, 12) * HOUR_MS)
                e = self._day_start(d) + int(rng.uniform(16, 18) * HOUR_MS)
                rate = self._zeros()
                rate[self._minute(s) : self._minute(e)] = 1.0
                name = f"render-worker-{number:02d}"
                number += 1
                self._add(name, "autoscale", rate, asg_res, asg_ops, identity_type="iam-role")
                if s >= cfg.history_end_ms:
                    self._label(
                        "autoscale",
                        name,
                        s,
                        e + _SETTLE_MS,
                        "scaled out in the morning, in in the afternoon",
                    )

        # cron jobs at several periods: (name, period min, events per run)
        for name, period, n, res, ops in [
            ("cron-certsync", 5, 4, ["https://vault.internal/v1/pki/issue/web"], ["POST", "GET"]),
            (
                "cron-queue-depth",
                15,
                12,
                ["kafka://topic/ledger.entries", "https://metrics.internal/push"],
                ["describe", "POST"],
            ),
            (
                "cron-hourly-rollup",
                60,
                40,
                ["postgres://metrics-db/public.rollup_hourly"],
                ["SELECT", "INSERT"],
            ),
            (
                "cron-dns-audit",
                360,
                150,
                ["https://dns.internal/zones/prod", "s3://audit-logs/dns/"],
                ["GET", "PutObject"],
            ),
        ]:
            rate = self._zeros()
            offset = rng.randrange(period)
            rate[offset::period] = n
            self._add(name, "cron", rate, res, ops, identity_type="iam-role")
            for d in range(first_scored, days):
                s = self._day_start(d)
                self._label(
                    "cron_job",
                    name,
                    s,
                    min(s + DAY_MS, cfg.end_ms),
                    f"every {period} min, {n} events a run",
                )

        # CI runners: jobs in working hours, a night run now and then
        ci_res = [
            "https://git.internal/repo/shop.git",
            "https://registry.internal/v2/shop/manifests/latest",
            "s3://ci-artifacts/shop/",
        ]
        ci_ops = ["fetch", "pull", "push", "PutObject", "GetObject"]
        runners = [f"ci-runner-{i}" for i in range(1, 5)]
        ci_rate = {r: self._zeros() for r in runners}

        def ci_job(runner: str, start: int, minutes: int) -> None:
            a = self._minute(start)
            ci_rate[runner][a : a + minutes] = 5.0

        for d in range(days):
            for r in runners:
                if d % 7 < 5:
                    t = self._day_start(d) + int(rng.uniform(8, 9.5) * HOUR_MS)
                    end = self._day_start(d) + 18 * HOUR_MS
                    if d >= first_scored:
                        self._label(
                            "ci_workday", r, t, end + _SETTLE_MS, "CI jobs in working hours"
                        )
                    while t < end:
                        length = rng.randint(4, 15)
                        ci_job(r, t, length)
                        t += (length + int(rng.expovariate(1 / 25))) * MINUTE_MS
                if d < first_scored and rng.random() < 0.3:
                    ci_job(
                        r,
                        self._day_start(d) + int(rng.uniform(-2, 5) * HOUR_MS) % DAY_MS,
                        rng.randint(5, 20),
                    )
        for _ in range(k):
            length = rng.randint(5, 20)
            r, t = self._slot_among(runners, length * MINUTE_MS, -2, 5)
            ci_job(r, t, length)
            self._label(
                "ci_night_run", r, t, t + length * MINUTE_MS + _SETTLE_MS, "a CI run at night"
            )
        for r in runners:
            self._add(
                r,
                "ci",
                ci_rate[r],
                ci_res,
                ci_ops,
                identity_type="iam-role",
                attributes={"pool": "shop"},
            )

        # nightly batches, each at its own fixed time; scored nights labelled
        n_nightly = -(-k // (days - first_scored))
        for i in range(n_nightly):
            name = [
                "nightly-ledger-export",
                "nightly-search-reindex",
                "nightly-gdpr-purge",
                "nightly-fx-rates",
            ][i % 4]
            at = rng.uniform(0.5, 4.0)
            rate = self._zeros()
            runs = []
            for d in range(days):
                s = self._day_start(d) + int((at + rng.uniform(0, 0.1)) * HOUR_MS)
                length = rng.randint(35, 80)
                rate[self._minute(s) : self._minute(s) + length] = 8.0
                runs.append((s, length))
            res = [f"s3://exports/{name}/part-{p:03d}" for p in range(30)] + [
                "postgres://ledger-db/public.entries"
            ]
            self._add(name, "nightly", rate, res, ["SELECT", "PutObject"], identity_type="iam-role")
            for s, length in runs:
                if s >= cfg.history_end_ms:
                    self._label(
                        "nightly_batch",
                        name,
                        s,
                        s + length * MINUTE_MS + _SETTLE_MS,
                        f"nightly run at {at:.1f} h",
                    )

        # weekly batches on a scored weekday, so two runs are in the history
        for i in range(k):
            name = f"weekly-{_WEEKLY[i % len(_WEEKLY)]}"
            if i >= len(_WEEKLY):
                name += f"-{i // len(_WEEKLY)}"
            day = first_scored + i % (days - first_scored)
            at = rng.uniform(1, 22)
            length = rng.randint(60, 150)
            rate = self._zeros()
            d = day
            while d >= 0:
                s = self._day_start(d) + int(at * HOUR_MS)
                rate[self._minute(s) : self._minute(s) + length] = 4.0
                d -= 7
            res = [f"s3://weekly/{name}/{p:03d}" for p in range(40)]
            self._add(
                name,
                "weekly",
                rate,
                res,
                ["GetObject", "PutObject", "DeleteObject"],
                identity_type="iam-role",
            )
            s = self._day_start(day) + int(at * HOUR_MS)
            self._label(
                "weekly_batch",
                name,
                s,
                s + length * MINUTE_MS + _SETTLE_MS,
                f"weekly run, day {day % 7}",
            )

        # admin tools: a human's sessions, a few a week, now and then in the evening
        tools = ["admintool-dbops", "admintool-iam", "admintool-flags"]
        tool_rate = {t: self._zeros() for t in tools}

        def session(tool: str, start: int, minutes: int) -> None:
            a = self._minute(start)
            tool_rate[tool][a : a + minutes] = rng.uniform(1.0, 4.0)

        for d in range(first_scored):
            for tool in tools:
                if d % 7 < 5 and rng.random() < 0.4:
                    session(
                        tool,
                        self._day_start(d) + int(rng.uniform(9, 21) * HOUR_MS),
                        rng.randint(2, 20),
                    )
        for _ in range(k):
            minutes = rng.randint(2, 20)
            tool, t = self._slot_among(tools, minutes * MINUTE_MS, 9, 21)
            session(tool, t, minutes)
            self._label(
                "admin_tool",
                tool,
                t,
                t + minutes * MINUTE_MS + _SETTLE_MS,
                "a human's admin session",
            )
        for tool in tools:
            res = [
                f"https://admin.internal/{tool.split('-')[1]}/{x}"
                for x in ("users", "roles", "flags", "tables", "audit")
            ]
            self._add(
                tool,
                "admin",
                tool_rate[tool],
                res,
                ["GET", "GET", "PUT", "DELETE"],
                identity_type="human",
            )

        self._inject(office, readers, consumers)

    # -- injections ----------------------------------------------------------------------------

    def _inject(self, office: list[str], readers: list[str], consumers: list[str]) -> None:
        rng, k = self.rng, self.cfg.per_kind
        by_name = {m.name: m for m in self.machines}
        always = self.targets_always

        touched: dict[str, set[str]] = defaultdict(set)

        def window(
            kind: str, minutes_lo: int, minutes_hi: int, pool: list[str], lo_h: float, hi_h: float
        ) -> tuple[_Machine, int, int]:
            length = rng.randint(minutes_lo, minutes_hi) * MINUTE_MS
            # machines this kind has not touched yet first (a stable sort keeps the shuffle)
            candidates = sorted(rng.sample(pool, len(pool)), key=lambda n: n in touched[kind])
            for name in candidates:
                start = self._try_slot(name, length, lo_h, hi_h)
                if start is not None:
                    touched[kind].add(name)
                    return by_name[name], start, start + length
            raise ValueError(f"no free slot among {len(pool)} machines; lower per_kind")

        # Silence first: only the consumers (busy day and night, well above the rate the
        # silence detector watches) qualify, and the other kinds then take what is left.
        for _ in range(k):
            m, s, e = window("silence", 60, 120, consumers, 8, 18)
            m.rate[self._minute(s) : self._minute(e)] = 0.0
            self._label("silence", m.name, s, e, "an always-active machine stops")
        # Bursts and failure spikes are made strong enough in absolute numbers for the
        # documented per-minute gates (rate: at least 20 events in a minute; failures: 5 in a
        # minute), at the default rate_scale: below them the detectors do not page by design.
        for _ in range(k):
            m, s, e = window("rate_burst", 10, 20, always, 0, 24)
            a, b = self._minute(s), self._minute(e)
            m.rate[a:b] = m.rate[a:b] * 10 + 60
            self._label(
                "rate_burst", m.name, s, e, "ten times the usual rate on the usual resources"
            )
        for _ in range(k):
            m, s, e = window("fan_out", 10, 20, always, 0, 24)
            a, b = self._minute(s), self._minute(e)
            m.rate[a:b] += 5
            m.alter.append((s, e, "fan_out"))
            self._label(
                "fan_out", m.name, s, e, "reads across databases and buckets it never touched"
            )
        for _ in range(k):
            m, s, e = window("failure_spike", 10, 20, always, 7, 20)
            # a dependency fails and the client retries
            m.rate[self._minute(s) : self._minute(e)] += 30
            m.alter.append((s, e, "failure_spike"))
            self._label("failure_spike", m.name, s, e, "retries, 60% of them failed or denied")
        for _ in range(k):
            m, s, e = window("operation_shift", 15, 30, readers, 8, 20)
            m.rate[self._minute(s) : self._minute(e)] += 1
            m.alter.append((s, e, "operation_shift"))
            self._label("operation_shift", m.name, s, e, "a read-only client deletes")
        for _ in range(k):
            m, s, e = window("off_hours", 20, 40, office, -3.5, 4.5)
            m.rate[self._minute(s) : self._minute(e)] = 2.0
            self._label("off_hours", m.name, s, e, "an office-hours application busy at night")
        for i in range(k):
            letters = "".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(6))
            name = f"{['xfer', 'probe', 'sync', 'helper', 'agent'][i % 5]}-{letters}"
            length = rng.randint(20, 40) * MINUTE_MS
            s = self._scored_slot(name, length, 0, 24)
            victim = by_name[rng.choice(always)]
            rate = self._zeros()
            rate[self._minute(s) : self._minute(s + length)] = rng.uniform(1.5, 4.0)
            self._add(
                name,
                "intruder",
                rate,
                victim.resources,
                victim.operations,
                identity_type="service-account",
            )
            self._label(
                "new_identity",
                name,
                s,
                s + length,
                f"an identity in no group, on {victim.name}'s resources",
            )

    # -- events ----------------------------------------------------------------------------

    def expected_events(self) -> int:
        return int(sum(float(m.rate.sum()) for m in self.machines) * self.cfg.rate_scale)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every event, in timestamp order (ties by machine order)."""
        cfg = self.cfg
        rows: list[tuple[int, int, dict[str, Any]]] = []
        for idx, m in enumerate(self.machines):
            gen = np.random.default_rng([cfg.seed, idx, 16])
            counts = gen.poisson(m.rate * cfg.rate_scale)
            total = int(counts.sum())
            if total == 0:
                continue
            minute_of = np.repeat(np.arange(self.minutes, dtype=np.int64), counts)
            ts = cfg.start_ms + minute_of * MINUTE_MS + gen.integers(0, MINUTE_MS, total)
            ts.sort()
            res_i = gen.integers(0, len(m.resources), total)
            op_i = gen.integers(0, len(m.operations), total)
            u = gen.random(total)
            v = gen.integers(0, 1 << 30, total)
            for j in range(total):
                t = int(ts[j])
                resource = m.resources[int(res_i[j])]
                operation = m.operations[int(op_i[j])]
                outcome = (
                    "SUCCESS"
                    if u[j] >= m.fail_p
                    else ("FAILURE" if u[j] < m.fail_p / 2 else "DENIED")
                )
                for s, e, kind in m.alter:
                    if s <= t < e:
                        if kind == "fan_out" and u[j] < 0.7:
                            # a different database or bucket nearly every access
                            n = int(v[j]) % 400
                            resource = f"postgres://{_FAN_OUT_DBS[n % 5]}-db/public.t{n}"
                            operation = "SELECT"
                            outcome = "SUCCESS"
                        elif kind == "failure_spike" and u[j] < 0.6:
                            outcome = "FAILURE" if u[j] < 0.4 else "DENIED"
                        elif kind == "operation_shift" and u[j] < 0.5:
                            operation = (
                                "DELETE" if resource.startswith("postgres") else "DeleteObject"
                            )
                rows.append(
                    (
                        t,
                        idx,
                        {
                            "event_id": f"scn-{cfg.seed}-{idx}-{j}",
                            "timestamp": t,
                            "machine_id": m.name,
                            "resource": resource,
                            "operation": operation,
                            "outcome": outcome,
                            "source_ip": m.source_ip,
                            "identity_type": m.identity_type,
                            "source": "scenarios",
                            "attributes": m.attributes,
                        },
                    )
                )
        rows.sort(key=lambda r: (r[0], r[1]))
        for _, _, ev in rows:
            yield ev
