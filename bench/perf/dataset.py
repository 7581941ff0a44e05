"""The benchmark dataset: synthetic M2M traffic generated once into a file cache, then preloaded.

One dataset serves every phase: `events.wire` holds each event as the Kafka key and the
Confluent wire-format Avro value that `auditwatch produce` would send (so preloading is only
producing bytes), and `events.jsonl` holds the same events for `auditwatch replay`. The cache
directory is keyed by the parameters and by a hash of the generator and codec sources, so a
change to either makes a new dataset instead of silently reusing a stale one. Generating is
never timed.

The traffic is `streams.tools.synthetic.SyntheticTraffic` with one injected anomaly of each kind and
a pod rotation and an autoscale: its rate is scaled so that `events` events span about
`history_hours` of event time, and the first `events` events are kept. Event ids are
`syn-<seed>-<n>` for n in 0..events-1, which is what the archive checks compare against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.codec import encode_event_avro
from streams.tools.synthetic import ANOMALY_KINDS, SyntheticConfig, SyntheticTraffic

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / ".cache" / "bench"
# Monday 2026-01-05 00:00 UTC: fixed, so that a cached dataset is the same on every run. Event
# time only has to be in the past (the processor refuses events far in the future).
START_MS = 1_767_571_200_000
# Bump when the layout of the cache files changes.
FORMAT_VERSION = 3
_FRAME = struct.Struct(">HI")  # key length, value length
# Mirrors DetectorConfig's defaults, only to report how much of the data is past warm-up.
_WARMUP_MS = 3_600_000
_WARMUP_EVENTS = 50


@dataclass(frozen=True)
class DatasetParams:
    events: int = 1_000_000
    machines: int = 10_000
    history_hours: float = 24.0
    seed: int = 11

    def __post_init__(self) -> None:
        if self.events < 1:
            raise ValueError(f"events must be >= 1, got {self.events}")
        if self.machines < 12:
            # streams.tools.synthetic's floor: it needs a few machines of every workload kind.
            raise ValueError(f"machines must be >= 12 (the generator's floor), got {self.machines}")
        if self.history_hours <= 0:
            raise ValueError(f"history_hours must be > 0, got {self.history_hours}")


@dataclass
class Dataset:
    """A generated dataset on disk and what is known about it."""

    path: Path
    params: DatasetParams
    meta: dict[str, Any]

    @property
    def wire_path(self) -> Path:
        return self.path / "events.wire"

    @property
    def jsonl_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def events(self) -> int:
        return int(self.meta["events"])

    def event_id(self, n: int) -> str:
        return f"syn-{self.params.seed}-{n}"

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of events start..stop-1, in dataset (event-time) order."""
        return read_wire(self.wire_path, start, stop)


def read_wire(path: Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    data = path.read_bytes()
    pos, n, end = 0, 0, len(data)
    unpack, size = _FRAME.unpack_from, _FRAME.size
    while pos < end and (stop is None or n < stop):
        klen, vlen = unpack(data, pos)
        pos += size
        if n >= start:
            yield data[pos : pos + klen], data[pos + klen : pos + klen + vlen]
        pos += klen + vlen
        n += 1


def _source_hash() -> str:
    h = hashlib.sha256()
    for rel in ("streams/tools/synthetic.py", "schemas/codec.py", "schemas/audit_event.avsc"):
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


def cache_key(params: DatasetParams) -> str:
    blob = json.dumps(
        {**asdict(params), "format": FORMAT_VERSION, "sources": _source_hash()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _synthetic_config(params: DatasetParams, rate_scale: float) -> SyntheticConfig:
    duration_s = params.history_hours * 3600
    return SyntheticConfig(
        seed=params.seed,
        start_ms=START_MS,
        duration_s=duration_s,
        machines=params.machines,
        rate_scale=rate_scale,
        # Episodes go in the second half, after the detectors have had the first to learn.
        warmup_s=duration_s / 2,
        anomalies=dict.fromkeys(ANOMALY_KINDS, 1),
        benign={"pod_rotation": 1, "autoscale": 1},
    )


class _WarmTracker:
    """Whether each event reaches a machine past warm-up, the way DetectionCore decides it:
    its own 50 events and an hour of event time, or a peer group of two or more members that
    has been watched for an hour. Approximate (one process, event-time order), for reporting."""

    def __init__(self) -> None:
        from detectors.identity import default_group

        self.group_of = default_group
        self.machines: dict[str, list[int]] = {}  # first ms, events
        self.groups: dict[str, list[int]] = {}  # first ms, members
        self.warm = 0

    def add(self, machine: str, ts: int) -> None:
        m = self.machines.get(machine)
        group = self.group_of(machine)
        g = self.groups.get(group)
        if m is None:
            m = self.machines[machine] = [ts, 0]
            if g is None:
                g = self.groups[group] = [ts, 0]
            g[1] += 1
        elif g is None:  # pragma: no cover - a machine always joins its group first
            g = self.groups[group] = [ts, 1]
        own = m[1] >= _WARMUP_EVENTS and ts - m[0] >= _WARMUP_MS
        peers = g[1] > 1 and ts - g[0] >= _WARMUP_MS
        self.warm += own or peers
        m[1] += 1


def generate(params: DatasetParams, cache_dir: Path = DEFAULT_CACHE, log: Any = print) -> Dataset:
    """The dataset for `params`, from the cache or generated into it."""
    key = cache_key(params)
    final = cache_dir / f"dataset-{key}"
    meta_path = final / "meta.json"
    if meta_path.exists():
        return Dataset(final, params, json.loads(meta_path.read_text()))
    log(f"generating dataset {key}: {params.events:,} events, {params.machines:,} machines ...")
    started = time.monotonic()
    base = SyntheticTraffic(_synthetic_config(params, 1.0)).expected_events()
    # A small surplus so the Poisson draw almost surely reaches `events`; a short draw retries.
    scale = params.events * 1.03 / max(base, 1)
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for _attempt in range(5):
        traffic = SyntheticTraffic(_synthetic_config(params, scale))
        meta = _write(traffic, params, tmp)
        if meta["events"] == params.events:
            break
        scale *= 1.1
    else:
        raise RuntimeError(f"the generator gave fewer than {params.events} events")
    meta.update(
        {
            "cache_key": key,
            "rate_scale": round(scale, 6),
            "generated_seconds": round(time.monotonic() - started, 1),
            "episodes": [
                {"kind": e.kind, "machine_id": e.machine_id, "start_ms": e.start_ms}
                for e in traffic.episodes
                if e.malicious
            ],
        }
    )
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():  # another run made it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
    log(
        f"  {meta['events']:,} events over {meta['machines']:,} machines in "
        f"{meta['generated_seconds']} s ({final})"
    )
    return Dataset(final, params, json.loads((final / "meta.json").read_text()))


def _write(traffic: SyntheticTraffic, params: DatasetParams, out: Path) -> dict[str, Any]:
    warm = _WarmTracker()
    n = 0
    first_ms = last_ms = 0
    wire_bytes = 0
    with (out / "events.wire").open("wb") as wire, (out / "events.jsonl").open("wb") as jsonl:
        for event in traffic:
            if n >= params.events:
                break
            key = event["machine_id"].encode()
            # The generator's dicts are already Avro records (ids given, epoch-ms times), so
            # they are encoded as they are; the archive checks would catch a rejected one.
            value = encode_event_avro(event)
            wire.write(_FRAME.pack(len(key), len(value)))
            wire.write(key)
            wire.write(value)
            jsonl.write(orjson.dumps(event) + b"\n")
            wire_bytes += len(value)
            warm.add(event["machine_id"], event["timestamp"])
            if n == 0:
                first_ms = event["timestamp"]
            last_ms = event["timestamp"]
            n += 1
    return {
        "events": n,
        "machines": len(warm.machines),
        "groups": len(warm.groups),
        "first_event_ms": first_ms,
        "last_event_ms": last_ms,
        "event_time_hours": round((last_ms - first_ms) / 3_600_000, 2),
        "warm_share": round(warm.warm / n, 4) if n else 0.0,
        "avg_value_bytes": round(wire_bytes / n, 1) if n else 0.0,
    }
