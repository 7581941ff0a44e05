"""The digest's HTML in a real headless Chromium, with the harness of
tests/test_report_chromium.py: it loads from file:// with no error and no request but itself,
every plot draws its data, and every table shows the rows of the JSON document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streams.tools.digest import render_digest_html
from tests import test_report_chromium as chromium
from tests.test_digest import sample_digest

browser = chromium.browser  # the fixture: Chromium started for the test, over DevTools

_PLOTS_JS = """
JSON.stringify(Array.from(document.querySelectorAll('figure.plot')).map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  let vertices = 0;
  f.querySelectorAll('polyline.series').forEach(p => { vertices += p.points.numberOfItems; });
  const pages = Array.from(f.querySelectorAll('circle.page')).map(c => {
    const b = c.getBoundingClientRect();
    return {title: c.querySelector('title').textContent, width: b.width, x: b.left};
  });
  return {
    kind: f.dataset.plot, points: Number(f.dataset.points),
    markers: Number(f.dataset.markers || 0), vertices: vertices,
    bars: Array.from(f.querySelectorAll('rect.bar')).filter(r => r.getBBox().width > 0).length,
    pages: pages, width: box.width, height: box.height,
  };
}))
"""

_TABLES_JS = """
JSON.stringify(Array.from(document.querySelectorAll('table.digest')).map(t => ({
  kind: t.className.replace('digest', '').trim(),
  width: t.getBoundingClientRect().width,
  head: Array.from(t.rows[0].cells).map(c => c.textContent),
  rows: Array.from(t.rows).slice(1).map(r => ({
    cells: Array.from(r.cells).map(c => c.textContent),
    height: r.getBoundingClientRect().height,
  })),
})))
"""


def _evaluate(dt: Any, expression: str) -> Any:
    return json.loads(dt.send("Runtime.evaluate", expression=expression)["result"]["value"])


def test_digest_renders_its_plots_and_tables_offline(browser: Any, tmp_path: Path) -> None:
    doc = sample_digest()
    page = tmp_path / "digest.html"
    page.write_text(render_digest_html(doc), encoding="utf-8")
    errors, requests = chromium.load(browser, page)
    assert errors == []
    assert requests == [page.resolve().as_uri()]

    plots = {p["kind"]: p for p in _evaluate(browser, _PLOTS_JS)}
    assert set(plots) == {"events", "failures"}
    for p in plots.values():
        assert p["points"] > 0 and p["width"] > 300 and p["height"] > 50, p
    events = plots["events"]
    assert events["vertices"] == events["points"] == 2 * 24
    # One marker per page, each drawn and named in its hover text.
    assert events["markers"] == len(events["pages"]) == len(doc["pages"]) == 4
    for drawn, pg in zip(sorted(events["pages"], key=lambda d: d["x"]), doc["pages"], strict=True):
        assert drawn["width"] > 0 and pg["detector"] in drawn["title"], (drawn, pg)
    with_events = [g for g in doc["groups"] if g["events"]]
    # Two bars a group (this period, previous), drawn where the ratio is above zero.
    assert plots["failures"]["points"] == 2 * len(with_events)
    drawn_bars = sum(
        bool(g[k]) for g in with_events for k in ("failure_ratio", "previous_failure_ratio")
    )
    assert plots["failures"]["bars"] == drawn_bars > 0

    tables = {t["kind"]: t for t in _evaluate(browser, _TABLES_JS)}
    assert set(tables) == {"totals", "groups", "machines", "pages", "new-resources"}
    for t in tables.values():
        assert t["width"] > 300 and all(r["height"] > 5 for r in t["rows"]), t
    assert [r["cells"][0] for r in tables["groups"]["rows"]] == [g["group"] for g in doc["groups"]]
    machines = [r["cells"][0].removesuffix(" (new)") for r in tables["machines"]["rows"]]
    assert machines == [m["machine_id"] for m in doc["machines"]]
    pages = tables["pages"]
    assert pages["head"][:5] == ["paged at (UTC)", "machine", "detector", "severity", "ended"]
    assert [r["cells"][4] for r in pages["rows"]] == [p["ended"] for p in doc["pages"]]
    assert [r["cells"][1] for r in pages["rows"]] == [p["machine_id"] for p in doc["pages"]]
    totals = tables["totals"]["rows"][0]["cells"]
    assert totals[4] == f"{doc['totals']['events']:,}"
    # The hostile resource name is shown as text, not markup.
    new = [r["cells"][2] for r in tables["new-resources"]["rows"]]
    assert "secrets://prod/<b>x</b>" in new

    chromium.keep_screenshot(browser, page, "digest")
