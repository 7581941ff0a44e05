"""Contract tests over every detector of the core (no Kafka): the interface of
`detectors.base`, the state each detector owns, and where the modules' imports point."""

from __future__ import annotations

import ast
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.base import Detector, Finding, Seen
from detectors.core import DetectionCore, MachineState
from detectors.operations import NewOperation
from schemas.event import AuditEvent
from streams.processor import MemoryStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
DETECTORS = Path(__file__).resolve().parent.parent / "detectors"

# MachineState field -> its key in MachineState.to_dict (the changelog format).
KEYS = {
    "rate": "q",
    "peak": "pk",
    "resources": "r",
    "recent_new": "w",
    "ops": "o",
    "fail": "x",
    "off": "h",
    "hmax": "k",
    "win": "cw",
    "sched": "sc",
}
# The core's per-event detectors, by name, in the order they run.
RUN_ORDER = (
    "new_identity",
    "access_rate",
    "off_hours",
    "failure_ratio",
    "operation",
    "new_resource",
    "combined",
)


def _detectors(core: DetectionCore) -> list[Detector]:
    """The core's detectors in the order they run: the new-identity check, then the rest."""
    return [getattr(core._new_identity, "__self__"), *core.detectors]  # noqa: B009


def _event(
    n: int, ts: int, machine: str, resource: str, op: str = "SELECT", ok: bool = True
) -> AuditEvent:
    return AuditEvent(
        event_id=f"e-{n}",
        ts_us=ts * 1000,
        machine_id=machine,
        resource=resource,
        operation=op,
        outcome="SUCCESS" if ok else "DENIED",
    )


def _traffic() -> Iterator[AuditEvent]:
    """Two replicas of a business-hours service for two days, then at night one of them
    enumerates new tables with failures and a destructive statement, and a stranger appears."""
    rng = random.Random(3)
    tables = [f"postgres://orders-db/public.t{i}" for i in range(5)]
    n = 0
    for day in range(2):
        for minute in range(8 * 60, 18 * 60):
            for machine in ("orders-api-1", "orders-api-2"):
                for _ in range(rng.randint(2, 4)):
                    ts = T0 + day * DAY + minute * MIN + rng.randrange(MIN)
                    n += 1
                    yield _event(n, ts, machine, rng.choice(tables))
    night = T0 + 2 * DAY + 2 * HOUR
    for i in range(60):
        n += 1
        yield _event(
            n,
            night + i * 2_000,
            "orders-api-1",
            f"postgres://orders-db/secret.s{i}",
            "DROP TABLE" if i == 30 else "SELECT",
            ok=i % 2 == 0,
        )
    n += 1
    yield _event(n, night + 5 * MIN, "mystery-box", "vault://kv/root-token", "READ")


def _snapshot(state: MachineState) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(state.to_dict()))
    return out


class _Spy(Detector):
    """Runs a detector as the core does and records what it changed and found."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.calls = 0
        self.changed: set[str] = set()
        self.found: list[Finding] = []
        self._before: dict[str, Any] = {}

    def score(self, seen: Seen) -> Finding | None:
        self._before = _snapshot(seen.state)
        return self.detector.score(seen)

    def learn(self, seen: Seen, found: Finding | None) -> None:
        self.detector.learn(seen, found)
        after = _snapshot(seen.state)
        self.calls += 1
        self.changed |= {k for k in self._before if self._before[k] != after[k]}
        if found is not None:
            self.found.append(found)


def test_each_detector_changes_only_the_state_it_owns_and_names_its_findings() -> None:
    core = DetectionCore()
    spies = [_Spy(d) for d in _detectors(core)]
    assert [spy.detector.name for spy in spies] == list(RUN_ORDER)
    core._new_identity = spies[0].run  # type: ignore[method-assign]
    core.wire(spies[1:])
    store = MemoryStore()
    events = sorted(_traffic(), key=lambda e: e.ts_us)
    for e in events:
        core.observe(e, store, 0, 0)
    for spy in spies:
        d = spy.detector
        assert spy.calls > 0, d.name
        owned = {KEYS[f] for f in d.owns}
        assert spy.changed <= owned, (d.name, spy.changed - owned)
        assert all(f.detector == d.name for f in spy.found), d.name
    found = {f.detector for spy in spies for f in spy.found}
    # The traffic exercises every rule, so the checks above saw each of them find something
    # (the combined score has tests of its own).
    assert set(RUN_ORDER) - {"combined"} <= found
    # Every field a detector owns is changed by it (and by no other).
    assert set().union(*(spy.changed for spy in spies)) == set(KEYS.values())


def test_learn_follows_score_and_is_given_its_finding() -> None:
    calls: list[tuple[str, Finding | None]] = []

    class Recording(NewOperation):
        def score(self, seen: Seen) -> Finding | None:
            found = super().score(seen)
            calls.append(("score", found))
            return found

        def learn(self, seen: Seen, found: Finding | None) -> None:
            calls.append(("learn", found))
            super().learn(seen, found)

    core = DetectionCore()
    core.wire([Recording() if isinstance(d, NewOperation) else d for d in core.detectors])
    store = MemoryStore()
    for e in sorted(_traffic(), key=lambda e: e.ts_us):
        core.observe(e, store, 0, 0)
    assert [c[0] for c in calls] == ["score", "learn"] * (len(calls) // 2)
    assert all(sc[1] is le[1] for sc, le in zip(calls[::2], calls[1::2], strict=True))
    paged = [f for kind, f in calls if kind == "score" and f is not None]
    assert any(f.observed["operation"] == "DROP TABLE" for f in paged)


@pytest.mark.parametrize("name", RUN_ORDER)
def test_scoring_before_any_learning_finds_nothing(name: str) -> None:
    """A machine's first event, with and without a store: nothing learned, nothing to judge
    against (a new identity needs a store that has watched for a while)."""
    core = DetectionCore()
    (detector,) = [d for d in _detectors(core) if d.name == name]
    for kv in (None, MemoryStore()):
        state = MachineState.new(T0)
        e = _event(1, T0, "orders-api-1", "postgres://orders-db/public.t1")
        seen = Seen(
            e, T0, "orders-api", core.config, state, None, kv, state.rate_baseline(core.config.rate)
        )
        assert detector.score(seen) is None
        detector.learn(seen, None)


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_detector_modules_import_nothing_above_them() -> None:
    """detectors/ uses only the standard library, numpy, river, orjson and schemas; and the
    detectors, their state and incidents sit below the core (which orchestrates them) and the
    tools built on it (explain, standalone)."""
    above = {"detectors.core", "detectors.explain", "detectors.standalone"}
    third_party = {"numpy", "river", "orjson"}
    for path in sorted(DETECTORS.glob("*.py")):
        module = f"detectors.{path.stem}"
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in {"detectors", "schemas", "__future__", *third_party} or (
                top in sys.stdlib_module_names
            ), (module, name)
            if module not in above:
                assert name not in above, (module, name)


@pytest.mark.parametrize("small", [False, True])
def test_a_detectors_own_run_equals_its_score_then_learn(small: bool) -> None:
    """The operation and resource detectors settle the usual case (known to the machine) in
    their own `run`, the combined score skips its score while the window stays open: the
    core calls `run`, and it must page and learn exactly as score then learn do (`small`:
    bounds low enough that learning forgets)."""
    from dataclasses import replace

    from detectors.combined import CombinedWindow
    from detectors.resources import NewResource

    class PlainOperation(NewOperation):
        run = Detector.run

    class PlainResource(NewResource):
        run = Detector.run

    class PlainCombined(CombinedWindow):
        run = Detector.run

    def outcome(plain: bool) -> tuple[list[Any], dict[bytes, dict[str, bytes]]]:
        core = DetectionCore()
        if small:
            core.reconfigure(replace(core.config, max_resources=3, max_operations=1))
        if plain:
            swap = {
                NewOperation: PlainOperation(),
                NewResource: PlainResource(),
                CombinedWindow: PlainCombined(),
            }
            core.wire([swap.get(type(d), d) for d in core.detectors])  # type: ignore[call-overload]
        store = MemoryStore()
        alerts = []
        for e in sorted(_traffic(), key=lambda e: e.ts_us):
            alerts.extend(a.to_json() for a in core.observe(e, store, 0, 0))
        return alerts, {kind: dict(table) for kind, table in store.data.items()}

    fast, plain = outcome(False), outcome(True)
    # Pages, and windows judged by the group's combined model (its record in the store).
    assert fast[0] and fast[1][b"gc"]
    assert fast == plain
