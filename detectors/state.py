"""A machine's state: what every detector remembers about it, and how it is kept.

`MachineState` is one record per machine, serialised as a compact JSON-friendly dict (its
keys are the changelog format: keep them as they are, or existing state needs a re-seed).
Each detector owns some of its fields (see the detector's class). `WorkingCopy` keeps states
decoded between checkpoints for a runtime.

Imports: the standard library, orjson and the detectors' state classes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors.incidents import Episode
from detectors.peers import KeyValue
from detectors.rate import RateBaseline, RateParams

# Key kind of machine state in the store.
MACHINE = b"m"


@dataclass(slots=True)
class MachineState:
    """Everything remembered about one machine; serialised as a JSON-friendly dict. The
    detectors own their fields (`Detector.owns`): `rate` and `peak` the access rate,
    `resources` and `recent_new` new resources, `ops` operations, `fail` the failure ratio,
    `off`, `hmax` and `sched` off hours, `win` the combined score, `silence` silence's rhythm;
    `episodes` are the incidents'; the core keeps `first_ms`, `last_ms` and `n`.
    Format note: "sc" (the schedule) and "sl" (the rhythm) came with issue 16; a record without
    them loads with an empty schedule and rhythm, so that machine is judged as newly watched by
    off-hours and is not paged for silence until it has been watched again for a day (or
    re-seeded from the archive)."""

    first_ms: int
    last_ms: int
    n: int
    resources: dict[str, int]  # normalised resource -> last seen (ms)
    rate: list[Any]
    recent_new: list[list[Any]]  # [ms, resource] of new resources inside the fan-out window
    episodes: dict[str, Episode]
    ops: dict[str, int] = field(default_factory=dict)  # operation -> last seen (ms)
    # [interval, accesses in it, failures in it, learned failure ratio, intervals learned]
    fail: list[Any] = field(default_factory=lambda: [-1, 0, 0, 0.0, 0])
    # [window, events in it, alerted, first ms, events spaced apart, last spaced ms]
    off: list[int] = field(default_factory=list)
    hmax: list[int] = field(default_factory=list)  # most events seen per window of the day
    peak: list[Any] = field(default_factory=list)  # [interval, count in it, decayed peak]
    # the combined score's open window: [window, events, failures, writes, new resources,
    # new operations, first event id, last event ms]
    win: list[Any] = field(default_factory=list)
    # [day, per window of the day: a mask of the days it was active] (detectors.schedule)
    sched: list[int] = field(default_factory=list)
    silence: list[int] = field(default_factory=list)  # detectors.silence.learn's rhythm
    # The rate model as a live object while a worker keeps this state between events; `rate`
    # is its serialised form, brought up to date by to_dict.
    live_rate: RateBaseline | None = field(default=None, compare=False, repr=False)

    @classmethod
    def new(cls, ts_ms: int) -> MachineState:
        return cls(ts_ms, ts_ms, 0, {}, [], [], {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "f": self.first_ms,
            "l": self.last_ms,
            "n": self.n,
            "r": self.resources,
            "q": self.rate_state(),
            "w": self.recent_new,
            # Most machines have no open episode: no comprehension to run for them.
            "e": {k: v.to_list() for k, v in self.episodes.items()} if self.episodes else {},
            "o": self.ops,
            "x": self.fail,
            "h": self.off,
            "k": self.hmax,
            "pk": self.peak,
            "cw": self.win,
            "sc": self.sched,
            "sl": self.silence,
        }

    def rate_state(self) -> list[Any]:
        return self.live_rate.state() if self.live_rate is not None else self.rate

    def rate_baseline(self, params: RateParams) -> RateBaseline:
        """The machine's rate model under `params`, kept live on the state (its dump is exact,
        so keeping it is the same as loading it from `rate` again)."""
        live = self.live_rate
        if live is None or (live.params is not params and live.params != params):
            live = self.live_rate = RateBaseline(params, self.rate_state())
        return live

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineState:
        return cls(
            d["f"],
            d["l"],
            d["n"],
            d["r"],
            d["q"],
            d["w"],
            {k: Episode.from_list(v) for k, v in d["e"].items()},
            d.get("o", {}),
            d.get("x", [-1, 0, 0, 0.0, 0]),
            d.get("h", []),
            d.get("k", []),
            d.get("pk", []),
            d.get("cw", []),
            d.get("sc", []),
            d.get("sl", []),
        )


def _encode_state(state: MachineState) -> bytes:
    return orjson.dumps(state.to_dict())


def _decode_state(raw: bytes) -> MachineState:
    return MachineState.from_dict(orjson.loads(raw))


class WorkingCopy:
    """Machine states kept decoded between checkpoints, written to their stores only when the
    runtime flushes (before it commits a checkpoint, so the changelog holds what the committed
    offsets imply, exactly as when every event wrote its state through).

    Reading and writing a machine's state through the store cost a decode and an encode per
    event; with this they cost one of each per machine per checkpoint. Bounded: after a flush
    at most `max_machines` states are kept, the least recently used dropped (they are clean
    then, so dropping them loses nothing). Between flushes it also holds every machine changed
    since the last one; the runtime drops a partition's states when it loses the partition."""

    __slots__ = ("dirty", "max_machines", "states")

    def __init__(self, max_machines: int) -> None:
        if max_machines < 0:
            raise ValueError(f"max_machines must be >= 0, got {max_machines}")
        self.max_machines = max_machines
        self.states: OrderedDict[tuple[Any, str], MachineState] = OrderedDict()
        self.dirty: dict[Any, set[str]] = {}

    def get(self, kv: KeyValue, partition: Any, machine: str) -> MachineState | None:
        key = (partition, machine)
        state = self.states.get(key)
        if state is not None:
            self.states.move_to_end(key)
            return state
        raw = kv.get(MACHINE, machine)
        if raw is None:
            return None
        state = self.states[key] = _decode_state(raw)
        return state

    def put(self, partition: Any, machine: str, state: MachineState) -> None:
        key = (partition, machine)
        states = self.states
        # The state `get` returned (the usual case) is already the most recently used.
        if states.get(key) is not state:
            states[key] = state
            states.move_to_end(key)
        dirty = self.dirty.get(partition)
        if dirty is None:
            dirty = self.dirty[partition] = set()
        dirty.add(machine)

    def delete(self, kv: KeyValue, partition: Any, machine: str) -> None:
        kv.delete(MACHINE, machine)
        self.discard(partition, machine)

    def discard(self, partition: Any, machine: str) -> None:
        """Forget the machine's decoded state, changed or not; the store's copy stays."""
        self.states.pop((partition, machine), None)
        dirty = self.dirty.get(partition)
        if dirty is not None:
            dirty.discard(machine)

    def dirty_partitions(self) -> list[Any]:
        return [p for p, machines in self.dirty.items() if machines]

    def flush(self, kv: KeyValue, partition: Any) -> int:
        """Write the partition's changed states to `kv`; returns how many."""
        machines = self.dirty.pop(partition, None)
        if not machines:
            return 0
        states, set_, dumps = self.states, kv.set, orjson.dumps
        # `_encode_state` without its frame: one call fewer per changed machine.
        for machine in machines:
            set_(MACHINE, machine, dumps(states[(partition, machine)].to_dict()))
        return len(machines)

    def trim(self) -> None:
        """Drop the least recently used clean states beyond the bound."""
        states, dirty = self.states, self.dirty
        excess = len(states) - self.max_machines
        if excess <= 0:
            return
        dropped: list[tuple[Any, str]] = []
        for key in states:
            if excess <= 0:
                break
            if key[1] in dirty.get(key[0], ()):
                continue
            dropped.append(key)
            excess -= 1
        for key in dropped:
            del states[key]

    def drop(self, partition: Any) -> None:
        """Forget the partition's states, changed or not: its store is gone or another worker
        may have changed it since (a rebalance), or its checkpoint was abandoned."""
        self.dirty.pop(partition, None)
        for key in [k for k in self.states if k[0] == partition]:
            del self.states[key]
