"""Run the access-rate baseline on the Numenta Anomaly Benchmark (NAB) data.

    python -m bench.nab --data ../shared/datasets/nab/data --out DIR

writes one CSV per data file, at the same relative path under DIR, with the columns
timestamp,value,anomaly_score: each row scored by `SeriesBaseline` with the product's default
parameters and SeriesBaseline's own defaults (score before learn), ready for NAB's scorer. No
parameter is chosen per file or for NAB. Imports: the standard library and `detectors`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from detectors.rate import RateParams, SeriesBaseline


def score_file(src: Path, dst: Path, params: RateParams) -> int:
    """Score one NAB file into dst; returns the number of rows."""
    model = SeriesBaseline(params)
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with src.open(newline="") as fin, dst.open("w", newline="") as fout:
        out = csv.writer(fout)
        out.writerow(["timestamp", "value", "anomaly_score"])
        for row in csv.DictReader(fin):
            ts = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            x = {"value": float(row["value"]), "timestamp": ts}
            s = model.score_one(x)
            model.learn_one(x)
            out.writerow([row["timestamp"], row["value"], f"{s:.9f}"])
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="NAB's data directory")
    ap.add_argument("--out", type=Path, required=True, help="where the scored CSVs go")
    a = ap.parse_args(argv)
    files = sorted(a.data.rglob("*.csv"))
    if not files:
        print(f"no CSV files under {a.data}", file=sys.stderr)
        return 2
    params = RateParams()
    start = time.perf_counter()
    rows = 0
    for f in files:
        rows += score_file(f, a.out / f.relative_to(a.data), params)
    took = time.perf_counter() - start
    print(f"{len(files)} files, {rows} rows in {took:.1f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
