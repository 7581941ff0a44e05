"""Resources: a resource new to the machine and its peer group, and a fan-out of them.

Resources are judged at a normalised level (`normalise_resource`), so that every object key or
row id is not "new". One new resource is worth a look; several within `fanout_window_s` (an
enumeration) far more.

Imports: the standard library and `detectors.base`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from detectors.base import Detector, Finding, Seen

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{16,}(?![0-9A-Za-z])")
# Short numbers are usually part of a name (t1, api-key-3, db-01); long ones are ids.
_LONG_NUM = re.compile(r"\d{4,}")


def _segment(seg: str) -> str:
    if seg.isdigit():
        return "{n}"
    # Most segments are too short to hold a UUID (36 characters) or a hash (16 or more).
    if len(seg) >= 36:
        seg = _UUID.sub("{uuid}", seg)
    if len(seg) >= 16:
        seg = _HEX.sub("{hex}", seg)
    seg = _LONG_NUM.sub("{n}", seg)
    key, eq, value = seg.partition("=")
    if eq and value.isdigit():
        return key + "={n}"
    return seg


@lru_cache(maxsize=262_144)
def normalise_resource(resource: str, depth: int = 2) -> str:
    """The level at which a resource is judged new: scheme and host, then at most `depth` path
    segments with ids (numbers, UUIDs, hashes) replaced by placeholders, so that every object key
    or row id is not 'new'. `s3://bucket/2026/11/inv-8341.pdf` -> `s3://bucket/{n}/{n}`."""
    # What follows the judged segments (an object key, a row id) makes most resources unique,
    # so behind the cache of whole resources is one keyed on the part that is judged: cut at
    # the slash that ends it (`_judged`), or judge it whole when there is none.
    m = _judged(depth)(resource)
    return _normalise(resource if m is None else resource[: m.end()], depth)


@lru_cache(maxsize=64)
def _judged(depth: int) -> Callable[[str], re.Match[str] | None]:
    """A match of a resource up to the slash that ends its judged part: the scheme (the first
    `://` before any `?`), then the host and `depth` segments, each after any empty ones; no
    match when the part before the query has no slash after them. Atomic and possessive, so a
    segment is never split nor a later `://` tried: one scan, where a loop of finds took a
    microsecond."""
    segments = max(depth, 0) + 1
    return re.compile(r"(?>(?:[^?]*?://)?)(?:/*+[^/?]++){" + str(segments) + "}(?=/)").match


@lru_cache(maxsize=65_536)
def _normalise(resource: str, depth: int) -> str:
    base, _, _query = resource.partition("?")
    scheme, sep, rest = base.partition("://")
    if not sep:
        scheme, rest = "", base
    parts = [p for p in rest.split("/") if p]
    if not parts:
        return resource
    host, path = parts[0], parts[1 : 1 + depth]
    norm = "/".join([host, *map(_segment, path)])
    return f"{scheme}://{norm}" if scheme else norm


class NewResource(Detector):
    """A resource new to the machine and its peer group, and a fan-out of them. Owns
    `MachineState.resources` (normalised resource -> last seen ms, at most `max_resources`)
    and `MachineState.recent_new` (`[ms, resource]` of the new ones in the fan-out window); the
    peer group learns the resources its members use, except in a burst that pages. Notes
    `Seen.resource` and `Seen.new_resource`."""

    __slots__ = ()
    name = "new_resource"
    owns = ("resources", "recent_new")

    def score(self, seen: Seen) -> Finding | None:
        resource = seen.resource = normalise_resource(seen.event.resource, seen.cfg.resource_depth)
        if resource in seen.state.resources:
            return None
        return self._judge(seen, resource)

    def run(self, seen: Seen) -> Finding | None:
        """`score` then `learn`, with the usual case (a resource the machine uses) settled in
        one lookup: nothing to find, and only its last-seen time to move."""
        cfg = seen.cfg
        resource = seen.resource = normalise_resource(seen.event.resource, cfg.resource_depth)
        resources = seen.state.resources
        last = resources.get(resource)
        if last is not None:
            if seen.ts > last:
                resources[resource] = seen.ts
            if len(resources) > cfg.max_resources:
                self.learn(seen, None)
            return None
        found = self._judge(seen, resource)
        self.learn(seen, found)
        return found

    def _judge(self, seen: Seen, resource: str) -> Finding | None:
        """`score` of a resource new to the machine."""
        cfg, state, peers = seen.cfg, seen.state, seen.peers
        if peers is not None and peers.uses_resource(resource):
            return None
        seen.new_resource = True
        if not seen.warm:
            return None
        k = _recent_new(cfg.fanout_window_s, state.recent_new, seen.ts) + 1
        # One new resource is worth a look; a burst (enumeration) far more. In a group of
        # replicas one new resource is more often a deploy rolling out: below a page unless
        # more follow.
        base = 45.0 if peers is not None and peers.members > 1 else 55.0
        score = min(100.0, base + 12.0 * math.log2(k))
        machine = seen.event.machine_id
        summary = (
            f"{machine} accessed {resource}, which it had not used in "
            f"{len(state.resources)} known resources"
            if k == 1
            else f"{machine} accessed {k} resources new to it within "
            f"{cfg.fanout_window_s // 60} minutes, latest {resource}"
        )
        return Finding(
            self.name,
            score,
            summary + ".",
            {
                "resource": resource,
                "new_resources_in_window": k,
                "operation": seen.event.operation,
            },
            {"known_resources": len(state.resources), "new_resources_in_window": 0},
        )

    def learn(self, seen: Seen, found: Finding | None) -> None:
        cfg, state, ts, resource = seen.cfg, seen.state, seen.ts, seen.resource
        if seen.new_resource:
            # A resource new to the group is learned by the group unless it is part of a
            # burst that pages (two others in the fan-out window): a deploy teaches, an
            # enumeration does not.
            if seen.peers is not None and (
                not seen.warm or _recent_new(cfg.fanout_window_s, state.recent_new, ts) < 2
            ):
                seen.peers.learn_resource(resource, ts)
            if seen.warm:
                window_start = ts - cfg.fanout_window_s * 1000
                state.recent_new = [r for r in state.recent_new if r[0] >= window_start]
                state.recent_new.append([ts, resource])
        # max: a late event must not make a resource look older than it is.
        state.resources[resource] = max(ts, state.resources.get(resource, ts))
        if len(state.resources) > cfg.max_resources:
            # Forget what has not been used within the horizon, else the least recently used.
            horizon = ts - cfg.resource_horizon_s * 1000
            kept = {r: t for r, t in state.resources.items() if t >= horizon}
            if len(kept) > cfg.max_resources:
                ordered = sorted(kept.items(), key=lambda rt: rt[1], reverse=True)
                kept = dict(ordered[: cfg.max_resources])
            state.resources = kept


def _recent_new(window_s: int, recent_new: list[list[Any]], ts: int) -> int:
    """New resources within the fan-out window before `ts`."""
    window_start = ts - window_s * 1000
    return sum(1 for r in recent_new if r[0] >= window_start)
