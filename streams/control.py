"""On-call decisions about alerts (acknowledge, snooze), shared by every worker.

`auditwatch alerts ack/snooze/unsnooze` write one JSON record per decision to the control
topic, keyed by alert_id. The topic is compacted, which keeps only the latest record of each
alert, so every record carries the alert's whole control state (who acknowledged it, until
when it is snoozed), not only the action that produced it.

Every worker runs a `ControlReader`: a plain consumer thread that assigns all partitions of the
control topic from the beginning (no consumer group: each worker needs every decision,
whichever detection partitions it owns) and keeps the latest state per alert in memory.
`ControlReader.lookup` is the detection core's hook; it applies the wall clock to snoozes
(the core works in event time only). Replay has no control topic and no hook.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from schemas.alert import AlertControl
from schemas.event import InvalidEvent, format_rfc3339_ms, parse_timestamp_us
from streams.config import Config

log = logging.getLogger("auditwatch.control")

ACTIONS = ("ack", "unack", "snooze", "unsnooze")
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


def _ms_or_none(text: Any) -> int | None:
    return None if text is None else parse_timestamp_us(text) // 1000


def _rfc_or_none(ms: int | None) -> str | None:
    return None if ms is None else format_rfc3339_ms(ms)


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """One alert's control state after its latest decision (`action`, by `by` at `at_ms`)."""

    alert_id: str
    action: str
    by: str
    at_ms: int
    acknowledged_by: str | None = None
    acknowledged_at_ms: int | None = None
    snoozed_by: str | None = None
    snoozed_until_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
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

    @classmethod
    def from_json(cls, d: Any) -> ControlRecord:
        if (
            not isinstance(d, dict)
            or d.get("action") not in ACTIONS
            or not isinstance(d.get("alert_id"), str)
        ):
            raise ValueError(f"not a control record: {d!r}")
        return cls(
            alert_id=d["alert_id"],
            action=d["action"],
            by=str(d.get("by") or ""),
            at_ms=parse_timestamp_us(d["at"]) // 1000,
            acknowledged_by=d.get("acknowledged_by"),
            acknowledged_at_ms=_ms_or_none(d.get("acknowledged_at")),
            snoozed_by=d.get("snoozed_by"),
            snoozed_until_ms=_ms_or_none(d.get("snoozed_until")),
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


class ControlReader:
    """Every control record, kept up to date by a background thread.

    `start()` begins reading; `wait_ready()` blocks until the records that existed at start
    are loaded (a restarted worker must not page for an alert acknowledged an hour ago).
    Reads and the dict swap are safe across threads: the map only ever gains or replaces
    entries, each a frozen record."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.topic = cfg.topics.control
        self.clock = clock
        self.records: dict[str, ControlRecord] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        consumer = Consumer(
            {
                **self.cfg.kafka.client_config(),
                # Never used to join a group or commit: partitions are assigned by hand.
                "group.id": f"auditwatch-control-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            waiting = self._assign(consumer)
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(msg.partition())
                        if not waiting:
                            self._ready.set()
                    else:
                        log.warning("reading control topic %s: %s", self.topic, err)
                    continue
                record = decode(msg.value())
                if record is None:
                    continue
                self.records[record.alert_id] = record
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
        except Exception:
            log.exception("control topic reader stopped; acknowledgements may be stale")
        finally:
            self._ready.set()
            consumer.close()

    def _assign(self, consumer: Consumer) -> set[int]:
        """Assign every partition from the beginning; waits for the topic to exist."""
        warned = False
        while not self._stop.is_set():
            meta = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                parts = sorted(meta.partitions)
                consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
                log.info("reading control topic %s (%d partitions)", self.topic, len(parts))
                return set(parts)
            # Nothing to load yet: whoever waits for the existing decisions may go on.
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


def read_state(cfg: Config, timeout: float = 30.0) -> dict[str, ControlRecord]:
    """The control topic as it is now: each alert's latest control state."""
    from streams.reading import read_topic

    out: dict[str, ControlRecord] = {}
    for msg in read_topic(cfg, cfg.topics.control, timeout=timeout):
        record = decode(msg.value())
        if record is not None:
            out[record.alert_id] = record
    return out


def publish(cfg: Config, record: ControlRecord, timeout: float = 30.0) -> None:
    """Write one control record and wait for the broker to acknowledge it."""
    producer = Producer({**cfg.kafka.client_config(), "enable.idempotence": True})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(
        cfg.topics.control,
        key=record.alert_id.encode(),
        value=orjson.dumps(record.to_json()),
        on_delivery=delivered,
    )
    if producer.flush(timeout) or errors:
        raise RuntimeError(
            f"could not write to control topic {cfg.topics.control}: "
            + ("; ".join(errors) or f"not acknowledged within {timeout:.0f} s")
        )


def apply_action(
    cfg: Config,
    alert_id: str,
    action: str,
    by: str,
    for_s: float | None = None,
    now_ms: int | None = None,
) -> ControlRecord:
    """Read the alert's control state, apply `action` and publish the result."""
    if not _ALERT_ID.match(alert_id):
        raise ValueError(
            f"{alert_id!r} is not an alert id (they look like a-0123456789abcdef01234567)"
        )
    now = int(time.time() * 1000) if now_ms is None else now_ms
    until = None if for_s is None else now + int(for_s * 1000)
    record = decide(read_state(cfg).get(alert_id), alert_id, action, by, now, until)
    publish(cfg, record)
    return record


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _cmd_action(args: argparse.Namespace) -> int:
    from streams.cli import UsageError
    from streams.config import load_config

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
