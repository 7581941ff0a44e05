"""`auditwatch explain MACHINE`: the current baseline of one machine, for on-call.

Asks running workers (their `/machines/ID` endpoint; a machine lives in the one worker that
owns its detection partition, so give every worker's URL or ask them in turn), or, with
`--events`, replays event files through the detection core in memory and explains the result
(no Kafka). The explanation itself is `detectors.explain.explain_machine`.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from detectors.explain import explain_machine
from streams.ops.config import Config, load_config
from streams.tools.readers import FORMATS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="show what auditwatch has learned about a machine",
        description="Show a machine's current baseline: its rate profile by hour of the "
        "day, the resources and operations it uses (most recent first), its usual failure "
        "ratio, its peer group and whether it is still warming up (and so cannot page yet). "
        "Asks running workers over HTTP (--url, repeatable: the machine is held by the one "
        "worker that owns its detection partition), or replays event files in memory "
        "(--events, no Kafka needed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  auditwatch explain payments-api-7d9f8b6c4-x2k9p\n"
        "  auditwatch explain ingest-worker-07 --url http://aw-0.aw:9464 "
        "--url http://aw-1.aw:9464\n"
        "  auditwatch explain ci-runner-3 --events last-week.jsonl --json",
    )
    p.add_argument("machine", metavar="MACHINE", help="the machine identity (machine_id)")
    p.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="a worker's HTTP endpoint; repeat for each worker "
        "(default http://127.0.0.1:PORT, PORT from http.port in the config; required when "
        "http.port is 0, since each worker then picks its own port and logs it)",
    )
    p.add_argument(
        "--events",
        nargs="+",
        metavar="FILE",
        help="replay these event files in memory and explain from them instead of a worker",
    )
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="--events file format")
    p.add_argument("--csv-map", metavar="FIELD=COLUMN,...", help="--events CSV columns")
    p.add_argument(
        "--group",
        help="the machine's peer group, when groups come from an event attribute "
        "(otherwise it is worked out from the machine id)",
    )
    p.add_argument("--top", type=int, default=20, help="resources and operations to list")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for each worker (default 15)"
    )
    p.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)"
    )
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.events and args.url:
        print("auditwatch: give --url or --events, not both", file=sys.stderr)
        return 2
    if args.top < 1:
        print("auditwatch: --top must be at least 1", file=sys.stderr)
        return 2
    if args.events:
        result = explain_from_files(
            cfg, args.machine, args.events, args.format, args.csv_map, args.group, args.top
        )
        if result is None:
            print(f"{args.machine} does not appear in {', '.join(args.events)}", file=sys.stderr)
            return 1
    else:
        if not args.url and cfg.http.port == 0:
            print(
                "auditwatch: http.port is 0 in the config (each worker picks a free port and "
                "logs it as 'serving ... on http://HOST:PORT'): give --url http://HOST:PORT",
                file=sys.stderr,
            )
            return 2
        urls = args.url or [f"http://127.0.0.1:{cfg.http.port}"]
        result = explain_from_workers(urls, args.machine, args.group, args.timeout, args.top)
        if result is None:
            return 1
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(result))
    return 0


def explain_from_files(
    cfg: Config,
    machine_id: str,
    files: list[str],
    fmt: str = "jsonl",
    csv_map: str | None = None,
    group: str | None = None,
    top: int = 20,
) -> dict[str, Any] | None:
    """Validate, dedupe and detect over `files` in event-time order (as `auditwatch replay`
    does), then explain `machine_id`; None when the files never mention it."""
    from schemas.codec import BundledSchemas
    from streams.processor import MemoryStore, Origin, Processor
    from streams.tools.readers import parse_csv_map, read_records

    processor = Processor(cfg, BundledSchemas())
    store = MemoryStore()
    events = []
    for rec in read_records(files, fmt, parse_csv_map(csv_map)):
        _, event = processor.ingest_record(rec, store)
        if event is not None:
            events.append(event)
    events.sort(key=lambda e: e.ts_us)
    last_group: str | None = None
    for i, event in enumerate(events, 1):
        processor.detect(event, store, Origin("explain", None, i))
        if event.machine_id == machine_id:
            # The group its events actually went to, even when an attribute names it.
            last_group = processor.core.group_of(event)
    source = "given" if group else "its events"
    return explain_machine(
        store, processor.core, machine_id, group=group or last_group, group_source=source, top=top
    )


def explain_from_workers(
    urls: list[str], machine_id: str, group: str | None, timeout: float, top: int = 20
) -> dict[str, Any] | None:
    """The first worker's explanation that finds the machine; None (reasons on stderr) when
    none does. `top` bounds the resources and operations listed, as with --events."""
    query: dict[str, str | int] = {"top": top}
    if group:
        query["group"] = group
    path = (
        "/machines/" + urllib.parse.quote(machine_id, safe="") + "?" + urllib.parse.urlencode(query)
    )
    problems = []
    for base in urls:
        url = base.rstrip("/") + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body: dict[str, Any] = orjson.loads(resp.read())
                return body
        except urllib.error.HTTPError as e:
            try:
                detail = orjson.loads(e.read()).get("error", e.reason)
            except orjson.JSONDecodeError:
                detail = e.reason
            problems.append(f"{base}: {e.code} {detail}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            problems.append(f"{base}: cannot connect ({reason}); is `auditwatch run` up there?")
    for p in problems:
        print(p, file=sys.stderr)
    return None


def _hours(values: list[float], learned: list[bool]) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    peak = max(values) or 1.0
    return "".join(
        bars[min(8, round(8 * v / peak))] if seen else "·"
        for v, seen in zip(values, learned, strict=True)
    )


def render(e: dict[str, Any]) -> str:
    """The explanation for a person: what normal looks like, and whether it can page."""
    g = e["group"]
    w = e["warmup"]
    r = e["rate"]
    f = e["failure_ratio"]
    lines = [
        f"{e['machine_id']}"
        + (f"  (worker partition {e['topic']}[{e['partition']}])" if "partition" in e else ""),
        f"  peer group   {g['name']} ({g['source']}): "
        + (
            f"{g['members']} member(s), {'warm' if g['warm'] else 'warming up'}"
            if g["known"]
            else "not known here"
        ),
        f"  seen         {e['first_seen']} .. {e['last_seen']}, {e['events']:,} events",
    ]
    if w["can_page"]:
        how = "own warm-up done" if w["own"] else "judged by its warm peer group"
        lines.append(f"  can page     yes ({how})")
    else:
        lines.append(
            f"  can page     no, warming up: {w['events']}/{w['events_needed']} events, "
            f"{w['observed_s'] // 60}/{w['observed_s_needed'] // 60} minutes observed"
        )
    per_hour = r["expected_per_hour_utc"]
    lines.append(
        f"  rate         {_hours(per_hour, r['hour_learned_utc'])}  events/hour by UTC hour "
        f"00..23 (· not seen yet), peak {max(per_hour):,.1f} at {r['busiest_hour_utc']:02d}:00"
        if r["busiest_hour_utc"] is not None
        else "  rate         not learned yet"
    )
    lines.append(
        f"               model: {w['rate_intervals_learned']:,} intervals of "
        f"{r['interval_s']} s learned; a spike now needs {r['spike_threshold']:g} events in one"
    )
    res = e["resources"]
    lines.append(f"  resources    {res['known']:,} known, most recent:")
    lines += [f"                 {x['last_seen'][:16]}  {x['resource']}" for x in res["recent"]]
    ops = e["operations"]
    kind = ", read-only client" if ops["read_only"] and ops["known"] else ""
    lines.append(f"  operations   {ops['known']} known{kind}:")
    lines += [
        f"                 {x['last_seen'][:16]}  {x['operation']}"
        + (" (destructive)" if x["destructive"] else " (write)" if x["write"] else "")
        for x in ops["recent"]
    ]
    lines.append(
        f"  failures     usually {f['learned']:.1%} ({f['intervals_learned']:,} intervals); a "
        f"page needs >= {f['page_needs_failures']} failures and >= {f['page_needs_ratio']:.0%} "
        "in one interval"
    )
    if e["open_alerts"]:
        lines.append("  open alerts")
        lines += [
            f"                 {a['detector']} {a['severity']} since {a['since'][:16]} "
            f"({a['repeats']} findings) {a['alert_id']}"
            for a in e["open_alerts"]
        ]
    else:
        lines.append("  open alerts  none")
    return "\n".join(lines) + "\n"
