"""`auditwatch backtest`: run a candidate config (and the current one) over the same history.

The SRE tuning loop: change a config, `auditwatch config check` it, backtest it against the
running config over recorded events, read which pages it adds and removes (and, with labels,
its precision and recall), then deploy it.

Events come from files (any `--format`, read and validated once, as `replay` does) or from the
archive topic over an event-time range (as `seed --from-archive` reads it), are held in memory
in event-time order, and each config runs over them with its own processor and in-memory
state, exactly as `auditwatch replay` does: the NEW config's pages are the pages `replay
--config NEW` writes. While a config runs, a hook samples each machine's learned access-rate
band (`detectors.band`) once per plot bucket, for the HTML report (`streams.tools.report`).

Labels (for precision and recall) are labelled episodes, from either
- `--labels FILE`: JSON lines, one episode each: `machine_id`, `kind`, `start` and `end`
  (RFC 3339 or epoch ms; `start_ms`/`end_ms` also read, as `bench.evaluate` writes
  episodes.jsonl), optional `malicious` (default true) and `description`; or
- the events themselves: an event whose attribute `label` (or `injected`, what the synthetic
  generator's `mark_injected` writes; `--label-attribute` picks another) is set belongs to a
  malicious episode of that kind; one machine's labelled events of one kind less than 15
  minutes apart form one episode. Silence has no events to carry a label: use a file for it.
Pages are scored by `bench.evaluate.score` (its definitions: a page detects an episode on its
machine from 1 minute before its start to 15 minutes after its end).

Imports: streams, schemas, detectors and bench (scoring); Kafka only through `streams.tools.seed`
when reading the archive.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from schemas.event import AuditEvent, format_rfc3339_ms
from streams.ops.config import Config, load_config
from streams.tools.readers import FORMATS

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
# Plot resolution: about this many buckets across the whole range, on "nice" bucket sizes.
MAX_RATE_BUCKETS = 300
MAX_DETECTOR_BUCKETS = 60
_NICE_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
# Two paged episodes of the two configs are the same finding when they are on the same machine,
# from the same detector, and their spans overlap (this much slack either side).
MATCH_SLACK_MS = MINUTE_MS
# Labelled events of one machine and kind further apart than this start a new episode.
LABEL_GAP_MS = 15 * MINUTE_MS
LABEL_ATTRIBUTES = ("label", "injected")
DIFF_SHOWN = 15  # episodes listed per side of the diff in the text report; --json has all
TOP_SHOWN = 10


class BacktestError(ValueError):
    """Bad input for a backtest (labels file, time range...): exit status 2."""


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal (events done / total, rate, time left); silent
    when the stream is not a terminal or when disabled (--quiet)."""

    WIDTH = 24

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.label = ""
        self.total: int | None = None
        self.start = self.last = 0.0

    def begin(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * self.WIDTH)
            left = (self.total - done) / rate if rate > 0 else 0.0
            line = (
                f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {frac:4.0%} "
                f"{done:,}/{self.total:,} events {rate:,.0f}/s, {left:.0f} s left"
            )
        else:
            line = f"{self.label}: {done:,} records {rate:,.0f}/s"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def end(self, done: int) -> None:
        if not self.enabled:
            return
        self.update(done, force=True)
        self.stream.write("\n")
        self.stream.flush()


# -- the events -------------------------------------------------------------------------------


@dataclass
class Source:
    """The events of a backtest, validated, deduplicated and in event-time order."""

    description: str
    events: list[AuditEvent]
    records: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        ev = self.events
        return {
            "description": self.description,
            "records": self.records,
            "events": len(ev),
            "duplicates": self.duplicates,
            "dead_letters": dict(self.dead_letters.most_common()),
            "first_event_time": format_rfc3339_ms(ev[0].timestamp_ms) if ev else None,
            "last_event_time": format_rfc3339_ms(ev[-1].timestamp_ms) if ev else None,
        }


def events_from_files(
    cfg: Config,
    paths: Sequence[str],
    fmt: str = "jsonl",
    csv_map: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> Source:
    """Read, validate and dedupe event files as `replay` does (`cfg`'s input limits), keeping
    the rejected records' reasons."""
    from schemas.codec import BundledSchemas, decode_wire
    from streams.processor import MemoryStore, Processor
    from streams.tools.readers import read_records

    processor = Processor(cfg, BundledSchemas())
    store = MemoryStore()
    src = Source(f"{len(paths)} file(s): {', '.join(paths)}", [])
    if progress is not None:
        progress.begin("reading", None)
    for rec in read_records(list(paths), fmt, csv_map):
        src.records += 1
        outputs, event = processor.ingest_record(rec, store)
        for out in outputs:
            if out.kind == "deadletter":
                src.dead_letters[decode_wire(out.value, "dead_letter")["reason"]] += 1
        if event is not None:
            src.events.append(event)
        if progress is not None and src.records % 2000 == 0:
            progress.update(src.records)
    if progress is not None:
        progress.end(src.records)
    src.duplicates = processor.metrics["duplicates"]
    # Stable: equal timestamps keep file order, as replay and a topic keep them.
    src.events.sort(key=lambda e: e.ts_us)
    return src


def events_from_archive(
    cfg: Config,
    since_ms: int | None,
    until_ms: int | None,
    *,
    slack_ms: int | None = None,
    progress: IO[str] | None = None,
) -> Source:
    """The archive topic's events with event time in [since, until), deduplicated by event_id
    (the reading `seed --from-archive` does: only the records archived within `slack_ms` of
    the range are fetched)."""
    from streams.ops.broker import require_broker
    from streams.tools.seed import SeedStats
    from streams.tools.seed import events_from_archive as read_archive

    require_broker(cfg)
    stats = SeedStats()
    events = read_archive(cfg, since_ms, until_ms, stats, slack_ms=slack_ms, progress=progress)
    events.sort(key=lambda e: e.ts_us)
    span = (
        f"{format_rfc3339_ms(since_ms) if since_ms is not None else 'the start'} to "
        f"{format_rfc3339_ms(until_ms) if until_ms is not None else 'the end'}"
    )
    skipped = f", {stats.not_read:,} records outside it not read" if stats.not_read else ""
    src = Source(f"archive topic {cfg.topics.archive}, {span}{skipped}", events, records=stats.read)
    # Records read but outside the range are not duplicates: count only repeated event ids.
    src.duplicates = stats.in_range - len(events)
    return src


# -- labels ------------------------------------------------------------------------------------


def _ms(value: Any, what: str) -> int:
    from schemas.event import InvalidEvent, parse_timestamp_us

    try:
        return parse_timestamp_us(value) // 1000
    except InvalidEvent as e:
        raise BacktestError(f"{what}: {value!r}: {e.message}") from None


def labels_from_file(path: str | Path) -> list[Any]:
    """Episodes from a JSON-lines file (see the module docstring for the fields)."""
    from streams.tools.synthetic import Episode

    episodes: list[Episode] = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise BacktestError(f"cannot read labels {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BacktestError(f"{where}: not a JSON object") from None
        if not isinstance(d, dict):
            raise BacktestError(f"{where}: not a JSON object")
        missing = [
            k for k in ("machine_id", "kind") if not isinstance(d.get(k), str) or not d.get(k)
        ]
        start = d.get("start", d.get("start_ms"))
        end = d.get("end", d.get("end_ms"))
        missing += [k for k, v in (("start", start), ("end", end)) if v is None]
        if missing:
            raise BacktestError(f"{where}: missing {', '.join(missing)}")
        start_ms, end_ms = _ms(start, f"{where} start"), _ms(end, f"{where} end")
        if end_ms < start_ms:
            raise BacktestError(f"{where}: end is before start")
        episodes.append(
            Episode(
                kind=d["kind"],
                machine_id=d["machine_id"],
                start_ms=start_ms,
                end_ms=end_ms,
                malicious=bool(d.get("malicious", True)),
                description=str(d.get("description", "")),
            )
        )
    return episodes


def labels_from_events(
    events: Iterable[AuditEvent], attributes: Sequence[str] = LABEL_ATTRIBUTES
) -> list[Any]:
    """Malicious episodes from events that carry a label attribute (the first of `attributes`
    present): one machine's labelled events of one kind, split at gaps over 15 minutes."""
    from streams.tools.synthetic import Episode

    open_: dict[tuple[str, str], list[int]] = {}
    spans: list[tuple[str, str, int, int]] = []
    for ev in events:
        kind = next((ev.attributes[a] for a in attributes if ev.attributes.get(a)), None)
        if kind is None:
            continue
        key = (ev.machine_id, kind)
        ts = ev.timestamp_ms
        span = open_.get(key)
        if span is not None and ts - span[1] <= LABEL_GAP_MS:
            span[1] = max(span[1], ts)
            continue
        if span is not None:
            spans.append((*key, span[0], span[1]))
        open_[key] = [ts, ts]
    spans += [(*key, s[0], s[1]) for key, s in open_.items()]
    return [
        Episode(kind, machine, start, end, True, "labelled in the events")
        for machine, kind, start, end in sorted(spans, key=lambda s: (s[2], s[0], s[1]))
    ]


# -- running one config ----------------------------------------------------------------------


def nice_bucket_ms(span_ms: int, max_buckets: int, floor_ms: int) -> int:
    """The smallest "nice" bucket (1, 2, 5, 10, 15, 30 minutes, 1 hour...) at least `floor_ms`
    that cuts `span_ms` into at most `max_buckets`."""
    want = max(span_ms / max_buckets, floor_ms)
    for minutes in _NICE_MINUTES:
        if minutes * MINUTE_MS >= want:
            return minutes * MINUTE_MS
    return math.ceil(want / (7 * 86_400_000)) * 7 * 86_400_000


class Observed:
    """Per machine and plot bucket: events, and the busiest rate interval's count (what the
    access-rate detector compares with its threshold). Config-independent: filled once."""

    def __init__(self, start_ms: int, bucket_ms: int, interval_ms: int) -> None:
        self.start_ms, self.bucket_ms, self.interval_ms = start_ms, bucket_ms, interval_ms
        self.counts: dict[str, Counter[int]] = defaultdict(Counter)
        self.peaks: dict[str, dict[int, int]] = defaultdict(dict)
        self._current: dict[str, list[int]] = {}  # machine -> [interval, count]

    def add(self, event: AuditEvent) -> None:
        ts = event.timestamp_ms
        m = event.machine_id
        self.counts[m][(ts - self.start_ms) // self.bucket_ms] += 1
        interval = ts // self.interval_ms
        cur = self._current.get(m)
        if cur is None or interval != cur[0]:
            if cur is not None:
                self._fold(m, cur)
            self._current[m] = [interval, 1]
        else:
            cur[1] += 1

    def _fold(self, machine: str, cur: list[int]) -> None:
        b = (cur[0] * self.interval_ms - self.start_ms) // self.bucket_ms
        peaks = self.peaks[machine]
        peaks[b] = max(peaks.get(b, 0), cur[1])

    def finish(self) -> None:
        for m, cur in self._current.items():
            self._fold(m, cur)
        self._current.clear()


class BandSampler:
    """The hook run after each event: once per machine and plot bucket, the machine's learned
    access-rate band (as of its first event in the bucket, the model that judges the bucket),
    read through `detectors.band`."""

    def __init__(self, start_ms: int, bucket_ms: int) -> None:
        self.start_ms, self.bucket_ms = start_ms, bucket_ms
        self.samples: dict[str, dict[int, tuple[float, float, float]]] = defaultdict(dict)
        self._last: dict[str, int] = {}

    def after(self, event: AuditEvent, core: Any, store: Any) -> None:
        from detectors.band import machine_rate_band
        from detectors.core import MACHINE

        m = event.machine_id
        b = (event.timestamp_ms - self.start_ms) // self.bucket_ms
        if self._last.get(m) == b:
            return
        self._last[m] = b
        raw = store.get(MACHINE, m)
        if raw is None:
            return
        cfg = core.config_for(m, core.group_of(event))
        band = machine_rate_band(cfg, orjson.loads(raw), self.start_ms + (b + 1) * self.bucket_ms)
        if band is not None and band.warm:
            self.samples[m][b] = (
                round(band.low, 2),
                round(band.expected, 2),
                round(band.high, 2),
            )


@dataclass
class Run:
    """One config's results over the events."""

    name: str  # new or old
    config_file: str | None
    config_version: str
    pages: list[dict[str, Any]]
    statuses: Counter[str]
    episode_end_ms: dict[str, int]  # alert_id -> last event time of its episode
    seconds: float
    bands: BandSampler
    score: Any = None  # bench.evaluate.Score when labels were given


def run_config(
    name: str,
    cfg: Config,
    config_file: str | None,
    events: Sequence[AuditEvent],
    sampler: BandSampler,
    observed: Observed | None = None,
    progress: Progress | None = None,
) -> Run:
    """Run the detection core of `cfg` over `events` (in event-time order) as replay does."""
    from schemas.codec import BundledSchemas
    from schemas.event import parse_timestamp_us
    from streams.processor import Processor
    from streams.tools.partitioning import PartitionedDetection

    processor = Processor(cfg, BundledSchemas())
    detection = PartitionedDetection(processor, cfg.topics.partitions, "backtest")
    pages: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    ends: dict[str, int] = {}
    t0 = time.perf_counter()
    if progress is not None:
        progress.begin(f"{name:>3}", len(events))
    for i, event in enumerate(events, 1):
        for out in detection.detect(event, i):
            alert = out.alert
            assert alert is not None
            statuses[alert.status] += 1
            if alert.last_event_time is not None:
                end = parse_timestamp_us(alert.last_event_time) // 1000
                if end > ends.get(alert.alert_id, -1):
                    ends[alert.alert_id] = end
            if alert.is_page:
                pages.append(alert.to_json())
        if observed is not None:
            observed.add(event)
        assert detection.last_store is not None
        sampler.after(event, processor.core, detection.last_store)
        if progress is not None and i % 5000 == 0:
            progress.update(i)
    if progress is not None:
        progress.end(len(events))
    if observed is not None:
        observed.finish()
    return Run(
        name,
        config_file,
        cfg.detectors.build().version(),
        pages,
        statuses,
        ends,
        time.perf_counter() - t0,
        sampler,
    )


# -- comparing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PagedEpisode:
    """One alert episode that paged at least once: its first page, span and worst severity."""

    alert_id: str
    machine_id: str
    detector: str
    start_ms: int
    end_ms: int
    pages: int
    severity: str
    first_page: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "machine_id": self.machine_id,
            "detector": self.detector,
            "severity": self.severity,
            "pages": self.pages,
            "first_page_time": self.first_page["event_time"],
            "start": format_rfc3339_ms(self.start_ms),
            "end": format_rfc3339_ms(self.end_ms),
            "summary": self.first_page["summary"],
        }


def paged_episodes(run: Run) -> list[PagedEpisode]:
    from schemas.alert import SEVERITY_RANK
    from schemas.event import parse_timestamp_us

    by_id: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in run.pages:
        by_id[p["alert_id"]].append(p)
    out = []
    for alert_id, pages in by_id.items():
        first = pages[0]
        start = parse_timestamp_us(first.get("first_event_time") or first["event_time"]) // 1000
        end = max(run.episode_end_ms.get(alert_id, start), start)
        worst = max((p["severity"] for p in pages), key=SEVERITY_RANK.__getitem__)
        out.append(
            PagedEpisode(
                alert_id,
                first["machine_id"],
                first["detector"],
                start,
                end,
                len(pages),
                worst,
                first,
            )
        )
    out.sort(key=lambda e: (e.start_ms, e.machine_id, e.detector))
    return out


@dataclass
class Diff:
    both: list[tuple[PagedEpisode, PagedEpisode]]  # (new, an overlapping old)
    only_new: list[PagedEpisode]
    only_old: list[PagedEpisode]

    def to_json(self) -> dict[str, Any]:
        return {
            "matched_by": "machine, detector and overlapping episode time "
            f"(within {MATCH_SLACK_MS // 1000} s)",
            "both": len(self.both),
            "only_new": [e.to_json() for e in self.only_new],
            "only_old": [e.to_json() for e in self.only_old],
        }


def diff_runs(new: Sequence[PagedEpisode], old: Sequence[PagedEpisode]) -> Diff:
    """Paged episodes of the two configs matched by machine, detector and overlapping time.
    Alert ids differ between configs (they hash the config version), so time is the key."""
    index: dict[tuple[str, str], list[PagedEpisode]] = defaultdict(list)
    for e in old:
        index[(e.machine_id, e.detector)].append(e)
    matched_old: set[str] = set()
    both: list[tuple[PagedEpisode, PagedEpisode]] = []
    only_new: list[PagedEpisode] = []
    for e in new:
        hits = [
            o
            for o in index.get((e.machine_id, e.detector), ())
            if o.start_ms <= e.end_ms + MATCH_SLACK_MS and e.start_ms <= o.end_ms + MATCH_SLACK_MS
        ]
        if hits:
            both.append((e, hits[0]))
            matched_old.update(o.alert_id for o in hits)
        else:
            only_new.append(e)
    only_old = [o for o in old if o.alert_id not in matched_old]
    return Diff(both, only_new, only_old)


# -- the results document --------------------------------------------------------------------


def _run_json(run: Run, events_by_machine: Counter[str], episodes: list[PagedEpisode]) -> dict:
    by_det = Counter(p["detector"] for p in run.pages)
    by_sev = Counter(p["severity"] for p in run.pages)
    by_machine = Counter(p["machine_id"] for p in run.pages)
    top = []
    for machine, n in sorted(by_machine.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SHOWN]:
        dets = Counter(p["detector"] for p in run.pages if p["machine_id"] == machine)
        top.append(
            {
                "machine_id": machine,
                "pages": n,
                "events": events_by_machine.get(machine, 0),
                "detectors": dict(dets.most_common()),
            }
        )
    out: dict[str, Any] = {
        "config_file": run.config_file,
        "config_version": run.config_version,
        "seconds": round(run.seconds, 2),
        "alert_states": dict(sorted(run.statuses.items())),
        "pages": len(run.pages),
        "paged_episodes": len(episodes),
        "by_detector": dict(sorted(by_det.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_severity": {s: by_sev[s] for s in ("critical", "high", "medium") if by_sev[s]},
        "top_machines": top,
        "score": None,
        "page_list": run.pages,
    }
    if run.score is not None:
        s = run.score
        out["score"] = {
            **s.overall_json(),
            "kinds": [k.to_json() for k in s.kinds],
        }
        # Beside page_list, not in it: page_list stays exactly what replay writes. The report
        # lists each page with its verdict; a page before --score-from has none (null).
        verdicts = {id(v.alert): v for v in s.verdicts}
        out["page_verdicts"] = [
            None
            if (v := verdicts.get(id(p))) is None
            else {
                "true": v.true,
                "malicious": sorted({e.kind for e in v.malicious}),
                "benign": sorted({e.kind for e in v.benign}),
            }
            for p in run.pages
        ]
    return out


def _series(
    src: Source,
    runs: Sequence[Run],
    observed: Observed,
    top_n: int,
) -> dict[str, Any]:
    from schemas.event import parse_timestamp_us

    start, bucket = observed.start_ms, observed.bucket_ms
    last = src.events[-1].timestamp_ms if src.events else start
    n_buckets = (last - start) // bucket + 1
    volume = Counter({m: sum(c.values()) for m, c in observed.counts.items()})
    pages_by_run = {r.name: Counter(p["machine_id"] for p in r.pages) for r in runs}
    total_pages: Counter[str] = Counter()
    for c in pages_by_run.values():
        total_pages.update(c)
    ranked = sorted((m for m in volume if m != "*"), key=lambda m: (-total_pages[m], -volume[m], m))
    machines = []
    for m in ranked[:top_n]:
        counts, peaks = observed.counts[m], observed.peaks.get(m, {})
        bands: dict[str, dict[str, list[float | None]]] = {}
        for r in runs:
            samples = r.bands.samples.get(m, {})
            low: list[float | None] = []
            exp: list[float | None] = []
            high: list[float | None] = []
            cur: tuple[float, float, float] | None = None
            for b in range(n_buckets):
                # Between a machine's events its model does not move: carry the band forward.
                cur = samples.get(b, cur)
                low.append(cur[0] if cur else None)
                exp.append(cur[1] if cur else None)
                high.append(cur[2] if cur else None)
            bands[r.name] = {"low": low, "expected": exp, "high": high}
        markers = []
        for r in runs:
            for p in r.pages:
                if p["machine_id"] != m:
                    continue
                t = parse_timestamp_us(p["event_time"]) // 1000
                markers.append(
                    {
                        "run": r.name,
                        "bucket": (t - start) // bucket,
                        "time": p["event_time"],
                        "detector": p["detector"],
                        "severity": p["severity"],
                        "summary": p["summary"],
                    }
                )
        machines.append(
            {
                "machine_id": m,
                "events": volume[m],
                "pages": {r.name: pages_by_run[r.name][m] for r in runs},
                "events_per_bucket": [counts.get(b, 0) for b in range(n_buckets)],
                "busiest_interval": [peaks.get(b, 0) for b in range(n_buckets)],
                "band": bands,
                "markers": markers,
            }
        )
    noisy = sorted(total_pages.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    det_bucket = nice_bucket_ms(int(last - start), MAX_DETECTOR_BUCKETS, bucket)
    n_det = (last - start) // det_bucket + 1
    per_detector: dict[str, dict[str, list[int]]] = {}
    for r in runs:
        rows: dict[str, list[int]] = {}
        for p in r.pages:
            b = (parse_timestamp_us(p["event_time"]) // 1000 - start) // det_bucket
            rows.setdefault(p["detector"], [0] * n_det)[min(max(b, 0), n_det - 1)] += 1
        per_detector[r.name] = dict(sorted(rows.items()))
    return {
        "start": format_rfc3339_ms(start),
        "bucket_s": bucket // 1000,
        "buckets": n_buckets,
        "interval_s": observed.interval_ms // 1000,
        "machines": machines,
        "noisiest": [
            {"machine_id": m, "pages": {r.name: pages_by_run[r.name][m] for r in runs}}
            for m, _ in noisy
        ],
        "pages_per_detector": {
            "bucket_s": det_bucket // 1000,
            "buckets": n_det,
            "runs": per_detector,
        },
    }


@dataclass
class Options:
    """Everything `backtest` takes besides the events."""

    new_cfg: Config
    new_file: str | None
    old_cfg: Config | None = None
    old_file: str | None = None
    episodes: list[Any] | None = None
    labels_source: str | None = None
    score_from_ms: int | None = None
    top_machines: int = 6


def backtest(src: Source, opts: Options, progress: Progress | None = None) -> dict[str, Any]:
    """Run NEW (and OLD) over the source's events; the results document (see `--json`)."""
    events = src.events
    if not events:
        raise BacktestError("no valid events to backtest")
    start = events[0].timestamp_ms
    span = events[-1].timestamp_ms - start
    interval_ms = opts.new_cfg.detectors.rate.interval_s * 1000
    bucket = nice_bucket_ms(span, MAX_RATE_BUCKETS, interval_ms)
    # Align buckets to the bucket size in UTC, so a 15-minute bucket starts at :00, :15...
    start -= start % bucket
    observed = Observed(start, bucket, interval_ms)
    runs = [
        run_config(
            "new",
            opts.new_cfg,
            opts.new_file,
            events,
            BandSampler(start, bucket),
            observed,
            progress,
        )
    ]
    if opts.old_cfg is not None:
        runs.append(
            run_config(
                "old",
                opts.old_cfg,
                opts.old_file,
                events,
                BandSampler(start, bucket),
                None,
                progress,
            )
        )
    labels_json: dict[str, Any] | None = None
    if opts.episodes is not None:
        from bench.evaluate import ActivitySpans, score

        score_from = opts.score_from_ms if opts.score_from_ms is not None else start
        spans = ActivitySpans(score_from)
        for ev in events:
            spans.add(ev.machine_id, ev.timestamp_ms)
        for r in runs:
            r.score = score(
                opts.episodes, r.pages, warmup_end_ms=score_from, machine_hours=spans.hours()
            )
        labels_json = {
            "source": opts.labels_source,
            "episodes": len(opts.episodes),
            "malicious": sum(1 for e in opts.episodes if e.malicious),
            "score_from": format_rfc3339_ms(score_from),
        }
    volume = Counter({m: sum(c.values()) for m, c in observed.counts.items()})
    episodes = {r.name: paged_episodes(r) for r in runs}
    doc: dict[str, Any] = {
        "source": src.to_json(),
        "labels": labels_json,
        "runs": {r.name: _run_json(r, volume, episodes[r.name]) for r in runs},
        "diff": diff_runs(episodes["new"], episodes["old"]).to_json()
        if opts.old_cfg is not None
        else None,
        "series": _series(src, runs, observed, opts.top_machines),
    }
    return doc


# -- the text report ---------------------------------------------------------------------------


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _signed(n: int) -> str:
    return f"{n:+d}" if n else "0"


def render_text(doc: dict[str, Any]) -> str:
    """The results as the plain-text report `backtest` prints."""
    src, runs = doc["source"], doc["runs"]
    new, old = runs["new"], runs.get("old")
    dead = ", ".join(f"{k} {v}" for k, v in src["dead_letters"].items()) or "none"
    lines = [
        f"backtest over {src['events']:,} events ({src['description']}), "
        f"{str(src['first_event_time'])[:16]} to {str(src['last_event_time'])[:16]} UTC; "
        f"{src['duplicates']:,} duplicates, rejected: {dead}",
        f"new: {new['config_file'] or 'built-in defaults'} (config_version "
        f"{new['config_version']}, {new['seconds']:.1f} s)",
    ]
    if old is not None:
        lines.append(
            f"old: {old['config_file'] or 'built-in defaults'} (config_version "
            f"{old['config_version']}, {old['seconds']:.1f} s)"
        )
    cols = ["new"] + (["old", "change"] if old is not None else [])

    def table(title: str, key: str, names: Iterable[str]) -> None:
        lines.extend(["", f"{title:<22}" + "".join(f"{c:>8}" for c in cols)])
        for name in names:
            n = new[key].get(name, 0)
            row = f"  {name:<20}{n:>8}"
            if old is not None:
                o = old[key].get(name, 0)
                row += f"{o:>8}{_signed(n - o):>8}"
            lines.append(row)

    dets = list(new["by_detector"]) + [
        d for d in (old["by_detector"] if old else {}) if d not in new["by_detector"]
    ]
    table("pages by detector", "by_detector", dets)
    total = f"  {'all pages':<20}{new['pages']:>8}"
    if old is not None:
        total += f"{old['pages']:>8}{_signed(new['pages'] - old['pages']):>8}"
    lines.append(total)
    table("pages by severity", "by_severity", ("critical", "high", "medium"))

    lines += ["", "machines with the most pages (new)"]
    old_by_machine = Counter(p["machine_id"] for p in old["page_list"]) if old else Counter()
    for m in new["top_machines"]:
        dets_text = ", ".join(f"{d} {n}" for d, n in m["detectors"].items())
        was = f" (old {old_by_machine[m['machine_id']]})" if old is not None else ""
        lines.append(
            f"  {m['pages']:>5}{was:<10} {m['machine_id']}  {m['events']:,} events; {dets_text}"
        )
    if not new["top_machines"]:
        lines.append("  (no pages)")

    diff = doc.get("diff")
    if diff is not None:
        lines += [
            "",
            f"diff: paged episodes matched by {diff['matched_by']}",
            f"  in both {diff['both']}, only new {len(diff['only_new'])}, "
            f"only old {len(diff['only_old'])}",
        ]
        for side in ("only_new", "only_old"):
            eps = diff[side]
            if not eps:
                continue
            lines.append(f"  {side.replace('_', ' ')} ({len(eps)}):")
            for e in eps[:DIFF_SHOWN]:
                lines.append(
                    f"    {e['first_page_time'][:16].replace('T', ' ')} {e['severity']:<8} "
                    f"{e['detector']:<13} {e['machine_id']}: {e['summary']}"
                )
            if len(eps) > DIFF_SHOWN:
                lines.append(f"    ... {len(eps) - DIFF_SHOWN} more (--json has all)")

    labels = doc.get("labels")
    if labels is not None:
        lines += [
            "",
            f"against {labels['malicious']} labelled malicious episodes ({labels['source']}); "
            f"pages from {labels['score_from'][:16]} count",
            f"{'':<24}" + "".join(f"{c:>8}" for c in cols[:2]),
        ]
        rows = (
            ("precision", "precision", ".2f"),
            ("recall", "recall", ".2f"),
            ("true pages", "true_pages", "d"),
            ("false pages", "false_pages", "d"),
            ("false per 1000 m-hours", "false_pages_per_1000_machine_hours", ".2f"),
        )
        for title, key, spec in rows:
            row = f"  {title:<22}{_f(new['score'][key], spec):>8}"
            if old is not None:
                row += f"{_f(old['score'][key], spec):>8}"
            lines.append(row)
        kinds = [k for k in new["score"]["kinds"] if k["malicious"]]
        if kinds:
            lines.append(
                "  recall by kind: "
                + ", ".join(f"{k['kind']} {k['detected']}/{k['episodes']}" for k in kinds)
            )
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


def cmd_backtest(args: argparse.Namespace) -> int:
    from streams.cli.errors import UsageError
    from streams.tools.readers import parse_csv_map

    def _parse_time(text: str | None) -> int | None:
        return None if text is None else _ms(text, "time")

    if args.archive == bool(args.sources):
        raise UsageError("give event FILES or --archive (one of them)")
    if not args.archive and (args.since or args.until or args.slack is not None):
        raise UsageError(
            "--from/--to/--slack select a range of the archive: use them with --archive"
        )
    new_cfg = load_config(args.config)
    old_cfg = load_config(args.compare) if args.compare else None
    progress = Progress(sys.stderr, enabled=not args.quiet)
    if args.slack is not None and args.slack < 0:
        raise UsageError("--slack must be 0 or more seconds")
    if args.top_machines < 0:
        raise UsageError("--top-machines must be 0 or more")
    try:
        if args.archive:
            src = events_from_archive(
                new_cfg,
                _parse_time(args.since),
                _parse_time(args.until),
                slack_ms=None if args.slack is None else int(args.slack * 1000),
                progress=None if args.quiet else sys.stderr,
            )
        else:
            src = events_from_files(
                new_cfg, args.sources, args.format, parse_csv_map(args.csv_map), progress
            )
        opts = Options(
            new_cfg,
            args.config,
            old_cfg,
            args.compare,
            top_machines=args.top_machines,
            score_from_ms=_parse_time(args.score_from),
        )
        if args.labels:
            opts.episodes, opts.labels_source = labels_from_file(args.labels), args.labels
        else:
            attrs = (args.label_attribute,) if args.label_attribute else LABEL_ATTRIBUTES
            found = labels_from_events(src.events, attrs)
            if found:
                opts.episodes = found
                opts.labels_source = "event attribute " + "/".join(attrs)
        doc = backtest(src, opts, progress)
    except BacktestError as e:
        raise UsageError(str(e)) from None
    print(render_text(doc))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    if args.html:
        from streams.tools.report import render_html

        Path(args.html).write_text(render_html(doc), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    """Register `auditwatch backtest`."""
    p = sub.add_parser(
        "backtest",
        help="compare a candidate config with the current one over recorded events",
        description="Run a config (--config NEW) and optionally the current one (--compare "
        "OLD) over the same events, from files or from the archive topic, exactly as "
        "`replay` would; report pages by detector, severity and machine, which paged "
        "episodes only one config raises (matched by machine, detector and overlapping "
        "time), and precision/recall when labels are available (--labels FILE, or events "
        "whose attribute `label` or `injected` names the anomaly). --html writes a "
        "self-contained report with plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  auditwatch backtest events.jsonl --config tuned.yaml --compare current.yaml\n"
        "  auditwatch backtest --archive --from 2026-11-20T00:00:00Z --to 2026-11-27T00:00:00Z \\\n"
        "      -c tuned.yaml --compare current.yaml --html report.html\n"
        "Events are held in memory (about 1 GB per million). The archive is read with the "
        "NEW config's\nkafka and topics settings.",
    )
    p.add_argument("sources", nargs="*", metavar="FILE", help="event files (.gz ok)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="file format (jsonl)")
    p.add_argument("--csv-map", metavar="FIELD=COLUMN,...", help="CSV column of each field")
    p.add_argument("--archive", action="store_true", help="read the archive topic instead of files")
    p.add_argument("--from", dest="since", metavar="TIME", help="archive: from this event time")
    p.add_argument("--to", dest="until", metavar="TIME", help="archive: before this event time")
    p.add_argument(
        "--slack",
        type=float,
        metavar="SECONDS",
        help="archive: allowance between an event's time and when it was archived; only "
        "records archived from --from minus this to --to plus this are read (default: "
        "input.max_future_s + 3600). Raise it to include events archived long after they "
        "happened (a backlog, a backfill of old logs)",
    )
    p.add_argument(
        "--config", "-c", metavar="NEW", help="the config to test (default: built-in defaults)"
    )
    p.add_argument("--compare", metavar="OLD", help="the config to compare with (the live one)")
    p.add_argument(
        "--labels",
        metavar="EPISODES.jsonl",
        help="labelled episodes for precision/recall (machine_id, kind, start, end, malicious)",
    )
    p.add_argument(
        "--label-attribute",
        metavar="NAME",
        help="event attribute naming a labelled anomaly (default: label, then injected)",
    )
    p.add_argument(
        "--score-from",
        metavar="TIME",
        help="score pages from this event time on, e.g. after warm-up (default: first event)",
    )
    p.add_argument("--json", metavar="OUT.json", help="write the full results as JSON")
    p.add_argument("--html", metavar="REPORT.html", help="write a self-contained HTML report")
    p.add_argument(
        "--top-machines",
        type=int,
        default=6,
        metavar="N",
        help="machines plotted in the HTML report, by pages then volume (6)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backtest)
