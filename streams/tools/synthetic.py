"""Deterministic synthetic machine-to-machine audit traffic with labelled episodes.

`SyntheticTraffic(config)` builds a population of workloads (Kubernetes deployments with
several pods, numbered autoscaled VMs, nightly batch jobs, CI runners), each with its own
resources, operations, base rate and daily rhythm, and then streams their accesses as audit
event dicts in time order. Anomalies ("rate_burst", "fan_out", ...) and benign changes
("pod_rotation", "autoscale", ...) are injected as `Episode`s known up front, so evaluation can
score detectors against them. Everything depends only on the config: same seed, same events.

Events come out chunk by chunk: for each short slice of event time every workload draws a
Poisson count from its current rate, timestamps are uniform inside the slice, and the slice is
sorted and turned into dicts. numpy does the per-slice arithmetic, so the Python work per
event is one dict; a slice is at most five minutes, so memory stays small for any duration.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

ANOMALY_KINDS = (
    "rate_burst",
    "fan_out",
    "failure_spike",
    "new_identity",
    "off_hours",
    "operation_shift",
    "silence",
)
BENIGN_KINDS = ("pod_rotation", "autoscale", "group_deploy", "traffic_growth", "nightly_batch")
OUTCOMES = ("SUCCESS", "FAILURE", "DENIED")

# 2026-01-05T00:00:00Z, a Monday: a fixed default so that a default config is reproducible.
DEFAULT_START_MS = 1_767_571_200_000

_FOREVER = 2**62
# Slices divide five minutes, so batch windows (on a five-minute grid) and CI blocks (ten
# minutes) never straddle a slice, and each slice has one schedule state.
_SLICE_CHOICES_S = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 25, 30, 50, 60, 75, 100, 150, 300)
_TARGET_EVENTS_PER_SLICE = 20_000
_CI_BLOCK_MS = 10 * MINUTE_MS
_CI_ON, _CI_OFF = 3.0, 0.1
_KEY_LOW, _KEY_HIGH = 10_000, 1_000_000  # ids in object keys: >= 5 digits, read as ids
_SETTLE_MS = HOUR_MS  # how long a benign change is labelled after it happens

# Kubernetes' "safe" alphabet for generated name parts (no vowels, no look-alikes).
_K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

# Daily rhythms, one value per UTC hour (read as the value at the middle of the hour and
# interpolated); the rows are scaled to mean 1 so a workload's base rate is its weekday mean.
_BUSINESS, _OFFICE, _FLAT, _BATCH, _CI, _CONSTANT = range(6)
_RHYTHM_RAW = np.array(
    [
        # business: customer-facing services, busy 08-18 UTC, never idle
        [
            0.25,
            0.2,
            0.18,
            0.18,
            0.2,
            0.3,
            0.5,
            0.8,
            1.2,
            1.5,
            1.6,
            1.6,
            1.5,
            1.6,
            1.6,
            1.5,
            1.4,
            1.2,
            1.0,
            0.8,
            0.6,
            0.5,
            0.4,
            0.3,
        ],
        # office: internal tools used by people at work, practically silent at night
        [
            0.01,
            0.01,
            0.01,
            0.01,
            0.01,
            0.02,
            0.05,
            0.4,
            1.5,
            2.5,
            2.6,
            2.4,
            1.8,
            2.4,
            2.6,
            2.4,
            1.8,
            0.7,
            0.15,
            0.05,
            0.03,
            0.02,
            0.01,
            0.01,
        ],
        # flat: infrastructure that works around the clock
        [
            0.85,
            0.8,
            0.8,
            0.8,
            0.85,
            0.9,
            0.95,
            1.0,
            1.05,
            1.1,
            1.15,
            1.15,
            1.15,
            1.15,
            1.15,
            1.1,
            1.1,
            1.05,
            1.0,
            1.0,
            0.95,
            0.9,
            0.9,
            0.85,
        ],
        [1.0] * 24,  # batch: constant inside its nightly window, zero outside (masked)
        # ci: probability that a runner is busy with a pipeline in a ten-minute block
        [
            0.02,
            0.02,
            0.02,
            0.02,
            0.02,
            0.02,
            0.05,
            0.15,
            0.35,
            0.5,
            0.55,
            0.5,
            0.4,
            0.5,
            0.55,
            0.5,
            0.4,
            0.25,
            0.12,
            0.06,
            0.04,
            0.03,
            0.02,
            0.02,
        ],
        [1.0] * 24,  # constant
    ]
)
_RHYTHM = _RHYTHM_RAW.copy()
_RHYTHM[[_BUSINESS, _OFFICE, _FLAT]] /= _RHYTHM_RAW[[_BUSINESS, _OFFICE, _FLAT]].mean(
    axis=1, keepdims=True
)
_WEEKEND = np.array([0.6, 0.05, 1.0, 1.0, 0.25, 1.0])

_DOMAINS = (
    "payments",
    "orders",
    "invoices",
    "users",
    "catalog",
    "search",
    "shipping",
    "inventory",
    "billing",
    "notifications",
    "auth",
    "fraud",
    "ledger",
    "pricing",
    "checkout",
    "reviews",
    "recommendations",
    "media",
    "accounts",
    "subscriptions",
    "messaging",
    "loyalty",
    "returns",
    "tax",
    "identity",
)
_TABLES = (
    "customers",
    "events",
    "audit_log",
    "line_items",
    "refunds",
    "settings",
    "outbox",
    "addresses",
    "sessions",
    "api_tokens",
    "webhooks",
    "exports",
)
_SECRETS = (
    "db-password",
    "api-key",
    "signing-key",
    "tls-key",
    "oauth-client-secret",
    "webhook-token",
)
_ROLES = ("api", "worker", "consumer", "gateway", "sync", "reporting", "admin")
_ROLE_SHARE = (0.3, 0.2, 0.15, 0.07, 0.08, 0.1, 0.1)
# Mean events/s at rate_scale 1 on a weekday (batch: inside its window; ci: before the burst
# factor, 0.1 while idle and 3 while a pipeline runs).
_ROLE_RATE = {
    "api": 0.12,
    "worker": 0.08,
    "consumer": 0.08,
    "gateway": 0.18,
    "sync": 0.05,
    "reporting": 0.05,
    "admin": 0.08,
    "vm": 0.07,
    "ci": 0.08,
    "batch": 1.0,
}
_VM_GROUPS = (
    "ingest-worker",
    "etl-node",
    "cache-warmer",
    "log-shipper",
    "stream-processor",
    "indexer",
    "backup-agent",
    "image-resizer",
    "mail-relay",
    "metrics-collector",
)
_BATCH_TASKS = ("export", "reconcile", "backfill", "compaction", "report", "cleanup")
_ROGUE_NAMES = ("adhoc-admin", "debug-shell", "legacy-sync", "tmp-migrator", "ops-laptop")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Episode:
    """A labelled stretch of traffic: an injected anomaly (`malicious`) or a benign change.

    A change that touches several machines (a pod rotation, a group deploy) is one episode per
    machine, with the same window and description, so scoring can match alerts by machine."""

    kind: str
    machine_id: str
    start_ms: int
    end_ms: int
    malicious: bool
    description: str


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Counts in `anomalies` / `benign` are per kind (see ANOMALY_KINDS and
    BENIGN_KINDS); benign counts are changes, each of which may touch several machines.
    `machines` is the size of the starting population, exactly; episodes add a few (new pods,
    new instances, a new identity). `nightly_batch` windows are always labelled; its count is
    the minimum number of batch jobs.
    `rate_scale` multiplies every rate (1.0: about 0.09 events/s per machine on a weekday).
    `mark_injected` adds attributes {"injected": kind} to anomaly events, for evaluation only."""

    seed: int = 7
    start_ms: int = DEFAULT_START_MS
    duration_s: float = 86_400.0
    machines: int = 50
    rate_scale: float = 1.0
    warmup_s: float = 6 * 3600.0
    anomalies: dict[str, int] = field(default_factory=dict)
    benign: dict[str, int] = field(default_factory=dict)
    mark_injected: bool = False

    def __post_init__(self) -> None:
        if self.machines < 12:
            raise ValueError(f"machines must be >= 12, got {self.machines}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.rate_scale < 0:
            raise ValueError("duration_s must be > 0, warmup_s and rate_scale >= 0")
        for name, counts, known in (
            ("anomalies", self.anomalies, ANOMALY_KINDS),
            ("benign", self.benign, BENIGN_KINDS),
        ):
            for kind, n in counts.items():
                if kind not in known:
                    raise ValueError(f"unknown {name} kind {kind!r}; known: {', '.join(known)}")
                if n < 0:
                    raise ValueError(f"{name}[{kind!r}] must be >= 0, got {n}")
        injected = sum(self.anomalies.values()) + sum(
            n for k, n in self.benign.items() if k != "nightly_batch"
        )
        if injected and self.warmup_s >= self.duration_s:
            raise ValueError("episodes need warmup_s < duration_s")

    @property
    def end_ms(self) -> int:
        """End of event time (exclusive)."""
        return self.start_ms + int(self.duration_s * SECOND_MS)


def demo_config(now_ms: int) -> SyntheticConfig:
    """About 40 machines and 3 hours of event time ending at `now_ms`: two hours of warm-up,
    then a fan_out, a rate_burst and a failure_spike in the last hour. The rate is scaled so
    the run has about 30,000 events whatever the time of day."""
    duration_s = 3 * 3600.0
    base = SyntheticConfig(
        seed=7,
        start_ms=now_ms - int(duration_s * SECOND_MS),
        duration_s=duration_s,
        machines=40,
        warmup_s=2 * 3600.0,
        anomalies={"fan_out": 1, "rate_burst": 1, "failure_spike": 1},
    )
    expected = SyntheticTraffic(base).expected_events()
    scale = 30_000 / expected if expected > 0 else 1.0
    return replace(base, rate_scale=round(scale, 4))


@dataclass
class _Machine:
    name: str
    kind: str  # pod | vm | batch | ci | rogue
    group: str  # deployment, instance group, job or runner pool
    ip: str
    identity_type: str
    attrs: dict[str, str]


@dataclass
class _Slot:
    """One source of accesses: a machine's normal traffic, or an overlay an episode adds."""

    machine: int
    profile: int
    rate: float  # weekday mean events/s at rate_scale 1
    schedule: int
    active_from: int = 0
    active_to: int = _FOREVER
    window: tuple[int, int] = (0, DAY_MS)  # daily time-of-day window; batch jobs only
    fail: float = 0.01
    deny: float = 0.3  # share of failures that are DENIED
    label: str = ""  # anomaly kind, for mark_injected
    alt_profile: int = -1
    switch_at: int = _FOREVER
    growth_per_day: float = 0.0
    growth_from: int = _FOREVER


class _Catalog:
    """Interned resources, operations, bindings (a resource with its operation mix) and
    profiles (weighted bindings: what one workload accesses)."""

    def __init__(self) -> None:
        self.res_plain: list[str | None] = []  # None: a template with an id inside
        self.res_text: list[str] = []
        self._res: dict[str, int] = {}
        self.ops: list[str] = []
        self._ops: dict[str, int] = {}
        self.bindings: list[tuple[int, list[int], list[float]]] = []
        self.profiles: list[list[tuple[int, float]]] = []

    def resource(self, text: str) -> int:
        idx = self._res.get(text)
        if idx is None:
            idx = self._res[text] = len(self.res_text)
            self.res_text.append(text)
            self.res_plain.append(None if "%" in text else text)
        return idx

    def op(self, name: str) -> int:
        idx = self._ops.get(name)
        if idx is None:
            idx = self._ops[name] = len(self.ops)
            self.ops.append(name)
        return idx

    def profile(self, items: Sequence[tuple[str, Mapping[str, float], float]]) -> int:
        """A profile from (resource, {operation: weight}, weight) items."""
        entries: list[tuple[int, float]] = []
        for res, ops, weight in items:
            self.bindings.append(
                (self.resource(res), [self.op(o) for o in ops], list(ops.values()))
            )
            entries.append((len(self.bindings) - 1, weight))
        self.profiles.append(entries)
        return len(self.profiles) - 1

    def extend_profile(self, profile: int, res: str, ops: Mapping[str, float], share: float) -> int:
        """A copy of `profile` plus one binding taking `share` of its accesses."""
        entries = list(self.profiles[profile])
        total = sum(w for _, w in entries)
        self.bindings.append((self.resource(res), [self.op(o) for o in ops], list(ops.values())))
        entries.append((len(self.bindings) - 1, total * share / (1 - share)))
        self.profiles.append(entries)
        return len(self.profiles) - 1

    def profile_resources(self, profile: int) -> list[str]:
        return [self.res_text[self.bindings[b][0]] for b, _ in self.profiles[profile]]


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # splitmix64 finaliser: a counter-based hash, so a CI runner's burst state for a block is
    # the same whichever slice asks for it (uint64 arithmetic wraps, which is intended).
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class SyntheticTraffic:
    """The population, its episodes and a lazy, time-ordered event stream for one config.

    Iterating twice gives the same events; `episodes` and `machines` are fixed at construction.
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng([config.seed, 1])
        self._cat = _Catalog()
        self._machine_list: list[_Machine] = []
        self._names: set[str] = set()
        self._slots: list[_Slot] = []
        self._episodes: list[Episode] = []
        self._scripted: list[tuple[int, int, int, int, int]] = []  # t, slot, res, op, outcome
        self._gaps: list[tuple[int, int, int]] = []  # slot, start, end: no events
        self._taken: list[tuple[int, int]] = []  # anomaly windows, to spread them out
        self._deployments: dict[str, list[int]] = {}  # deployment -> base slots
        self._dep_meta: dict[str, tuple[str, str]] = {}  # deployment -> (domain, role)
        self._vm_groups: dict[str, list[int]] = {}
        self._touched: set[str] = set()  # groups changed by benign episodes
        self._reshaped: set[str] = set()  # deployments rotated or redeployed: one each only
        self._growing: set[str] = set()
        self._used: set[int] = set()  # machines given an anomaly
        start = datetime.fromtimestamp(config.start_ms / SECOND_MS, tz=UTC)
        self._yyyy, self._mm = f"{start.year:04d}", f"{start.month:02d}"
        self._build_population()
        self._inject_benign()
        self._inject_anomalies()
        self._episodes.sort(key=lambda e: (e.start_ms, e.kind, e.machine_id))
        self._freeze()

    # -- public API -------------------------------------------------------------------------

    @property
    def episodes(self) -> list[Episode]:
        """Every labelled episode, anomalies and benign changes, ordered by start time."""
        return list(self._episodes)

    @property
    def machines(self) -> list[str]:
        """Every machine id that can appear, including those that episodes introduce."""
        return [m.name for m in self._machine_list]

    def expected_events(self) -> int:
        """The expected number of events (Poisson mean), ignoring silenced gaps."""
        total = float(len(self._scripted))
        for t0, t1 in self._slices(300_000):
            total += float(self._lambdas(t0, t1)[2].sum())
        return round(total)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events as JSON-ready dicts, in non-decreasing timestamp order."""
        rng = np.random.default_rng([self.config.seed, 2])
        prefix = f"syn-{self.config.seed}-"
        res_plain, res_text, ops = self._cat.res_plain, self._cat.res_text, self._cat.ops
        info = self._slot_info
        n = 0
        for t0, t1 in self._slices(self._slice_ms):
            chunk = self._draw(rng, t0, t1)
            if chunk is None:
                continue
            for t, s, r, o, c, k in zip(*(a.tolist() for a in chunk), strict=True):
                machine_id, ip, ident, attrs = info[s]
                res = res_plain[r]
                yield {
                    "event_id": f"{prefix}{n}",
                    "timestamp": t,
                    "machine_id": machine_id,
                    "resource": res if res is not None else res_text[r] % k,
                    "operation": ops[o],
                    "outcome": OUTCOMES[c],
                    "source_ip": ip,
                    "identity_type": ident,
                    "source": "synthetic",
                    "attributes": attrs.copy(),
                }
                n += 1

    # -- population -------------------------------------------------------------------------

    def _pick(self, seq: Sequence[_T]) -> _T:
        return seq[int(self._rng.integers(len(seq)))]

    def _k8s_token(self, n: int) -> str:
        idx = self._rng.integers(len(_K8S_ALPHABET), size=n)
        return "".join(_K8S_ALPHABET[i] for i in idx)

    def _base_rate(self, kind: str) -> float:
        # Workloads of one kind differ, but within a factor of about 4, so that every machine
        # shows up over a day even at a small rate_scale.
        return _ROLE_RATE[kind] * float(np.clip(self._rng.lognormal(0.0, 0.35), 0.5, 2.0))

    def _add_machine(
        self, name: str, kind: str, group: str, ip: str, ident: str, attrs: dict[str, str]
    ) -> int:
        if name in self._names:
            raise RuntimeError(f"duplicate machine id {name}")  # a bug, never user input
        self._names.add(name)
        self._machine_list.append(_Machine(name, kind, group, ip, ident, attrs))
        return len(self._machine_list) - 1

    def _add_slot(self, slot: _Slot) -> int:
        self._slots.append(slot)
        return len(self._slots) - 1

    def _ip(self, net: int) -> str:
        idx = len(self._machine_list)
        return f"10.{net + idx // 64_516}.{(idx // 254) % 254 + 1}.{idx % 254 + 1}"

    def _pod_name(self, deployment: str, rs_hash: str) -> str:
        while True:
            name = f"{deployment}-{rs_hash}-{self._k8s_token(5)}"
            if name not in self._names:
                return name

    def _unique(self, base: str, taken: Mapping[str, object]) -> str:
        # Extra copies of a name get a letter suffix (not a number, which would read as an
        # instance index of the first copy).
        if base not in taken:
            return base
        i = 0
        while True:
            suffix = ""
            j = i
            while True:
                suffix = chr(ord("b") + j % 25) + suffix
                j = j // 25 - 1
                if j < 0:
                    break
            if f"{base}-{suffix}" not in taken:
                return f"{base}-{suffix}"
            i += 1

    def _build_population(self) -> None:
        cfg = self.config
        n = cfg.machines
        n_batch = max(1, round(0.05 * n), cfg.benign.get("nightly_batch", 0))
        n_ci = max(1, round(0.06 * n))
        n_vm = max(3, round(0.15 * n))
        n_pod = n - n_batch - n_ci - n_vm
        if n_pod < 4:
            raise ValueError("too few machines left for services; raise machines")
        self._build_pods(n_pod)
        self._build_vms(n_vm)
        self._build_batch(n_batch)
        self._build_ci(n_ci)

    def _service_profile(self, domain: str, role: str) -> int:
        r, pick = self._rng, self._pick
        y, m = self._yyyy, self._mm
        db = f"postgres://{domain}-db/public"
        main = domain
        extra = [str(t) for t in r.choice(_TABLES, size=2, replace=False)]
        other = pick([d for d in _DOMAINS if d != domain])
        cache = f"redis://cache-{int(r.integers(1, 9)):02d}"
        items: list[tuple[str, Mapping[str, float], float]]
        if role == "api":
            items = [
                (f"{db}.{main}", {"SELECT": 0.6, "INSERT": 0.2, "UPDATE": 0.2}, 3.0),
                (f"{db}.{main}/id=%d", {"SELECT": 0.8, "UPDATE": 0.2}, 4.0),
                (f"{db}.{extra[0]}", {"SELECT": 0.9, "INSERT": 0.1}, 1.5),
                (f"{cache}/{domain}:session:*", {"GET": 0.8, "SET": 0.2}, 3.0),
                (f"{cache}/{domain}:item:%d", {"GET": 0.7, "SET": 0.3}, 2.0),
                (f"secrets://prod/{domain}/db-password", {"read": 1.0}, 0.2),
                (f"kafka://topic/{domain}", {"produce": 1.0}, 1.0),
                (f"https://api.internal/v1/{other}/%d", {"GET": 0.9, "POST": 0.1}, 1.0),
            ]
        elif role == "worker":
            items = [
                (f"kafka://topic/{domain}", {"consume": 1.0}, 3.0),
                (f"{db}.{main}/id=%d", {"UPDATE": 0.7, "INSERT": 0.3}, 2.0),
                (f"{db}.{extra[0]}", {"INSERT": 0.8, "SELECT": 0.2}, 1.0),
                (
                    f"s3://{domain}-bucket/{y}/{m}/{domain[:3]}-%d.pdf",
                    {"PutObject": 0.7, "GetObject": 0.3},
                    2.0,
                ),
                (f"secrets://prod/{domain}/db-password", {"read": 1.0}, 0.2),
            ]
        elif role == "consumer":
            items = [
                (f"kafka://topic/{other}", {"consume": 1.0}, 4.0),
                (f"{db}.{extra[1]}", {"INSERT": 0.9, "SELECT": 0.1}, 2.0),
                (f"{cache}/{domain}:item:%d", {"SET": 0.8, "GET": 0.2}, 1.0),
                (f"secrets://prod/{domain}/api-key", {"read": 1.0}, 0.2),
            ]
        elif role == "gateway":
            targets = [str(d) for d in r.choice(_DOMAINS, size=3, replace=False)]
            items = [
                (f"https://api.internal/v1/{d}/%d", {"GET": 0.8, "POST": 0.2}, 3.0) for d in targets
            ]
            items += [
                (f"{cache}/ratelimit:%d", {"GET": 0.6, "SET": 0.4}, 2.0),
                (f"secrets://prod/{domain}/signing-key", {"read": 1.0}, 0.2),
            ]
        elif role == "sync":
            items = [
                (f"https://partner-api.example.com/v2/{domain}/%d", {"GET": 0.7, "POST": 0.3}, 2.0),
                (f"{db}.{main}/id=%d", {"SELECT": 0.5, "UPDATE": 0.5}, 2.0),
                (f"kafka://topic/{domain}", {"produce": 1.0}, 1.0),
                (f"secrets://prod/{domain}/oauth-client-secret", {"read": 1.0}, 0.2),
            ]
        elif role == "reporting":
            # Read-only: the target of operation_shift. Plain tables, so DROP/TRUNCATE can
            # name the same resource the client already reads.
            items = [
                (f"{db}.{main}", {"SELECT": 1.0}, 3.0),
                (f"{db}.{extra[0]}", {"SELECT": 1.0}, 2.0),
                (f"postgres://{other}-db/public.{other}", {"SELECT": 1.0}, 1.5),
                (f"s3://{domain}-bucket/{y}/", {"GetObject": 0.8, "ListObjects": 0.2}, 1.0),
                (f"https://api.internal/v1/{domain}/%d", {"GET": 1.0}, 1.0),
                (f"secrets://prod/{domain}/db-password", {"read": 1.0}, 0.2),
            ]
        else:  # admin: an internal console used by people during office hours
            items = [
                (
                    f"https://api.internal/v1/{domain}/%d",
                    {"GET": 0.7, "POST": 0.2, "PUT": 0.1},
                    3.0,
                ),
                (f"{db}.{main}", {"SELECT": 0.8, "UPDATE": 0.2}, 2.0),
                (f"{db}.{extra[1]}", {"SELECT": 1.0}, 1.0),
                (f"secrets://prod/{domain}/api-key", {"read": 1.0}, 0.2),
            ]
        jitter = r.uniform(0.6, 1.4, size=len(items))
        return self._cat.profile(
            [(res, ops, w * float(j)) for (res, ops, w), j in zip(items, jitter, strict=True)]
        )

    def _build_pods(self, n_pod: int) -> None:
        r = self._rng
        # The first deployments are a read-only client and an office-hours tool, so that
        # operation_shift and off_hours have a target in every population.
        forced = ["reporting", "admin"]
        replicas_hi = 6 if n_pod < 1000 else 9
        left = n_pod
        while left > 0:
            role = forced.pop(0) if forced else str(r.choice(_ROLES, p=_ROLE_SHARE))
            domain = self._pick(_DOMAINS)
            dep = self._unique(f"{domain}-{role}", self._deployments)
            replicas = min(left, int(r.integers(2, replicas_hi)))
            if left - replicas == 1:  # no one-pod deployment left over at the end
                replicas += 1
            left -= replicas
            profile = self._service_profile(domain, role)
            schedule = _OFFICE if role == "admin" else _BUSINESS
            rate = self._base_rate(role)
            fail = float(r.uniform(0.005, 0.02))
            rs_hash = self._k8s_token(int(r.integers(9, 11)))
            self._deployments[dep] = []
            self._dep_meta[dep] = (domain, role)
            for _ in range(replicas):
                m = self._add_machine(
                    self._pod_name(dep, rs_hash),
                    "pod",
                    dep,
                    self._ip(1),
                    "service-account",
                    {"namespace": domain, "cluster": "prod-eu-1"},
                )
                # Replicas share the profile; their rates differ a little (load balancing).
                pod_rate = rate * float(r.uniform(0.85, 1.15))
                self._deployments[dep].append(
                    self._add_slot(_Slot(m, profile, pod_rate, schedule, fail=fail))
                )

    def _vm_profile(self, group: str) -> int:
        domain = self._pick(_DOMAINS)
        y, m = self._yyyy, self._mm
        items: list[tuple[str, Mapping[str, float], float]] = [
            (f"kafka://topic/{domain}.raw", {"consume": 1.0}, 3.0),
            (
                f"s3://{domain}-datalake/raw/{y}/{m}/part-%d.parquet",
                {"PutObject": 0.8, "GetObject": 0.2},
                2.5,
            ),
            (f"postgres://{domain}-db/public.{domain}/id=%d", {"SELECT": 0.6, "INSERT": 0.4}, 1.5),
            (
                f"redis://cache-{int(self._rng.integers(1, 9)):02d}/{group}:lock",
                {"GET": 0.5, "SET": 0.5},
                1.0,
            ),
            (f"secrets://prod/{group}/api-key", {"read": 1.0}, 0.2),
        ]
        return self._cat.profile(items)

    def _build_vms(self, n_vm: int) -> None:
        r = self._rng
        left = n_vm
        while left > 0:
            group = self._unique(self._pick(_VM_GROUPS), self._vm_groups)
            count = min(left, int(r.integers(3, 13)))
            left -= count
            first = int(r.integers(1, 5))  # numbering has gaps from earlier scale-ins
            profile = self._vm_profile(group)
            rate = self._base_rate("vm")
            fail = float(r.uniform(0.005, 0.02))
            self._vm_groups[group] = []
            for i in range(first, first + count):
                self._vm_groups[group].append(self._add_vm_slot(group, i, profile, rate, fail))

    def _add_vm_slot(
        self, group: str, number: int, profile: int, rate: float, fail: float, active_from: int = 0
    ) -> int:
        zone = "eu-west-1" + "abc"[number % 3]
        m = self._add_machine(
            f"{group}-{number:02d}", "vm", group, self._ip(20), "iam-role", {"zone": zone}
        )
        return self._add_slot(
            _Slot(
                m,
                profile,
                rate * float(self._rng.uniform(0.85, 1.15)),
                _FLAT,
                active_from=active_from,
                fail=fail,
            )
        )

    def _build_batch(self, n_batch: int) -> None:
        r = self._rng
        y, m = self._yyyy, self._mm
        taken: dict[str, int] = {}
        for _ in range(n_batch):
            domain = self._pick(_DOMAINS)
            name = self._unique(f"nightly-{domain}-{self._pick(_BATCH_TASKS)}", taken)
            taken[name] = 1
            profile = self._cat.profile(
                [
                    (f"postgres://{domain}-db/public.{domain}/id=%d", {"SELECT": 1.0}, 5.0),
                    (f"s3://{domain}-exports/{y}/{m}/export-%d.csv.gz", {"PutObject": 1.0}, 2.0),
                    (f"kafka://topic/{domain}.batch", {"produce": 1.0}, 1.0),
                    (f"secrets://prod/{domain}/db-password", {"read": 1.0}, 0.1),
                ]
            )
            # Windows on a five-minute grid between 00:30 and 05:00 UTC.
            start = int(r.integers(6, 31)) * 5 * MINUTE_MS
            length = int(r.integers(12, 25)) * 5 * MINUTE_MS
            mach = self._add_machine(
                name,
                "batch",
                name,
                self._ip(1),
                "service-account",
                {"namespace": domain, "cluster": "prod-eu-1"},
            )
            self._add_slot(
                _Slot(
                    mach,
                    profile,
                    self._base_rate("batch"),
                    _BATCH,
                    window=(start, start + length),
                    fail=float(r.uniform(0.002, 0.01)),
                )
            )

    def _build_ci(self, n_ci: int) -> None:
        # One pool: every runner may build any repository, so all share one profile.
        items: list[tuple[str, Mapping[str, float], float]] = []
        for domain in self._rng.choice(_DOMAINS, size=8, replace=False):
            items += [
                (
                    f"oci://registry.internal/{domain}-api/manifests/sha-%d",
                    {"pull": 0.85, "push": 0.15},
                    2.0,
                ),
                (f"https://git.internal/acme/{domain}.git", {"clone": 0.6, "fetch": 0.4}, 1.0),
            ]
        items += [
            (
                "https://artifacts.internal/maven/com/acme/lib-%d.jar",
                {"GET": 0.95, "PUT": 0.05},
                3.0,
            ),
            ("https://artifacts.internal/npm/pkg-%d.tgz", {"GET": 1.0}, 3.0),
            ("s3://build-cache/cache-%d.tar.zst", {"GetObject": 0.7, "PutObject": 0.3}, 2.0),
            ("secrets://ci/registry-token", {"read": 1.0}, 0.3),
        ]
        profile = self._cat.profile(items)
        width = max(2, len(str(n_ci)))
        for i in range(1, n_ci + 1):
            m = self._add_machine(
                f"ci-runner-{i:0{width}d}",
                "ci",
                "ci-runner",
                self._ip(30),
                "ci-runner",
                {"pool": "linux-x64"},
            )
            self._add_slot(_Slot(m, profile, self._base_rate("ci"), _CI, fail=0.02))

    # -- episode placement ------------------------------------------------------------------

    def _episode(
        self, kind: str, machine: int, start: int, end: int, malicious: bool, description: str
    ) -> None:
        self._episodes.append(
            Episode(
                kind,
                self._machine_list[machine].name,
                start,
                min(end, self.config.end_ms),
                malicious,
                description,
            )
        )

    def _pick_window(
        self, length: int, prefer: str | None, spread: bool, required: bool = False
    ) -> int:
        """A start time on the minute grid for a window of `length` ms after warm-up, in the
        preferred hours if any fit ("busy": weekdays 09-17 UTC, "night": 20-06 UTC); if none
        fit, anywhere, unless `required`."""
        cfg = self.config
        lo = cfg.start_ms + int(cfg.warmup_s * SECOND_MS)
        hi = cfg.end_ms - length
        if hi < lo:
            raise ValueError(f"a {length // MINUTE_MS} min episode does not fit after warm-up")
        starts = np.arange(-(-lo // MINUTE_MS), hi // MINUTE_MS + 1, dtype=np.int64) * MINUTE_MS
        if starts.size == 0:
            starts = np.array([lo], dtype=np.int64)
        if prefer is not None:
            ok = self._in_hours(starts, prefer) & self._in_hours(starts + length - 1, prefer)
            if ok.any():
                starts = starts[ok]
            elif required:
                raise ValueError(
                    f"no {prefer} hours (UTC) after warm-up for a {length // MINUTE_MS} min episode"
                )
        for _ in range(30):
            s = int(starts[int(self._rng.integers(starts.size))])
            if not spread or all(s + length <= a or s >= b for a, b in self._taken):
                break
        if spread:
            self._taken.append((s, s + length))
        return s

    @staticmethod
    def _in_hours(t: npt.NDArray[np.int64], prefer: str) -> npt.NDArray[np.bool_]:
        hour = (t % DAY_MS) // HOUR_MS
        if prefer == "night":
            return (hour < 6) | (hour >= 20)
        weekday = (t // DAY_MS + 3) % 7 < 5  # 1970-01-01 was a Thursday
        return weekday & (hour >= 9) & (hour < 17)

    def _room(self) -> int:
        cfg = self.config
        return cfg.end_ms - cfg.start_ms - int(cfg.warmup_s * SECOND_MS)

    def _length(self, lo_min: int, hi_min: int) -> int:
        """A random episode length, shortened to what fits after warm-up (never below lo)."""
        length = int(self._rng.integers(lo_min, hi_min + 1)) * MINUTE_MS
        return max(lo_min * MINUTE_MS, min(length, self._room()))

    def _benign_window(self, span: int) -> int:
        """Start of a benign change taking `span` ms, leaving its settle time before the end
        of the run when there is room, so the change is seen as well as made."""
        return self._pick_window(
            max(span, min(span + _SETTLE_MS, self._room())), "busy", spread=False
        )

    def _choose_group(
        self, kind: str, groups: Mapping[str, list[int]], min_size: int, exclusive: set[str] | None
    ) -> str:
        """A group for a benign change: one no other change touched if there is one, else any
        not in `exclusive` (changes that must not stack, like two rotations of one deployment);
        the group is added to `exclusive`."""
        sized = [
            g
            for g, slots in groups.items()
            if len(slots) >= min_size and (exclusive is None or g not in exclusive)
        ]
        pool = [g for g in sized if g not in self._touched] or sized
        if not pool:
            raise ValueError(f"no group left for {kind}; raise machines or lower counts")
        group = self._pick(pool)
        self._touched.add(group)
        if exclusive is not None:
            exclusive.add(group)
        return group

    def _inject_benign(self) -> None:
        cfg, r = self.config, self._rng
        for _ in range(cfg.benign.get("pod_rotation", 0)):
            dep = self._choose_group("pod_rotation", self._deployments, 2, self._reshaped)
            old = list(self._deployments[dep])
            t = self._benign_window(len(old) * 20 * SECOND_MS)
            rs_hash = self._k8s_token(int(r.integers(9, 11)))
            desc = f"rolling update of {dep}: {len(old)} pods replaced, same resources"
            for i, s in enumerate(old):
                base = self._slots[s]
                # A rolling update: each new pod is ready before its old one stops.
                t_new, t_old = t + i * 20 * SECOND_MS, t + i * 20 * SECOND_MS + 15 * SECOND_MS
                attrs = dict(self._machine_list[base.machine].attrs)
                m = self._add_machine(
                    self._pod_name(dep, rs_hash), "pod", dep, self._ip(1), "service-account", attrs
                )
                new = _Slot(
                    m, base.profile, base.rate, base.schedule, active_from=t_new, fail=base.fail
                )
                base.active_to = t_old
                self._deployments[dep].append(self._add_slot(new))
                self._episode(
                    "pod_rotation",
                    base.machine,
                    t,
                    t + _SETTLE_MS,
                    False,
                    desc + " (old pod retired)",
                )
                self._episode("pod_rotation", m, t, t + _SETTLE_MS, False, desc + " (new pod)")
        for _ in range(cfg.benign.get("autoscale", 0)):
            group = self._choose_group("autoscale", self._vm_groups, 1, None)
            k = int(r.integers(1, 5))
            t = self._benign_window(k * MINUTE_MS)
            ref = self._slots[self._vm_groups[group][0]]
            last = max(
                int(self._machine_list[self._slots[s].machine].name.rsplit("-", 1)[1])
                for s in self._vm_groups[group]
            )
            for i in range(k):
                s = self._add_vm_slot(
                    group,
                    last + 1 + i,
                    ref.profile,
                    ref.rate,
                    ref.fail,
                    active_from=t + i * MINUTE_MS,
                )
                self._vm_groups[group].append(s)
                self._episode(
                    "autoscale",
                    self._slots[s].machine,
                    t + i * MINUTE_MS,
                    t + i * MINUTE_MS + _SETTLE_MS,
                    False,
                    f"{group} scaled out by {k} instance(s), same resources",
                )
        for _ in range(cfg.benign.get("group_deploy", 0)):
            dep = self._choose_group("group_deploy", self._deployments, 2, self._reshaped)
            domain, _role = self._dep_meta[dep]
            table = f"{domain}_{self._pick(('v2', 'history', 'snapshots', 'ledger_entries'))}"
            res = f"postgres://{domain}-db/public.{table}"
            t = self._benign_window(MINUTE_MS)
            slots = self._deployments[dep]
            alt = self._cat.extend_profile(
                self._slots[slots[0]].profile, res, {"SELECT": 0.6, "INSERT": 0.4}, 0.2
            )
            for s in slots:
                self._slots[s].alt_profile, self._slots[s].switch_at = alt, t
                self._episode(
                    "group_deploy",
                    self._slots[s].machine,
                    t,
                    t + _SETTLE_MS,
                    False,
                    f"release of {dep}: all {len(slots)} replicas start using {res}",
                )
        for _ in range(cfg.benign.get("traffic_growth", 0)):
            dep = self._choose_group("traffic_growth", self._deployments, 1, self._growing)
            per_day = float(r.uniform(0.3, 0.8))
            # Starts in the first half of the time after warm-up, so the growth is visible.
            t = self._pick_window(max(MINUTE_MS, self._room() // 2), None, spread=False)
            for s in self._deployments[dep]:
                self._slots[s].growth_per_day, self._slots[s].growth_from = per_day, t
                self._episode(
                    "traffic_growth",
                    self._slots[s].machine,
                    t,
                    cfg.end_ms,
                    False,
                    f"{dep} traffic grows {per_day:.0%} per day",
                )
        # Batch windows are part of the population, so they are always labelled.
        for slot in self._slots:
            if slot.schedule != _BATCH:
                continue
            w0, w1 = slot.window
            for day in range(cfg.start_ms // DAY_MS, cfg.end_ms // DAY_MS + 1):
                a, b = max(day * DAY_MS + w0, cfg.start_ms), min(day * DAY_MS + w1, cfg.end_ms)
                if a < b:
                    self._episode(
                        "nightly_batch",
                        slot.machine,
                        a,
                        b,
                        False,
                        f"nightly batch window {w0 // MINUTE_MS // 60:02d}:"
                        f"{w0 // MINUTE_MS % 60:02d}-{w1 // MINUTE_MS // 60:02d}:"
                        f"{w1 // MINUTE_MS % 60:02d} UTC",
                    )

    def _candidates(self, want: str, allow_touched: bool) -> list[int]:
        """Base slots an anomaly may use: pods and VMs present for the whole run, not used by
        another anomaly, in groups no benign change touched unless `allow_touched`; "busy"
        sorts by rate, highest first."""
        out = []
        for s, slot in enumerate(self._slots):
            m = self._machine_list[slot.machine]
            if (
                m.kind not in ("pod", "vm")
                or (m.group in self._touched and not allow_touched)
                or slot.machine in self._used
                or slot.label
                or slot.active_from > 0
                or slot.active_to < _FOREVER
            ):
                continue
            role = self._dep_meta.get(m.group, ("", "vm"))[1]
            if want == "office" and role != "admin":
                continue
            if want == "read_only" and role != "reporting":
                continue
            if want == "busy" and slot.schedule not in (_BUSINESS, _FLAT):
                continue
            out.append(s)
        if want == "busy":
            out.sort(key=lambda s: -self._slots[s].rate)
        return out

    def _target(self, kind: str, want: str, top: float = 1.0) -> int:
        # Fall back step by step: the wanted kind of machine in a group no benign change
        # touched, then in any group, then any machine (small populations run out).
        cands: list[int] = []
        for w, allow in ((want, False), (want, True), ("any", False), ("any", True)):
            cands = cands or self._candidates(w, allow)
        if not cands:
            raise ValueError(f"no machine left for {kind}; raise machines or lower counts")
        cands = cands[: max(1, int(len(cands) * top))]
        s = self._pick(cands)
        self._used.add(self._slots[s].machine)
        return s

    def _overlay(self, base: int, kind: str, start: int, end: int, **changes: Any) -> None:
        self._add_slot(
            replace(self._slots[base], active_from=start, active_to=end, label=kind, **changes)
        )

    def _script(
        self,
        machine: int,
        kind: str,
        start: int,
        end: int,
        accesses: Sequence[tuple[str, str, int]],
    ) -> None:
        """Scripted events (resource, operation, outcome) spread over [start, end)."""
        slot = self._add_slot(_Slot(machine, 0, 0.0, _CONSTANT, label=kind))
        times = np.sort(self._rng.integers(start, end, size=len(accesses)))
        for t, (res, op, outcome) in zip(times.tolist(), accesses, strict=True):
            self._scripted.append((t, slot, self._cat.resource(res), self._cat.op(op), outcome))

    def _inject_anomalies(self) -> None:
        inject = {
            "rate_burst": self._inject_rate_burst,
            "fan_out": self._inject_fan_out,
            "failure_spike": self._inject_failure_spike,
            "new_identity": self._inject_new_identity,
            "off_hours": self._inject_off_hours,
            "operation_shift": self._inject_operation_shift,
            "silence": self._inject_silence,
        }
        # A fixed kind order, so the dict order of config.anomalies does not change the result.
        for kind in ANOMALY_KINDS:
            for _ in range(self.config.anomalies.get(kind, 0)):
                inject[kind](self._rng, self._cat)

    def _inject_rate_burst(self, r: np.random.Generator, cat: _Catalog) -> None:
        s = self._target("rate_burst", "busy", top=0.5)
        length = self._length(3, 8)
        t = self._pick_window(length, "busy", spread=True)
        mult = float(r.uniform(10, 30))
        self._overlay(s, "rate_burst", t, t + length, rate=self._slots[s].rate * (mult - 1))
        self._episode(
            "rate_burst",
            self._slots[s].machine,
            t,
            t + length,
            True,
            f"access rate {mult:.0f}x its normal for {length // MINUTE_MS} min "
            "on its usual resources",
        )

    def _inject_fan_out(self, r: np.random.Generator, cat: _Catalog) -> None:
        s = self._target("fan_out", "any")
        own = set(cat.profile_resources(self._slots[s].profile))
        mode = self._pick(("secrets", "tables", "mixed"))
        pool: list[tuple[str, str]] = []
        if mode in ("secrets", "mixed"):
            pool += [(f"secrets://prod/{d}/{n}", "read") for d in _DOMAINS for n in _SECRETS]
        if mode in ("tables", "mixed"):
            pool += [
                (f"postgres://{d}-db/public.{t}", "SELECT") for d in _DOMAINS for t in (d, *_TABLES)
            ]
        pool = [p for p in pool if p[0] not in own]
        n = int(r.integers(20, 61))
        picks = [pool[i] for i in r.choice(len(pool), size=n, replace=False)]
        accesses = [
            (res, op, 2 if r.random() < 0.3 else 0)
            for res, op in picks
            for _ in range(int(r.integers(1, 3)))
        ]
        length = self._length(5, 15)
        t = self._pick_window(length, "busy", spread=True)
        self._script(self._slots[s].machine, "fan_out", t, t + length, accesses)
        what = {"secrets": "secrets", "tables": "database tables", "mixed": "secrets and tables"}
        self._episode(
            "fan_out",
            self._slots[s].machine,
            t,
            t + length,
            True,
            f"enumerates {n} {what[mode]} it never used in {length // MINUTE_MS} min",
        )

    def _inject_failure_spike(self, r: np.random.Generator, cat: _Catalog) -> None:
        s = self._target("failure_spike", "busy", top=0.5)
        length = self._length(5, 15)
        t = self._pick_window(length, "busy", spread=True)
        mult = float(r.uniform(2, 5))
        self._overlay(
            s, "failure_spike", t, t + length, rate=self._slots[s].rate * mult, fail=0.85, deny=0.5
        )
        self._episode(
            "failure_spike",
            self._slots[s].machine,
            t,
            t + length,
            True,
            f"most accesses FAILURE/DENIED for {length // MINUTE_MS} min "
            f"(retrying at {mult + 1:.1f}x its rate)",
        )

    def _inject_new_identity(self, r: np.random.Generator, cat: _Catalog) -> None:
        name = f"{self._pick(_ROGUE_NAMES)}-{int(r.integers(16**5, 16**6)):06x}"
        m = self._add_machine(
            name, "rogue", name, f"203.0.113.{int(r.integers(2, 255))}", "static-key", {}
        )
        self._used.add(m)
        pool = [(f"secrets://prod/{d}/{n}", "read") for d in _DOMAINS for n in _SECRETS[:3]]
        pool += [
            (f"postgres://{d}-db/public.{t}", "SELECT")
            for d in ("users", "accounts", "identity", "payments")
            for t in ("customers", "api_tokens", "sessions")
        ]
        pool += [
            ("s3://db-backups/prod/", "ListObjects"),
            ("s3://db-backups/prod/users-%d.dump", "GetObject"),
        ]
        targets = [pool[i] for i in r.choice(len(pool), size=int(r.integers(8, 21)), replace=False)]
        n_events = int(r.integers(20, 61))
        accesses = [
            (*targets[int(r.integers(len(targets)))], 2 if r.random() < 0.15 else 0)
            for _ in range(n_events)
        ]
        length = self._length(10, 30)
        t = self._pick_window(length, None, spread=True)
        self._script(m, "new_identity", t, t + length, accesses)
        self._episode(
            "new_identity",
            m,
            t,
            t + length,
            True,
            f"unknown identity (static key from {self._machine_list[m].ip}) reads "
            f"{len(targets)} sensitive resources",
        )

    def _inject_off_hours(self, r: np.random.Generator, cat: _Catalog) -> None:
        s = self._target("off_hours", "office")
        length = self._length(30, 90)
        # Required: at the wrong hour this would be ordinary traffic labelled as an anomaly.
        t = self._pick_window(length, "night", spread=True, required=True)
        factor = float(r.uniform(0.6, 1.2))
        self._overlay(
            s, "off_hours", t, t + length, rate=self._slots[s].rate * factor, schedule=_CONSTANT
        )
        hour = (t % DAY_MS) // HOUR_MS
        what = "office-hours" if self._slots[s].schedule == _OFFICE else "business-hours"
        self._episode(
            "off_hours",
            self._slots[s].machine,
            t,
            t + length,
            True,
            f"{what} service active at {hour:02d}:xx UTC at {factor:.1f}x its daytime mean rate",
        )

    def _inject_operation_shift(self, r: np.random.Generator, cat: _Catalog) -> None:
        s = self._target("operation_shift", "read_only")
        own = cat.profile_resources(self._slots[s].profile)
        tables = [x for x in own if x.startswith("postgres://") and "%" not in x]
        group = self._machine_list[self._slots[s].machine].group
        read_only = self._dep_meta.get(group, ("", ""))[1] == "reporting"
        if not tables:  # a fallback machine without plain tables: a database it can reach
            tables = [f"postgres://{group}-db/public.jobs"]
        ops = ("DELETE", "DELETE", "TRUNCATE", "DROP")
        accesses = [
            (self._pick(tables), self._pick(ops), 1 if r.random() < 0.1 else 0)
            for _ in range(int(r.integers(10, 41)))
        ]
        length = self._length(10, 30)
        t = self._pick_window(length, "busy", spread=True)
        self._script(self._slots[s].machine, "operation_shift", t, t + length, accesses)
        self._episode(
            "operation_shift",
            self._slots[s].machine,
            t,
            t + length,
            True,
            f"{'read-only client' if read_only else 'client that never deletes'} "
            f"issues {len(accesses)} DELETE/TRUNCATE/DROP",
        )

    def _inject_silence(self, r: np.random.Generator, cat: _Catalog) -> None:
        s = self._target("silence", "busy", top=0.25)
        length = self._length(30, 60)
        t = self._pick_window(length, "busy", spread=True)
        self._gaps.append((s, t, t + length))
        self._episode(
            "silence",
            self._slots[s].machine,
            t,
            t + length,
            True,
            f"busy machine sends nothing for {length // MINUTE_MS} min",
        )

    # -- generation -------------------------------------------------------------------------

    def _freeze(self) -> None:
        """Turn the build-time lists into the arrays each slice works on."""
        cfg, cat, slots = self.config, self._cat, self._slots
        self._s_machine = np.array([s.machine for s in slots], dtype=np.int64)
        self._s_profile = np.array([s.profile for s in slots], dtype=np.int64)
        self._s_alt = np.array(
            [s.alt_profile if s.alt_profile >= 0 else s.profile for s in slots], dtype=np.int64
        )
        self._s_switch = np.array([s.switch_at for s in slots], dtype=np.int64)
        self._s_rate = np.array([s.rate for s in slots], dtype=np.float64)
        self._s_sched = np.array([s.schedule for s in slots], dtype=np.int64)
        self._s_from = np.array([s.active_from for s in slots], dtype=np.int64)
        self._s_to = np.array([s.active_to for s in slots], dtype=np.int64)
        self._s_win_lo = np.array([s.window[0] for s in slots], dtype=np.int64)
        self._s_win_hi = np.array([s.window[1] for s in slots], dtype=np.int64)
        self._s_fail = np.array([s.fail for s in slots], dtype=np.float64)
        self._s_deny = np.array([s.fail * s.deny for s in slots], dtype=np.float64)
        self._s_growth = np.array([s.growth_per_day for s in slots], dtype=np.float64)
        self._s_growth_from = np.array([s.growth_from for s in slots], dtype=np.int64)
        self._s_is_ci = self._s_sched == _CI
        self._s_hash = _mix64(
            np.arange(len(slots), dtype=np.uint64)
            + np.uint64(cfg.seed % 2**32) * np.uint64(1_000_003)
        )
        self._slot_ids = np.arange(len(slots), dtype=np.int64)

        # Profiles as one sorted array: profile p's cumulative weights run over (p, p + 1], so
        # searchsorted(p + u) picks a binding of p for every event in one call.
        cums: list[float] = []
        binds: list[int] = []
        for p, entries in enumerate(cat.profiles):
            w = np.array([x for _, x in entries], dtype=np.float64)
            c = p + np.cumsum(w) / w.sum()
            c[-1] = p + 1.0
            cums += c.tolist()
            binds += [b for b, _ in entries]
        self._prof_cum = np.array(cums, dtype=np.float64)
        self._prof_bind = np.array(binds, dtype=np.int64)
        width = max(len(ops) for _, ops, _ in cat.bindings)
        self._bind_res = np.array([r for r, _, _ in cat.bindings], dtype=np.int64)
        self._bind_ops = np.zeros((len(cat.bindings), width), dtype=np.int64)
        self._bind_cum = np.ones((len(cat.bindings), width), dtype=np.float64)
        for i, (_, ops, weights) in enumerate(cat.bindings):
            w = np.array(weights, dtype=np.float64)
            self._bind_ops[i, : len(ops)] = ops
            self._bind_cum[i, : len(ops)] = np.cumsum(w) / w.sum()
            self._bind_cum[i, len(ops) - 1 :] = 1.0

        self._scripted.sort()
        sc = np.array(self._scripted, dtype=np.int64).reshape(-1, 5)
        self._sc_t, self._sc_slot, self._sc_res, self._sc_op, self._sc_out = sc.T.copy()

        def attrs(s: _Slot) -> dict[str, str]:
            base = self._machine_list[s.machine].attrs
            return {**base, "injected": s.label} if s.label and cfg.mark_injected else base

        self._slot_info = [
            (
                self._machine_list[s.machine].name,
                self._machine_list[s.machine].ip,
                self._machine_list[s.machine].identity_type,
                attrs(s),
            )
            for s in slots
        ]
        peak = float(self._s_rate.sum()) * cfg.rate_scale * 2.5 + 1e-9
        fits = [c for c in _SLICE_CHOICES_S if c * peak <= _TARGET_EVENTS_PER_SLICE]
        self._slice_ms = (fits[-1] if fits else 1) * SECOND_MS

    def _slices(self, slice_ms: int) -> Iterator[tuple[int, int]]:
        # Slices are aligned to multiples of slice_ms since the epoch, hence to the five-minute
        # grid, whatever start_ms is.
        t, end = self.config.start_ms, self.config.end_ms
        while t < end:
            nxt = min(end, (t // slice_ms + 1) * slice_ms)
            yield t, nxt
            t = nxt

    def _lambdas(
        self, t0: int, t1: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Per slot: start and length (ms) of its active part of [t0, t1), and its Poisson mean."""
        lo = np.maximum(self._s_from, t0)
        dur = np.clip(np.minimum(self._s_to, t1) - lo, 0, None)
        mid = (t0 + t1) // 2
        hour = (mid % DAY_MS) / HOUR_MS - 0.5
        h0 = math.floor(hour)
        frac = hour - h0
        by_sched = _RHYTHM[:, h0 % 24] * (1 - frac) + _RHYTHM[:, (h0 + 1) % 24] * frac
        if (mid // DAY_MS + 3) % 7 >= 5:
            by_sched = by_sched * _WEEKEND
        mult = by_sched[self._s_sched]
        if self._s_is_ci.any():
            block = np.uint64(t0 // _CI_BLOCK_MS)
            u = (
                _mix64(self._s_hash ^ _mix64(np.array([block], dtype=np.uint64))) >> np.uint64(11)
            ).astype(np.float64) / 2.0**53
            mult = np.where(self._s_is_ci, np.where(u < mult, _CI_ON, _CI_OFF), mult)
        tod = t0 % DAY_MS
        in_window = (self._s_win_lo <= tod) & (tod < self._s_win_hi)
        growth = 1.0 + self._s_growth * np.clip(mid - self._s_growth_from, 0, None) / DAY_MS
        lam = self._s_rate * mult * growth * in_window * dur * (self.config.rate_scale / SECOND_MS)
        return lo, dur, lam

    def _draw(
        self, rng: np.random.Generator, t0: int, t1: int
    ) -> tuple[npt.NDArray[np.int64], ...] | None:
        """One slice's events as parallel arrays (time, slot, resource, op, outcome, key),
        sorted by time; None if there are none."""
        lo, dur, lam = self._lambdas(t0, t1)
        counts = rng.poisson(lam)
        total = int(counts.sum())
        i0, i1 = np.searchsorted(self._sc_t, [t0, t1])
        if total == 0 and i0 == i1:
            return None
        slot = np.repeat(self._slot_ids, counts)
        ts = lo[slot] + (rng.random(total) * dur[slot]).astype(np.int64)
        for g_slot, g0, g1 in self._gaps:
            if g0 < t1 and t0 < g1:
                keep = ~((slot == g_slot) & (ts >= g0) & (ts < g1))
                slot, ts = slot[keep], ts[keep]
                total = int(slot.size)
        prof = np.where(ts >= self._s_switch[slot], self._s_alt[slot], self._s_profile[slot])
        bind = self._prof_bind[
            np.searchsorted(self._prof_cum, prof + rng.random(total), side="right")
        ]
        u = rng.random(total)
        local = (self._bind_cum[bind] <= u[:, None]).sum(axis=1)
        op = self._bind_ops[bind, local]
        res = self._bind_res[bind]
        v = rng.random(total)
        outcome = (v < self._s_fail[slot]).astype(np.int64) + (v < self._s_deny[slot])
        if i0 < i1:
            ts = np.concatenate([ts, self._sc_t[i0:i1]])
            slot = np.concatenate([slot, self._sc_slot[i0:i1]])
            res = np.concatenate([res, self._sc_res[i0:i1]])
            op = np.concatenate([op, self._sc_op[i0:i1]])
            outcome = np.concatenate([outcome, self._sc_out[i0:i1]])
        keys = rng.integers(_KEY_LOW, _KEY_HIGH, size=ts.size)
        order = np.argsort(ts, kind="stable")
        return ts[order], slot[order], res[order], op[order], outcome[order], keys
