"""Transport security against the real SASL_SSL broker (`kafka_local start --secure`):
SCRAM-SHA-512 over TLS with a CA made at its first start, the StandardAuthorizer on."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import SecureBroker

pytestmark = pytest.mark.kafka


def unique(name: str) -> str:
    return f"t-sec-{name}-{uuid.uuid4().hex[:8]}"


def test_secure_broker_serves_its_super_user(secure_broker: SecureBroker) -> None:
    topic = unique("roundtrip")
    admin = AdminClient(secure_broker.client_config())
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    try:
        producer = Producer(secure_broker.client_config())
        producer.produce(topic, b"over TLS")
        assert producer.flush(30) == 0
        consumer = Consumer(
            secure_broker.client_config(
                **{"group.id": unique("g"), "auto.offset.reset": "earliest"}
            )
        )
        consumer.subscribe([topic])
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                m = consumer.poll(0.5)
                if m is not None and m.error() is None:
                    got.append(m.value())
            assert got == [b"over TLS"]
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])


def test_a_plaintext_client_cannot_use_the_sasl_ssl_port(secure_broker: SecureBroker) -> None:
    errors: list[Any] = []
    admin = AdminClient(
        {"bootstrap.servers": secure_broker.bootstrap, "error_cb": errors.append, "log_level": 0}
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    admin.poll(0)
    assert errors, "the broker's refusal was not reported"
