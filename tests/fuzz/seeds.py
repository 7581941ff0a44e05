"""Writes the seed corpus (`tests/fuzz/corpus/<target>/`): a few small valid and near-valid
inputs per target, from which both fuzzers mutate. Run again after a format changes:
`.venv/bin/python -m tests.fuzz.seeds`."""

from __future__ import annotations

import hashlib
import io
import shutil
from typing import Any

import fastavro
import orjson

from schemas.alert import Alert
from schemas.codec import _HEADER, encode_dead_letter, encode_event_avro
from schemas.event import format_rfc3339_ms
from streams.ops.control import ControlRecord
from tests.fuzz.mutate import CORPUS
from tests.fuzz.targets import REGISTRY

TS = 1_795_000_000_000  # 2026-11-18
EVENT: dict[str, Any] = {
    "event_id": "e-1",
    "timestamp": format_rfc3339_ms(TS),
    "machine_id": "payments-api-7d9f8b6c4-x2k9p",
    "resource": "postgres://orders-db/public.orders",
    "operation": "SELECT",
    "outcome": "SUCCESS",
    "source_ip": "10.0.0.7",
    "identity_type": "serviceaccount",
    "source": "pg_audit",
    "attributes": {"db": "orders", "rows": "12"},
}


def _avro(ev: dict[str, Any]) -> dict[str, Any]:
    rec = {k: ev.get(k) for k in EVENT}
    rec["timestamp"] = TS
    rec["attributes"] = ev.get("attributes") or {}
    return rec


def _wire(schema_id: int, schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(0, schema_id))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def json_events() -> list[bytes]:
    bare = {k: v for k, v in EVENT.items() if k not in ("event_id", "attributes")}
    return [
        orjson.dumps(EVENT),
        orjson.dumps({**bare, "timestamp": TS}),
        orjson.dumps(
            {**bare, "timestamp": "2026-11-18T10:15:00.123456+02:00", "outcome": "denied"}
        ),
        orjson.dumps({**bare, "timestamp": str(TS), "attributes": {}}),
        orjson.dumps({**bare, "machine_id": 7}),
        b'  {"timestamp": 1.5e12}\n',
        b"[1, 2]",
    ]


def avro_events() -> list[bytes]:
    rec = _avro(EVENT)
    return [
        encode_event_avro(rec),
        encode_event_avro({**rec, "event_id": None, "attributes": {}, "source_ip": None}),
        encode_event_avro({**rec, "outcome": "DENIED", "machine_id": ""}),
        encode_event_avro({**rec, "timestamp": 1}),
    ]


def registry_events() -> list[bytes]:
    rec = _avro(EVENT)
    w = REGISTRY.writers
    return [
        *avro_events()[:2],
        _wire(1, w[1], {**rec, "extra": 5}),
        _wire(2, w[2], rec),
        _wire(3, w[3], {**rec, "machine_id": 42}),
        _wire(4, w[4], {"x": "y"}),
        _wire(5, w[5], ["a", "b"]),
        _wire(6, w[6], "text"),
        _wire(7, w[1], {**rec, "extra": None}),
        _wire(99, w[6], "unknown id"),
    ]


def cloudtrail() -> list[bytes]:
    record = {
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": "AROA:sess",
            "arn": "arn:aws:sts::123456789012:assumed-role/etl/i-0abc",
        },
        "eventTime": "2026-11-18T10:15:00Z",
        "eventSource": "s3.amazonaws.com",
        "eventName": "GetObject",
        "sourceIPAddress": "10.0.0.1",
        "userAgent": "aws-sdk-go",
        "requestParameters": {"bucketName": "data", "key": "reports/2026/x.csv"},
        "resources": [{"ARN": "arn:aws:s3:::data/reports/2026/x.csv"}],
        "eventID": "ct-1",
        "errorCode": "AccessDenied",
    }
    secret = {
        **record,
        "eventSource": "secretsmanager.amazonaws.com",
        "eventName": "GetSecretValue",
        "requestParameters": {"secretId": "arn:aws:secretsmanager:us-east-1:1:secret:db-AbC123"},
        "userIdentity": {"type": "AWSService", "invokedBy": "lambda.amazonaws.com"},
    }
    return [
        orjson.dumps({"Records": [record, secret]}),
        orjson.dumps(record) + b"\n" + orjson.dumps(secret) + b"\nnot json\n",
        orjson.dumps([record, 5, "x"], option=orjson.OPT_INDENT_2),
    ]


def k8s() -> list[bytes]:
    ev = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": "a-1",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/payments/pods/api-1/exec?command=sh",
        "verb": "create",
        "user": {"username": "system:serviceaccount:payments:api"},
        "sourceIPs": ["10.0.0.2"],
        "userAgent": "kubectl/v1.31",
        "objectRef": {
            "resource": "pods",
            "namespace": "payments",
            "name": "api-1",
            "subresource": "exec",
            "apiGroup": "",
        },
        "responseStatus": {"code": 403},
        "requestReceivedTimestamp": "2026-11-18T10:15:00.000000Z",
        "stageTimestamp": "2026-11-18T10:15:00.100000Z",
        "impersonatedUser": {"username": "admin"},
    }
    started = {**ev, "stage": "RequestReceived", "responseStatus": None}
    return [
        orjson.dumps(started) + b"\n" + orjson.dumps(ev) + b"\n",
        orjson.dumps(
            {"kind": "EventList", "items": [ev, {**ev, "auditID": "a-2", "stage": "Panic"}]}
        ),
        orjson.dumps({**ev, "objectRef": None, "responseStatus": {"code": "500"}}) + b"\n[]\n",
    ]


def csv_files() -> list[bytes]:
    return [
        b"timestamp,host,object,operation,outcome,region\n"
        b"2026-11-18T10:15:00Z,db-1,orders,SELECT,SUCCESS,eu\n"
        b'1795000000000,"db, 2",orders,DELETE,denied,\n',
        b"\xef\xbb\xbftimestamp,host\n2026-11-18T10:15:00Z,db-1,extra,cells\n",
    ]


def jsonl_files() -> list[bytes]:
    return [b"\n".join(json_events()[:4]) + b"\n", b"{\r\n" + json_events()[0] + b"\r\n\n"]


def timestamps() -> list[bytes]:
    return [
        b"2026-11-18T10:15:00Z",
        b"2026-11-18t10:15:00.123456789-05:30",
        b"1795000000000",
        b" 2026-11-18 10:15:00+0100 ",
        b"2026-02-30T00:00:00Z",
        b"",
    ]


def controls() -> list[bytes]:
    ack = ControlRecord(
        "al-1", "ack", "ana", TS, acknowledged_by="ana", acknowledged_at_ms=TS, aspect="ack"
    )
    snooze = ControlRecord(
        "al-1",
        "snooze",
        "bo",
        TS,
        snoozed_by="bo",
        snoozed_until_ms=TS + 3_600_000,
        aspect="snooze",
    )
    whole = ControlRecord("al-2", "unsnooze", "cy", TS)
    return [orjson.dumps(r.to_json()) for r in (ack, snooze, whole)]


def alerts() -> list[bytes]:
    a = Alert(
        alert_id="al-1",
        status="opened",
        machine_id="payments-api-1",
        group="payments-api",
        detector="new_resource",
        severity="high",
        score=77.5,
        event_time=format_rfc3339_ms(TS),
        summary="3 new resources",
        observed={"new": 3},
        expected={"new": 0.1},
        event_ids=["e-1"],
        config_version="c1",
        first_event_time=format_rfc3339_ms(TS),
        last_event_time=format_rfc3339_ms(TS),
        repeat_count=2,
        hint="look",
        sequence=1,
        acknowledged_by="ana",
        snoozed_until=None,
    )
    quiet = {**a.to_json(), "sequence": None, "status": "resolved", "severity": "info"}
    return [orjson.dumps(a.to_json()), orjson.dumps(quiet)]


def fix_files() -> list[bytes]:
    return [
        b'{"id": "t-0-1", "value": {"machine_id": "m"}}\n'
        b'{"id": "t-0-2", "value_text": "{}"}\n\n'
        b'{"id": "t-0-3", "value_b64": "eyJhIjoxfQ=="}\n',
        b'{"id": 5}\n',
    ]


def dead_letters() -> list[bytes]:
    common: dict[str, Any] = {
        "stage": "decode",
        "topic": "audit.events",
        "partition": 0,
        "offset": 12,
        "max_value_bytes": 64,
        "rejected_at_ms": TS,
    }
    return [
        encode_dead_letter(
            reason="json_decode_error",
            message="not valid JSON",
            key=b"m",
            value=b"{",
            event_id="e-1",
            **common,
        ),
        encode_dead_letter(reason="oversize", message="big", key=None, value=b"x" * 100, **common),
    ]


SEEDS = {
    "event_json": json_events,
    "event_auto": lambda: json_events() + avro_events(),
    "event_avro": avro_events,
    "event_registry": registry_events,
    "timestamp": timestamps,
    "reader_jsonl": jsonl_files,
    "reader_csv": csv_files,
    "reader_cloudtrail": cloudtrail,
    "reader_k8s": k8s,
    "control_record": controls,
    "alert_state": alerts,
    "fix_file": fix_files,
    "dead_letter_record": dead_letters,
    "processor_handle": lambda: json_events() + avro_events() + [b"k" + json_events()[0]],
    "rejected_event_id": lambda: [
        *json_events()[:3],
        json_events()[0][:60],
        b'{"machine_id": "x", "event_id": "e-\\"1\\"",}',
    ],
}


def main() -> None:
    for name, make in SEEDS.items():
        folder = CORPUS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for data in make():
            (folder / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)


if __name__ == "__main__":
    main()
