"""On-call decisions about alerts (acknowledge, snooze), shared by every worker.

`auditwatch alerts ack/snooze/unsnooze` write one JSON record per decision to the control
topic, keyed by the alert and the aspect the decision is about: `ALERT_ID:ack` (ack, unack) or
`ALERT_ID:snooze` (snooze, unsnooze). The topic is compacted, which keeps only the latest record
of each key, so an acknowledgement and a snooze decided at the same moment by two people never
overwrite each other: readers merge the two aspects (`ControlMerge`). Each record still carries
the writer's view of the whole state, so a reader that predates aspects keeps working as before.
Records written before aspects existed (keyed by alert_id, no `aspect` field) are read as the
whole state as of their time; an aspect record decided later overrides its part of it.

Every worker runs a `ControlReader`: a plain consumer thread that assigns all partitions of the
control topic from the beginning (no consumer group: each worker needs every decision,
whichever detection partitions it owns) and keeps the latest state per alert in memory.
`ControlReader.lookup` is the detection core's hook; it applies the wall clock to snoozes
(the core works in event time only). Replay has no control topic and no hook. The reader
survives broker errors: it retries with backoff until stopped, and reports `healthy` and
`last_error` meanwhile.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from schemas.alert import AlertControl
from schemas.event import InvalidEvent, format_rfc3339_ms, parse_timestamp_us
from streams.ops.config import Config

log = logging.getLogger("auditwatch.control")

ACTIONS = ("ack", "unack", "snooze", "unsnooze")
ASPECTS = ("ack", "snooze")
_ALERT_ID = re.compile(r"^a-[0-9a-f]{24}$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90s`, `15m`, `2h`, `1d`, `1h30m`."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 15m, 2h, 1d, 1h30m)")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return seconds


# The latest time a control record may name (9999-12-31T23:59:59.999Z): past it, or before
# 1970, no RFC 3339 text exists for it, so a record with one could not even be shown.
_MAX_MS = 253_402_300_799_999


def _ms(text: Any) -> int:
    ms = parse_timestamp_us(text) // 1000
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"time {text!r} is outside 1970 .. 9999")
    return ms


def _ms_or_none(text: Any) -> int | None:
    return None if text is None else _ms(text)


def _name_or_none(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"a name must be a string, not {type(value).__name__}")
    return value


def _rfc_or_none(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339_ms(ms)


def aspect_of(action: str) -> str:
    """The part of an alert's control state that `action` decides: `ack` or `snooze`."""
    return "ack" if action in ("ack", "unack") else "snooze"


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """One alert's control state after its latest decision (`action`, by `by` at `at_ms`).

    `aspect` is set on the records written to the topic since decisions are keyed per aspect
    (`ack` or `snooze`): only that aspect's fields are authoritative there. None: the whole
    state (a merged view, or a record written before aspects existed)."""

    alert_id: str
    action: str
    by: str
    at_ms: int
    acknowledged_by: str | None = None
    acknowledged_at_ms: int | None = None
    snoozed_by: str | None = None
    snoozed_until_ms: int | None = None
    aspect: str | None = None

    @property
    def key(self) -> str:
        """The record's key on the compacted control topic."""
        return self.alert_id if self.aspect is None else f"{self.alert_id}:{self.aspect}"

    def to_json(self) -> dict[str, Any]:
        out = {
            "alert_id": self.alert_id,
            "action": self.action,
            "by": self.by,
            "at": format_rfc3339_ms(self.at_ms),
            "until": _rfc_or_none(self.snoozed_until_ms) if self.action == "snooze" else None,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": _rfc_or_none(self.acknowledged_at_ms),
            "snoozed_by": self.snoozed_by,
            "snoozed_until": _rfc_or_none(self.snoozed_until_ms),
        }
        if self.aspect is not None:
            out["aspect"] = self.aspect
        return out

    @classmethod
    def from_json(cls, d: Any) -> ControlRecord:
        if (
            not isinstance(d, dict)
            or d.get("action") not in ACTIONS
            or not isinstance(d.get("alert_id"), str)
        ):
            raise ValueError(f"not a control record: {d!r}")
        aspect = d.get("aspect")
        if aspect is not None and aspect != aspect_of(d["action"]):
            raise ValueError(f"control record with aspect {aspect!r} for action {d['action']!r}")
        return cls(
            alert_id=d["alert_id"],
            action=d["action"],
            by=str(d.get("by") or ""),
            at_ms=_ms(d["at"]),
            acknowledged_by=_name_or_none(d.get("acknowledged_by")),
            acknowledged_at_ms=_ms_or_none(d.get("acknowledged_at")),
            snoozed_by=_name_or_none(d.get("snoozed_by")),
            snoozed_until_ms=_ms_or_none(d.get("snoozed_until")),
            aspect=aspect,
        )

    def control_at(self, now_ms: int) -> AlertControl | None:
        """What the detection core should honour at `now_ms` (wall clock): None when the
        alert is neither acknowledged nor in a snooze."""
        until = self.snoozed_until_ms
        snoozed = _rfc_or_none(until) if until is not None and now_ms < until else None
        if self.acknowledged_by is None and snoozed is None:
            return None
        return AlertControl(acknowledged_by=self.acknowledged_by, snoozed_until=snoozed)


def decide(
    current: ControlRecord | None,
    alert_id: str,
    action: str,
    by: str,
    at_ms: int,
    until_ms: int | None = None,
) -> ControlRecord:
    """The alert's new control state after `action` (until_ms: the end of a snooze)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    state = current or ControlRecord(alert_id, action, by, at_ms)
    state = replace(state, action=action, by=by, at_ms=at_ms)
    if action == "ack":
        return replace(state, acknowledged_by=by, acknowledged_at_ms=at_ms)
    if action == "unack":
        return replace(state, acknowledged_by=None, acknowledged_at_ms=None)
    if action == "snooze":
        if until_ms is None or until_ms <= at_ms:
            raise ValueError("a snooze needs an end in the future")
        return replace(state, snoozed_by=by, snoozed_until_ms=until_ms)
    return replace(state, snoozed_by=None, snoozed_until_ms=None)


def decode(value: bytes | None) -> ControlRecord | None:
    """A control record from the topic; None (logged) for anything else, so one bad record
    written by hand cannot stop a worker."""
    if not value:
        return None
    try:
        return ControlRecord.from_json(orjson.loads(value))
    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, InvalidEvent) as e:
        log.warning("ignoring a control record that cannot be read: %s", e)
        return None


def merge(parts: Iterable[ControlRecord]) -> ControlRecord | None:
    """One alert's control state from the latest record of each of its keys.

    Applied oldest first: a whole-state record sets everything as of its time, an aspect
    record overrides only its own fields. The result's action/by/at are the latest
    decision's."""
    state: ControlRecord | None = None
    for r in sorted(parts, key=lambda r: (r.at_ms, r.aspect is not None)):
        if r.aspect is None or state is None:
            base = replace(r, aspect=None)
            if r.aspect is None:
                state = base
                continue
            # An aspect with nothing before it: the other aspect is unset.
            state = replace(
                base,
                acknowledged_by=None,
                acknowledged_at_ms=None,
                snoozed_by=None,
                snoozed_until_ms=None,
            )
        state = replace(state, action=r.action, by=r.by, at_ms=r.at_ms)
        if r.aspect == "ack":
            state = replace(
                state, acknowledged_by=r.acknowledged_by, acknowledged_at_ms=r.acknowledged_at_ms
            )
        else:
            state = replace(state, snoozed_by=r.snoozed_by, snoozed_until_ms=r.snoozed_until_ms)
    return state


class ControlMerge:
    """The latest record of every control-topic key, merged per alert (`merged`)."""

    def __init__(self) -> None:
        self._parts: dict[str, dict[str | None, ControlRecord]] = {}
        self.merged: dict[str, ControlRecord] = {}

    def add(self, record: ControlRecord) -> ControlRecord:
        """Take a record read from the topic (later ones replace earlier ones of the same
        key); returns the alert's merged state."""
        parts = self._parts.setdefault(record.alert_id, {})
        parts[record.aspect] = record
        state = merge(parts.values())
        assert state is not None
        self.merged[record.alert_id] = state
        return state


class ControlReader:
    """Every control record, kept up to date by a background thread.

    `start()` begins reading; `wait_ready()` blocks until the records that existed at start
    are loaded (a restarted worker must not page for an alert acknowledged an hour ago).
    Reads and the dict swap are safe across threads: the map only ever gains or replaces
    entries, each a frozen record.

    A broker error (at start or while reading) does not end the thread: it is logged, kept
    in `last_error`, `healthy` turns False, and the reader reconnects after a backoff
    (`retry_s`, doubling up to `max_retry_s`), resuming after the last record it read.
    `wait_ready()` returns after the first failure too, so a worker is not held up by a
    broker it cannot reach; decisions apply once the reader is back."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.time,
        *,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.topic = cfg.topics.control
        self.clock = clock
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.metadata_timeout_s = metadata_timeout_s
        self._merge = ControlMerge()
        self.records: dict[str, ControlRecord] = self._merge.merged
        self.last_error: str | None = None
        self.failures = 0  # broker errors that made the reader reconnect
        self.read_count = 0  # control-topic records read
        self._healthy = False
        self._next: dict[int, int] = {}  # partition -> next offset to read, after a reconnect
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def healthy(self) -> bool:
        """True while the reader is attached to the control topic (or waiting for it to be
        created) without errors; False after a broker error, until it reads again."""
        return self._healthy and self._thread is not None and self._thread.is_alive()

    def start(self) -> ControlReader:
        self._thread = threading.Thread(target=self._run, name="auditwatch-control", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def get(self, alert_id: str) -> ControlRecord | None:
        return self.records.get(alert_id)

    def lookup(self, alert_id: str) -> AlertControl | None:
        """The detection core's hook (see `DetectionCore.control`)."""
        record = self.records.get(alert_id)
        if record is None:
            return None
        return record.control_at(int(self.clock() * 1000))

    def _run(self) -> None:
        delay = self.retry_s
        while not self._stop.is_set():
            consumer: Consumer | None = None
            read_before = self.read_count
            try:
                consumer = Consumer(
                    {
                        **self.cfg.kafka.client_config(),
                        # Never used to join a group or commit: partitions are assigned by hand.
                        "group.id": f"auditwatch-control-{uuid.uuid4().hex[:12]}",
                        "enable.auto.commit": False,
                        "enable.partition.eof": True,
                        "auto.offset.reset": "earliest",
                        # The end of each partition shows after an empty fetch, which the
                        # broker holds this long: a worker waits for it before its first event.
                        "fetch.wait.max.ms": 100,
                    }
                )
                self._read(consumer, self._assign(consumer))
            # Any failure, Kafka's or not: a stale-forever reader is worse than a retry.
            except Exception as e:
                if self.read_count != read_before:
                    delay = self.retry_s  # it was working: start the backoff over
                self._failed(e, delay)
                self._stop.wait(delay)
                delay = min(self.max_retry_s, delay * 2)
            finally:
                if consumer is not None:
                    try:
                        consumer.close()
                    except (KafkaException, RuntimeError) as e:
                        log.debug("closing the control topic consumer: %s", e)
        self._ready.set()

    def _failed(self, e: Exception, delay: float) -> None:
        self._healthy = False
        self.failures += 1
        self.last_error = f"{type(e).__name__}: {e}"
        if isinstance(e, KafkaException):
            log.error(
                "control topic %s: %s; acknowledgements and snoozes may be stale; "
                "reconnecting in %.0f s",
                self.topic,
                e,
                delay,
            )
        else:
            log.exception(
                "control topic %s reader failed; acknowledgements and snoozes may be stale; "
                "reconnecting in %.0f s",
                self.topic,
                delay,
            )
        # Whoever waits for the existing decisions must not wait for the broker to come back.
        self._ready.set()

    def _read(self, consumer: Consumer, waiting: set[int]) -> None:
        """Poll until stopped; raises on a fatal error."""
        while not self._stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._healthy = True
                    waiting.discard(msg.partition())
                    if not waiting:
                        self._ready.set()
                    continue
                if err.fatal():
                    raise KafkaException(err)
                # librdkafka retries these itself (broker down, transport): report, go on.
                if self._healthy or self.last_error != str(err):
                    log.warning("reading control topic %s: %s", self.topic, err)
                self._healthy = False
                self.last_error = str(err)
                continue
            self.read_count += 1
            self._healthy = True
            self._next[msg.partition()] = msg.offset() + 1
            record = decode(msg.value())
            if record is None:
                continue
            self._merge.add(record)
            if self._ready.is_set():
                log.info(
                    "control: %s %s by %s%s",
                    record.action,
                    record.alert_id,
                    record.by,
                    f" until {_rfc_or_none(record.snoozed_until_ms)}"
                    if record.action == "snooze"
                    else "",
                )

    def _assign(self, consumer: Consumer) -> set[int]:
        """Assign every partition from the beginning (or, after a reconnect, from the next
        record not read yet); waits for the topic to exist."""
        warned = False
        while not self._stop.is_set():
            topics = consumer.list_topics(self.topic, timeout=self.metadata_timeout_s).topics
            meta = topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                parts = sorted(meta.partitions)
                consumer.assign(
                    [
                        TopicPartition(self.topic, p, self._next.get(p, OFFSET_BEGINNING))
                        for p in parts
                    ]
                )
                if self.last_error is not None:
                    log.warning(
                        "control topic %s: reading again after: %s", self.topic, self.last_error
                    )
                log.info("reading control topic %s (%d partitions)", self.topic, len(parts))
                self._healthy = True
                return set(parts)
            # Nothing to load yet: whoever waits for the existing decisions may go on.
            self._healthy = True
            self._ready.set()
            if not warned:
                log.warning(
                    "control topic %s does not exist yet (`auditwatch topics create`); "
                    "acknowledgements and snoozes apply once it does",
                    self.topic,
                )
                warned = True
            self._stop.wait(2.0)
        return set()


def require_topic(cfg: Config, timeout: float = 5.0) -> None:
    """Raise RuntimeError unless the control topic exists: a decision written nowhere (or
    to a topic auto-created with the wrong settings) would be silently lost."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(cfg.kafka.client_config())
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(cfg.topics.control, timeout=timeout).topics.get(cfg.topics.control)
        if meta is not None and meta.error is None and meta.partitions:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"control topic {cfg.topics.control!r} does not exist at "
                f"{cfg.kafka.bootstrap()} (run `auditwatch topics create`)"
            )
        # A topic created a moment ago may not be in every broker's metadata yet.
        time.sleep(0.2)


def read_state(cfg: Config, timeout: float = 30.0) -> dict[str, ControlRecord]:
    """The control topic as it is now: each alert's merged control state."""
    from streams.tools.reading import read_topic

    merged = ControlMerge()
    for msg in read_topic(cfg, cfg.topics.control, timeout=timeout):
        record = decode(msg.value())
        if record is not None:
            merged.add(record)
    return merged.merged


def publish(cfg: Config, record: ControlRecord, timeout: float = 30.0) -> None:
    """Write one control record (keyed `record.key`) and wait for the broker to acknowledge
    it."""
    producer = Producer({**cfg.kafka.client_config(), "enable.idempotence": True})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(
        cfg.topics.control,
        key=record.key.encode(),
        value=orjson.dumps(record.to_json()),
        on_delivery=delivered,
    )
    if producer.flush(timeout) or errors:
        raise RuntimeError(
            f"could not write to control topic {cfg.topics.control}: "
            + ("; ".join(errors) or f"not acknowledged within {timeout:.0f} s")
        )


class UnknownAlert(LookupError):
    """A decision about an alert id that neither the alerts topic nor the control topic knows:
    a typo, or an id from another deployment. Recording it would report success for nothing."""


def alert_exists(cfg: Config, alert_id: str, timeout: float = 30.0) -> bool:
    """Whether any state of `alert_id` is on the alerts topic (its records are keyed by alert
    id, so keys are compared and no value is parsed); stops at the first one."""
    from streams.tools.reading import read_topic

    wanted = alert_id.encode()
    return any(msg.key() == wanted for msg in read_topic(cfg, cfg.topics.alerts, timeout=timeout))


def apply_action(
    cfg: Config,
    alert_id: str,
    action: str,
    by: str,
    for_s: float | None = None,
    now_ms: int | None = None,
) -> ControlRecord:
    """Publish `action` as the alert's record for its aspect (`ALERT_ID:ack` or
    `ALERT_ID:snooze`), so a concurrent decision about the other aspect is never lost; returns
    the alert's control state as this decision leaves it. Raises `UnknownAlert` for an alert
    that no topic knows: one with earlier decisions counts as known (its states may have
    expired from the alerts topic since)."""
    if not _ALERT_ID.match(alert_id):
        raise ValueError(
            f"{alert_id!r} is not an alert id (they look like a-0123456789abcdef01234567)"
        )
    require_topic(cfg)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    until = None if for_s is None else now + int(for_s * 1000)
    current = read_state(cfg).get(alert_id)
    if current is None and not alert_exists(cfg, alert_id):
        raise UnknownAlert(
            f"no such alert {alert_id!r}: no state of it on {cfg.topics.alerts} and no decision "
            f"about it on {cfg.topics.control} (`auditwatch alerts` lists them)"
        )
    state = decide(current, alert_id, action, by, now, until)
    # The whole state as seen now goes along, for readers that predate aspects; readers
    # that know aspects take only this aspect's fields from it.
    publish(cfg, replace(state, aspect=aspect_of(action)))
    return state


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _cmd_action(args: argparse.Namespace) -> int:
    from streams.cli.errors import UsageError
    from streams.ops.config import load_config

    cfg = load_config(getattr(args, "config", None))
    for_s = None
    if args.alerts_action == "snooze":
        try:
            for_s = parse_duration(args.duration)
        except ValueError as e:
            raise UsageError(f"--for: {e}") from None
    try:
        record = apply_action(cfg, args.alert_id, args.alerts_action, args.by, for_s)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except UnknownAlert as e:
        # Well formed, but about nothing: an error of fact (1), not of usage (2).
        print(f"auditwatch: error: {e}", file=sys.stderr)
        return 1
    what = {
        "ack": f"acknowledged by {record.by}: repeats no longer page",
        "unack": "no longer acknowledged: escalations page again",
        "snooze": f"snoozed by {record.by} until {_rfc_or_none(record.snoozed_until_ms)}: "
        "no pages until then",
        "unsnooze": "snooze lifted: escalations page again",
    }[record.action]
    print(f"{record.alert_id} {what}")
    return 0


def add_alert_actions(alerts: argparse.ArgumentParser) -> None:
    """`auditwatch alerts ack|unack|snooze|unsnooze ID`, under the `alerts` command (which
    keeps working without a subcommand)."""
    sub = alerts.add_subparsers(dest="alerts_action", metavar="ACTION", required=False)

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description)
        p.add_argument("alert_id", metavar="ALERT_ID", help="e.g. a-d9defa921a79059092850b51")
        p.add_argument(
            "--by", default=_default_user(), help="who decides (default: the current user)"
        )
        # SUPPRESS: a --config given before the action (`alerts -c x ack ID`) is kept.
        p.add_argument(
            "--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help="YAML config"
        )
        p.set_defaults(func=_cmd_action)
        return p

    add(
        "ack",
        "acknowledge an alert: its repeats and escalations stop paging",
        "Acknowledge an alert on every worker (via the control topic): its later states "
        "still go to the alerts topic, marked acknowledged_by, but escalations no longer "
        "page. A new episode on the same machine is a new alert and pages.",
    )
    add("unack", "withdraw an acknowledgement", "Withdraw an acknowledgement.")
    p = add(
        "snooze",
        "silence an alert's pages for a while",
        "Snooze an alert on every worker: until the snooze ends its escalations go out as "
        "`updated` states with snoozed_until, and do not page.",
    )
    p.add_argument(
        "--for",
        dest="duration",
        required=True,
        metavar="DURATION",
        help="how long: 90s, 15m, 2h, 1d, 1h30m",
    )
    add("unsnooze", "end a snooze now", "End an alert's snooze now.")
