"""Each per-machine baseline as a river-style anomaly detector: `learn_one` / `score_one`.

`MachineBaseline(detector="new_resource")` scores one machine's accesses the way the product
does (same core, same defaults), without Kafka or a store: x is one access as a dict
(timestamp in epoch ms or an aware datetime, resource, operation, outcome). `score_one` is in
[0, 1], the product's 0-100 score scaled (0.5 is the page threshold), and does not learn;
scoring before any learning returns 0. The access-rate baseline alone, on any numeric series,
is `detectors.rate.SeriesBaseline`.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from detectors.core import DetectionCore, DetectorConfig, MachineState
from schemas.event import AuditEvent

DETECTORS = ("access_rate", "new_resource", "failure_ratio", "operation", "off_hours")


class _DictKV:
    """The peer-group store of one standalone machine."""

    def __init__(self) -> None:
        self.data: dict[tuple[bytes, str], bytes] = {}

    def get(self, kind: bytes, key: str) -> bytes | None:
        return self.data.get((kind, key))

    def set(self, kind: bytes, key: str, value: bytes) -> None:
        self.data[(kind, key)] = value

    def delete(self, kind: bytes, key: str) -> None:
        self.data.pop((kind, key), None)


class MachineBaseline:
    """One machine's baselines; `detector` picks one (None: the highest of them all)."""

    def __init__(
        self,
        detector: str | None = None,
        config: DetectorConfig | None = None,
        machine_id: str = "machine",
    ) -> None:
        if detector is not None and detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        self.detector = detector
        self.config = config
        self.machine_id = machine_id
        self._core: DetectionCore | None = None
        self._state: MachineState | None = None
        self._kv = _DictKV()
        self._n = 0

    def _event(self, x: dict[str, Any]) -> AuditEvent:
        ts = x["timestamp"]
        ms = int(ts.timestamp() * 1000) if isinstance(ts, datetime) else int(ts)
        self._n += 1
        return AuditEvent(
            event_id=f"{self.machine_id}-{self._n}",
            ts_us=ms * 1000,
            machine_id=str(x.get("machine_id", self.machine_id)),
            resource=str(x.get("resource", "-")),
            operation=str(x.get("operation", "-")),
            outcome=str(x.get("outcome", "SUCCESS")).upper(),
        )

    def _run(
        self, x: dict[str, Any], state: MachineState | None, kv: _DictKV
    ) -> tuple[MachineState, float]:
        if self._core is None:
            self._core = DetectionCore(self.config)
        state, _ = self._core.process(self._event(x), state, kv)
        scores = [
            f.score
            for f in self._core.last_findings
            if self.detector is None or f.detector == self.detector
        ]
        return state, max(scores, default=0.0) / 100.0

    def learn_one(self, x: dict[str, Any]) -> None:
        self._state, _ = self._run(x, self._state, self._kv)

    def score_one(self, x: dict[str, Any]) -> float:
        # Score on copies: scoring never teaches the baseline.
        _, score = self._run(x, copy.deepcopy(self._state), copy.deepcopy(self._kv))
        return score
