"""The combined score: a river HalfSpaceTrees model over per-machine window features.

Each other detector judges one signal against one threshold. An intruder who stays
under every threshold (twice the usual rate, a couple of new tables, some denials, writes from
a mostly-reading client) is still unusual as a whole. Every `window_s` of a machine's event
time is summarised as features relative to that machine's own baseline, scaled to [0, 1], and
scored by one HalfSpaceTrees model per peer group (replicas share one; a group of one is a
machine), scored before it learns the window.

The model's tree structure is random but fixed by the seed and the feature limits, so only the
node masses are state: at most 1.3 kB per group at the defaults (compressed, usually a few
hundred bytes), kept in the group's store under `COMBINED`, and loaded again only when the
stored bytes differ from the cached copy (another worker owned the partition, a restore, a
rolled-back transaction). river draws the trees; the models walk them as flat lists
(`_Trees`), river's arithmetic on them unchanged.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace
from functools import lru_cache
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


class _Trees:
    """The trees of a HalfSpaceTrees model of `p`, as river draws them for the seed and the
    feature limits, flattened into lists in river's depth-first node order (the order the
    stored masses follow). Every group's model has the same trees, only its masses differ,
    so one `_Trees` serves them all and a new group's model is two lists of zeros, not a copy
    of some 600 river nodes (about a millisecond each, on the first windows of every group
    a worker meets)."""

    __slots__ = (
        "feature",
        "height",
        "left",
        "max_score",
        "n",
        "right",
        "roots",
        "size_limit",
        "threshold",
    )

    def __init__(self, p: CombinedParams) -> None:
        hst = HalfSpaceTrees(
            n_trees=p.n_trees,
            height=p.height,
            window_size=p.window_size,
            limits=dict(_LIMITS),
            seed=p.seed,
        )
        # river draws the trees on the first learn_one.
        hst.learn_one(dict.fromkeys(FEATURES, 0.5))
        nodes = [node for tree in hst._tree_nodes for node in tree]
        index = {id(node): i for i, node in enumerate(nodes)}
        self.n = len(nodes)
        self.roots = [index[id(tree)] for tree in hst.trees]
        self.height = p.height
        # Leaves get feature -1: a full-height walk never reads past them.
        self.feature = [FEATURES.index(n.feature) if _branch(n) else -1 for n in nodes]
        self.left = [index[id(n.children[0])] if _branch(n) else -1 for n in nodes]
        self.right = [index[id(n.children[1])] if _branch(n) else -1 for n in nodes]
        self.threshold = [float(getattr(n, "threshold", 0.0)) for n in nodes]
        self.size_limit = 0.1 * p.window_size
        self.max_score = hst._max_score


def _branch(node: Any) -> bool:
    return getattr(node, "children", None) is not None


@lru_cache(maxsize=8)
def _trees(p: CombinedParams) -> _Trees:
    return _Trees(p)


class _Model:
    """One group's HalfSpaceTrees: river's algorithm (`score_one`, `learn_one` and the window
    pivot) on the shared `_Trees`, its masses as two lists that round-trip through bytes.
    Every feature of `features` is always present, so river's path for a missing feature is
    never taken."""

    __slots__ = ("counter", "first_window", "l_mass", "learned", "narrow", "r_mass", "trees")

    def __init__(self, p: CombinedParams) -> None:
        self.trees = _trees(p)
        self.narrow = p.window_size <= 255
        self.load(None)

    def load(self, blob: bytes | None) -> None:
        n = self.trees.n
        if blob is None:
            self.r_mass, self.l_mass = [0] * n, [0] * n
            self.counter, self.first_window, self.learned = 0, True, 0
            return
        head = np.frombuffer(blob, dtype=_HEADER, count=3)
        body = blob[head.nbytes :]
        if len(body) == 4 * n:
            # The first layout: uncompressed (r, l) pairs of little-endian u2.
            masses = np.frombuffer(body, dtype="<u2")
            rs, ls = masses[0::2].tolist(), masses[1::2].tolist()
        else:
            raw = zlib.decompress(body)
            wide = len(raw) == 4 * n
            if not wide and len(raw) != 2 * n:
                raise ValueError("combined-score state does not match the model's shape")
            masses = np.frombuffer(raw, dtype="<u2" if wide else "u1")
            rs, ls = masses[:n].tolist(), masses[n:].tolist()
        self.r_mass, self.l_mass = rs, ls
        self.counter, self.first_window, self.learned = int(head[0]), bool(head[1]), int(head[2])

    def dump(self) -> bytes:
        """Header, then zlib of every node's reference masses and then its latest masses, one
        byte each while a window fits in one (at most `window_size` learns land in a node):
        masses are small, repetitive counts, so this is a few hundred bytes, not 2.5 kB."""
        head = np.array([self.counter, self.first_window, self.learned], dtype=_HEADER)
        rs, ls = self.r_mass, self.l_mass
        raw = bytes(rs) + bytes(ls) if self.narrow else np.array(rs + ls, dtype="<u2").tobytes()
        return head.tobytes() + zlib.compress(raw, 1)

    def score_one(self, x: dict[str, float]) -> float:
        """river's `HalfSpaceTrees.score_one` (call it once the first window is complete)."""
        t = self.trees
        values = [x[f] for f in FEATURES]
        feature, threshold, left, right = t.feature, t.threshold, t.left, t.right
        r_mass, size_limit, height = self.r_mass, t.size_limit, t.height
        score = 0.0
        for root in t.roots:
            node, depth_pow, tree_score = root, 1, 0.0
            for _ in range(height):
                r = r_mass[node]
                tree_score += r * depth_pow
                if r < size_limit:
                    break
                node = left[node] if values[feature[node]] < threshold[node] else right[node]
                depth_pow <<= 1
            else:
                tree_score += r_mass[node] * depth_pow
            score += tree_score
        return 1 - score / t.max_score

    def learn_one(self, x: dict[str, float], window_size: int) -> None:
        """river's `HalfSpaceTrees.learn_one`: count `x` along its path in every tree; the
        latest masses become the reference every `window_size` learns."""
        t = self.trees
        values = [x[f] for f in FEATURES]
        feature, threshold, left, right = t.feature, t.threshold, t.left, t.right
        l_mass, height = self.l_mass, t.height
        for root in t.roots:
            node = root
            for _ in range(height):
                l_mass[node] += 1
                node = left[node] if values[feature[node]] < threshold[node] else right[node]
            l_mass[node] += 1
        self.counter += 1
        if self.counter == window_size:
            self.r_mass, self.l_mass = l_mass, [0] * t.n
            self.first_window = False
            self.counter = 0


class CombinedModels:
    """The per-group models, cached and checked against the store.

    `deferred`: a learned model is kept live and written to its store only by `flush` (the
    core's: before a runtime commits, and when it drops a partition) or when it must leave
    the cache, rather than after every judged window: one dump per group and commit instead
    of one per window. What is read back is the same either way, because a model is only
    written where it is the one writer (a worker's own records, `streams.runtime.peers`):
    while its store still holds the bytes the model was loaded from or last wrote, nobody
    else has changed it, and when it holds others (a restore, a rewind), those replace the
    model exactly as they would have replaced what it wrote."""

    def __init__(self, params: CombinedParams, cache_size: int = 512) -> None:
        self.params = params
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[bytes | None, _Model]] = OrderedDict()
        self.deferred = False
        # group -> the store its learned, unwritten model goes to (deferred only).
        self._pending: dict[str, KeyValue] = {}

    def _model(self, group: str, blob: bytes | None) -> _Model:
        hit = self._cache.get(group)
        if hit is not None:
            self._cache.move_to_end(group)
            if hit[0] == blob:
                return hit[1]
            # Someone else's bytes: they replace what the model learned since, as they would
            # have overwritten it had it been written.
            self._pending.pop(group, None)
            model = hit[1]
            model.load(blob)
        else:
            model = _Model(self.params)
            if blob is not None:
                model.load(blob)
        self._cache[group] = (blob, model)
        if len(self._cache) > self.cache_size:
            evicted, (_, old) = self._cache.popitem(last=False)
            store = self._pending.pop(evicted, None)
            if store is not None:
                store.set(COMBINED, evicted, old.dump())
        return model

    def score_and_learn(self, kv: KeyValue, group: str, x: dict[str, float]) -> float | None:
        """Score `x` against `group`'s model, then learn it. None while the model has not
        completed its first reference window (nothing to compare with yet)."""
        if self.deferred:
            # A partition's store keeps group kinds in the worker's shared one (`shared`):
            # that is where the model lives, whichever partition's machine reaches it.
            kv = getattr(kv, "shared", kv)
            pending = self._pending.get(group)
            if pending is not None and pending is not kv:
                self._write(group, pending)
        blob = kv.get(COMBINED, group)
        model = self._model(group, blob)
        score = None if model.first_window else float(model.score_one(x))
        model.learn_one(x, self.params.window_size)
        model.learned += 1
        if self.deferred and group in self._cache:
            self._pending[group] = kv
        else:
            out = model.dump()
            kv.set(COMBINED, group, out)
            self._cache[group] = (out, model)
        return score

    def _write(self, group: str, kv: KeyValue) -> None:
        del self._pending[group]
        hit = self._cache.get(group)
        if hit is None:
            return
        out = hit[1].dump()
        kv.set(COMBINED, group, out)
        self._cache[group] = (out, hit[1])

    def flush(self) -> int:
        """Write every learned model to its store; returns how many."""
        pending = list(self._pending.items())
        for group, kv in pending:
            self._write(group, kv)
        return len(pending)


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

    __slots__ = ("deferred", "models", "store")
    name = "combined"
    owns = ("win",)

    def __init__(self) -> None:
        self.models: CombinedModels | None = None
        self.store = MemoryKV()
        # Keep learned models live until `flush` (`CombinedModels.deferred`): set by a core
        # that keeps a working copy, which flushes before every commit.
        self.deferred = False

    def keep_live(self) -> None:
        self.deferred = True
        if self.models is not None:
            self.models.deferred = True

    def flush(self) -> int:
        """Write the models learned since the last flush to their stores."""
        return self.models.flush() if self.models is not None else 0

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

    def run(self, seen: Seen) -> Finding | None:
        """`score` then `learn`, with `score` called only when the event closes the open
        window (most events do not)."""
        p = seen.cfg.combined
        if p is None:
            return None
        win = seen.state.win
        found = self.score(seen) if win and seen.ts // (p.window_s * 1000) > win[0] else None
        self.learn(seen, found)
        return found

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
            if self.models is not None:
                self.models.flush()
            self.models = CombinedModels(p)
            self.models.deferred = self.deferred
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
