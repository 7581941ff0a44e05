"""Identities: the peer group a machine belongs to, and an identity new to every group.

A machine's peer group (its replicas, rotated pods, autoscaled instances) is named by an event
attribute, configured patterns, or the default rules for pod and instance names; a machine
seen for the first time joins it. An identity whose group nobody knows, once the store has
watched long enough, is a new identity.

Imports: the standard library, `detectors` (base, peers) and `schemas.event`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from detectors.base import Detector, Finding, Seen
from detectors.peers import store_first_seen
from schemas.event import AuditEvent

# Kubernetes pod names: <deployment>-<replicaset hash>-<pod suffix>. The hash uses the
# "safe" alphabet (no vowels), 5-10 chars; the pod suffix is 5 chars of the same alphabet.
_K8S_POD = re.compile(
    r"^(?P<group>.+?)-[bcdfghjklmnpqrstvwxz2456789]{5,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$"
)
# StatefulSet or numbered instances: name-07, name-3.
_NUMBERED = re.compile(r"^(?P<group>.+?)-\d{1,4}$")


@lru_cache(maxsize=65_536)
def default_group(machine_id: str) -> str:
    """The peer group of an identity: autoscaled and rotated instances of one workload share it."""
    m = _K8S_POD.match(machine_id) or _NUMBERED.match(machine_id)
    return m.group("group") if m else machine_id


class GroupNames:
    """Peer group names: an event attribute naming the group wins, then the patterns (regexes:
    the named group "group", else the first group, else the whole match), then
    `default_group`."""

    __slots__ = ("attribute", "patterns")

    def __init__(self, attribute: str | None, patterns: Sequence[str]) -> None:
        self.attribute = attribute
        self.patterns = [re.compile(p) for p in patterns]

    def of(self, event: AuditEvent) -> str:
        if self.attribute is not None:
            named = event.attributes.get(self.attribute)
            if named:
                return named
        for pattern in self.patterns:
            m = pattern.search(event.machine_id)
            if m is not None:
                if "group" in pattern.groupindex:
                    found = m.group("group")
                else:
                    found = m.group(1) if pattern.groups else m.group(0)
                # A group that took no part in the match falls back to the whole match.
                return found or m.group(0)
        return default_group(event.machine_id)


class NewIdentity(Detector):
    """A machine seen for the first time whose peer group is unknown, once its store has
    watched for longer than the warm-up (before that every identity is new, and none is news).
    Judged only on a machine's first event, with a store (`Seen.kv`); learning it makes the
    machine a member of its group. Owns nothing in `MachineState`."""

    __slots__ = ()
    name = "new_identity"

    def score(self, seen: Seen) -> Finding | None:
        if seen.kv is None or seen.peers is None:
            return None
        first = store_first_seen(seen.kv, seen.ts, seen.watching_since_ms)
        if seen.peers.known or seen.ts - first <= seen.cfg.warmup_s * 1000:
            return None
        event = seen.event
        return Finding(
            self.name,
            60.0,
            f"{event.machine_id} is a new identity with no known peer group; its first access "
            f"was {event.operation} on {event.resource}.",
            {
                "machine_id": event.machine_id,
                "group": seen.group,
                "resource": event.resource,
                "operation": event.operation,
            },
            {"known_group": "none"},
        )

    def learn(self, seen: Seen, found: Finding | None) -> None:
        if seen.peers is not None and seen.kv is not None:
            seen.peers.join(seen.ts)
