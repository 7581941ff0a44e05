"""Event-time alignment of the input partitions a worker reads.

The ingest stage re-keys every event by peer group onto the detect topic, so a detect
partition holds the machines of one group from every input partition, in the order the
worker ingested them. Live, that is event-time order give or take the producers' skew. On a
backlog (a worker catching up after an outage, a replayed topic) the consumer hands over
each input partition in fetched chunks, each of them minutes or hours of event time, and
a group's state would then see its members out of order: a group's warm-up, the silence
clock and which event opens an alert would differ from what the same events do live.

`InputAligner` keeps the input partitions within `max_skew_ms` of event time of each other:
an input partition whose latest event is further ahead of the slowest partition that still
has records to read is held back, and released once the others have come within half that
skew. A partition at its end (its next offset is the high watermark librdkafka last saw)
never holds the others back.

Holding back happens in front of the application, not in librdkafka: the aligner takes the
place of the consumer's `poll` and keeps what arrives for a held partition in a buffer, in
offset order, until it is released. Pausing the partition in librdkafka instead would throw
away everything librdkafka had prefetched for it (up to `queued.min.messages` records), to be
fetched and decoded again on resume; on a backlog with sparse event time a 60 s bound holds a
partition back every few dozen records, and that refetching was about half the worker's CPU
(`bench/README.md`). A partition is paused in librdkafka only when its buffer is full, sought
to just after the last record buffered, and resumed once the buffer is down to a quarter.

Nothing here touches the commit path: Quix stores offsets for what it processed, and a
buffered record is not processed until it is handed over. A buffer is dropped, never handed
over, when its partition is assigned, revoked or lost, or when anything else seeks it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import suppress
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

log = logging.getLogger("auditwatch.align")

# How often to rebalance holds: every this many ingested records, and between records at
# most this often (a partition that was the slowest may have reached its end meanwhile).
_EVERY_RECORDS = 256
_EVERY_S = 0.2
# How long a partition nothing was read from yet holds the others back.
_UNSEEN_GRACE_S = 5.0
_UNKNOWN = float("-inf")
# Records taken from librdkafka without blocking in one poll, at most, before handing one
# over: bounds the time between two handed-over records while held partitions fill up.
_DRAIN = 1_024


class InputAligner:
    def __init__(
        self,
        consumer: Any,
        topic: str,
        max_skew_ms: int,
        buffer_records: int,
    ) -> None:
        """`buffer_records`: records buffered per held partition before it is paused in
        librdkafka (kafka.input_buffer_records)."""
        self.consumer = consumer
        self.topic = topic
        self.max_skew_ms = max_skew_ms
        self.buffer_records = max(4, buffer_records)
        self.heads: dict[int, int] = {}  # input partition -> latest event time ingested
        self.next_offset: dict[int, int] = {}  # input partition -> next offset to ingest
        self.held: set[int] = set()
        self.holds = 0  # how many times a partition was held back (for the logs and tests)
        self.fetch_pauses = 0  # how many times a full buffer paused a partition in librdkafka
        # Records read from librdkafka but not handed over, by partition; only non-empty ones.
        self.buffers: dict[int, deque[Any]] = {}
        self.fetch_paused: set[int] = set()  # paused in librdkafka here: their buffer filled
        self.paused_outside: set[int] = set()  # paused by Quix (recovery): nothing handed over
        self._unseen_since: dict[int, float] = {}
        self._low = _UNKNOWN  # the slowest running partition's head at the last balance
        self._records = 0
        self._balanced_at = 0  # self._records at the last balance
        self._last_balance = 0.0
        self._buffer_first = False
        self._poll = consumer.poll
        self._pause = consumer.pause
        self._resume = consumer.resume
        self._seek = consumer.seek

    def install(self) -> None:
        """Take the place of the consumer's poll, and learn of Quix's own pauses and seeks.
        Quix has no public hook for either."""
        self.consumer.poll = self.poll
        self.consumer.pause = self._paused_outside
        self.consumer.resume = self._resumed_outside
        self.consumer.seek = self._sought_outside

    @property
    def buffered(self) -> int:
        """Records read but not handed over. Safe from another thread: list() of the dict's
        values is one step under the GIL, and so is each len()."""
        return sum(len(b) for b in list(self.buffers.values()))

    # --- what Quix sees of the consumer ---------------------------------------------------
    def poll(self, timeout: float | None = None) -> Any:
        """The next record to process: from a released partition's buffer every other call
        (so the detect topic keeps its turns), else from librdkafka."""
        self._buffer_first = not self._buffer_first
        if self._buffer_first and (msg := self._take()) is not None:
            return msg
        for _ in range(_DRAIN):
            msg = self._poll(0)
            if msg is None:
                break
            if not self._keep(msg):
                return msg
        if (msg := self._take()) is not None:
            return msg
        msg = self._poll(timeout)
        if msg is None or not self._keep(msg):
            return msg
        return None

    def _paused_outside(self, partitions: list[TopicPartition]) -> None:
        self._pause(partitions)
        self.paused_outside.update(tp.partition for tp in partitions if tp.topic == self.topic)

    def _resumed_outside(self, partitions: list[TopicPartition]) -> None:
        self._resume(partitions)
        for tp in partitions:
            if tp.topic == self.topic:
                self.paused_outside.discard(tp.partition)
                # librdkafka reads on from after the last record buffered, where it was sought.
                self.fetch_paused.discard(tp.partition)

    def _sought_outside(self, partition: TopicPartition) -> None:
        self._seek(partition)
        if partition.topic != self.topic:
            return
        p = partition.partition
        # The seek says what comes next; a partition paused here for its full buffer reads
        # again, unless whoever sought it paused it too.
        self.buffers.pop(p, None)
        if p in self.fetch_paused and p not in self.paused_outside:
            self._resume([TopicPartition(self.topic, p)])
            self.fetch_paused.discard(p)

    def drop(self, partitions: list[Any]) -> None:
        """Partitions assigned, revoked or lost (before Quix acts on it): forget what was
        buffered and held for them; whoever reads them next starts at the committed offset."""
        for tp in partitions:
            if tp.topic != self.topic:
                continue
            p = tp.partition
            self.buffers.pop(p, None)
            self.held.discard(p)
            self.paused_outside.discard(p)
            if p in self.fetch_paused:
                self.fetch_paused.discard(p)
                # Not resumable once no longer assigned, and then nothing is left to resume.
                with suppress(KafkaException):
                    self._resume([TopicPartition(self.topic, p)])

    def _keep(self, msg: Any) -> bool:
        """Buffer `msg` if its partition is held or has records buffered before it."""
        if msg.topic() != self.topic or msg.error() is not None:
            return False
        p = msg.partition()
        buf = self.buffers.get(p)
        if buf is None:
            if p not in self.held:
                return False
            buf = self.buffers[p] = deque()
        elif msg.offset() <= buf[-1].offset():
            return True  # fetched again after a pause: already buffered
        buf.append(msg)
        if len(buf) >= self.buffer_records and p not in self.fetch_paused:
            tp = TopicPartition(self.topic, p)
            self._pause([tp])
            # What librdkafka prefetched beyond the buffer is dropped by the pause: read on
            # from just after the buffer's last record.
            self._seek(TopicPartition(self.topic, p, msg.offset() + 1))
            self.fetch_paused.add(p)
            self.fetch_pauses += 1
        return True

    def _take(self) -> Any:
        for p, buf in self.buffers.items():
            if p in self.held or p in self.paused_outside:
                continue
            msg = buf.popleft()
            if not buf:
                del self.buffers[p]
            if p in self.fetch_paused and len(buf) <= self.buffer_records // 4:
                self._resume([TopicPartition(self.topic, p)])
                self.fetch_paused.discard(p)
            return msg
        return None

    # --- alignment ------------------------------------------------------------------------
    def seen(self, partition: int, offset: int, event_ms: int | None) -> None:
        """A record of `partition` at `offset` was ingested (`event_ms`: its event time, None
        for a dead letter)."""
        self.next_offset[partition] = offset + 1
        if event_ms is not None:
            head = self.heads.get(partition)
            if head is None or event_ms > head:
                self.heads[partition] = event_ms
        self._records += 1
        if self._records - self._balanced_at >= _EVERY_RECORDS or (
            event_ms is not None and event_ms > self._low + self.max_skew_ms
        ):
            self.balance()

    def tick(self) -> None:
        """Between records (Quix's periodic task): rebalance at most every _EVERY_S."""
        if self.held and time.monotonic() - self._last_balance >= _EVERY_S:
            self.balance()

    def _watermarks(self, partition: int) -> tuple[int, int]:
        low, high = self.consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True
        )
        return (-1 if low is None else low), (-1 if high is None else high)

    def _more_to_read(self, partition: int) -> bool:
        """Whether the partition has records beyond what was ingested, as far as known."""
        _, high = self._watermarks(partition)
        nxt = self.next_offset.get(partition)
        return nxt is not None and high >= 0 and nxt < high

    def _holds_back(self, partition: int, now: float) -> bool:
        """A partition nothing was ingested from yet, which has records: the others wait for
        its first ones, for a while (it may hold only records committed before)."""
        since = self._unseen_since.setdefault(partition, now)
        if now - since >= _UNSEEN_GRACE_S:
            return False
        low, high = self._watermarks(partition)
        return high > 0 and high > low

    def balance(self) -> None:
        now = time.monotonic()
        self._last_balance = now
        self._balanced_at = self._records
        # Asked every time (through librdkafka's main thread, tens of us). Cached until the
        # next rebalance callback, it failed the backlog ordering test (tests/test_align_kafka,
        # 1,688 s late in one CI run of about seven; 97 and 161 s in an earlier attempt), for
        # a reason not found.
        assigned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        for table in (self.heads, self.next_offset):
            for p in [p for p in table if p not in assigned]:
                del table[p]
        for p in [p for p in self._unseen_since if p not in assigned or p in self.heads]:
            del self._unseen_since[p]
        self.held &= assigned
        lows: list[float] = []
        for p in assigned - self.held:
            if p in self.heads:
                if self._more_to_read(p):
                    lows.append(self.heads[p])
            elif self._holds_back(p, now):
                lows.append(_UNKNOWN)
        if not lows:
            # Nothing left to wait for: the held partitions are the ones with records now.
            self._low = float("inf")
            self.held.clear()
            return
        low = self._low = min(lows)
        self.held -= {p for p in self.held if self.heads[p] <= low + self.max_skew_ms // 2}
        for p in assigned - self.held:
            head = self.heads.get(p)
            if head is not None and head > low + self.max_skew_ms and self._more_to_read(p):
                self.held.add(p)
                self.holds += 1
                log.debug("input partition %d held back at event time %d", p, head)
