"""The runtime's retry of calls on its clients (`Worker._retrying`), no Kafka: a call whose
client keeps timing out is given up on, so the client is replaced (`_ConsumerFatal`)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.runtime.loop import Worker, _ConsumerFatal


def timing_out(times: int) -> object:
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Local: Timed out"))
        return "offsets"

    call.calls = calls  # type: ignore[attr-defined]
    return call


def test_a_call_that_keeps_timing_out_gives_up_so_the_consumer_is_replaced() -> None:
    """Seen after a 90 s outage: an exactly-once worker's consumer timed out on every offset
    fetch for minutes; two in a row now replace the consumer."""
    call = timing_out(5)
    with pytest.raises(_ConsumerFatal, match="failed 2 times in a row"):
        Worker._retrying(None, "reading committed offsets", call, give_up_after=2)  # type: ignore[arg-type]
    assert call.calls["n"] == 2  # type: ignore[attr-defined]


def test_a_call_that_times_out_once_is_retried() -> None:
    call = timing_out(1)
    assert Worker._retrying(None, "reading committed offsets", call, give_up_after=2) == "offsets"  # type: ignore[arg-type]
    # Without a limit, as for every other call, it is retried until it works.
    call = timing_out(2)
    assert Worker._retrying(None, "restoring", call) == "offsets"  # type: ignore[arg-type]
