"""The independent scenario suite (`bench.scenarios`): its structure, and that the shared scorer
gives it a perfect score for a perfect page list. The suite's replay itself runs in `make
eval`; here only a tiny-rate scenario goes through replay, to check the pooling."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench.evaluate import SCENARIO_DEFAULTS, evaluate_scenarios, scenario_seeds, score
from bench.scenarios import (
    BENIGN_KINDS,
    DAY_MS,
    MALICIOUS_KINDS,
    MINUTE_MS,
    Scenario,
    ScenarioConfig,
)
from bench.seeds import REPORTING_SEEDS, TUNING_SEEDS
from schemas.event import format_rfc3339_ms
from streams.ops.config import load_config


def _config(seed: int, **over: float) -> ScenarioConfig:
    return ScenarioConfig(seed=seed, **{**SCENARIO_DEFAULTS, **over})


def _digest(scenario: Scenario) -> str:
    h = hashlib.sha256()
    for ev in scenario:
        h.update(orjson.dumps(ev))
    return h.hexdigest()


def test_same_seed_same_scenario_other_seed_other_one() -> None:
    small = {"rate_scale": 0.02}
    a, b, c = (Scenario(_config(s, **small)) for s in (101, 101, 102))
    assert a.episodes == b.episodes
    assert _digest(a) == _digest(b)
    assert a.episodes != c.episodes
    assert _digest(a) != _digest(c)


def test_every_kind_has_20_episodes_across_the_reporting_seeds() -> None:
    counts: Counter[str] = Counter()
    for seed in REPORTING_SEEDS:
        counts.update(e.kind for e in Scenario(_config(seed)).episodes)
    for kind in (*MALICIOUS_KINDS, *BENIGN_KINDS):
        assert counts[kind] >= 20, (kind, counts[kind])


def test_seed_sets_are_fixed_and_disjoint() -> None:
    assert scenario_seeds(False) == ("reporting", REPORTING_SEEDS)
    assert scenario_seeds(True) == ("tuning", TUNING_SEEDS)
    assert not set(TUNING_SEEDS) & set(REPORTING_SEEDS)


@pytest.mark.parametrize("seed", REPORTING_SEEDS)
def test_labels_lie_in_the_scored_days(seed: int) -> None:
    cfg = _config(seed)
    episodes = Scenario(cfg).episodes
    assert episodes
    for e in episodes:
        assert cfg.history_end_ms <= e.start_ms < e.end_ms <= cfg.end_ms, e
        assert e.malicious == (e.kind in MALICIOUS_KINDS)


@pytest.mark.parametrize("seed", REPORTING_SEEDS)
def test_weekly_jobs_ran_twice_before_the_scored_run(seed: int) -> None:
    cfg = _config(seed)
    scenario = Scenario(cfg)
    assert cfg.history_days >= 14
    rates = {m.name: m.rate for m in scenario.machines}
    weekly = [e for e in scenario.episodes if e.kind == "weekly_batch"]
    assert weekly
    for e in weekly:
        minute = (e.start_ms - cfg.start_ms) // MINUTE_MS
        for weeks_back in (1, 2):
            earlier = minute - weeks_back * 7 * DAY_MS // MINUTE_MS
            assert earlier >= 0
            assert rates[e.machine_id][earlier] > 0, (e.machine_id, weeks_back)


def test_a_perfect_page_list_scores_recall_and_precision_one() -> None:
    cfg = _config(101)
    episodes = Scenario(cfg).episodes
    oracle = [
        {
            "status": "opened",
            "severity": "high",
            "machine_id": e.machine_id,
            "detector": "oracle",
            "event_time": format_rfc3339_ms(e.start_ms + 1000),
        }
        for e in episodes
        if e.malicious
    ]
    s = score(episodes, oracle, warmup_end_ms=cfg.history_end_ms, machine_hours=100.0)
    assert s.recall == 1.0
    assert s.precision == 1.0
    assert s.false_pages == 0
    assert {k.kind for k in s.kinds if k.malicious} == set(MALICIOUS_KINDS)
    assert all(k.detected == 0 for k in s.kinds if not k.malicious)


def test_seeds_are_pooled_under_their_own_machine_ids(tmp_path: Path) -> None:
    # A sparse replay of two seeds: the same machine names in both must stay apart.
    doc = evaluate_scenarios([1, 2], load_config(None), tmp_path, rate_scale=0.01, per_kind=1)
    assert [p["seed"] for p in doc["per_seed"]] == [1, 2]
    assert doc["config"]["seeds"] == [1, 2]
    assert doc["overall"]["machine_hours"] > 0
    episodes = sum(k["episodes"] for k in doc["kinds"])
    labelled = sum(
        len((tmp_path / f"episodes_{s}.jsonl").read_bytes().splitlines()) for s in (1, 2)
    )
    assert episodes == labelled
    fp = doc["false_pages"]
    assert len(fp["all"]) == doc["overall"]["false_pages"]
    assert sum(r["false_pages"] for r in fp["by_machine_and_detector"]) == len(fp["all"])
    for page in fp["all"]:
        assert page["machine_id"].startswith(("s1/", "s2/"))


@pytest.mark.parametrize("seed", REPORTING_SEEDS)
def test_each_injection_of_a_kind_is_on_a_machine_of_its_own(seed: int) -> None:
    # A repeat on one machine would measure what the first injection taught the baseline.
    malicious = [e for e in Scenario(_config(seed)).episodes if e.malicious]
    pairs = Counter((e.kind, e.machine_id) for e in malicious)
    assert max(pairs.values()) == 1
