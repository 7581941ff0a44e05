"""What every detector shares: the interface, the event as detectors see it, and a finding.

A detector is judged on one event at a time, in two steps the core calls in this order:

- `score(seen)` judges the event against what the detector learned before it and returns a
  `Finding`, or None. It may bring the detector's open window or interval up to the event
  (closing the ones the event has moved past, which teaches them, and counting the event in),
  since that is what the event is judged in; it never teaches the event itself to a baseline.
- `learn(seen, found)` then teaches the event to the detector's baselines. It is given what
  `score` found, because what pages must not become normal (a peer group does not learn what
  one of its members was paged for).

A detector keeps no state of its own between events: each owns some fields of the machine's
`MachineState` (`Detector.owns`), bounded there, and reads the rest. `Detector.run` runs both
steps. Detectors run in the order the core calls them, and a later one may
read what an earlier one noted on `Seen` (the combined score reads whether the resource and
the operation were new).

Imports: the standard library only; the rest is for type checking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from detectors.config import DetectorConfig
    from detectors.peers import KeyValue, PeerGroup
    from detectors.rate import RateBaseline
    from detectors.state import MachineState
    from schemas.alert import Scalar
    from schemas.event import AuditEvent


@dataclass(frozen=True, slots=True)
class Finding:
    """What one detector saw in one event: the score and its plain-words explanation.
    `anchor`, when set, is the event the alert is anchored on instead of the one scored (a
    window judged when the next one starts is anchored on the window's own events)."""

    detector: str
    score: float
    summary: str
    observed: dict[str, Scalar]
    expected: dict[str, Scalar]
    anchor: AuditEvent | None = None


@dataclass(slots=True)
class Seen:
    """One event with what the core worked out for it once, for every detector to read."""

    event: AuditEvent
    ts: int  # the event time in epoch milliseconds
    group: str
    cfg: DetectorConfig  # the machine's effective config
    state: MachineState
    peers: PeerGroup | None  # None: judged without a peer group (no store)
    kv: KeyValue | None
    rate: RateBaseline  # the machine's rate model, live on its state
    warm: bool = False  # the machine (or its group) has been watched long enough to judge
    # The earliest event time of any store, for a new machine's first event (NewIdentity).
    watching_since_ms: int | None = None
    # Noted by the detectors that find them out, for the ones after.
    resource: str = ""  # the event's resource, normalised
    new_resource: bool = False  # new to the machine and its peers
    new_operation: bool = False  # new to the machine and its peers


class Detector:
    """One detector: `score` then `learn` (see the module docstring); `name` is the detector
    named in its findings and alerts."""

    __slots__ = ()
    name: ClassVar[str] = ""
    # The `MachineState` fields it may change (and keeps bounded); it reads others.
    owns: ClassVar[tuple[str, ...]] = ()

    def score(self, seen: Seen) -> Finding | None:
        raise NotImplementedError

    def learn(self, seen: Seen, found: Finding | None) -> None:
        """Nothing to learn by default: some detectors learn only as their windows close."""

    def run(self, seen: Seen) -> Finding | None:
        """Score the event, then learn it; what the core calls."""
        found = self.score(seen)
        self.learn(seen, found)
        return found
