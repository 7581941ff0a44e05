"""bench.realdata: the warm-up history, re-timing and identity rewrite, and one real capture.

The tests that read the shared datasets skip when `../shared/datasets` is absent.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import realdata as rd
from streams.ops.config import load_config

DATASETS = rd.DEFAULT_DATASETS
needs_datasets = pytest.mark.skipif(
    not (DATASETS / rd.OTRF_EXFIL).is_file() or not (DATASETS / rd.STRATUS_DIR).is_dir(),
    reason=f"the shared datasets are not at {DATASETS} (see the project README on datasets)",
)
STRATUS_SAMPLE = "aws.execution.ssm-send-command.json"


def _stratus(name: str = STRATUS_SAMPLE) -> list[dict[str, Any]]:
    return list(orjson.loads((DATASETS / rd.STRATUS_DIR / name).read_bytes()))


# -- pure functions ---------------------------------------------------------------------------


def test_retime_keeps_order_and_relative_spacing() -> None:
    items = [("c", 5_000), ("a", 1_000), ("b", 1_000), ("d", 65_000)]
    out = rd.retime(items, 10_000_000, lambda x: x[1], lambda x, ms: (x[0], ms))
    assert [name for name, _ in out] == ["a", "b", "c", "d"]  # time order, ties stable
    assert out[0][1] == 10_000_000
    assert [t - out[0][1] for _, t in out] == [0, 0, 4_000, 64_000]


def test_history_starts_are_deterministic_spaced_and_before_the_capture() -> None:
    args: dict[str, Any] = {
        "period_ms": rd.HOUR_MS,
        "copies": 72,
        "jitter_cap_ms": 20 * rd.MINUTE_MS,
        "key": "x",
        "seed": 3,
    }
    capture = 1_000 * rd.DAY_MS
    session, length = capture + 4 * rd.MINUTE_MS, 10 * rd.MINUTE_MS
    a = rd.history_starts(session, length, capture, **args)
    assert a == rd.history_starts(session, length, capture, **args)
    assert a != rd.history_starts(session, length, capture, **{**args, "seed": 4})
    assert a == sorted(a) and len(a) == 72
    assert all(s + length < capture for s in a)
    # Copies never overlap, and each stays within the jitter of its slot.
    assert all(b - e > length for e, b in itertools.pairwise(a))
    for k, start in zip(range(72, 0, -1), a, strict=True):
        assert abs(start - (session - k * rd.HOUR_MS)) <= 20 * rd.MINUTE_MS
    with pytest.raises(ValueError, match="does not fit"):
        rd.history_starts(session, rd.HOUR_MS, capture, **args)


def test_synthesized_history_copies_the_session_shape() -> None:
    session: list[dict[str, Any]] = [
        {"event_id": f"e{i}", "timestamp": t} for i, t in enumerate((100, 100, 2_500))
    ]
    capture = 10 * rd.DAY_MS
    history = rd.synthesize_history(
        session,
        capture,
        period_ms=rd.DAY_MS,
        span_ms=3 * rd.DAY_MS,
        jitter_cap_ms=30 * rd.MINUTE_MS,
        key="k",
        seed=1,
        time_of=rd.ev_time,
        copy_at=rd.ev_copy,
    )
    assert len(history) == 9
    for copy_index in range(3):
        chunk = history[copy_index * 3 : copy_index * 3 + 3]
        assert [e["timestamp"] - chunk[0]["timestamp"] for e in chunk] == [0, 0, 2_400]
        assert [e["event_id"] for e in chunk] == [f"e{i}-h{copy_index}" for i in range(3)]
    assert all(e["timestamp"] < capture for e in history)
    assert session[0] == {"event_id": "e0", "timestamp": 100}  # the input is not changed


# -- on the datasets --------------------------------------------------------------------------


@needs_datasets
def test_otrf_history_is_deterministic_and_precedes_the_capture() -> None:
    a = rd.otrf_plan(DATASETS, days=3, seed=5)
    b = rd.otrf_plan(DATASETS, days=3, seed=5)
    assert a.histories == b.histories
    assert a.histories != rd.otrf_plan(DATASETS, days=3, seed=6).histories
    assert a.histories[a.pedro] and a.histories["ec2.amazonaws.com"]
    capture_ids = {r["eventID"] for r in a.records}
    ids = [r["eventID"] for h in a.histories.values() for r in h]
    assert len(ids) == len(set(ids)) and not capture_ids & set(ids)
    for history in a.histories.values():
        assert max(rd.ct_time_ms(r) for r in history) < a.capture_start_ms
    # pedro: one copy of his 87 calls a day, each with the capture's spacing.
    session = sorted(rd.ct_time_ms(r) for r in a.records if rd.ct_machine(r) == a.pedro)
    shape = [t - session[0] for t in session]
    hist = [rd.ct_time_ms(r) for r in a.histories[a.pedro]]
    assert len(hist) == 3 * len(session)
    for k in range(3):
        chunk = hist[k * len(session) : (k + 1) * len(session)]
        assert [t - chunk[0] for t in chunk] == shape
    attack = [r for r in a.records if rd.ct_machine(r) == a.role]
    role = rd.otrf_role_history(attack, a.capture_start_ms, model="agent-only", days=3, seed=5)
    assert role == rd.otrf_role_history(
        attack, a.capture_start_ms, model="agent-only", days=3, seed=5
    )
    assert {rd.ct_machine(r) for r in role} == {a.role}
    assert max(rd.ct_time_ms(r) for r in role) < a.capture_start_ms
    assert all(r["eventSource"] != "s3.amazonaws.com" for r in role)


@needs_datasets
def test_stratus_retime_and_existing_identity_rewrite() -> None:
    records = _stratus()
    before = copy.deepcopy(records)
    inject = rd.BG_START_MS + 3 * rd.DAY_MS + 14 * rd.HOUR_MS
    timed = rd.retime(records, inject, rd.ct_time_ms, rd.ct_with_time)
    original = sorted(rd.ct_time_ms(r) for r in records)
    assert [rd.ct_time_ms(r) - inject for r in timed] == [t - original[0] for t in original]
    assert records == before
    existing = rd.stratus_existing(timed)
    operator = rd.BY_KEY["operator"]
    for old, new in zip(timed, existing, strict=True):
        assert {k: v for k, v in new.items() if k != "userIdentity"} == {
            k: v for k, v in old.items() if k != "userIdentity"
        }
        assert new["userIdentity"] == operator.identity()
        assert rd.ct_machine(new) == operator.machine
    # A role is rewritten to a background role, an SSO role to the SSO admin role.
    mixed = rd.stratus_existing(_stratus("aws.discovery.ec2-download-user-data.json"))
    assert {rd.ct_machine(r) for r in mixed} == {operator.machine, rd.BY_KEY["app"].machine}
    sso = rd.stratus_existing(
        _stratus("aws.lateral-movement.ec2-serial-console-send-ssh-public-key.json")
    )
    assert {rd.ct_machine(r) for r in sso} == {rd.BY_KEY["sso-admin"].machine}


def test_background_is_deterministic() -> None:
    end = rd.BG_START_MS + 15 * rd.HOUR_MS
    a = rd.background_records(rd.BG_START_MS, end, 2)
    assert a == rd.background_records(rd.BG_START_MS, end, 2)
    assert a != rd.background_records(rd.BG_START_MS, end, 3)
    times = [rd.ct_time_ms(r) for r in a]
    assert times == sorted(times) and times[0] >= rd.BG_START_MS and times[-1] < end
    assert {rd.ct_machine(r) for r in a} <= {b.machine for b in rd.BACKGROUND}


@needs_datasets
def test_split_replay_gives_the_same_pages_as_one_replay(tmp_path: Path) -> None:
    cfg = load_config()
    inject = rd.BG_START_MS + rd.DAY_MS + 14 * rd.HOUR_MS
    bg = tmp_path / "bg.jsonl"
    rd._write_jsonl(bg, rd.background_records(rd.BG_START_MS, inject + rd.HOUR_MS, 1))
    timed = rd.retime(_stratus(), inject, rd.ct_time_ms, rd.ct_with_time)
    split = rd.SplitReplay(cfg, [bg], "cloudtrail", inject)
    for name, records in (("own", timed), ("existing", rd.stratus_existing(timed))):
        path = tmp_path / f"{name}.jsonl"
        rd._write_jsonl(path, records)
        whole = rd.run_replay(cfg, [bg, path], "cloudtrail")
        part = split.continue_with([path])
        assert part.pages == whole.pages
        assert (part.result.events, part.result.pages) == (whole.result.events, whole.result.pages)
        assert any(p["event_time"] >= timed[0]["eventTime"] for p in part.pages)


@pytest.fixture(scope="module")
def otrf_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One end-to-end OTRF run (history + capture through replay), shared by the tests."""
    scratch = tmp_path_factory.mktemp("otrf")
    return rd.run_otrf(load_config(), DATASETS, scratch, days=3, seed=rd.DEFAULT_SEED)


@needs_datasets
def test_otrf_end_to_end_the_stolen_role_pages(otrf_doc: dict[str, Any]) -> None:
    role = otrf_doc["capture"]["attack_identity"]
    assert [m["role_model"] for m in otrf_doc["role_models"]] == list(rd.ROLE_MODELS)
    replayed = sum(h["events"] for k, h in otrf_doc["history"].items() if k != role)
    for model in otrf_doc["role_models"]:
        # Every history event and every capture record went through replay, none rejected.
        assert model["replay"]["events"] == 103 + replayed + model["role_history_events"]
        assert model["replay"]["dead_letters"] == {}
        assert model["stolen_role_paged"]
        assert "new_resource" in model["stolen_role_detectors"]
        role_pages = [p for p in model["pages"] if p["machine"] == role]
        assert role_pages[0]["observed"]["operation"].startswith("s3.amazonaws.com:")
        assert all(p["event_time"] >= otrf_doc["capture"]["start"] for p in model["pages"])


@needs_datasets
def test_otrf_end_to_end_pedro_does_not_page(otrf_doc: dict[str, Any]) -> None:
    assert not otrf_doc["pedro_paged"]
