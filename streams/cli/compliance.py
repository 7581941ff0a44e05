"""`auditwatch compliance check`: is the audit record kept, complete and whole? See
streams.ops.compliance for what is checked and why."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from streams.cli.errors import UsageError


def _progress(enabled: bool) -> Any:
    """A progress line on a terminal while topics are read (silent otherwise)."""
    if not enabled or not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(topic: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done != total:
            return
        last[0] = now
        of = f" of {total:,}" if total else ""
        sys.stderr.write(f"\rreading {topic}: {done:,}{of} records\x1b[K")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_check(args: argparse.Namespace) -> int:
    from streams.ops.broker import require_broker
    from streams.ops.compliance import check, parse_since, render_markdown, render_text
    from streams.ops.config import load_config

    cfg = load_config(args.config)
    try:
        since_ms = parse_since(args.since, int(time.time() * 1000))
    except ValueError as e:  # InvalidEvent is a ValueError
        raise UsageError(f"--since {args.since!r}: {e}") from None
    for name, value in (("--gap-factor", args.gap_factor), ("--min-gap", args.min_gap)):
        if value <= 0:
            raise UsageError(f"{name} must be more than 0, got {value:g}")
    if not 0 <= args.max_deadletter_rate <= 1:
        raise UsageError(
            f"--max-deadletter-rate must be within 0-1, got {args.max_deadletter_rate:g}"
        )
    for path in (args.json, args.markdown):
        if path is not None and not Path(path).parent.is_dir():
            raise UsageError(f"{path}: its directory does not exist")
    require_broker(cfg)
    report = check(
        cfg,
        since_ms,
        gap_factor=args.gap_factor,
        min_gap_s=args.min_gap,
        max_deadletter_rate=args.max_deadletter_rate,
        progress=_progress(not args.quiet),
    )
    if args.json:
        Path(args.json).write_bytes(
            orjson.dumps(report.to_json(args.strict), option=orjson.OPT_INDENT_2) + b"\n"
        )
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(report, args.strict), encoding="utf-8")
    print(render_text(report, args.strict))
    return 0 if report.passed(args.strict) else 1


def add_parser(sub: Any) -> None:
    """Register `auditwatch compliance check`."""
    p = sub.add_parser(
        "compliance",
        help="prove the audit record is kept and complete: topic configs, ledger reconciliation",
        description="Evidence for an auditor that the archive keeps every event.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser(
        "check",
        help="check topic configs, producers, dead letters and the per-partition ledger",
        description="Checks (1) the archive, dead-letter and ledger topics' configs: the "
        "archive compacted only, no retention.ms/retention.bytes other than the configured "
        "topics.archive_retention_ms, dead letters never compacted, and with 3 brokers or more "
        "replication 3+ and min.insync.replicas 2+; (2) per producer (machine_id) over the "
        "window: the share of events with each optional field (source_ip, identity_type, "
        "source, attributes) and gaps in its event times against its usual interval; (3) the "
        "dead-letter rate per reason over the window; (4) per input partition, from the "
        "ledger the workers commit with their outputs: records read = archived + "
        "dead-lettered + duplicates + forwarded, forwarded events processed or still waiting, "
        "and the archive and dead-letter topics holding what the ledger counted (read over "
        "the ledger's whole offset range). Findings (a setting that can lose records, records "
        "accounted for nowhere or missing) exit 1; warnings (gaps, a high dead-letter rate, "
        "a pipeline still catching up) are listed and exit 0 unless --strict. Exit 2: usage.",
    )
    c.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: defaults)")
    c.add_argument(
        "--since",
        default="24h",
        metavar="WHEN",
        help="the window of the producer and dead-letter sections: a duration before now "
        "(24h, 90m, 7d) or a time (RFC 3339 or epoch ms); default 24h",
    )
    c.add_argument("--json", metavar="FILE", help="write the whole report as JSON")
    c.add_argument("--markdown", metavar="FILE", help="write the report as Markdown")
    c.add_argument(
        "--gap-factor",
        type=float,
        default=10.0,
        metavar="X",
        help="list a producer's gap over X times its usual interval (default 10)",
    )
    c.add_argument(
        "--min-gap",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="and over this many seconds (default 3600)",
    )
    c.add_argument(
        "--max-deadletter-rate",
        type=float,
        default=0.01,
        metavar="RATE",
        help="warn over this share of dead letters in the window (default 0.01)",
    )
    c.add_argument("--strict", action="store_true", help="warnings fail the check too")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    c.set_defaults(func=cmd_check)
