"""The per-event path outside detection (decode, validation, dedupe, archive record, dead
letters, the task's glue) writes exactly the bytes it wrote before it was made faster.

A fixed corpus (well-formed events in both Avro layouts and in JSON, their re-sends and
conflicting copies, and malformed values: damaged Avro, hostile fields, bad timestamps) goes
through one task with detection switched off and a fixed clock. What it emits (role, key,
SHA-256 of each value) and its counters are compared with `data/floor_identity.json`, which
the code before the speed-up (commit 48e1286) wrote; `python -m tests.test_floor_identity`
rewrites it, which only a deliberate change of the output may do.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import struct
import sys
from pathlib import Path
from typing import Any

import fastavro
import orjson

from schemas.codec import BundledSchemas, encode_event_avro
from schemas.registry import earlier_parsed
from streams.ops.config import Config
from streams.processor import Processor
from streams.runtime.peers import PeerTable
from streams.runtime.routing import Router
from streams.runtime.state import PartitionState
from streams.runtime.task import Task

FIXTURE = Path(__file__).parent / "data" / "floor_identity.json"
NOW_MS = 1_800_000_000_000
T0 = 1_767_571_200_000
TOPIC = Config().topics.events


class Msg:
    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._o, self._k, self._v = offset, key, value

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, NOW_MS


def _v1(record: dict[str, Any]) -> bytes:
    """The earlier Avro layout (no key_id, signature) under the bundled id."""
    import io

    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 1001))
    fastavro.schemaless_writer(buf, earlier_parsed(1001), record)
    return buf.getvalue()


def corpus() -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) pairs, the same on every run."""
    rnd = random.Random(15)
    words = string.ascii_letters + string.digits + "-._:/"
    odd = ["é", "名", "\u200b", "\u202e", "\x07", "\u2028", "\x85", " ", "\t", "😀"]

    def text(n: int = 12) -> str:
        s = "".join(rnd.choice(words) for _ in range(rnd.randint(1, n)))
        if rnd.random() < 0.1:
            i = rnd.randint(0, len(s))
            s = s[:i] + rnd.choice(odd) + s[i:]
        return s

    def record(i: int) -> dict[str, Any]:
        r: dict[str, Any] = {
            "event_id": None if rnd.random() < 0.2 else f"e-{i}",
            "timestamp": T0 + rnd.randint(0, 10**9),
            "machine_id": f"m-{rnd.randint(0, 9)}" if rnd.random() < 0.9 else text(),
            "resource": "postgres://db/" + text(30),
            "operation": rnd.choice(["SELECT", "INSERT", "GetObject", text(6)]),
            "outcome": rnd.choice(["SUCCESS", "FAILURE", "DENIED"]),
            "source_ip": None if rnd.random() < 0.2 else f"10.0.{rnd.randint(0, 9)}.1",
            "identity_type": None if rnd.random() < 0.3 else text(),
            "source": None if rnd.random() < 0.3 else text(),
            "attributes": {text(6): text(10) for _ in range(rnd.randint(0, 4))},
        }
        if rnd.random() < 0.1:
            r["key_id"], r["signature"] = text(), text(40)
        return r

    out: list[tuple[bytes | None, bytes | None]] = []
    for i in range(400):
        r = record(i)
        key = r["machine_id"].encode() if rnd.random() < 0.9 else b"other"
        kind = rnd.random()
        if kind < 0.35:
            value = encode_event_avro(r)
        elif kind < 0.5 and "key_id" not in r:
            value = _v1(r)
        else:
            j = dict(r)
            form = rnd.random()
            if form < 0.3:
                ts = r["timestamp"]
                j["timestamp"] = rnd.choice(
                    [
                        f"{orjson.dumps(ts).decode()}",
                        ts + 0.5,
                        "2026-01-05T10:11:12.123456Z",
                        "2026-01-05T10:11:12+02:00",
                        "2026-01-05 10:11:12.1z",
                        "2026-02-30T10:11:12Z",
                        True,
                        None,
                        ts * 1_000_000,
                        NOW_MS + 7_200_000,
                        " 1767571200000 ",
                        "1" * 30,
                        [ts],
                    ]
                )
            elif form < 0.4:
                j["outcome"] = rnd.choice(["success", "Denied", "MAYBE", 3, None, ""])
            elif form < 0.5:
                field = rnd.choice(["machine_id", "resource", "operation", "event_id", "source"])
                j[field] = rnd.choice(["", 7, None, "x" * 3000, ["a"], "a\x00b", "a\u2029b"])
            elif form < 0.55:
                j["attributes"] = rnd.choice(
                    [{"a": 1}, ["a"], {str(n): "v" for n in range(70)}, {"k": "v" * 3000}, None]
                )
            elif form < 0.6:
                j["event_id"] = "i" * rnd.choice([256, 257])
            elif form < 0.62:
                j["extra"] = {"nested": [1, 2]}
            value = orjson.dumps(j)
            if rnd.random() < 0.05:
                value = b" \n" + value
        out.append((key, value))
        if rnd.random() < 0.1:
            out.append((key, value))  # an exact re-send
        if rnd.random() < 0.05 and r["event_id"]:
            changed = dict(r, operation="DELETE")  # the same id with other content
            out.append((key, encode_event_avro(changed)))
    # Damaged Avro: truncated, extended, bytes flipped, wrong headers.
    base = [v for _, v in out if v and v[0] == 0][:60]
    for v in base:
        cut = rnd.randint(0, len(v) - 1)
        out.append((b"k", v[:cut]))
        out.append((b"k", v + bytes([rnd.randint(0, 255)])))
        flipped = bytearray(v)
        for _ in range(rnd.randint(1, 3)):
            flipped[rnd.randint(5, len(v) - 1)] = rnd.randint(0, 255)
        out.append((b"k", bytes(flipped)))
    out += [
        (None, None),
        (b"k", b""),
        (b"k", b"\x00\x00\x00\x03\xe9"),
        (b"k", b"\x00\x00\x00\x00\x07" + base[0][5:]),
        (b"k", b"\x01" + base[0][1:]),
        (b"k", b"{not json"),
        (b"k", b"[1, 2]"),
        (b"k", b"x" * 70_000),
        (b"k", b'{"event_id": "cut-' + b"a" * 100),
    ]
    return out


def run(items: list[tuple[bytes | None, bytes | None]]) -> dict[str, Any]:
    emitted: list[list[str]] = []

    def emit(role: str, key: bytes | None, value: bytes, partition: int, headers: Any) -> None:
        h = hashlib.sha256(value).hexdigest()
        emitted.append([role, (key or b"").hex(), str(partition), h])

    cfg = Config()
    processor = Processor(cfg, BundledSchemas(), clock=lambda: NOW_MS)
    processor.detect = lambda *a, **k: []  # type: ignore[method-assign]
    task = Task(
        0,
        PartitionState(0),
        PeerTable("w"),
        processor,
        Router("murmur2", 1),
        cfg.topics.detect,
        emit,
        None,
    )
    for offset, (key, value) in enumerate(items):
        task.process(Msg(offset, key, value))
    return {"outputs": emitted, "metrics": dict(sorted(processor.metrics.items()))}


def test_outputs_are_byte_identical_to_the_code_before_the_speed_up() -> None:
    expected = json.loads(FIXTURE.read_text())
    got = run(corpus())
    assert got["metrics"] == expected["metrics"]
    assert len(got["outputs"]) == len(expected["outputs"])
    for i, (a, b) in enumerate(zip(got["outputs"], expected["outputs"], strict=True)):
        assert a == b, f"output {i} differs"


def test_the_corpus_covers_every_path() -> None:
    got = run(corpus())["metrics"]
    for name in ("archived", "duplicates", "conflicting_duplicates", "key_mismatch"):
        assert got[name] > 0, name
    reasons = {k for k in got if k.startswith("deadlettered.")}
    assert len(reasons) >= 10, reasons


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(run(corpus()), indent=0) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
