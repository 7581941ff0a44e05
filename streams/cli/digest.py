"""`auditwatch report --period day|week`: the periodic digest, as HTML and JSON, for cron.

The work is in `streams.tools.digest`; this module is the command: options, usage errors
before any broker is asked, the broker check, the files written whole and named by period.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.cli.errors import UsageError

HELP = "write a day's or a week's digest per machine and group (HTML and JSON)"

DESCRIPTION = """\
A digest of one whole period of event time, a UTC day or an ISO week (Monday 00:00 UTC to
Monday), per machine and per peer group: events archived, distinct resources and those new
this period (not used in the --lookback periods before), the failure ratio (FAILURE and
DENIED) against the previous period's, and the alerts that paged and how they ended
(resolved, acknowledged, still open; time to acknowledge).

It covers the last whole period that ends at or before --end (default: now), so a cron job
just after midnight (daily) or early on Monday (weekly) reports the period that just ended.
Files are named by period (--out DIR: DIR/digest-2026-12-06.html and .json, or
digest-2026-W49.*) and replaced whole, so a re-run rewrites the same files. Reads the
archive topic from the lookback's start (Kafka's time index) to its current end, the alerts
topic from the period's start, and the control topic; progress on stderr. One summary line
on stdout.

Exit status: 0 written; 1 the broker or a topic failed; 2 usage or config error."""


def _end_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    from schemas.event import InvalidEvent, parse_timestamp_us

    try:
        us = parse_timestamp_us(text)
    except InvalidEvent as e:
        raise UsageError(f"--end {text!r}: {e.message}") from None
    return datetime.fromtimestamp(us / 1e6, UTC)


def cmd_report(args: argparse.Namespace) -> int:
    from streams.ops.broker import require_broker
    from streams.ops.config import load_config
    from streams.tools.digest import (
        build_digest,
        file_names,
        period_ending,
        render_digest_html,
        summary_line,
        to_json_bytes,
        write_atomic,
    )

    if args.out is not None and (args.html or args.json):
        raise UsageError("give --out DIR, or --html FILE and/or --json FILE, not both")
    if args.out is None and not (args.html or args.json):
        raise UsageError("say where to write: --out DIR, or --html FILE and/or --json FILE")
    if args.lookback is not None and args.lookback < 1:
        raise UsageError(f"--lookback must be at least 1, got {args.lookback}")
    period = period_ending(args.period, _end_time(args.end))
    cfg = load_config(args.config)
    html_path: Path | None = None
    json_path: Path | str | None = None
    if args.out is not None:
        html_name, json_name = file_names(period)
        html_path, json_path = Path(args.out) / html_name, Path(args.out) / json_name
    else:
        html_path = Path(args.html) if args.html else None
        json_path = args.json if args.json == "-" else Path(args.json) if args.json else None
    require_broker(cfg)
    doc = build_digest(cfg, period, args.lookback, progress=None if args.quiet else sys.stderr)
    written = []
    if html_path is not None:
        write_atomic(html_path, render_digest_html(doc).encode())
        written.append(str(html_path))
    if json_path == "-":
        sys.stdout.buffer.write(to_json_bytes(doc))
        sys.stdout.flush()
    elif isinstance(json_path, Path):
        write_atomic(json_path, to_json_bytes(doc))
        written.append(str(json_path))
    line = summary_line(doc) + (f"; wrote {', '.join(written)}" if written else "")
    # With the JSON on stdout the summary goes to stderr, so stdout stays one document.
    print(line, file=sys.stderr if json_path == "-" else sys.stdout)
    return 0


def add_parser(sub: Any) -> None:
    """Register `auditwatch report`."""
    p = sub.add_parser(
        "report",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--period", required=True, choices=["day", "week"], help="what one digest covers"
    )
    p.add_argument(
        "--end",
        metavar="TIME",
        help="report the last whole period ending at or before TIME (RFC 3339; default now)",
    )
    p.add_argument(
        "--lookback",
        type=int,
        metavar="N",
        help="a resource is new when not used in the N periods before (default 7 for day, "
        "4 for week)",
    )
    p.add_argument("--out", metavar="DIR", help="write DIR/digest-<period>.html and .json")
    p.add_argument("--html", metavar="FILE", help="write the HTML digest here")
    p.add_argument("--json", metavar="FILE", help="write the JSON digest here (- : stdout)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)"
    )
    p.set_defaults(func=cmd_report)
