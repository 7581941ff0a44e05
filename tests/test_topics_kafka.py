"""`auditwatch topics create` on the real broker: configs, idempotence, drift, compaction."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streams.cli.main import main
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.kafka


def topic_config(stack: Stack, topic: str) -> dict[str, str]:
    admin = AdminClient(stack.cfg.kafka.client_config())
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result().items()}


def test_topics_create_is_idempotent_and_reports_drift(stack: Any, capsys: Any) -> None:
    s: Stack = stack()
    assert main(["topics", "create", "--config", str(s.config_path)]) == 0
    assert capsys.readouterr().out.count("created") == 9

    ledger = topic_config(s, f"{s.cfg.kafka.consumer_group}.ledger")
    assert ledger["cleanup.policy"] == "compact" and ledger["retention.ms"] == "-1"

    archive = topic_config(s, s.cfg.topics.archive)
    assert archive["cleanup.policy"] == "compact"
    assert archive["compression.type"] == "zstd"
    assert archive["retention.ms"] == "-1"
    dead = topic_config(s, s.cfg.topics.deadletter)
    assert dead["retention.ms"] == "-1"

    assert main(["topics", "create", "--config", str(s.config_path)]) == 0
    assert capsys.readouterr().out.count("ok ") == 9

    admin = AdminClient(s.cfg.kafka.client_config())
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        s.cfg.topics.archive,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([res])[res].result()
    wait_until(
        lambda: topic_config(s, s.cfg.topics.archive)["cleanup.policy"] == "delete",
        what="the config change to be visible",
    )
    assert main(["topics", "create", "--config", str(s.config_path)]) == 1
    out = capsys.readouterr().out
    assert f"DIFFERS  {s.cfg.topics.archive}: cleanup.policy='delete', expected 'compact'" in out


def test_archive_compaction_removes_duplicates_by_event_id(stack: Any) -> None:
    s: Stack = stack(topics__partitions=1)
    # Kafka 4.0 refuses segment.bytes below 1 MiB: roll segments by time instead.
    s.create_topics(
        {
            "archive": {
                "segment.ms": "1000",
                "min.cleanable.dirty.ratio": "0.01",
                "min.compaction.lag.ms": "0",
                "delete.retention.ms": "0",
            }
        }
    )
    producer = Producer(s.cfg.kafka.client_config())
    topic = s.cfg.topics.archive
    for round_ in range(3):
        for i in range(20):
            producer.produce(topic, key=f"ev-{i}".encode(), value=f"copy-{round_}".encode())
    producer.flush(30)
    dupes = Counter(m.key() for m in s.read("archive"))
    assert max(dupes.values()) == 3
    time.sleep(1.5)  # past segment.ms, so the next record rolls the segment with the duplicates
    producer.produce(topic, key=b"roll", value=b"x")
    producer.flush(30)

    def compacted() -> bool:
        counts = Counter(m.key() for m in s.read("archive"))
        return all(counts[f"ev-{i}".encode()] == 1 for i in range(20))

    wait_until(compacted, timeout=90, interval=1.0, what="the log cleaner to compact the archive")
    latest = {m.key(): m.value() for m in s.read("archive")}
    assert all(latest[f"ev-{i}".encode()] == b"copy-2" for i in range(20))
