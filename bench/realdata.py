"""Real attack captures through the product's replay: do the detectors page on them?

`python -m bench.realdata --out eval/realdata.json` (or `make realdata`) replays three public
datasets from `../shared/datasets` (read in place, never copied into the repository) with the
default detection config through `streams.tools.replay.replay`, the code path of
`auditwatch replay`, and writes the pages, caught/missed flags and the method to a JSON file,
printing a table. Nothing is tuned per dataset.

A capture is minutes long and the detectors judge each identity against its own history
(warm-up: 50 events and one hour per identity before anything but `new_identity` can page), so
each capture gets a synthetic warm-up history first. How:

**Re-timed history** (`history_starts`, `synthesize_history`). An identity's benign events in
the capture are its *session*. The history is copies of that session, one per `period` before
the capture (`period` = 1 day for a person, 1 hour or 90 minutes for machines that run all
day), each moved by a deterministic jitter (seeded by the dataset seed and the identity; at
most `jitter_cap`, and never so much that two copies overlap) and kept only when it ends before
the capture starts. Inside a copy the events keep their order and spacing (`retime`), so the
resources, operations, outcomes and per-minute rates of the history are exactly those of the
capture's benign behaviour, at the same time of day. Copies get new event ids
(`<id>-h<copy>`, a UUID derived from it for CloudTrail).

**Modelled history**, only where the capture has no benign events for an identity; each
model is listed in the output with its events:

1. OTRF `ec2_proxy_s3_exfiltration` (CloudTrail; replayed with `--format cloudtrail`, history
   written as CloudTrail records). `pedro` (87 console calls) and the EC2 service
   `ec2.amazonaws.com` (5 AssumeRole calls refreshing instance-profile credentials) have
   re-timed histories (daily / hourly). The stolen role
   `MordorNginxStack-BankingWAFRole-...` has no legitimate call in the capture, only the 11
   attack calls, so its history is modelled, in two variants run separately: `agent-only`
   (the instance's SSM agent heartbeat every 5 minutes and the CloudWatch agent's hourly
   DescribeTags, from the instance's address: the role never uses S3) and
   `s3-config-reader` (the same plus a GetObject of its own nginx config in another bucket
   every 15 minutes: the role uses S3, but never listed buckets or touched the exfiltrated
   bucket). Expected: the role's S3 reads page, pedro does not.
2. OTRF PurpleSharp AD playbook I (117 Windows security events; our JSON event form, built
   here). identity = the account with its Kerberos realm dropped (`pgustavo@THESHIRE.LOCAL`
   is `pgustavo`); resource = `host://<target host>` for logons, logoffs and NTLM
   validation, `kerberos://<service account>` for service tickets, `smb://<host>/<share>` for
   share access; operation = `<event id>:<type>` (`4624:logon/type3`); outcome = DENIED for
   the bad-password statuses 0xc000006d/0xc000006a, FAILURE for other failures, else
   SUCCESS. Machine accounts and ANONYMOUS LOGON: re-timed every 90 minutes (Group Policy
   refresh). `pgustavo` has no benign event (all 57 of his are attack-labelled), nor do the
   six spray targets, so accounts get a domain-user model around the capture's time of day
   (so time of day cannot give the attack away): a morning interactive logon on the user's
   workstation (pgustavo: WORKSTATION5, where the attack ran), network logons to the DC and
   service tickets for the DC every 30 minutes, a krbtgt renewal every 2 hours, the
   logoff; `*svc` service accounts get an hourly service logon on every host. Expected: the
   attack pages on pgustavo.
3. Stratus Red Team detonations (35 files, all malicious). Background: a synthetic CloudTrail
   account (`BACKGROUND`, `background_records`): two IAM users (a console operator, a CI
   deployer) and five roles (an EC2 application role, a Lambda role, a monitoring crawler, an
   SSO admin role, an SSM-managed fleet), each with its own calls, resources, daily rhythm,
   weekends and a little failure noise; 3 days of warm-up from a Monday, then the technique at
   14:00 UTC on day 4, its records re-timed (order and spacing kept) and the replay running one
   hour past it. Each technique is replayed twice: (a) under its own identities, new to the
   background, and (b) with its `userIdentity` replaced by an existing background identity of
   the same kind (`rewrite_identity`; IAM and federated users -> the console operator, roles ->
   the EC2 application role, SSO roles -> the SSO admin role), nothing else changed, so only
   behaviour can give it away. Caught = a page on a technique identity from its first event to
   15 minutes after its last, that the background alone does not produce (alert ids are
   deterministic, so a background page has the same id in both runs). False pages = the
   background-only replay's pages after warm-up.

Since the synthetic histories are benign by construction, the pages they draw before the
capture are false pages too; the output counts them (`history_pages`).

The Stratus runs share the background's warm-up: it is replayed once up to the injection
time and each technique continues from a copy of that state (`SplitReplay`, the same Processor
calls as one `replay` of both files, so the same pages; `--exact-replay` replays everything
for every run instead and gives identical results, 15 times slower). Run time: about 20 s.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import math
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from schemas.codec import BundledSchemas, decode_wire
from schemas.event import AuditEvent, format_rfc3339_ms, parse_timestamp_us
from streams.ops.config import Config, ConfigError, load_config
from streams.processor import MemoryStore, Processor
from streams.tools.partitioning import PartitionedDetection
from streams.tools.readers import cloudtrail_identity, read_records
from streams.tools.replay import ReplayResult, replay

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
DEFAULT_OUT = Path("eval/realdata.json")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
AFTER_MS = 15 * MINUTE_MS  # a page counts up to this long after an attack's last event
DEFAULT_SEED = 11
DEFAULT_DAYS = 3

OTRF_EXFIL = "otrf/raw/ec2_proxy_s3_exfiltration_2020-09-14011940.json"
OTRF_PURPLESHARP = "otrf/derived/purplesharp_ad_playbook_I_security_access_events.csv"
STRATUS_DIR = "stratus"


# -- re-timing and history (pure) -----------------------------------------------------------


def retime(
    items: Sequence[T],
    start_ms: int,
    time_of: Callable[[T], int],
    with_time: Callable[[T, int], T],
) -> list[T]:
    """`items` in time order (ties keep their order), shifted so the first is at `start_ms`:
    the spacing between any two items is unchanged."""
    ordered = sorted(items, key=time_of)
    if not ordered:
        return []
    shift = start_ms - time_of(ordered[0])
    return [with_time(x, time_of(x) + shift) for x in ordered]


def history_starts(
    session_start_ms: int,
    session_ms: int,
    capture_start_ms: int,
    *,
    period_ms: int,
    copies: int,
    jitter_cap_ms: int,
    key: str,
    seed: int,
) -> list[int]:
    """Start times (ascending) of up to `copies` copies of a session that began at
    `session_start_ms` and lasted `session_ms`: copy k starts k periods earlier, moved by a
    jitter drawn from a generator seeded by (`seed`, `key`), so the same inputs always give
    the same history. The jitter is at most `jitter_cap_ms` and small enough that copies
    never overlap; copies that would not end before `capture_start_ms` are left out."""
    if session_ms >= period_ms:
        raise ValueError(f"a session of {session_ms} ms does not fit a period of {period_ms} ms")
    jitter = max(0, min(jitter_cap_ms, (period_ms - session_ms) // 2 - 1))
    # A string seed is hashed with SHA-512 by `random`: stable across runs and interpreters.
    rng = random.Random(f"{seed}/{key}")
    starts = []
    for k in range(copies, 0, -1):
        start = session_start_ms - k * period_ms + rng.randint(-jitter, jitter)
        if start + session_ms < capture_start_ms:
            starts.append(start)
    return starts


def synthesize_history(
    session: Sequence[T],
    capture_start_ms: int,
    *,
    period_ms: int,
    span_ms: int,
    jitter_cap_ms: int,
    key: str,
    seed: int,
    time_of: Callable[[T], int],
    copy_at: Callable[[T, int, int], T],
) -> list[T]:
    """A warm-up history re-timed from an identity's benign `session`: one copy per period
    over `span_ms` before the capture (see `history_starts`), each keeping the session's
    order and spacing. `copy_at(item, new_ms, copy_index)` makes one copied item (with a new
    event id). Returned in time order, all before `capture_start_ms`."""
    if not session:
        return []
    times = [time_of(x) for x in session]
    first, last = min(times), max(times)
    starts = history_starts(
        first,
        last - first,
        capture_start_ms,
        period_ms=period_ms,
        copies=span_ms // period_ms,
        jitter_cap_ms=jitter_cap_ms,
        key=key,
        seed=seed,
    )
    ordered = sorted(session, key=time_of)  # what `retime` does, with a copy index
    out: list[T] = []
    for index, start in enumerate(starts):
        shift = start - first
        out.extend(copy_at(x, time_of(x) + shift, index) for x in ordered)
    return out


# -- CloudTrail records ---------------------------------------------------------------------


def ct_time_ms(record: Mapping[str, Any]) -> int:
    """A CloudTrail record's event time (eventTime, or @timestamp in Logstash exports)."""
    return parse_timestamp_us(record.get("eventTime") or record["@timestamp"]) // 1000


def ct_with_time(record: Mapping[str, Any], ms: int) -> dict[str, Any]:
    """A copy of a CloudTrail record at another time; the time field it had is the one set."""
    out = dict(record)
    out["@timestamp" if "eventTime" not in out and "@timestamp" in out else "eventTime"] = (
        format_rfc3339_ms(ms)
    )
    return out


def derived_uuid(*parts: object) -> str:
    """A UUID-shaped id derived from `parts`: the same parts, the same id."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest))


def ct_copy(record: Mapping[str, Any], ms: int, index: int) -> dict[str, Any]:
    """A history copy of a CloudTrail record: re-timed, with an event id of its own."""
    out = ct_with_time(record, ms)
    out["eventID"] = derived_uuid(record.get("eventID"), "h", index)
    return out


def ct_machine(record: Mapping[str, Any]) -> str:
    """The machine id the cloudtrail reader gives a record (see `cloudtrail_identity`)."""
    return str(cloudtrail_identity(record.get("userIdentity"))[0])


def rewrite_identity(record: Mapping[str, Any], identity: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a CloudTrail record made by another identity: `userIdentity` replaced by a
    copy of `identity`, every other field as it was."""
    out = dict(record)
    out["userIdentity"] = copy.deepcopy(dict(identity))
    return out


def iam_user_identity(account: str, name: str, key_id: str) -> dict[str, Any]:
    """The `userIdentity` of an IAM user calling with access keys."""
    return {
        "type": "IAMUser",
        "principalId": "AIDA" + hashlib.sha1(name.encode()).hexdigest()[:16].upper(),
        "arn": f"arn:aws:iam::{account}:user/{name}",
        "accountId": account,
        "accessKeyId": key_id,
        "userName": name,
    }


def role_identity(account: str, role: str, session: str) -> dict[str, Any]:
    """The `userIdentity` of a session of an assumed role."""
    role_id = "AROA" + hashlib.sha1(role.encode()).hexdigest()[:16].upper()
    return {
        "type": "AssumedRole",
        "principalId": f"{role_id}:{session}",
        "arn": f"arn:aws:sts::{account}:assumed-role/{role}/{session}",
        "accountId": account,
        "accessKeyId": "ASIA" + hashlib.sha1(session.encode()).hexdigest()[:16].upper(),
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": role_id,
                "arn": f"arn:aws:iam::{account}:role/{role}",
                "accountId": account,
                "userName": role,
            },
            "attributes": {"mfaAuthenticated": "false"},
        },
    }


def ct_record(
    identity: Mapping[str, Any],
    ms: int,
    source: str,
    name: str,
    params: Mapping[str, Any] | None,
    *,
    event_id: str,
    ip: str,
    agent: str,
    account: str,
    error: str | None = None,
) -> dict[str, Any]:
    """A CloudTrail record as the service would log it (the fields the reader maps)."""
    rec: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": dict(identity),
        "eventTime": format_rfc3339_ms(ms),
        "eventSource": source,
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": ip,
        "userAgent": agent,
        "requestParameters": dict(params) if params is not None else None,
        "responseElements": None,
        "eventID": event_id,
        "eventType": "AwsApiCall",
        "recipientAccountId": account,
    }
    if error is not None:
        rec["errorCode"] = error
        rec["errorMessage"] = f"{error} (synthetic background)"
    return rec


def _write_jsonl(path: Path, items: Iterable[Mapping[str, Any]]) -> int:
    n = 0
    with path.open("wb") as f:
        for item in items:
            f.write(orjson.dumps(item) + b"\n")
            n += 1
    return n


# -- replay and pages -----------------------------------------------------------------------


@dataclass
class Run:
    """One replay: its counts and the pages it wrote, as alert dicts."""

    result: ReplayResult
    pages: list[dict[str, Any]]


def run_replay(cfg: Config, paths: Sequence[Path | str], fmt: str) -> Run:
    """`auditwatch replay` over `paths` with `cfg`: the pages it writes, parsed."""
    buf = io.BytesIO()
    result = replay(cfg, [str(p) for p in paths], buf, fmt=fmt)
    pages = [orjson.loads(line) for line in buf.getvalue().splitlines() if line]
    return Run(result, pages)


class SplitReplay:
    """`streams.tools.replay.replay` cut in two at `split_ms`, for many runs that share a prefix.

    replay ingests every record in file order, then runs detection over the events in
    event-time order (a stable sort). Here the files given first (a background) are ingested
    and their events before `split_ms` detected once; `continue_with(paths)` then copies that
    state, ingests `paths` as if they followed the first files, and detects the rest. When
    every continued event is at or after `split_ms`, this is the same sequence of Processor
    calls as one replay of all the files, so the same pages, alert ids included (checked in
    tests/test_realdata.py); only the shared prefix is not done again."""

    def __init__(self, cfg: Config, paths: Sequence[Path | str], fmt: str, split_ms: int) -> None:
        self.fmt = fmt
        self.split_us = split_ms * 1000
        self.processor = Processor(cfg, BundledSchemas())
        self.store = MemoryStore()
        self.detection = PartitionedDetection(self.processor, cfg.topics.partitions)
        self.result = ReplayResult()
        self.pages: list[bytes] = []
        events = self._ingest(self.processor, self.store, self.result, paths)
        events.sort(key=lambda e: e.ts_us)
        head = [e for e in events if e.ts_us < self.split_us]
        self.tail = [e for e in events if e.ts_us >= self.split_us]
        self._detect(self.detection, self.result, self.pages, head, 1)
        self.detected = len(head)

    def _ingest(
        self,
        processor: Processor,
        store: MemoryStore,
        result: ReplayResult,
        paths: Sequence[Path | str],
    ) -> list[AuditEvent]:
        # As replay does: every record in file order through validation and dedupe.
        events: list[AuditEvent] = []
        for rec in read_records([str(p) for p in paths], self.fmt):
            result.records += 1
            outputs, event = processor.ingest_record(rec, store)
            for out in outputs:
                if out.kind == "deadletter":
                    result.dead_letters[decode_wire(out.value, "dead_letter")["reason"]] += 1
            if event is not None:
                events.append(event)
        result.duplicates = processor.metrics["duplicates"]
        return events

    @staticmethod
    def _detect(
        detection: PartitionedDetection,
        result: ReplayResult,
        pages: list[bytes],
        events: Sequence[AuditEvent],
        first: int,
    ) -> None:
        # As replay does: detection in event-time order, pages kept as written.
        for i, event in enumerate(events, first):
            for out in detection.detect(event, i):
                assert out.alert is not None
                result.alerts[out.alert.status] += 1
                if out.alert.is_page:
                    result.pages += 1
                    pages.append(out.value)
        result.events += len(events)

    def continue_with(self, paths: Sequence[Path | str]) -> Run:
        """The replay of the first files followed by `paths`, from a copy of the state at the
        split (this object is not changed, so it can be continued any number of times)."""
        processor, store, detection, result, pages = copy.deepcopy(
            (self.processor, self.store, self.detection, self.result, self.pages)
        )
        extra = self._ingest(processor, store, result, paths)
        if any(e.ts_us < self.split_us for e in extra):
            raise ValueError("continued events must not precede the split")
        # Stable: at equal times the first files' events come first, as in one replay.
        rest = sorted([*self.tail, *extra], key=lambda e: e.ts_us)
        self._detect(detection, result, pages, rest, self.detected + 1)
        return Run(result, [orjson.loads(p) for p in pages])


def page_ms(page: Mapping[str, Any]) -> int:
    return parse_timestamp_us(page["event_time"]) // 1000


def page_row(page: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a page the report keeps."""
    return {
        "machine": page["machine_id"],
        "detector": page["detector"],
        "severity": page["severity"],
        "score": page["score"],
        "status": page["status"],
        "event_time": page["event_time"],
        "summary": page["summary"],
        "observed": page.get("observed"),
        "expected": page.get("expected"),
    }


def pages_on(
    pages: Iterable[Mapping[str, Any]], machines: Iterable[str], start_ms: int, end_ms: int
) -> list[Mapping[str, Any]]:
    """Pages naming one of `machines` with an event time in [start_ms, end_ms]."""
    wanted = set(machines)
    return [p for p in pages if p["machine_id"] in wanted and start_ms <= page_ms(p) <= end_ms]


def _detectors(pages: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({str(p["detector"]) for p in pages})


def history_pages(pages: Iterable[Mapping[str, Any]], capture_start_ms: int) -> dict[str, Any]:
    """The pages the synthetic history drew before the capture: all false, since the history
    is benign by construction. `last_day` counts those in the day before the capture, when
    every identity has a warm baseline (earlier ones include warm-up effects, e.g. a
    `new_identity` for an identity whose history starts over an hour after the first)."""
    before = [p for p in pages if page_ms(p) < capture_start_ms]
    return {
        "total": len(before),
        "last_day": sum(1 for p in before if page_ms(p) >= capture_start_ms - DAY_MS),
        "by_identity_and_detector": dict(
            Counter(f"{p['machine_id']} {p['detector']}" for p in before).most_common()
        ),
    }


def _replay_stats(run: Run) -> dict[str, Any]:
    return {
        "events": run.result.events,
        "pages": run.result.pages,
        "dead_letters": dict(run.result.dead_letters),
    }


# -- 1. OTRF: EC2 proxy abuse and S3 exfiltration -------------------------------------------

OTRF_INSTANCE = "i-0317f6c6b66ae9c40"
OTRF_INSTANCE_IP = "35.174.154.220"  # the proxy's public address (the dataset's story)
ROLE_MODELS = ("agent-only", "s3-config-reader")
ROLE_MODEL_TEXT = {
    "agent-only": "the instance's SSM agent heartbeat (ssm UpdateInstanceInformation every 5 "
    "minutes) and the CloudWatch agent's hourly ec2 DescribeTags, from the instance's address; "
    "the role never uses S3",
    "s3-config-reader": "agent-only plus s3 GetObject of its own nginx config "
    "(s3://mordornginxstack-config/nginx/...) every 15 minutes: the role uses S3 but never "
    "listed buckets or touched the exfiltrated bucket",
}


def load_cloudtrail_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a CloudTrail file with one record a line."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def otrf_role_history(
    attack: Sequence[Mapping[str, Any]],
    capture_start_ms: int,
    *,
    model: str,
    days: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The stolen role's modelled legitimate history (see ROLE_MODEL_TEXT) over `days`
    before the capture, as CloudTrail records of the same role session as the attack."""
    identity = attack[0]["userIdentity"]
    account = str(identity.get("accountId") or attack[0].get("recipientAccountId"))
    rng = random.Random(f"{seed}/otrf-role/{model}")
    start = capture_start_ms - days * DAY_MS
    out: list[dict[str, Any]] = []

    def add(ms: int, source: str, name: str, params: dict[str, Any], agent: str) -> None:
        out.append(
            ct_record(
                identity,
                ms,
                source,
                name,
                params,
                event_id=derived_uuid(seed, "otrf-role", model, len(out)),
                ip=OTRF_INSTANCE_IP,
                agent=agent,
                account=account,
            )
        )

    ssm_agent = "amazon-ssm-agent/2.3.1319.0"
    cw_agent = "aws-sdk-go/1.25.19 (go1.13; linux; amd64) CWAgent/1.237768.0"
    tags_filter = {
        "filterSet": {
            "items": [{"name": "resource-id", "valueSet": {"items": [{"value": OTRF_INSTANCE}]}}]
        }
    }
    t = start + rng.randint(0, 5 * MINUTE_MS)
    while t < capture_start_ms - MINUTE_MS:
        add(
            t,
            "ssm.amazonaws.com",
            "UpdateInstanceInformation",
            {"instanceId": OTRF_INSTANCE, "agentVersion": "2.3.1319.0", "platformType": "Linux"},
            ssm_agent,
        )
        t += 5 * MINUTE_MS + rng.randint(-5_000, 5_000)
    t = start + rng.randint(0, HOUR_MS)
    while t < capture_start_ms - MINUTE_MS:
        add(t, "ec2.amazonaws.com", "DescribeTags", tags_filter, cw_agent)
        t += HOUR_MS + rng.randint(-30_000, 30_000)
    if model == "s3-config-reader":
        t = start + rng.randint(0, 15 * MINUTE_MS)
        while t < capture_start_ms - MINUTE_MS:
            add(
                t,
                "s3.amazonaws.com",
                "GetObject",
                {"bucketName": "mordornginxstack-config", "key": "nginx/nginx.conf"},
                "aws-cli/1.16.300 Python/2.7.18 Linux/4.14 botocore/1.13.36",
            )
            t += 15 * MINUTE_MS + rng.randint(-20_000, 20_000)
    out.sort(key=ct_time_ms)
    return out


@dataclass
class OtrfPlan:
    """The OTRF exfiltration capture split by identity, with its histories."""

    capture: Path
    records: list[dict[str, Any]]
    capture_start_ms: int
    role: str
    pedro: str
    attack_start_ms: int
    attack_end_ms: int
    histories: dict[str, list[dict[str, Any]]]  # re-timed histories by machine
    history_method: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)


def otrf_plan(datasets: Path, *, days: int, seed: int) -> OtrfPlan:
    """Read the capture and build the re-timed histories of its benign identities."""
    path = datasets / OTRF_EXFIL
    records = load_cloudtrail_lines(path)
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_machine.setdefault(ct_machine(rec), []).append(rec)
    role = next(m for m in by_machine if ":role/MordorNginxStack-BankingWAFRole" in m)
    pedro = next(m for m in by_machine if m.endswith(":user/pedro"))
    capture_start = min(ct_time_ms(r) for r in records)
    attack_times = [ct_time_ms(r) for r in by_machine[role]]
    # Daily for a person at the console; hourly for the EC2 service, which refreshes
    # instance-profile credentials all day.
    periods = {pedro: (DAY_MS, 30 * MINUTE_MS), "ec2.amazonaws.com": (HOUR_MS, 5 * MINUTE_MS)}
    histories: dict[str, list[dict[str, Any]]] = {}
    method: dict[str, str] = {}
    for machine, (period, jitter) in periods.items():
        session = by_machine.get(machine, [])
        histories[machine] = synthesize_history(
            session,
            capture_start,
            period_ms=period,
            span_ms=days * DAY_MS,
            jitter_cap_ms=jitter,
            key=f"otrf/{machine}",
            seed=seed,
            time_of=ct_time_ms,
            copy_at=ct_copy,
        )
        method[machine] = (
            f"re-timed: its {len(session)} benign capture events copied every "
            f"{period // MINUTE_MS} minutes (jitter up to {jitter // MINUTE_MS} min) over "
            f"{days} days before the capture"
        )
    return OtrfPlan(
        capture=path,
        records=records,
        capture_start_ms=capture_start,
        role=role,
        pedro=pedro,
        attack_start_ms=min(attack_times),
        attack_end_ms=max(attack_times),
        histories=histories,
        history_method=method,
        counts={m: len(v) for m, v in by_machine.items()},
    )


def run_otrf(
    cfg: Config,
    datasets: Path,
    scratch: Path,
    *,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """History + capture replayed once per role model; the pages and verdicts."""
    plan = otrf_plan(datasets, days=days, seed=seed)
    attack = [r for r in plan.records if ct_machine(r) == plan.role]
    base = [r for h in plan.histories.values() for r in h]
    window = (plan.attack_start_ms, plan.attack_end_ms + AFTER_MS)
    capture_end = max(ct_time_ms(r) for r in plan.records)
    models = []
    for model in ROLE_MODELS:
        role_history = otrf_role_history(
            attack, plan.capture_start_ms, model=model, days=days, seed=seed
        )
        history = sorted([*base, *role_history], key=ct_time_ms)
        path = scratch / f"otrf-history-{model}.jsonl"
        _write_jsonl(path, history)
        run = run_replay(cfg, [path, plan.capture], "cloudtrail")
        role_pages = pages_on(run.pages, [plan.role], *window)
        pedro_pages = pages_on(
            run.pages, [plan.pedro], plan.capture_start_ms, capture_end + AFTER_MS
        )
        models.append(
            {
                "role_model": model,
                "role_history": ROLE_MODEL_TEXT[model],
                "role_history_events": len(role_history),
                "replay": _replay_stats(run),
                "stolen_role_paged": bool(role_pages),
                "stolen_role_detectors": _detectors(role_pages),
                "pedro_paged": bool(pedro_pages),
                "history_pages": history_pages(run.pages, plan.capture_start_ms),
                "pages": [page_row(p) for p in run.pages if page_ms(p) >= plan.capture_start_ms],
            }
        )
    history_info: dict[str, dict[str, Any]] = {
        m: {
            "events": len(h),
            "first": format_rfc3339_ms(ct_time_ms(h[0])) if h else None,
            "last": format_rfc3339_ms(ct_time_ms(h[-1])) if h else None,
            "method": plan.history_method[m],
        }
        for m, h in plan.histories.items()
    }
    history_info[plan.role] = {
        "events": {m["role_model"]: m["role_history_events"] for m in models},
        "method": "modelled (the capture has no legitimate call by the role), one replay per "
        "model: " + "; ".join(f"{k}: {v}" for k, v in ROLE_MODEL_TEXT.items()),
    }
    return {
        "dataset": str(Path(OTRF_EXFIL)),
        "format": "cloudtrail",
        "method": f"{days} days of warm-up history before the capture, then the capture; "
        "see the module docstring of bench/realdata.py",
        "history_days": days,
        "capture": {
            "records": len(plan.records),
            "start": format_rfc3339_ms(plan.capture_start_ms),
            "end": format_rfc3339_ms(capture_end),
            "events_by_identity": plan.counts,
            "attack_identity": plan.role,
            "attack_window": [format_rfc3339_ms(window[0]), format_rfc3339_ms(window[1])],
        },
        "history": history_info,
        "expected": "stolen role pages, pedro does not",
        "role_models": models,
        "stolen_role_paged": all(m["stolen_role_paged"] for m in models),
        "pedro_paged": any(m["pedro_paged"] for m in models),
        "pass": all(m["stolen_role_paged"] and not m["pedro_paged"] for m in models),
    }


# -- 2. OTRF: PurpleSharp AD playbook ----------------------------------------------------------

BAD_PASSWORD = ("0xc000006d", "0xc000006a")
PS_DC = "MORDORDC.theshire.local"
PS_DC_ACCOUNT = "MORDORDC$"
PS_WORKSTATIONS = {
    "WORKSTATION5": "172.18.39.5",
    "WORKSTATION6": "172.18.39.6",
    "WORKSTATION7": "172.18.39.7",
}
PS_HOSTS = (PS_DC, *(f"{w}.theshire.local" for w in PS_WORKSTATIONS))
PS_ATTACKER = "pgustavo"


def ps_account(identity: str) -> str:
    """The account of a Windows identity: `user@REALM` (Kerberos events) is `user`, so one
    account is one identity whichever event logged it."""
    name, at, realm = identity.rpartition("@")
    return name if at and name and "." in realm else identity


def ps_kind(account: str) -> str:
    """machine, anonymous, service (a `*svc` account) or user."""
    if account.endswith("$"):
        return "machine"
    if account.upper() == "ANONYMOUS LOGON":
        return "anonymous"
    return "service" if account.lower().endswith("svc") else "user"


def ps_event(row: Mapping[str, str], event_id: str) -> dict[str, Any]:
    """Our event form of one row of the PurpleSharp security-events CSV (see the module
    docstring for the mapping)."""
    account = ps_account(row["identity"])
    op_type = row["operation"]
    if row["event_id"] == "4769":
        resource = f"kerberos://{ps_account(row['resource'])}"
    elif op_type.startswith("share"):
        share = row["resource"].lstrip("\\").removeprefix("*\\").replace("\\", "/")
        resource = f"smb://{row['log_host']}/{share}"
    else:
        resource = f"host://{row['resource']}"
    operation = f"{row['event_id']}:{op_type}"
    if row.get("logon_type"):
        operation += f"/type{row['logon_type']}"
    status = (row.get("status") or "").lower()
    if status in BAD_PASSWORD:
        outcome = "DENIED"
    elif row["outcome"].lower() == "failure" or status not in ("", "0x0"):
        outcome = "FAILURE"
    else:
        outcome = "SUCCESS"
    event: dict[str, Any] = {
        "event_id": event_id,
        "timestamp": parse_timestamp_us(row["timestamp"]) // 1000,
        "machine_id": account,
        "resource": resource,
        "operation": operation,
        "outcome": outcome,
        "identity_type": ps_kind(account),
        "source": "windows-security",
        "attributes": {
            k: v
            for k, v in {
                "event_code": row["event_id"],
                "log_host": row["log_host"],
                "logon_type": row.get("logon_type", ""),
                "status": row.get("status", ""),
                "client": row.get("source", ""),
                "label_heuristic": row.get("label_heuristic", ""),
            }.items()
            if v
        },
    }
    client = row.get("source", "")
    if client and client != "-" and client[0].isdigit():
        event["source_ip"] = client
    return event


def ev_time(event: Mapping[str, Any]) -> int:
    return int(event["timestamp"])


def ev_copy(event: Mapping[str, Any], ms: int, index: int) -> dict[str, Any]:
    """A history copy of one of our events: re-timed, with an event id of its own."""
    out = dict(event)
    out["timestamp"] = ms
    out["event_id"] = f"{event['event_id']}-h{index}"
    out["attributes"] = {
        k: v for k, v in dict(event.get("attributes", {})).items() if k != "label_heuristic"
    }
    return out


def ps_account_history(
    account: str, capture_start_ms: int, *, days: int, seed: int
) -> list[dict[str, Any]]:
    """The modelled history of an account with no benign event in the capture (see the
    module docstring): a domain user's workday around the capture's time of day, or a
    service account's hourly service logons on every host."""
    rng = random.Random(f"{seed}/purplesharp/{account}")
    out: list[dict[str, Any]] = []

    def add(
        ms: int, event_code: str, op: str, resource: str, log_host: str, ip: str | None
    ) -> None:
        ev: dict[str, Any] = {
            "event_id": f"ps-model-{account}-{len(out)}",
            "timestamp": ms,
            "machine_id": account,
            "resource": resource,
            "operation": f"{event_code}:{op}",
            "outcome": "SUCCESS",
            "identity_type": ps_kind(account),
            "source": "windows-security",
            "attributes": {"event_code": event_code, "log_host": log_host, "modelled": "1"},
        }
        if ip is not None:
            ev["source_ip"] = ip
        out.append(ev)

    if ps_kind(account) == "service":
        t = capture_start_ms - days * DAY_MS + rng.randint(0, HOUR_MS)
        while t < capture_start_ms - MINUTE_MS:
            for i, host in enumerate(PS_HOSTS):
                add(t + i * 1_000, "4624", "logon/type5", f"host://{host}", host, None)
            t += HOUR_MS + rng.randint(-60_000, 60_000)
        return out
    users = ("lrodriguez", "sbeavers", "mscott", "pbeesly")
    if account == PS_ATTACKER:
        station = "WORKSTATION5"  # where PurpleSharp ran, from his Downloads folder
    else:
        station = ("WORKSTATION6", "WORKSTATION7")[
            users.index(account) % 2 if account in users else 0
        ]
    ip = PS_WORKSTATIONS[station]
    host = f"{station}.theshire.local"
    for d in range(days, 0, -1):
        day0 = capture_start_ms - d * DAY_MS + rng.randint(-20 * MINUTE_MS, 20 * MINUTE_MS)
        t = day0 - HOUR_MS
        add(t, "4624", "logon/type2", f"host://{host}", host, None)
        add(t + 400, "4769", "kerberos_tgs", f"kerberos://{station}$", PS_DC, ip)
        for slot in range(10):  # every 30 minutes for 5 hours
            s = t + (slot + 1) * 30 * MINUTE_MS + rng.randint(-5 * MINUTE_MS, 5 * MINUTE_MS)
            add(s, "4769", "kerberos_tgs", f"kerberos://{PS_DC_ACCOUNT}", PS_DC, ip)
            add(s + 50, "4624", "logon/type3", f"host://{PS_DC}", PS_DC, ip)
            add(s + 3_000, "4634", "logoff/type3", f"host://{PS_DC}", PS_DC, None)
            if slot % 4 == 0:
                add(s + 200, "4769", "kerberos_tgs", "kerberos://krbtgt", PS_DC, ip)
        add(t + 5 * HOUR_MS + 30 * MINUTE_MS, "4634", "logoff/type2", f"host://{host}", host, None)
    out.sort(key=ev_time)
    return [e for e in out if e["timestamp"] < capture_start_ms]


def run_purplesharp(
    cfg: Config,
    datasets: Path,
    scratch: Path,
    *,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """History + capture (our JSON event form) in one replay; the pages and verdicts."""
    path = datasets / OTRF_PURPLESHARP
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    capture = [ps_event(row, f"purplesharp-{i}") for i, row in enumerate(rows, 2)]
    capture_start = min(ev_time(e) for e in capture)
    capture_end = max(ev_time(e) for e in capture)
    benign: dict[str, list[dict[str, Any]]] = {}
    attack_by: Counter[str] = Counter()
    for ev, row in zip(capture, rows, strict=True):
        if row.get("label_heuristic") == "1":
            attack_by[ev["machine_id"]] += 1
        else:
            benign.setdefault(ev["machine_id"], []).append(ev)
    accounts = sorted({e["machine_id"] for e in capture})
    history: list[dict[str, Any]] = []
    method: dict[str, dict[str, Any]] = {}
    for account in accounts:
        if account in benign:
            h = synthesize_history(
                benign[account],
                capture_start,
                period_ms=90 * MINUTE_MS,
                span_ms=days * DAY_MS,
                jitter_cap_ms=20 * MINUTE_MS,
                key=f"purplesharp/{account}",
                seed=seed,
                time_of=ev_time,
                copy_at=ev_copy,
            )
            how = (
                f"re-timed: its {len(benign[account])} benign capture events copied every 90 "
                f"minutes (jitter up to 20 min) over {days} days"
            )
        else:
            h = ps_account_history(account, capture_start, days=days, seed=seed)
            how = "modelled (no benign event in the capture): " + (
                "hourly service logons on every host"
                if ps_kind(account) == "service"
                else "domain-user workday around the capture's time of day"
            )
        history.extend(h)
        method[account] = {
            "kind": ps_kind(account),
            "capture_events": sum(1 for e in capture if e["machine_id"] == account),
            "attack_events": attack_by[account],
            "history_events": len(h),
            "history": how,
        }
    history.sort(key=ev_time)
    events_path = scratch / "purplesharp-events.jsonl"
    _write_jsonl(events_path, [*history, *capture])
    run = run_replay(cfg, [events_path], "jsonl")
    attack_times = [
        ev_time(e) for e, r in zip(capture, rows, strict=True) if r.get("label_heuristic") == "1"
    ]
    window = (min(attack_times), max(attack_times) + AFTER_MS)
    attacker_pages = pages_on(run.pages, [PS_ATTACKER], *window)
    targets = [a for a in accounts if a != PS_ATTACKER and attack_by[a] and a not in benign]
    benign_only = [a for a in accounts if not attack_by[a]]
    target_pages = pages_on(run.pages, targets, *window)
    benign_pages = pages_on(run.pages, benign_only, capture_start, capture_end + AFTER_MS)
    return {
        "dataset": str(Path(OTRF_PURPLESHARP)),
        "format": "jsonl (mapped here from the CSV; see the module docstring)",
        "method": f"{days} days of warm-up history before the capture, then the capture",
        "history_days": days,
        "capture": {
            "events": len(capture),
            "start": format_rfc3339_ms(capture_start),
            "end": format_rfc3339_ms(capture_end),
            "attack_window": [format_rfc3339_ms(window[0]), format_rfc3339_ms(window[1])],
        },
        "identities": method,
        "replay": _replay_stats(run),
        "expected": "the attack pages on pgustavo",
        "attack_paged": bool(attacker_pages),
        "attack_detectors": _detectors(attacker_pages),
        "spray_targets": targets,
        "spray_targets_paged": sorted({str(p["machine_id"]) for p in target_pages}),
        "benign_identities_paged": sorted({str(p["machine_id"]) for p in benign_pages}),
        "history_pages": history_pages(run.pages, capture_start),
        "pages": [page_row(p) for p in run.pages if page_ms(p) >= capture_start],
        "pass": bool(attacker_pages),
    }


# -- 3. Stratus Red Team into a synthetic CloudTrail background ----------------------------

BG_ACCOUNT = "210987654321"
BG_START_MS = int(datetime(2026, 9, 7, tzinfo=UTC).timestamp() * 1000)  # a Monday
BG_INJECT_HOUR = 14  # UTC, on the day after the warm-up: office hours for the people

# Hourly weights (UTC 00..23): people at work; services busy by day, never idle; flat.
_OFFICE = (0, 0, 0, 0, 0, 0, 0, 0.3, 1.5, 2, 2, 1.8, 1.2, 1.8, 2, 1.8, 1.5, 0.8, 0.2, 0, 0, 0, 0, 0)
_BUSINESS = (
    0.3, 0.25, 0.2, 0.2, 0.25, 0.35, 0.5, 0.8, 1.2, 1.5, 1.6, 1.6,
    1.5, 1.6, 1.6, 1.5, 1.4, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3,
)  # fmt: skip
_FLAT = (1.0,) * 24

# (eventSource, eventName, requestParameters choices, weight)
Call = tuple[str, str, tuple[dict[str, Any] | None, ...], float]
_FLEET = ("i-0a1b2c3d4e5f60718", "i-0b2c3d4e5f6071829", "i-0c3d4e5f607182930")


def _one(source: str, name: str, weight: float, *params: dict[str, Any] | None) -> Call:
    return (source, name, params or (None,), weight)


@dataclass(frozen=True)
class BgIdentity:
    """One identity of the synthetic background and how it behaves.

    `style` "sessions": `per_hour` sessions an hour at weight 1 of `rhythm`, each a burst of
    `burst` calls about `gap_s` apart (people, CI pipelines); "steady": `per_hour` calls an
    hour at weight 1 (workloads); "periodic": one call of `calls[0]` every `gap_s` per
    session name (agents). `weekend` scales Saturday and Sunday."""

    key: str
    kind: str  # IAMUser or AssumedRole
    name: str  # user or role name
    sessions: tuple[str, ...]
    style: str
    rhythm: tuple[float, ...]
    weekend: float
    per_hour: float
    calls: tuple[Call, ...]
    agent: str
    ips: tuple[str, ...]
    burst: tuple[int, int] = (1, 1)
    gap_s: float = 10.0
    fail_share: float = 0.0
    fail_code: str = "AccessDenied"
    first_call: Call | None = None  # made at the start of every session (a console sign-in)

    def identity(self, session: str | None = None) -> dict[str, Any]:
        """The CloudTrail `userIdentity` of this identity (a role: of one session)."""
        if self.kind == "IAMUser":
            key_id = "AKIA" + hashlib.sha1(self.name.encode()).hexdigest()[:16].upper()
            return iam_user_identity(BG_ACCOUNT, self.name, key_id)
        return role_identity(BG_ACCOUNT, self.name, session or self.sessions[0])

    @property
    def machine(self) -> str:
        """The machine id the cloudtrail reader gives this identity."""
        kind = "user" if self.kind == "IAMUser" else "role"
        return f"arn:aws:iam::{BG_ACCOUNT}:{kind}/{self.name}"


BACKGROUND: tuple[BgIdentity, ...] = (
    BgIdentity(
        key="operator",
        kind="IAMUser",
        name="alice.ops",
        sessions=(),
        style="sessions",
        rhythm=_OFFICE,
        weekend=0.05,
        per_hour=0.35,
        burst=(8, 40),
        gap_s=12.0,
        fail_share=0.01,
        agent="console.amazonaws.com",
        ips=("198.51.100.23",),
        first_call=_one("signin.amazonaws.com", "ConsoleLogin", 1, None),
        calls=(
            _one(
                "ec2.amazonaws.com",
                "DescribeInstances",
                8,
                None,
                *({"instancesSet": {"items": [{"instanceId": i}]}} for i in _FLEET),
            ),
            _one("ec2.amazonaws.com", "DescribeSecurityGroups", 2),
            _one("ec2.amazonaws.com", "DescribeVolumes", 3),
            _one("ec2.amazonaws.com", "DescribeSnapshots", 1),
            _one("ec2.amazonaws.com", "DescribeInstanceStatus", 3),
            _one("elasticloadbalancing.amazonaws.com", "DescribeLoadBalancers", 2),
            _one("monitoring.amazonaws.com", "DescribeAlarms", 3),
            _one("monitoring.amazonaws.com", "GetMetricData", 4),
            _one("s3.amazonaws.com", "ListBuckets", 1),
            _one(
                "s3.amazonaws.com",
                "GetBucketLocation",
                1,
                {"bucketName": "acme-app-data"},
                {"bucketName": "acme-ci-artifacts"},
            ),
            _one("iam.amazonaws.com", "ListUsers", 0.5),
            _one("iam.amazonaws.com", "ListRoles", 0.5),
            _one("cloudtrail.amazonaws.com", "LookupEvents", 1),
            _one("cloudtrail.amazonaws.com", "DescribeTrails", 0.3),
            _one("logs.amazonaws.com", "DescribeLogGroups", 1),
            _one(
                "logs.amazonaws.com",
                "FilterLogEvents",
                2,
                {"logGroupName": "/app/backend"},
                {"logGroupName": "/aws/lambda/processor"},
            ),
            _one("ssm.amazonaws.com", "DescribeInstanceInformation", 1),
            _one(
                "ec2.amazonaws.com",
                "CreateTags",
                0.3,
                *({"resourcesSet": {"items": [{"resourceId": i}]}} for i in _FLEET),
            ),
            _one(
                "ec2.amazonaws.com",
                "RebootInstances",
                0.1,
                *({"instancesSet": {"items": [{"instanceId": i}]}} for i in _FLEET),
            ),
        ),
    ),
    BgIdentity(
        key="ci",
        kind="IAMUser",
        name="ci-deploy",
        sessions=(),
        style="sessions",
        rhythm=_OFFICE,
        weekend=0.1,
        per_hour=0.6,
        burst=(15, 35),
        gap_s=4.0,
        fail_share=0.005,
        fail_code="ThrottlingException",
        agent="aws-cli/2.15.30 Python/3.11.8 Linux/5.15 exe/x86_64.ubuntu.22 exec-env/CI",
        ips=("203.0.113.40", "203.0.113.41"),
        first_call=_one("sts.amazonaws.com", "GetCallerIdentity", 1),
        calls=(
            _one(
                "s3.amazonaws.com",
                "PutObject",
                4,
                {"bucketName": "acme-ci-artifacts", "key": "builds/app/build.zip"},
            ),
            _one("cloudformation.amazonaws.com", "DescribeStacks", 5),
            _one("cloudformation.amazonaws.com", "CreateChangeSet", 1),
            _one("cloudformation.amazonaws.com", "DescribeChangeSet", 3),
            _one("cloudformation.amazonaws.com", "ExecuteChangeSet", 1),
            _one("lambda.amazonaws.com", "GetFunction20150331v2", 2, {"functionName": "processor"}),
            _one(
                "lambda.amazonaws.com",
                "UpdateFunctionCode20150331v2",
                1,
                {"functionName": "processor"},
            ),
            _one("ecr.amazonaws.com", "GetAuthorizationToken", 1),
            _one("ecr.amazonaws.com", "PutImage", 1, {"repositoryName": "app"}),
        ),
    ),
    BgIdentity(
        key="app",
        kind="AssumedRole",
        name="app-backend",
        sessions=_FLEET,
        style="steady",
        rhythm=_BUSINESS,
        weekend=0.6,
        per_hour=36.0,
        fail_share=0.002,
        fail_code="ThrottlingException",
        agent="aws-sdk-java/2.20.162 Linux/5.10 OpenJDK_64-Bit_Server_VM/17.0.8",
        ips=("10.0.1.11", "10.0.1.12", "10.0.1.13"),
        calls=(
            _one(
                "s3.amazonaws.com",
                "GetObject",
                6,
                {"bucketName": "acme-app-data", "key": "uploads/2026/x.bin"},
            ),
            _one(
                "s3.amazonaws.com",
                "PutObject",
                2,
                {"bucketName": "acme-app-data", "key": "uploads/2026/y.bin"},
            ),
            _one(
                "dynamodb.amazonaws.com",
                "GetItem",
                6,
                {"tableName": "orders"},
                {"tableName": "users"},
            ),
            _one("dynamodb.amazonaws.com", "PutItem", 3, {"tableName": "orders"}),
            _one("dynamodb.amazonaws.com", "Query", 3, {"tableName": "orders"}),
            _one(
                "sqs.amazonaws.com",
                "SendMessage",
                2,
                {"queueUrl": "https://sqs.us-east-1.amazonaws.com/210987654321/jobs"},
            ),
            _one(
                "secretsmanager.amazonaws.com", "GetSecretValue", 0.3, {"secretId": "prod/app/db"}
            ),
            _one(
                "kms.amazonaws.com",
                "Decrypt",
                1,
                {"keyId": "arn:aws:kms:us-east-1:210987654321:key/app"},
            ),
        ),
    ),
    BgIdentity(
        key="lambda",
        kind="AssumedRole",
        name="lambda-processor",
        sessions=("processor",),
        style="steady",
        rhythm=_FLAT,
        weekend=1.0,
        per_hour=18.0,
        fail_share=0.002,
        fail_code="ThrottlingException",
        agent="Boto3/1.34.34 md/Botocore#1.34.34 Python/3.12.1 exec-env/AWS_Lambda_python3.12",
        ips=("3.80.12.7",),
        calls=(
            _one(
                "s3.amazonaws.com",
                "GetObject",
                3,
                {"bucketName": "acme-ingest", "key": "incoming/batch.json"},
            ),
            _one("dynamodb.amazonaws.com", "PutItem", 2, {"tableName": "events"}),
            _one(
                "sqs.amazonaws.com",
                "DeleteMessage",
                2,
                {"queueUrl": "https://sqs.us-east-1.amazonaws.com/210987654321/jobs"},
            ),
        ),
    ),
    BgIdentity(
        key="monitoring",
        kind="AssumedRole",
        name="monitoring-integration",
        sessions=("datadog-aws-integration",),
        style="sessions",
        rhythm=_FLAT,
        weekend=1.0,
        per_hour=3.0,
        burst=(8, 12),
        gap_s=1.5,
        agent="datadog-aws-integration/1.0 aws-sdk-go/1.44",
        ips=("44.192.28.10",),
        calls=(
            _one("ec2.amazonaws.com", "DescribeInstances", 2),
            _one("ec2.amazonaws.com", "DescribeVolumes", 1),
            _one("rds.amazonaws.com", "DescribeDBInstances", 1),
            _one("lambda.amazonaws.com", "ListFunctions20150331", 1),
            _one("elasticloadbalancing.amazonaws.com", "DescribeLoadBalancers", 1),
            _one("monitoring.amazonaws.com", "GetMetricData", 3),
            _one("tagging.amazonaws.com", "GetResources", 1),
            _one("s3.amazonaws.com", "ListBuckets", 0.5),
            _one("sqs.amazonaws.com", "ListQueues", 0.5),
            _one("dynamodb.amazonaws.com", "ListTables", 0.5),
        ),
    ),
    BgIdentity(
        key="sso-admin",
        kind="AssumedRole",
        name="AWSReservedSSO_AdministratorAccess_4f2a9c1e7b3d5a60",
        sessions=("bob@example.com", "carol@example.com"),
        style="sessions",
        rhythm=_OFFICE,
        weekend=0.0,
        per_hour=0.15,
        burst=(10, 30),
        gap_s=15.0,
        fail_share=0.01,
        agent="console.amazonaws.com",
        ips=("198.51.100.41", "198.51.100.42"),
        calls=(
            _one("iam.amazonaws.com", "ListRoles", 2),
            _one(
                "iam.amazonaws.com",
                "GetRole",
                2,
                {"roleName": "app-backend"},
                {"roleName": "lambda-processor"},
            ),
            _one("iam.amazonaws.com", "ListAttachedRolePolicies", 2, {"roleName": "app-backend"}),
            _one("organizations.amazonaws.com", "DescribeOrganization", 1),
            _one("cloudtrail.amazonaws.com", "LookupEvents", 2),
            _one("ec2.amazonaws.com", "DescribeInstances", 3),
            _one("ec2.amazonaws.com", "DescribeSecurityGroups", 1),
            _one("iam.amazonaws.com", "TagRole", 0.2, {"roleName": "app-backend"}),
        ),
    ),
    BgIdentity(
        key="ssm-fleet",
        kind="AssumedRole",
        name="ssm-managed-instance",
        sessions=("i-0d4e5f60718293a4b", "i-0e5f60718293a4b5c"),
        style="periodic",
        rhythm=_FLAT,
        weekend=1.0,
        per_hour=0.0,
        gap_s=300.0,
        agent="amazon-ssm-agent/3.3.40.0",
        ips=("10.0.2.21", "10.0.2.22"),
        calls=(_one("ssm.amazonaws.com", "UpdateInstanceInformation", 1),),
    ),
)
BY_KEY = {b.key: b for b in BACKGROUND}
# (b): the existing background identity a technique identity of each kind is rewritten to.
EXISTING_FOR_KIND = {"IAMUser": "operator", "FederatedUser": "operator", "AssumedRole": "app"}
EXISTING_SSO = "sso-admin"


def _pick_call(rng: random.Random, calls: Sequence[Call]) -> tuple[str, str, dict[str, Any] | None]:
    source, name, params, _ = rng.choices(calls, weights=[c[3] for c in calls])[0]
    return source, name, rng.choice(params)


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: lam is at most a few dozen here.
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def background_records(start_ms: int, end_ms: int, seed: int) -> list[dict[str, Any]]:
    """The synthetic CloudTrail background from `start_ms` to `end_ms`, in time order: every
    identity of BACKGROUND behaving as its fields say. Deterministic for a seed."""
    out: list[dict[str, Any]] = []
    for ident in BACKGROUND:
        rng = random.Random(f"{seed}/background/{ident.key}")

        def emit(
            ms: int,
            call: tuple[str, str, dict[str, Any] | None],
            session: str | None,
            ip: str,
            ident: BgIdentity = ident,
            rng: random.Random = rng,
        ) -> None:
            error = ident.fail_code if rng.random() < ident.fail_share else None
            out.append(
                ct_record(
                    ident.identity(session),
                    ms,
                    call[0],
                    call[1],
                    call[2],
                    event_id=derived_uuid(seed, "bg", ident.key, len(out), ms),
                    ip=ip,
                    agent=ident.agent,
                    account=BG_ACCOUNT,
                    error=error,
                )
            )

        if ident.style == "periodic":
            for i, session in enumerate(ident.sessions):
                t = start_ms + rng.randint(0, int(ident.gap_s * 1000))
                while t < end_ms:
                    emit(t, _pick_call(rng, ident.calls), session, ident.ips[i % len(ident.ips)])
                    t += int(ident.gap_s * 1000) + rng.randint(-3_000, 3_000)
            continue
        for hour_start in range(start_ms, end_ms, HOUR_MS):
            hour = (hour_start // HOUR_MS) % 24
            weekday = datetime.fromtimestamp(hour_start / 1000, tz=UTC).weekday()
            lam = ident.per_hour * ident.rhythm[hour] * (ident.weekend if weekday >= 5 else 1.0)
            for _ in range(_poisson(rng, lam)):
                t = hour_start + rng.randint(0, HOUR_MS - 1)
                who = rng.choice(ident.sessions) if ident.sessions else None
                ip = rng.choice(ident.ips)
                if ident.style == "steady":
                    emit(t, _pick_call(rng, ident.calls), who, ip)
                    continue
                if ident.first_call is not None:
                    emit(t, _pick_call(rng, (ident.first_call,)), who, ip)
                for _ in range(rng.randint(*ident.burst)):
                    t += max(1_000, int(rng.expovariate(1 / ident.gap_s) * 1000))
                    emit(t, _pick_call(rng, ident.calls), who, ip)
    out = [r for r in out if ct_time_ms(r) < end_ms]
    out.sort(key=ct_time_ms)
    return out


def existing_identity_for(user_identity: Mapping[str, Any]) -> BgIdentity:
    """The background identity a technique identity is rewritten to in case (b): IAM and
    federated users -> the console operator, SSO roles -> the SSO admin role, other roles ->
    the EC2 application role."""
    kind = str(user_identity.get("type"))
    arn = str(user_identity.get("arn", ""))
    if kind == "AssumedRole" and "/AWSReservedSSO" in arn:
        return BY_KEY[EXISTING_SSO]
    return BY_KEY[EXISTING_FOR_KIND.get(kind, "operator")]


def stratus_existing(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Case (b): every record's identity rewritten to its existing background identity
    (a role keeps one background session for the whole technique)."""
    out = []
    for rec in records:
        target = existing_identity_for(rec.get("userIdentity") or {})
        out.append(rewrite_identity(rec, target.identity()))
    return out


def run_stratus(
    cfg: Config,
    datasets: Path,
    scratch: Path,
    *,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    only: Sequence[str] = (),
    exact: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Every technique re-timed into the background, under its own and under an existing
    identity, each replayed with the background (a `SplitReplay` continuation, or with
    `exact` a whole `replay` each); plus the background alone for its false pages."""
    warmup_end = BG_START_MS + days * DAY_MS
    inject = warmup_end + BG_INJECT_HOUR * HOUR_MS
    end = inject + HOUR_MS
    background = background_records(BG_START_MS, end, seed)
    bg_path = scratch / "stratus-background.jsonl"
    _write_jsonl(bg_path, background)
    t0 = time.perf_counter()
    bg_run = run_replay(cfg, [bg_path], "cloudtrail")
    split = None if exact else SplitReplay(cfg, [bg_path], "cloudtrail", inject)
    if log is not None:
        print(
            f"stratus background: {len(background):,} events replayed in "
            f"{time.perf_counter() - t0:.1f} s",
            file=log,
            flush=True,
        )
    bg_ids = {p["alert_id"] for p in bg_run.pages}

    files = sorted((datasets / STRATUS_DIR).glob("*.json"))
    if only:
        files = [f for f in files if any(o in f.stem for o in only)]
    plans: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for f in files:
        records = orjson.loads(f.read_bytes())
        timed = retime(records, inject, ct_time_ms, ct_with_time)
        existing = stratus_existing(timed)
        plans[f.stem] = {
            "records": len(timed),
            "start_ms": ct_time_ms(timed[0]),
            "end_ms": ct_time_ms(timed[-1]),
            "own": sorted({ct_machine(r) for r in timed}),
            "existing": sorted({ct_machine(r) for r in existing}),
        }
        for mode, recs in (("own", timed), ("existing", existing)):
            path = scratch / f"{f.stem}.{mode}.jsonl"
            _write_jsonl(path, recs)
            run = (
                split.continue_with([path])
                if split
                else run_replay(cfg, [bg_path, path], "cloudtrail")
            )
            results.append({"technique": f.stem, "mode": mode, "pages": run.pages})
    by_key = {(r["technique"], r["mode"]): r for r in results}
    rows = []
    for technique, plan in plans.items():
        row: dict[str, Any] = {
            "technique": technique.removeprefix("aws."),
            "records": plan["records"],
            "seconds": round((plan["end_ms"] - plan["start_ms"]) / 1000, 1),
            "identities_own": plan["own"],
            "identities_existing": plan["existing"],
        }
        window = (plan["start_ms"], plan["end_ms"] + AFTER_MS)
        detectors: dict[str, list[str]] = {}
        for mode in ("own", "existing"):
            r = by_key[(technique, mode)]
            hits = [
                p for p in pages_on(r["pages"], plan[mode], *window) if p["alert_id"] not in bg_ids
            ]
            # Pages the technique caused elsewhere (another identity, or later than the window).
            other = [p for p in r["pages"] if p["alert_id"] not in bg_ids and p not in hits]
            row[f"caught_{mode}_identity"] = bool(hits)
            detectors[mode] = _detectors(hits)
            row[f"pages_{mode}"] = [page_row(p) for p in hits]
            if other:
                row[f"other_new_pages_{mode}"] = [page_row(p) for p in other]
        row["detectors"] = detectors
        rows.append(row)

    bg_after = [p for p in bg_run.pages if page_ms(p) >= warmup_end]
    machine_hours = _machine_hours(background, warmup_end)
    return {
        "dataset": STRATUS_DIR,
        "format": "cloudtrail",
        "method": (
            f"synthetic CloudTrail background of {len(BACKGROUND)} identities from "
            f"{format_rfc3339_ms(BG_START_MS)} (a Monday), {days} days of warm-up; each "
            f"technique re-timed to start at {format_rfc3339_ms(inject)} (order and spacing "
            "kept), replayed with the background up to one hour later, (a) under its own "
            "identities and (b) rewritten to an existing background identity of the same "
            "kind; caught = a page on a technique identity from its first event to 15 minutes "
            "after its last that the background alone does not produce"
        ),
        "background": {
            "events": len(background),
            "start": format_rfc3339_ms(BG_START_MS),
            "warmup_end": format_rfc3339_ms(warmup_end),
            "end": format_rfc3339_ms(end),
            "identities": {
                b.machine: {
                    "events": sum(1 for r in background if ct_machine(r) == b.machine),
                    "style": b.style,
                    "existing_for": sorted(k for k, v in EXISTING_FOR_KIND.items() if v == b.key)
                    + (["AssumedRole (AWSReservedSSO*)"] if b.key == EXISTING_SSO else []),
                }
                for b in BACKGROUND
            },
            "replay": _replay_stats(bg_run),
            "pages_during_warmup": len(bg_run.pages) - len(bg_after),
            "false_pages_after_warmup": len(bg_after),
            "machine_hours_after_warmup": round(machine_hours, 1),
            "false_pages": [page_row(p) for p in bg_after],
        },
        "techniques": rows,
        "caught_own_identity": sum(r["caught_own_identity"] for r in rows),
        "caught_existing_identity": sum(r["caught_existing_identity"] for r in rows),
        # Technique resources carry the detonation's own names (stratus-red-team-...), new to
        # any background identity: these catches would not survive an attack on resources
        # the identity already uses.
        "existing_caught_by_new_resource_only": [
            r["technique"] for r in rows if r["detectors"]["existing"] == ["new_resource"]
        ],
        "total": len(rows),
    }


def _machine_hours(records: Iterable[Mapping[str, Any]], after_ms: int) -> float:
    spans: dict[str, list[int]] = {}
    for r in records:
        t = ct_time_ms(r)
        if t < after_ms:
            continue
        span = spans.setdefault(ct_machine(r), [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
    return sum(b - a for a, b in spans.values()) / HOUR_MS


# -- report ---------------------------------------------------------------------------------


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _page_list(pages: Sequence[Mapping[str, Any]], machines: Iterable[str] | None = None) -> str:
    wanted = set(machines) if machines is not None else None
    counts = Counter(
        f"{p['detector']}:{p['severity']}"
        for p in pages
        if wanted is None or p["machine"] in wanted
    )
    return ", ".join(f"{k}" + (f" x{n}" if n > 1 else "") for k, n in counts.items()) or "-"


def _short_arn(text: str) -> str:
    """Account ARNs shortened to their last part (`user/pedro`), for the table."""
    return re.sub(r"arn:aws:iam::\d+:", "", text)


def _history_line(h: Mapping[str, Any]) -> str:
    by = ", ".join(f"{_short_arn(k)} x{n}" for k, n in h["by_identity_and_detector"].items())
    return (
        f"  the benign synthetic history itself drew {h['total']} pages "
        f"({h['last_day']} in its last day)" + (f": {by}" if by else "")
    )


def render(doc: Mapping[str, Any]) -> str:
    """The results document as a plain-text table."""
    lines: list[str] = []
    o = doc.get("otrf_exfiltration")
    if o is not None:
        role = o["capture"]["attack_identity"]
        lines += [
            f"OTRF ec2_proxy_s3_exfiltration: {o['capture']['records']} records after "
            f"{o['history_days']} days of history; expected: the stolen role pages, pedro does "
            "not",
            f"  {'role history model':<20}{'role paged':<12}{'pedro paged':<13}"
            "pages in the capture",
        ]
        for m in o["role_models"]:
            lines.append(
                f"  {m['role_model']:<20}{_yes(m['stolen_role_paged']):<12}"
                f"{_yes(m['pedro_paged']):<13}"
                f"role: {_page_list(m['pages'], [role])}; others: "
                f"{_page_list([p for p in m['pages'] if p['machine'] != role])}"
            )
        first = o["role_models"][0]
        for p in first["pages"]:
            lines.append(
                f"    {p['event_time'][11:19]} {p['severity']:<8} {_short_arn(p['summary'])}"
            )
        lines.append(_history_line(first["history_pages"]) + f" [{first['role_model']}]")
        lines.append(f"  -> {'PASS' if o['pass'] else 'FAIL'}")
    p = doc.get("purplesharp")
    if p is not None:
        lines += [
            "",
            f"OTRF PurpleSharp AD playbook I: {p['capture']['events']} events after "
            f"{p['history_days']} days of history; expected: the attack pages on pgustavo",
            f"  attacker pgustavo paged: {_yes(p['attack_paged'])} "
            f"({_page_list(p['pages'], [PS_ATTACKER])})",
            f"  spray targets paged: {len(p['spray_targets_paged'])}/{len(p['spray_targets'])} "
            f"{', '.join(p['spray_targets_paged'])}",
            f"  benign identities paged in the capture: "
            f"{', '.join(p['benign_identities_paged']) or 'none'}",
        ]
        for pg in p["pages"]:
            lines.append(
                f"    {pg['event_time'][11:23]} {pg['machine']:<12} {pg['severity']:<8} "
                f"{pg['summary']}"
            )
        lines.append(_history_line(p["history_pages"]))
        lines.append(f"  -> {'PASS' if p['pass'] else 'FAIL'}")
    s = doc.get("stratus")
    if s is not None:
        bg = s["background"]
        lines += [
            "",
            f"Stratus Red Team: {s['total']} techniques into {bg['events']:,} background events "
            f"({len(bg['identities'])} identities, warm-up to {bg['warmup_end'][:10]})",
            f"  {'technique':<56}{'own identity':<26}existing identity",
        ]
        for r in s["techniques"]:
            cells = []
            for mode in ("own", "existing"):
                caught = r[f"caught_{mode}_identity"]
                dets = ",".join(r["detectors"][mode])
                cells.append(f"{'caught' if caught else 'MISSED'}" + (f" ({dets})" if dets else ""))
            lines.append(f"  {r['technique']:<56}{cells[0]:<26}{cells[1]}")
        lines += [
            f"  caught under own identity {s['caught_own_identity']}/{s['total']}, under an "
            f"existing identity {s['caught_existing_identity']}/{s['total']} "
            f"({len(s['existing_caught_by_new_resource_only'])} of them by new_resource alone)",
            f"  background alone: {bg['false_pages_after_warmup']} false pages after warm-up "
            f"over {bg['machine_hours_after_warmup']:g} machine-hours "
            f"({bg['pages_during_warmup']} during warm-up)",
        ]
        for pg in bg["false_pages"]:
            lines.append(
                f"    {pg['event_time'][5:16]} {_short_arn(pg['machine'])[:28]:<29}"
                f"{pg['detector']} {pg['severity']}: {_short_arn(pg['summary'])}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.realdata`: run the three datasets, write the results, print them."""
    p = argparse.ArgumentParser(
        prog="python -m bench.realdata", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (%(default)s)")
    p.add_argument(
        "--datasets", type=Path, default=DEFAULT_DATASETS, help="the shared datasets (%(default)s)"
    )
    p.add_argument("--config", "-c", metavar="FILE", help="detection config YAML (defaults)")
    p.add_argument(
        "--scratch",
        type=Path,
        help="keep the generated event files here (default: a temporary directory, removed)",
    )
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of warm-up history")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument(
        "--exact-replay",
        action="store_true",
        help="replay the whole background again for every Stratus run (slow; the default "
        "continues one shared warm-up, with the same result)",
    )
    p.add_argument(
        "--only",
        choices=("otrf", "purplesharp", "stratus"),
        action="append",
        help="run only these datasets (repeatable)",
    )
    p.add_argument("--technique", action="append", default=[], help="Stratus name filter")
    args = p.parse_args(argv)
    if not args.datasets.is_dir():
        print(f"error: datasets not found at {args.datasets}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    only = set(args.only or ("otrf", "purplesharp", "stratus"))
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "config": {
            "config_file": args.config,
            "config_version": cfg.detectors.build().version(),
            "datasets": str(args.datasets),
            "days": args.days,
            "seed": args.seed,
            "page": "status opened or escalated, severity medium or above",
            "caught_window": "from the attack's first event to 15 minutes after its last",
        }
    }
    with tempfile.TemporaryDirectory(prefix="realdata-") as tmp:
        scratch = args.scratch or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        if "otrf" in only:
            doc["otrf_exfiltration"] = run_otrf(
                cfg, args.datasets, scratch, days=args.days, seed=args.seed
            )
        if "purplesharp" in only:
            doc["purplesharp"] = run_purplesharp(
                cfg, args.datasets, scratch, days=args.days, seed=args.seed
            )
        if "stratus" in only:
            doc["stratus"] = run_stratus(
                cfg,
                args.datasets,
                scratch,
                days=args.days,
                seed=args.seed,
                exact=args.exact_replay,
                only=args.technique,
                log=sys.stderr,
            )
    doc["total_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(render(doc))
    print(f"\n{doc['total_seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
