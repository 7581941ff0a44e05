"""A fast mutation fuzzer of our own, without instrumentation: what CI runs when atheris is
not installed, and the bulk of the CI budget when it is (it generates inputs about 10 times
faster than atheris's coverage-guided loop, which then explores for a bounded time).

Deterministic for a seed: input i of a run is a function of (seed, corpus, i), so a crash
reported by CI is reproduced by the same call. Mutations are byte-level (flips, interesting
integers, insertions, deletions, repeats, truncation, splices of two corpus entries) and
token-level (JSON and Avro fragments that reach deep branches quickly: numbers at the limits,
escapes, lone surrogates, deep nesting, varints of every length).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"
REGRESSIONS = Path(__file__).parent / "regressions"

_TOKENS = (
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"\\u0000",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-0",
    b"1e308",
    b"-1e308",
    b"1e-400",
    b"1.5",
    b"NaN",
    b"9" * 20,
    b"9" * 400,
    b"18446744073709551616",
    b"-9223372036854775809",
    b'"timestamp"',
    b'"machine_id"',
    b'"event_id"',
    b'"outcome"',
    b'"attributes"',
    b'"at"',
    b'"alert_id"',
    b'"action"',
    b'"snooze"',
    b'"severity"',
    b'"sequence"',
    b'"value_b64"',
    b'"Records"',
    b'"items"',
    b'"userIdentity"',
    b'"stage"',
    b'"responseStatus"',
    b'"2026-11-28T10:15:00Z"',
    b'"9999-12-31T23:59:59.999999999+23:59"',
    b'"0000-00-00T00:00:00Z"',
    b'"\xe2\x80\xae"',
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\x00",
    b"\r\n",
    b"\n",
    b"\x00\x00\x00\x03\xe9",
    b"\x00\x00\x00\x00\x07",
    b"\x01\x00\x00\x00\x01",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\xff\xff\xff\xff\x0f",
    b"\x7f",
    b"\x01",
    b"\x02",
)
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x00, 0x20, 0x22, 0x5C, 0x7B, 0x2C)


@dataclass
class Crash:
    target: str
    data: bytes
    error: str
    trace: str


@dataclass
class Stats:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    crashes: list[Crash] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Inputs per second of CPU: the rate on a core of its own, whatever the load."""
        return self.inputs / self.cpu_seconds if self.cpu_seconds else 0.0


def load_corpus(target: str) -> list[bytes]:
    """The committed seeds of `target` and every regression input kept for it."""
    out = []
    for folder in (CORPUS / target, REGRESSIONS / target):
        if folder.is_dir():
            out += [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
    return out or [b""]


def mutate(rng: random.Random, data: bytes, corpus: Sequence[bytes], max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rng.randrange(11)
        n = len(buf)
        pos = rng.randrange(n + 1)
        if op == 0 and n:  # flip a bit
            buf[pos % n] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting or random byte
            buf[pos % n] = rng.choice(_INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        elif op == 2:  # insert a token
            buf[pos:pos] = rng.choice(_TOKENS)
        elif op == 3 and n:  # replace a run with a token
            end = min(n, pos + rng.randrange(1, 12))
            buf[pos:end] = rng.choice(_TOKENS)
        elif op == 4 and n:  # delete a run
            del buf[pos : pos + rng.randrange(1, 16)]
        elif op == 5 and n:  # truncate
            del buf[pos:]
        elif op == 6 and n:  # repeat a run (deep nesting, long strings)
            end = min(n, pos + rng.randrange(1, 8))
            buf[pos:pos] = buf[pos:end] * rng.choice((2, 16, 200))
        elif op == 7:  # splice with another corpus entry
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + other[cut:]
        elif op == 8 and n:  # a digit changed (numbers, ids, lengths in text)
            digits = [i for i in range(n) if 0x30 <= buf[i] <= 0x39]
            if digits:
                buf[rng.choice(digits)] = rng.randrange(0x30, 0x3A)
        elif op == 9 and n >= 2:  # swap two bytes
            i, j = rng.randrange(n), rng.randrange(n)
            buf[i], buf[j] = buf[j], buf[i]
        elif n:  # an Avro varint byte: lengths and counts
            buf[pos % n] = rng.choice((0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF))
    return bytes(buf[:max_len])


def fuzz(
    name: str,
    target: Callable[[bytes], None],
    runs: int,
    *,
    seed: int = 0,
    max_len: int = 4096,
    corpus: Sequence[bytes] | None = None,
    max_crashes: int = 5,
) -> Stats:
    """Run `target` on `runs` inputs mutated from the corpus (the seeds themselves first)."""
    seeds = list(corpus if corpus is not None else load_corpus(name))
    rng = random.Random(f"{name}:{seed}")
    stats = Stats(name)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(runs):
        data = seeds[i] if i < len(seeds) else mutate(rng, rng.choice(seeds), seeds, max_len)
        try:
            target(data)
        except Exception as e:
            stats.crashes.append(
                Crash(name, data, f"{type(e).__name__}: {e}"[:300], traceback.format_exc())
            )
            if len(stats.crashes) >= max_crashes:
                stats.inputs = i + 1
                break
    else:
        stats.inputs = runs
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats
