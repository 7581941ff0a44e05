"""Input adapters (streams.tools.readers): CloudTrail and Kubernetes audit logs mapped to
our event form.

No Kafka. The CloudTrail tests read the real datasets in ../shared/datasets (see its README),
read-only; they are skipped when that folder is absent.
"""

from __future__ import annotations

import gzip
import io
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import BundledSchemas, decode_wire
from schemas.event import AuditEvent, Limits, event_from_mapping, parse_timestamp_us
from streams.ops.config import load_config
from streams.processor import MemoryStore, Origin, Processor
from streams.tools.readers import FORMATS, RawRecord, read_records
from streams.tools.replay import replay

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
OTRF = DATASETS / "otrf" / "raw" / "ec2_proxy_s3_exfiltration_2020-09-14011940.json"
STRATUS = DATASETS / "stratus"
STRATUS_FILES = sorted(STRATUS.glob("*.json")) if STRATUS.is_dir() else []

needs_datasets = pytest.mark.skipif(
    not OTRF.is_file() or not STRATUS_FILES,
    reason=f"real datasets not found under {DATASETS} (the shared datasets folder is absent)",
)

STOLEN_ROLE = "arn:aws:iam::123456789123:role/MordorNginxStack-BankingWAFRole-9S3E0UAE1MM0"
PEDRO = "arn:aws:iam::123456789123:user/pedro"
EXFIL_BUCKET = "mordors3stack-s3bucket-llp2yingx64a"


def mappings(paths: list[Path], fmt: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in read_records([str(p) for p in paths], fmt)]


def validated(records: list[dict[str, Any]]) -> list[AuditEvent]:
    """Every record through the processor's validation. Processing time is the latest event
    time, so old datasets pass the max-future check without relaxing it."""
    now_ms = max(parse_timestamp_us(r["timestamp"]) for r in records) // 1000
    return [event_from_mapping(r, Limits(), now_ms) for r in records]


def cloudtrail_events(path: Path) -> list[AuditEvent]:
    return validated(mappings([path], "cloudtrail"))


def test_formats_are_the_four_adapters() -> None:
    assert FORMATS == ("jsonl", "csv", "cloudtrail", "k8s-audit")
    with pytest.raises(ValueError, match="unknown format"):
        list(read_records([], "syslog"))


# --- CloudTrail on real data ---------------------------------------------------------------


@needs_datasets
def test_otrf_exfiltration_maps_every_record() -> None:
    events = cloudtrail_events(OTRF)
    assert len(events) == 103
    assert len({e.event_id for e in events}) == 103
    assert all(e.source == "cloudtrail" and not e.event_id_derived for e in events)
    by_machine = Counter(e.machine_id for e in events)
    # 87 console calls by pedro, 11 by the stolen role, 5 by EC2 itself assuming roles.
    assert by_machine == {PEDRO: 87, STOLEN_ROLE: 11, "ec2.amazonaws.com": 5}
    assert {e.identity_type for e in events if e.machine_id == PEDRO} == {"IAMUser"}


@needs_datasets
def test_otrf_stolen_role_sessions_fold_into_the_role() -> None:
    stolen = [e for e in cloudtrail_events(OTRF) if "BankingWAFRole" in e.machine_id]
    assert len(stolen) == 11
    assert {e.machine_id for e in stolen} == {STOLEN_ROLE}
    assert {e.identity_type for e in stolen} == {"AssumedRole"}
    assert {e.attributes["session"] for e in stolen} == {"i-0317f6c6b66ae9c40"}
    reads = [
        e
        for e in stolen
        if e.operation in ("s3.amazonaws.com:GetObject", "s3.amazonaws.com:ListObjects")
    ]
    assert len(reads) == 9
    assert all(e.resource.startswith(f"s3://{EXFIL_BUCKET}") for e in reads)
    assert Counter(e.operation for e in stolen)["s3.amazonaws.com:ListBuckets"] == 2
    assert all("aws-cli/" in e.attributes["userAgent"] for e in stolen)
    assert {e.source_ip for e in stolen} != {None}


@needs_datasets
def test_otrf_timestamps_come_from_the_logstash_field() -> None:
    # This export (Logstash) moved eventTime to @timestamp: 00:44:20 to 01:13:20 UTC,
    # not quite in time order.
    raw = [orjson.loads(line) for line in OTRF.read_bytes().splitlines() if line.strip()]
    assert not any("eventTime" in r for r in raw)
    events = cloudtrail_events(OTRF)
    assert [e.ts_us // 1000 for e in events] == [
        parse_timestamp_us(r["@timestamp"]) // 1000 for r in raw
    ]
    assert min(events, key=lambda e: e.ts_us).time.isoformat() == "2020-09-14T00:44:20+00:00"


@needs_datasets
@pytest.mark.parametrize("path", STRATUS_FILES, ids=lambda p: p.name)
def test_every_stratus_record_validates(path: Path) -> None:
    raw = orjson.loads(path.read_bytes())
    events = cloudtrail_events(path)
    assert len(events) == len(raw)
    assert [e.event_id for e in events] == [r["eventID"] for r in raw]
    for e, r in zip(events, raw, strict=True):
        assert e.operation == f"{r['eventSource']}:{r['eventName']}"
        assert e.identity_type == r["userIdentity"]["type"]
        assert (e.outcome == "SUCCESS") == (r.get("errorCode") is None)


@needs_datasets
def test_stratus_figures() -> None:
    assert sum(len(cloudtrail_events(p)) for p in STRATUS_FILES) == 310


@needs_datasets
def test_stratus_get_password_data_is_mostly_refused() -> None:
    events = cloudtrail_events(STRATUS / "aws.credential-access.ec2-get-password-data.json")
    assert len(events) == 34
    # Client.UnauthorizedOperation (30) and AccessDenied (2): refused, not broken.
    assert Counter(e.outcome for e in events) == {"DENIED": 32, "SUCCESS": 2}
    role = "arn:aws:iam::457448411975:role/stratus-red-team-ec2-get-password-data-role"
    calls = [e for e in events if e.operation == "ec2.amazonaws.com:GetPasswordData"]
    assert len(calls) == 30
    assert {e.machine_id for e in calls} == {role}
    assert len({e.attributes["session"] for e in calls}) == 1
    assert all(e.resource.startswith("ec2://i-") for e in calls)


@needs_datasets
def test_stratus_secrets_burst_names_each_secret() -> None:
    events = cloudtrail_events(
        STRATUS / "aws.credential-access.secretsmanager-retrieve-secrets.json"
    )
    secrets = {e.resource for e in events if e.operation.endswith(":GetSecretValue")}
    assert len(secrets) == 20
    # Given as ARNs: cut to the secret's name, without the random suffix Secrets Manager adds.
    assert "secretsmanager://stratus-red-team-retrieve-secret-18" in secrets
    assert {e.machine_id for e in events} == {"arn:aws:iam::903144391865:user/christophe"}


@needs_datasets
def test_stratus_resource_names() -> None:
    def resources(name: str) -> set[str]:
        return {e.resource for e in cloudtrail_events(STRATUS / name)}

    assert resources("aws.persistence.iam-backdoor-user.json") == {
        "iam://user/stratus-red-team-backdoor-u-user"
    }
    assert resources("aws.persistence.iam-backdoor-role.json") == {
        "iam://role/stratus-red-team-backdoor-r-role"
    }
    assert resources("aws.defense-evasion.cloudtrail-stop.json") == {
        "cloudtrail://stratus-red-team-ct-stop-trail-buykxbqejv"
    }
    assert resources("aws.exfiltration.ec2-share-ebs-snapshot.json") == {
        "ec2://snap-041993b54a9b3af6f"
    }
    # No resource named: the service itself.
    assert resources("aws.initial-access.console-login-without-mfa.json") == {
        "signin.amazonaws.com"
    }
    ssm = cloudtrail_events(
        STRATUS / "aws.credential-access.ssm-retrieve-securestring-parameters.json"
    )
    batch = [e for e in ssm if e.operation.endswith(":GetParameters")]
    assert batch and all(
        e.resource.startswith("ssm://credentials/stratus-red-team/") for e in batch
    )
    assert all(int(e.attributes["resource_count"]) > 1 for e in batch)


@needs_datasets
def test_cloudtrail_file_shapes_give_the_same_events(tmp_path: Path) -> None:
    source = STRATUS / "aws.credential-access.ec2-get-password-data.json"
    records = orjson.loads(source.read_bytes())
    wrapped = tmp_path / "trail.json"
    wrapped.write_bytes(orjson.dumps({"Records": records}, option=orjson.OPT_INDENT_2))
    lines = tmp_path / "trail.jsonl"
    lines.write_bytes(b"\n" + b"\n".join(orjson.dumps(r) for r in records) + b"\n\n")
    gz = tmp_path / "trail.json.gz"
    gz.write_bytes(gzip.compress(orjson.dumps({"Records": records})))
    lines_of_wrappers = tmp_path / "trails.jsonl"  # several delivered files concatenated
    lines_of_wrappers.write_bytes(
        orjson.dumps({"Records": records[:10]}) + b"\n" + orjson.dumps({"Records": records[10:]})
    )
    expected = mappings([source], "cloudtrail")
    assert len(expected) == 34
    for path in (wrapped, lines, gz, lines_of_wrappers):
        assert mappings([path], "cloudtrail") == expected, path.name
    assert [r.line for r in read_records([str(lines)], "cloudtrail")] == list(range(2, 36))
    assert {r.original_format for r in read_records([str(gz)], "cloudtrail")} == {"CLOUDTRAIL"}


# --- CloudTrail mapping rules --------------------------------------------------------------


def ct_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventID": "e-1",
        "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "s3.amazonaws.com",
        "eventName": "GetObject",
        "sourceIPAddress": "10.0.0.5",
        "userAgent": "aws-sdk-go/1.44 " + "x" * 400,
        "awsRegion": "eu-west-1",
        "recipientAccountId": "111122223333",
        "userIdentity": {
            "type": "AssumedRole",
            "arn": "arn:aws:sts::111122223333:assumed-role/ingest/i-0abc",
            "principalId": "AROAEXAMPLE:i-0abc",
        },
        "requestParameters": {"bucketName": "invoices", "key": "2026/01/inv-1.pdf"},
    }
    record.update(changes)
    return record


def map_one(tmp_path: Path, record: Any, fmt: str = "cloudtrail") -> dict[str, Any]:
    path = tmp_path / "one.json"
    path.write_bytes(orjson.dumps([record]))
    (out,) = mappings([path], fmt)
    return out


def test_cloudtrail_event_fields(tmp_path: Path) -> None:
    ev = map_one(tmp_path, ct_record())
    assert ev == {
        "event_id": "e-1",
        "timestamp": "2026-01-01T00:00:00Z",
        "machine_id": "arn:aws:iam::111122223333:role/ingest",
        "resource": "s3://invoices/2026",
        "operation": "s3.amazonaws.com:GetObject",
        "outcome": "SUCCESS",
        "source_ip": "10.0.0.5",
        "identity_type": "AssumedRole",
        "source": "cloudtrail",
        "attributes": {
            "userAgent": ("aws-sdk-go/1.44 " + "x" * 400)[:256],
            "awsRegion": "eu-west-1",
            "recipientAccountId": "111122223333",
            "session": "i-0abc",
        },
    }


@pytest.mark.parametrize(
    ("identity", "machine_id", "session"),
    [
        (
            {"type": "AssumedRole", "arn": "arn:aws-cn:sts::1:assumed-role/app/botocore-session-9"},
            "arn:aws-cn:iam::1:role/app",
            "botocore-session-9",
        ),
        ({"type": "IAMUser", "arn": "arn:aws:iam::1:user/ci"}, "arn:aws:iam::1:user/ci", None),
        ({"type": "Root", "arn": "arn:aws:iam::1:root"}, "arn:aws:iam::1:root", None),
        ({"type": "AWSService", "invokedBy": "lambda.amazonaws.com"}, "lambda.amazonaws.com", None),
        ({"type": "AWSAccount", "principalId": "AIDAX", "accountId": "2"}, "AIDAX", None),
        ({"type": "Unknown"}, "Unknown", None),
        ({"type": "AssumedRole", "principalId": "AROAEXAMPLE:sess-2"}, "AROAEXAMPLE", "sess-2"),
    ],
)
def test_cloudtrail_identities(
    tmp_path: Path, identity: dict[str, str], machine_id: str, session: str | None
) -> None:
    ev = map_one(tmp_path, ct_record(userIdentity=identity))
    assert ev["machine_id"] == machine_id
    assert ev["identity_type"] == identity["type"]
    assert ev["attributes"].get("session") == session


@pytest.mark.parametrize(
    ("source", "params", "resource"),
    [
        ("s3.amazonaws.com", {"bucketName": "b", "key": "top.txt"}, "s3://b"),
        ("s3.amazonaws.com", {"bucketName": "b", "prefix": "logs/2026/"}, "s3://b/logs"),
        ("s3.amazonaws.com", {"bucketName": "b", "prefix": ""}, "s3://b"),
        (
            "secretsmanager.amazonaws.com",
            {"secretId": "prod/db-password"},
            "secretsmanager://prod/db-password",
        ),
        (
            "secretsmanager.amazonaws.com",
            {"secretId": "arn:aws:secretsmanager:eu-west-1:1:secret:prod/db-password-AbC123"},
            "secretsmanager://prod/db-password",
        ),
        (
            "lambda.amazonaws.com",
            {"functionName": "arn:aws:lambda:eu-west-1:1:function:f:prod"},
            "lambda://f",
        ),
        ("lambda.amazonaws.com", {"functionName": "f"}, "lambda://f"),
        (
            "kms.amazonaws.com",
            {"keyId": "arn:aws:kms:eu-west-1:1:key/1234-abcd"},
            "kms://1234-abcd",
        ),
        (
            "sqs.amazonaws.com",
            {"queueUrl": "https://sqs.eu-west-1.amazonaws.com/1/jobs"},
            "sqs://jobs",
        ),
        ("sns.amazonaws.com", {"topicArn": "arn:aws:sns:eu-west-1:1:alerts"}, "sns://alerts"),
        ("dynamodb.amazonaws.com", {"tableName": "orders"}, "dynamodb://orders"),
        ("ec2.amazonaws.com", {"instancesSet": {"items": [{"instanceId": "i-1"}]}}, "ec2://i-1"),
        ("logs.amazonaws.com", {"logGroupName": "/aws/lambda/f"}, "logs://aws/lambda/f"),
        (
            "iam.amazonaws.com",
            {"userName": "ci", "policyArn": "arn:aws:iam::aws:policy/Admin"},
            "iam://user/ci",
        ),
        (
            "sts.amazonaws.com",
            {"roleArn": "arn:aws:iam::1:role/deploy", "roleSessionName": "x"},
            "sts://role/deploy",
        ),
        ("sts.amazonaws.com", None, "sts.amazonaws.com"),
    ],
)
def test_cloudtrail_resources(
    tmp_path: Path, source: str, params: dict[str, Any] | None, resource: str
) -> None:
    ev = map_one(tmp_path, ct_record(eventSource=source, requestParameters=params))
    assert ev["resource"] == resource


def test_cloudtrail_resource_from_resources_arn(tmp_path: Path) -> None:
    ev = map_one(
        tmp_path,
        ct_record(
            eventSource="kms.amazonaws.com",
            requestParameters={"encryptionContext": {}},
            resources=[{"ARN": "arn:aws:kms:eu-west-1:1:key/k-1", "type": "AWS::KMS::Key"}],
        ),
    )
    assert ev["resource"] == "kms://key/k-1"


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [
        ({"errorCode": None}, "SUCCESS"),
        ({"errorCode": "AccessDenied"}, "DENIED"),
        ({"errorCode": "AccessDeniedException"}, "DENIED"),
        ({"errorCode": "Client.UnauthorizedOperation"}, "DENIED"),
        ({"errorCode": "Forbidden"}, "DENIED"),
        ({"errorCode": "NoSuchKey"}, "FAILURE"),
        ({"errorCode": "ThrottlingException"}, "FAILURE"),
        ({"responseElements": {"ConsoleLogin": "Failure"}}, "DENIED"),
    ],
)
def test_cloudtrail_outcomes(tmp_path: Path, changes: dict[str, Any], outcome: str) -> None:
    ev = map_one(tmp_path, ct_record(**changes))
    assert ev["outcome"] == outcome
    assert ev["attributes"].get("errorCode") == changes.get("errorCode")


# --- unmappable records reach the dead letters ---------------------------------------------


def test_unmappable_cloudtrail_records_are_yielded(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    no_time = ct_record(eventID="e-2")
    del no_time["eventTime"]
    no_identity = ct_record(eventID="e-3")
    del no_identity["userIdentity"]
    path.write_bytes(
        b"\n".join(
            [
                orjson.dumps(ct_record()),
                b'{"eventID": "e-cut", "eventTime": "2026-',  # a truncated line
                b'"a string, not a record"',
                orjson.dumps(no_time),
                orjson.dumps(no_identity),
            ]
        )
    )
    records = list(read_records([str(path)], "cloudtrail"))
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[1].value == b'{"eventID": "e-cut", "eventTime": "2026-'
    assert records[2].value == b'"a string, not a record"'

    processor = Processor(load_config(), BundledSchemas(), clock=lambda: 1_767_225_660_000)
    reasons = []
    for r in records:
        outputs, _ = processor.ingest(r.value, None, Origin(r.path, None, r.line), MemoryStore())
        letters = [decode_wire(o.value, "dead_letter") for o in outputs if o.kind == "deadletter"]
        reasons += [(d["reason"], d["message"]) for d in letters]
    assert [reason for reason, _ in reasons] == [
        "json_decode_error",
        "bad_magic_byte",  # JSON, but not an object
        "missing_field",
        "missing_field",
    ]
    assert "timestamp" in reasons[2][1] and "machine_id" in reasons[3][1]


@needs_datasets
def test_replay_cloudtrail_accounts_for_every_record() -> None:
    path = STRATUS / "aws.credential-access.ec2-get-password-data.json"
    result = replay(load_config(), [str(path)], io.BytesIO(), fmt="cloudtrail")
    assert result.records == 34
    assert result.records == result.events + sum(result.dead_letters.values()) + result.duplicates
    assert result.events == 34 and not result.dead_letters


def test_replay_counts_broken_cloudtrail_records_as_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "trail.json"
    no_time = ct_record(eventID="e-2")
    del no_time["eventTime"]
    path.write_bytes(orjson.dumps({"Records": [ct_record(), no_time, 42]}))
    result = replay(load_config(), [str(path)], io.BytesIO(), fmt="cloudtrail")
    assert (result.records, result.events) == (3, 1)
    # JSON, but not an object: an invalid event, not a byte the decoder could not place.
    assert result.dead_letters == {"missing_field": 1, "invalid_field": 1}


# --- Kubernetes audit ----------------------------------------------------------------------


def k8s_event(audit_id: str, stage: str = "ResponseComplete", **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": stage,
        "requestURI": "/api/v1/namespaces/payments/secrets/db-creds",
        "verb": "get",
        "user": {
            "username": "system:serviceaccount:payments:api",
            "uid": "6b1e5c0e-0d3a-4d5c-9f0e-2f1f7a8c4b21",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:payments",
                "system:authenticated",
            ],
        },
        "sourceIPs": ["10.244.1.17", "10.0.0.1"],
        "userAgent": "payments-api/v1.4.2 (linux/amd64) kubernetes/$Format",
        "objectRef": {
            "resource": "secrets",
            "namespace": "payments",
            "name": "db-creds",
            "apiVersion": "v1",
        },
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-01-01T00:00:00.123456Z",
        "stageTimestamp": "2026-01-01T00:00:00.130002Z",
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }
    if stage in ("RequestReceived",):
        del event["responseStatus"]
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


K8S_LOG = [
    k8s_event("a-1", "RequestReceived"),  # the same request as a-1 below
    k8s_event("a-1"),
    k8s_event(
        "a-2",
        verb="list",
        requestURI="/api/v1/namespaces/kube-system/secrets",
        objectRef={"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"},
        responseStatus={"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
        annotations={"authorization.k8s.io/decision": "forbid"},
    ),
    k8s_event(
        "a-3",
        verb="get",
        user={"username": "system:node:worker-1", "groups": ["system:nodes"]},
        requestURI="/api/v1/nodes/worker-1",
        objectRef={"resource": "nodes", "name": "worker-1", "apiVersion": "v1"},
        sourceIPs=["192.168.1.21"],
    ),
    k8s_event(
        "a-4",
        verb="create",
        user={"username": "alice@example.com"},
        requestURI="/api/v1/namespaces/payments/pods/api-7d9f/exec?command=sh",
        objectRef={
            "resource": "pods",
            "subresource": "exec",
            "namespace": "payments",
            "name": "api-7d9f",
            "apiVersion": "v1",
        },
        responseStatus={"metadata": {}, "code": 101},
    ),
    k8s_event(
        "a-5",
        verb="update",
        objectRef={
            "resource": "deployments",
            "namespace": "payments",
            "name": "api",
            "apiGroup": "apps",
            "apiVersion": "v1",
        },
        responseStatus={"metadata": {}, "code": 409, "reason": "Conflict"},
    ),
    k8s_event("a-6", "ResponseStarted", verb="watch", responseStatus={"code": 200}),
]


def test_k8s_audit_mapping(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in K8S_LOG))
    records = list(read_records([str(path)], "k8s-audit"))
    assert {r.original_format for r in records} == {"K8S_AUDIT"}
    events = [orjson.loads(r.value) for r in records]
    # a-1 once (its RequestReceived stage dropped); a-6 has no final stage: kept, last.
    assert [e["event_id"] for e in events] == ["a-1", "a-2", "a-3", "a-4", "a-5", "a-6"]
    assert [r.line for r in records] == [2, 3, 4, 5, 6, 7]
    by_id = {e["event_id"]: e for e in events}
    assert by_id["a-1"] == {
        "event_id": "a-1",
        "timestamp": "2026-01-01T00:00:00.123456Z",
        "machine_id": "system:serviceaccount:payments:api",
        "resource": "k8s://payments/secrets/db-creds",
        "operation": "get",
        "outcome": "SUCCESS",
        "source_ip": "10.244.1.17",
        "identity_type": "serviceaccount",
        "source": "k8s-audit",
        "attributes": {
            "userAgent": "payments-api/v1.4.2 (linux/amd64) kubernetes/$Format",
            "stage": "ResponseComplete",
            "code": "200",
        },
    }
    assert (by_id["a-2"]["resource"], by_id["a-2"]["outcome"]) == (
        "k8s://kube-system/secrets",
        "DENIED",
    )
    assert by_id["a-3"]["resource"] == "k8s://_cluster/nodes/worker-1"
    assert by_id["a-3"]["identity_type"] == "node"
    assert by_id["a-4"]["resource"] == "k8s://payments/pods/exec/api-7d9f"
    assert (by_id["a-4"]["identity_type"], by_id["a-4"]["outcome"]) == ("user", "SUCCESS")
    assert by_id["a-5"]["outcome"] == "FAILURE"
    assert by_id["a-5"]["attributes"]["apiGroup"] == "apps"
    assert by_id["a-6"]["attributes"]["stage"] == "ResponseStarted"
    now_ms = parse_timestamp_us("2026-01-01T00:00:01Z") // 1000
    assert all(event_from_mapping(e, Limits(), now_ms) for e in events)


def test_k8s_audit_event_list_and_unmappable_records(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    no_user = k8s_event("a-9")
    del no_user["user"]
    path.write_bytes(
        orjson.dumps(
            {
                "kind": "EventList",
                "apiVersion": "audit.k8s.io/v1",
                "items": [*K8S_LOG[:3], no_user, ["not", "an", "event"]],
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    records = list(read_records([str(path)], "k8s-audit"))
    assert [r.line for r in records] == [2, 3, 4, 5]
    assert records[-1].value == b'["not","an","event"]'
    assert "machine_id" not in orjson.loads(records[-2].value)
    result = replay(load_config(), [str(path)], io.BytesIO(), fmt="k8s-audit")
    assert (result.records, result.events) == (4, 2)
    # JSON, but not an object: an invalid event, not a byte the decoder could not place.
    assert result.dead_letters == {"missing_field": 1, "invalid_field": 1}


def test_k8s_stage_less_and_non_resource_requests(tmp_path: Path) -> None:
    path = tmp_path / "audit.log.gz"
    health = k8s_event(
        "h-1",
        stage=None,
        objectRef=None,
        verb="get",
        requestURI="/healthz?verbose=1",
        user={"username": "system:anonymous"},
        responseStatus={"code": 401},
    )
    path.write_bytes(gzip.compress(orjson.dumps(health) + b"\n"))
    (ev,) = mappings([path], "k8s-audit")
    assert ev["resource"] == "k8s://_nonresource/healthz"
    assert (ev["identity_type"], ev["outcome"]) == ("anonymous", "DENIED")


def test_existing_formats_unchanged(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b'{"a": 1}\n\nnot json\n')
    assert list(read_records([str(jsonl)])) == [
        RawRecord(b'{"a": 1}', str(jsonl), 1, "FILE_JSON"),
        RawRecord(b"not json", str(jsonl), 3, "FILE_JSON"),
    ]
    csv_path = tmp_path / "events.csv"
    csv_path.write_text("host,resource,extra\nweb-1,s3://b,x\n")
    (rec,) = read_records([str(csv_path)], "csv", {"machine_id": "host"})
    assert orjson.loads(rec.value) == {
        "machine_id": "web-1",
        "resource": "s3://b",
        "attributes": {"extra": "x"},
    }
    assert rec.original_format == "CSV"
