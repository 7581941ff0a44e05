"""Identities: the peer group a machine belongs to, and an identity new to every group.

A machine's peer group (its replicas, rotated pods, autoscaled instances) is named by an event
attribute, configured patterns, or the default rules for pod and instance names; a machine
seen for the first time joins it. An identity whose group nobody knows, once the store has
watched long enough, is a new identity.

A hostile identity is new whatever the warm-up and the groups say: one that renders like a
known identity (`detectors.confusables`: a Cyrillic a, a zero-width space, an RTL
override...) pages naming the identity it imitates, and one with invisible characters or a
label of mixed scripts pages as well. It is judged against the peer groups every worker
knows (the peers table), so it needs no state of its own, and only on a machine's first
event, when its id is not plain ASCII.

Imports: the standard library, `detectors` (base, confusables, peers) and `schemas.event`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from detectors import confusables
from detectors.base import Detector, Finding, Seen
from detectors.peers import PeerGroup, store_first_seen
from schemas.event import AuditEvent

# Scores of hostile identities: both page as high (70 <= score < 85).
IMITATION_SCORE = 80.0
SUSPICIOUS_SCORE = 72.0

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

    __slots__ = ("_by_machine", "attribute", "patterns")

    def __init__(self, attribute: str | None, patterns: Sequence[str]) -> None:
        self.attribute = attribute
        self.patterns = [re.compile(p) for p in patterns]
        # Past the attribute a machine's group depends on its id alone, and every event
        # asks: one dict lookup, not a walk of the patterns (bounded like default_group).
        self._by_machine: dict[str, str] = {}

    def of(self, event: AuditEvent) -> str:
        if self.attribute is not None:
            named = event.attributes.get(self.attribute)
            if named:
                return named
        machine = event.machine_id
        found = self._by_machine.get(machine)
        if found is None:
            found = self._of_machine(machine)
            if len(self._by_machine) >= 65_536:
                self._by_machine.clear()
            self._by_machine[machine] = found
        return found

    def _of_machine(self, machine_id: str) -> str:
        for pattern in self.patterns:
            m = pattern.search(machine_id)
            if m is not None:
                if "group" in pattern.groupindex:
                    found = m.group("group")
                else:
                    found = m.group(1) if pattern.groups else m.group(0)
                # A group that took no part in the match falls back to the whole match.
                return found or m.group(0)
        return default_group(machine_id)


@lru_cache(maxsize=16)
def _group_names(attribute: str | None, patterns: tuple[str, ...]) -> GroupNames:
    return GroupNames(attribute, patterns)


def _imitated(seen: Seen, look: confusables.Lookalike) -> tuple[str, str] | None:
    """(the known identity the new one renders as, its known group), if any: an ASCII
    spelling of the id whose peer group is known, by the rules that name the new one's group.
    Only ASCII spellings: for a non-ASCII name, a part-ASCII respelling is nobody's id, yet
    with the group named by an attribute it would land in the machine's own group."""
    names = _group_names(seen.cfg.group_attribute, tuple(seen.cfg.group_patterns))
    assert seen.kv is not None
    for candidate in look.candidates:
        if not candidate.isascii():
            continue
        group = names.of(replace(seen.event, machine_id=candidate))
        if PeerGroup(seen.kv, group).known:
            return candidate, group
    return None


def hostile(seen: Seen) -> Finding | None:
    """A finding when the new machine's id (or its group's name) imitates a known identity,
    hides invisible characters or mixes scripts in a label; None otherwise. Called only for
    an id or group name that is not plain ASCII."""
    assert seen.kv is not None
    event = seen.event
    machine, group = event.machine_id, seen.group
    subject = confusables.escaped(machine)
    look = confusables.inspect(machine)
    imitated = _imitated(seen, look) if look is not None else None
    if look is None and group != machine:
        # The id is plain, its group's name (from an attribute or a pattern) is not.
        look = confusables.inspect(group)
        subject = f"{subject}, whose peer group {confusables.escaped(group)}"
        for candidate in look.candidates if look is not None else ():
            if candidate.isascii() and PeerGroup(seen.kv, candidate).known:
                imitated = candidate, candidate
                break
    if look is None or (imitated is None and not (look.invisible or look.mixed)):
        return None
    characters = "; ".join(look.characters or look.invisible)
    observed: dict[str, str | float | int | None] = {
        "machine_id": machine,
        "group": group,
        "resource": event.resource,
        "operation": event.operation,
        "code_points": characters,
    }
    first = f"its first access was {event.operation} on {event.resource}."
    if imitated is not None:
        known, known_group = imitated
        observed["imitates"] = known
        whom = known if known == known_group else f"{known} (known group {known_group})"
        return Finding(
            NewIdentity.name,
            IMITATION_SCORE,
            f"{subject} imitates the known identity {whom}: {characters}; {first}",
            observed,
            {"known_identity": known, "known_group": known_group},
        )
    hidden = "invisible " + ", ".join(look.invisible) if look.invisible else ""
    why = "; ".join(x for x in (look.mixed, hidden) if x)
    return Finding(
        NewIdentity.name,
        SUSPICIOUS_SCORE,
        f"{subject} is a new identity with characters that hide what it is ({why}); {first}",
        observed,
        {"known_identity": "none"},
    )


class NewIdentity(Detector):
    """A machine seen for the first time whose peer group is unknown, once its store has
    watched for longer than the warm-up (before that every identity is new, and none is news).
    A hostile id (see `hostile`) is judged first, and pages from the store's first event on.
    Judged only on a machine's first event, with a store (`Seen.kv`); learning it makes the
    machine a member of its group, unless it was paged as hostile (an imitation must not
    count as a replica of what it imitates). Owns nothing in `MachineState`."""

    __slots__ = ()
    name = "new_identity"

    def score(self, seen: Seen) -> Finding | None:
        if seen.kv is None or seen.peers is None:
            return None
        first = store_first_seen(seen.kv, seen.ts, seen.watching_since_ms)
        if not (seen.event.machine_id.isascii() and seen.group.isascii()):
            found = hostile(seen)
            if found is not None:
                return found
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
        if found is not None and "code_points" in found.observed:
            return
        if seen.peers is not None and seen.kv is not None:
            seen.peers.join(seen.ts)
