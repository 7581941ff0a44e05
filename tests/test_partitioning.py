"""Replay and backtest keep state per input partition, placed as Kafka places it."""

from __future__ import annotations

from typing import Any

import pytest

from detectors.core import MACHINE
from schemas.codec import BundledSchemas
from streams.ops.config import Config
from streams.processor import Processor
from streams.runtime.routing import murmur2_partition
from streams.tools.partitioning import PartitionedDetection
from streams.tools.producer import make_producer
from tests.conftest import Stack
from tests.test_capacity import ev

# Kafka's own test vectors for its Java murmur2 (clients UtilsTest), as signed 32-bit hashes.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2.items())
def test_murmur2_matches_kafkas_java_partitioner(key: bytes, java: int) -> None:
    # toPositive(murmur2(key)) % n, with n = 2**31 to see the whole positive hash.
    assert murmur2_partition(key, 2**31) == java & 0x7FFFFFFF


@pytest.mark.kafka
def test_murmur2_places_keys_where_the_broker_does(stack: Any) -> None:
    s: Stack = stack()
    s.create_topics()
    producer = make_producer(s.cfg)
    placed: dict[bytes, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        placed[msg.key()] = msg.partition()

    keys = [f"group-{i}".encode() for i in range(64)]
    for key in keys:
        producer.produce(s.cfg.topics.detect, key=key, value=b"x", on_delivery=delivered)
    assert producer.flush(30) == 0
    assert len(set(placed.values())) > 1  # the keys spread, so a wrong hash would show
    assert placed == {k: murmur2_partition(k, s.cfg.topics.partitions) for k in keys}


def test_each_machine_lives_in_its_input_partition_and_groups_are_shared() -> None:
    cfg = Config()
    detection = PartitionedDetection(Processor(cfg, BundledSchemas()), cfg.topics.partitions)
    # Replicas of one group (pod suffixes) and one machine per group for a dozen groups.
    replicas = [f"orders-api-7d9f8b6c4-x2k9{c}" for c in "pqrs"]
    singles = [f"svc{i}-worker" for i in range(12)]
    for i, m in enumerate(replicas + singles):
        detection.detect(ev(m, 1_767_225_600_000 + i, i=i), i)
    where = {
        m: [p for p, st in detection.local.items() if m in st.data.get(MACHINE, {})]
        for m in replicas + singles
    }
    assert all(len(ps) == 1 for ps in where.values())  # each machine in exactly one store
    for m, ps in where.items():
        assert ps == [murmur2_partition(m.encode(), cfg.topics.partitions)]
    # The replicas spread over partitions, and their group's knowledge is one, shared.
    assert len({where[m][0] for m in replicas}) > 1
    assert detection.shared.data.get(b"gm", {}).keys() >= {"orders-api"}
    assert not any(b"gm" in st.data for st in detection.local.values())


def test_a_store_that_starts_late_is_not_blind_to_new_identities() -> None:
    # A small fleet leaves some partitions without events for hours; an identity that first
    # shows up there must still count as new once the pipeline has watched for the warm-up.
    cfg = Config()
    detection = PartitionedDetection(Processor(cfg, BundledSchemas()), cfg.topics.partitions)
    t0 = 1_767_225_600_000
    steady = "billing-worker"
    for i in range(0, 7200, 30):
        detection.detect(ev(steady, t0 + i * 1000, i=i), i)
    stranger = next(
        f"intruder{i}"
        for i in range(100)
        if detection.partition_of(ev(f"intruder{i}", t0, i=0))
        not in detection.stores  # a partition nothing has been seen in yet
    )
    alerts = detection.detect(ev(stranger, t0 + 7_300_000, i=99_999), 99_999)
    assert [a.alert.detector for a in alerts if a.alert is not None] == ["new_identity"]
