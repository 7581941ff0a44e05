"""Reading whole topics: used by `auditwatch alerts` and by anything that audits the output."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.ops.config import Config
from streams.ops.topics import TopicAuthorizationError


def _consumer(cfg: Config, isolation: str, group_prefix: str = "auditwatch-reader-") -> Consumer:
    return Consumer(
        {
            **cfg.kafka.client_config(),
            # A throwaway group: readers never commit, and never disturb the processor's group.
            # Each tool keeps its own prefix: `auditwatch acls` grants them by prefix.
            "group.id": f"{group_prefix}{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """A partition's low and high watermarks. A topic created a moment ago may not have its
    partition leaders yet, so transient errors are retried until the deadline."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=5.0)
            return low, high
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def topic_metadata(consumer: Any, topic: str, deadline: float, cfg: Config | None = None) -> Any:
    """The topic's metadata, waiting until `deadline` (time.monotonic()) for a topic created a
    moment ago to reach every broker; RuntimeError naming the fix if it never shows up, and at
    once if the broker refuses the client the topic (an ACL problem, not a missing topic:
    waiting would not help; `cfg` names the principal)."""
    while True:
        meta = consumer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic())).topics
        found = meta.get(topic)
        if found is not None and found.error is None and found.partitions:
            return found
        denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
        if found is not None and found.error is not None and found.error.code() == denied:
            if cfg is not None:
                raise TopicAuthorizationError(cfg, "Read", [topic])
            raise RuntimeError(
                f"not authorized to read topic {topic!r} (TOPIC_AUTHORIZATION_FAILED, an "
                "ACL problem; `auditwatch acls show` lists the ACLs each role needs)"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} does not exist (run `auditwatch topics create`)")
        time.sleep(0.2)


def read_range(
    cfg: Config,
    topic: str,
    *,
    from_ms: int | None = None,
    stop_after_ms: int | None = None,
    follow: bool = False,
    isolation: str = "read_committed",
    timeout: float = 30.0,
    stop: threading.Event | None = None,
    group_prefix: str = "auditwatch-reader-",
    batch: int = 1,
    on_start: Callable[[int, int], None] | None = None,
    on_stopped_early: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """Yield the messages of `topic`, each partition from its first record written at or
    after `from_ms` (Kafka's time index; None: from the beginning) to the end offset it had
    when reading started (read_committed: only committed transactions count), partitions
    interleaved as they come. With `follow` there is no end: every partition from the
    beginning, until `stop` is set.

    `stop_after_ms` ends a partition early at its first record written after it (the record
    is not yielded, the partition is paused); `on_stopped_early(n)` is told the n records of
    the range it leaves unread. `on_start(skipped, total)` is told, before the first
    message, the records before the starts and the number in the range. `batch` > 1 fetches
    that many at a time (faster for a long range, but a quiet topic waits out the 0.5 s
    poll; not for `follow`). A range with no message for `timeout` s raises TimeoutError."""
    consumer = _consumer(cfg, isolation, group_prefix)
    try:
        deadline = time.monotonic() + timeout
        parts = sorted(topic_metadata(consumer, topic, deadline, cfg).partitions)
        if follow:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        found: dict[int, int] = {}
        if from_ms is not None and not follow:
            # A negative time asks offsets_for_times for the log end (-1) or start (-2).
            asked = [TopicPartition(topic, p, max(from_ms, 0)) for p in parts]
            for tp in consumer.offsets_for_times(asked, timeout=timeout):
                found[tp.partition] = tp.offset  # -1: nothing written that late
        starts: dict[int, int] = {}
        ends: dict[int, int] = {}  # partition -> end offset, while it has records left to read
        skipped = 0
        for p in [] if follow else parts:
            low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
            start = found.get(p, low)
            start = high if start < 0 else max(start, low)
            skipped += start - low
            if start < high:
                starts[p], ends[p] = start, high
        if on_start is not None:
            on_start(skipped, sum(ends[p] - starts[p] for p in ends))
        if not follow:
            if not ends:
                return
            consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        deadline = time.monotonic() + timeout
        while (follow or ends) and not (stop is not None and stop.is_set()):
            if batch > 1:
                msgs = consumer.consume(num_messages=batch, timeout=0.5)
            else:
                msg = consumer.poll(0.5)
                msgs = [] if msg is None else [msg]
            if not msgs:
                if not follow and time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic} did not reach its end offsets {ends}")
                continue
            for msg in msgs:
                p = msg.partition()
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        # With read_committed the last offsets may be transaction markers
                        # that are never delivered: reaching EOF means the partition is done.
                        if p in ends and msg.offset() >= ends[p]:
                            del ends[p]
                        continue
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                deadline = time.monotonic() + timeout
                if follow:
                    yield msg
                    continue
                if p not in ends or msg.offset() >= ends[p]:
                    continue
                if stop_after_ms is not None and msg.timestamp()[1] > stop_after_ms:
                    left = ends.pop(p) - msg.offset()
                    consumer.pause([TopicPartition(topic, p)])
                    if on_stopped_early is not None:
                        on_stopped_early(left)
                    continue
                if msg.offset() + 1 >= ends[p]:
                    del ends[p]
                yield msg
    finally:
        consumer.close()


def read_topic(
    cfg: Config,
    topic: str,
    *,
    follow: bool = False,
    isolation: str = "read_committed",
    timeout: float = 30.0,
    stop: threading.Event | None = None,
) -> Iterator[Any]:
    """Yield every message of `topic` from the beginning. Without `follow`, stop at the end
    offsets seen when reading started (read_committed: only committed transactions count)."""
    return read_range(cfg, topic, follow=follow, isolation=isolation, timeout=timeout, stop=stop)


_TRANSIENT = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def group_lag(cfg: Config, group: str, topic: str, timeout: float = 10.0) -> int:
    """Messages of `topic` not yet committed by consumer group `group` (all partitions)."""
    consumer = Consumer(
        {**cfg.kafka.client_config(), "group.id": group, "enable.auto.commit": False}
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return _lag(consumer, topic, timeout)
            except KafkaException as e:
                # The group coordinator moves or loads (NOT_COORDINATOR, COORDINATOR_LOAD_IN_
                # PROGRESS...): a moment later the same question has an answer.
                err = e.args[0]
                transient = err.retriable() or err.code() in _TRANSIENT
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def _lag(consumer: Consumer, topic: str, timeout: float) -> int:
    meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
    parts = [TopicPartition(topic, p) for p in meta.partitions]
    lag = 0
    for tp in consumer.committed(parts, timeout=timeout):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, tp.partition), timeout=timeout
        )
        start = tp.offset if tp.offset >= 0 else low
        lag += max(high - start, 0)
    return lag


def pipeline_lag(cfg: Config, timeout: float = 10.0) -> int:
    """Events the processor has not yet committed through both of its stages."""
    group = cfg.kafka.consumer_group
    return group_lag(cfg, group, cfg.topics.events, timeout) + group_lag(
        cfg, group, cfg.topics.detect, timeout
    )
