"""The `auditwatch` command line."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson

from streams.cli.errors import UsageError
from streams.tools.readers import FORMATS

# What a command needs is imported in the command: the config model alone brings pydantic and
# the detectors (river, scipy, numpy), over a second of CPU that `auditwatch --help` and a
# mistyped option should not pay. tests/test_readme.py checks that `--help` imports none.
if TYPE_CHECKING:
    from streams.ops.config import Config

    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction

# Commands their own module registers (`add_parser(subparsers)`), with the line `auditwatch
# --help` lists for each until the module is imported, which happens only when the command is
# chosen. tests/test_readme.py checks each line against the module's own.
DEFERRED_COMMANDS = {
    "webhook": ("streams.cli.webhook", "send alert states to an HTTP endpoint (Slack-compatible)"),
    "config": ("streams.cli.config", "validate a config file and show its effective values"),
    "backtest": (
        "streams.tools.backtest",
        "compare a candidate config with the current one over recorded events",
    ),
    "deadletter": ("streams.cli.deadletter", "inspect dead letters by reason; re-send fixed ones"),
    "explain": ("streams.cli.explain", "show what auditwatch has learned about a machine"),
    "compliance": (
        "streams.cli.compliance",
        "prove the audit record is kept and complete: topic configs, ledger reconciliation",
    ),
    "report": (
        "streams.cli.digest",
        "write a day's or a week's digest per machine and group (HTML and JSON)",
    ),
    "acls": (
        "streams.cli.acls",
        "print or apply the Kafka ACLs of each role (producer, worker, on-call...)",
    ),
    "schema": (
        "streams.cli.schema",
        "check a new Avro schema against the bundled one (reader/writer compatibility)",
    ),
}


class _Commands(_SubParsers):
    """The subcommands, some of them deferred: a module's parser (or part of one) is added when
    its command is chosen, just before argparse parses that command's arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_choice: dict[str, Callable[[], None]] = {}

    def add_deferred(self, name: str) -> None:
        module, help_ = DEFERRED_COMMANDS[name]
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help_))
        # Stands in for the module's parser so that argparse accepts the name meanwhile.
        self._name_parser_map[name] = argparse.ArgumentParser(add_help=False)

        def register() -> None:
            del self._name_parser_map[name]
            self._choices_actions = [a for a in self._choices_actions if a.dest != name]
            importlib.import_module(module).add_parser(self)

        self._on_choice[name] = register

    def on_choice(self, name: str, complete: Callable[[], None]) -> None:
        """Call `complete` once `name` is chosen, before its arguments are parsed."""
        self._on_choice[name] = complete

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        complete = self._on_choice.pop(values[0], None) if values else None
        if complete is not None:
            complete()
        super().__call__(parser, namespace, values, option_string)


def _add_alert_actions(alerts: argparse.ArgumentParser) -> None:
    from streams.ops.control import add_alert_actions

    add_alert_actions(alerts)


EPILOG = """\
Quick start: `auditwatch demo` (local broker, processor, synthetic traffic with injected
anomalies, alerts as they arrive). Every command takes --config FILE (YAML); see README.md.

The broker is kafka.bootstrap_servers in the config file, else $AUDITWATCH_BOOTSTRAP, else
the local broker of `auditwatch kafka start`, else 127.0.0.1:9092. Commands that read or
write Kafka check it first and fail within seconds, naming the address; the services (run,
webhook) wait for it instead, saying so in their log (and run on /readyz).

Exit status: 0 done; 1 a runtime failure (broker unreachable, topic missing, a delivery
failed), reported in one line (--log-level DEBUG adds the traceback); 2 a usage or config
error; 130 interrupted.
"""


def _config(args: argparse.Namespace) -> Config:
    from streams.ops.config import load_config

    return load_config(getattr(args, "config", None))


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)"
    )


def _require_broker(cfg: Config) -> None:
    """Fail within seconds, naming the address, if no broker answers there."""
    from streams.ops.broker import require_broker

    require_broker(cfg)


def cmd_kafka(args: argparse.Namespace) -> int:
    from streams.ops import kafka_local

    # fetch is the same jars for both brokers.
    secure = args.secure and args.action != "fetch"
    return kafka_local.main([args.action, *(["--secure"] if secure else [])])


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.ops.topics import ensure_topics

    cfg = _config(args)
    _require_broker(cfg)
    status = 0
    for r in ensure_topics(cfg):
        if r.created:
            print(f"created  {r.name}")
        elif r.differences:
            status = 1
            print(f"DIFFERS  {r.name}: " + "; ".join(r.differences))
        else:
            print(f"ok       {r.name}")
    if status:
        print(
            "existing topics were left unchanged; alter them deliberately if the "
            "differences matter",
            file=sys.stderr,
        )
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from streams.runtime.run import run

    cfg = _config(args)
    logging.getLogger("auditwatch").info(
        "starting: bootstrap=%s group=%s input=%s guarantee=%s config_version=%s",
        cfg.kafka.bootstrap(),
        cfg.kafka.consumer_group,
        cfg.topics.events,
        cfg.kafka.processing_guarantee,
        cfg.detectors.build().version(),
    )
    # What it did (events, commits, partitions) is logged by the runtime as it stops.
    run(cfg, config_path=args.config, reload_poll_s=args.reload_poll)
    return 0


def _synthetic_events(args: argparse.Namespace) -> tuple[Iterator[Any], int, Any]:
    """The traffic `--synthetic` asks for: its records, their exact number (the progress
    line's total; the generator is deterministic, so a counting pass gives the number sent)
    and the SyntheticTraffic itself (for its labelled episodes)."""
    import time
    from dataclasses import replace

    from streams.tools.producer import Record
    from streams.tools.synthetic import (
        ANOMALY_KINDS,
        BENIGN_KINDS,
        SyntheticConfig,
        SyntheticTraffic,
        demo_config,
    )

    now_ms = int(time.time() * 1000)
    seed = 7 if args.seed is None else args.seed
    shape = (args.hours, args.machines, args.anomalies, args.start, args.warmup_hours)
    if all(v is None for v in (*shape, args.rate_scale, args.benign)):
        sc = replace(demo_config(now_ms), seed=seed)
    else:
        hours = 3.0 if args.hours is None else args.hours
        start_ms = _parse_time(args.start) if args.start else None
        if start_ms is None:
            start_ms = now_ms - int(hours * 3_600_000)
        warmup_hours = hours * 2 / 3 if args.warmup_hours is None else args.warmup_hours
        anomalies = (
            _kv_counts(args.anomalies, "--anomalies", ANOMALY_KINDS)
            if args.anomalies is not None
            else {"fan_out": 1, "rate_burst": 1}
        )
        benign = _kv_counts(args.benign, "--benign", BENIGN_KINDS) if args.benign else {}
        try:
            sc = SyntheticConfig(
                seed=seed,
                start_ms=start_ms,
                duration_s=hours * 3600,
                machines=40 if args.machines is None else args.machines,
                rate_scale=1.0 if args.rate_scale is None else args.rate_scale,
                warmup_s=warmup_hours * 3600,
                anomalies=anomalies,
                benign=benign,
            )
        except ValueError as e:
            raise UsageError(f"--synthetic: {e}") from None
    traffic = SyntheticTraffic(sc)
    for ep in traffic.episodes:
        if ep.malicious:
            print(f"injecting {ep.kind} on {ep.machine_id}: {ep.description}", file=sys.stderr)
    total = sum(1 for _ in traffic)
    records = (Record(f"synthetic event {n}", e) for n, e in enumerate(traffic, 1))
    return records, total, traffic


def _kv_counts(spec: str, option: str, kinds: tuple[str, ...]) -> dict[str, int]:
    """`KIND=N,KIND,...` (a bare KIND is 1; `all=N` is every kind; `none` is none)."""
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, _, n = (s.strip() for s in part.partition("="))
        if name == "none" and not n:
            continue
        if name != "all" and name not in kinds:
            raise UsageError(f"{option}: unknown kind {name!r}; known: all, {', '.join(kinds)}")
        try:
            count = int(n or 1)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not KIND=COUNT") from None
        out.update(dict.fromkeys(kinds, count) if name == "all" else {name: count})
    return out


def _file_events(files: list[str], fmt: str, csv_map: dict[str, str]) -> Iterator[Any]:
    """The files' records for the producer, each named `path:line`; one that is not a JSON
    object carries its problem instead of an event, so the producer counts it as skipped."""
    from streams.tools.producer import Record
    from streams.tools.readers import read_records

    for r in read_records(files, fmt, csv_map):
        where = f"{r.path}:{r.line}"
        try:
            value = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            yield Record(where, problem="not JSON")
            continue
        if isinstance(value, dict):
            yield Record(where, value)
        else:
            yield Record(where, problem=f"not a JSON object (a JSON {type(value).__name__})")


def cmd_produce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.tools.producer import (
        delivery_timeout_s,
        produce_events,
        write_events,
        write_labels,
    )
    from streams.tools.readers import parse_csv_map

    cfg = _config(args)
    if args.synthetic == bool(args.files):
        raise UsageError("give event FILES or --synthetic (one of them)")
    given = {name for name, value in vars(args).items() if value is not None}
    synthetic_only = ["machines", "hours", "start", "warmup_hours", "rate_scale", "anomalies"]
    synthetic_only += ["benign", "seed", "out", "labels_out"]
    for only, allowed, name in (
        (synthetic_only, args.synthetic, "--synthetic"),
        (["format", "csv_map"], not args.synthetic, "event FILES"),
        (["labels_out"], args.out is not None, "--out"),
        (["rate", "topic", "encoding", "delivery_timeout", "failed_out"], not args.out, "sending"),
        (["sign_key", "key_id", "sign_algorithm"], not args.out, "sending"),
    ):
        misplaced = sorted("--" + o.replace("_", "-") for o in given.intersection(only))
        if misplaced and not allowed:
            what = "a file written with --out" if name == "sending" else name
            raise UsageError(f"{', '.join(misplaced)}: not for {what}")
    for opt, value in (("--delivery-timeout", args.delivery_timeout), ("--rate", args.rate)):
        if value is not None and not value > 0:
            raise UsageError(f"{opt} must be more than 0, got {value}")

    total: int | None = None
    if args.out:
        records, total, traffic = _synthetic_events(args)
        out = Path(args.out)
        labels = (
            Path(args.labels_out)
            if args.labels_out
            else out.with_name(out.name.removesuffix(".jsonl") + ".labels.jsonl")
        )
        if labels.resolve() == out.resolve():
            raise UsageError("--labels-out must differ from --out")
        for path in (out, labels):
            path.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            n = write_events(records, f, total=total)
        with labels.open("wb") as f:
            episodes = write_labels(traffic.episodes, f)
        injected = sum(ep.malicious for ep in traffic.episodes)
        print(
            f"wrote {n:,} events to {out} and {episodes} labelled episodes to {labels} "
            f"({injected} injected anomalies, {episodes - injected} benign changes)",
            file=sys.stderr,
        )
        return 0

    if args.synthetic:
        records, total, _traffic = _synthetic_events(args)
    else:
        try:
            csv_map = parse_csv_map(args.csv_map)
        except ValueError as e:
            raise UsageError(str(e)) from None
        # Refuse a bad path before anything is sent, not halfway through the input.
        for name in args.files:
            if not Path(name).is_file() or not os.access(name, os.R_OK):
                raise UsageError(f"{name}: not a readable file")
        records = _file_events(args.files, args.format or "jsonl", csv_map)
    sign_key = _sign_key(args)
    # After the usage checks: a bad option is a usage error whether or not a broker answers.
    _require_broker(cfg)
    timeout_s = delivery_timeout_s(cfg, args.delivery_timeout)
    failed_out = open(args.failed_out, "wb") if args.failed_out else None  # noqa: SIM115
    try:
        stats = produce_events(
            cfg,
            records,
            encoding=args.encoding or "avro",
            rate=args.rate,
            total=total,
            topic=args.topic,
            timeout_s=timeout_s,
            failed_out=failed_out,
            sign_key=sign_key,
        )
    finally:
        if failed_out is not None:
            failed_out.close()
    print(
        f"sent {stats.delivered:,} events to {args.topic or cfg.topics.events} in "
        f"{stats.seconds:.1f} s ({stats.delivered / max(stats.seconds, 1e-9):,.0f}/s); "
        f"skipped {stats.skipped:,}, not delivered {stats.not_delivered:,}",
        file=sys.stderr,
    )
    if stats.stopped_at is not None:
        print(
            f"stopped sending at {stats.stopped_at}: a delivery had failed (delivery timeout "
            f"{timeout_s:g} s); {stats.unsent:,} events from there on were read, not sent",
            file=sys.stderr,
        )
    if stats.interrupted:
        print("interrupted: the input after the last record read was not sent", file=sys.stderr)
        return 130
    if stats.not_delivered:
        print(
            f"the {stats.not_delivered:,} events not delivered are in {args.failed_out}: "
            f"`auditwatch produce {args.failed_out}` sends them again (the processor archives "
            "any that did arrive once)"
            if args.failed_out
            else "--failed-out FILE writes the events not delivered to a file to send again",
            file=sys.stderr,
        )
    return 1 if stats.skipped or stats.not_delivered else 0


def _sign_key(args: argparse.Namespace) -> Any:
    """produce's signing key (schemas.signing.Key) from --sign-key and --key-id, or None."""
    if args.sign_key is None and args.key_id is None and args.sign_algorithm is None:
        return None
    if args.sign_key is None or not args.key_id:
        raise UsageError("--sign-key FILE and --key-id ID go together")
    from schemas.signing import signing_key_from_bytes

    try:
        with open(args.sign_key, "rb") as f:
            data = f.read()
        return signing_key_from_bytes(data, args.key_id, args.sign_algorithm)
    except OSError as e:
        raise UsageError(f"--sign-key {args.sign_key}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"--sign-key {args.sign_key}: {e}") from None


def _parse_time(text: str | None) -> int | None:
    if text is None:
        return None
    from schemas.event import InvalidEvent, parse_timestamp_us

    try:
        return parse_timestamp_us(text) // 1000
    except InvalidEvent as e:
        raise UsageError(f"{text!r}: {e.message}") from None


def cmd_seed(args: argparse.Namespace) -> int:
    from streams.ops.topics import ensure_topics
    from streams.tools.readers import parse_csv_map
    from streams.tools.seed import SeedStats, events_from_archive, events_from_files, send_seed

    cfg = _config(args)
    if args.from_archive == bool(args.files):
        raise UsageError("give event FILES or --from-archive (one of them)")
    _require_broker(cfg)
    stats = SeedStats()
    ensure_topics(cfg)
    if args.from_archive:
        events = events_from_archive(cfg, _parse_time(args.since), _parse_time(args.until), stats)
    else:
        events = events_from_files(cfg, args.files, args.format, parse_csv_map(args.csv_map), stats)
    send_seed(cfg, events, stats)
    print(
        f"seeded {stats.sent:,} events ({stats.read:,} read, {stats.rejected:,} rejected) "
        f"into {cfg.topics.detect}; `auditwatch run` learns them without alerting",
        file=sys.stderr,
    )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.tools.readers import parse_csv_map
    from streams.tools.replay import replay

    cfg = _config(args)
    dl = open(args.deadletter_out, "wb") if args.deadletter_out else None  # noqa: SIM115
    try:
        with open(args.alerts_out, "wb") as out:
            result = replay(
                cfg,
                args.files,
                out,
                fmt=args.format,
                csv_map=parse_csv_map(args.csv_map),
                deadletter_out=dl,
                progress=not args.quiet,
                workers=args.workers,
            )
    finally:
        if dl is not None:
            dl.close()
    dead = ", ".join(f"{k} {v}" for k, v in sorted(result.dead_letters.items())) or "none"
    learning = result.still_learning()
    print(
        f"replayed {result.records:,} records: {result.events:,} events, "
        f"{result.duplicates:,} duplicates, dead letters: {dead}; "
        f"{result.pages} pages written to {args.alerts_out}"
        + (f": {learning}" if learning else ""),
        file=sys.stderr,
    )
    return 0


def _of_incident(a: dict[str, Any]) -> str:
    """' of incident <id>' for an incident's evidence (its own alert leads its incident)."""
    incident = a.get("incident_id")
    return f" of incident {incident}" if incident and incident != a["alert_id"] else ""


def format_alert_row(a: dict[str, Any], oncall: str = "") -> list[str]:
    return [
        a["event_time"].replace("T", " ")[:19],
        a["severity"].upper(),
        a["status"],
        a["machine_id"],
        a["detector"],
        f"{a['score']:.0f}",
        a["summary"],
        a["alert_id"] + _of_incident(a),
        oncall,
    ]


def _since_ms(text: str | None) -> int | None:
    """--since: a duration back from now (2h, 30m, 1d) or an RFC 3339 time."""
    if text is None:
        return None
    import time

    from streams.ops.control import parse_duration

    try:
        return int((time.time() - parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        return _parse_time(text)
    except UsageError:
        raise UsageError(
            f"--since {text!r}: give a duration (2h, 30m, 1d) or an RFC 3339 time"
        ) from None


def _oncall(a: dict[str, Any], control: Any) -> str:
    """Who acknowledged or snoozed the alert: the alert state's own marks, else the control
    topic's latest decision (which may be newer than the alert's last state)."""
    ack, snoozed = a.get("acknowledged_by"), a.get("snoozed_until")
    record = control.get(a["alert_id"]) if control is not None else None
    if record is not None:
        import time

        current = record.control_at(int(time.time() * 1000))
        ack = current.acknowledged_by if current is not None else None
        snoozed = current.snoozed_until if current is not None else None
    parts = [f"acked by {ack}"] if ack else []
    if snoozed:
        parts.append(f"snoozed until {snoozed[:16].replace('T', ' ')}")
    return ", ".join(parts)


# What the table and the filters read of an alert state besides check_state's required fields.
_SHOWN_FIELDS = ("machine_id", "detector", "summary", "event_time", "score")


def _alert_state(value: bytes | None) -> tuple[dict[str, Any], int]:
    """An alerts-topic record as (the alert state, its event time in us); ValueError for a
    record that is not one `alerts` can show (not JSON, not an object, fields missing or of
    the wrong type, an event time that does not parse)."""
    from schemas.alert import check_state
    from schemas.event import parse_timestamp_us

    a = check_state(orjson.loads(value or b""))
    missing = [k for k in _SHOWN_FIELDS if k not in a]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return a, parse_timestamp_us(a["event_time"])


class _Skipped:
    """Records of the alerts topic that are not alert states: the first one named on stderr,
    then a count at the end (a corrupt or foreign record must not stop the listing)."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, msg: Any, why: Exception) -> None:
        self.count += 1
        if self.count == 1:
            print(
                f"warning: skipping {msg.topic()}[{msg.partition()}]@{msg.offset()}: not an "
                f"alert state ({why})",
                file=sys.stderr,
            )

    def summary(self) -> None:
        if self.count:
            print(
                f"warning: skipped {self.count} record(s) of the alerts topic that are not "
                "alert states",
                file=sys.stderr,
            )


def cmd_alerts(args: argparse.Namespace) -> int:
    from fnmatch import fnmatchcase

    from schemas.alert import SEVERITY_RANK, Recent, state_identity
    from streams.ops.control import ControlReader
    from streams.tools.reading import read_topic

    cfg = _config(args)
    _require_broker(cfg)
    min_rank = SEVERITY_RANK[args.min_severity]
    since_ms = _since_ms(args.since)
    machines: list[str] = args.machine or []
    rows: list[tuple[int, list[str]]] = []  # (event time in us, row)
    console: Any = None
    control: ControlReader | None = None
    if not args.json:
        from rich.console import Console

        # Piped output gets a wide table rather than rich's 80-column fallback.
        console = Console(width=None if sys.stdout.isatty() else 200)
        # Acknowledgements and snoozes, kept current while following (its progress lines
        # are for workers' logs, not for this table).
        logging.getLogger("auditwatch.control").setLevel(logging.WARNING)
        control = ControlReader(cfg).start()
        control.wait_ready(10.0)
    live: Any = None
    board: LiveAlerts | None = None
    if console is not None and args.follow and console.is_terminal:
        from rich.live import Live

        board = LiveAlerts()
        live = Live(board.table(), console=console, refresh_per_second=4)
        live.start()
    skipped = _Skipped()
    learning = _Learning()
    try:
        # A state written again (a worker re-processing after a crash) is shown once.
        shown = Recent()
        for msg in read_topic(cfg, cfg.topics.alerts, follow=args.follow):
            try:
                a, event_us = _alert_state(msg.value())
            except ValueError as e:
                skipped.add(msg, e)
                continue
            if not shown.add(state_identity(a, msg.value())):
                continue
            learning.note(a)
            if SEVERITY_RANK.get(a["severity"], 0) < min_rank:
                continue
            if machines and not any(fnmatchcase(a["machine_id"], g) for g in machines):
                continue
            if since_ms is not None and event_us // 1000 < since_ms:
                continue
            if args.json:
                sys.stdout.write(orjson.dumps(a).decode() + "\n")
                sys.stdout.flush()
            elif board is not None:
                board.update(a, _oncall(a, control))
                live.update(board.table())
            elif args.follow:
                # One line per state whatever its length: whoever reads the pipe (grep, a log
                # shipper) takes a line as a state, so nothing may wrap it at a width.
                console.print(_alert_line(a, _oncall(a, control)), soft_wrap=True)
            else:
                row = format_alert_row(a, _oncall(a, control))
                rows.append((event_us, row))
    except KeyboardInterrupt:
        return 0
    finally:
        if live is not None:
            live.stop()
        if control is not None:
            control.stop()
        skipped.summary()
    if console is not None and not args.follow:
        # The topic interleaves partitions (and workers): the table reads in event time, ties
        # in the order the states were written.
        rows.sort(key=lambda tr: tr[0])
        _print_table(console, [row for _, row in rows])
        line = learning.line(hidden=min_rank > SEVERITY_RANK["info"])
        if line:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    return 0


class _Learning:
    """What the detectors are still learning, from the info records they wrote instead of
    pages (`detectors.maturity`: `expected.learning_until`): machines and until when, per
    detector."""

    def __init__(self) -> None:
        self.machines: dict[str, set[str]] = {}
        self.until: dict[str, str] = {}

    def note(self, a: dict[str, Any]) -> None:
        expected = a.get("expected")
        until = expected.get("learning_until") if isinstance(expected, dict) else None
        if not isinstance(until, str) or a.get("status") != "opened":
            return
        detector = str(a.get("detector", ""))
        self.machines.setdefault(detector, set()).add(str(a.get("machine_id", "")))
        self.until[detector] = max(self.until.get(detector, until), until)

    def line(self, hidden: bool) -> str | None:
        if not self.machines:
            return None

        def at(until: str) -> str:
            return until[:16].replace("T", " ") + " UTC"

        parts = [
            f"{d} ({len(self.machines[d])} machines) until {at(self.until[d])}"
            for d in sorted(self.machines)
        ]
        shown = "; --min-severity info lists them" if hidden else ""
        return f"still learning, recorded as info, not paged{shown}: " + ", ".join(parts)


_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}


def _alert_line(a: dict[str, Any], oncall: str = "") -> str:
    """One alert state as rich markup. Every field is escaped: machine ids, summaries and
    resource paths are data (`s3://b/[/oops]` would otherwise be read as a closing tag)."""
    from rich.markup import escape

    sev = str(a["severity"])
    level = escape(f"{sev.upper():8}")
    style = _STYLE.get(sev)
    # Whoever is paged needs the first step too; a resolved state asks for nothing.
    hint = a.get("hint") if a["status"] != "resolved" else None
    ids_tail = f" ({oncall})" if oncall else ""
    return (
        (f"[{style}]{level}[/]" if style else level)
        + " "
        + escape(
            f"{a['event_time'][:19].replace('T', ' ')} UTC {a['status']:9} {a['detector']:13} "
            f"{a['machine_id']}: {a['summary']} " + (f"what to check: {hint} " if hint else "")
        )
        + f"[dim]{escape(str(a['alert_id']) + _of_incident(a) + ids_tail)}[/]"
    )


class LiveAlerts:
    """`alerts --follow` on a terminal: one row per alert, its latest state, updated in place;
    the most recently changed alerts on top, at most `limit` of them."""

    def __init__(self, limit: int = 40) -> None:
        self.limit = limit
        self.rows: dict[str, list[str]] = {}  # alert_id -> row, oldest change first
        self.states = 0

    def update(self, a: dict[str, Any], oncall: str = "") -> None:
        self.states += 1
        self.rows.pop(a["alert_id"], None)
        self.rows[a["alert_id"]] = format_alert_row(a, oncall)
        while len(self.rows) > self.limit:
            del self.rows[next(iter(self.rows))]

    def table(self) -> Any:
        latest = list(reversed(self.rows.values()))
        return _table(
            latest,
            f"{len(latest)} alerts, {self.states} states (latest change first; Ctrl-C to stop)",
        )


def _print_table(console: Any, rows: list[list[str]]) -> None:
    console.print(_table(rows, f"{len(rows)} alert states"))


def _table(rows: list[list[str]], title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for col in (
        "event time (UTC)",
        "severity",
        "status",
        "machine",
        "detector",
        "score",
        "summary",
        "alert id",
        "on-call",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        # Text, not str: a cell string would be parsed as markup, and alert fields are data.
        table.add_row(*(Text(c) for c in r))
    return table


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.cli.demo import demo

    return demo(duration_limit_s=args.max_seconds, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditwatch",
        description="Real-time auditing of machine-to-machine access from Kafka audit trails.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("AUDITWATCH_LOG_LEVEL", "INFO"),
        help="logging level (default INFO, or $AUDITWATCH_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        # argparse converts a string default with `type` but never checks it against
        # `choices`: main() validates the value from the environment.
        type=str.lower,
        default=os.environ.get("AUDITWATCH_LOG_FORMAT", "text"),
        help="text, or json: one JSON object a line, errors with topic[partition]@offset "
        "(default text, or $AUDITWATCH_LOG_FORMAT)",
    )
    sub = cast(
        _Commands,
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands),
    )

    p = sub.add_parser(
        "demo",
        help="run everything locally: broker, processor, synthetic traffic, alerts",
        description="Start the local broker (if none is running), create demo topics, "
        "run the processor, send synthetic traffic with injected anomalies and print "
        "alerts as they arrive; then stop everything it started.",
    )
    p.add_argument(
        "--rate", type=float, default=5000, help="events per second to send (default 5000)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=300, help="give up after this long (default 300)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "kafka",
        help="manage the local development broker (no Docker)",
        description="Fetch Kafka jars from Maven Central (once) and start/stop a "
        "single-node KRaft broker on loopback.",
    )
    p.add_argument("action", choices=["fetch", "start", "stop", "status"])
    p.add_argument(
        "--secure",
        action="store_true",
        help="the second, SASL_SSL broker (SCRAM-SHA-512 over TLS with its own CA, and the "
        "StandardAuthorizer) in .run/kafka-secure; it writes client.env there: "
        "`set -a; . .run/kafka-secure/client.env; set +a` points auditwatch at it",
    )
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser(
        "topics",
        help="create auditwatch's topics",
        description="Create the events, alerts, archive, dead-letter, detect and control "
        "topics idempotently; report existing topics whose config differs (exit 1).",
    )
    p.add_argument("action", choices=["create"])
    _add_config(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "run",
        help="run the stream processor",
        description="Consume audit events, archive every valid one, dead-letter bad "
        "input, detect anomalies per machine and write alerts. Stops cleanly on "
        "SIGTERM/Ctrl-C (commits first). SIGHUP reloads the config file's detector "
        "settings without losing learned baselines (other sections need a restart).",
    )
    p.add_argument(
        "--reload-poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="also reload when the config file changes, checked this often (default 5; "
        "0: only on SIGHUP)",
    )
    # Also accepted after `run` (where operators look for it); SUPPRESS keeps the global one.
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        type=str.lower,
        default=argparse.SUPPRESS,
        help="json: one JSON object a line, with topic[partition]@offset on the records of a "
        "message (default text, or $AUDITWATCH_LOG_FORMAT)",
    )
    _add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "produce",
        help="send events from files or synthetic traffic (or write synthetic traffic to a file)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Send events keyed by machine_id to the input topic, Avro (Confluent wire format, bundled
schema id 1001) by default, and wait until the broker has acknowledged each one.

Every input record is accounted for on stderr: sent (acknowledged), skipped (not JSON, not
an object, or for Avro not a valid event; named FILE:LINE with the reason) or not delivered
(named; --failed-out writes them to send again). A delivery that fails because the broker or
the topic is not taking events stops the sending: the rest of the input is read and counted
as not delivered rather than queued behind it. To a broker that cannot be reached, produce
fails after about --delivery-timeout.

--synthetic --out FILE writes the generated events as JSON lines (what `produce FILE`,
`replay` and `backtest` read) and the labelled episodes to --labels-out (for `backtest
--labels`) instead of sending them; no broker is involved.

Exit status: 0 every record was delivered (or written); 1 some record was skipped or not
delivered, or Kafka failed; 2 usage error (a bad option, an unreadable file), before
anything is sent; 130 interrupted.""",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="event files (see --format; .gz ok)")
    p.add_argument("--format", choices=FORMATS, help="format of the FILEs (default jsonl)")
    p.add_argument("--csv-map", metavar="FIELD=COLUMN,...", help="CSV column for each event field")
    p.add_argument(
        "--encoding",
        choices=["avro", "json"],
        help="avro (default): each event is validated here and an invalid one skipped; json: "
        "each JSON object is sent as read, and the processor dead-letters invalid ones",
    )
    p.add_argument(
        "--delivery-timeout",
        type=float,
        metavar="SECONDS",
        help="how long an event may take to be acknowledged, retries included, before it "
        "counts as not delivered (librdkafka message.timeout.ms; default 15, or the "
        "config's kafka.librdkafka message.timeout.ms)",
    )
    p.add_argument(
        "--failed-out",
        metavar="FILE",
        help="write the events not delivered here, JSON lines in input order, to send again "
        "(the processor archives an event sent twice once)",
    )
    p.add_argument(
        "--sign-key",
        metavar="FILE",
        help="sign each event (README: Signed events) with this key: an HMAC-SHA256 secret "
        "(the file's bytes, less a trailing line break) or an Ed25519 PEM private key; "
        "with --key-id",
    )
    p.add_argument("--key-id", metavar="ID", help="the key id sent with each signed event")
    p.add_argument(
        "--sign-algorithm",
        choices=["hmac-sha256", "ed25519"],
        help="the --sign-key's algorithm (default: ed25519 for a PEM private key, else "
        "hmac-sha256)",
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="generate realistic M2M traffic; with none of --machines, --hours, --start, "
        "--warmup-hours, --rate-scale, --anomalies and --benign, the demo's: 40 machines, 3 "
        "hours ending now, about 30,000 events, a fan_out, a rate_burst and a failure_spike in "
        "the last hour",
    )
    p.add_argument("--machines", type=int, help="synthetic: about this many machines (default 40)")
    p.add_argument(
        "--hours",
        type=float,
        help="synthetic: hours of event time (default 3), ending now unless --start",
    )
    p.add_argument(
        "--start",
        metavar="TIME",
        help="synthetic: event time starts here (RFC 3339), not --hours ago",
    )
    p.add_argument(
        "--warmup-hours",
        type=float,
        metavar="H",
        help="synthetic: hours of normal traffic before any episode (default 2/3 of --hours)",
    )
    p.add_argument(
        "--rate-scale",
        type=float,
        metavar="X",
        help="synthetic: multiply every rate (default 1: about 0.09 events/s per machine on a "
        "weekday)",
    )
    p.add_argument(
        "--anomalies",
        metavar="KIND=N,...",
        help="synthetic: anomalies to inject (fan_out, rate_burst, failure_spike, "
        "new_identity, off_hours, operation_shift, silence; all=N: each kind N times; none; "
        "default fan_out=1,rate_burst=1)",
    )
    p.add_argument(
        "--benign",
        metavar="KIND=N,...",
        help="synthetic: labelled benign changes (pod_rotation, autoscale, group_deploy, "
        "traffic_growth, nightly_batch; all=N; default none)",
    )
    p.add_argument("--seed", type=int, help="synthetic: random seed (default 7)")
    p.add_argument(
        "--out",
        metavar="EVENTS.jsonl",
        help="synthetic: write the events to this file instead of sending them",
    )
    p.add_argument(
        "--labels-out",
        metavar="LABELS.jsonl",
        help="with --out: write the labelled episodes here, one JSON object a line (kind, "
        "machine_id, start_ms, end_ms, malicious, description; default EVENTS.labels.jsonl)",
    )
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--topic", help="override the input topic")
    _add_config(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser(
        "replay",
        help="run detection over event files, without Kafka",
        description="Validate, dedupe and run the detection core over files in "
        "event-time order; write pages (opened/escalated, medium and above) as "
        "JSON lines.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--alerts-out", required=True, metavar="ALERTS.jsonl")
    p.add_argument("--deadletter-out", metavar="DEAD.jsonl", help="write rejected records here")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--csv-map", metavar="FIELD=COLUMN,...")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="detect in N processes, each over whole input partitions, as N workers would: "
        "each shares peer-group knowledge only among its own partitions, so pages for groups "
        "spread over several processes can differ from one process's (default 1: the pages "
        "of one worker)",
    )
    _add_config(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "alerts",
        help="read the alerts topic; acknowledge or snooze an alert",
        description="Show alert states from the alerts topic as a table, a live "
        "feed (--follow) or JSON lines (--json); or act on one alert: `alerts ack ID`, "
        "`alerts snooze ID --for 2h` (recorded on the control topic, honoured by every "
        "worker).",
    )
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep reading new alerts: on a terminal a live table, one row per alert updated "
        "in place; piped, one line per state",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--min-severity",
        default="low",
        choices=["info", "low", "medium", "high", "critical"],
        help="the least severity shown (low: info records of what the detectors are still "
        "learning are only counted, in a line after the table)",
    )
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only alert states with an event time from then on: a duration back from now "
        "(30m, 2h, 1d) or an RFC 3339 time",
    )
    p.add_argument(
        "--machine",
        action="append",
        metavar="GLOB",
        help="only these machines (shell glob, e.g. 'payments-api-*'; repeatable)",
    )
    _add_config(p)
    p.set_defaults(func=cmd_alerts)
    sub.on_choice("alerts", functools.partial(_add_alert_actions, p))
    sub.add_deferred("webhook")

    p = sub.add_parser(
        "seed",
        help="build baselines from history before going live",
        description="Send history (event files, or the archive topic over an "
        "event-time range) to the detection stage as seed records: `auditwatch "
        "run` learns from them like live traffic but raises no alerts, so a new "
        "deployment is not blind during warm-up. Seed before live traffic.",
    )
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--csv-map", metavar="FIELD=COLUMN,...")
    p.add_argument(
        "--from-archive", action="store_true", help="read the archive topic instead of files"
    )
    p.add_argument("--since", metavar="TIME", help="archive: from this event time (RFC 3339)")
    p.add_argument("--until", metavar="TIME", help="archive: before this event time (RFC 3339)")
    _add_config(p)
    p.set_defaults(func=cmd_seed)

    # The SRE tuning loop: each command lives in its own module.
    for name in ("config", "backtest", "deadletter", "explain"):
        sub.add_deferred(name)
    sub.add_deferred("compliance")
    sub.add_deferred("report")
    sub.add_deferred("acls")
    sub.add_deferred("schema")
    return parser


def _quiet_third_party_warnings() -> None:
    # Quix imports confluent-kafka's schema-registry client, whose OAuth support imports
    # authlib, which warns about its own httpx module on every start. authlib installs an
    # "always" filter for that warning when imported, so ours must be added after it.
    try:
        import authlib.deprecate  # noqa: F401
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")


def _setup_logging(args: argparse.Namespace) -> None:
    from streams.ops.logs import FORMATS, setup_logging

    fmt = str(args.log_format).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(
            f"log format {args.log_format!r} (--log-format or $AUDITWATCH_LOG_FORMAT) is not "
            f"one of {', '.join(FORMATS)}"
        )
    level = str(args.log_level).strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UsageError(
            f"log level {args.log_level!r} (--log-level or $AUDITWATCH_LOG_LEVEL) is not one "
            "of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    setup_logging(level, fmt)


def _operational_error(e: BaseException, bootstrap: str | None = None) -> str:
    """One line for an error the operator can act on (a missing topic, an unreachable
    broker), instead of a traceback. A broker lost midway is named by its address."""
    from confluent_kafka import KafkaError, KafkaException

    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        err = e.args[0]
        text = f"Kafka: {err.str()} ({err.name()})"
        lost = (
            KafkaError._TRANSPORT,
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError._RESOLVE,
            KafkaError._TIMED_OUT,
            KafkaError._MSG_TIMED_OUT,
        )
        if bootstrap and err.code() in lost:
            text += f" (broker {bootstrap})"
    elif isinstance(e, TimeoutError):
        text = f"timed out: {e}" if str(e) else "timed out"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Here, not at the top: `--help` and usage errors exit above without the config model.
    from streams.ops.config import ConfigError

    try:
        _setup_logging(args)
        rc: int = args.func(args)
        return rc
    except (ConfigError, UsageError) as e:
        print(f"auditwatch: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"auditwatch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from confluent_kafka import KafkaException

        if not isinstance(e, (RuntimeError, TimeoutError, KafkaException)):
            raise
        message = _operational_error(e, _bootstrap(args))
        log = logging.getLogger("auditwatch")
        if args.command in ("run", "webhook"):
            # A service says why it stopped in its log (in the log's format). What we raise on
            # purpose (a topic layout, a broker that cannot be reached) and Kafka's own errors
            # are told by their message; anything else may be a bug and keeps its traceback.
            expected = isinstance(e, KafkaException) or type(e).__module__.startswith("streams.")
            log.error("%s stopped: %s", args.command, message, exc_info=not expected)
            if expected:
                log.debug("%s stopped", args.command, exc_info=True)
            return 1
        # A one-shot command shows the traceback with --log-level DEBUG (for a bug report).
        log.debug("%s failed", args.command, exc_info=True)
        print(f"auditwatch: error: {message}", file=sys.stderr)
        return 1


def _bootstrap(args: argparse.Namespace) -> str | None:
    """The broker's address and where it came from, for an error message."""
    from streams.ops.broker import address_source

    try:
        cfg = _config(args)
        return f"{cfg.kafka.bootstrap()}; {address_source(cfg)}"
    except Exception:  # only to name the broker in an error message: never a second error
        return None


if __name__ == "__main__":
    sys.exit(main())
