"""The commit policies when librdkafka refuses a record (a producer left in an error state by a
broker outage): the commit rewinds, the worker never sees the exception."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.runtime.commit import AtLeastOnce, ExactlyOnce, Rewind


class _Refusing:
    """The policy's producer, refusing every record the way librdkafka does in an erroneous
    transaction state (`Unable to produce message: Local: Erroneous state`)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.kafka
def test_exactly_once_refused_record_rewinds_at_the_commit(bootstrap: str) -> None:
    policy = ExactlyOnce({"bootstrap.servers": bootstrap}, f"t-policy-{uuid.uuid4().hex[:8]}", 30.0)
    try:
        real = policy.producer
        policy.producer = _Refusing(real)  # type: ignore[assignment]
        policy.produce("t-policy-nowhere", b"k", b"v", 0, None)  # must not raise
        policy.produce("t-policy-nowhere", b"k", b"v", 0, None)
        policy.producer = real
        with pytest.raises(Rewind, match="Erroneous state"):
            policy.commit(None, [])
        # After the rewind the next transaction starts clean.
        assert policy.doomed is None and not policy.open
    finally:
        policy.close(5)


@pytest.mark.kafka
def test_at_least_once_refused_record_rewinds_at_the_commit(bootstrap: str) -> None:
    policy = AtLeastOnce({"bootstrap.servers": bootstrap}, 10.0)
    try:
        real = policy.producer
        policy.producer = _Refusing(real)  # type: ignore[assignment]
        policy.produce("t-policy-nowhere", b"k", b"v", 0, None)  # must not raise
        policy.producer = real
        with pytest.raises(Rewind, match="1 records not delivered"):
            policy.commit(None, [])
        policy.abort()
        policy.commit(None, [])  # nothing pending: no rewind
    finally:
        policy.close(5)
