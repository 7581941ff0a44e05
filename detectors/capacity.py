"""Bounds on what a store tracks, and on how fast it may page.

- Capacity: at most `max_machines` machines per store, least recently seen evicted first, and
  machines idle past the horizon expired; so a flood of random identities cannot exhaust
  memory or disk. Evicted machines start over as new if they return. The index is kept in
  memory: after a restart it holds the machines seen since, which bounds memory (the goal);
  older idle state on disk is expired once those machines are seen again.
- Storm control: at most `max_pages_per_minute` pages per store and event-time minute (and
  `max_new_identity_pages_per_minute` for new identities); pages beyond the cap are still
  written, at low severity, and one roll-up alert names how many pages and machines the
  minute had. A held-back page has not paged: the alert's next state at page severity
  after the storm pages, as `opened`. Caps apply per detection partition.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class MachineIndex:
    """Machines of one store in least-recently-seen order."""

    last_seen: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def touch(self, machine: str, ts_ms: int) -> None:
        seen = self.last_seen
        last = seen.get(machine)
        if last is None:
            seen[machine] = ts_ms  # a new key goes to the end already
            return
        # A late event must not make the machine look idle for longer than it is.
        if ts_ms > last:
            seen[machine] = ts_ms
        seen.move_to_end(machine)

    def over(self, limit: int) -> list[str]:
        """Machines to evict so that at most `limit` remain."""
        out: list[str] = []
        while len(self.last_seen) > limit:
            machine, _ = self.last_seen.popitem(last=False)
            out.append(machine)
        return out

    def idle(self, before_ms: int) -> list[str]:
        """Machines last seen before `before_ms` (scanning only from the oldest end)."""
        out: list[str] = []
        seen = self.last_seen
        # Peek at the oldest entry only: copying the index to iterate it cost O(machines) on
        # every sweep, which is every event.
        while seen:
            machine, ts = next(iter(seen.items()))
            if ts >= before_ms:
                break
            del seen[machine]
            out.append(machine)
        return out


@dataclass
class StormWindow:
    """Pages of one store in the current event-time minute."""

    minute: int = -1
    pages: int = 0
    held: int = 0
    by_detector: dict[str, int] = field(default_factory=dict)
    machines: set[str] = field(default_factory=set)
    rollup_sent: bool = False
    first_event_id: str = ""
