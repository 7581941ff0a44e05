"""Event files read as raw records for the processor (replay) or as mappings for the producer.

Formats (`--format`):

- `jsonl`: our event form (README "Events"), one JSON object a line.
- `csv`: one event a row; `--csv-map FIELD=COLUMN` renames columns, others become attributes.
- `cloudtrail`: AWS CloudTrail records, mapped to our event form (`cloudtrail_event`).
- `k8s-audit`: Kubernetes audit events (`audit.k8s.io/v1`), mapped by `k8s_audit_event`.

Every record is yielded, mapped or not: a record that cannot be mapped (not JSON, not an
object, no event time...) still reaches the processor, which dead-letters it with the reason.
The only records not yielded on their own are the intermediate stages of a Kubernetes request
whose final stage is in the input (see `read_records`).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

FORMATS = ("jsonl", "csv", "cloudtrail", "k8s-audit")
EVENT_FIELDS = (
    "event_id",
    "timestamp",
    "machine_id",
    "resource",
    "operation",
    "outcome",
    "source_ip",
    "identity_type",
    "source",
)
# The archive's OriginalFormat symbol for each file format.
_ORIGINAL_FORMAT = {
    "jsonl": "FILE_JSON",
    "csv": "CSV",
    "cloudtrail": "CLOUDTRAIL",
    "k8s-audit": "K8S_AUDIT",
}
# User agents can be whole SDK/OS/runtime banners; the head identifies the client.
MAX_USER_AGENT_CHARS = 256
MAX_ERROR_MESSAGE_CHARS = 256


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record: the bytes the processor decodes, and where it came from. `line` is
    the line number for line-oriented input and the 1-based record number inside a file that
    is one JSON document (a CloudTrail `Records` array, a JSON array, a Kubernetes EventList)."""

    value: bytes
    path: str
    line: int
    original_format: str  # FILE_JSON, CSV, CLOUDTRAIL or K8S_AUDIT


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def parse_csv_map(spec: str | None) -> dict[str, str]:
    """`field=column,field=column` -> {field: column}."""
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, eq, column = part.partition("=")
        if not eq or name.strip() not in EVENT_FIELDS:
            raise ValueError(
                f"--csv-map entry {part!r} must be FIELD=COLUMN, FIELD one of "
                + ", ".join(EVENT_FIELDS)
            )
        mapping[name.strip()] = column.strip()
    return mapping


def _csv_rows(
    f: IO[bytes], mapping: dict[str, str]
) -> Iterator[tuple[int, dict[str, object] | _Unparsed]]:
    # Bytes that are not UTF-8 are kept (as lone surrogates) rather than stopping the whole
    # file: `_csv_value` gives such a row to the processor as it was, to be dead-lettered.
    reader = csv.DictReader(
        io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
    )
    column_of = {name: mapping.get(name, name) for name in EVENT_FIELDS}
    mapped_columns = set(column_of.values())
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # A field past the csv module's limit (128 Ki characters): that record is
            # reported, the reader goes on with the next one.
            yield reader.line_num + 1, _Unparsed(f"unreadable CSV record: {e}".encode())
            continue
        event: dict[str, object] = {}
        for name, column in column_of.items():
            value = row.get(column)
            if value not in (None, ""):
                event[name] = value
        # Unmapped columns are kept as attributes rather than dropped.
        attrs = {
            k: v for k, v in row.items() if k not in mapped_columns and k and v not in (None, "")
        }
        if attrs:
            event["attributes"] = attrs
        yield reader.line_num, event


def _csv_value(event: dict[str, object] | _Unparsed) -> bytes:
    """The JSON text of a CSV row's event; for a row with bytes that are not UTF-8 (which JSON
    cannot carry), its cells as they were, comma-separated: not JSON, so dead-lettered, with
    every original byte in the dead letter."""
    if isinstance(event, _Unparsed):
        return event.raw
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:
        cells = [str(v) for k, v in event.items() if k != "attributes"]
        attrs = event.get("attributes")
        if isinstance(attrs, dict):
            cells += [str(v) for v in attrs.values()]
        return ",".join(cells).encode("utf-8", "surrogateescape")


# --- JSON documents ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Unparsed:
    """A line that is not JSON: passed on as is, so the processor dead-letters it."""

    raw: bytes


def _unwrap(value: Any, wrapper: str) -> list[Any]:
    """The records in one decoded JSON value: the `wrapper` list of an object that has one
    (CloudTrail `Records`, Kubernetes EventList `items`), the elements of an array, or the
    value itself."""
    if isinstance(value, dict) and isinstance(value.get(wrapper), list):
        return list(value[wrapper])
    if isinstance(value, list):
        return value
    return [value]


def _json_lines(lines: Iterable[bytes], wrapper: str, first: int = 1) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(lines, first):
        text = line.strip()
        if not text:
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            yield n, _Unparsed(line.rstrip(b"\r\n"))
            continue
        for record in _unwrap(value, wrapper):
            yield n, record


def _json_records(f: IO[bytes], wrapper: str) -> Iterator[tuple[int, Any]]:
    """(position, decoded record or _Unparsed) for a file that is either JSON lines (each line
    a record, a wrapper object or an array) or one JSON document spread over many lines.

    JSON lines are streamed, so large logs are not read into memory: the file counts as JSON
    lines when its first non-blank line parses on its own. Otherwise the whole file is parsed
    as one document; when that fails too, it is JSON lines after all (with a bad first line,
    which is then dead-lettered like any other bad line)."""
    head: list[bytes] = []
    for line in f:
        head.append(line)
        if line.strip():
            break
    if not head:
        return
    first = head[-1].removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is not part of the JSON
    head[-1] = first
    try:
        orjson.loads(first.strip())
        is_lines = True
    except orjson.JSONDecodeError:
        is_lines = False
    if is_lines:
        yield from _json_lines(head, wrapper)
        yield from _json_lines(f, wrapper, len(head) + 1)
        return
    whole = b"".join(head) + f.read()
    try:
        document = orjson.loads(whole)
    except orjson.JSONDecodeError:
        yield from _json_lines(whole.splitlines(), wrapper)
        return
    yield from enumerate(_unwrap(document, wrapper), 1)


def _unmapped_bytes(record: Any) -> bytes:
    """The bytes of a record that is not an object: its own text, for the dead letter."""
    if isinstance(record, _Unparsed):
        return record.raw
    return _dumps(record)


# orjson reads JSON nested up to 1024 levels but writes at most 254.
_MAX_DEPTH = 200


def _dumps(value: Any) -> bytes:
    """JSON text of a decoded record (or of the event mapped from one, which copies its
    timestamp value as it is). Past `_MAX_DEPTH` levels the rest is replaced by a note: such
    a value is never a valid event or time, so its record is dead-lettered all the same."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return orjson.dumps(_cut(value, _MAX_DEPTH))


def _cut(value: Any, depth: int) -> Any:
    if not isinstance(value, dict | list):
        return value
    if depth == 0:
        return f"(nested deeper than {_MAX_DEPTH} levels)"
    if isinstance(value, dict):
        return {k: _cut(v, depth - 1) for k, v in value.items()}
    return [_cut(v, depth - 1) for v in value]


def _text(value: Any) -> str | None:
    """`value` if it is a non-empty string, else None (absent, null, a number, an object)."""
    return value if isinstance(value, str) and value else None


def _set_attr(attrs: dict[str, str], name: str, value: Any, limit: int | None = None) -> None:
    text = _text(value)
    if text is not None:
        attrs[name] = text[:limit] if limit else text


# --- CloudTrail ----------------------------------------------------------------------------

_ASSUMED_ROLE_ARN = re.compile(r"^arn:([^:]+):sts::([^:]*):assumed-role/([^/]+)(?:/(.*))?$")
# Secrets Manager appends "-" and six random characters to a secret's name in its ARN.
_SECRET_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")

# requestParameters that name the resource of a call, most specific first:
# (parameter, label put before the name, ARN resource type dropped from an ARN value).
_NAMED_PARAMETERS: tuple[tuple[str, str, str | None], ...] = (
    ("secretId", "", "secret"),
    ("roleName", "role/", None),
    ("userName", "user/", None),
    ("groupName", "group/", None),
    ("functionName", "", "function"),
    ("instanceId", "", "instance"),
    ("instanceIds", "", "instance"),
    ("instancesSet", "", "instance"),
    ("target", "", "instance"),
    ("tableName", "", "table"),
    ("queueUrl", "", None),
    ("topicArn", "", None),
    ("keyId", "", "key"),
    ("snapshotId", "", "snapshot"),
    ("dBSnapshotIdentifier", "", "snapshot"),
    ("imageId", "", "image"),
    ("groupId", "", "security-group"),
    ("logGroupName", "", "log-group"),
    ("trailName", "", "trail"),
    ("modelId", "", "foundation-model"),
    ("names", "", "parameter"),
    ("name", "", None),
    ("roleArn", "", None),
    ("policyArn", "", None),
)


def _split_arn(value: str) -> tuple[str, str] | None:
    """`arn:partition:service:region:account:resource` -> (service, resource)."""
    if not value.startswith("arn:"):
        return None
    parts = value.split(":", 5)
    if len(parts) < 6:
        return None
    return parts[2], parts[5]


def _s3_name(bucket: str, key: Any) -> str:
    """bucket, or bucket/first-directory when the key (or prefix) lies under a directory.
    Object names are left out: each object a resource would make every new object "new"."""
    key_text = _text(key)
    if key_text is not None and "/" in key_text.lstrip("/"):
        return f"{bucket}/{key_text.lstrip('/').split('/', 1)[0]}"
    return bucket


def _param_values(params: Mapping[str, Any], name: str) -> list[str]:
    value = params.get(name)
    values: list[Any]
    if name == "instancesSet":
        # EC2's XML-style list: {"items": [{"instanceId": ...}, ...]}
        items = value.get("items") if isinstance(value, dict) else None
        values = [i.get("instanceId") for i in items or () if isinstance(i, dict)]
    elif isinstance(value, list):
        values = value
    else:
        values = [value]
    return [v for v in values if _text(v) is not None]


def _short_name(name: str, value: str, arn_type: str | None) -> str:
    """The name in a parameter value, the same whether the caller gave a name or an ARN."""
    if name == "queueUrl":
        return value.rstrip("/").rsplit("/", 1)[-1]
    if name == "functionName":
        # A name, an ARN or a partial ARN, with or without a version/alias qualifier.
        return value.rsplit("function:", 1)[-1].split(":", 1)[0]
    arn = _split_arn(value)
    if arn is None:
        return value
    resource = arn[1]
    if arn_type is not None:
        for sep in "/:":
            if resource.startswith(arn_type + sep):
                resource = resource[len(arn_type) + 1 :]
                break
    if name == "secretId":
        resource = _SECRET_SUFFIX.sub("", resource)
    return resource


def cloudtrail_resource(record: Mapping[str, Any]) -> tuple[str | None, int]:
    """The resource of a CloudTrail record, as `<service>://<name>`, and how many resources
    the call named (1 unless a list parameter named several; the first one is used).

    `<service>` is the `eventSource` up to its first dot (`s3.amazonaws.com` -> `s3`). The
    name comes from, in order:

    1. S3: `bucketName`, plus the first path segment of `key` or `prefix` when that lies
       under a directory: `s3://bucket/reports` for `reports/2020/x.csv`, `s3://bucket` for a
       top-level object or a bucket call (object names would make every object "new").
    2. The first of these `requestParameters`: secretId, roleName (`role/NAME`), userName
       (`user/NAME`), groupName (`group/NAME`), functionName, instanceId(s), instancesSet,
       target, tableName, queueUrl, topicArn, keyId, snapshotId, dBSnapshotIdentifier,
       imageId, groupId, logGroupName, trailName, modelId, names, name, roleArn, policyArn.
       An ARN value is cut to its resource part without the resource type, so a name and its
       ARN give the same resource; a secret ARN also loses its random `-XXXXXX` suffix, a
       function its qualifier, a queue URL all but the queue name; a leading `/` is dropped
       (`ssm://credentials/app/db` for the parameter `/credentials/app/db`).
    3. The first `resources[].ARN`, as `<ARN service>://<ARN resource>`
       (`iam://role/ops`; S3 ARNs as in 1).
    4. Else the `eventSource` itself, e.g. `sts.amazonaws.com` for GetCallerIdentity: the
       service is the only thing accessed.
    """
    source = _text(record.get("eventSource"))
    service = source.split(".", 1)[0] if source else "aws"
    params = record.get("requestParameters")
    if isinstance(params, dict):
        bucket = _text(params.get("bucketName"))
        if bucket is not None:
            return f"{service}://{_s3_name(bucket, params.get('key') or params.get('prefix'))}", 1
        for name, label, arn_type in _NAMED_PARAMETERS:
            values = _param_values(params, name)
            if values:
                short = _short_name(name, values[0], arn_type).lstrip("/")
                if short:
                    return f"{service}://{label}{short}", len(values)
    resources = record.get("resources")
    if isinstance(resources, list):
        for entry in resources:
            arn = _split_arn(_text(entry.get("ARN")) or "") if isinstance(entry, dict) else None
            if arn is None:
                continue
            arn_service, resource = arn
            if arn_service == "s3":
                bucket, _, key = resource.partition("/")
                resource = _s3_name(bucket, key)
            return f"{arn_service}://{resource}", 1
    return source, 1


def cloudtrail_identity(identity: Any) -> tuple[str | None, str | None, str | None]:
    """(machine_id, identity_type, session) from a CloudTrail `userIdentity`.

    An `AssumedRole` identity is the role, not the session: every session of one role is one
    machine (an instance profile or a pod's role gets a new session name every hour or per
    process). `arn:aws:sts::ACCT:assumed-role/ROLE/SESSION` -> `arn:aws:iam::ACCT:role/ROLE`,
    the session name returned separately. `AWSService` is the calling service (`invokedBy`).
    Every other type (IAMUser, Root, FederatedUser...) is its `arn`, else `principalId`, else
    the type itself."""
    if not isinstance(identity, dict):
        return None, None, None
    kind = _text(identity.get("type"))
    arn = _text(identity.get("arn"))
    if kind == "AssumedRole":
        m = _ASSUMED_ROLE_ARN.match(arn or "")
        if m is not None:
            partition, account, role, session = m.groups()
            return f"arn:{partition}:iam::{account}:role/{role}", kind, session or None
        # principalId of a role session is "ROLE-UNIQUE-ID:SESSION".
        principal = _text(identity.get("principalId"))
        if principal is not None:
            role_id, _, session = principal.partition(":")
            return role_id, kind, session or None
    if kind == "AWSService":
        service = _text(identity.get("invokedBy"))
        if service is not None:
            return service, kind, None
    return arn or _text(identity.get("principalId")) or kind, kind, None


def cloudtrail_outcome(record: Mapping[str, Any]) -> str:
    """SUCCESS without an `errorCode`; DENIED for AccessDenied*, *Unauthorized* and
    *Forbidden* codes (any case) and for a failed console sign-in (which has no errorCode,
    only `responseElements.ConsoleLogin: Failure`); FAILURE for any other error code."""
    code = record.get("errorCode")
    if code is not None and code != "":
        text = str(code).lower()
        if "accessdenied" in text or "unauthorized" in text or "forbidden" in text:
            return "DENIED"
        return "FAILURE"
    response = record.get("responseElements")
    if isinstance(response, dict) and response.get("ConsoleLogin") == "Failure":
        return "DENIED"
    return "SUCCESS"


def cloudtrail_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """Our event form of one CloudTrail record. Fields that cannot be derived are left out,
    so validation dead-letters the record naming the missing field.

    event_id = eventID; timestamp = eventTime (or `@timestamp`, where a Logstash/Elastic
    export moved it); machine_id, identity_type = `cloudtrail_identity`; resource =
    `cloudtrail_resource`; operation = `eventSource:eventName` (`s3.amazonaws.com:GetObject`);
    outcome = `cloudtrail_outcome`; source_ip = sourceIPAddress (a service name for calls an
    AWS service made); source = "cloudtrail"; attributes: userAgent and errorMessage (first
    256 characters), awsRegion, errorCode, recipientAccountId, session (of an assumed role),
    resource_count (when a call named several resources)."""
    machine_id, identity_type, session = cloudtrail_identity(record.get("userIdentity"))
    resource, resource_count = cloudtrail_resource(record)
    source = _text(record.get("eventSource"))
    name = _text(record.get("eventName"))
    event: dict[str, Any] = {
        "event_id": _text(record.get("eventID")),
        "timestamp": record.get("eventTime") or record.get("@timestamp"),
        "machine_id": machine_id,
        "resource": resource,
        "operation": f"{source}:{name}" if source and name else name,
        "outcome": cloudtrail_outcome(record),
        "source_ip": _text(record.get("sourceIPAddress")),
        "identity_type": identity_type,
        "source": "cloudtrail",
    }
    attrs: dict[str, str] = {}
    _set_attr(attrs, "userAgent", record.get("userAgent"), MAX_USER_AGENT_CHARS)
    _set_attr(attrs, "awsRegion", record.get("awsRegion"))
    if record.get("errorCode") not in (None, ""):
        attrs["errorCode"] = str(record["errorCode"])
    _set_attr(attrs, "errorMessage", record.get("errorMessage"), MAX_ERROR_MESSAGE_CHARS)
    _set_attr(attrs, "recipientAccountId", record.get("recipientAccountId"))
    _set_attr(attrs, "session", session)
    if resource_count > 1:
        attrs["resource_count"] = str(resource_count)
    event["attributes"] = attrs
    return {k: v for k, v in event.items() if v is not None}


# --- Kubernetes audit ----------------------------------------------------------------------

# Stages after which a request has no more audit events: its outcome is known.
K8S_FINAL_STAGES = ("ResponseComplete", "Panic")
# Intermediate stages waiting for their request's final stage; past this many, the oldest is
# emitted on its own (bounded memory with a policy that never logs a final stage).
MAX_PENDING_K8S_STAGES = 100_000


def k8s_identity_type(username: str) -> str:
    """serviceaccount, node, anonymous, system (control-plane components) or user."""
    if username.startswith("system:serviceaccount:"):
        return "serviceaccount"
    if username.startswith("system:node:"):
        return "node"
    if username == "system:anonymous":
        return "anonymous"
    if username.startswith("system:"):
        return "system"
    return "user"


def k8s_resource(event: Mapping[str, Any]) -> str | None:
    """`k8s://<namespace or _cluster>/<resource>[/<subresource>][/<name>]` from `objectRef`
    (`k8s://payments/pods/exec/api-7d9f`, `k8s://_cluster/nodes/node-1`); a request without
    one (`/healthz`, `/metrics`, discovery) is `k8s://_nonresource/<path>`, query dropped."""
    ref = event.get("objectRef")
    if isinstance(ref, dict) and _text(ref.get("resource")):
        parts = [
            _text(ref.get("namespace")) or "_cluster",
            ref["resource"],
            _text(ref.get("subresource")),
            _text(ref.get("name")),
        ]
        return "k8s://" + "/".join(p for p in parts if p)
    uri = _text(event.get("requestURI"))
    if uri is not None:
        return "k8s://_nonresource/" + uri.split("?", 1)[0].lstrip("/")
    return None


def k8s_outcome(event: Mapping[str, Any]) -> str:
    """From `responseStatus.code`: below 400 SUCCESS, 401/403 DENIED, other codes FAILURE;
    no code (a stage before the response) SUCCESS."""
    status = event.get("responseStatus")
    code = status.get("code") if isinstance(status, dict) else None
    try:
        number = int(code) if code is not None else None
    except (TypeError, ValueError):
        return "FAILURE"
    if number is None or number < 400:
        return "SUCCESS"
    return "DENIED" if number in (401, 403) else "FAILURE"


def k8s_audit_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """Our event form of one Kubernetes audit event. Fields that cannot be derived are left
    out, so validation dead-letters the record naming the missing field.

    event_id = auditID; timestamp = requestReceivedTimestamp (when the access was made), else
    stageTimestamp; machine_id = user.username (`system:serviceaccount:payments:api`);
    identity_type = `k8s_identity_type`; resource = `k8s_resource`; operation = verb; outcome
    = `k8s_outcome`; source_ip = the first of sourceIPs; source = "k8s-audit"; attributes:
    userAgent (first 256 characters), stage, apiGroup, code (the response code),
    impersonatedUser (the identity the request acted as, when impersonating)."""
    user = event.get("user")
    username = _text(user.get("username")) if isinstance(user, dict) else None
    ips = event.get("sourceIPs")
    out: dict[str, Any] = {
        "event_id": _text(event.get("auditID")),
        "timestamp": event.get("requestReceivedTimestamp") or event.get("stageTimestamp"),
        "machine_id": username,
        "resource": k8s_resource(event),
        "operation": _text(event.get("verb")),
        "outcome": k8s_outcome(event),
        "source_ip": _text(ips[0]) if isinstance(ips, list) and ips else None,
        "identity_type": k8s_identity_type(username) if username else None,
        "source": "k8s-audit",
    }
    attrs: dict[str, str] = {}
    _set_attr(attrs, "userAgent", event.get("userAgent"), MAX_USER_AGENT_CHARS)
    _set_attr(attrs, "stage", event.get("stage"))
    ref = event.get("objectRef")
    if isinstance(ref, dict):
        _set_attr(attrs, "apiGroup", ref.get("apiGroup"))
    status = event.get("responseStatus")
    if isinstance(status, dict) and status.get("code") is not None:
        attrs["code"] = str(status["code"])
    impersonated = event.get("impersonatedUser")
    if isinstance(impersonated, dict):
        _set_attr(attrs, "impersonatedUser", impersonated.get("username"))
    out["attributes"] = attrs
    return {k: v for k, v in out.items() if v is not None}


class _K8sStages:
    """Keeps one record per Kubernetes request. The API server logs a request at up to four
    stages (RequestReceived, ResponseStarted for long-running calls, ResponseComplete or
    Panic), all with the same auditID; they are one access, and the final stage alone has
    the outcome. An intermediate stage is held until its request's final stage arrives and
    then discarded; one whose final stage never comes (a watch still open when the log was
    cut, a policy that omits ResponseComplete) is emitted at the end of the input, so it is
    counted rather than lost. Stages are expected in log order: an intermediate stage read
    after its final stage is emitted too, and the processor dead-letters it as a conflicting
    duplicate of the final one (same auditID, different content)."""

    def __init__(self, max_pending: int = MAX_PENDING_K8S_STAGES) -> None:
        self.pending: dict[str, RawRecord] = {}  # auditID -> latest intermediate stage
        self.max_pending = max_pending

    def feed(self, record: Any, path: str, n: int) -> Iterator[RawRecord]:
        if not isinstance(record, dict):
            yield RawRecord(_unmapped_bytes(record), path, n, "K8S_AUDIT")
            return
        raw = RawRecord(_dumps(k8s_audit_event(record)), path, n, "K8S_AUDIT")
        audit_id = _text(record.get("auditID"))
        stage = record.get("stage")
        if audit_id is None or stage is None or stage in K8S_FINAL_STAGES:
            if audit_id is not None:
                self.pending.pop(audit_id, None)
            yield raw
            return
        self.pending.pop(audit_id, None)  # re-insert: the dict stays in arrival order
        self.pending[audit_id] = raw
        while len(self.pending) > self.max_pending:
            oldest = next(iter(self.pending))
            yield self.pending.pop(oldest)

    def flush(self) -> Iterator[RawRecord]:
        yield from self.pending.values()
        self.pending.clear()


# --- all formats ---------------------------------------------------------------------------


def read_records(
    paths: list[str], fmt: str = "jsonl", csv_map: dict[str, str] | None = None
) -> Iterator[RawRecord]:
    """Every record of every file, in file order; blank lines are skipped. `cloudtrail` and
    `k8s-audit` files may be JSON lines or one JSON document (a `{"Records": [...]}` object,
    an EventList `{"items": [...]}`, or an array), gzipped or not; each record is mapped to
    our event form. For `k8s-audit`, the intermediate stages of a request are dropped when its
    final stage is in the input (see `_K8sStages`); stages with no final stage come last."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    original = _ORIGINAL_FORMAT[fmt]
    k8s = _K8sStages() if fmt == "k8s-audit" else None
    for p in paths:
        path = Path(p)
        with _open(path) as f:
            if fmt == "jsonl":
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield RawRecord(line.rstrip(b"\r\n"), p, n, original)
            elif fmt == "csv":
                for n, event in _csv_rows(f, csv_map or {}):
                    yield RawRecord(_csv_value(event), p, n, original)
            elif k8s is not None:
                for n, record in _json_records(f, "items"):
                    yield from k8s.feed(record, p, n)
            else:
                for n, record in _json_records(f, "Records"):
                    value = (
                        _dumps(cloudtrail_event(record))
                        if isinstance(record, dict)
                        else _unmapped_bytes(record)
                    )
                    yield RawRecord(value, p, n, original)
    if k8s is not None:
        yield from k8s.flush()
