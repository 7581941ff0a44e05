"""Peer groups: what a machine's group (its replicas, rotated pods, autoscaled instances) uses.

A new member of a known group is judged against the group, not as a stranger, and a resource
its peers already use is not news. Group knowledge is kept as many small keys (one per group
resource or operation) rather than one large value, so a lookup is one point read and the
common case (the machine already knows what it touches) costs nothing.
"""

from __future__ import annotations

import math
from typing import Protocol

import orjson

# Key kinds in the store: group meta, group resources, group operations, store-wide facts.
_META = b"gm"
_RESOURCE = b"gr"
_OPERATION = b"go"
_WINDOWS = b"gh"
_SCHEDULE = b"gs"
_PEAK = b"gp"
_STORE = b"p"
# A burst is routine for a group when this many of its other members reached its level.
GROUP_PEAK_MEMBERS = 2
# Members' peaks kept per group: the highest GROUP_PEAK_MEMBERS others of any member.
_PEAK_KEPT = GROUP_PEAK_MEMBERS + 1
# Every kind of group knowledge, the combined model's trees (detectors.combined) included:
# what a runtime shares between the partitions a group's machines are spread over.
GROUP_KINDS = frozenset({_META, _RESOURCE, _OPERATION, _WINDOWS, _SCHEDULE, _PEAK, b"gc"})
_SEP = "\x1f"
# A group's knowledge is refreshed at most this often per resource, to bound writes.
_REFRESH_MS = 3_600_000


class KeyValue(Protocol):
    """Bytes by (kind, key): Quix state through the runtime, a dict in replay and tests."""

    def get(self, kind: bytes, key: str) -> bytes | None: ...
    def set(self, kind: bytes, key: str, value: bytes) -> None: ...
    def delete(self, kind: bytes, key: str) -> None: ...


class PeerGroup:
    """One group's shared knowledge, read and written through a KeyValue."""

    __slots__ = ("_meta", "_schedule", "_windows", "group", "kv")

    def __init__(self, kv: KeyValue, group: str) -> None:
        self.kv = kv
        self.group = group
        raw = kv.get(_META, group)
        # [first seen ms, members, last time a member joined ms]
        self._meta: list[int] | None = orjson.loads(raw) if raw is not None else None
        self._windows: list[int] | None = None
        self._schedule: list[int] | None = None

    @property
    def known(self) -> bool:
        return self._meta is not None

    @property
    def members(self) -> int:
        return self._meta[1] if self._meta is not None else 0

    @property
    def first_ms(self) -> int:
        """When the group's first member was seen (0 for a group nobody knows)."""
        return self._meta[0] if self._meta is not None else 0

    def warm(self, ts_ms: int, warmup_ms: int) -> bool:
        return self._meta is not None and ts_ms - self._meta[0] >= warmup_ms

    def join(self, ts_ms: int) -> None:
        """A machine seen for the first time joins its group."""
        if self._meta is None:
            self._meta = [ts_ms, 0, ts_ms]
        elif len(self._meta) < 3:
            self._meta.append(ts_ms)
        self._meta[1] += 1
        self._meta[2] = max(self._meta[2], ts_ms)
        self.kv.set(_META, self.group, orjson.dumps(self._meta))

    @property
    def last_join_ms(self) -> int:
        if self._meta is None or len(self._meta) < 3:
            return 0
        return self._meta[2]

    def uses_resource(self, resource: str) -> bool:
        return self.kv.get(_RESOURCE, self.group + _SEP + resource) is not None

    def uses_operation(self, operation: str) -> bool:
        return self.kv.get(_OPERATION, self.group + _SEP + operation) is not None

    def busiest(self) -> list[int]:
        """The most events any member made in each window of the day (see note_window), as
        this view first read them."""
        if self._windows is None:
            raw = self.kv.get(_WINDOWS, self.group)
            self._windows = orjson.loads(raw) if raw is not None else []
        return self._windows

    def note_window(self, slot: int, slots: int, count: int) -> None:
        """A member closed a window of the day with `count` events: the group's time-of-day
        habits, so one CI runner's evening build is not 'off hours' when its peers build
        every evening."""
        raw = self.kv.get(_WINDOWS, self.group)
        windows: list[int] = orjson.loads(raw) if raw is not None else []
        if len(windows) != slots:
            windows = [0] * slots
        if count > windows[slot]:
            windows[slot] = count
            self.kv.set(_WINDOWS, self.group, orjson.dumps(windows))

    def schedule(self) -> list[int]:
        """The group's schedule (`detectors.schedule`): on which days any member was active
        in each window of the day."""
        if self._schedule is None:
            raw = self.kv.get(_SCHEDULE, self.group)
            self._schedule = orjson.loads(raw) if raw is not None else []
        return self._schedule

    def save_schedule(self, schedule: list[int]) -> None:
        self._schedule = schedule
        self.kv.set(_SCHEDULE, self.group, orjson.dumps(schedule))

    def recent_peak(self, ts_s: float, half_life_s: float, member: str) -> float:
        """The level at least `GROUP_PEAK_MEMBERS` members other than `member` reached in one
        interval, decayed by `half_life_s` to `ts_s` (see note_peak); 0 for a group where
        fewer members have noted one. Other members only, so a member's own burst cannot
        vouch for itself; several of them, so one member's odd burst (an anomaly nobody
        paged) does not make bursts that high routine for the whole group."""
        raw = self.kv.get(_PEAK, self.group)
        if raw is None:
            return 0.0
        levels = sorted((v for k, v in orjson.loads(raw).items() if k != member), reverse=True)
        if len(levels) < GROUP_PEAK_MEMBERS:
            return 0.0
        return float(2.0 ** (levels[GROUP_PEAK_MEMBERS - 1] - ts_s / half_life_s))

    def note_peak(self, member: str, count: int, ts_s: float, half_life_s: float) -> None:
        """`member` closed an interval starting at `ts_s` with `count` accesses: the group's
        recent peaks, so a CI runner's first build is judged against the builds its peers run
        every day. Each member's peak is kept as log2(peak) + t / half-life, the peak's value
        decayed back to the epoch (the larger of two is the larger peak at any time), and
        only the `_PEAK_KEPT` highest members' are kept: bounded, and enough for the
        `GROUP_PEAK_MEMBERS`-th highest of any member's others. See merge_peaks for how
        writers combine."""
        if count <= 0:
            return
        level = round(math.log2(count) + ts_s / half_life_s, 6)
        raw = self.kv.get(_PEAK, self.group)
        peaks: dict[str, float] = orjson.loads(raw) if raw is not None else {}
        if level <= peaks.get(member, -math.inf):
            return
        peaks[member] = level
        if len(peaks) > _PEAK_KEPT:
            peaks = _top_peaks(peaks)
            if member not in peaks:
                return
        self.kv.set(_PEAK, self.group, orjson.dumps(peaks))

    def learn_resource(self, resource: str, ts_ms: int) -> None:
        self._learn(_RESOURCE, resource, ts_ms)

    def learn_operation(self, operation: str, ts_ms: int) -> None:
        self._learn(_OPERATION, operation, ts_ms)

    def _learn(self, kind: bytes, name: str, ts_ms: int) -> None:
        key = self.group + _SEP + name
        raw = self.kv.get(kind, key)
        if raw is None or ts_ms - int(raw) >= _REFRESH_MS:
            self.kv.set(kind, key, str(ts_ms).encode())


def store_first_seen(kv: KeyValue, ts_ms: int, watching_since_ms: int | None = None) -> int:
    """When this store (a partition, or a whole replay) started watching: before it has
    watched long enough, every identity is 'new' and none is news. A store's first event can
    come long after the pipeline started (a small fleet leaves some partitions empty for
    hours), so a new store starts from `watching_since_ms`, the earliest event time the
    detection core has seen in any store, when that is earlier."""
    raw = kv.get(_STORE, "first")
    if raw is None:
        first = ts_ms if watching_since_ms is None else min(ts_ms, watching_since_ms)
        kv.set(_STORE, "first", str(first).encode())
        return first
    return int(raw)


def merge_peaks(values: list[bytes]) -> bytes:
    """Writers' `gp` records of one group as one: each member's highest level, the
    `_PEAK_KEPT` highest members kept. A member one writer dropped had that many higher ones
    there, which the merge keeps too, so merging in any order or grouping gives the same."""
    peaks: dict[str, float] = {}
    for raw in values:
        for member, level in orjson.loads(raw).items():
            if level > peaks.get(member, -math.inf):
                peaks[member] = level
    return orjson.dumps(_top_peaks(peaks))


def _top_peaks(peaks: dict[str, float]) -> dict[str, float]:
    # Ties broken by name, so every writer keeps the same members.
    return dict(sorted(peaks.items(), key=lambda p: (-p[1], p[0]))[:_PEAK_KEPT])
