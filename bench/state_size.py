"""Serialised state per machine, as the detection stage stores it, at a given number of
distinct resources: `python -m bench.state_size --resources 50 5000 [--out FILE]`.

A machine makes one access a second for two days over N distinct resources (round robin),
through the same DetectionCore.observe as `auditwatch run` and `replay`; the figure is the
bytes of its machine record plus its share of the store's other records.
"""

from __future__ import annotations

import argparse
import json
import sys

from detectors.core import MACHINE, DetectionCore
from schemas.event import AuditEvent
from streams.processor import MemoryStore

T0 = 1_767_225_600_000


def measure(resources: int, seconds: int = 2 * 86400) -> dict[str, int]:
    core = DetectionCore()
    store = MemoryStore()
    machine = "orders-api-7d9f8b6c4-x2k9p"
    for i in range(seconds):
        core.observe(
            AuditEvent(
                event_id=f"e{i}",
                ts_us=(T0 + i * 1000) * 1000,
                machine_id=machine,
                resource=f"postgres://orders-db/public.table_{i % resources}",
                operation="SELECT",
                outcome="SUCCESS",
            ),
            store,
        )
    machine_bytes = len(store.data[MACHINE][machine]) + len(machine)
    other = sum(
        len(k) + len(v)
        for kind, table in store.data.items()
        if kind != MACHINE
        for k, v in table.items()
    )
    return {
        "resources": resources,
        "machine_record_bytes": machine_bytes,
        "group_and_store_bytes": other,
        "total_bytes": machine_bytes + other,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state_size", description=__doc__)
    parser.add_argument("--resources", type=int, nargs="+", default=[50, 5000])
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    rows = [measure(n) for n in args.resources]
    for r in rows:
        print(
            f"{r['resources']:>6} resources: machine record {r['machine_record_bytes']:>7,} B, "
            f"group and store records {r['group_and_store_bytes']:>7,} B"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
