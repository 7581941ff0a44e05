"""The backtest's HTML report: the list of pages, the rate plot's scale, and its page markers.

Read from the HTML the report writes (parsed with the standard library's parser); the same
report in a real browser is checked in test_report_chromium.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.ops.config import load_config
from streams.tools import report
from streams.tools.backtest import Options, backtest, events_from_files
from streams.tools.report import machine_plot, render_html
from streams.tools.synthetic import Episode
from tests.traffic import BASE_MS, burst, fan_out, steady

INGEST, BILLING = "ingest-worker-07", "billing-api-6f7c9d8b4-q2w7x"
FAN_OUT_MS = BASE_MS + 2 * 3600 * 1000 + 600_000
BURST_MS = BASE_MS + 9_000_000


class Elements(HTMLParser):
    """Every element as (tag, attributes, its text), in document order."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str], list[str]]] = []
        self.open: list[list[str]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.found.append((tag, {k: v or "" for k, v in attrs}, text))
        if tag not in ("line", "polyline", "polygon", "circle", "rect", "i", "meta", "br"):
            self.open.append(text)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}, []))

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("line", "polyline", "polygon", "circle", "rect", "i", "meta", "br"):
            self.open.pop()

    def handle_data(self, data: str) -> None:
        for text in self.open:
            text.append(data)

    def all(self, tag: str, cls: str | None = None) -> list[tuple[dict[str, str], str]]:
        return [
            (a, "".join(t))
            for g, a, t in self.found
            if g == tag and (cls is None or cls in a.get("class", "").split())
        ]


def _tables(html_text: str) -> dict[str, list[list[str]]]:
    """Each pages table by config: its header row, then its rows, as cell texts."""

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.tables: dict[str, list[list[str]]] = {}
            self.run: str | None = None
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "table" and "pages" in (a.get("class") or "").split():
                self.run = a["data-run"]
                self.tables[self.run or ""] = []
            elif self.run is not None and tag == "tr":
                self.tables[self.run].append([])
            elif self.run is not None and tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag == "table":
                self.run = None
            elif self.run is not None and tag in ("td", "th") and self.cell is not None:
                self.tables[self.run][-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    t = Tables()
    t.feed(html_text)
    return t.tables


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two machines: a fan-out (new resources) on one, a rate burst on the other."""
    events = steady(BILLING, ["postgres://billing/public.invoices"], BASE_MS, 3 * 3600, 3000)
    events += steady(INGEST, ["s3://raw/2026/01/part-0001.json"], BASE_MS, 3 * 3600, 4000)
    events += fan_out(INGEST, FAN_OUT_MS)
    events += burst(BILLING, "postgres://billing/public.invoices", BURST_MS, n=300)
    path = tmp_path_factory.mktemp("report") / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def _backtest(path: Path, **options: Any) -> dict[str, Any]:
    cfg = load_config()
    src = events_from_files(cfg, [str(path)])
    return backtest(src, Options(cfg, None, load_config(), "defaults", **options))


def _row(p: dict[str, Any]) -> list[str]:
    return [
        p["event_time"][:19].replace("T", " "),
        p["machine_id"],
        p["detector"],
        p["severity"],
        p["summary"],
    ]


def test_the_report_lists_every_page_of_each_config(events_file: Path) -> None:
    doc = _backtest(events_file)
    tables = _tables(render_html(doc))
    assert list(tables) == ["new", "old"]
    for run, rows in tables.items():
        pages = doc["runs"][run]["page_list"]
        assert {p["detector"] for p in pages} == {"new_resource", "access_rate"}
        assert rows[0] == ["time (UTC)", "machine", "detector", "severity", "summary"]
        assert rows[1:] == [_row(p) for p in sorted(pages, key=lambda p: p["event_time"])]


def test_pages_are_listed_in_time_order_whatever_order_they_came_in() -> None:
    def page(t: str, machine: str, detector: str) -> dict[str, Any]:
        return {
            "event_time": f"2026-01-01T{t}Z",
            "machine_id": machine,
            "detector": detector,
            "severity": "high",
            "summary": f"{machine} <{detector}> & more",
        }

    # Pages are kept in the order the partitions emitted them: not time order across machines.
    pages = [
        page("02:00:00.000", "b", "access_rate"),
        page("01:00:00.500", "a", "new_resource"),
        page("01:00:00.020", "c", "peer_outlier"),
    ]
    tables = report.pages_tables({"labels": None, "runs": {"new": {"page_list": pages}}}, ["new"])
    rows = _tables(tables)["new"][1:]
    assert [r[1] for r in rows] == ["c", "a", "b"]
    assert rows[0] == [
        "2026-01-01 01:00:00",
        "c",
        "peer_outlier",
        "high",
        "c <peer_outlier> & more",
    ]


def test_the_list_is_capped_and_says_how_many_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "MAX_PAGE_ROWS", 2)
    pages = [
        {
            "event_time": f"2026-01-01T00:0{k}:00.000Z",
            "machine_id": "m",
            "detector": "access_rate",
            "severity": "medium",
            "summary": str(k),
        }
        for k in range(5)
    ]
    out = report.pages_tables({"labels": None, "runs": {"new": {"page_list": pages}}}, ["new"])
    assert [r[4] for r in _tables(out)["new"][1:]] == ["0", "1"]
    assert "3 later pages" in out and 'data-pages="5"' in out


def test_with_labels_each_page_says_true_false_or_not_scored(events_file: Path) -> None:
    fan = Episode("fan_out", INGEST, FAN_OUT_MS, FAN_OUT_MS + 12_000, True, "")
    # Scored from the start: the fan-out's pages are true, the unlabelled burst's false.
    doc = _backtest(events_file, episodes=[fan], labels_source="test")
    for run in ("new", "old"):
        pages, verdicts = doc["runs"][run]["page_list"], doc["runs"][run]["page_verdicts"]
        assert len(verdicts) == len(pages)
        for p, v in zip(pages, verdicts, strict=True):
            truth = p["detector"] == "new_resource"
            assert v == {"true": truth, "malicious": ["fan_out"] if truth else [], "benign": []}
    tables = _tables(render_html(doc))
    for run, rows in tables.items():
        assert rows[0][-1] == "label"
        labels = {(r[2], r[5]) for r in rows[1:]}
        assert labels == {("new_resource", "true: fan_out"), ("access_rate", "false")}, run

    # Scored from after the fan-out: its pages were not scored.
    doc = _backtest(
        events_file, episodes=[fan], labels_source="test", score_from_ms=FAN_OUT_MS + 60_000
    )
    rows = _tables(render_html(doc))["old"][1:]
    assert {(r[2], r[5]) for r in rows} == {
        ("new_resource", "not scored"),
        ("access_rate", "false"),
    }


def test_without_labels_there_is_no_label_column(events_file: Path) -> None:
    doc = _backtest(events_file)
    assert "page_verdicts" not in doc["runs"]["new"]
    assert all(len(r) == 5 for rows in _tables(render_html(doc)).values() for r in rows)


# -- the rate plot -------------------------------------------------------------------------

SERIES = {"start": "2026-01-01T00:00:00.000Z", "bucket_s": 60, "interval_s": 60}


def _machine(
    observed: list[int], high: float, markers: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    n = len(observed)
    return {
        "machine_id": "quiet-1",
        "events": sum(observed),
        "pages": {"new": 0, "old": 0},
        "busiest_interval": observed,
        "band": {
            "new": {"low": [1.0] * n, "expected": [3.0] * n, "high": [high] * n},
            "old": {"low": [1.0] * n, "expected": [3.0] * n, "high": [high / 2] * n},
        },
        "markers": markers or [],
    }


def _plot_area(el: Elements) -> tuple[float, float]:
    """The y of the plot's top and bottom (the vertical axis)."""
    axis = [a for a, _ in el.all("line", "axis") if a["x1"] == a["x2"] and a["y1"] != a["y2"]]
    return float(axis[0]["y1"]), float(axis[0]["y2"])


def _ys(points: str) -> list[float]:
    return [float(p.split(",")[1]) for p in points.split()]


def test_a_floor_far_above_the_rates_does_not_fill_the_plot() -> None:
    # A quiet machine: 1 to 5 events a minute, page threshold min_count 60.
    observed = [1, 3, 5, 2, 3, 4, 1, 3] * 10
    el = Elements(machine_plot(SERIES, _machine(observed, 60.0), ["new", "old"]))
    top, bottom = _plot_area(el)
    ((line, _),) = el.all("polyline", "observed")
    ys = _ys(line["points"])
    # The observed rate spans most of the plot's height, not a sliver along the axis.
    assert (max(ys) - min(ys)) / (bottom - top) > 0.5
    ticks = [
        float(t.replace(",", ""))
        for a, t in el.all("text")
        if a.get("text-anchor") == "end" and re.fullmatch(r"[\d.,]+", t)
    ]
    assert max(ticks) < 30
    # No shading up to somewhere off the plot; the threshold is drawn and labelled instead.
    assert el.all("polygon", "band") == []
    off = el.all("polyline", "off-scale")
    assert {a["class"].split()[0] for a, _ in off} == {"threshold", "old-threshold"}
    assert all(y < top for a, _ in off for y in _ys(a["points"]))
    ((_, note),) = el.all("text", "note")
    assert "page threshold above this scale: new 60, old 30" in note


def test_a_threshold_near_the_rates_is_drawn_to_scale_with_its_band() -> None:
    observed = [1, 3, 5, 2, 3, 4, 1, 3] * 10
    el = Elements(machine_plot(SERIES, _machine(observed, 8.0), ["new", "old"]))
    top, bottom = _plot_area(el)
    assert len(el.all("polygon", "band")) == 1
    ((line, _),) = el.all("polyline", "threshold")
    assert all(top <= y <= bottom for y in _ys(line["points"]))
    assert el.all("polyline", "off-scale") == [] and el.all("text", "note") == []


def _marker(run: str, minute: float, detector: str, severity: str = "high") -> dict[str, Any]:
    s = round(minute * 60, 1)
    return {
        "run": run,
        "bucket": int(minute),
        "time": f"2026-01-01T00:{int(s // 60):02d}:{s % 60:04.1f}Z",
        "detector": detector,
        "severity": severity,
        "summary": f"{detector} at {minute}",
    }


def _box(d: str) -> tuple[float, float, float, float]:
    nums = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", d)]
    xs, ys = nums[0::2], nums[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def test_markers_name_their_detector_and_never_cover_each_other() -> None:
    # Both configs page the same moment, another detector pages it too, and a burst of pages
    # seconds apart.
    markers = [
        _marker("new", 20, "new_resource"),
        _marker("old", 20, "new_resource"),
        _marker("new", 20, "access_rate", "critical"),
        _marker("old", 20.2, "access_rate"),
        *(_marker("new", 40 + k / 60, "access_rate", "medium") for k in range(5)),
    ]
    machine = _machine([3] * 60, 60.0, markers)
    figure = machine_plot(SERIES, machine, ["new", "old"])
    el = Elements(figure)
    drawn = el.all("path", "marker")
    assert sum(int(a["data-pages"]) for a, _ in drawn) == len(markers)
    legend = {t.strip() for a, t in el.all("span", "det")}
    assert legend == {"new_resource", "access_rate"}
    swatch = {
        d: c
        for c, d in re.findall(
            r'class="det"><i class="sw" style="background:(#\w+)"></i>([^<]+)<', figure
        )
    }
    for a, title in drawn:
        assert a["data-detector"] in title
        colour = a["fill"] if a["data-run"] == "new" else a["stroke"]
        assert colour == swatch[a["data-detector"]]
        assert f"marker-{a['data-run']}" in a["class"].split()
    boxes = [(a["data-run"], _box(a["d"])) for a, _ in drawn]
    for i, (_, one) in enumerate(boxes):
        for _, other in boxes[i + 1 :]:
            overlap = (
                one[0] < other[2] and other[0] < one[2] and one[1] < other[3] and other[1] < one[3]
            )
            assert not overlap, (one, other)
    # Every old marker sits below every new one: a lane per config.
    new_bottom = max(b[3] for run, b in boxes if run == "new")
    assert all(b[1] > new_bottom for run, b in boxes if run == "old")
    # The five pages seconds apart share one marker that says how many and lists them.
    ((_, title),) = [(a, t) for a, t in drawn if a["data-pages"] == "5"]
    assert title.count("UTC, medium: access_rate at") == 5
