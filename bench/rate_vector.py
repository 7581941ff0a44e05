"""A design study for issue 15's interval model: the rate model learned once per interval of
event time for every machine of a partition at once (numpy rows), instead of caught up per
machine at its next event. Not used by the product; it measures what that design would cost
and checks that it would learn exactly what the product learns.

`python bench/rate_vector.py [--machines N] [--intervals K]` takes N machines' rate models as
the detection core left them after the bench dataset's first events (`bench/core_speed.py`'s
sparse run), then learns K more intervals two ways, from the same start:
- the product's way for a sparse machine: its own interval's count with `_Model.learn`, then
  every empty interval with `_Model._zeros_exact` (learn's arithmetic, one interval at a time);
- all machines at once per interval (`VectorModels.learn`), the same arithmetic in the same
  order on float64 arrays, so the result must be equal bit for bit, which it checks.
It prints CPU microseconds per machine-interval and per interval for N machines. (The
product's closed forms, `learn_zeros`, equal the exact path up to rounding, not bit for bit.)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from detectors.rate import _DAY_S, _WEEK_DAYS, RateParams, _Model


class VectorModels:
    """`_Model` states (counts, with a time-of-day profile) of many machines as arrays."""

    def __init__(self, params: RateParams, models: list[_Model]) -> None:
        self.p = params
        self.z = models[0].plan
        f = np.array
        self.level = f([m.level for m in models])
        self.var = f([m.var for m in models])
        self.n = f([m.n for m in models], dtype=np.int64)
        self.run = f([m.run for m in models], dtype=np.int64)
        self.run_sum = f([m.run_sum for m in models])
        self.first_day = f([m.first_day for m in models])
        self.gmean = f([m.gmean for m in models])
        self.gvar = f([m.gvar for m in models])
        self.ref = f([m.ref for m in models])
        self.prof = f([m.prof for m in models])
        self.prof_n = f([m.prof_n for m in models], dtype=np.int64)
        self.dow = f([m.dow for m in models])

    def learn(self, x: np.ndarray, t_s: float) -> None:
        """`_Model.learn(x[i], t_s)` for every row i that has learned before (n > 0)."""
        p, z = self.p, self.z
        slot = int(t_s % _DAY_S * p.slots // _DAY_S)
        day = t_s / _DAY_S
        dw = (int(day) + 3) % _WEEK_DAYS
        w = (day - self.first_day - z.weekly_after) / _WEEK_DAYS
        w = np.where(w > 0.0, np.where(w > 1.0, 1.0, w), 0.0)
        prof, prof_n, dow = self.prof, self.prof_n, self.dow
        ps = prof[:, slot]
        fresh = prof_n[:, slot] == 0
        ps = np.where(fresh, self.ref, ps)
        dcol = dow[:, dw]
        wd = w * dcol
        b = np.where(w > 0.0, ps + wd, ps)
        e = b + self.level
        e = np.where(e < 0.0, 0.0, e)
        gvar = self.gvar
        gsd = np.sqrt(gvar)
        var = self.var
        v = z.floor2 * gvar
        var = np.where(v > var, v, var)
        var = np.where(e > var, e, var)
        sd = np.sqrt(np.where(var < 0.25, 0.25, var))
        clip_z = z.clip_z
        d = x - e
        lim = clip_z * sd
        nlim = -lim
        side = np.where(d > lim, 1, np.where(d < nlim, -1, 0))
        xc = e + np.where(d < lim, np.where(d > nlim, d, nlim), np.where(lim > nlim, lim, nlim))
        run = self.run
        same = (side != 0) & ((run == 0) | ((side > 0) == (run > 0)))
        run_sum = np.where(same, self.run_sum + x, np.where(side != 0, x, 0.0))
        run = np.where(same, run + side, side)
        adapt = np.abs(run) >= p.adapt_after
        alpha = z.alpha
        dc = xc - e
        level = self.level + alpha * dc
        new_var = z.a * (self.var + alpha * dc * dc)
        if adapt.any():
            xa = run_sum / np.where(adapt, np.abs(run), 1)
            level = np.where(adapt, self.level + (xa - e), level)
            new_var = np.where(adapt, np.maximum(self.var, (xa - e) ** 2 / p.adapt_after), new_var)
            run = np.where(adapt, 0, run)
            run_sum = np.where(adapt, 0.0, run_sum)
        self.var = new_var
        self.run = run
        self.run_sum = run_sum
        k = prof_n[:, slot]
        r = 1.0 / (k + 1 + z.prior)
        r = np.where(z.r_floor > r, z.r_floor, r)
        old = ps
        glim = clip_z * gsd
        nglim = -glim
        ghi = np.where(glim > nglim, glim, nglim)
        dp = x - np.where(w > 0, wd, 0.0) - old
        new = old + r * np.where(dp < glim, np.where(dp > nglim, dp, nglim), ghi)
        prof[:, slot] = new
        k = k + 1
        prof_n[:, slot] = np.where(k < z.n_cap, k, z.n_cap)
        self.ref = new
        level = level - (new - old)
        dd = x - new - dcol
        dow[:, dw] = dcol + z.rd * np.where(dd < glim, np.where(dd > nglim, dd, nglim), ghi)
        # Python's sum(): 0 + d0 + d1 + ... in order.
        s = 0.0 + dow[:, 0]
        for j in range(1, _WEEK_DAYS):
            s = s + dow[:, j]
        dow -= (s / _WEEK_DAYS)[:, None]
        self.level = level
        ag = z.ag
        gmean = self.gmean
        glim = clip_z * gsd + np.abs(gmean)
        nglim = -glim
        gd = x - gmean
        gd = np.where(
            gd < glim, np.where(gd > nglim, gd, nglim), np.where(glim > nglim, glim, nglim)
        )
        self.gmean = gmean + ag * gd
        self.gvar = z.c * (gvar + ag * gd * gd)
        self.n = self.n + 1

    def state(self, i: int) -> list[Any]:
        return [
            float(self.level[i]),
            float(self.var[i]),
            int(self.n[i]),
            int(self.run[i]),
            float(self.run_sum[i]),
            float(self.first_day[i]),
            float(self.gmean[i]),
            float(self.gvar[i]),
            float(self.ref[i]),
            self.prof[i].tolist(),
            self.prof_n[i].tolist(),
            self.dow[i].tolist(),
        ]


def scalar_state(m: _Model) -> list[Any]:
    return [
        m.level, m.var, m.n, m.run, m.run_sum, m.first_day, m.gmean, m.gvar, m.ref,
        list(m.prof), list(m.prof_n), list(m.dow),
    ]  # fmt: skip


def sample_models(events: int, machines: int) -> tuple[RateParams, list[_Model], int]:
    """Rate models of `machines` machines as the detection core leaves them after `events`
    events of the bench dataset, and the last interval they learned."""
    import orjson

    from bench.core_speed import DATASET, load_events
    from detectors.state import MACHINE
    from schemas.codec import BundledSchemas
    from streams.ops.config import Config
    from streams.processor import Origin, Processor
    from streams.tools.partitioning import PartitionedDetection

    evs = load_events(DATASET, events)
    cfg = Config()
    processor = Processor(cfg, BundledSchemas())
    processor.core.watching_since_ms = evs[0].timestamp_ms
    det = PartitionedDetection(processor, cfg.topics.partitions, working_copy=10**6)
    for e in evs:
        p = det.partition_of(e)
        processor.detect(e, det.store(p), Origin("x", p, 0), False, p)
    det.flush()
    params = processor.core.config.rate
    out: list[_Model] = []
    last = 0
    for q in sorted(det.local):
        for raw in det.local[q].data.get(MACHINE, {}).values():
            rate = orjson.loads(raw)["q"]
            if len(rate) <= 5:
                continue
            m = _Model(params, counts=True)
            m.load(rate[2:])
            last = max(last, rate[0])
            out.append(m)
            if len(out) >= machines:
                return params, out, last
    return params, out, last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--machines", type=int, default=1250, help="about a partition's share")
    ap.add_argument("--intervals", type=int, default=120)
    args = ap.parse_args(argv)
    params, models, last = sample_models(args.events, args.machines)
    n = len(models)
    rng = np.random.default_rng(1)
    # Mostly empty intervals, as on sparse traffic; a few machines with events each interval.
    counts = np.where(
        rng.random((args.intervals, n)) < 0.03, rng.integers(1, 6, (args.intervals, n)), 0
    )
    step = float(params.interval_s)
    vec = VectorModels(params, models)
    t0 = time.process_time()
    for k in range(args.intervals):
        vec.learn(counts[k].astype(np.float64), (last + 1 + k) * step)
    t_vec = time.process_time() - t0
    t0 = time.process_time()
    for k in range(args.intervals):
        t_s = (last + 1 + k) * step
        for i, m in enumerate(models):
            c = counts[k, i]
            if c:
                m.learn(float(c), t_s)
            else:
                m._zeros_exact(last + 1 + k, step, 1)
    t_one = time.process_time() - t0
    equal = sum(scalar_state(m) == vec.state(i) for i, m in enumerate(models))
    cells = args.intervals * n
    print(
        f"{n} machines x {args.intervals} intervals: vector {t_vec / cells * 1e9:.0f} ns per "
        f"machine-interval ({t_vec / args.intervals * 1e6:.0f} us per interval), one at a time "
        f"{t_one / cells * 1e9:.0f} ns; states equal bit for bit: {equal} of {n}"
    )
    return 0 if equal == n else 1


if __name__ == "__main__":
    sys.exit(main())
