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
has records to read is paused (and sought back to its next unprocessed offset, so that what
librdkafka had already fetched for it is fetched again later, never skipped), and resumed once
the others have come within half that skew. A partition at its end (its next offset is the
high watermark librdkafka last saw) never holds the others back. Nothing here touches the
commit path: offsets are committed for what was processed, as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import TopicPartition

log = logging.getLogger("auditwatch.align")

# How often to rebalance pauses: every this many ingested records, and between records at
# most this often (a partition that was the slowest may have reached its end meanwhile).
_EVERY_RECORDS = 256
_EVERY_S = 0.2
# How long a partition nothing was read from yet holds the others back.
_UNSEEN_GRACE_S = 5.0
_UNKNOWN = float("-inf")


class InputAligner:
    def __init__(self, consumer: Any, topic: str, max_skew_ms: int) -> None:
        self.consumer = consumer
        self.topic = topic
        self.max_skew_ms = max_skew_ms
        self.heads: dict[int, int] = {}  # input partition -> latest event time ingested
        self.next_offset: dict[int, int] = {}  # input partition -> next offset to ingest
        self.paused: set[int] = set()
        self.pauses = 0  # how many times a partition was held back (for the logs and tests)
        self._unseen_since: dict[int, float] = {}
        self._low = _UNKNOWN  # the slowest running partition's head at the last balance
        self._records = 0
        self._balanced_at = 0  # self._records at the last balance
        self._last_balance = 0.0

    def seen(self, partition: int, offset: int, event_ms: int | None) -> None:
        """A record of `partition` at `offset` was ingested (`event_ms`: its event time, None
        for a dead letter)."""
        self.next_offset[partition] = offset + 1
        if partition in self.paused:
            # Resumed by someone else (Quix's backpressure resumes what it paused): re-judge.
            self.paused.discard(partition)
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
        if self.paused and time.monotonic() - self._last_balance >= _EVERY_S:
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
        assigned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        for table in (self.heads, self.next_offset):
            for p in [p for p in table if p not in assigned]:
                del table[p]
        for p in [p for p in self._unseen_since if p not in assigned or p in self.heads]:
            del self._unseen_since[p]
        self.paused &= assigned
        lows: list[float] = []
        for p in assigned - self.paused:
            if p in self.heads:
                if self._more_to_read(p):
                    lows.append(self.heads[p])
            elif self._holds_back(p, now):
                lows.append(_UNKNOWN)
        if not lows:
            # Nothing left to wait for: the paused partitions are the ones with records now.
            self._low = float("inf")
            self._resume(sorted(self.paused))
            return
        low = self._low = min(lows)
        self._resume(sorted(p for p in self.paused if self.heads[p] <= low + self.max_skew_ms // 2))
        for p in sorted(assigned - self.paused):
            head = self.heads.get(p)
            if head is not None and head > low + self.max_skew_ms and self._more_to_read(p):
                self._pause(p)

    def _pause(self, partition: int) -> None:
        tp = TopicPartition(self.topic, partition)
        self.consumer.pause([tp])
        # What librdkafka prefetched for it is dropped and read again from here on resume:
        # the consumer's own position (the next record it would hand over), which follows any
        # seek Quix made; what this class saw ingested is the fallback.
        (pos,) = self.consumer.position([tp])
        offset = pos.offset if pos.offset >= 0 else self.next_offset[partition]
        self.consumer.seek(TopicPartition(self.topic, partition, offset))
        self.paused.add(partition)
        self.pauses += 1
        log.debug("input partition %d paused at offset %d", partition, offset)

    def _resume(self, partitions: list[int]) -> None:
        if not partitions:
            return
        self.consumer.resume([TopicPartition(self.topic, p) for p in partitions])
        self.paused.difference_update(partitions)
