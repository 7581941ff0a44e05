"""One message in, output records out: decode, validate, dedupe by event_id, archive, detect.

Shared by `auditwatch run` (in the micro-batch runtime, state per input partition, see
streams.runtime) and `auditwatch replay` (state in memory). It produces records as data
(`Output`); the runtime decides how to write them, so the dead letters share the runtime's
processing guarantee.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from detectors.core import MACHINE, DetectionCore
from detectors.peers import GROUP_KINDS
from schemas.alert import Alert
from schemas.codec import (
    MAGIC,
    RejectedInput,
    SchemaResolver,
    TransientSchemaError,
    decode_event,
    encode_archive,
    encode_dead_letter,
    sha256,
)
from schemas.event import AuditEvent
from schemas.frozen import fast_init
from schemas.signing import verify
from streams.ops.config import Config
from streams.tools.readers import RawRecord

log = logging.getLogger("auditwatch.processor")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@fast_init
@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from: a topic partition offset, or a file and line."""

    topic: str | None
    partition: int | None
    offset: int | None

    def __str__(self) -> str:
        if self.partition is None:
            # A record read from a file (replay and the other file tools): offset is its line.
            return f"{self.topic}:{self.offset}"
        return f"{self.topic}[{self.partition}]@{self.offset}"


@fast_init
@dataclass(frozen=True, slots=True)
class Output:
    kind: str  # archive, deadletter or alert
    key: bytes | None
    value: bytes
    alert: Alert | None = None


class Store(Protocol):
    """The processor's state as bytes by (kind, key): kinds are b"e" (what each event_id was),
    b"m" (each machine's baselines) and the peer-group kinds of `detectors.peers`."""

    def get(self, kind: bytes, key: str) -> bytes | None: ...
    def set(self, kind: bytes, key: str, value: bytes) -> None: ...
    def delete(self, kind: bytes, key: str) -> None: ...


SEEN = b"e"
# Between the machine and the event id in archive keys and the dedupe index: a control
# character, so no machine id can run into an event id.
KEY_SEP = "\x1f"


def event_id_of(archive_key: bytes) -> str:
    """The event id in an archive record's key (see archive_key)."""
    return archive_key.decode().split(KEY_SEP, 1)[-1]


def archive_key(event: AuditEvent) -> str:
    """The archive record's key: the machine and the event id, so an event id that another
    machine reuses is a record of its own and never overwrites one on compaction."""
    return event.machine_id + KEY_SEP + event.event_id


# `"event_id": "..."` in JSON text the parser rejects: the string literal, escapes and all.
_EVENT_ID_FIELD = re.compile(rb'"event_id"\s*:\s*("(?:[^"\\]|\\.)*")')
_MAX_EVENT_ID_CHARS = 256  # the longest event_id validation accepts (schemas.event)
_UNPARSED = object()
# The longest exception text a decoder_error dead letter carries.
_MAX_ERROR_CHARS = 500


def recover_event_id(value: bytes | None, max_bytes: int) -> str | None:
    """The event_id a rejected message's JSON carries, for its dead letter; only called for
    messages already rejected, so accepted events are never parsed twice.

    From the parsed object when the value is JSON; from the first `"event_id": "..."` of its
    first `max_bytes` when it is not (cut short, a stray comma) or is too long to parse. None
    for Avro, and for anything but a non-empty string validation would accept: nothing is made
    up. Never raises."""
    if not value or value[0] == MAGIC:
        return None
    found: object = _UNPARSED
    if len(value) <= max_bytes:
        try:
            parsed = orjson.loads(value)
        except ValueError:  # orjson.JSONDecodeError, recursion limit included
            pass
        else:
            found = parsed.get("event_id") if isinstance(parsed, dict) else None
    if found is _UNPARSED:
        m = _EVENT_ID_FIELD.search(value, 0, max_bytes)
        try:
            found = orjson.loads(m.group(1)) if m is not None else None
        except ValueError:
            found = None
    if isinstance(found, str) and 0 < len(found) <= _MAX_EVENT_ID_CHARS:
        return found
    return None


class MemoryStore:
    """A Store in dicts, for replay and in-process tests."""

    def __init__(self) -> None:
        self.data: dict[bytes, dict[str, bytes]] = {}

    def get(self, kind: bytes, key: str) -> bytes | None:
        table = self.data.get(kind)
        return None if table is None else table.get(key)

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        # Not setdefault: that would build a table on every write to throw it away.
        table = self.data.get(kind)
        if table is None:
            table = self.data[kind] = {}
        table[key] = value

    def delete(self, kind: bytes, key: str) -> None:
        self.data.get(kind, {}).pop(key, None)

    @property
    def seen(self) -> dict[str, bytes]:
        return self.data.setdefault(SEEN, {})

    @property
    def machines(self) -> dict[str, bytes]:
        return self.data.setdefault(MACHINE, {})


class SplitStore:
    """One partition's store, whose peer-group kinds (`GROUP_KINDS`) live in `shared`, one
    store for every partition of a worker: a group's machines are spread over partitions."""

    __slots__ = ("_local_get", "_shared_get", "local", "shared")

    def __init__(self, local: Store, shared: Store) -> None:
        self.local = local
        self.shared = shared
        # Several lookups an event go through here: bound once, not looked up on each.
        self._local_get = local.get
        self._shared_get = shared.get

    def get(self, kind: bytes, key: str) -> bytes | None:
        if kind in GROUP_KINDS:
            return self._shared_get(kind, key)
        return self._local_get(kind, key)

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        if kind in GROUP_KINDS:
            self.shared.set(kind, key, value)
        else:
            self.local.set(kind, key, value)

    def delete(self, kind: bytes, key: str) -> None:
        if kind in GROUP_KINDS:
            self.shared.delete(kind, key)
        else:
            self.local.delete(kind, key)


class Processor:
    """Turns input messages into archive records, dead letters and alert states."""

    def __init__(
        self,
        cfg: Config,
        resolver: SchemaResolver,
        clock: Callable[[], int] = now_ms,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.limits = cfg.input.limits()
        self.fmt = cfg.input.format
        self.core = DetectionCore(cfg.detectors.build())
        # None when no machine signs: then no event is checked (see `authenticate`).
        self.keyring = cfg.signing.keyring()
        self.clock = clock
        self.sleep = sleep
        self.metrics: Counter[str] = Counter()
        # Where decoders raised unexpectedly, by exception type and raising line (see
        # `_decoder_error`).
        self._decoder_bugs: set[tuple[str, str, int] | None] = set()

    def dead_letter(
        self, e: RejectedInput, key: bytes | None, value: bytes | None, origin: Origin
    ) -> Output:
        self.metrics["deadlettered"] += 1
        self.metrics[f"deadlettered.{e.reason}"] += 1
        return Output(
            "deadletter",
            key,
            encode_dead_letter(
                reason=e.reason,
                message=e.message,
                stage=e.stage,
                topic=origin.topic,
                partition=origin.partition,
                offset=origin.offset,
                key=key,
                value=value,
                max_value_bytes=self.limits.max_value_bytes,
                rejected_at_ms=self.clock(),
                # Decode and validation failures come without one; whoever looks the message up
                # later searches by the id its producer gave it.
                event_id=e.event_id
                if e.event_id is not None
                else recover_event_id(value, self.limits.max_value_bytes),
            ),
        )

    def _decode(self, value: bytes | None, fmt: str) -> tuple[AuditEvent, str, int]:
        """(event, original format, processing time of the successful decode)."""
        delay = 0.5
        while True:
            now = self.clock()
            try:
                d = decode_event(
                    value, fmt=fmt, resolver=self.resolver, limits=self.limits, now_ms=now
                )
                return d.event, d.original_format, now
            except TransientSchemaError as e:
                # Not the message's fault: hold the partition and retry rather than
                # dead-letter good events while the registry is down.
                self.metrics["registry_retries"] += 1
                log.warning("schema registry unavailable (%s); retrying in %.1f s", e, delay)
                self.sleep(delay)
                delay = min(delay * 2, 30.0)

    def decode(
        self,
        value: bytes | None,
        key: bytes | None,
        origin: Origin,
        input_format: str | None = None,
    ) -> tuple[AuditEvent, str, int] | Output:
        """The event, its original format and the processing time of the decode; or the dead
        letter that rejects the message. `input_format`: auto, avro or json, for input whose
        encoding is known (default: the configured `input.format`)."""
        self.metrics["events_in"] += 1
        try:
            event, fmt, now = self._decode(value, input_format or self.fmt)
        except RejectedInput as e:
            log.info("dead letter %s at %s: %s", e.reason, origin, e.message)
            return self.dead_letter(e, key, value, origin)
        except Exception as e:
            # A decoder bug, not a rejection: the message must still end up somewhere (archive
            # or dead letters, as the ledger counts), never lost past its offset.
            return self.dead_letter(self._decoder_error(e, origin), key, value, origin)
        if key is not None and key != event.machine_id.encode():
            self.metrics["key_mismatch"] += 1
        return event, fmt, now

    def _decoder_error(self, e: Exception, origin: Origin) -> RejectedInput:
        """The `decoder_error` rejection of a message a decoder raised on. The traceback is
        logged once per place it was raised from: one bug met by a flood of messages must not
        flood the log too (the rest are at INFO, like other dead letters)."""
        text = f"{type(e).__name__}: {e}"
        if len(text) > _MAX_ERROR_CHARS:
            text = text[:_MAX_ERROR_CHARS] + "..."
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (type(e).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb else None
        if where not in self._decoder_bugs:
            self._decoder_bugs.add(where)
            log.warning(
                "decoder failed unexpectedly at %s (dead-lettered as decoder_error; a bug to "
                "report: later ones from the same place are logged at INFO)",
                origin,
                exc_info=e,
            )
        else:
            log.info("dead letter decoder_error at %s: %s", origin, text)
        return RejectedInput(
            "decoder_error", f"the decoder failed unexpectedly (a bug): {text}", "decode"
        )

    def authenticate(self, event: AuditEvent) -> AuditEvent:
        """The event marked with its signature's verdict when its machine signs (schemas.
        signing); callers call it once per event, and only when `keyring` is set."""
        assert self.keyring is not None
        verdict = verify(event, self.keyring)
        if verdict is None:
            return event
        self.metrics[f"signatures.{verdict.value}"] += 1
        if not verdict.ok:
            # INFO, as dead letters are: a flood of forged events must not flood the log too.
            log.info(
                "unverified event %s of %s (key id %s): %s",
                event.event_id,
                event.machine_id,
                event.key_id,
                verdict.value,
            )
        # The constructor, not dataclasses.replace: 2.0 us against 4.3 per signed event.
        e = event
        return AuditEvent(
            e.event_id,
            e.ts_us,
            e.machine_id,
            e.resource,
            e.operation,
            e.outcome,
            e.source_ip,
            e.identity_type,
            e.source,
            e.attributes,
            e.event_id_derived,
            key_id=e.key_id,
            signature=e.signature,
            verification=verdict.value,
        )

    def admit(
        self,
        event: AuditEvent,
        value: bytes | None,
        key: bytes | None,
        origin: Origin,
        store: Store,
        fmt: str,
        now: int,
        archive: bool = True,
    ) -> tuple[list[Output], bool]:
        """Dedupe a decoded event against `store` (the partition of its machine): the records
        to write, and whether the event is new (to run detection on). An exact re-send is
        dropped and counted; the same id with other content is a dead letter."""
        record_key = archive_key(event)
        digest = event.content_digest()
        seen = store.get(SEEN, record_key)
        if seen is not None:
            if seen == digest:
                self.metrics["duplicates"] += 1
                return [], False
            self.metrics["conflicting_duplicates"] += 1
            err = RejectedInput(
                "conflicting_duplicate",
                f"event_id {event.event_id!r} of {event.machine_id!r} was already archived "
                "with different content; the archived record is kept",
                "dedupe",
                event_id=event.event_id,
            )
            return [self.dead_letter(err, key, value, origin)], False
        store.set(SEEN, record_key, digest)
        self.metrics["archived"] += 1
        if not archive:
            return [], True
        record = encode_archive(
            event,
            original_format=fmt,
            original_sha256=sha256(value or b""),
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            archived_at_ms=now,
        )
        return [Output("archive", record_key.encode(), record)], True

    def ingest(
        self,
        value: bytes | None,
        key: bytes | None,
        origin: Origin,
        store: Store,
        original_format: str | None = None,
        archive: bool = True,
        input_format: str | None = None,
    ) -> tuple[list[Output], AuditEvent | None]:
        """Decode, validate and dedupe one message. Returns the records to write and the event
        to run detection on (None for an invalid message or an exact re-send). `archive`:
        False for callers that write no archive (replay and the other file tools), which then
        get no archive record to discard. `input_format`: see `decode`."""
        decoded = self.decode(value, key, origin, input_format)
        if isinstance(decoded, Output):
            return [decoded], None
        event, fmt, now = decoded
        if self.keyring is not None:
            event = self.authenticate(event)
        outputs, new = self.admit(
            event, value, key, origin, store, original_format or fmt, now, archive
        )
        return outputs, event if new else None

    def ingest_record(self, rec: RawRecord, store: Store) -> tuple[list[Output], AuditEvent | None]:
        """`ingest` of a record read from a file, for the file tools: they write no archive.
        Every file record is JSON text (see streams.tools.readers), so one that does not parse
        is a JSON error, whatever its first byte and whatever `input.format` says of topics."""
        return self.ingest(
            rec.value,
            None,
            Origin(rec.path, None, rec.line),
            store,
            rec.original_format,
            False,
            input_format="json",
        )

    def detect(
        self,
        event: AuditEvent,
        store: Store,
        origin: Origin,
        learn_only: bool = False,
        source: int | None = None,
    ) -> list[Output]:
        """Run the detection core for one accepted event (`learn_only`: history being seeded,
        no alerts). A detector bug must not stop the pipeline: the event is already archived,
        the error is logged and counted."""
        try:
            # Seeded history teaches the baselines but does not move the silence clock.
            alerts = self.core.observe(
                event, store, origin.partition, "seed" if learn_only else source
            )
        except Exception:
            self.metrics["detector_errors"] += 1
            log.exception("detection failed for event %s at %s", event.event_id, origin)
            return []
        if learn_only:
            self.metrics["seeded"] += 1
            return []
        return self._alert_outputs(alerts) if alerts else []

    def punctuate(self, store: Store, partition: int, clocks: dict[str, int]) -> list[Output]:
        """Time-driven detection for one partition (the silence sweep), as event time moves
        elsewhere; guarded as `detect` is."""
        try:
            alerts = self.core.punctuate(store, partition, clocks)
        except Exception:
            self.metrics["detector_errors"] += 1
            log.exception("silence sweep failed for partition %d", partition)
            return []
        return self._alert_outputs(alerts)

    def _alert_outputs(self, alerts: list[Alert]) -> list[Output]:
        out = []
        for a in alerts:
            self.metrics[f"alerts.{a.status}"] += 1
            out.append(Output("alert", a.alert_id.encode(), orjson.dumps(a.to_json()), a))
        return out

    def handle(
        self, value: bytes | None, key: bytes | None, origin: Origin, store: Store
    ) -> list[Output]:
        outputs, event = self.ingest(value, key, origin, store)
        if event is not None:
            outputs.extend(self.detect(event, store, origin))
        return outputs
