"""At-least-once commit order against a real broker: a commit's changelog (which records the
event ids a task has seen) is produced only after the broker has acknowledged the outputs, so
an archive record that was refused is archived on the replay, not taken for a duplicate."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streams.processor import event_id_of
from tests.conftest import Stack, wait_until
from tests.traffic import BASE_MS, steady

QUIET = {"http__enabled": False, "monitoring__input_quiet_s": 0}


def test_refused_archive_records_are_archived_after_the_rewind(
    stack: Callable[..., Stack],
) -> None:
    s = stack(
        topics__partitions=1,
        kafka__processing_guarantee="at-least-once",
        kafka__commit_interval_s=1.0,
        **QUIET,
    )
    # The broker refuses every archive batch (larger than 64 bytes) and takes everything else:
    # the changelog's records would be acknowledged while the archive's fail.
    s.create_topics({"archive": {"max.message.bytes": "64"}})
    events = steady("m-order", ["db://orders"], BASE_MS, 40)
    s.send(events)
    s.start_worker()
    try:
        wait_until(
            lambda: "rewinding" in s.worker_logs(),
            timeout=60,
            what="the worker to rewind on the refused archive records",
        )
        assert s.read("archive") == []

        admin = AdminClient(s.cfg.kafka.client_config())
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            s.cfg.topics.archive,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE
                )
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)

        want = {e["event_id"] for e in events}

        def archived() -> set[str]:
            return {event_id_of(m.key()) for m in s.read("archive")}

        wait_until(
            lambda: archived() >= want,
            timeout=90,
            what="every event to be archived once the archive takes records again",
        )
        assert archived() == want
    finally:
        s.stop_all()
