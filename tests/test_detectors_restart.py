"""What a detection partition remembers across a restart or a move to another worker: only
the store. A fresh DetectionCore on the same store must carry on as the old one would."""

from __future__ import annotations

from detectors.core import DetectionCore
from schemas.event import format_rfc3339_ms
from tests.test_alert_content import CONFIG, MACHINE, S, Stream


def test_an_open_alert_of_a_quiet_machine_resolves_after_a_restart() -> None:
    s = Stream(DetectionCore(CONFIG))
    other = "billing-worker-01"
    t = s.warm_up(MACHINE, other)
    [opened] = s.send(MACHINE, t, "s3://payroll/x")
    for k in range(1, 10):  # past a sweep, so the open alert is in the stored watch list
        s.send(other, t + k * 10 * S)
    # The worker restarts (or the partition moves): a new core, the same store.
    s.core = DetectionCore(CONFIG)
    for k in range(10, 90):
        s.send(other, t + k * 10 * S)
    resolved = [a for a in s.of(MACHINE) if a.status == "resolved"]
    assert [a.alert_id for a in resolved] == [opened.alert_id]
    assert resolved[0].event_time == format_rfc3339_ms(t + CONFIG.cooldown_s * S)
