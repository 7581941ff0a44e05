"""`auditwatch deadletter list|redrive`: inspect dead letters by reason and re-send fixed ones.

A dead letter (schemas/dead_letter.avsc) keeps the raw key and value of an input message that
was refused, where it came from and why. Once the cause is fixed (a schema registered, a
config limit raised, a producer bug fixed), `redrive` re-sends the raw bytes (or, with
`--fix-file`, corrected bytes) to the input topic, where the pipeline takes them like any
other message.

Each dead letter is redriven once. Every re-sent message carries the header
`auditwatch-redrive: <dead-letter topic>:<partition>@<offset>`, and once the input topic has
acknowledged it a record keyed by that dead letter's `<partition>@<offset>` goes to the
ledger topic `<dead-letter topic>.redriven` (compacted, created on first use), which `list`
and later redrives read: a second redrive skips what the first sent (`--force` re-sends). A
redrive interrupted between the two writes re-sends those messages on the next run; the
pipeline's event-id dedupe archives an event once however often it is sent.

Before sending, each value is decoded and validated locally as the processor would (the same
input format, limits and schema resolver): values that would be refused again are reported
with the reason and not sent (`--no-check` sends them anyway). Values truncated when they were
dead-lettered (over `input.max_value_bytes`) cannot be re-sent whole and are skipped, and so
are `conflicting_duplicate`s unless a fix file gives them new content: re-sending one would
only be refused again (the archived record wins).

The webhook sink (`auditwatch webhook`) dead-letters alert states it could not deliver to the
same topic, with stage `webhook` (reason `webhook_failed`). Those are not input: a redrive
leaves them out unless given `--stage webhook`, which re-sends them (checked to be alert
states) to the topic they were read from, the alerts topic, so every webhook sink's consumer
group reads them again; receivers drop copies they already have by Idempotency-Key.
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.ops.config import Config, load_config

log = logging.getLogger("auditwatch.deadletter")

LEDGER_SUFFIX = ".redriven"
REDRIVE_HEADER = "auditwatch-redrive"
NOT_REDRIVABLE = ("conflicting_duplicate",)
WEBHOOK_STAGE = "webhook"  # dead letters of the webhook sink: alert states, not input
STAGES = ("input", WEBHOOK_STAGE)


@dataclass
class DeadLetter:
    """One record of the dead-letter topic; `id` is its `partition@offset` there."""

    id: str
    reason: str
    message: str
    stage: str
    topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes
    value_truncated: bool
    value_size: int
    value_sha256: str
    event_id: str | None
    rejected_at_ms: int
    redriven: dict[str, Any] | None = None  # the ledger entry, once redriven
    redrive_of: str | None = None  # set when this is a redriven message refused again

    @property
    def origin(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def first_bytes(self, n: int = 48) -> str:
        """The start of the value: as text when it is printable UTF-8, else as hex."""
        head = self.value[:n]
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and text.isprintable():
            return repr(text + ("..." if len(self.value) > n else ""))
        return head[:16].hex(" ") + (" ..." if len(self.value) > 16 else "")

    def to_json(self) -> dict[str, Any]:
        """The form of `list --json`, which `redrive --fix-file` also reads."""
        from schemas.event import format_rfc3339_ms

        out: dict[str, Any] = {
            "id": self.id,
            "reason": self.reason,
            "message": self.message,
            "stage": self.stage,
            "origin": self.origin,
            "rejected_at": format_rfc3339_ms(self.rejected_at_ms),
            "event_id": self.event_id,
            "value_size": self.value_size,
            "value_truncated": self.value_truncated,
            "value_sha256": self.value_sha256,
            "key_text": self.key.decode("utf-8", "replace") if self.key is not None else None,
        }
        try:
            out["value_text"] = self.value.decode("utf-8")
        except UnicodeDecodeError:
            out["value_b64"] = base64.b64encode(self.value).decode()
        out["redriven"] = self.redriven
        out["redrive_of"] = self.redrive_of
        return out


def ledger_topic(cfg: Config) -> str:
    return cfg.topics.deadletter + LEDGER_SUFFIX


def _topic_exists(cfg: Config, topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(cfg.kafka.client_config())
    meta = admin.list_topics(topic, timeout=15).topics.get(topic)
    return meta is not None and meta.error is None and bool(meta.partitions)


def read_ledger(cfg: Config) -> dict[str, dict[str, Any]]:
    """Dead-letter id -> what its redrive sent (latest record per id); empty before the first
    redrive."""
    from streams.tools.reading import read_topic

    topic = ledger_topic(cfg)
    if not _topic_exists(cfg, topic):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for msg in read_topic(cfg, topic):
        if msg.key() is not None and msg.value() is not None:
            out[msg.key().decode()] = orjson.loads(msg.value())
    return out


def read_dead_letters(cfg: Config, damaged: list[str] | None = None) -> list[DeadLetter]:
    """Every record of the dead-letter topic, with its redrive state, oldest first. A record
    that is not a readable dead letter is skipped: its id (`PARTITION@OFFSET`) and why go into
    `damaged` when given, else into a warning; one damaged record must not hide the rest."""
    from schemas.codec import decode_wire
    from streams.tools.reading import read_topic

    ledger = read_ledger(cfg)
    sent_to = {entry.get("sent_to"): dl_id for dl_id, entry in ledger.items()}
    out: list[DeadLetter] = []
    for msg in read_topic(cfg, cfg.topics.deadletter):
        dl_id = f"{msg.partition()}@{msg.offset()}"
        try:
            d = decode_wire(msg.value() or b"", "dead_letter")
        except ValueError as e:
            if damaged is not None:
                damaged.append(f"{dl_id} ({e})")
            else:
                log.warning("skipping damaged dead-letter record %s: %s", dl_id, e)
            continue
        dl = DeadLetter(
            id=dl_id,
            reason=d["reason"],
            message=d["message"],
            stage=d["stage"],
            topic=d["topic"],
            partition=d["partition"],
            offset=d["offset"],
            key=d["key"],
            value=d["value"],
            value_truncated=d["value_truncated"],
            value_size=d["value_size"],
            value_sha256=bytes(d["value_sha256"]).hex(),
            event_id=d["event_id"],
            rejected_at_ms=d["rejected_at"],
            redriven=ledger.get(dl_id),
        )
        dl.redrive_of = sent_to.get(dl.origin)
        out.append(dl)
    out.sort(key=lambda x: (x.rejected_at_ms, x.id))
    return out


def select(
    dls: list[DeadLetter], reason: str | None = None, since_ms: int | None = None
) -> list[DeadLetter]:
    return [
        d
        for d in dls
        if (reason is None or d.reason == reason)
        and (since_ms is None or d.rejected_at_ms >= since_ms)
    ]


# -- list ------------------------------------------------------------------------------------


def render_list(cfg: Config, dls: list[DeadLetter], limit: int) -> str:
    from schemas.event import format_rfc3339_ms

    by_reason = Counter(d.reason for d in dls)
    redriven = Counter(d.reason for d in dls if d.redriven)
    lines = [
        f"{len(dls)} dead letters in {cfg.topics.deadletter} ({sum(redriven.values())} redriven)",
        f"  {'reason':<24}{'count':>7}{'redriven':>10}",
    ]
    for reason, n in by_reason.most_common():
        lines.append(f"  {reason:<24}{n:>7}{redriven[reason]:>10}")
    shown = dls[-limit:] if limit > 0 else dls
    if shown:
        lines += [
            "",
            ("latest " if len(shown) < len(dls) else "")
            + f"{len(shown)} of {len(dls)}, oldest first:",
            f"  {'rejected at (UTC)':<20}{'id':<9}{'reason':<22}{'redrive':<26}value",
        ]
        for d in shown:
            if d.redriven:
                state = "sent " + d.redriven.get("redriven_at", "")[:16].replace("T", " ")
            elif d.redrive_of:
                state = f"refused again ({d.redrive_of})"
            else:
                state = "-"
            lines.append(
                f"  {format_rfc3339_ms(d.rejected_at_ms)[:19].replace('T', ' '):<20}"
                f"{d.id:<9}{d.reason:<22}{state:<26}{d.first_bytes()}"
            )
            lines.append(f"  {'':<29}from {d.origin}: {d.message[:160]}")
    return "\n".join(lines)


def _since(text: str | None) -> int | None:
    if text is None:
        return None
    from schemas.event import InvalidEvent, parse_timestamp_us
    from streams.cli.errors import UsageError

    try:
        return parse_timestamp_us(text) // 1000
    except InvalidEvent as e:
        raise UsageError(f"--since {text!r}: {e.message}") from None


def _require_topic(cfg: Config) -> None:
    from streams.cli.errors import UsageError
    from streams.ops.broker import require_broker

    require_broker(cfg)
    if not _topic_exists(cfg, cfg.topics.deadletter):
        raise UsageError(
            f"dead-letter topic {cfg.topics.deadletter!r} does not exist at "
            f"{cfg.kafka.bootstrap()} (run `auditwatch topics create`)"
        )


def render_damaged(cfg: Config, damaged: list[str]) -> str:
    """The summary line of the records of the dead-letter topic that could not be read."""
    shown = "; ".join(damaged[:5]) + ("; ..." if len(damaged) > 5 else "")
    return (
        f"{len(damaged)} damaged record(s) in {cfg.topics.deadletter} skipped (not readable "
        f"as dead letters): {shown}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _require_topic(cfg)
    damaged: list[str] = []
    dls = select(read_dead_letters(cfg, damaged), args.reason, _since(args.since))
    if args.json:
        shown = dls[-args.limit :] if args.limit > 0 else dls
        for d in shown:
            sys.stdout.write(orjson.dumps(d.to_json()).decode() + "\n")
        if damaged:
            # stdout stays one dead letter per line for whoever parses it.
            print("warning: " + render_damaged(cfg, damaged), file=sys.stderr)
        return 0
    print(render_list(cfg, dls, args.limit))
    if damaged:
        print(render_damaged(cfg, damaged))
    return 0


# -- redrive ---------------------------------------------------------------------------------


@dataclass
class RedriveResult:
    sent: list[tuple[DeadLetter, str]] = field(default_factory=list)  # (dead letter, sent_to)
    would_send: list[DeadLetter] = field(default_factory=list)  # --dry-run
    already: list[DeadLetter] = field(default_factory=list)
    truncated: list[DeadLetter] = field(default_factory=list)
    not_redrivable: list[DeadLetter] = field(default_factory=list)
    still_failing: list[tuple[DeadLetter, str]] = field(default_factory=list)  # (dl, reason)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)  # delivery errors
    other_stage: list[DeadLetter] = field(default_factory=list)  # not this redrive's stage


def read_fix_file(path: str) -> dict[str, bytes]:
    """Dead-letter id -> corrected value, from JSON lines of `list --json`'s form: `id`, and
    `value` (a JSON object, sent as JSON), `value_text` (sent as UTF-8) or `value_b64`."""
    from streams.cli.errors import UsageError

    fixes: dict[str, bytes] = {}
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read fix file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UsageError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(d, dict) or not isinstance(d.get("id"), str):
            raise UsageError(f'{path}:{n}: needs an "id" (as `deadletter list --json` prints)')
        if isinstance(d.get("value"), dict):
            fixes[d["id"]] = orjson.dumps(d["value"])
        elif isinstance(d.get("value_text"), str):
            fixes[d["id"]] = d["value_text"].encode()
        elif isinstance(d.get("value_b64"), str):
            try:
                fixes[d["id"]] = base64.b64decode(d["value_b64"])
            except ValueError:  # binascii.Error (padding, length), or text that is not ASCII
                raise UsageError(f"{path}:{n}: value_b64 is not base64") from None
        else:
            raise UsageError(f'{path}:{n}: needs "value", "value_text" or "value_b64"')
    return fixes


def _resolver(cfg: Config) -> Any:
    from schemas.codec import BundledSchemas

    if cfg.input.schema_registry is None:
        return BundledSchemas()
    from streams.ops.registry import RegistrySchemas

    return RegistrySchemas(cfg.input.schema_registry)


def precheck(cfg: Config, value: bytes, resolver: Any) -> str | None:
    """The reason the processor would refuse `value` now (decode and validate), or None."""
    from schemas.codec import RejectedInput, decode_event

    try:
        decode_event(
            value,
            fmt=cfg.input.format,
            resolver=resolver,
            limits=cfg.input.limits(),
            now_ms=time.time_ns() // 1_000_000,
        )
    except RejectedInput as e:
        return f"{e.reason}: {e.message}"
    return None


def precheck_alert(value: bytes) -> str | None:
    """Why the webhook sink would dead-letter `value` again at once (not an alert state), or
    None. Whether the endpoint now accepts it only the sink can tell."""
    from schemas.alert import check_state

    try:
        check_state(orjson.loads(value))
    except ValueError as e:  # orjson.JSONDecodeError included
        return f"not an alert state: {e}"
    return None


def stage_of(d: DeadLetter) -> str:
    """Which redrive handles `d`: `webhook` for the webhook sink's, `input` for the rest."""
    return WEBHOOK_STAGE if d.stage == WEBHOOK_STAGE else "input"


def _ensure_ledger(cfg: Config) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = ledger_topic(cfg)
    if _topic_exists(cfg, topic):
        return
    admin = AdminClient(cfg.kafka.client_config())
    spec = NewTopic(
        topic,
        num_partitions=1,
        replication_factor=cfg.topics.replication_factor,
        # One record per dead letter, kept as long as the dead letters themselves.
        config={
            "cleanup.policy": "compact",
            "retention.ms": str(cfg.topics.archive_retention_ms),
        },
    )
    try:
        admin.create_topics([spec])[topic].result(30)
    except KafkaException as e:
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise


def redrive(
    cfg: Config,
    dls: list[DeadLetter],
    *,
    fixes: dict[str, bytes] | None = None,
    dry_run: bool = False,
    check: bool = True,
    force: bool = False,
    topic: str | None = None,
    stage: str = "input",
) -> RedriveResult:
    """Re-send `dls` (or, with `fixes`, only those ids, with the fixed values) once each: for
    stage `input` to the input topic, for stage `webhook` (alert states the webhook sink
    could not deliver) to the topic each was read from (the alerts topic). Dead letters of
    the other stage are left out (`other_stage`); see the module docstring for what else is
    skipped and why."""
    from confluent_kafka import KafkaError, Message

    from schemas.event import format_rfc3339_ms
    from streams.tools.producer import make_producer

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    webhook = stage == WEBHOOK_STAGE
    res = RedriveResult()
    resolver = _resolver(cfg) if check and not webhook else None
    todo: list[tuple[DeadLetter, bytes]] = []
    for d in dls:
        if fixes is not None and d.id not in fixes:
            continue
        value = fixes[d.id] if fixes is not None else d.value
        if stage_of(d) != stage:
            res.other_stage.append(d)
        elif d.redriven and not force:
            res.already.append(d)
        elif fixes is None and d.value_truncated:
            res.truncated.append(d)
        elif fixes is None and d.reason in NOT_REDRIVABLE:
            res.not_redrivable.append(d)
        elif check and (
            why := precheck_alert(value) if webhook else precheck(cfg, value, resolver)
        ):
            res.still_failing.append((d, why))
        else:
            todo.append((d, value))
    if dry_run:
        res.would_send = [d for d, _ in todo]
        return res
    if not todo:
        return res
    _ensure_ledger(cfg)
    producer = make_producer(cfg)
    delivered: dict[str, str] = {}
    errors: dict[str, str] = {}

    def on_delivery(dl_id: str) -> Any:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors[dl_id] = str(err)
            else:
                delivered[dl_id] = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"

        return cb

    def target(d: DeadLetter) -> str:
        if topic:
            return topic
        if webhook:
            return d.topic or cfg.topics.alerts
        return cfg.topics.events

    for d, value in todo:
        header = f"{cfg.topics.deadletter}:{d.id}".encode()
        while True:
            try:
                producer.produce(
                    target(d),
                    key=d.key,
                    value=value,
                    headers=[(REDRIVE_HEADER, header)],
                    on_delivery=on_delivery(d.id),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        for d, _ in todo:
            if d.id not in delivered and d.id not in errors:
                errors[d.id] = "not acknowledged within 60 s"
    # The ledger is written only for what the input topic acknowledged.
    now = time.time_ns() // 1_000_000
    from schemas.codec import sha256

    for d, value in todo:
        if d.id in delivered:
            entry = {
                "dead_letter": f"{cfg.topics.deadletter}:{d.id}",
                "reason": d.reason,
                "sent_to": delivered[d.id],
                "fixed": fixes is not None,
                "value_sha256": sha256(value).hex(),
                "redriven_at": format_rfc3339_ms(now),
            }
            producer.produce(ledger_topic(cfg), key=d.id.encode(), value=orjson.dumps(entry))
            res.sent.append((d, delivered[d.id]))
        else:
            res.failed.append((d, errors.get(d.id, "unknown error")))
    if producer.flush(60):
        raise RuntimeError(
            "the redriven messages were sent but the ledger was not written; a second "
            "redrive would send them again (the pipeline dedupes events by event_id)"
        )
    return res


def render_redrive(res: RedriveResult, topic: str, dry_run: bool) -> str:
    lines: list[str] = []
    if dry_run:
        lines.append(f"dry run: would re-send {len(res.would_send)} to {topic}")
        for d in res.would_send:
            lines.append(f"  {d.id:<9}{d.reason:<22}{d.origin}  {d.first_bytes()}")
    else:
        reasons = Counter(d.reason for d, _ in res.sent)
        by = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
        lines.append(f"re-sent {len(res.sent)} to {topic}" + (f" ({by})" if by else ""))
        for d, to in res.sent:
            lines.append(f"  {d.id:<9}{d.reason:<22}-> {to}")
    skipped = [
        ("already redriven (--force re-sends)", [(d, "") for d in res.already]),
        ("truncated when dead-lettered: cannot be re-sent whole", [(d, "") for d in res.truncated]),
        ("conflicting duplicates: the archived record wins", [(d, "") for d in res.not_redrivable]),
        ("would be refused again", res.still_failing),
        ("delivery failed", res.failed),
    ]
    webhook_letters = [d for d in res.other_stage if stage_of(d) == WEBHOOK_STAGE]
    if webhook_letters:
        lines.append(
            f"skipped {len(webhook_letters)}: webhook deliveries that failed (alert states, "
            "not input; `--stage webhook` re-sends them to the alerts topic)"
        )
    if len(webhook_letters) != len(res.other_stage):
        lines.append(
            f"skipped {len(res.other_stage) - len(webhook_letters)}: input dead letters "
            "(redriven without --stage webhook)"
        )
    for title, items in skipped:
        if not items:
            continue
        lines.append(f"skipped {len(items)}: {title}")
        for d, why in items[:20]:
            lines.append(f"  {d.id:<9}{d.reason:<22}{d.origin}  {why}".rstrip())
    return "\n".join(lines)


def cmd_redrive(args: argparse.Namespace) -> int:
    from streams.cli.errors import UsageError

    if args.fix_file and args.no_check:
        raise UsageError("--no-check is for raw re-sends; a fix file's values are always checked")
    cfg = load_config(args.config)
    webhook = args.stage == WEBHOOK_STAGE
    fixes = read_fix_file(args.fix_file) if args.fix_file else None
    _require_topic(cfg)
    dls = select(read_dead_letters(cfg), args.reason, _since(args.since))
    if fixes is not None:
        unknown = sorted(set(fixes) - {d.id for d in dls if stage_of(d) == args.stage})
        if unknown:
            raise UsageError(
                f"fix file names dead letters not found (or filtered out): {', '.join(unknown)}"
            )
    res = redrive(
        cfg,
        dls,
        fixes=fixes,
        dry_run=args.dry_run,
        check=not args.no_check,
        force=args.force,
        topic=args.topic,
        stage=args.stage,
    )
    where = args.topic or (cfg.topics.alerts if webhook else cfg.topics.events)
    print(render_redrive(res, where, args.dry_run))
    return 1 if res.failed else 0


def add_parser(sub: Any) -> None:
    """Register `auditwatch deadletter list|redrive`."""
    p = sub.add_parser(
        "deadletter",
        help="inspect dead letters by reason; re-send fixed ones",
        description="Dead letters are input messages the pipeline refused, kept with their "
        "raw bytes and the reason. `list` counts them by reason and shows the latest; "
        "`redrive` re-sends them to the input topic once the cause is fixed.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--reason", metavar="REASON", help="only this reason code")
        q.add_argument("--since", metavar="TIME", help="only those rejected at or after TIME")
        q.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: defaults)")

    q = actions.add_parser(
        "list",
        help="counts by reason, then the latest dead letters",
        description="Counts by reason (and how many were redriven), then the latest dead "
        "letters: when, id (partition@offset in the dead-letter topic), reason, where the "
        "message came from (topic[partition]@offset), its redrive state and first bytes.",
    )
    common(q)
    q.add_argument(
        "--limit", type=int, default=20, metavar="N", help="rows shown, latest (20; 0: all)"
    )
    q.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per dead letter, with the whole value (value_text or "
        "value_b64); edit value_text and pass the lines to `redrive --fix-file`",
    )
    q.set_defaults(func=cmd_list)

    r = actions.add_parser(
        "redrive",
        help="re-send dead letters to the input topic, once each",
        description="Re-send dead-lettered messages (their raw bytes, or the corrected "
        "values of --fix-file) to the input topic, each once: a ledger topic "
        "(<dead-letter topic>.redriven) records what was sent, and later redrives skip "
        "it. Values are first checked locally against the current config and schema "
        "registry; those that would be refused again are reported, not sent. Alert states "
        "the webhook sink failed to deliver (stage webhook, reason webhook_failed) are not "
        "input and are left out; `--stage webhook` re-sends them instead, to the alerts "
        "topic they came from, so the webhook sinks deliver them again (once the endpoint "
        "works). A re-sent state becomes its alert's latest record on the compacted alerts "
        "topic until the alert's next state.",
    )
    common(r)
    r.add_argument(
        "--fix-file",
        metavar="FILE",
        help="JSON lines of `list --json` form with corrected value_text (or value, "
        "value_b64): only these dead letters are re-sent, with these values",
    )
    r.add_argument("--dry-run", action="store_true", help="show what would be sent; send nothing")
    r.add_argument("--force", action="store_true", help="re-send even if already redriven")
    r.add_argument(
        "--no-check", action="store_true", help="send raw values even if they would fail again"
    )
    r.add_argument(
        "--stage",
        choices=STAGES,
        default="input",
        help="input (default): refused input messages, re-sent to the input topic; webhook: "
        "alert states the webhook sink could not deliver, re-sent to the alerts topic",
    )
    r.add_argument(
        "--topic",
        metavar="TOPIC",
        help="send here instead of the input topic (--stage webhook: the alerts topic)",
    )
    r.set_defaults(func=cmd_redrive)
