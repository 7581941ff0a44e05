"""Reading whole topics: used by `auditwatch alerts` and by anything that audits the output."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.ops.config import Config
from streams.ops.topics import TopicAuthorizationError


def _consumer(cfg: Config, isolation: str) -> Consumer:
    return Consumer(
        {
            **cfg.kafka.client_config(),
            # A throwaway group: readers never commit, and never disturb the processor's group.
            "group.id": f"auditwatch-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )


def _end_offsets(
    consumer: Consumer, parts: list[TopicPartition], deadline: float
) -> dict[int, int]:
    """High watermarks of the non-empty partitions. A topic created a moment ago may not have
    its partition leaders yet, so transient errors are retried until the deadline."""
    ends: dict[int, int] = {}
    for tp in parts:
        while True:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=5.0)
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if high > low:
            ends[tp.partition] = high
    return ends


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
    consumer = _consumer(cfg, isolation)
    try:
        deadline = time.monotonic() + timeout
        meta = topic_metadata(consumer, topic, deadline, cfg)
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        ends = {} if follow else _end_offsets(consumer, parts, deadline)
        consumer.assign(parts)
        while (follow or ends) and not (stop is not None and stop.is_set()):
            msg = consumer.poll(0.5)
            if msg is None:
                if not follow and time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic} did not reach its end offsets {ends}")
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    # With read_committed the last offsets may be transaction markers that
                    # are never delivered: reaching EOF means the partition is done.
                    if msg.offset() >= ends.get(msg.partition(), 0):
                        ends.pop(msg.partition(), None)
                    continue
                raise RuntimeError(f"reading {topic}: {msg.error()}")
            deadline = time.monotonic() + timeout
            if not follow and msg.offset() >= ends.get(msg.partition(), -1):
                continue
            yield msg
            if not follow and msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
    finally:
        consumer.close()


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
