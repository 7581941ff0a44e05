"""`auditwatch acls show|apply`: the Kafka ACL set of a deployment, printed or applied.

The set itself (roles, bindings and why each exists) is `streams.ops.acls`; this module picks
the roles and principals from the command line, prints the set as `kafka-acls.sh` lines or
YAML, or applies it through the admin client as the config's principal (an admin).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from streams.cli.errors import UsageError
from streams.ops.acls import (
    ROLES,
    Acl,
    ApplyResult,
    acl_set,
    default_principal,
    render_kafka_acls,
    render_yaml,
)
from streams.ops.config import Config, load_config

HELP = "print or apply the Kafka ACLs of each role (producer, worker, on-call...)"


def principals_from_args(roles: list[str] | None, given: list[str] | None) -> dict[str, str]:
    """role -> principal. `given` holds `ROLE=TYPE:NAME`, or one `TYPE:NAME` when exactly one
    role is chosen; a role without one gets `User:auditwatch-<role>`."""
    chosen = list(dict.fromkeys(roles or ROLES))
    out = {r: default_principal(r) for r in chosen}
    for item in given or []:
        role, sep, principal = item.partition("=")
        if not sep:
            if len(chosen) != 1:
                raise UsageError(
                    f"--principal {item}: say which role it is for (ROLE={item}), or choose "
                    "one role with --role"
                )
            role, principal = chosen[0], item
        if role not in ROLES:
            raise UsageError(
                f"--principal {item}: unknown role {role!r}; roles: {', '.join(ROLES)}"
            )
        if role not in out:
            raise UsageError(
                f"--principal {item}: role {role} is not among --role {', '.join(chosen)}"
            )
        out[role] = principal
    return out


def _acls(args: argparse.Namespace) -> tuple[Config, list[Acl]]:
    cfg = load_config(args.config)
    principals = principals_from_args(args.role, args.principal)
    try:
        return cfg, acl_set(cfg, principals)
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_show(args: argparse.Namespace) -> int:
    _, acls = _acls(args)
    sys.stdout.write(render_yaml(acls) if args.format == "yaml" else render_kafka_acls(acls))
    return 0


def render_apply(res: ApplyResult) -> str:
    lines = []
    for word, items in (("added  ", res.added), ("present", res.present)):
        for a in items:
            lines.append(
                f"{word} {a.principal} {a.operation} {a.resource_type} {a.resource_name}"
                + (" (prefixed)" if a.pattern_type == "prefixed" else "")
            )
    for principal, rtype, name, pattern, op, _host, permission in res.extra:
        what = "removed" if res.pruned else "extra  "
        lines.append(
            f"{what} {principal} {permission} {op} {rtype} {name}"
            + (" (prefixed)" if pattern == "prefixed" else "")
        )
    lines.append(
        f"{len(res.added)} added, {len(res.present)} already present, "
        + (
            f"{len(res.extra)} not in the set removed"
            if res.pruned
            else f"{len(res.extra)} not in the set left as they are (--prune removes them)"
        )
    )
    return "\n".join(lines)


def cmd_apply(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.ops.acls import apply_acls
    from streams.ops.broker import require_broker

    cfg, acls = _acls(args)
    require_broker(cfg)
    admin = AdminClient(cfg.kafka.client_config())
    try:
        res = apply_acls(admin, acls, prune=args.prune)
    except KafkaException as e:
        err = e.args[0]
        if err.name() == "SECURITY_DISABLED":
            raise RuntimeError(
                f"the broker at {cfg.kafka.bootstrap()} has no authorizer "
                "(authorizer.class.name), so it keeps no ACLs: configure the "
                "StandardAuthorizer first"
            ) from None
        if err.name() == "CLUSTER_AUTHORIZATION_FAILED":
            raise RuntimeError(
                "the config's principal may not manage ACLs (it needs Alter and Describe on "
                "the cluster): apply the set as an admin principal"
            ) from None
        raise
    print(render_apply(res))
    return 0


def add_parser(sub: Any) -> None:
    """Register `auditwatch acls show|apply`."""
    p = sub.add_parser(
        "acls",
        help=HELP,
        # Raw, for the examples below; the description is wrapped here instead.
        description=textwrap.fill(
            "The Kafka ACLs each role needs, derived from the config (topic names, "
            "consumer groups, transactional ids), and nothing more: producer (writes the input "
            "topic only), worker (`auditwatch run`: its topics, group and transactional ids; the "
            "only writer of the archive), oncall (reads alerts and dead letters, writes the "
            "control topic), webhook (reads alerts in its group, dead-letters what it cannot "
            "deliver), auditor (`compliance check`: reads the archive, dead letters, ledger and "
            "repartition topic and their configs), reporter (`report`: reads the archive, alerts "
            "and the control topic). Topics "
            "are created by an admin (`auditwatch topics create`), not by any role. `show` "
            "prints the set with the reason for each ACL; `apply` creates the missing ones on "
            "the broker as the config's principal, which must be allowed to manage ACLs.",
            width=90,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  auditwatch acls show --format yaml\n"
        "  auditwatch acls show --role worker --principal User:aw-prod-worker\n"
        "  auditwatch acls apply --principal worker=User:aw-worker "
        "--principal producer=User:rsyslog\n"
        "\nExit status: 0 done; 1 the broker refused or could not be reached; 2 a usage or "
        "config error.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--role",
            action="append",
            choices=ROLES,
            help="only this role (repeatable; default: every role)",
        )
        q.add_argument(
            "--principal",
            action="append",
            metavar="[ROLE=]TYPE:NAME",
            help="the principal of a role, e.g. worker=User:aw-worker (repeatable); with one "
            "--role, TYPE:NAME alone. Default: User:auditwatch-<role>",
        )
        q.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: defaults)")

    s = actions.add_parser(
        "show",
        help="print the ACL set with the reason for each ACL",
        description="Print the ACL set: a shell script of `kafka-acls.sh --add` lines "
        "(default) or YAML, each ACL with the reason it is needed. Needs no broker.",
    )
    common(s)
    s.add_argument(
        "--format",
        choices=("kafka-acls", "yaml"),
        default="kafka-acls",
        help="kafka-acls (default): kafka-acls.sh lines; yaml: one mapping per ACL",
    )
    s.set_defaults(func=cmd_show)

    a = actions.add_parser(
        "apply",
        help="create the missing ACLs on the broker (idempotent)",
        description="Create the ACLs of the set that the broker does not have yet, as the "
        "config's principal (an admin: Alter and Describe on the cluster). Running it again "
        "changes nothing. ACLs the same principals hold beyond the set are listed and kept, "
        "or removed with --prune, so that each principal holds exactly its set.",
    )
    common(a)
    a.add_argument(
        "--prune",
        action="store_true",
        help="also delete the ACLs these principals hold that are not in the set",
    )
    a.set_defaults(func=cmd_apply)
