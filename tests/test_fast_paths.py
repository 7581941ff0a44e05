"""The fast paths of decode and validation (schemas/codec.py `_read_event`,
schemas/event.py `_well_formed`, schemas/frozen.py) give what the general code gives, or
step aside: they never accept what it refuses nor build anything different."""

from __future__ import annotations

import dataclasses
import io
import random
import struct
from typing import Any

import fastavro
import pytest

from schemas import codec
from schemas.avro_write import _long, _varint_slow
from schemas.codec import encode_event_avro
from schemas.event import AuditEvent, InvalidEvent, Limits, _checked, _well_formed
from schemas.registry import earlier_parsed, parsed

NOW_MS = 1_800_000_000_000
CHARS = "abcXYZ019-_/:.é名😀\u200b \t\x07"


def _text(rnd: random.Random) -> str:
    n = rnd.choice([0, 1, 5, 30, 63, 64, 65, 200])
    return "".join(rnd.choice(CHARS) for _ in range(n))


def _record(rnd: random.Random, signed: bool) -> dict[str, Any]:
    def maybe() -> str | None:
        return None if rnd.random() < 0.3 else _text(rnd)

    r: dict[str, Any] = {
        "event_id": maybe(),
        "timestamp": rnd.choice([0, -1, 1, 63, 64, 1_767_571_200_123, -(2**62), 2**62]),
        "machine_id": _text(rnd),
        "resource": _text(rnd),
        "operation": _text(rnd),
        "outcome": rnd.choice(["SUCCESS", "FAILURE", "DENIED"]),
        "source_ip": maybe(),
        "identity_type": maybe(),
        "source": maybe(),
        "attributes": {_text(rnd): _text(rnd) for _ in range(rnd.choice([0, 1, 3, 70]))},
    }
    if signed:
        r["key_id"], r["signature"] = maybe(), maybe()
    return r


def _values(seed: int, n: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        r = _record(rnd, rnd.random() < 0.5)
        if "key_id" in r or rnd.random() < 0.5:
            out.append(encode_event_avro(r))
        else:
            buf = io.BytesIO()
            buf.write(struct.pack(">bI", 0, 1001))
            fastavro.schemaless_writer(buf, earlier_parsed(1001), r)
            out.append(buf.getvalue())
    return out


def _fastavro(value: bytes) -> Any:
    """What the code before the fast reader returned for a value, or None if it refused it."""
    try:
        return codec._read_bundled(value, 1001, parsed("audit_event"))
    except codec._Unreadable:
        return None


def test_the_bundled_schema_is_read_by_the_fast_reader() -> None:
    assert codec._FAST_READ


def test_the_fast_reader_reads_what_fastavro_reads() -> None:
    fast = 0
    for value in _values(1, 400):
        expected = _fastavro(value)
        assert expected is not None
        got = codec._read_event(value, True)
        # Left to fastavro: a timestamp whose varint is 10 bytes (|t| >= 2**62).
        assert got == expected or (got is None and abs(expected["timestamp"]) >= 2**62)
        fast += got is not None
    assert fast > 300


def test_damaged_values_are_read_as_fastavro_reads_them_or_left_to_it() -> None:
    rnd = random.Random(2)
    checked = 0
    for value in _values(3, 80):
        damaged = [value[: rnd.randrange(5, len(value))] for _ in range(10)]
        damaged += [value + bytes([rnd.randrange(256)]) for _ in range(3)]
        for _ in range(20):
            b = bytearray(value)
            for _ in range(rnd.randint(1, 3)):
                b[rnd.randrange(5, len(b))] = rnd.randrange(256)
            damaged.append(bytes(b))
        for v in damaged:
            got = codec._read_event(v, True)
            if got is not None:
                assert got == _fastavro(v), v
                checked += 1
    assert checked > 100  # some damage still reads (a flipped letter), and is compared


def test_varints_of_any_size_are_what_the_byte_loop_writes() -> None:
    rnd = random.Random(4)
    values = list(range(-70_000, 70_000))
    values += [rnd.getrandbits(rnd.randint(1, 63)) * rnd.choice((1, -1)) for _ in range(50_000)]
    values += [s * (2**k + d) for k in range(63) for d in (-1, 0, 1) for s in (1, -1)]
    for n in values:
        if -(2**63) <= n < 2**63:
            assert _long(n) == _varint_slow((n << 1) ^ (n >> 63)), n


def _hostile(rnd: random.Random) -> dict[str, Any]:
    """A record whose every field is well-formed or, one time in eight, hostile."""

    def pick(values: list[Any]) -> Any:
        return values[0] if rnd.random() < 0.875 else rnd.choice(values[1:])

    ts = pick(
        [
            rnd.choice([1_767_571_200_000, "2026-01-05T10:11:12.5Z"]),
            "2024-02-29T00:00:00-05:30",
            "2023-02-29T00:00:00Z",
            "2026-01-05T24:00:00Z",
            "2026-01-05T10:11:12+24:00",
            " 2026-01-05T10:11:12Z ",
            "1767571200000",
            1e12,
            True,
            None,
            NOW_MS + 4_000_000,
            946_684_799_999,
        ]
    )
    r: dict[str, Any] = {
        "timestamp": ts,
        "machine_id": pick(["m", "", "m\x00", "m\u200b", 5, "x" * 2049, None]),
        "resource": pick(["r", "", None, ["r"]]),
        "operation": pick(["o", "x" * 2048]),
        "outcome": pick(["SUCCESS", "denied", "Failure", "maybe", None, 1]),
        "event_id": pick(["e", None, "", "e" * 257, "e\u2028", 3]),
        "source_ip": pick([None, "1.2.3.4", 7, "a\x1fb", "x" * 2049]),
        "attributes": pick(
            [{"a": "b"}, None, {}, {"a": 1}, [], 0, {str(i): "v" for i in range(65)}]
        ),
    }
    if rnd.random() < 0.2:
        r["key_id"], r["signature"] = rnd.choice([("k", "s"), (None, "s"), (1, None)])
    return r


def test_well_formed_builds_what_the_full_checks_build_and_nothing_they_refuse() -> None:
    rnd = random.Random(5)
    limits = Limits()
    fast = 0
    for _ in range(5000):
        r = _hostile(rnd)
        got = _well_formed(r, limits, NOW_MS)
        try:
            expected: AuditEvent | None = _checked(r, limits, NOW_MS)
        except InvalidEvent:
            expected = None
        if got is not None:
            fast += 1
            assert got == expected, r
            assert got.attributes is not r.get("attributes")
    assert fast > 50


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "x"
    c: dict[str, int] = dataclasses.field(default_factory=dict)


def test_fast_init_keeps_the_constructor_and_the_class() -> None:
    from schemas.frozen import fast_init

    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Fast:
        a: int
        b: str = "x"
        c: dict[str, int] = dataclasses.field(default_factory=dict)

    for args, kwargs in [((1,), {}), ((1, "y"), {}), ((), {"a": 1, "c": {"k": 1}})]:
        f, p = Fast(*args, **kwargs), _Plain(*args, **kwargs)
        assert (f.a, f.b, f.c) == (p.a, p.b, p.c)
    assert Fast(1).c is not Fast(1).c
    assert Fast(1) == Fast(1) and Fast(1) != Fast(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fast(1).a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Fast()  # type: ignore[call-arg]
    assert dataclasses.replace(Fast(1), b="z") == Fast(1, "z")
    with pytest.raises(TypeError):
        fast_init(_Plain.__mro__[1])  # not a dataclass
