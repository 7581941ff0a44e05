"""The two commit policies: how outputs, changelog records and input offsets become durable.

- `AtLeastOnce` (the default): outputs are produced as they are made; at a commit the
  broker first acknowledges every output, then the changelog and peer records are produced
  and acknowledged, and only then are the input offsets committed. A crash or a failed
  delivery re-processes from the last committed offsets: outputs may repeat, nothing is lost.
- `ExactlyOnce`: one transactional producer per worker, its `transactional.id` stable across
  restarts (so a new incarnation fences the old one and aborts its open transaction). Outputs,
  changelog records, peer records and input offsets (`send_offsets_to_transaction`) commit
  in one transaction; readers with `isolation.level=read_committed` see each output once.

Either policy raises `Rewind` when the work since the last commit cannot be made durable
(a delivery failed, the group moved on, the transaction was fenced, aborted or timed out):
the worker then rewinds every owned partition to its committed offsets and reloads its state
from the committed changelog, and goes on. Nothing here exits the worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

log = logging.getLogger("auditwatch.runtime")


class Rewind(Exception):
    """The work since the last commit must be redone from the committed offsets and state."""


class AtLeastOnce:
    transactional = False

    def __init__(self, config: dict[str, Any], delivery_timeout_s: float) -> None:
        self.delivery_timeout_s = delivery_timeout_s
        self.failed = 0
        self.last_error: KafkaError | None = None
        self.config = {
            **config,
            "enable.idempotence": True,
            # Only failures call back: a Python callback per record would cost more than
            # the rest of the produce.
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
        }
        self.producer = Producer(self.config)

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = err

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, headers: Any
    ) -> None:
        producer = self.producer
        while True:
            try:
                producer.produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                producer.poll(0.05)
            except KafkaException as e:
                # A producer in an error state refuses records: counted as undelivered, so
                # the commit rewinds instead of the worker exiting.
                self.failed += 1
                self.last_error = e.args[0]
                return

    def poll(self) -> None:
        self.producer.poll(0)

    def settle(self) -> None:
        """Wait until the broker has acknowledged every output produced so far.

        Called before a commit's changelog records are produced: the changelog holds the
        event ids the task has seen, so an id acknowledged there before its archive record
        would make the replay after a crash take the event for a duplicate and never archive
        it (the producer orders records per partition only)."""
        self._flush()

    def commit(self, consumer: Any, offsets: list[TopicPartition]) -> None:
        self._flush()
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            raise Rewind(f"offset commit failed: {e.args[0]}") from None

    def _flush(self) -> None:
        deadline = time.monotonic() + self.delivery_timeout_s + 10
        waited = 0
        while self.producer.flush(1.0) > 0:
            waited += 1
            if waited == 5:
                log.warning("waiting for the broker to acknowledge outputs before committing")
            if time.monotonic() > deadline:
                raise Rewind("outputs not acknowledged within the delivery timeout")
        if self.failed:
            n, self.failed = self.failed, 0
            raise Rewind(f"{n} records not delivered ({self.last_error})")

    def abort(self) -> None:
        """Nothing to undo: what was produced stays produced (at-least-once). A producer left
        in a fatal state (an idempotence failure) would refuse every record from now on: it
        is replaced."""
        self.failed = 0
        err, self.last_error = self.last_error, None
        if err is not None and err.fatal():
            log.warning("the producer failed fatally (%s); starting a new one", err)
            self.producer.flush(0)
            self.producer = Producer(self.config)

    def close(self, timeout_s: float = 30.0) -> int:
        return int(self.producer.flush(timeout_s))


class ExactlyOnce:
    transactional = True

    def __init__(
        self, config: dict[str, Any], transactional_id: str, transaction_timeout_s: float
    ) -> None:
        self.config = {
            "transaction.timeout.ms": int(transaction_timeout_s * 1000),
            **config,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
        }
        self.timeout_s = int(self.config["transaction.timeout.ms"]) / 1000
        self.open = False
        # Set when the open transaction can no longer commit (librdkafka refused a record: an
        # abortable or fatal error after a broker outage); the commit then aborts and rewinds.
        self.doomed: KafkaError | None = None
        self.producer = self._start()

    def _start(self) -> Producer:
        """A producer with its transactions initialised: this fences any earlier producer of
        the same transactional id and aborts its open transaction. Waits out a broker that
        is down."""
        producer = Producer(self.config)
        delay = 1.0
        while True:
            try:
                producer.init_transactions(30.0)
                return producer
            except KafkaException as e:
                err = e.args[0]
                if not err.retriable():
                    raise
                log.warning("initialising transactions failed (%s); retrying in %.0f s", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, headers: Any
    ) -> None:
        if self.doomed is not None:
            return  # the transaction is lost already: its records would be aborted anyway
        producer = self.producer
        try:
            if not self.open:
                producer.begin_transaction()
                self.open = True
            while True:
                try:
                    producer.produce(topic, value, key, partition, headers=headers)
                    return
                except BufferError:
                    producer.poll(0.05)
        except KafkaException as e:
            self.doomed = e.args[0]
            log.warning("the transaction cannot commit (%s); rewinding at the commit", e.args[0])

    def poll(self) -> None:
        self.producer.poll(0)

    def settle(self) -> None:
        """Nothing to wait for: outputs and changelog become visible together or not at all."""

    def commit(self, consumer: Any, offsets: list[TopicPartition]) -> None:
        if self.doomed is not None:
            err = self.doomed
            self.abort()
            raise Rewind(f"transaction not committed: {err}")
        if not offsets and not self.open:
            return
        producer = self.producer
        try:
            if not self.open:
                producer.begin_transaction()
                self.open = True
            if offsets:
                self._retry(
                    lambda: producer.send_offsets_to_transaction(
                        offsets, consumer.consumer_group_metadata(), 30.0
                    )
                )
            self._retry(lambda: producer.commit_transaction(30.0))
            self.open = False
        except KafkaException as e:
            self.abort()
            raise Rewind(f"transaction not committed: {e.args[0]}") from None

    def _retry(self, call: Any) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                call()
                return
            except KafkaException as e:
                err = e.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("transaction step failed (%s); retrying", err)
                time.sleep(0.5)

    def abort(self) -> None:
        """Abort the open transaction; a producer that cannot (fenced, fatal) is replaced."""
        self.doomed = None
        if not self.open:
            return
        self.open = False
        try:
            self.producer.abort_transaction(30.0)
            return
        except KafkaException as e:
            log.warning("aborting the transaction failed (%s); starting a new producer", e)
        self.producer = self._start()

    def close(self, timeout_s: float = 30.0) -> int:
        if self.open:
            self.abort()
        return int(self.producer.flush(timeout_s))
