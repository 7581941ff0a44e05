"""What on-call gets in each alert state, and its lifecycle: repeats, escalation, resolution
of machines that fall quiet, acknowledgements and snoozes, config swaps. In-process."""

from __future__ import annotations

from dataclasses import replace

import fastavro
import pytest
from fastavro.validation import validate

from detectors.config import DetectorConfig, Suppression
from detectors.core import DetectionCore
from detectors.incidents import BASELINES, HINTS
from detectors.rate import RateParams
from schemas.alert import SEVERITIES, Alert, AlertControl, Recent, state_identity
from schemas.event import AuditEvent, format_rfc3339_ms
from schemas.registry import schema_json
from streams.processor import MemoryStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1000
KNOWN = "postgres://orders-db/public.orders"
CONFIG = DetectorConfig(
    rate=RateParams(min_count=10**9),  # keep access_rate out of these scenarios
    warmup_s=60,
    warmup_events=5,
    mature_after_s=0,  # as with history behind it: maturity is test_maturity's
    fanout_window_s=300,
    cooldown_s=600,
    update_every_s=60,
)


class Stream:
    """Events of several machines through one core and one store, as a detection partition
    sees them (observe: peer groups, silence watch, sweeps)."""

    def __init__(self, core: DetectionCore) -> None:
        self.core = core
        self.kv = MemoryStore()
        self.n = 0
        self.alerts: list[Alert] = []

    def send(self, machine: str, ts_ms: int, resource: str = KNOWN) -> list[Alert]:
        self.n += 1
        event = AuditEvent(
            event_id=f"{machine}-{self.n}",
            ts_us=ts_ms * 1000,
            machine_id=machine,
            resource=resource,
            operation="SELECT",
            outcome="SUCCESS",
        )
        alerts = self.core.observe(event, self.kv, None, "input-0")
        self.alerts.extend(alerts)
        return alerts

    def warm_up(self, *machines: str) -> int:
        """Ten events each over 90 s; returns the time just after."""
        for k in range(10):
            for m in machines:
                assert self.send(m, T0 + k * 10 * S) == []
        return T0 + 100 * S

    def of(self, machine: str, detector: str = "new_resource") -> list[Alert]:
        return [a for a in self.alerts if a.machine_id == machine and a.detector == detector]


MACHINE = "orders-api-7d9f8b6c5d-x2k9p"


def fan_out(s: Stream, t: int, ks: range, machine: str = MACHINE, step_s: int = 10) -> None:
    for k in ks:
        s.send(machine, t + k * step_s * S, f"s3://bucket-{k}/x")


def test_every_alert_state_stands_on_its_own() -> None:
    s = Stream(DetectionCore(CONFIG))
    t = s.warm_up(MACHINE)
    fan_out(s, t, range(12))
    states = s.of(MACHINE)
    assert states[0].status == "opened"
    assert "escalated" in {a.status for a in states}
    schema = fastavro.parse_schema(schema_json("alert"))
    for a in states:
        assert a.summary.endswith(".") and "\n" not in a.summary
        assert a.severity in SEVERITIES
        assert (a.machine_id, a.group) == (MACHINE, "orders-api")
        assert a.observed["resource"] and a.observed["new_resources_in_window"]
        # Observed against expected, and what the expectation was learned over.
        assert isinstance(a.expected["known_resources"], int)
        assert a.expected["baseline"] == BASELINES["new_resource"].format(horizon_days=30)
        assert a.expected["baseline_since"] == format_rfc3339_ms(T0)
        assert 1 <= len(a.event_ids) <= 10
        assert a.event_ids[0] == states[0].event_ids[0]
        assert a.first_event_time == format_rfc3339_ms(t)
        assert a.last_event_time == a.event_time
        assert a.repeat_count is not None and a.repeat_count >= 1
        assert a.config_version == CONFIG.version()
        assert a.hint == HINTS["new_resource"]
        assert a.acknowledged_by is None and a.snoozed_until is None
        assert validate(a.to_json(), schema, raise_errors=True)
    last = states[-1]
    assert last.repeat_count == 12 and len(last.event_ids) == 10
    assert last.last_event_time == format_rfc3339_ms(t + 11 * 10 * S)


def test_a_resolved_state_stands_on_its_own() -> None:
    # On-call may read only the resolution (a webhook sends it alone): it must still say what
    # the episode was, observed against expected, and what the expectation was learned over.
    s = Stream(DetectionCore(CONFIG))
    other = "billing-worker-01"
    t = s.warm_up(MACHINE, other)
    fan_out(s, t, range(12))
    end = t + 11 * 10 * S
    for k in range(1, 80):  # the other machine moves event time past the cooldown
        s.send(other, end + k * 10 * S)
    states = s.of(MACHINE)
    *raised, resolved = states
    assert resolved.status == "resolved" and "resolved" not in {a.status for a in raised}
    last = raised[-1]
    assert resolved.summary.endswith(".") and "\n" not in resolved.summary
    assert (resolved.machine_id, resolved.group) == (MACHINE, "orders-api")
    assert resolved.severity == last.severity and resolved.hint == HINTS["new_resource"]
    assert resolved.repeat_count == 12 and resolved.observed["repeats"] == 12
    assert resolved.event_ids == last.event_ids
    assert resolved.first_event_time == format_rfc3339_ms(t)
    assert resolved.last_event_time == format_rfc3339_ms(end)
    # The episode's last observed and expected numbers, as its last state carried them.
    assert resolved.observed["resource"] == last.observed["resource"]
    assert resolved.observed["new_resources_in_window"] == last.observed["new_resources_in_window"]
    assert resolved.expected["known_resources"] == last.expected["known_resources"]
    assert resolved.expected["baseline"] == BASELINES["new_resource"].format(horizon_days=30)
    assert resolved.expected["baseline_since"] == format_rfc3339_ms(T0)
    assert validate(resolved.to_json(), fastavro.parse_schema(schema_json("alert")))


def test_updates_carry_the_repeat_count_and_last_event_time() -> None:
    s = Stream(DetectionCore(CONFIG))
    t = s.warm_up(MACHINE)
    # One new resource per fan-out window: repeats of one episode, no escalation.
    fan_out(s, t, range(4), step_s=301)
    states = s.of(MACHINE)
    assert [a.status for a in states] == ["opened", "updated", "updated", "updated"]
    assert [a.repeat_count for a in states] == [1, 2, 3, 4]
    assert [a.last_event_time for a in states] == [
        format_rfc3339_ms(t + k * 301 * S) for k in range(4)
    ]
    assert {a.alert_id for a in states} == {states[0].alert_id}
    assert {a.first_event_time for a in states} == {format_rfc3339_ms(t)}


def test_every_detector_has_a_hint_and_a_baseline() -> None:
    from detectors.standalone import DETECTORS

    # HINTS is the list of detectors that can alert; the standalone ones must be among them.
    assert set(DETECTORS) <= set(HINTS)
    assert {"combined", "storm", "silence", "new_identity"} <= set(HINTS)
    for detector, hint in HINTS.items():
        assert hint.endswith(".") and len(hint) > 20, detector
    # A baseline for each detector that learns one (a storm compares machines, not a history;
    # a spoofed identity is judged against the configured keys, never learned).
    assert set(BASELINES) == set(HINTS) - {"storm", "spoofed_identity"}
    for detector, text in BASELINES.items():
        baseline = text.format(interval_s=60, horizon_days=30, window_minutes=30)
        assert baseline and "{" not in baseline, detector


def test_a_machine_that_falls_quiet_has_its_alert_resolved_in_event_time() -> None:
    s = Stream(DetectionCore(CONFIG))
    other = "billing-worker-01"
    t = s.warm_up(MACHINE, other)
    [opened] = s.send(MACHINE, t, "s3://payroll/x")
    # Only the other machine speaks from now on; the store's clock moves with its events.
    for k in range(1, 90):
        s.send(other, t + k * 10 * S)
    resolved = [a for a in s.of(MACHINE) if a.status == "resolved"]
    assert len(resolved) == 1
    assert resolved[0].alert_id == opened.alert_id
    assert resolved[0].event_time == format_rfc3339_ms(t + CONFIG.cooldown_s * S)
    assert not resolved[0].is_page
    # The episode is closed: the machine's next finding is a new alert.
    [reopened] = s.send(MACHINE, t + 900 * S, "s3://payroll-2/x")
    assert reopened.status == "opened" and reopened.alert_id != opened.alert_id


def test_before_the_cooldown_a_quiet_machine_stays_open() -> None:
    s = Stream(DetectionCore(CONFIG))
    other = "billing-worker-01"
    t = s.warm_up(MACHINE, other)
    s.send(MACHINE, t, "s3://payroll/x")
    for k in range(1, 55):  # 540 s: inside the 600 s cooldown
        s.send(other, t + k * 10 * S)
    assert [a.status for a in s.of(MACHINE)] == ["opened"]


def escalating(control: dict[str, AlertControl] | None) -> tuple[Stream, str]:
    """A fan-out that escalates medium -> high -> critical; `control` is consulted once the
    alert is open (the test fills it in after the first state)."""
    hook = None if control is None else control.get
    s = Stream(DetectionCore(CONFIG, control=hook))
    t = s.warm_up(MACHINE)
    [opened] = s.send(MACHINE, t, "s3://bucket-0/x")
    return s, opened.alert_id


def test_without_on_call_decisions_escalations_page() -> None:
    s, _ = escalating(None)
    fan_out(s, T0 + 100 * S, range(1, 6))
    assert [a.status for a in s.of(MACHINE) if a.is_page] == ["opened", "escalated", "escalated"]


def test_an_acknowledged_alert_keeps_its_states_but_does_not_page_again() -> None:
    control: dict[str, AlertControl] = {}
    s, alert_id = escalating(control)
    control[alert_id] = AlertControl(acknowledged_by="alice")
    fan_out(s, T0 + 100 * S, range(1, 6))
    later = s.of(MACHINE)[1:]
    assert later and not [a for a in later if a.is_page]
    assert {a.status for a in later} == {"updated"}
    assert {a.acknowledged_by for a in later} == {"alice"}
    # The severity still rises, for whoever looks at the alert.
    assert later[-1].severity == "critical"
    # And its resolution says who acknowledged it.
    s.send(MACHINE, T0 + 100 * S + 50 * S + CONFIG.cooldown_s * S + 1)
    resolved = s.of(MACHINE)[-1]
    assert (resolved.status, resolved.acknowledged_by) == ("resolved", "alice")


def test_a_snoozed_alert_pages_again_once_the_snooze_ends() -> None:
    control: dict[str, AlertControl] = {}
    s, alert_id = escalating(control)
    until = "2026-01-01T02:00:00.000Z"
    control[alert_id] = AlertControl(snoozed_until=until)
    fan_out(s, T0 + 100 * S, range(1, 3))  # high: would escalate
    snoozed = s.of(MACHINE)[1:]
    assert [(a.status, a.severity, a.snoozed_until) for a in snoozed] == [
        ("updated", "high", until)
    ]
    del control[alert_id]  # the snooze ended (the control reader stops reporting it)
    fan_out(s, T0 + 100 * S, range(3, 6))
    after = s.of(MACHINE)[2:]
    assert [(a.status, a.severity) for a in after if a.is_page] == [("escalated", "critical")]
    assert all(a.snoozed_until is None for a in after)


def test_reconfigure_keeps_what_was_learned() -> None:
    core = DetectionCore(CONFIG)
    s = Stream(core)
    t = s.warm_up(MACHINE)
    [first] = s.send(MACHINE, t, "s3://first/x")
    new = replace(
        CONFIG,
        cooldown_s=60,
        suppressions=(Suppression(resource="s3://muted*", reason="migration"),),
    )
    core.reconfigure(new)
    assert core.config_version == new.version() != CONFIG.version()
    later = t + 400 * S  # past the new cooldown and the fan-out window
    # Known resources are still known and the machine is still past its warm-up.
    assert [a.status for a in s.send(MACHINE, later)] == ["resolved"]
    assert s.send(MACHINE, later + S, "s3://muted/x") == []
    [opened] = s.send(MACHINE, later + 2 * S, "s3://fresh/x")
    assert opened.status == "opened" and opened.config_version == new.version()
    assert opened.alert_id != first.alert_id
    assert opened.expected["baseline_since"] == format_rfc3339_ms(T0)


@pytest.mark.parametrize(
    ("control", "silenced"),
    [
        (AlertControl(), False),
        (AlertControl(acknowledged_by="bob"), True),
        (AlertControl(snoozed_until="2026-01-01T00:00:00.000Z"), True),
    ],
)
def test_alert_control_silences(control: AlertControl, silenced: bool) -> None:
    assert control.silenced is silenced


def test_each_state_of_an_alert_has_its_sequence_number() -> None:
    s = Stream(DetectionCore(CONFIG))
    t = s.warm_up(MACHINE)
    fan_out(s, t, range(4), step_s=301)
    states = s.of(MACHINE)
    assert [a.sequence for a in states] == [1, 2, 3, 4]
    # (alert id, status, sequence) tells a state written again from a new one.
    identities = [state_identity(a.to_json(), b"") for a in states]
    assert len(set(identities)) == len(states)
    shown = Recent(size=2)
    assert [shown.add(i) for i in identities + identities[-1:]] == [True] * 4 + [False]
    assert identities[0] not in shown  # the oldest is forgotten past the bound
    # States without an episode (roll-ups) are told apart by their bytes.
    assert state_identity({"alert_id": "x", "status": "opened"}, b"raw") == (b"raw",)
