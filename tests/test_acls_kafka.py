"""The ACL set (streams.ops.acls) on the secure broker, whose StandardAuthorizer denies whatever
no ACL allows: each role can do its work with exactly its set and nothing else.

Every test makes its own SCRAM users (one per role), topics and groups, and removes them after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from schemas.codec import decode_wire
from streams.cli.main import main
from streams.cli.webhook import run_webhook
from streams.ops.acls import ROLES, Acl, acl_set, apply_acls, held_by, principal_filter
from streams.ops.config import SECURITY_ENV, Config, load_config
from streams.ops.topics import ensure_topics
from streams.processor import event_id_of
from streams.runtime.routing import murmur2_partition
from streams.runtime.state import read_partitions, restore_consumer
from streams.tools.reading import group_lag, read_topic
from tests.conftest import ROOT, SecureBroker, plaintext_only, wait_until
from tests.test_pipeline_kafka import avro
from tests.test_webhook_kafka import Receiver, server  # noqa: F401 - the fixture
from tests.test_webhook_kafka import alert as webhook_alert
from tests.traffic import BASE_MS, steady

pytestmark = pytest.mark.kafka

# What could make a client of ours someone else than the role under test: the credentials a
# CI job or a sourced client.env puts in the environment are the super user's.
_IDENTITY_ENV = set(SECURITY_ENV.values())

DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED

_TOPICS = ("events", "alerts", "archive", "deadletter", "detect", "control", "state", "peers")

# A new_resource page within seconds (the pattern of tests/test_control_kafka.py).
QUICK_ALERTS = {
    "detectors": {
        "warmup_s": 60,
        "warmup_events": 5,
        "mature_after_s": 0,  # machines with history: a new resource pages
        "cooldown_s": 3600,
        "update_every_s": 0,
        "rate": {"min_count": 10**9},
    }
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Deployment:
    """One test's users (one per role), topics and ACLs on the secure broker."""

    def __init__(self, broker: SecureBroker, root: Path, name: str, **settings: Any) -> None:
        self.broker = broker
        self.root = root
        self.prefix = f"t-acl-{name}-{uuid.uuid4().hex[:8]}"
        self.admin = AdminClient(broker.client_config())
        self.users = {role: f"{self.prefix}-{role}" for role in ROLES}
        self.passwords = {role: secrets.token_hex(16) for role in ROLES}
        self.principals = {role: f"User:{u}" for role, u in self.users.items()}
        self.data = _merge(
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap,
                    "consumer_group": f"{self.prefix}-group",
                    "state_dir": str(root / "state"),
                    "commit_interval_s": 1.0,
                },
                # The ledger's name follows the consumer group, unique per test too.
                "topics": {role: f"{self.prefix}.{role}" for role in _TOPICS},
                "webhook": {"consumer_group": f"{self.prefix}-webhook"},
                "http": {"port": 0},
            },
            settings,
        )
        self.cfg = self.config("admin")
        self.acls = acl_set(self.cfg, self.principals)
        self.topics_made = False
        self.worker: subprocess.Popen[bytes] | None = None

    # ---- identities --------------------------------------------------------------------

    def client(self, role: str, **extra: Any) -> dict[str, Any]:
        """librdkafka settings of `role` ("admin": the broker's super user)."""
        config = self.broker.client_config()
        if role != "admin":
            config["sasl.username"] = self.users[role]
            config["sasl.password"] = self.passwords[role]
        return {**config, **extra}

    def config_path(self, role: str) -> Path:
        """A config file whose every client is `role`'s, as a deployment would set it."""
        client = self.client(role)
        security = {
            "protocol": client["security.protocol"],
            "sasl_mechanism": client["sasl.mechanism"],
            "username": client["sasl.username"],
            "password": client["sasl.password"],
            "ssl_ca_location": client["ssl.ca.location"],
        }
        data = _merge(self.data, {"kafka": {"security": security}})
        path = self.root / f"config-{role}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def config(self, role: str) -> Config:
        return load_config(self.config_path(role))

    # ---- setup and teardown -------------------------------------------------------------

    def create(self, acls: list[Acl] | None = None) -> None:
        """Users, topics (as the admin, as a deployment would) and the ACL set (or `acls`)."""
        upserts = [
            UserScramCredentialUpsertion(
                user,
                ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                self.passwords[role].encode(),
            )
            for role, user in self.users.items()
        ]
        for fut in self.admin.alter_user_scram_credentials(upserts).values():
            fut.result()
        ensure_topics(self.cfg)
        self.topics_made = True
        self.grant(self.acls if acls is None else acls)
        # Credentials, like ACLs, reach the broker through the metadata log.
        wait_until(
            lambda: all(self.authenticates(r) for r in ROLES), timeout=30, what="users to log in"
        )

    def grant(self, acls: list[Acl]) -> None:
        apply_acls(self.admin, acls)
        # The broker's authorizer applies bindings from the metadata log, shortly after the
        # controller committed them; describe_acls answers from that same view.
        wanted = {a.key() for a in acls}

        def visible() -> bool:
            held = set()
            for principal in {a.principal for a in acls}:
                held |= {
                    (b.principal, b.restype.name, b.name, b.resource_pattern_type.name)
                    for b in held_by(self.admin, principal)
                }
            return all((k[0], _RTYPE[k[1]], k[2], k[3].upper()) in held for k in wanted)

        wait_until(visible, timeout=30, what="the ACLs to reach the broker's authorizer")

    def authenticates(self, role: str) -> bool:
        probe = Producer(self.client(role))
        try:
            probe.list_topics(timeout=5)
            return True
        except Exception:
            return False

    def close(self) -> None:
        filters = [principal_filter(p) for p in self.principals.values()]
        for fut in self.admin.delete_acls(filters).values():
            fut.result()
        deletions = [
            UserScramCredentialDeletion(u, ScramMechanism.SCRAM_SHA_512)
            for u in self.users.values()
        ]
        for fut in self.admin.alter_user_scram_credentials(deletions).values():
            # A user never created (setup failed early) has nothing to delete.
            with contextlib.suppress(Exception):
                fut.result()
        if self.topics_made:
            from streams.ops.topics import topic_specs

            self.admin.delete_topics([s.name for s in topic_specs(self.cfg)])

    # ---- acting as a role ---------------------------------------------------------------

    def produce(
        self,
        role: str,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes]],
        idempotent: bool = True,
    ) -> list[Any]:
        """Write `messages` as `role`; the delivery errors (None for each delivered one). An
        idempotent producer of a role that may write no topic at all is refused before any
        message (CLUSTER_AUTHORIZATION_FAILED, fatal): `idempotent=False` asks per topic."""
        errors: list[Any] = []
        producer = Producer(
            self.client(
                role,
                **{
                    "enable.idempotence": idempotent,
                    "message.timeout.ms": 15_000,
                    "on_delivery": lambda err, _m: errors.append(err),
                },
            )
        )
        for key, value in messages:
            producer.produce(topic, value, key)
        assert producer.flush(30) == 0
        return errors

    def topic_error(self, role: str, topic: str) -> Any:
        """The error the broker gives `role` for `topic`'s metadata (None: it may see it).
        Without Describe (which Read implies) a client is not even told where the topic's
        partitions are, so it can fetch nothing from it."""
        consumer = Consumer(self.client(role, **{"group.id": f"{self.prefix}-probe"}))
        try:
            return consumer.list_topics(topic, timeout=10).topics[topic].error
        finally:
            consumer.close()

    def read(self, role: str, topic: str) -> list[Any]:
        return list(read_topic(self.config(role), topic, timeout=30))

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in _IDENTITY_ENV}
        log = (self.root / "worker.log").open("wb")
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "run",
                "--config",
                str(self.config_path("worker")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        return self.worker

    def worker_log(self) -> str:
        path = self.root / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""


_RTYPE = {"topic": "TOPIC", "group": "GROUP", "transactional-id": "TRANSACTIONAL_ID"}


@pytest.fixture
def deployment(
    secure_broker: SecureBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    for k in _IDENTITY_ENV:
        monkeypatch.delenv(k, raising=False)
    made: list[Deployment] = []

    def make(**settings: Any) -> Deployment:
        name = request.node.name.replace("_", "-")[:24]
        d = Deployment(secure_broker, tmp_path, name, **settings)
        made.append(d)
        return d

    yield make
    for w in (d.worker for d in made if d.worker is not None):
        if w.poll() is None:
            w.terminate()
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    for d in made:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(d.worker_log()[-6000:])
        d.close()


def test_a_producer_writes_events_and_can_neither_read_alerts_nor_write_the_archive(
    deployment: Any,
) -> None:
    d: Deployment = deployment()
    d.create()
    t = d.cfg.topics
    assert d.produce("producer", t.events, [(b"m", b"{}")]) == [None]
    refused = d.produce("producer", t.archive, [(b"m", b"forged audit record")])
    assert [e.code() for e in refused] == [DENIED]
    assert d.topic_error("producer", t.alerts).code() == DENIED
    assert d.topic_error("producer", t.archive).code() == DENIED
    assert d.topic_error("producer", t.events) is None
    # Nobody but the worker writes the archive; the admin reads it, and it is empty.
    for role in [r for r in ROLES if r not in ("producer", "worker")]:
        refused = d.produce(role, t.archive, [(None, b"x")], idempotent=False)
        assert [e.code() for e in refused] == [DENIED], role
    assert d.read("admin", t.archive) == []


def history_and_a_new_resource(machine: str) -> list[dict[str, Any]]:
    """Ten quiet events, then a resource new to `machine`: one new_resource page."""
    quiet = steady(machine, ["postgres://ledger/public.entries"], BASE_MS, 100, every_ms=10_000)
    return [
        *quiet,
        {
            "event_id": f"{machine}-new",
            "timestamp": BASE_MS + 120_000,
            "machine_id": machine,
            "resource": "secrets://prod/other-team/token",
            "operation": "GetSecretValue",
            "outcome": "SUCCESS",
        },
    ]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_the_worker_runs_with_exactly_its_set_and_the_other_roles_with_theirs(
    deployment: Any, capsys: Any, guarantee: str
) -> None:
    d: Deployment = deployment(
        topics={"partitions": 2},
        kafka={"processing_guarantee": guarantee},
        **QUICK_ALERTS,
    )
    d.create()
    # Exactly the set: nothing held beyond it, nothing missing (apply finds all present).
    again = apply_acls(d.admin, d.acls, prune=True)
    assert again.added == [] and again.extra == [] and len(again.present) == len(d.acls)
    t = d.cfg.topics
    d.start_worker()
    machine = "payments-api-7d9f8b6c4-x2k9p"
    events = history_and_a_new_resource(machine)
    home = murmur2_partition(machine.encode(), 2)
    messages = [(machine.encode(), avro(e)) for e in events[:-1]]
    assert set(d.produce("producer", t.events, messages)) == {None}

    def archived() -> set[str]:
        return {event_id_of(m.key()) for m in d.read("admin", t.archive)}

    # The history first: records that reach the worker by two routes (its input partition,
    # the repartition topic) have no order between them, and a new resource judged before
    # the machine's history is not news.
    history = {e["event_id"] for e in events[:-1]}
    wait_until(lambda: archived() >= history, timeout=120, what="the history archived")
    # The last event lands in the other partition: the worker forwards it through the
    # repartition topic (its Write there) before judging it.
    producer = Producer(d.client("producer", **{"enable.idempotence": True}))
    producer.produce(t.events, avro(events[-1]), machine.encode(), partition=1 - home)
    producer.produce(t.events, b"{not json", b"broken", partition=home)
    assert producer.flush(30) == 0

    ids = {e["event_id"] for e in events}
    wait_until(lambda: archived() >= ids, timeout=120, what="every event archived")
    dead = wait_until(lambda: d.read("admin", t.deadletter), what="the dead letter")
    assert [decode_wire(m.value(), "dead_letter")["reason"] for m in dead] == ["json_decode_error"]

    def page() -> dict[str, Any] | None:
        for m in d.read("oncall", t.alerts):
            a = orjson.loads(m.value())
            if a["detector"] == "new_resource" and a["status"] == "opened":
                return a
        return None

    alert = wait_until(page, timeout=60, what="the new_resource page")
    assert alert["machine_id"] == machine
    assert d.worker is not None and d.worker.poll() is None
    assert "authorization failed" not in d.worker_log().lower()
    if guarantee == "at-least-once":
        return  # the other roles' commands read the same topics either way

    # On-call: lists alerts, acknowledges one (the worker reads it), lists dead letters.
    oncall = ["--config", str(d.config_path("oncall"))]
    assert main(["alerts", *oncall]) == 0
    assert alert["alert_id"] in capsys.readouterr().out
    assert main(["alerts", "ack", alert["alert_id"], "--by", "alice", *oncall]) == 0
    wait_until(
        lambda: f"control: ack {alert['alert_id']} by alice" in d.worker_log(),
        what="the worker to read the acknowledgement",
    )
    assert main(["deadletter", "list", *oncall]) == 0
    assert "json_decode_error" in capsys.readouterr().out
    refused = d.produce("oncall", t.archive, [(None, b"x")], idempotent=False)
    assert [e.code() for e in refused] == [DENIED]

    # The auditor proves the record is kept and complete; the reporter writes the day's digest
    # (the page and its acknowledgement read from the alerts and control topics).
    assert main(["compliance", "check", "--quiet", "--config", str(d.config_path("auditor"))]) == 0
    digest = d.root / "digest.json"
    reporter = ["--config", str(d.config_path("reporter")), "--quiet"]
    day = ["--period", "day", "--end", "2026-01-02T00:00:00Z", "--json", str(digest)]
    assert main(["report", *day, *reporter]) == 0
    pages = orjson.loads(digest.read_bytes())["pages"]
    assert [(p["alert_id"], p["acknowledged_by"]) for p in pages] == [(alert["alert_id"], "alice")]

    assert d.worker is not None and d.worker.poll() is None
    assert "AUTHORIZATION_FAILED" not in d.worker_log()
    assert "authorization failed" not in d.worker_log().lower()


@pytest.mark.parametrize(
    ("resource", "operation", "says"),
    [
        # Without Write (which implies Describe) the archive is not even listed to the
        # worker: `run` takes it for missing, may not create it, and stops at start.
        ("archive", "Write", "topic_authorization_failed"),
        ("group", "Read", "group authorization failed"),
    ],
)
@pytest.mark.timeout(120)
def test_a_worker_missing_one_of_its_acls_says_so_and_archives_nothing(
    deployment: Any, resource: str, operation: str, says: str
) -> None:
    d: Deployment = deployment()
    name = {"archive": d.cfg.topics.archive, "group": d.cfg.kafka.consumer_group}[resource]
    kept = [
        a
        for a in d.acls
        if not (a.role == "worker" and a.resource_name == name and a.operation == operation)
    ]
    assert len(kept) == len(d.acls) - 1
    d.create(kept)
    d.start_worker()
    machine = "ingest-worker-07"
    events = history_and_a_new_resource(machine)[:3]
    d.produce("producer", d.cfg.topics.events, [(machine.encode(), avro(e)) for e in events])
    wait_until(
        lambda: says in d.worker_log().lower(), timeout=60, what=f"the worker to log {says!r}"
    )
    assert d.read("admin", d.cfg.topics.archive) == []


def test_the_state_readers_need_their_group_even_though_they_join_none(deployment: Any) -> None:
    """The restore consumer assigns partitions by hand and never commits, yet librdkafka looks
    up its group's coordinator; refused, it hands GROUP_AUTHORIZATION_FAILED to consume(),
    and the restore (state.read_partitions) raises on any error but a partition's end: a
    worker without Describe on `<group>.restore` fails a restore whenever the refusal
    arrives before the changelog's end."""
    d: Deployment = deployment()
    group = d.cfg.kafka.consumer_group
    needed = next(a for a in d.acls if a.role == "worker" and a.resource_name == f"{group}.restore")
    d.create([a for a in d.acls if a != needed])
    assert d.produce("admin", d.cfg.state_topic, [(b"k", b"v")], idempotent=False) == [None]

    consumer = restore_consumer(d.client("worker"), group)
    try:
        refusals = wait_until(
            lambda: [m.error() for m in consumer.consume(10, 0.5) if m.error() is not None],
            timeout=30,
            what="the consumer to be told about its group",
        )
    finally:
        consumer.close()
    assert refusals[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED

    d.grant([needed])
    consumer = restore_consumer(d.client("worker"), group)
    try:
        every = dict.fromkeys(range(d.cfg.topics.partitions))
        read = list(read_partitions(consumer, d.cfg.state_topic, every, timeout_s=30))
        assert [(k, v) for _p, k, v in read] == [(b"k", b"v")]
    finally:
        consumer.close()


def test_acls_apply_is_idempotent_and_prune_leaves_exactly_the_set(
    deployment: Any, capsys: Any
) -> None:
    d: Deployment = deployment()
    d.create([])
    principal = d.principals["producer"]
    apply = [
        "acls",
        "apply",
        "--role",
        "producer",
        "--principal",
        principal,
        "--config",
        str(d.config_path("admin")),
    ]
    assert main(apply) == 0
    assert "1 added, 0 already present" in capsys.readouterr().out
    assert main(apply) == 0
    assert "0 added, 1 already present, 0 not in the set" in capsys.readouterr().out
    stray = next(a for a in d.acls if a.role == "oncall" and a.operation == "Read")
    d.grant([Acl(**{**stray.__dict__, "principal": principal})])
    assert main(apply) == 0
    out = capsys.readouterr().out
    assert f"extra   {principal} allow Read topic {d.cfg.topics.alerts}" in out
    assert main([*apply, "--prune"]) == 0
    assert f"removed {principal} allow Read topic {d.cfg.topics.alerts}" in capsys.readouterr().out
    wait_until(
        lambda: (
            {(b.name, b.operation.name) for b in held_by(d.admin, principal)}
            == {(d.cfg.topics.events, "WRITE")}
        ),
        what="the producer to hold exactly its set",
    )
    # A principal that may not manage ACLs is told so; nothing changes.
    assert main([*apply[:-1], str(d.config_path("producer"))]) == 1
    assert "may not manage ACLs" in capsys.readouterr().err


def test_acls_apply_on_a_broker_without_an_authorizer_says_so(
    plaintext_bootstrap: str, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plaintext_only(monkeypatch)
    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": plaintext_bootstrap}}))
    assert main(["acls", "apply", "--role", "producer", "--config", str(config)]) == 1
    assert "has no authorizer" in capsys.readouterr().err


def test_the_webhook_sink_reads_alerts_in_its_group_and_dead_letters_with_its_set(
    deployment: Any,
    server: tuple[str, Receiver],  # noqa: F811 - the imported fixture
) -> None:
    base, receiver = server
    d: Deployment = deployment()
    d.create()
    t = d.cfg.topics
    states = [webhook_alert(0, "opened", "high"), webhook_alert(1, "escalated", "critical")]
    messages = [(a["alert_id"].encode(), orjson.dumps(a)) for a in states]
    assert d.produce("admin", t.alerts, messages) == [None, None]
    cfg = d.config("webhook")
    # The endpoint refuses (400, not retried): each state is dead-lettered by the sink.
    settings = cfg.webhook.model_copy(update={"url": SecretStr(base + "/bad")})
    stop = threading.Event()
    stats: Counter[str] = Counter()
    thread = threading.Thread(target=run_webhook, args=(cfg, settings, stop, stats))
    thread.start()
    try:
        wait_until(lambda: stats["dead_lettered"] == 2, what="both states dead-lettered")
    finally:
        stop.set()
        thread.join(30)
    assert receiver.requests["/bad"] == 2
    letters = [decode_wire(m.value(), "dead_letter") for m in d.read("admin", t.deadletter)]
    assert sorted(x["event_id"] for x in letters) == sorted(a["alert_id"] for a in states)
    # It committed what it handled, in its own group.
    assert group_lag(d.cfg, cfg.webhook.consumer_group, t.alerts) == 0
