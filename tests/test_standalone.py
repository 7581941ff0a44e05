"""The per-machine baselines used alone, river style: score before learn, no mutation."""

from __future__ import annotations

import pytest

from detectors.standalone import MachineBaseline

T0 = 1_767_225_600_000


def access(
    i: int, resource: str = "pg://db/orders", outcome: str = "SUCCESS", operation: str = "SELECT"
) -> dict[str, object]:
    return {
        "timestamp": T0 + i * 10_000,
        "resource": resource,
        "operation": operation,
        "outcome": outcome,
    }


def trained(detector: str | None) -> MachineBaseline:
    model = MachineBaseline(detector)
    for i in range(600):  # 100 minutes, past warm-up
        model.learn_one(access(i))
    return model


def test_scoring_before_learning_is_zero() -> None:
    assert MachineBaseline().score_one(access(0)) == 0.0


@pytest.mark.parametrize(
    ("detector", "x"),
    [
        ("new_resource", access(600, resource="secrets://prod/root")),
        ("operation", access(600, operation="DROP")),
    ],
)
def test_each_baseline_scores_its_anomaly_and_scoring_does_not_learn(
    detector: str, x: dict[str, object]
) -> None:
    model = trained(detector)
    assert model.score_one(access(600)) == 0.0
    first = model.score_one(x)
    assert first >= 0.5
    assert model.score_one(x) == first  # scoring twice: nothing was learned
    model.learn_one(x)
    assert model.score_one({**x, "timestamp": T0 + 601 * 10_000}) == 0.0


def test_unknown_detector_is_refused() -> None:
    with pytest.raises(ValueError, match="detector must be one of"):
        MachineBaseline("astrology")
