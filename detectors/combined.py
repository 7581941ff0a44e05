"""The combined score: a river HalfSpaceTrees model over per-machine window features.

Each other detector judges one signal against one threshold. An intruder who stays
under every threshold (twice the usual rate, a couple of new tables, some denials, writes from
a mostly-reading client) is still unusual as a whole. Every `window_s` of a machine's event
time is summarised as features relative to that machine's own baseline, scaled to [0, 1], and
scored by one HalfSpaceTrees model per peer group (replicas share one; a group of one is a
machine), scored before it learns the window.

The model's tree structure is random but fixed by the seed and the feature limits, so only the
node masses are state: at most 1.3 kB per group at the defaults (compressed, usually a few
hundred bytes), kept in the group's store under `COMBINED`, and rebuilt into a river model
only when the stored bytes differ from the cached copy (another worker owned the partition, a
restore, a rolled-back transaction).
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from copy import copy
from dataclasses import dataclass, replace
from operator import attrgetter
from random import Random
from typing import Any

import numpy as np
from river.anomaly import HalfSpaceTrees

from detectors.base import Detector, Finding, Seen
from detectors.operations import is_write
from detectors.peers import KeyValue
from schemas.event import format_rfc3339_ms

COMBINED = b"gc"  # store kind: a group's model masses

FEATURES = ("rate", "new_resources", "failures", "writes", "new_operations")
_LIMITS: dict[Hashable, tuple[float, float]] = dict.fromkeys(FEATURES, (0.0, 1.0))
_HEADER = np.dtype("<u4")
_R_MASS = attrgetter("r_mass")
_L_MASS = attrgetter("l_mass")


@dataclass(frozen=True, slots=True)
class CombinedParams:
    window_s: int = 300
    n_trees: int = 10
    height: int = 5
    window_size: int = 100  # windows per reference mass (HalfSpaceTrees' window_size)
    min_events: int = 5  # windows with fewer events are neither scored nor learned
    # HalfSpaceTrees score (0-1) that pages (50 on the product scale). On the synthetic suite
    # (make eval), 2 ordinary windows in 5,199 machine-hours scored above it.
    page_at: float = 0.8
    seed: int = 1


def features(
    count: int,
    expected: float,
    failures: int,
    learned_failure_ratio: float,
    writes: int,
    new_resources: int,
    new_operations: int,
) -> dict[str, float]:
    """One window's features in [0, 1]; 0 is "as usual" for every feature but writes (the
    share of writing operations, whose usual level is the group's to learn)."""
    ratio = math.log2((count + 1.0) / (expected + 1.0))
    excess_failures = failures / count - learned_failure_ratio if count else 0.0
    return {
        "rate": min(1.0, max(0.0, (ratio + 3.0) / 8.0)),
        "new_resources": min(1.0, math.log2(1.0 + new_resources) / 5.0),
        "failures": min(1.0, max(0.0, excess_failures)),
        "writes": writes / count if count else 0.0,
        "new_operations": min(1.0, new_operations / 3.0),
    }


def _twin(node: Any, twins: dict[int, Any]) -> Any:
    """A copy of a river tree node and everything below it (`twins`: original id -> copy)."""
    twin = object.__new__(type(node))
    attrs = twin.__dict__
    attrs.update(node.__dict__)
    children = attrs.get("children")
    if children is not None:
        attrs["children"] = tuple(_twin(c, twins) for c in children)
    twins[id(node)] = twin
    return twin


class _Model:
    """A river HalfSpaceTrees whose learned masses round-trip through bytes. `like`: a model
    of the same parameters whose trees are copied rather than drawn again (the same seed and
    limits draw the same trees; copying them costs a fraction of drawing them, and a worker
    meets a group it has no model for yet on many of its first windows)."""

    def __init__(self, p: CombinedParams, like: _Model | None = None) -> None:
        if like is None:
            self.hst = HalfSpaceTrees(
                n_trees=p.n_trees,
                height=p.height,
                window_size=p.window_size,
                limits=dict(_LIMITS),
                seed=p.seed,
            )
            # The trees are built on the first learn_one; build them now so masses can be
            # loaded.
            self.hst.learn_one(dict.fromkeys(FEATURES, 0.5))
        else:
            src = like.hst
            hst = self.hst = object.__new__(HalfSpaceTrees)
            hst.__dict__.update(src.__dict__)
            hst.limits = copy(src.limits)
            hst.rng = Random()
            hst.rng.setstate(src.rng.getstate())
            twins: dict[int, Any] = {}
            hst.trees = [_twin(t, twins) for t in src.trees]
            hst._tree_nodes = [[twins[id(n)] for n in nodes] for nodes in src._tree_nodes]
        self.nodes = [node for nodes in self.hst._tree_nodes for node in nodes]
        self.learned = 0
        self.narrow = p.window_size <= 255
        self._rs: list[int] | None = None
        self._rs_at = (0, 0)  # (learned, window counter) when _rs was read
        self.load(None)

    def load(self, blob: bytes | None) -> None:
        hst = self.hst
        nodes = self.nodes
        self._rs = None
        if blob is None:
            for node in nodes:
                node.l_mass = node.r_mass = 0
            hst.counter, hst._first_window, self.learned = 0, True, 0
            return
        head = np.frombuffer(blob, dtype=_HEADER, count=3)
        body = blob[head.nbytes :]
        if len(body) == 4 * len(nodes):
            # The first layout: uncompressed (r, l) pairs of little-endian u2.
            masses = np.frombuffer(body, dtype="<u2")
            rs, ls = masses[0::2].tolist(), masses[1::2].tolist()
        else:
            raw = zlib.decompress(body)
            wide = len(raw) == 4 * len(nodes)
            if not wide and len(raw) != 2 * len(nodes):
                raise ValueError("combined-score state does not match the model's shape")
            masses = np.frombuffer(raw, dtype="<u2" if wide else "u1")
            rs, ls = masses[: len(nodes)].tolist(), masses[len(nodes) :].tolist()
        for node, r, left in zip(nodes, rs, ls, strict=True):
            node.r_mass, node.l_mass = r, left
        hst.counter, hst._first_window, self.learned = int(head[0]), bool(head[1]), int(head[2])

    def dump(self) -> bytes:
        """Header, then zlib of every node's reference masses and then its latest masses, one
        byte each while a window fits in one (at most `window_size` learns land in a node):
        masses are small, repetitive counts, so this is a few hundred bytes, not 2.5 kB."""
        hst = self.hst
        head = np.array([hst.counter, hst._first_window, self.learned], dtype=_HEADER)
        nodes = self.nodes
        # Reference masses only change when a window closes, so they are read out of the
        # nodes (about 50 ns an attribute in river's tree) once per window, not on every dump:
        # the cached copy holds while the window counter moved exactly as many steps as
        # windows were learned since (a close wraps it round).
        learned, counter = self.learned, hst.counter
        if self._rs is None or counter - self._rs_at[1] != learned - self._rs_at[0]:
            self._rs = list(map(_R_MASS, nodes))
            self._rs_at = (learned, counter)
        rs = self._rs
        ls = list(map(_L_MASS, nodes))
        raw = bytes(rs) + bytes(ls) if self.narrow else np.array(rs + ls, dtype="<u2").tobytes()
        return head.tobytes() + zlib.compress(raw, 1)


class CombinedModels:
    """The per-group models, cached as river objects and checked against the store."""

    def __init__(self, params: CombinedParams, cache_size: int = 512) -> None:
        self.params = params
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[bytes | None, _Model]] = OrderedDict()
        self._spare: _Model | None = None
        self._template: _Model | None = None

    def _model(self, group: str, blob: bytes | None) -> _Model:
        hit = self._cache.get(group)
        if hit is not None:
            self._cache.move_to_end(group)
            if hit[0] == blob:
                return hit[1]
            model = hit[1]
        else:
            # Building the trees costs milliseconds; evicted models are reused, and new ones
            # copy the trees of the first.
            spare = self._spare
            if spare is None:
                if self._template is None:
                    self._template = _Model(self.params)
                spare = _Model(self.params, self._template)
            model = spare
            self._spare = None
        model.load(blob)
        self._cache[group] = (blob, model)
        if len(self._cache) > self.cache_size:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._spare = evicted
        return model

    def score_and_learn(self, kv: KeyValue, group: str, x: dict[str, float]) -> float | None:
        """Score `x` against `group`'s model, then learn it. None while the model has not
        completed its first reference window (nothing to compare with yet)."""
        blob = kv.get(COMBINED, group)
        model = self._model(group, blob)
        warm = not model.hst._first_window
        score = float(model.hst.score_one(x)) if warm else None
        model.hst.learn_one(x)
        model.learned += 1
        out = model.dump()
        kv.set(COMBINED, group, out)
        self._cache[group] = (out, model)
        return score


class MemoryKV:
    """A dict standing in for the store when the core runs without one."""

    def __init__(self) -> None:
        self.data: dict[tuple[bytes, str], bytes] = {}

    def get(self, kind: bytes, key: str) -> bytes | None:
        return self.data.get((kind, key))

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        self.data[kind, key] = value

    def delete(self, kind: bytes, key: str) -> None:
        self.data.pop((kind, key), None)


def explain(x: dict[str, float], count: int, expected: float) -> dict[str, Any]:
    """The observed side of a combined-score alert, in the units an engineer reads."""
    return {
        "events": count,
        "rate_vs_baseline": round((count + 1.0) / (expected + 1.0), 2),
        "new_resources": round(2 ** (x["new_resources"] * 5.0) - 1.0),
        "excess_failure_ratio": round(x["failures"], 3),
        "write_share": round(x["writes"], 3),
        "new_operations": round(x["new_operations"] * 3.0),
    }


class CombinedWindow(Detector):
    """The combined score of a machine's windows (`CombinedParams.window_s` of event time):
    its rate, new resources, failures, writes and new operations together, scored by its
    group's model. Owns `MachineState.win`, the open window: `[window, events, failures,
    writes, new resources, new operations, first event id, last event ms]`; the models are
    the group's, in its store (`COMBINED`), or in memory when the core runs without one.

    A window is judged, and learned by the model, when the machine's first event past it
    arrives; a finding is anchored on the window's own events. Reads `Seen.new_resource` and
    `Seen.new_operation`, so it runs after the detectors that note them."""

    __slots__ = ("models", "store")
    name = "combined"
    owns = ("win",)

    def __init__(self) -> None:
        self.models: CombinedModels | None = None
        self.store = MemoryKV()

    def score(self, seen: Seen) -> Finding | None:
        p = seen.cfg.combined
        win = seen.state.win
        if p is None or not win or seen.ts // (p.window_s * 1000) <= win[0]:
            return None
        found = self._score_window(seen, p)
        seen.state.win = []
        if found is None:
            return None
        event = seen.event
        first_id = str(win[6]) if len(win) > 7 else event.event_id
        last_ms = int(win[7]) if len(win) > 7 else seen.ts
        return replace(found, anchor=replace(event, event_id=first_id, ts_us=last_ms * 1000))

    def learn(self, seen: Seen, found: Finding | None) -> None:
        """Count the event into the open window (a late event into the window still open)."""
        p = seen.cfg.combined
        if p is None:
            return
        event, ts = seen.event, seen.ts
        window = ts // (p.window_s * 1000)
        win = seen.state.win
        if win and window < win[0]:
            window = win[0]
        if not win:
            win = [window, 0, 0, 0, 0, 0, event.event_id, ts]
        win[1] += 1
        win[2] += event.outcome != "SUCCESS"
        win[3] += is_write(event.operation)
        win[4] += seen.new_resource
        win[5] += seen.new_operation
        if len(win) > 7:
            win[7] = max(win[7], ts)
        seen.state.win = win

    def _score_window(self, seen: Seen, p: CombinedParams) -> Finding | None:
        cfg, state, rate = seen.cfg, seen.state, seen.rate
        window, count, failures, writes, new_resources, new_ops = state.win[:6]
        if count < p.min_events:
            # Too few events to be judged, so not learned either: the model's reference is
            # the windows it judges. A sparse machine (most of them close a window on nearly
            # every event) then costs no model load and dump per event.
            return None
        start_ms = window * p.window_s * 1000
        expected = rate.expected_at(start_ms) * p.window_s / cfg.rate.interval_s
        learned_failures = float(state.fail[3]) if len(state.fail) > 3 else 0.0
        x = features(count, expected, failures, learned_failures, writes, new_resources, new_ops)
        store = seen.kv if seen.kv is not None else self.store
        if self.models is None or self.models.params != p:
            self.models = CombinedModels(p)
        score = self.models.score_and_learn(store, seen.group, x)
        if score is None or not seen.warm or score < p.page_at:
            return None
        # What another detector already explains is not news; this one is for the windows
        # where no single rule fired.
        if any(
            d != "combined" and seen.ts - ep.last_ms <= cfg.cooldown_s * 1000
            for d, ep in state.episodes.items()
        ):
            return None
        observed = explain(x, count, expected)
        minutes = p.window_s // 60
        return Finding(
            self.name,
            min(100.0, 50.0 + 50.0 * (score - p.page_at) / max(1e-9, 1.0 - p.page_at)),
            f"{seen.event.machine_id}'s {minutes} minutes from "
            f"{format_rfc3339_ms(start_ms)[11:16]} UTC were unusual as a whole: {count} "
            f"accesses (about {expected:.0f} expected), {observed['new_resources']} new "
            f"resources, {failures} failed, {writes} writes, {observed['new_operations']} new "
            "operations.",
            {**observed, "combined_score": round(score, 3)},
            {
                "events": round(expected, 1),
                "failure_ratio": round(learned_failures, 3),
                "window_minutes": minutes,
                "page_at": p.page_at,
            },
        )
