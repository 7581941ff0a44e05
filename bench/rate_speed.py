"""The access-rate model's catch-up cost, old against new in one process.

Records every `RateBaseline.advance` that closes an interval while `bench/core_speed.py`'s
detection runs over the bench dataset (the state before it and the interval it moves to),
then replays those advances in isolation through this checkout's `detectors/rate.py` and
through another checkout's (`--baseline`), alternating, and reports microseconds per advance
(process CPU time, best of `--repeats`) and a digest of the states they end in: equal digests
mean the two learn bit for bit alike. Timing both in one process, interleaved, is what makes
the ratio mean something on a shared box; cProfile overstates this model's share of
detection (it is many small calls), so its cost is measured here.

    nice -n 19 env PYTHONPATH=$PWD python bench/rate_speed.py --baseline /work/main
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

import detectors.rate as current
from bench import core_speed


def record(events: int, dense: bool) -> list[tuple[Any, list[Any], int]]:
    calls: list[tuple[Any, list[Any], int]] = []
    advance = current.RateBaseline.advance

    def recorded(self: current.RateBaseline, interval: int) -> None:
        if interval > self.current >= 0:
            calls.append((self.params, self.state(), interval))
        advance(self, interval)

    base = core_speed.load_events(core_speed.DATASET, events)
    current.RateBaseline.advance = recorded  # type: ignore[method-assign]
    try:
        core_speed.run_once(core_speed.densify(base, 16) if dense else base, 1000, 10_000)
    finally:
        current.RateBaseline.advance = advance  # type: ignore[method-assign]
    return calls


def load_baseline(checkout: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("rate_baseline", checkout / "detectors/rate.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no detectors/rate.py under {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def replay(module: ModuleType, calls: list[tuple[Any, list[Any], int]]) -> tuple[float, str]:
    models = [(module.RateBaseline(p, list(s)), interval) for p, s, interval in calls]
    gc.collect()
    gc.disable()
    t0 = time.process_time()
    for b, interval in models:
        b.advance(interval)
    elapsed = time.process_time() - t0
    gc.enable()
    digest = hashlib.sha256()
    for b, _ in models:
        digest.update(orjson.dumps(b.state()))
    return elapsed, digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    baseline = load_baseline(args.baseline)
    for shape in ("sparse", "dense"):
        calls = record(args.events, shape == "dense")
        best = {"baseline": float("inf"), "this": float("inf")}
        digests = {}
        for _ in range(args.repeats):
            for name, module in (("baseline", baseline), ("this", current)):
                elapsed, digests[name] = replay(module, calls)
                best[name] = min(best[name], elapsed)
        us = {k: round(v / len(calls) * 1e6, 2) for k, v in best.items()}
        print(
            f"{shape}: {len(calls)} advances, us per advance {us}, "
            f"{best['baseline'] / best['this']:.2f}x, digests {digests}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
