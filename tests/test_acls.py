"""The ACL set without a broker: derived from the config, least privilege, shipped in deploy/.

tests/test_acls_kafka.py proves the same set on a broker with the StandardAuthorizer."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli.acls import principals_from_args
from streams.cli.errors import UsageError
from streams.cli.main import main
from streams.ops.acls import (
    COMPLIANCE_GROUP_PREFIX,
    CONTROL_GROUP_PREFIX,
    DIGEST_GROUP_PREFIX,
    READER_GROUP_PREFIX,
    ROLES,
    WORKER_TOPIC_OPS,
    acl_set,
    as_dicts,
    default_principal,
    render_kafka_acls,
    render_yaml,
    topic_names,
)
from streams.ops.config import Config, load_config
from streams.ops.topics import topic_specs
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "acls"


def by_role(cfg: Config) -> dict[str, set[tuple[str, str, str, str]]]:
    out: dict[str, set[tuple[str, str, str, str]]] = {r: set() for r in ROLES}
    for a in acl_set(cfg):
        out[a.role].add((a.resource_type, a.resource_name, a.pattern_type, a.operation))
    return out


def test_every_topic_of_the_deployment_is_in_the_workers_set() -> None:
    cfg = Config()
    specs = topic_specs(cfg)
    assert {s.role for s in specs} <= set(WORKER_TOPIC_OPS), "a new topic needs worker ACLs"
    worker = by_role(cfg)["worker"]
    for s in specs:
        # `run` checks every topic's config at start.
        assert ("topic", s.name, "literal", "DescribeConfigs") in worker
        for op, _why in WORKER_TOPIC_OPS[s.role]:
            assert ("topic", s.name, "literal", op) in worker


def test_the_producer_writes_the_input_topic_and_nothing_else() -> None:
    cfg = Config()
    assert by_role(cfg)["producer"] == {("topic", cfg.topics.events, "literal", "Write")}


def test_only_the_worker_writes_the_archive_and_nobody_else_its_internal_topics() -> None:
    cfg = Config()
    internal = {cfg.topics.archive, cfg.topics.detect, cfg.state_topic, cfg.peers_topic}
    writers = {
        (a.role, a.resource_name)
        for a in acl_set(cfg)
        if a.operation == "Write" and a.resource_name in internal
    }
    assert {role for role, _ in writers} == {"worker"}
    assert {name for _, name in writers} == internal


def test_on_call_reads_and_writes_only_the_control_topic() -> None:
    cfg = Config()
    oncall = by_role(cfg)["oncall"]
    assert {(name, op) for kind, name, _p, op in oncall if kind == "topic" and op != "Read"} == {
        (cfg.topics.control, "Write")
    }
    assert ("topic", cfg.topics.alerts, "literal", "Read") in oncall


def test_no_role_may_create_alter_or_delete_anything() -> None:
    assert {a.operation for a in acl_set(Config())} <= {
        "Read",
        "Write",
        "Describe",
        "DescribeConfigs",
    }
    # Every grant names its reason, which `show` prints with it.
    assert all(a.why for a in acl_set(Config()))


def test_names_follow_the_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"consumer_group": "prod-aw"},
                "topics": {"events": "in.audit", "archive": "keep.audit", "control": "oc"},
                "webhook": {"consumer_group": "prod-hook"},
            }
        )
    )
    cfg = load_config(path)
    roles = by_role(cfg)
    assert ("topic", "in.audit", "literal", "Read") in roles["worker"]
    assert ("topic", "keep.audit", "literal", "Write") in roles["worker"]
    assert ("topic", "prod-aw.state", "literal", "Write") in roles["worker"]
    assert ("group", "prod-aw", "literal", "Read") in roles["worker"]
    assert ("group", "prod-aw.restore", "literal", "Describe") in roles["worker"]
    # exactly-once's transactional.id is `<consumer_group>-<instance id>` (streams.runtime.loop).
    assert ("transactional-id", "prod-aw-", "prefixed", "Write") in roles["worker"]
    assert ("topic", "oc", "literal", "Write") in roles["oncall"]
    assert ("group", "prod-hook", "literal", "Read") in roles["webhook"]
    assert ("topic", "keep.audit", "literal", "Read") in roles["auditor"]
    assert set(topic_names(cfg).values()) >= {"in.audit", "keep.audit", "oc", "prod-aw.peers"}


class _Captured(Exception):
    pass


def _group_id_of(monkeypatch: pytest.MonkeyPatch, module: Any, make: Any) -> str:
    """The group.id a consumer factory of `module` asks for."""
    seen: list[str] = []

    def consumer(config: dict[str, Any]) -> Any:
        seen.append(config["group.id"])
        raise _Captured

    monkeypatch.setattr(module, "Consumer", consumer)
    with pytest.raises(_Captured):
        make()
    return seen[0]


def test_the_group_acls_name_the_groups_the_code_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    import confluent_kafka

    from streams.ops import compliance
    from streams.runtime import state
    from streams.tools import digest, reading

    cfg = Config()
    group = _group_id_of(monkeypatch, reading, lambda: reading._consumer(cfg, "read_committed"))
    assert group.startswith(READER_GROUP_PREFIX)
    # This one imports Consumer inside the function that makes it.
    group = _group_id_of(monkeypatch, confluent_kafka, lambda: compliance._consumer(cfg))
    assert group.startswith(COMPLIANCE_GROUP_PREFIX)
    # The digest reads through streams.tools.reading with a prefix of its own.
    group = _group_id_of(
        monkeypatch,
        reading,
        lambda: next(iter(digest.scan_topic(cfg, "t", None, digest.Progress(None)))),
    )
    assert group.startswith(DIGEST_GROUP_PREFIX)
    restore = _group_id_of(monkeypatch, state, lambda: state.restore_consumer({}, "aw"))
    roles = by_role(cfg)
    assert restore == "aw.restore"
    assert ("group", f"{cfg.kafka.consumer_group}.restore", "literal", "Describe") in roles[
        "worker"
    ]
    assert ("group", CONTROL_GROUP_PREFIX, "prefixed", "Describe") in roles["worker"]
    assert ("group", READER_GROUP_PREFIX, "prefixed", "Describe") in roles["oncall"]


def test_principals_from_the_command_line() -> None:
    assert principals_from_args(["worker"], ["User:w1"]) == {"worker": "User:w1"}
    both = principals_from_args(["worker", "producer"], ["producer=User:rsyslog"])
    assert both == {"worker": default_principal("worker"), "producer": "User:rsyslog"}
    assert set(principals_from_args(None, None)) == set(ROLES)
    with pytest.raises(UsageError, match="say which role"):
        principals_from_args(None, ["User:x"])
    with pytest.raises(UsageError, match="unknown role"):
        principals_from_args(None, ["boss=User:x"])
    with pytest.raises(UsageError, match="not among --role"):
        principals_from_args(["worker"], ["producer=User:x"])


def test_a_malformed_principal_or_role_is_a_usage_error(capsys: Any) -> None:
    assert main(["acls", "show", "--role", "worker", "--principal", "alice"]) == 2
    assert "not of the form TYPE:NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["acls", "show", "--role", "admin"])
    assert exit_.value.code == 2


def test_show_needs_no_broker(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITWATCH_BOOTSTRAP", "127.0.0.1:1")
    assert main(["acls", "show", "--format", "yaml", "--role", "producer"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == {"acls": as_dicts(acl_set(Config(), {"producer": "User:auditwatch-producer"}))}


def test_the_script_runs_kafka_acls_once_per_acl(tmp_path: Path) -> None:
    """The shipped script, run with a stand-in kafka-acls.sh that records its arguments."""
    acls = acl_set(Config())
    script = tmp_path / "acls.sh"
    script.write_text(render_kafka_acls(acls))
    record = tmp_path / "calls"
    fake = tmp_path / "kafka-acls.sh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "BOOTSTRAP": "broker:9093",
        "ADMIN_CONFIG": "/etc/admin.properties",
        "KAFKA_ACLS": str(fake),
    }
    subprocess.run(["sh", str(script)], check=True, env=env, cwd=tmp_path)
    calls = record.read_text().splitlines()
    assert len(calls) == len(acls)
    first = acls[0]
    assert calls[0] == (
        "--bootstrap-server broker:9093 --command-config /etc/admin.properties --add "
        f"--allow-principal {first.principal} --allow-host * --operation {first.operation} "
        f"--topic {first.resource_name} --resource-pattern-type literal"
    )
    assert any(
        "--transactional-id auditwatch- --resource-pattern-type prefixed" in c for c in calls
    )
    # Without the admin's settings the script stops before any call.
    record.unlink()
    done = subprocess.run(
        ["sh", str(script)],
        env={k: v for k, v in env.items() if k != "ADMIN_CONFIG"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "ADMIN_CONFIG" in done.stderr
    assert not record.exists()


@pytest.mark.parametrize(("file", "fmt"), [("acls.yaml", "yaml"), ("kafka-acls.sh", "kafka-acls")])
def test_deploy_ships_the_set_of_the_default_config(
    file: str, fmt: str, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/acls/ is `auditwatch acls show` of the default config; when the set changes,
    regenerate it as deploy/acls/README.md says."""
    monkeypatch.chdir(ROOT)
    assert main(["acls", "show", "--format", fmt]) == 0
    assert (DEPLOY / file).read_text() == capsys.readouterr().out
    rendered = render_yaml(acl_set(Config())) if fmt == "yaml" else None
    if rendered is not None:
        assert (DEPLOY / file).read_text() == rendered
