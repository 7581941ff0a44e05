"""Operations: an operation the machine (and its peer group) has not performed before.

A destructive verb from a read-only client scores highest, a write from one less, another new
read-like operation is only noted. `is_write` and `is_destructive` classify operation names
(SQL, Redis, HTTP and cloud API verbs) for the other detectors too.

Imports: the standard library and `detectors.base`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from detectors.base import Detector, Finding, Seen

# Verbs (SQL, Redis, HTTP, cloud API names after the service prefix) that destroy or rewrite.
_DESTRUCTIVE = re.compile(
    r"^(?:[\w.-]+:)*(DELETE|DROP|TRUNCATE|ALTER|GRANT|REVOKE|PURGE|DESTROY|REMOVE|FLUSHALL|"
    r"FLUSHDB|DEL|TERMINATE|DISABLE|STOPLOGGING|PUTBUCKETPOLICY|ATTACH|DETACH)"
)
_READ = re.compile(
    r"^(?:[\w.-]+:)*(SELECT|GET|LIST|READ|DESCRIBE|HEAD|SCAN|CONSUME|QUERY|FETCH|SUBSCRIBE|"
    r"LOOKUP|SEARCH|WATCH|MGET|HGET|EXISTS|CHECK|VIEW|LOOKUP)"
)


# Cached: the combined score classifies every event's operation, and a fleet uses few.
@lru_cache(maxsize=4096)
def is_destructive(operation: str) -> bool:
    return _DESTRUCTIVE.match(operation.upper()) is not None


@lru_cache(maxsize=4096)
def is_write(operation: str) -> bool:
    return _READ.match(operation.upper()) is None


class NewOperation(Detector):
    """An operation this machine does not perform; destructive ones from a read-only client
    score highest. Owns `MachineState.ops` (operation -> last seen ms, at most
    `max_operations`, the least recently seen forgotten first); the peer group learns the
    operations its members perform, except those that page. Notes `Seen.new_operation`."""

    __slots__ = ()
    name = "operation"
    owns = ("ops",)

    def score(self, seen: Seen) -> Finding | None:
        op = seen.event.operation.upper()
        ops, peers = seen.state.ops, seen.peers
        if op in ops:
            return None
        known_to_peers = peers is not None and peers.uses_operation(op)
        seen.new_operation = not known_to_peers
        if not seen.warm or known_to_peers or not seen.state.n:
            return None
        read_only = all(not is_write(o) for o in ops)
        if is_destructive(op):
            score = 80.0 if read_only else 55.0
        elif is_write(op) and read_only:
            score = 50.0
        else:
            # A new read-like operation is usually a code path seldom taken: worth noting,
            # not worth a page.
            score = 35.0
        # The operations known once this one is learned: learning it may forget the least
        # recently seen (see learn).
        forgotten = _forgotten(ops, op, seen.ts, seen.cfg.max_operations)
        kind = "read-only " if read_only else ""
        return Finding(
            self.name,
            score,
            f"{seen.event.machine_id}, a {kind}client, performed {op} on "
            f"{seen.event.resource}, an operation it had not used before.",
            {"operation": op, "resource": seen.event.resource},
            {"operations": ", ".join(sorted(o for o in ops if o != forgotten))[:200]},
        )

    def run(self, seen: Seen) -> Finding | None:
        """`score` then `learn`, with the usual case (an operation the machine performs)
        settled in one lookup: nothing to find, and only its last-seen time to move."""
        op = seen.event.operation.upper()
        ops = seen.state.ops
        last = ops.get(op)
        if last is not None:
            if seen.ts > last:
                ops[op] = seen.ts
            return None
        found = self.score(seen)
        self.learn(seen, found)
        return found

    def learn(self, seen: Seen, found: Finding | None) -> None:
        op = seen.event.operation.upper()
        ts = seen.ts
        ops = seen.state.ops
        if op in ops:
            ops[op] = max(ts, ops[op])
            return
        ops[op] = ts
        if len(ops) > seen.cfg.max_operations:
            oldest = min(ops, key=ops.__getitem__)
            del ops[oldest]
        # Only what does not page teaches the group: one compromised replica must not make the
        # same behaviour normal for all of them.
        if seen.peers is not None and (found is None or found.score < 50):
            seen.peers.learn_operation(op, ts)


def _forgotten(ops: dict[str, int], op: str, ts: int, limit: int) -> str | None:
    """The operation `learn` forgets when it adds `op` (seen at `ts`) to `ops`, if any: the
    least recently seen, the first of equals in the order they were learned, `op` last."""
    if len(ops) + 1 <= limit:
        return None
    oldest = min(ops, key=ops.__getitem__)
    return oldest if ops[oldest] <= ts else op
