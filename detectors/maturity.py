"""Maturity: what a finding may page on, given how much history stands behind it.

A fresh deployment can judge a machine against the machine's own run as soon as the machine
is past its warm-up (`DetectorConfig.warmup_s`): a rate burst, a failure spike, a fan-out
of new resources. What needs a daily cycle of history it has not watched yet is recorded as
`info`, not paged:

- `new_identity`: pages once the deployment (the store, from its first event) has watched
  one full daily cycle, 24 h of event time. Before that, nightly and weekly jobs, admin tools
  and CI runners all show up as "new" the first time they run. A hostile identity (one that
  imitates a known identity or hides characters, `detectors.identity.hostile`) is judged
  against the identities already known, not history: it pages from the first event on.
- `operation`: pages once the machine, or its peer group, has been watched for 24 h: a
  client seen for minutes or hours has not shown its repertoire (an admin tool's weekly
  cleanup, a job's end-of-run DELETE).
- `new_resource`: one or two new resources in the fan-out window need the same 24 h; a
  fan-out (`FANOUT_PAGES_FROM` or more new resources within `fanout_window_s`) is judged
  against the machine's own run and pages after the warm-up.
- `access_rate`: a burst of a quiet machine (one its model expects fewer than
  `QUIET_RATE` events an interval of) pages once the machine, or its peer group, has been
  watched for 24 h. Before that, a quiet machine's first bursts are how its runs look, not a
  deviation from them: a CI runner's first build of the evening, a batch job's first run,
  with no earlier build of the pool to judge it by (the group's peaks, `detectors.rate`). A
  burst of a busier machine is judged against its own run and pages after the warm-up.
- every other detector pages as it always did.

The 24 h is `DetectorConfig.mature_after_s` (`detectors.mature_after_s`): 0 pages on
everything from the warm-up on, as before this rule (a deployment seeded with history).

The rule acts on findings only (never on the per-event path), reads the machine's state and
its group's first-seen time, keeps no state of its own and imports nothing of Kafka.

Imports: the standard library, `detectors.base` and `schemas.event`.
"""

from __future__ import annotations

from dataclasses import replace

from detectors.base import Finding
from schemas.event import format_rfc3339_ms

# One full daily cycle of event time.
DAILY_CYCLE_MS = 86_400_000
# New resources within the fan-out window that page while the machine is still learning (the
# same count at which the group stops learning a burst's resources: `detectors.resources`).
FANOUT_PAGES_FROM = 3
# Events per interval below which a machine is quiet: its bursts need a daily cycle watched.
# A CI runner or a batch job between runs makes about one access a minute or none; a service
# under steady load makes several (the README's and the demo's rate bursts hit machines the
# model expected 2.7 to 10 of a minute from).
QUIET_RATE = 2.0
# The score a learning finding is recorded with: below every paging severity, `info`.
INFO_SCORE = 20.0

# What each gated detector waits for, in words (for the alert and the learning lines).
NEEDS = {
    "new_identity": "the deployment has watched a full daily cycle",
    "operation": "the machine or its group has been watched for a full daily cycle",
    "new_resource": "the machine or its group has been watched for a full daily cycle",
    "access_rate": "the machine or its group has been watched for a full daily cycle",
}


def learning_until(
    f: Finding,
    ts_ms: int,
    deployment_since_ms: int,
    machine_since_ms: int,
    group_since_ms: int,
    cycle_ms: int = DAILY_CYCLE_MS,
) -> int | None:
    """The event time until which `f` (found at `ts_ms`) is recorded as info rather than
    paged, or None when it may page. `*_since_ms`: when the deployment (store), the machine
    and its peer group were first seen; `cycle_ms`: the history that takes
    (`DetectorConfig.mature_after_s`, a daily cycle by default)."""
    detector = f.detector
    if detector == "new_identity":
        if "code_points" in f.observed:
            return None
        until = deployment_since_ms + cycle_ms
    elif detector in ("operation", "new_resource"):
        if detector == "new_resource":
            burst = f.observed.get("new_resources_in_window")
            if isinstance(burst, int) and burst >= FANOUT_PAGES_FROM:
                return None
        until = min(machine_since_ms, group_since_ms) + cycle_ms
    elif detector == "access_rate":
        mean = f.expected.get("mean")
        if not isinstance(mean, int | float) or mean >= QUIET_RATE:
            return None
        until = min(machine_since_ms, group_since_ms) + cycle_ms
    else:
        return None
    return until if ts_ms < until else None


def as_info(f: Finding, until_ms: int) -> Finding:
    """`f` recorded as info: its score kept in `observed`, the time it would page from in
    `expected`, and the reason in its summary."""
    when = format_rfc3339_ms(until_ms)
    observed = dict(f.observed)
    observed["score_when_mature"] = round(f.score, 1)
    expected = dict(f.expected)
    expected["learning_until"] = when
    return replace(
        f,
        score=min(f.score, INFO_SCORE),
        summary=f"{f.summary} Recorded, not paged: learning until {when[:16].replace('T', ' ')}"
        f" UTC ({NEEDS[f.detector]} by then).",
        observed=observed,
        expected=expected,
    )
