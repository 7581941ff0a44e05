"""The ceiling's work on the stream engine: how much of the ceiling Quix Streams itself leaves.

`python -m bench.engine --config FILE` does exactly what `bench.ceiling` does per message
(fastavro decode of the input value, the archive record encoded and produced keyed by
event_id), but as a Quix Streams application with the settings `auditwatch run` gives its
own: the consumer group, commit interval and processing guarantee of the config. No
validation, dedupe, state or detection. Its rate against the ceiling's, measured in the same
run, is what the engine costs before auditwatch does anything; `bench.floor` adds auditwatch's
own work short of detection. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from quixstreams import Application
from quixstreams.context import message_context
from quixstreams.models.serializers import Serializer

from bench.ceiling import Archiver
from streams.config import load_config


class _Second(Serializer):
    """Records travel as (key, encoded value) pairs, as `auditwatch run`'s outputs do."""

    def __call__(self, value: tuple[bytes, bytes], ctx: Any = None) -> bytes:
        return value[1]


def build(config_path: str) -> Application:
    cfg = load_config(config_path)
    k = cfg.kafka
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    app = Application(
        broker_address=k.bootstrap(),
        consumer_group=k.consumer_group,
        auto_offset_reset="earliest",
        commit_interval=k.commit_interval_s,
        processing_guarantee=k.processing_guarantee,
        state_dir=k.state_dir,
        consumer_extra_config=dict(k.librdkafka),
        producer_extra_config=dict(k.librdkafka),
        loglevel=None,
    )
    source = app.topic(cfg.topics.events, key_deserializer="bytes", value_deserializer="bytes")
    archive = app.topic(cfg.topics.archive, key_serializer="bytes", value_serializer=_Second())
    archive_of = Archiver()
    topic_in = cfg.topics.events

    def to_archive(value: bytes) -> tuple[bytes, bytes]:
        ctx = message_context()
        return archive_of(value, topic_in, ctx.partition, ctx.offset)

    sdf = app.dataframe(source)
    sdf = sdf.apply(to_archive)
    # Produce time, as the ceiling's records get from librdkafka and `auditwatch run` sets:
    # Quix would carry the input's timestamp over, and the bench times the archive by it.
    sdf = sdf.set_timestamp(lambda _v, _k, _t, _h: time.time_ns() // 1_000_000)
    sdf.to_topic(archive, key=lambda v: v[0])
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    parser.add_argument("--config", required=True, help="auditwatch YAML config (topics, kafka)")
    args = parser.parse_args(argv)
    # Quix stops on SIGTERM/SIGINT by itself, committing what it processed.
    build(args.config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
