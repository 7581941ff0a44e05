"""The ACL set: which Kafka principal may do what, derived from the config, least privilege.

Roles and what they run:

- `producer`: audit sources (`auditwatch produce`, log shippers) write the input topic, nothing
  else.
- `worker`: `auditwatch run`, every topic of the pipeline it reads or writes, its consumer
  group, the throwaway groups of its assign-only readers and its transactional ids. It is the
  only role that writes the archive.
- `oncall`: `auditwatch alerts` (list, ack, snooze), `deadletter list`: reads alerts, the
  control topic and dead letters, writes only the control topic.
- `webhook`: `auditwatch webhook`: reads alerts in its group, dead-letters the states it could
  not deliver.
- `auditor`: `auditwatch compliance check`: reads the archive, the dead letters, the ledger
  and the repartition topic, and the configs of the topics that keep the audit record.
- `reporter`: `auditwatch report` (the digest CronJob): reads the archive, alerts and the
  control topic.

Creating topics, redriving dead letters and seeding baselines are administration: they run
with an admin principal, and no role here can create or alter a topic.

Each ACL carries the reason it exists (`why`), printed with it, so that a reviewer can check the
set line by line. `tests/test_acls_kafka.py` proves the set on a broker with the
StandardAuthorizer.

Imports: the standard library, PyYAML, streams.ops.config; confluent_kafka only in the
functions that talk to a broker.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from streams.ops.config import Config

ROLES = ("producer", "worker", "oncall", "webhook", "auditor", "reporter")

ResourceType = Literal["topic", "group", "transactional-id"]
PatternType = Literal["literal", "prefixed"]

# Group id prefixes of consumers that only assign partitions (no membership, no commits).
# librdkafka still looks up their group's coordinator, which needs Describe on the group.
# Kept in step with streams/tools/reading.py and streams/ops/control.py; the Kafka test
# proves it (a reader without the ACL fails with GROUP_AUTHORIZATION_FAILED).
READER_GROUP_PREFIX = "auditwatch-reader-"
CONTROL_GROUP_PREFIX = "auditwatch-control-"
COMPLIANCE_GROUP_PREFIX = "auditwatch-compliance-"
DIGEST_GROUP_PREFIX = "auditwatch-digest-"

# Kafka's names for operations, as kafka-acls.sh and the Java client spell them.
OPERATIONS = ("Read", "Write", "Describe", "DescribeConfigs")

_PRINCIPAL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:\S+$")


@dataclass(frozen=True)
class Acl:
    """One ALLOW binding: `principal` may do `operation` on the resource, from any host."""

    role: str
    principal: str
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    operation: str
    why: str
    host: str = "*"

    def key(self) -> tuple[str, str, str, str, str, str]:
        """What Kafka stores: the binding without the role and the reason."""
        return (
            self.principal,
            self.resource_type,
            self.resource_name,
            self.pattern_type,
            self.operation,
            self.host,
        )


def default_principal(role: str) -> str:
    return f"User:auditwatch-{role}"


def check_principal(principal: str) -> str:
    """`principal` if it has Kafka's `Type:name` form (User:alice); ValueError otherwise."""
    if not _PRINCIPAL.match(principal):
        raise ValueError(
            f"principal {principal!r} is not of the form TYPE:NAME (e.g. User:auditwatch-worker)"
        )
    return principal


def acl_set(cfg: Config, principals: dict[str, str] | None = None) -> list[Acl]:
    """Every role's ACLs for `cfg` (or only the roles named in `principals`, each with its
    principal). Roles not named get `default_principal(role)` when `principals` is None."""
    chosen = principals if principals is not None else {r: default_principal(r) for r in ROLES}
    unknown = sorted(set(chosen) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {', '.join(unknown)}; roles: {', '.join(ROLES)}")
    out: list[Acl] = []
    for role in ROLES:
        if role in chosen:
            principal = check_principal(chosen[role])
            out.extend(_ROLE_ACLS[role](cfg, principal))
    return out


def _acl(
    role: str,
    principal: str,
    resource_type: ResourceType,
    name: str,
    operation: str,
    why: str,
    pattern_type: PatternType = "literal",
) -> Acl:
    return Acl(role, principal, resource_type, name, pattern_type, operation, why)


def _producer(cfg: Config, p: str) -> list[Acl]:
    return [
        _acl(
            "producer",
            p,
            "topic",
            cfg.topics.events,
            "Write",
            "publish audit events; Write implies Describe (metadata), and idempotent "
            "producers need no cluster ACL once they may write a topic (KIP-679)",
        )
    ]


# What the worker does with each topic of `topic_specs`, by the topic's role there. A topic
# added to topic_specs without an entry here fails tests/test_acls.py: a worker denied a
# topic it needs would find out in production.
WORKER_TOPIC_OPS: dict[str, tuple[tuple[str, str], ...]] = {
    "events": (("Read", "consume the input topic in the consumer group"),),
    "detect": (
        ("Read", "consume the repartition topic with the input"),
        ("Write", "forward an event found in another partition than its machine's, once"),
    ),
    "archive": (
        ("Write", "archive every valid event (the only principal that writes the archive)"),
    ),
    "deadletter": (("Write", "dead-letter refused input with the reason"),),
    "alerts": (
        ("Write", "write alert states"),
        ("Read", "the input-quiet watch reads its alert's latest state before writing the next"),
    ),
    "state": (
        ("Read", "restore a partition's state"),
        ("Write", "write the state changelog at each commit"),
    ),
    "peers": (
        ("Read", "load the peer table every worker shares"),
        ("Write", "publish this worker's peer records"),
    ),
    "ledger": (
        (
            "Write",
            "write the per-partition ledger with each commit; without it the worker runs "
            "without a ledger and the compliance check cannot reconcile",
        ),
    ),
    "control": (("Read", "apply on-call's acknowledgements and snoozes"),),
}


def topic_names(cfg: Config) -> dict[str, str]:
    """role -> topic name, for every topic the deployment declares (streams.ops.topics)."""
    from streams.ops.topics import topic_specs

    return {s.role: s.name for s in topic_specs(cfg)}


def _worker(cfg: Config, p: str) -> list[Acl]:
    group = cfg.kafka.consumer_group
    r = "worker"
    topics = topic_names(cfg)
    acls = [
        _acl(r, p, "topic", topics[role], op, why)
        for role in topics
        for op, why in WORKER_TOPIC_OPS[role]
    ]
    # `run` compares every topic's config with the expected one at start and stops when it
    # cannot read it (a denied describe would otherwise hide retention set on the archive).
    acls += [
        _acl(r, p, "topic", name, "DescribeConfigs", "`run` checks the topic's config at start")
        for name in dict.fromkeys(topics.values())
    ]
    acls += [
        _acl(
            r,
            p,
            "group",
            group,
            "Read",
            "join the consumer group and commit input offsets (also inside a transaction)",
        ),
        _acl(
            r,
            p,
            "group",
            f"{group}.restore",
            "Describe",
            "the state and peer readers assign partitions by hand; librdkafka still looks up "
            "their group's coordinator",
        ),
        _acl(
            r,
            p,
            "group",
            f"{group}-watch",
            "Describe",
            "the input-quiet watch's reader (assigns by hand, never commits)",
        ),
        _throwaway_group(r, p, CONTROL_GROUP_PREFIX, "the control topic's readers"),
        _acl(
            r,
            p,
            "transactional-id",
            f"{group}-",
            "Write",
            "exactly-once: the transactional producer `<consumer_group>-<instance id>`; "
            "unused at-least-once, granted so that switching the guarantee needs no ACL change",
            "prefixed",
        ),
    ]
    return acls


def _throwaway_group(role: str, p: str, prefix: str, who: str) -> Acl:
    return _acl(
        role,
        p,
        "group",
        prefix,
        "Describe",
        f"{who} use a throwaway group each (assign by hand, never commit); librdkafka still "
        "looks up its coordinator",
        "prefixed",
    )


def _reader_group(role: str, p: str) -> Acl:
    return _throwaway_group(role, p, READER_GROUP_PREFIX, "the CLI's topic readers")


def _oncall(cfg: Config, p: str) -> list[Acl]:
    t = cfg.topics
    r = "oncall"
    return [
        _acl(r, p, "topic", t.alerts, "Read", "`auditwatch alerts`; ack/snooze check the alert"),
        _acl(r, p, "topic", t.control, "Read", "the current acknowledgements and snoozes"),
        _acl(r, p, "topic", t.control, "Write", "`auditwatch alerts ack/snooze/unsnooze`"),
        _acl(r, p, "topic", t.deadletter, "Read", "`auditwatch deadletter list`"),
        _acl(
            r,
            p,
            "topic",
            t.deadletter + ".redriven",
            "Read",
            "`deadletter list` shows which dead letters were redriven",
        ),
        _reader_group(r, p),
        _throwaway_group(
            r,
            p,
            CONTROL_GROUP_PREFIX,
            "`auditwatch alerts` shows acknowledgements through the control topic's reader: they",
        ),
    ]


def _webhook(cfg: Config, p: str) -> list[Acl]:
    t = cfg.topics
    r = "webhook"
    return [
        _acl(r, p, "topic", t.alerts, "Read", "read alert states to POST them"),
        _acl(
            r,
            p,
            "group",
            cfg.webhook.consumer_group,
            "Read",
            "the sink's own consumer group: join it and commit what was delivered",
        ),
        _acl(
            r,
            p,
            "topic",
            t.deadletter,
            "Write",
            "dead-letter an alert state the endpoint never accepted (webhook_failed)",
        ),
    ]


def _auditor(cfg: Config, p: str) -> list[Acl]:
    t = cfg.topics
    r = "auditor"
    topics = topic_names(cfg)
    kept = [t.archive, t.deadletter, *([topics["ledger"]] if "ledger" in topics else [])]
    acls = [
        _acl(r, p, "topic", t.archive, "Read", "producer completeness and gaps; reconciliation"),
        _acl(r, p, "topic", t.deadletter, "Read", "dead-letter rate; reconciliation"),
    ]
    if "ledger" in topics:
        acls.append(_acl(r, p, "topic", topics["ledger"], "Read", "each input partition's ledger"))
    acls += [
        _acl(
            r,
            p,
            "topic",
            t.detect,
            "Read",
            "reconciliation: forwarded events processed or still waiting",
        ),
        _acl(
            r,
            p,
            "topic",
            t.events,
            "Describe",
            "reconciliation: the input's end offsets (no Read: the check needs no event)",
        ),
        *(
            _acl(
                r,
                p,
                "topic",
                name,
                "DescribeConfigs",
                "check the topic keeps the audit record (compaction, retention, replication)",
            )
            for name in kept
        ),
        _throwaway_group(r, p, COMPLIANCE_GROUP_PREFIX, "the compliance check's readers"),
    ]
    return acls


def _reporter(cfg: Config, p: str) -> list[Acl]:
    t = cfg.topics
    r = "reporter"
    return [
        _acl(r, p, "topic", t.archive, "Read", "events per machine and group, new resources"),
        _acl(r, p, "topic", t.alerts, "Read", "the pages of the period"),
        _acl(r, p, "topic", t.control, "Read", "which pages were acknowledged, and when"),
        _throwaway_group(r, p, DIGEST_GROUP_PREFIX, "the digest's readers"),
        _reader_group(r, p),
    ]


_ROLE_ACLS = {
    "producer": _producer,
    "worker": _worker,
    "oncall": _oncall,
    "webhook": _webhook,
    "auditor": _auditor,
    "reporter": _reporter,
}


# ---- rendering -------------------------------------------------------------------------------

_HEADER = """\
The auditwatch ACL set (`auditwatch acls show`): ALLOW bindings only; a broker with an
authorizer (StandardAuthorizer) and allow.everyone.if.no.acl.found=false denies the rest.
Apply with `auditwatch acls apply` (idempotent) as an admin principal, or run these lines.
"""

_KAFKA_ACLS_FLAG = {
    "topic": "--topic",
    "group": "--group",
    "transactional-id": "--transactional-id",
}


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in text.splitlines())


def render_kafka_acls(acls: Iterable[Acl]) -> str:
    """A shell script of `kafka-acls.sh --add` lines, each after the reason for it."""
    lines = [
        "#!/bin/sh\n",
        _comment(_HEADER),
        "# BOOTSTRAP: host:port; ADMIN_CONFIG: a client properties file of an admin principal;\n"
        "# KAFKA_ACLS: the kafka-acls.sh of a Kafka distribution (default: on the PATH).\n",
        "set -eu\n",
        ': "${BOOTSTRAP:?set BOOTSTRAP to the broker list}"\n',
        ': "${ADMIN_CONFIG:?set ADMIN_CONFIG to an admin client properties file}"\n',
        'KAFKA_ACLS="${KAFKA_ACLS:-kafka-acls.sh}"\n',
        "\n",
        "acl() {\n",
        '  "$KAFKA_ACLS" --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" '
        '--add "$@"\n',
        "}\n",
    ]
    role = None
    for a in acls:
        if a.role != role:
            role = a.role
            lines.append(f"\n# ---- {role}: {a.principal}\n")
        args = [
            "--allow-principal",
            a.principal,
            "--allow-host",
            a.host,
            "--operation",
            a.operation,
        ]
        args += [_KAFKA_ACLS_FLAG[a.resource_type], a.resource_name]
        args += ["--resource-pattern-type", a.pattern_type]
        lines.append(f"# {a.why}\n")
        lines.append("acl " + " ".join(shlex.quote(x) for x in args) + "\n")
    return "".join(lines)


def as_dicts(acls: Iterable[Acl]) -> list[dict[str, Any]]:
    return [
        {
            "role": a.role,
            "principal": a.principal,
            "resource_type": a.resource_type,
            "resource_name": a.resource_name,
            "pattern_type": a.pattern_type,
            "operation": a.operation,
            "permission": "allow",
            "host": a.host,
            "why": a.why,
        }
        for a in acls
    ]


def render_yaml(acls: Iterable[Acl]) -> str:
    body = yaml.safe_dump({"acls": as_dicts(acls)}, sort_keys=False, width=100, allow_unicode=True)
    return _comment(_HEADER) + body


# ---- applying --------------------------------------------------------------------------------


@dataclass
class ApplyResult:
    added: list[Acl]
    present: list[Acl]
    # Bindings the principals hold that are not in the set: removed with `prune`, else kept.
    extra: list[tuple[str, str, str, str, str, str, str]]
    pruned: bool


def _binding(a: Acl) -> Any:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return AclBinding(
        ResourceType[_RESOURCE_ENUM[a.resource_type]],
        a.resource_name,
        ResourcePatternType[a.pattern_type.upper()],
        a.principal,
        a.host,
        AclOperation[_OPERATION_ENUM[a.operation]],
        AclPermissionType.ALLOW,
    )


_RESOURCE_ENUM = {
    "topic": "TOPIC",
    "group": "GROUP",
    "transactional-id": "TRANSACTIONAL_ID",
}
_OPERATION_ENUM = {
    "Read": "READ",
    "Write": "WRITE",
    "Describe": "DESCRIBE",
    "DescribeConfigs": "DESCRIBE_CONFIGS",
}
# Bindings read back may name the cluster (confluent-kafka calls it BROKER).
_RESOURCE_NAME = {**{v: k for k, v in _RESOURCE_ENUM.items()}, "BROKER": "cluster"}
_OPERATION_NAME = {v: k for k, v in _OPERATION_ENUM.items()}


def _binding_key(b: Any) -> tuple[str, str, str, str, str, str, str]:
    """A binding read from the broker, in `Acl.key()` terms plus its permission."""
    rtype = _RESOURCE_NAME.get(b.restype.name, b.restype.name.lower())
    op = _OPERATION_NAME.get(b.operation.name, b.operation.name)
    return (
        b.principal,
        rtype,
        b.name,
        b.resource_pattern_type.name.lower(),
        op,
        b.host,
        b.permission_type.name.lower(),
    )


def principal_filter(principal: str) -> Any:
    """An AclBindingFilter matching every binding of `principal`."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        principal,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def held_by(admin: Any, principal: str, timeout: float = 30.0) -> list[Any]:
    """Every binding of `principal` on the broker."""
    flt = principal_filter(principal)
    return list(admin.describe_acls(flt, request_timeout=timeout).result())


def apply_acls(
    admin: Any, acls: list[Acl], prune: bool = False, timeout: float = 30.0
) -> ApplyResult:
    """Create the bindings of `acls` that are missing (creating an existing one would be a
    no-op for Kafka too; here it is reported as present). With `prune`, delete the bindings
    the same principals hold beyond the set, so that each runs with exactly its set."""
    wanted = {(*a.key(), "allow"): a for a in acls}
    held: dict[tuple[str, str, str, str, str, str, str], Any] = {}
    for principal in dict.fromkeys(a.principal for a in acls):
        for b in held_by(admin, principal, timeout):
            held[_binding_key(b)] = b
    missing = [a for k, a in wanted.items() if k not in held]
    present = [a for k, a in wanted.items() if k in held]
    extra = sorted(k for k in held if k not in wanted)
    if missing:
        futures = admin.create_acls([_binding(a) for a in missing], request_timeout=timeout)
        for fut in futures.values():
            fut.result()
    if prune and extra:
        from confluent_kafka.admin import AclBindingFilter

        filters = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in (held[k] for k in extra)
        ]
        for fut in admin.delete_acls(filters, request_timeout=timeout).values():
            fut.result()
    return ApplyResult(missing, present, extra, prune)
