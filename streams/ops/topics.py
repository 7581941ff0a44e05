"""auditwatch's topics: their configs, idempotent creation and drift reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.ops.config import Config


def ledger_topic(cfg: Config) -> str:
    return cfg.topics.ledger or f"{cfg.kafka.consumer_group}.ledger"


def client_principal(cfg: Config) -> str:
    """The Kafka principal our clients act as, as ACLs name it (as far as the config tells:
    a TLS client's principal is its certificate's subject, mapped by the broker)."""
    client = cfg.kafka.client_config()
    user = client.get("sasl.username")
    if user:
        return f"User:{user}"
    protocol = str(client.get("security.protocol", "plaintext")).lower()
    if protocol == "ssl" and client.get("ssl.certificate.location"):
        return f"the principal of the certificate {client['ssl.certificate.location']}"
    return "User:ANONYMOUS"


class TopicAuthorizationError(RuntimeError):
    """The broker refused an operation on some of our topics: an ACL problem, said so with
    the topics, the operation and the principal (Kafka's own text names none of them)."""

    def __init__(
        self,
        cfg: Config,
        operation: str,
        topics: list[str],
        why: str = "",
        role: str | None = None,
    ) -> None:
        self.operation = operation
        self.topics = topics
        self.why = why
        self.principal = client_principal(cfg)
        see = f"auditwatch acls show --role {role}" if role else "auditwatch acls show"
        super().__init__(
            f"not authorized: {self.principal} may not {operation} topic(s) "
            f"{', '.join(topics)} at {cfg.kafka.bootstrap()} (TOPIC_AUTHORIZATION_FAILED, "
            f"an ACL problem){why}; the ACLs needed: `{see}` (an admin applies them with "
            "`auditwatch acls apply`)"
        )


def _denied(e: KafkaException) -> bool:
    return bool(e.args) and e.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(
    cfg: Config,
    overrides: dict[str, dict[str, str]] | None = None,
    input_partitions: int | None = None,
) -> list[TopicSpec]:
    """The topics and why each is configured as it is. `overrides` (role -> settings) is for
    tests that need e.g. a short segment.ms to see compaction. `input_partitions`: the input
    topic's partition count where it exists already; the repartition and state topics are
    co-partitioned with it (partition p of each belongs to input partition p)."""
    t = cfg.topics
    internal = input_partitions or t.partitions
    specs = [
        TopicSpec(
            "events",
            t.events,
            t.partitions,
            t.replication_factor,
            {"retention.ms": str(t.events_retention_ms)},
        ),
        # Alert states keyed by alert_id: compaction keeps each alert's latest state, deletion
        # bounds how long closed alerts stay.
        TopicSpec(
            "alerts",
            t.alerts,
            t.partitions,
            t.replication_factor,
            {"cleanup.policy": "compact,delete", "retention.ms": str(t.alerts_retention_ms)},
        ),
        # The audit record: one record per event_id, never deleted by age. Readers still dedupe
        # by event_id, since the active segment is never compacted.
        TopicSpec(
            "archive",
            t.archive,
            t.partitions,
            t.replication_factor,
            {
                "cleanup.policy": "compact",
                "compression.type": "zstd",
                "retention.ms": str(t.archive_retention_ms),
            },
        ),
        # Kept at least as long as the archive: a dead letter is part of the audit record too.
        TopicSpec(
            "deadletter",
            t.deadletter,
            t.partitions,
            t.replication_factor,
            {
                "cleanup.policy": "delete",
                "compression.type": "zstd",
                "retention.ms": str(t.archive_retention_ms),
            },
        ),
        # Internal, the repartition topic: events that arrived in another partition than their
        # machine's, forwarded once. Only needs to outlive processing lag.
        TopicSpec(
            "detect",
            t.detect,
            internal,
            t.replication_factor,
            {"retention.ms": str(t.events_retention_ms), "compression.type": "lz4"},
        ),
        # Internal: each input partition's state changelog (compaction keeps each key's
        # latest value, which is all a restore needs), never deleted by age.
        TopicSpec(
            "state",
            cfg.state_topic,
            internal,
            t.replication_factor,
            {"cleanup.policy": "compact", "retention.ms": "-1", "compression.type": "lz4"},
        ),
        # Internal: peer-group knowledge, one record per writer and key, read in full by
        # every worker. Small after warm-up.
        TopicSpec(
            "peers",
            cfg.peers_topic,
            1,
            t.replication_factor,
            {"cleanup.policy": "compact", "retention.ms": "-1", "compression.type": "lz4"},
        ),
        # Internal: the per-partition ledger (streams.runtime.ledger), one record per input
        # topic and partition, compacted to the latest counts; part of the audit record.
        TopicSpec(
            "ledger",
            ledger_topic(cfg),
            1,
            t.replication_factor,
            {"cleanup.policy": "compact", "retention.ms": "-1"},
        ),
        # On-call's ack/snooze per alert_id: compaction keeps each alert's latest decision,
        # and every worker reads the whole topic at start.
        TopicSpec(
            "control",
            t.control,
            t.partitions,
            t.replication_factor,
            {"cleanup.policy": "compact", "retention.ms": "-1"},
        ),
    ]
    if overrides:
        specs = [
            TopicSpec(
                s.role,
                s.name,
                s.partitions,
                s.replication_factor,
                {**s.config, **overrides.get(s.role, {})},
            )
            for s in specs
        ]
    return specs


def _describe(admin: AdminClient, res: ConfigResource, timeout: float) -> dict[str, str]:
    """A topic's configs. A topic created a moment ago (by us or a concurrent caller) may not
    be known to the broker's config handler yet: retry that, briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            entries = admin.describe_configs([res], request_timeout=timeout)[res].result()
            return {k: v.value for k, v in entries.items()}
        except KafkaException as e:
            if e.args[0].name() != "UNKNOWN_TOPIC_OR_PART" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _await_usable(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Return once every topic just created has a leader for each partition and answers a
    config lookup. The create request succeeds before the broker's metadata and config handler
    know the topic; a caller (or the next command) that uses it at once would otherwise get
    UNKNOWN_TOPIC_OR_PART under load."""
    if not names:
        return
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting:
        topics = admin.list_topics(timeout=timeout).topics
        waiting = {
            n
            for n in waiting
            if n not in topics
            or topics[n].error is not None
            or not topics[n].partitions
            or any(p.leader < 0 for p in topics[n].partitions.values())
        }
        if waiting and time.monotonic() > deadline:
            raise KafkaException(
                KafkaError(
                    KafkaError._TIMED_OUT,
                    f"topics created but not usable after {timeout:.0f} s: "
                    + ", ".join(sorted(waiting)),
                )
            )
        if waiting:
            time.sleep(0.1)
    for n in names:
        _describe(
            admin,
            ConfigResource(ConfigResource.Type.TOPIC, n),
            max(deadline - time.monotonic(), 1.0),
        )


@dataclass
class TopicReport:
    name: str
    created: bool
    differences: list[str]


def ensure_topics(
    cfg: Config,
    overrides: dict[str, dict[str, str]] | None = None,
    timeout: float = 30.0,
) -> list[TopicReport]:
    """Create missing topics; report existing ones whose partitions or configs differ. Never
    alters an existing topic: changing a live audit topic is an operator's decision."""
    admin = AdminClient(cfg.kafka.client_config())
    existing = admin.list_topics(timeout=timeout).topics
    source = existing.get(cfg.topics.events)
    specs = topic_specs(cfg, overrides, len(source.partitions) if source is not None else None)
    reports: dict[str, TopicReport] = {}
    to_create = [s for s in specs if s.name not in existing]
    if to_create:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=s.config)
                for s in to_create
            ],
            request_timeout=timeout,
        )
        refused: list[str] = []
        for name, fut in futures.items():
            try:
                fut.result()
                reports[name] = TopicReport(name, True, [])
            except KafkaException as e:
                if _denied(e):
                    refused.append(name)
                # Someone else created it between our listing and our request.
                elif e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
        _await_usable(admin, [r.name for r in reports.values() if r.created], timeout)
        if refused:
            raise TopicAuthorizationError(
                cfg,
                "Create",
                refused,
                # Unlisted is not necessarily missing: without Describe (which Read and Write
                # imply) a topic is hidden from the principal, and a create is refused too.
                ": either they do not exist (an admin creates them: `auditwatch topics create`)"
                " or the principal may not see them (no Describe, Read or Write on them)",
            )
    present = [s for s in specs if s.name not in reports]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
        meta = admin.list_topics(timeout=timeout).topics
        denied: list[str] = []
        for s, res in zip(present, resources, strict=True):
            try:
                actual = _describe(admin, res, timeout)
            except KafkaException as e:
                if not _denied(e):
                    raise
                denied.append(s.name)
                continue
            diffs = [
                f"{k}={actual.get(k)!r}, expected {v!r}"
                for k, v in s.config.items()
                if actual.get(k) != v
            ]
            n = len(meta[s.name].partitions) if s.name in meta else None
            if n != s.partitions:
                diffs.append(f"partitions={n}, expected {s.partitions}")
            reports[s.name] = TopicReport(s.name, False, diffs)
        if denied:
            raise TopicAuthorizationError(cfg, "DescribeConfigs", denied)
    return [reports[s.name] for s in specs]
