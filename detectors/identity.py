"""Peer groups of machine identities and normalisation of resource names."""

from __future__ import annotations

import re
from functools import lru_cache

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


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{16,}(?![0-9A-Za-z])")
# Short numbers are usually part of a name (t1, api-key-3, db-01); long ones are ids.
_LONG_NUM = re.compile(r"\d{4,}")


def _segment(seg: str) -> str:
    if seg.isdigit():
        return "{n}"
    seg = _UUID.sub("{uuid}", seg)
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
    base, _, _query = resource.partition("?")
    scheme, sep, rest = base.partition("://")
    if not sep:
        scheme, rest = "", base
    parts = [p for p in rest.split("/") if p]
    if not parts:
        return resource
    host, path = parts[0], parts[1 : 1 + depth]
    norm = "/".join([host, *(_segment(p) for p in path)])
    return f"{scheme}://{norm}" if scheme else norm
