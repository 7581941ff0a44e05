"""`auditwatch report`: the periodic digest of what the archive and the alerts topic recorded.

One digest covers one whole UTC day or ISO week (Monday to Monday) of event time: per machine
and per peer group, the events archived, the distinct resources used and those new this
period, the failure ratio (FAILURE and DENIED outcomes) against the previous period's, and the
alerts that paged and how they ended (resolved, acknowledged, still open; time to
acknowledge). It is written as a JSON document (`FIELDS` documents it) and a self-contained
HTML page (inline SVG, no script, nothing loaded: the habits of `streams.tools.report`).

What is read, and why it is bounded:
- The archive topic, each partition from the first record archived at the lookback's start
  minus `archive_slack_ms` (Kafka's time index: `offsets_for_times`), up to the end offsets
  seen when reading starts. Archive records carry their archiving time as the Kafka timestamp,
  which is at or after the event time less `input.max_future_s`; so nothing of the range is
  skipped at the start, and a digest run soon after its period reads little beyond it. The
  active segment is not compacted, so records are deduplicated by (machine_id, event_id) (a
  64-bit hash of it, about 70 bytes of memory per event of the period and the previous one).
- The lookback: a resource is new this period when the machine (for a group: any member)
  did not use it in the `lookback` periods before (default 7 days for a daily digest, 4 weeks
  for a weekly one). Resources are counted as the new_resource detector judges them,
  normalised at `detectors.resource_depth` (`s3://b/2026/11/x.pdf` -> `s3://b/{n}/{n}`).
- The alerts topic from the period's start (less the same slack) to its end offsets, and the
  control topic (acknowledgements) whole. The alerts topic is compacted by alert id, so an
  alert's opening state may be gone; then its latest state stands for it (an alert counts as
  paged if any state read is a page, or, with its `opened` state compacted away, if its
  severity is medium or above).

Imports: the standard library, confluent-kafka, orjson and the project's schemas and ops.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import orjson

from schemas.alert import PAGE_RANK, SEVERITY_RANK, state_identity
from schemas.event import format_rfc3339_ms, parse_timestamp_us
from streams.ops.config import Config
from streams.tools.report import _CSS, _e, _Frame, _polyline

PERIODS = ("day", "week")
DEFAULT_LOOKBACK = {"day": 7, "week": 4}
FORMAT_VERSION = 1
MAX_HTML_ROWS = 500  # rows per HTML table; the JSON has every row
MAX_NEW_LISTED = 20  # new resources listed per machine or group in the JSON
_DAY_MS = 86_400_000

# The JSON document's fields, for operators and for whatever reads the file.
FIELDS = {
    "format": "version of this document's layout (1)",
    "period": "kind (day|week), label (2026-12-06, 2026-W49), start and end (RFC 3339, UTC; "
    "end exclusive) of the event time covered",
    "previous_period": "the period just before, whose failure ratio and events are compared",
    "lookback": "periods and start: a resource is new when not used since that start",
    "source": "topics read, records read, duplicates dropped, alerts and acknowledgements read",
    "totals": "the whole deployment: the machine fields below, summed",
    "machines[]": "one per machine with events or pages this period, most pages then events "
    "first: machine_id, group, events, failures (FAILURE or DENIED), denied, failure_ratio "
    "(failures/events, null without events), previous_events, previous_failure_ratio, "
    "failure_ratio_change (this minus previous, null if either is null), resources (distinct, "
    "normalised), new_resources (count), new_resource_list (first 20, sorted), new_machine "
    "(no event in the lookback), first_event and last_event, pages (alerts that paged), "
    "pages_resolved, pages_acked (acknowledged, not resolved), pages_open, "
    "median_time_to_ack_s",
    "groups[]": "the same per peer group (detectors' group naming), plus machines and new_machines",
    "pages[]": "every alert that paged this period: alert_id, machine_id, group, detector, "
    "severity (highest seen), score, paged_at (event time of its first page), summary, ended "
    "(resolved | acked | open), resolved_at (event time), time_to_resolve_s (event time), "
    "acknowledged_by, acknowledged_at (wall clock), time_to_ack_s (acknowledgement minus the "
    "moment the page was written; null when unknown)",
    "hourly": "bucket_s and, per bucket of the period, events and failures (the HTML plot)",
}


# --- the period ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    kind: str
    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        if self.kind == "week":
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        return self.start.strftime("%Y-%m-%d")

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def before(self, n: int = 1) -> Period:
        """The period `n` periods earlier."""
        step = self.end - self.start
        return Period(self.kind, self.start - n * step, self.end - n * step)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            "start": format_rfc3339_ms(self.start_ms),
            "end": format_rfc3339_ms(self.end_ms),
        }


def period_ending(kind: str, end: datetime) -> Period:
    """The last whole period (UTC day, ISO week from Monday) that ends at or before `end`."""
    if kind not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {kind!r}")
    end = end.astimezone(UTC)
    stop = end.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return Period(kind, stop - timedelta(days=1), stop)
    stop -= timedelta(days=stop.weekday())
    return Period(kind, stop - timedelta(days=7), stop)


def file_names(period: Period) -> tuple[str, str]:
    """The HTML and JSON file names of a period's digest: the same for every run."""
    base = f"digest-{period.label}"
    return base + ".html", base + ".json"


# --- reading ------------------------------------------------------------------------------


class Progress:
    """Progress of a long read on stderr: a line redrawn in place on a terminal, else a line
    every `every_s` (a cron job's log)."""

    def __init__(self, stream: IO[str] | None, every_s: float = 10.0) -> None:
        self.stream = stream
        self.tty = stream is not None and stream.isatty()
        self.every_s = 0.5 if self.tty else every_s
        self.what = ""
        self.total = 0
        self.started = self.last = time.monotonic()

    def begin(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.started = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not force and now - self.last < self.every_s):
            return
        self.last = now
        share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        line = f"reading {self.what}: {done:,}/{self.total:,} records{share}"
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self, done: int) -> None:
        if self.stream is None:
            return
        took = time.monotonic() - self.started
        line = f"read {done:,} records of {self.what} in {took:.1f} s"
        self.stream.write(("\r" if self.tty else "") + line + "\n")
        self.stream.flush()


def scan_topic(
    cfg: Config,
    topic: str,
    from_ms: int | None,
    progress: Progress,
    timeout: float = 30.0,
) -> Iterator[Any]:
    """The messages of `topic` from the first one written at or after `from_ms` (all of them
    for None) to the end offsets seen when reading starts, partition by partition as they
    come (read_committed)."""
    from streams.tools.reading import read_range

    done = 0
    try:
        for msg in read_range(
            cfg,
            topic,
            from_ms=from_ms,
            timeout=timeout,
            group_prefix="auditwatch-digest-",
            batch=2000,
            on_start=lambda _skipped, total: progress.begin(topic, total),
        ):
            done += 1
            yield msg
            progress.update(done)
    finally:
        progress.end(done)


def archive_slack_ms(cfg: Config) -> int:
    from streams.tools.seed import archive_slack_ms as slack

    return slack(cfg)


# --- aggregation --------------------------------------------------------------------------


@dataclass
class _Tally:
    """What one machine or group did in the period (and the previous one)."""

    events: int = 0
    failures: int = 0
    denied: int = 0
    prev_events: int = 0
    prev_failures: int = 0
    resources: set[str] = field(default_factory=set)
    machines: set[str] = field(default_factory=set)
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, ts: int, outcome: str, resource: str, machine: str) -> None:
        self.events += 1
        if outcome != "SUCCESS":
            self.failures += 1
            self.denied += outcome == "DENIED"
        self.resources.add(resource)
        self.machines.add(machine)
        self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
        self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)


@dataclass
class _Page:
    alert_id: str
    machine_id: str
    group: str
    detector: str
    severity: str
    score: float
    paged_at_us: int
    paged_wall_ms: int | None
    summary: str
    resolved_at_us: int | None
    acknowledged_by: str | None
    acknowledged_at_ms: int | None

    @property
    def ended(self) -> str:
        if self.resolved_at_us is not None:
            return "resolved"
        return "acked" if self.acknowledged_by else "open"

    @property
    def time_to_ack_s(self) -> float | None:
        if self.acknowledged_at_ms is None or self.paged_wall_ms is None:
            return None
        return max(self.acknowledged_at_ms - self.paged_wall_ms, 0) / 1000

    def to_json(self) -> dict[str, Any]:
        resolved = self.resolved_at_us
        return {
            "alert_id": self.alert_id,
            "machine_id": self.machine_id,
            "group": self.group,
            "detector": self.detector,
            "severity": self.severity,
            "score": self.score,
            "paged_at": format_rfc3339_ms(self.paged_at_us // 1000),
            "summary": self.summary,
            "ended": self.ended,
            "resolved_at": None if resolved is None else format_rfc3339_ms(resolved // 1000),
            "time_to_resolve_s": None
            if resolved is None
            else round((resolved - self.paged_at_us) / 1e6, 3),
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": None
            if self.acknowledged_at_ms is None
            else format_rfc3339_ms(self.acknowledged_at_ms),
            "time_to_ack_s": self.time_to_ack_s,
        }


class _Named:
    """What GroupNames reads of an event: its machine and attributes."""

    __slots__ = ("attributes", "machine_id")

    def __init__(self, machine_id: str, attributes: dict[str, str]) -> None:
        self.machine_id, self.attributes = machine_id, attributes


class Digest:
    """Accumulates archive records and alert states into one period's digest."""

    def __init__(self, cfg: Config, period: Period, lookback: int) -> None:
        from detectors.identity import GroupNames
        from detectors.resources import normalise_resource

        if lookback < 1:
            raise ValueError(f"the lookback must be at least 1 period, not {lookback}")
        self.period, self.lookback = period, lookback
        self.previous = period.before()
        self.lookback_start = period.before(lookback)
        depth = cfg.detectors.resource_depth
        self._normalise: Callable[[str], str] = lambda r: normalise_resource(r, depth)
        self._names = GroupNames(cfg.detectors.groups.attribute, cfg.detectors.groups.patterns)
        self._group_attr = cfg.detectors.groups.attribute
        self._group_of_machine: dict[str, str] = {}
        self.machines: dict[str, _Tally] = {}
        self.groups: dict[str, _Tally] = {}
        self.before_m: set[tuple[str, str]] = set()  # (machine, resource) used in the lookback
        self.before_g: set[tuple[str, str]] = set()
        self.known_machines: set[str] = set()
        self.machine_group: dict[str, str] = {}
        self._seen: set[int] = set()
        self.records = 0
        self.duplicates = 0
        self.bucket_s = 3600
        n = (period.end_ms - period.start_ms) // (self.bucket_s * 1000)
        self.hourly_events = [0] * n
        self.hourly_failures = [0] * n
        self.pages: list[_Page] = []
        self.alert_states = 0
        self.acks_read = 0

    def _group(self, machine: str, attributes: dict[str, str]) -> str:
        named = attributes.get(self._group_attr) if self._group_attr else None
        if named:
            return named
        group = self._group_of_machine.get(machine)
        if group is None:
            group = self._names.of(cast(Any, _Named(machine, attributes)))
            self._group_of_machine[machine] = group
        return group

    def add_archived(self, record: dict[str, Any]) -> None:
        """One archive record's event (`archive_record.event`)."""
        self.records += 1
        ts = record["timestamp"]
        if isinstance(ts, datetime):
            ts = int(ts.timestamp() * 1000)
        p = self.period
        if ts >= p.end_ms or ts < self.lookback_start.start_ms:
            return
        machine = record["machine_id"]
        group = self._group(machine, record.get("attributes") or {})
        resource = self._normalise(record["resource"])
        if ts < self.previous.start_ms:
            self.before_m.add((machine, resource))
            self.before_g.add((group, resource))
            self.known_machines.add(machine)
            return
        # The active segment is not compacted: the same record may be there twice.
        ident = f"{machine}\x1f{record['event_id']}".encode()
        h = int.from_bytes(hashlib.blake2b(ident, digest_size=8).digest(), "big")
        if h in self._seen:
            self.duplicates += 1
            return
        self._seen.add(h)
        outcome = record["outcome"]
        if ts < p.start_ms:
            self.before_m.add((machine, resource))
            self.before_g.add((group, resource))
            self.known_machines.add(machine)
            failed = outcome != "SUCCESS"
            for tally in (self._tally(self.machines, machine), self._tally(self.groups, group)):
                tally.prev_events += 1
                tally.prev_failures += failed
            return
        self.machine_group.setdefault(machine, group)
        self._tally(self.machines, machine).add(ts, outcome, resource, machine)
        self._tally(self.groups, group).add(ts, outcome, resource, machine)
        i = (ts - p.start_ms) // (self.bucket_s * 1000)
        self.hourly_events[i] += 1
        self.hourly_failures[i] += outcome != "SUCCESS"

    @staticmethod
    def _tally(table: dict[str, _Tally], name: str) -> _Tally:
        t = table.get(name)
        if t is None:
            t = table[name] = _Tally()
        return t

    def add_alerts(
        self, states: list[tuple[int, dict[str, Any]]], acks: Mapping[str, tuple[str, int | None]]
    ) -> None:
        """Alert states read (Kafka timestamp, state), and acknowledgements by alert id (who,
        when in wall-clock ms)."""
        by_alert: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for wall_ms, a in states:
            if isinstance(a.get("alert_id"), str):
                by_alert.setdefault(a["alert_id"], []).append((wall_ms, a))
        self.alert_states = len(states)
        self.acks_read = len(acks)
        for alert_id, found in by_alert.items():
            page = self._page(alert_id, found, acks.get(alert_id))
            in_period = self.period.start_ms * 1000, self.period.end_ms * 1000
            if page is not None and in_period[0] <= page.paged_at_us < in_period[1]:
                self.pages.append(page)
        self.pages.sort(key=lambda pg: (pg.paged_at_us, pg.alert_id))

    @staticmethod
    def _page(
        alert_id: str, found: list[tuple[int, dict[str, Any]]], ack: tuple[str, int | None] | None
    ) -> _Page | None:
        def when(a: dict[str, Any], key: str = "event_time") -> int:
            return parse_timestamp_us(a[key])

        def rank(a: dict[str, Any]) -> int:
            return SEVERITY_RANK.get(a.get("severity", ""), 0)

        found.sort(key=lambda f: (when(f[1]), f[0]))
        pages = [f for f in found if f[1].get("status") in ("opened", "escalated")]
        pages = [f for f in pages if rank(f[1]) >= PAGE_RANK]
        opened = any(a.get("status") == "opened" for _, a in found)
        latest = found[-1][1]
        top = max((a for _, a in found), key=rank)
        if pages:
            wall_ms, first = pages[0]
            paged_at = when(first)
            paged_wall: int | None = wall_ms
        elif not opened and rank(top) >= PAGE_RANK:
            # Its opening state was compacted away: the alert stands for itself.
            first = latest
            paged_at = when(
                latest, "first_event_time" if latest.get("first_event_time") else "event_time"
            )
            paged_wall = None
        else:
            return None
        resolved = [when(a) for _, a in found if a.get("status") == "resolved"]
        acked_by = ack[0] if ack else None
        acked_at = ack[1] if ack else None
        if acked_by is None:
            acked_by = next(
                (a["acknowledged_by"] for _, a in found if a.get("acknowledged_by")), None
            )
        return _Page(
            alert_id=alert_id,
            machine_id=str(first.get("machine_id", "")),
            group=str(first.get("group", "")),
            detector=str(first.get("detector", "")),
            severity=str(top.get("severity", "")),
            score=float(max(a.get("score") or 0 for _, a in found)),
            paged_at_us=paged_at,
            paged_wall_ms=paged_wall,
            summary=str(first.get("summary", "")),
            resolved_at_us=min(resolved) if resolved else None,
            acknowledged_by=acked_by,
            acknowledged_at_ms=acked_at,
        )

    # --- the document ---------------------------------------------------------------

    def document(self, source: dict[str, Any]) -> dict[str, Any]:
        pages_by_machine: dict[str, list[_Page]] = {}
        pages_by_group: dict[str, list[_Page]] = {}
        for pg in self.pages:
            pages_by_machine.setdefault(pg.machine_id, []).append(pg)
            pages_by_group.setdefault(pg.group, []).append(pg)
        machines: list[dict[str, Any]] = []
        for name in set(self.machines) | set(pages_by_machine):
            t = self.machines.get(name, _Tally())
            if not t.events and name not in pages_by_machine:
                continue  # active only in the previous period
            new = sorted(r for r in t.resources if (name, r) not in self.before_m)
            group = self.machine_group.get(name) or pages_by_machine[name][0].group
            row: dict[str, Any] = {"machine_id": name, "group": group}
            row |= _figures(t, new, pages_by_machine.get(name, []))
            row["new_machine"] = bool(t.events) and name not in self.known_machines
            machines.append(row)
        groups: list[dict[str, Any]] = []
        for name in set(self.groups) | set(pages_by_group):
            t = self.groups.get(name, _Tally())
            if not t.events and name not in pages_by_group:
                continue
            new = sorted(r for r in t.resources if (name, r) not in self.before_g)
            row = {"group": name, "machines": len(t.machines)}
            row["new_machines"] = len(t.machines - self.known_machines)
            row |= _figures(t, new, pages_by_group.get(name, []))
            groups.append(row)
        for rows in (machines, groups):
            rows.sort(key=lambda r: (-r["pages"], -r["events"], r.get("machine_id", r["group"])))
        total = _Tally()
        for t in self.machines.values():
            total.events += t.events
            total.failures += t.failures
            total.denied += t.denied
            total.prev_events += t.prev_events
            total.prev_failures += t.prev_failures
        totals = _figures(total, [], self.pages)
        del totals["resources"], totals["new_resource_list"], totals["first_event"]
        del totals["last_event"]
        totals["machines"] = sum(1 for m in machines if m["events"])
        totals["new_machines"] = sum(1 for m in machines if m["new_machine"])
        totals["groups"] = sum(1 for g in groups if g["events"])
        totals["resources"] = sum(m["resources"] for m in machines)
        totals["new_resources"] = sum(m["new_resources"] for m in machines)
        return {
            "format": FORMAT_VERSION,
            "period": self.period.to_json(),
            "previous_period": self.previous.to_json(),
            "lookback": {
                "periods": self.lookback,
                "start": format_rfc3339_ms(self.lookback_start.start_ms),
            },
            "source": source
            | {
                "archive_records_read": self.records,
                "duplicates_dropped": self.duplicates,
                "alert_states_read": self.alert_states,
                "acknowledgements_read": self.acks_read,
            },
            "totals": totals,
            "machines": machines,
            "groups": groups,
            "pages": [pg.to_json() for pg in self.pages],
            "hourly": {
                "bucket_s": self.bucket_s,
                "events": self.hourly_events,
                "failures": self.hourly_failures,
            },
        }


def _ratio(failures: int, events: int) -> float | None:
    return round(failures / events, 4) if events else None


def _figures(t: _Tally, new: list[str], pages: list[_Page]) -> dict[str, Any]:
    ratio, prev = _ratio(t.failures, t.events), _ratio(t.prev_failures, t.prev_events)
    acks = [s for s in (pg.time_to_ack_s for pg in pages) if s is not None]
    ended = Counter(pg.ended for pg in pages)
    return {
        "events": t.events,
        "failures": t.failures,
        "denied": t.denied,
        "failure_ratio": ratio,
        "previous_events": t.prev_events,
        "previous_failure_ratio": prev,
        "failure_ratio_change": None if ratio is None or prev is None else round(ratio - prev, 4),
        "resources": len(t.resources),
        "new_resources": len(new),
        "new_resource_list": new[:MAX_NEW_LISTED],
        "first_event": None if t.first_ms is None else format_rfc3339_ms(t.first_ms),
        "last_event": None if t.last_ms is None else format_rfc3339_ms(t.last_ms),
        "pages": len(pages),
        "pages_resolved": ended["resolved"],
        "pages_acked": ended["acked"],
        "pages_open": ended["open"],
        "median_time_to_ack_s": round(statistics.median(acks), 3) if acks else None,
    }


# --- building it from Kafka ---------------------------------------------------------------


def _topic_exists(cfg: Config, topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(cfg.kafka.client_config()).list_topics(topic, timeout=15).topics.get(topic)
    return meta is not None and meta.error is None and bool(meta.partitions)


def build_digest(
    cfg: Config,
    period: Period,
    lookback: int | None = None,
    progress: IO[str] | None = sys.stderr,
) -> dict[str, Any]:
    """Read the archive, alerts and control topics and return the period's digest."""
    from schemas.codec import decode_wire
    from streams.ops.control import read_state

    digest = Digest(cfg, period, DEFAULT_LOOKBACK[period.kind] if lookback is None else lookback)
    slack = archive_slack_ms(cfg)
    bar = Progress(progress)
    for msg in scan_topic(cfg, cfg.topics.archive, digest.lookback_start.start_ms - slack, bar):
        digest.add_archived(decode_wire(msg.value(), "archive_record")["event"])
    seen: set[Any] = set()
    states: list[tuple[int, dict[str, Any]]] = []
    for msg in scan_topic(cfg, cfg.topics.alerts, period.start_ms - slack, bar):
        value = msg.value()
        if not value:
            continue  # a tombstone
        a = orjson.loads(value)
        identity = state_identity(a, value)
        if identity in seen:
            continue  # written again by a worker that re-processed after a crash
        seen.add(identity)
        states.append((msg.timestamp()[1], a))
    acks: dict[str, tuple[str, int | None]] = {}
    if _topic_exists(cfg, cfg.topics.control):
        for alert_id, record in read_state(cfg).items():
            if record.acknowledged_by:
                acks[alert_id] = (record.acknowledged_by, record.acknowledged_at_ms)
    digest.add_alerts(states, acks)
    return digest.document(
        {
            "archive_topic": cfg.topics.archive,
            "alerts_topic": cfg.topics.alerts,
            "control_topic": cfg.topics.control,
            "archive_read_from": format_rfc3339_ms(max(digest.lookback_start.start_ms - slack, 0)),
        }
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` whole: a reader (or a re-run) never sees half a digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json_bytes(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


# --- HTML ---------------------------------------------------------------------------------

_DIGEST_CSS = """
table.digest td { white-space: nowrap; }
table.digest td.summary { white-space: normal; min-width: 260px; }
.ended-resolved { color: #080; } .ended-acked { color: #a60; } .ended-open { color: #b00; }
.note { color: #555; font-size: 13px; }
"""


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _change_pp(v: float | None) -> str:
    if v is None:
        return "<td>-</td>"
    cls = "up" if v > 0 else "down" if v < 0 else ""
    return f'<td class="{cls}">{100 * v:+.1f} pp</td>'


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def _time(text: str | None) -> str:
    return "-" if not text else text[:19].replace("T", " ")


def events_plot(doc: dict[str, Any]) -> str:
    """Events and failures per hour of the period, a marker per page."""
    hourly = doc["hourly"]
    events, failures = hourly["events"], hourly["failures"]
    if not any(events):
        return '<p class="empty">No events archived in this period.</p>'
    start = datetime.fromisoformat(doc["period"]["start"].replace("Z", "+00:00"))
    f = _Frame(900, 240, len(events), max(max(events) * 1.1, 1.0), start, hourly["bucket_s"])
    body = [
        _polyline(
            f,
            list(enumerate(map(float, events))),
            "series",
            ' fill="none" stroke="#1f77b4" stroke-width="1.5"',
        ),
        _polyline(
            f,
            list(enumerate(map(float, failures))),
            "series",
            ' fill="none" stroke="#d62728" stroke-width="1.5"',
        ),
    ]
    for pg in doc["pages"]:
        at = datetime.fromisoformat(pg["paged_at"].replace("Z", "+00:00"))
        x = f.x_at(at)
        body.append(
            f'<circle class="page" cx="{x:.1f}" cy="{f.top + 6}" r="4" fill="#ff7f0e">'
            f"<title>{_e(_time(pg['paged_at']))} {_e(pg['severity'])} {_e(pg['detector'])} "
            f"{_e(pg['machine_id'])}: {_e(pg['summary'])} ({_e(pg['ended'])})</title></circle>"
        )
    legend = (
        '<span><i class="sw" style="background:#1f77b4"></i>events</span>'
        '<span><i class="sw" style="background:#d62728"></i>failures and denials</span>'
        '<span><i class="sw" style="background:#ff7f0e"></i>page (hover for it)</span>'
    )
    return (
        f'<figure class="plot" data-plot="events" data-points="{2 * len(events)}" '
        f'data-markers="{len(doc["pages"])}"><figcaption><b>Events per hour</b> (UTC, event '
        "time), failures and denials, and pages.</figcaption>"
        + f.svg(body, "events per hour")
        + f'<div class="legend">{legend}</div></figure>'
    )


def failure_plot(doc: dict[str, Any], limit: int = 15) -> str:
    """Failure ratio per group, this period against the previous one: the busiest groups."""
    rows = [g for g in doc["groups"] if g["events"]][:limit]
    rows.sort(key=lambda g: -g["events"])
    if not rows:
        return '<p class="empty">No groups with events in this period.</p>'
    label_w, bar_h, gap, width = 260, 12, 6, 900
    per_row = 2 * bar_h + gap
    height = 20 + per_row * len(rows)
    vmax = max(max(g["failure_ratio"] or 0, g["previous_failure_ratio"] or 0) for g in rows)
    scale = (width - label_w - 70) / (vmax or 1.0)
    body: list[str] = []
    n_bars = 0
    for k, g in enumerate(rows):
        y0 = 10 + k * per_row
        name = g["group"] if len(g["group"]) <= 40 else g["group"][:39] + "…"
        body.append(
            f'<text x="{label_w - 8}" y="{y0 + bar_h + 4:.1f}" text-anchor="end">{_e(name)}</text>'
        )
        for j, (key, colour, what) in enumerate(
            (
                ("failure_ratio", "#d62728", "this period"),
                ("previous_failure_ratio", "#bbb", "previous"),
            )
        ):
            v = g[key]
            y = y0 + j * bar_h
            w = max((v or 0) * scale, 1.0 if v else 0.0)
            body.append(
                f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{colour}"><title>{_e(g["group"])}: {_pct(v)} failed ({what})</title></rect>'
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}">{_pct(v)}</text>'
            )
            n_bars += 1
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="failure ratio per group">'
        + "".join(body)
        + "</svg>"
    )
    legend = (
        '<span><i class="sw" style="background:#d62728"></i>this period</span>'
        '<span><i class="sw" style="background:#bbb"></i>previous period</span>'
    )
    return (
        f'<figure class="plot" data-plot="failures" data-points="{n_bars}">'
        f"<figcaption><b>Failure ratio per group</b>: failures and denials per event, the "
        f"{len(rows)} busiest groups.</figcaption>{svg}"
        f'<div class="legend">{legend}</div></figure>'
    )


_FIGURE_HEAD = (
    "<th>events</th><th>failed</th><th>failure ratio</th><th>previous</th><th>change</th>"
    "<th>resources</th><th>new</th><th>pages</th><th>resolved</th><th>acked</th><th>open</th>"
    "<th>median ack</th>"
)


def _figure_cells(r: dict[str, Any]) -> str:
    return (
        f"<td>{r['events']:,}</td><td>{r['failures']:,}</td><td>{_pct(r['failure_ratio'])}</td>"
        f"<td>{_pct(r['previous_failure_ratio'])}</td>{_change_pp(r['failure_ratio_change'])}"
        f"<td>{r['resources']:,}</td><td>{r['new_resources']:,}</td><td>{r['pages']}</td>"
        f"<td>{r['pages_resolved']}</td><td>{r['pages_acked']}</td><td>{r['pages_open']}</td>"
        f"<td>{_secs(r['median_time_to_ack_s'])}</td>"
    )


def _table(kind: str, head: str, rows: str, total: int) -> str:
    """A table of the first MAX_HTML_ROWS of `total` rows, saying when there are more."""
    more = (
        f'<p class="note">{MAX_HTML_ROWS} of {total:,} {kind} shown; the JSON has them all.</p>'
        if total > MAX_HTML_ROWS
        else ""
    )
    return f'<table class="digest {kind}"><tr>{head}</tr>{rows}</table>{more}'


def render_digest_html(doc: dict[str, Any]) -> str:
    """The digest as one HTML document (nothing loaded from anywhere)."""
    p, t = doc["period"], doc["totals"]
    title = f"auditwatch digest {p['label']}"
    meta = (
        f'<div class="meta"><div>{_e(p["kind"])} {_e(_time(p["start"]))} to '
        f"{_e(_time(p['end']))} UTC (event time); previous period from "
        f"{_e(_time(doc['previous_period']['start']))}; new means not used since "
        f"{_e(_time(doc['lookback']['start']))} ({doc['lookback']['periods']} periods)</div>"
        f"<div>from {_e(doc['source']['archive_topic'])} "
        f"({doc['source']['archive_records_read']:,} records read, "
        f"{doc['source']['duplicates_dropped']:,} duplicates dropped) and "
        f"{_e(doc['source']['alerts_topic'])} ({doc['source']['alert_states_read']:,} alert "
        "states)</div></div>"
    )
    totals = (
        '<table class="digest totals"><tr><th class="text">total</th><th>machines</th>'
        f"<th>new machines</th><th>groups</th>{_FIGURE_HEAD}</tr>"
        f'<tr><td class="text">all machines</td><td>{t["machines"]:,}</td>'
        f"<td>{t['new_machines']:,}</td><td>{t['groups']:,}</td>{_figure_cells(t)}</tr></table>"
    )
    groups = "".join(
        f'<tr><td class="text">{_e(g["group"])}</td><td>{g["machines"]}</td>'
        f"<td>{g['new_machines']}</td>{_figure_cells(g)}</tr>"
        for g in doc["groups"][:MAX_HTML_ROWS]
    )
    groups_table = _table(
        "groups",
        f'<th class="text">group</th><th>machines</th><th>new machines</th>{_FIGURE_HEAD}',
        groups,
        len(doc["groups"]),
    )
    machines = "".join(
        f'<tr><td class="text">{_e(m["machine_id"])}{" (new)" if m["new_machine"] else ""}</td>'
        f'<td class="text">{_e(m["group"])}</td>{_figure_cells(m)}</tr>'
        for m in doc["machines"][:MAX_HTML_ROWS]
    )
    machines_table = _table(
        "machines",
        f'<th class="text">machine</th><th class="text">group</th>{_FIGURE_HEAD}',
        machines,
        len(doc["machines"]),
    )
    pages = "".join(
        f'<tr><td class="text">{_e(_time(pg["paged_at"]))}</td>'
        f'<td class="text">{_e(pg["machine_id"])}</td><td class="text">{_e(pg["detector"])}</td>'
        f'<td class="text">{_e(pg["severity"])}</td>'
        f'<td class="text ended-{_e(pg["ended"])}">{_e(pg["ended"])}</td>'
        f"<td>{_secs(pg['time_to_ack_s'])}</td><td>{_secs(pg['time_to_resolve_s'])}</td>"
        f'<td class="text summary">{_e(pg["summary"])}</td></tr>'
        for pg in doc["pages"][:MAX_HTML_ROWS]
    )
    pages_table = (
        _table(
            "pages",
            '<th class="text">paged at (UTC)</th><th class="text">machine</th>'
            '<th class="text">detector</th><th class="text">severity</th>'
            '<th class="text">ended</th><th>time to ack</th><th>time to resolve</th>'
            '<th class="text">summary</th>',
            pages,
            len(doc["pages"]),
        )
        if doc["pages"]
        else '<p class="empty">No pages in this period.</p>'
    )
    new_rows = [
        (m["machine_id"], m["group"], r) for m in doc["machines"] for r in m["new_resource_list"]
    ]
    new_table = (
        _table(
            "new-resources",
            '<th class="text">machine</th><th class="text">group</th>'
            '<th class="text">resource</th>',
            "".join(
                f'<tr><td class="text">{_e(m)}</td><td class="text">{_e(g)}</td>'
                f'<td class="text">{_e(r)}</td></tr>'
                for m, g, r in new_rows[:MAX_HTML_ROWS]
            ),
            len(new_rows),
        )
        if new_rows
        else '<p class="empty">No resources new to their machine in this period.</p>'
    )
    body = (
        f"<h1>{_e(title)}</h1>{meta}{totals}"
        + "<h2>Events</h2>"
        + events_plot(doc)
        + "<h2>Failure ratio</h2>"
        + failure_plot(doc)
        + f"<h2>Pages</h2>{pages_table}"
        + f"<h2>Groups</h2>{groups_table}"
        + f"<h2>Machines</h2>{machines_table}"
        + "<h2>New resources</h2>"
        + f'<p class="note">At most {MAX_NEW_LISTED} per machine; the JSON counts them all.</p>'
        + new_table
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # No network at all, whatever the content: a CSP that allows only inline styles.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title>"
        f"<style>{_CSS}{_DIGEST_CSS}</style></head><body>{body}</body></html>\n"
    )


def summary_line(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    return (
        f"digest {doc['period']['label']}: {t['events']:,} events from {t['machines']:,} "
        f"machines in {t['groups']:,} groups ({t['new_machines']:,} new), "
        f"{t['new_resources']:,} new resources, failure ratio {_pct(t['failure_ratio'])} "
        f"(previous {_pct(t['previous_failure_ratio'])}), {t['pages']} pages "
        f"({t['pages_resolved']} resolved, {t['pages_acked']} acked, {t['pages_open']} open)"
    )
