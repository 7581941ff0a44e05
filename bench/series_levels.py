"""Choose `SeriesBaseline`'s tail level and quantile step on M2M traffic, never on NAB.

    python -m bench.series_levels [--out eval/series_levels.json]

The NAB run (`bench.nab`) must use product defaults chosen for M2M traffic. The defaults of
`SeriesBaseline` that NAB is sensitive to are the tail level of its calibration (the upper
quantile beyond which an exponential tail is fitted) and the quantile's step. This picks them
on our own labelled synthetic traffic, with seeds other than the evaluation suite's and 8
days of it (4 of warm-up, see DAYS): every machine's accesses per 5 minutes (NAB's usual
spacing) form one series; an episode that changes a machine's rate (rate bursts, silence,
off-hours activity) is detected when the series scores >= 0.5 between 5 minutes before its
start and 15 minutes after its end; every other score >= 0.5 after the warm-up is a false
alarm (benign changes included: they must not page). The pair chosen is the one with the
highest recall among those within the product's false-page budget (2 per 1000
machine-hours), fewer false alarms breaking ties.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.evaluate import suite_config
from detectors.rate import SeriesBaseline
from streams.tools.synthetic import SyntheticTraffic

STEP_MS = 300_000
LEVELS = (0.98, 0.99, 0.995)
# The calibration's quantile step, the one other default NAB was found sensitive to after the
# design was fixed (bench/README.md): both candidates were first measured on NAB, so the choice
# between them is made here, on M2M series, and NAB is only run after.
STEPS = (0.1, 0.03)
SEEDS = (11, 12, 13, 14)
# Long enough that every scored value comes after the tail's guess phase: the tail
# starts after the model's 60-interval warm-up and guesses its quantile for 5 / (1 - level)
# values (1,000 at 0.995, rows 60-1,059); 4 days of 5-minute steps are 1,152. With the suite's
# 3 days (864 steps) the choice only ever measured the guess, while most of a NAB file is
# scored after it.
DAYS, WARMUP_DAYS = 8.0, 4.0
RATE_KINDS = ("rate_burst", "silence", "off_hours")
BUDGET_PER_1000_H = 2.0
# `--others`: SeriesBaseline's other defaults were measured on NAB while it was designed
# (bench/README.md, design log). The same rule, one default changed at a time at the chosen
# level and step, says whether M2M traffic agrees with each of them.
OTHERS: dict[str, tuple[Any, ...]] = {
    "scales": ((1,), (1, 6), (1, 6, 36), (1, 6, 36, 216)),
    "repeat_intervals": (48, 96, 192),
    "calibration_rate": (0.001, 0.002, 0.004),
}


def series_of(seed: int) -> tuple[dict[str, list[int]], int, int, list[Any]]:
    """Per machine, accesses per 5-minute step from the suite's start; and the episodes."""
    sc = suite_config(seed=seed, days=DAYS, warmup_days=WARMUP_DAYS)
    traffic = SyntheticTraffic(sc)
    start = sc.start_ms
    steps = int(sc.duration_s * 1000 // STEP_MS)
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * steps)
    for ev in traffic:
        i = (ev["timestamp"] - start) // STEP_MS
        if 0 <= i < steps:
            counts[ev["machine_id"]][i] += 1
    warmup_step = int(sc.warmup_s * 1000 // STEP_MS)
    return dict(counts), start, warmup_step, traffic.episodes


def evaluate_level(
    level: float,
    step: float,
    data: list[tuple[dict[str, list[int]], int, int, list[Any]]],
    **other: Any,
) -> dict[str, Any]:
    """Recall and false alarms of SeriesBaseline(tail_level=level, quantile_step=step, **other)."""
    detected = episodes = false_alarms = 0
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    hours = 0.0
    for counts, start, warmup_step, eps in data:
        by_machine: dict[str, list[Any]] = defaultdict(list)
        for ep in eps:
            by_machine[ep.machine_id].append(ep)
        for machine, series in counts.items():
            model = SeriesBaseline(tail_level=level, quantile_step=step, **other)
            mine = by_machine.get(machine, [])
            hit: set[int] = set()
            for i, v in enumerate(series):
                t = start + i * STEP_MS
                x = {"value": float(v), "timestamp": t}
                s = model.score_one(x)
                model.learn_one(x)
                if i < warmup_step or s < 0.5:
                    continue
                inside = [
                    k
                    for k, ep in enumerate(mine)
                    if ep.start_ms - STEP_MS <= t <= ep.end_ms + 900_000
                ]
                if not inside:
                    false_alarms += 1
                hit.update(k for k in inside if mine[k].kind in RATE_KINDS)
            wanted = [k for k, ep in enumerate(mine) if ep.kind in RATE_KINDS and ep.malicious]
            episodes += len(wanted)
            detected += sum(1 for k in wanted if k in hit)
            for k in wanted:
                per_kind[mine[k].kind][0] += 1
                per_kind[mine[k].kind][1] += k in hit
            hours += (len(series) - warmup_step) * STEP_MS / 3_600_000
    return {
        "tail_level": level,
        "quantile_step": step,
        "episodes": episodes,
        "detected": detected,
        "recall": round(detected / episodes, 4) if episodes else None,
        "false_alarms": false_alarms,
        "false_alarms_per_1000_series_hours": round(1000 * false_alarms / hours, 2),
        "series_hours": round(hours, 1),
        "per_kind": {kind: {"episodes": n, "detected": d} for kind, (n, d) in per_kind.items()},
    }


def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule: the highest recall within the false-alarm budget, fewer false alarms breaking
    ties (then the first row)."""
    within = [r for r in rows if r["false_alarms_per_1000_series_hours"] <= BUDGET_PER_1000_H]
    pool = within or rows
    return max(pool, key=lambda r: (r["recall"] or 0.0, -r["false_alarms"]))


def choose(rows: list[dict[str, Any]]) -> dict[str, float]:
    b = best(rows)
    return {"tail_level": b["tail_level"], "quantile_step": b["quantile_step"]}


def check_others(chosen: dict[str, float], data: list[Any]) -> dict[str, Any]:
    """Per other default: its candidates' rows and what the rule picks among them."""
    out: dict[str, Any] = {}
    default = SeriesBaseline()
    for name, values in OTHERS.items():
        rows = []
        for v in values:
            r = evaluate_level(chosen["tail_level"], chosen["quantile_step"], data, **{name: v})
            r[name] = list(v) if isinstance(v, tuple) else v
            rows.append(r)
            print(
                f"{name} {v}: recall {r['recall']:.2f} false alarms {r['false_alarms']} "
                f"({r['false_alarms_per_1000_series_hours']:.2f} per 1000 series-hours)",
                file=sys.stderr,
            )
        d = getattr(default, name)
        d = list(d) if isinstance(d, tuple) else d
        b = best(rows)
        tied = [
            r[name]
            for r in rows
            if (r["recall"], r["false_alarms"]) == (b["recall"], b["false_alarms"])
        ]
        out[name] = {"rows": rows, "chosen": b[name], "tied": tied, "default": d}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("eval/series_levels.json"))
    ap.add_argument(
        "--others",
        action="store_true",
        help="also check SeriesBaseline's other defaults, one at a time (about 10 more minutes)",
    )
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = [series_of(seed) for seed in SEEDS]
    print(f"series from seeds {SEEDS} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = [evaluate_level(level, step, data) for level in LEVELS for step in STEPS]
    chosen = choose(rows)
    doc = {
        "seeds": list(SEEDS),
        "step_s": STEP_MS // 1000,
        "rate_kinds": list(RATE_KINDS),
        "budget_per_1000_series_hours": BUDGET_PER_1000_H,
        "levels": rows,
        "chosen": chosen,
        "default": {
            "tail_level": SeriesBaseline().tail_level,
            "quantile_step": SeriesBaseline().quantile_step,
        },
    }
    if a.others:
        doc["others"] = check_others(chosen, data)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(
            f"tail_level {r['tail_level']:<6} step {r['quantile_step']:<5} "
            f"recall {r['recall']:.2f} "
            f"({r['detected']}/{r['episodes']})  false alarms {r['false_alarms']:>4} "
            f"({r['false_alarms_per_1000_series_hours']:.2f} per 1000 series-hours)"
        )
    print(f"chosen: {chosen} (SeriesBaseline default: {doc['default']}) -> {a.out}")
    for name, o in doc.get("others", {}).items():
        agree = "agrees" if o["default"] in o["tied"] else "DISAGREES"
        picks = f"the rule picks {o['chosen']} (tied: {o['tied']})"
        print(f"{name}: {picks}; default {o['default']} {agree}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
