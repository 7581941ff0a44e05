"""The backtest's HTML report in a real headless Chromium (Debian's `chromium` package).

Chromium is driven over the DevTools protocol (a websocket; the `websockets` package): the
page must load from file:// with no console error, no exception and no network request but
the page itself, and every plot must have drawn its data points. A full-page screenshot and
the report are kept in $AUDITWATCH_ARTIFACTS (default tests/artifacts/, git-ignored).

Without Chromium the test is skipped on a developer machine and fails under CI (CI=true),
where .ci/run installs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.ops.config import load_config
from streams.tools.backtest import Options, backtest, events_from_files
from streams.tools.report import render_html
from tests.conftest import ROOT
from tests.traffic import BASE_MS, burst, fan_out, steady

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1100,900",
)


def _in_ci() -> bool:
    """$CI as CI services set it ("true", "1"); unset, empty, "false", "0" or "no" is not CI."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        (None, False),
        ("", False),
        ("false", False),
        ("0", False),
        ("FALSE", False),
        ("no", False),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_ci_flag_is_read_as_a_boolean(
    monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert _in_ci() is ci


def _chromium() -> str:
    path = os.environ.get("AUDITWATCH_CHROMIUM") or shutil.which("chromium") or ""
    if not path or not os.access(path, os.X_OK):
        if _in_ci():
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def artifacts_dir() -> Path:
    d = Path(os.environ.get("AUDITWATCH_ARTIFACTS") or ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


class DevTools:
    """A minimal DevTools-protocol client over one page's websocket: commands wait for their
    reply, and every event received meanwhile is kept in `events`."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=30))
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for e in self.events:
            if e["method"] == method:
                return e
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages, late requests)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            except TimeoutError:
                return
            if "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    exe = _chromium()
    profile = tmp_path / "chromium-profile"
    # The child keeps its own copy of the descriptor: ours is closed once it has started.
    with (tmp_path / "chromium.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [
                exe,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "chromium did not start: "
                    + (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.send(f"{domain}.enable")
        yield dt
        dt.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(dt: DevTools, path: Path) -> tuple[list[str], list[str]]:
    """Open a file; (console errors and exceptions, URLs requested)."""
    dt.events.clear()
    dt.send("Page.navigate", url=path.resolve().as_uri())
    dt.wait_for("Page.loadEventFired")
    dt.drain(1.0)
    errors: list[str] = []
    requests: list[str] = []
    for e in dt.events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            errors.append(str(p["exceptionDetails"].get("text")))
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(p["entry"]["text"])
        elif e["method"] == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    return errors, requests


# Per plot: its declared points, and what its SVG actually drew (polyline vertices, bars,
# circles, markers and their boxes, threshold lines) and how big it is on screen.
_PLOTS_JS = """
JSON.stringify(Array.from(document.querySelectorAll('figure.plot')).map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  let vertices = 0;
  f.querySelectorAll('polyline.series').forEach(p => { vertices += p.points.numberOfItems; });
  const bars = Array.from(f.querySelectorAll('rect.bar'))
    .filter(r => r.getBBox().width > 0).length;
  const markers = Array.from(f.querySelectorAll('path.marker')).map(m => {
    const b = m.getBoundingClientRect();
    return {run: m.dataset.run, detector: m.dataset.detector, pages: Number(m.dataset.pages),
            title: m.querySelector('title').textContent,
            left: b.left, right: b.right, top: b.top, bottom: b.bottom};
  });
  const observed = f.querySelector('polyline.observed');
  const yAxis = Array.from(f.querySelectorAll('line.axis')).map(l => l.getBoundingClientRect())
    .reduce((a, b) => (b.height > a.height ? b : a), {height: 0, bottom: 0});
  const low = observed ? observed.getBoundingClientRect().bottom : 0;
  return {
    kind: f.dataset.plot, machine: f.dataset.machine || null,
    points: Number(f.dataset.points), markers: Number(f.dataset.markers || 0),
    vertices: vertices, bars: bars,
    circles: f.querySelectorAll('circle').length,
    drawn_markers: markers,
    legend_detectors: Array.from(f.querySelectorAll('.legend .det'))
      .map(s => s.textContent.trim()),
    band: f.querySelectorAll('polygon.band').length,
    thresholds: f.querySelectorAll('polyline.threshold').length,
    off_scale: f.querySelectorAll('polyline.off-scale').length,
    note: (f.querySelector('text.note') || {textContent: ''}).textContent,
    // How high the observed rate's lowest point stands, as a share of the plot's height.
    observed_floor: yAxis.height ? (yAxis.bottom - low) / yAxis.height : 0,
    width: box.width, height: box.height,
  };
}))
"""

# Per pages table: its config, declared page count, header, and each row's cells and height.
_PAGES_JS = """
JSON.stringify(Array.from(document.querySelectorAll('table.pages')).map(t => ({
  run: t.dataset.run, pages: Number(t.dataset.pages),
  width: t.getBoundingClientRect().width,
  head: Array.from(t.rows[0].cells).map(c => c.textContent),
  rows: Array.from(t.rows).slice(1).map(r => ({
    cells: Array.from(r.cells).map(c => c.textContent),
    height: r.getBoundingClientRect().height,
  })),
})))
"""


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


def _report(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A backtest of three machines (a fan-out, a rate burst, a quiet one) with a tuned config
    against the defaults, rendered to HTML."""
    a, b, c = "billing-api-6f7c9d8b4-q2w7x", "ingest-worker-07", "reporting-cron-1"
    events = steady(a, ["postgres://billing/public.invoices"], BASE_MS, 3 * 3600, 3000)
    events += steady(b, ["s3://raw/2026/01/part-0001.json"], BASE_MS, 3 * 3600, 4000)
    events += steady(c, ["postgres://dw/public.facts"], BASE_MS, 3 * 3600, 20_000)
    events += fan_out(b, BASE_MS + 2 * 3600 * 1000 + 600_000)
    events += burst(a, "postgres://billing/public.invoices", BASE_MS + 9_000_000, n=300)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("detectors:\n  rate:\n    min_ratio: 20\n")
    new_cfg = load_config(tuned)
    src = events_from_files(new_cfg, [str(path)])
    doc = backtest(src, Options(new_cfg, str(tuned), load_config(), "defaults", top_machines=3))
    out = tmp_path / "report.html"
    out.write_text(render_html(doc), encoding="utf-8")
    return out, doc


def test_report_renders_every_plot_offline_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    report, doc = _report(tmp_path)
    errors, requests = load(browser, report)
    assert errors == []
    assert requests == [report.resolve().as_uri()]

    plots = json.loads(browser.send("Runtime.evaluate", expression=_PLOTS_JS)["result"]["value"])
    kinds = [p["kind"] for p in plots]
    assert kinds.count("machine") == 3 and "noisiest" in kinds and "detectors" in kinds
    for p in plots:
        assert p["points"] > 0, p
        assert p["width"] > 300 and p["height"] > 50, p
        if p["kind"] == "machine":
            assert p["vertices"] == p["points"], p
            # The learned threshold is shown: shaded band up to it, or on the top edge.
            assert p["band"] + p["off_scale"] >= 1 and p["thresholds"] >= 1, p
            if p["off_scale"]:
                assert "page threshold above this scale" in p["note"], p
            markers = p["drawn_markers"]
            assert sum(mk["pages"] for mk in markers) == p["markers"], p
            for mk in markers:
                assert mk["detector"] in p["legend_detectors"], (mk, p["legend_detectors"])
                assert mk["detector"] in mk["title"], mk
            for i, a in enumerate(markers):
                for b in markers[i + 1 :]:
                    assert not _overlap(a, b), (a, b)
        elif p["kind"] == "noisiest":
            assert p["bars"] > 0, p
        else:
            assert p["vertices"] == p["points"] and p["circles"] > 0, p
    by_machine = {p["machine"]: p for p in plots if p["kind"] == "machine"}
    assert by_machine["ingest-worker-07"]["markers"] > 0
    assert by_machine["billing-api-6f7c9d8b4-q2w7x"]["markers"] > 0
    # Both configs page the fan-out at the same moment: two markers, one per config.
    fan_out_runs = {
        mk["run"]
        for mk in by_machine["ingest-worker-07"]["drawn_markers"]
        if mk["detector"] == "new_resource"
    }
    assert fan_out_runs == {"new", "old"}
    # A steady machine far below its threshold: the y-axis follows its rate, which stands
    # well up the plot instead of lying on the axis under shading up to a far-off floor.
    quiet = by_machine["reporting-cron-1"]
    assert quiet["off_scale"] >= 1 and quiet["band"] == 0, quiet
    assert quiet["observed_floor"] > 0.5, quiet

    tables = json.loads(browser.send("Runtime.evaluate", expression=_PAGES_JS)["result"]["value"])
    assert [t["run"] for t in tables] == ["new", "old"]
    for t in tables:
        pages = doc["runs"][t["run"]]["page_list"]
        assert t["pages"] == len(pages) == len(t["rows"]) > 0, t
        assert t["width"] > 300
        assert t["head"] == ["time (UTC)", "machine", "detector", "severity", "summary"]
        expected = sorted(
            (
                [p["event_time"], p["machine_id"], p["detector"], p["severity"], p["summary"]]
                for p in pages
            ),
            key=lambda row: row[0],
        )
        shown = [r["cells"] for r in t["rows"]]
        assert [row[1:] for row in shown] == [row[1:] for row in expected]
        assert [row[0] for row in shown] == [row[0][:19].replace("T", " ") for row in expected]
        assert all(r["height"] > 5 for r in t["rows"]), t

    keep_screenshot(browser, report, "backtest-report")


def keep_screenshot(dt: DevTools, page: Path, name: str) -> None:
    """A full-page screenshot of what is loaded, and the page, into the artifacts as NAME.*."""
    size = dt.send("Page.getLayoutMetrics")["cssContentSize"]
    shot = dt.send(
        "Page.captureScreenshot",
        timeout=60,
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    )
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    out = artifacts_dir()
    (out / f"{name}.png").write_bytes(png)
    shutil.copy(page, out / f"{name}.html")


def test_the_harness_sees_requests_and_errors(browser: DevTools, tmp_path: Path) -> None:
    # The checks above must be able to fail: a page that loads something and logs an error.
    page = tmp_path / "leaky.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    errors, requests = load(browser, page)
    assert any("boom" in e for e in errors)
    assert "http://127.0.0.1:9/x.png" in requests
