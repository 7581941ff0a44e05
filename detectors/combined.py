"""The combined score: a river HalfSpaceTrees model over per-machine window features.

Each rule in `detectors.core` judges one signal against one threshold. An intruder who stays
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
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np
from river.anomaly import HalfSpaceTrees

from detectors.peers import KeyValue

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


class _Model:
    """A river HalfSpaceTrees whose learned masses round-trip through bytes."""

    def __init__(self, p: CombinedParams) -> None:
        self.hst = HalfSpaceTrees(
            n_trees=p.n_trees,
            height=p.height,
            window_size=p.window_size,
            limits=dict(_LIMITS),
            seed=p.seed,
        )
        # The trees are built on the first learn_one; build them now so masses can be loaded.
        self.hst.learn_one(dict.fromkeys(FEATURES, 0.5))
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

    def _model(self, group: str, blob: bytes | None) -> _Model:
        hit = self._cache.get(group)
        if hit is not None:
            self._cache.move_to_end(group)
            if hit[0] == blob:
                return hit[1]
            model = hit[1]
        else:
            # Building the trees costs milliseconds; evicted models are reused.
            model = self._spare or _Model(self.params)
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
