"""The backtest's HTML report: one self-contained file, plots as inline SVG written here.

No script, stylesheet, font or image is loaded from anywhere: the page is readable offline,
attachable to a ticket, and safe to open from an untrusted source. Each plot is a
`<figure class="plot" data-plot=KIND data-points=N>` whose SVG draws N data points (a plot
with nothing to show says so instead of drawing an empty frame), so a browser test can check
that every plot rendered data. Hovering a page marker or a bar shows its details (SVG
`<title>`, no script).

Input is the results document of `streams.tools.backtest.backtest` (what `backtest --json` writes).
Imports: the standard library only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

_DETECTOR_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
_SEVERITY_COLOURS = {"critical": "#8b0000", "high": "#d62728", "medium": "#ff7f0e"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #222; max-width: 1000px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; }
.meta { color: #555; font-size: 13px; line-height: 1.5; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e3e3; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
td.text { max-width: 520px; }
.up { color: #b00; } .down { color: #080; }
figure.plot { margin: 16px 0 28px; }
figcaption { font-size: 13px; color: #444; margin-bottom: 4px; }
figcaption b { color: #222; }
svg { display: block; background: #fff; }
svg text { font-size: 11px; fill: #555; }
.axis { stroke: #999; stroke-width: 1; } .grid { stroke: #eee; stroke-width: 1; }
.band { fill: #9ecae1; fill-opacity: 0.45; stroke: none; }
.expected { fill: none; stroke: #3182bd; stroke-width: 1.2; stroke-dasharray: 4 3; }
.old-threshold { fill: none; stroke: #777; stroke-width: 1.2; stroke-dasharray: 1 3; }
.observed { fill: none; stroke: #222; stroke-width: 1.3; }
.marker-new { stroke: #fff; stroke-width: 0.8; }
.marker-old { fill: none; stroke-width: 1.5; }
.legend { font-size: 12px; color: #444; }
.legend span { margin-right: 14px; white-space: nowrap; }
.sw { display: inline-block; width: 14px; height: 10px; margin-right: 4px;
      vertical-align: middle; }
.empty { color: #777; font-style: italic; font-size: 13px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _nice_step(span: float, ticks: int = 4) -> float:
    raw = max(span, 1e-9) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt_num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"


class _Frame:
    """A plot area: maps bucket index and value to SVG coordinates and draws the axes."""

    LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 26

    def __init__(
        self, width: int, height: int, n: int, ymax: float, start: datetime, bucket_s: int
    ) -> None:
        self.width, self.height, self.n = width, height, max(n, 1)
        self.start, self.bucket_s = start, bucket_s
        step = _nice_step(ymax)
        self.ymax = max(step * math.ceil(ymax / step), step)
        self.step = step
        self.pw = width - self.LEFT - self.RIGHT
        self.ph = height - self.TOP - self.BOTTOM

    def x(self, i: float) -> float:
        # Each bucket's point sits in the middle of its slot.
        return self.LEFT + (i + 0.5) * self.pw / self.n

    def y(self, v: float) -> float:
        return self.TOP + self.ph - min(v, self.ymax) / self.ymax * self.ph

    def axes(self) -> list[str]:
        out = []
        v = 0.0
        while v <= self.ymax + 1e-9:
            yy = self.y(v)
            out.append(
                f'<line class="grid" x1="{self.LEFT}" x2="{self.width - self.RIGHT}" '
                f'y1="{yy:.1f}" y2="{yy:.1f}"/>'
                f'<text x="{self.LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">'
                f"{_fmt_num(v)}</text>"
            )
            v += self.step
        base = self.TOP + self.ph
        out.append(
            f'<line class="axis" x1="{self.LEFT}" x2="{self.width - self.RIGHT}" '
            f'y1="{base}" y2="{base}"/>'
            f'<line class="axis" x1="{self.LEFT}" x2="{self.LEFT}" y1="{self.TOP}" y2="{base}"/>'
        )
        # About six time labels, on whole buckets.
        every = max(1, math.ceil(self.n / 6))
        multi_day = self.n * self.bucket_s > 86_400
        for i in range(0, self.n, every):
            t = self.start + timedelta(seconds=i * self.bucket_s)
            label = t.strftime("%m-%d %H:%M" if multi_day else "%H:%M")
            xx = self.LEFT + i * self.pw / self.n
            out.append(
                f'<line class="axis" x1="{xx:.1f}" x2="{xx:.1f}" y1="{base}" y2="{base + 4}"/>'
                f'<text x="{xx:.1f}" y="{base + 16}" text-anchor="middle">{label}</text>'
            )
        return out

    def svg(self, body: Sequence[str], label: str) -> str:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{_e(label)}">' + "".join([*self.axes(), *body]) + "</svg>"
        )


def _segments(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Runs of consecutive buckets that have a value."""
    out: list[list[tuple[int, float]]] = []
    cur: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if cur:
                out.append(cur)
                cur = []
        else:
            cur.append((i, v))
    if cur:
        out.append(cur)
    return out


def _polyline(f: _Frame, pts: Sequence[tuple[int, float]], cls: str, extra: str = "") -> str:
    coords = " ".join(f"{f.x(i):.1f},{f.y(v):.1f}" for i, v in pts)
    return f'<polyline class="{cls}" points="{coords}"{extra}/>'


def _start(series: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(series["start"].replace("Z", "+00:00")).astimezone(UTC)


def machine_plot(series: dict[str, Any], m: dict[str, Any], runs: Sequence[str]) -> str:
    """Busiest rate interval per bucket against the learned band, with page markers."""
    observed: list[int] = m["busiest_interval"]
    band_new = m["band"]["new"]
    highs = [h for h in band_new["high"] if h is not None]
    old_high = m["band"]["old"]["high"] if "old" in m["band"] else None
    ymax = max([1.0, *observed, *highs, *(h for h in old_high or [] if h is not None)]) * 1.08
    f = _Frame(900, 230, len(observed), ymax, _start(series), series["bucket_s"])
    body: list[str] = []
    for lows, his in zip(_segments(band_new["low"]), _segments(band_new["high"]), strict=False):
        pts = [(f.x(i), f.y(v)) for i, v in his] + [(f.x(i), f.y(v)) for i, v in reversed(lows)]
        body.append(
            '<polygon class="band" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>'
        )
    for run in _segments(band_new["expected"]):
        body.append(_polyline(f, run, "expected"))
    if old_high is not None:
        for run in _segments(old_high):
            body.append(_polyline(f, run, "old-threshold"))
    body.append(_polyline(f, list(enumerate(map(float, observed))), "series observed"))
    for mk in m["markers"]:
        i = min(max(mk["bucket"], 0), len(observed) - 1)
        xx, yy = f.x(i), f.y(observed[i]) - 6
        colour = _SEVERITY_COLOURS.get(mk["severity"], "#d62728")
        tip = (
            f"{mk['run']} config: {mk['severity']} {mk['detector']} at "
            f"{mk['time'][:19].replace('T', ' ')} UTC\n{mk['summary']}"
        )
        if mk["run"] == "new":
            shape = (
                f'<path class="marker marker-new" fill="{colour}" '
                f'd="M{xx:.1f},{yy + 5:.1f} l-5,-9 h10 z">'
            )
        else:
            shape = (
                f'<path class="marker marker-old" stroke="{colour}" '
                f'd="M{xx:.1f},{yy - 8:.1f} l-5,9 h10 z">'
            )
        body.append(f"{shape}<title>{_e(tip)}</title></path>")
    pages = ", ".join(f"{m['pages'][r]} pages ({r})" for r in runs)
    minutes = series["bucket_s"] // 60
    caption = (
        f"<b>{_e(m['machine_id'])}</b>: {m['events']:,} events, {pages}. Events in the "
        f"busiest {series['interval_s']}-second interval of each {minutes}-minute bucket "
        "against the learned band."
    )
    legend = (
        '<div class="legend"><span><i class="sw" style="background:#222;height:2px"></i>'
        "observed (busiest interval)</span>"
        '<span><i class="sw" style="background:#9ecae1"></i>learned band (new): expected '
        "± z·sd, up to the page threshold (also at least rate_peak_ratio &times; the machine's "
        "recent peak)</span>"
        '<span><i class="sw" style="border-top:2px dashed #3182bd;height:0"></i>expected'
        "</span>"
        + (
            '<span><i class="sw" style="border-top:2px dotted #777;height:0"></i>old '
            "threshold</span>"
            if old_high is not None
            else ""
        )
        + "<span>▼ page (new)</span>"
        + ("<span>△ page (old)</span>" if "old" in runs else "")
        + "</div>"
    )
    return (
        f'<figure class="plot" data-plot="machine" data-machine="{_e(m["machine_id"])}" '
        f'data-points="{len(observed)}" data-markers="{len(m["markers"])}">'
        f"<figcaption>{caption}</figcaption>"
        + f.svg(body, f"event rate of {m['machine_id']}")
        + legend
        + "</figure>"
    )


def noisiest_plot(series: dict[str, Any], runs: Sequence[str]) -> str:
    """Pages per machine, the machines with the most pages (both configs)."""
    rows = series["noisiest"]
    if not rows:
        return '<p class="empty">No pages: no noisy machines to show.</p>'
    label_w, bar_h, gap = 300, 12, 6
    width = 900
    per_row = bar_h * len(runs) + gap
    height = 20 + per_row * len(rows)
    vmax = max(max(r["pages"].values()) for r in rows) or 1
    scale = (width - label_w - 60) / vmax
    body: list[str] = []
    colours = {"new": "#d62728", "old": "#bbb"}
    n_bars = 0
    for k, r in enumerate(rows):
        y0 = 10 + k * per_row
        name = r["machine_id"] if len(r["machine_id"]) <= 46 else r["machine_id"][:45] + "…"
        body.append(
            f'<text x="{label_w - 8}" y="{y0 + bar_h * len(runs) / 2 + 4:.1f}" '
            f'text-anchor="end">{_e(name)}</text>'
        )
        for j, run in enumerate(runs):
            v = r["pages"][run]
            y = y0 + j * bar_h
            w = max(v * scale, 1.0 if v else 0.0)
            body.append(
                f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{colours[run]}"><title>{_e(r["machine_id"])}: {v} pages ({run})'
                f"</title></rect>"
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}">{v}</text>'
            )
            n_bars += 1
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="noisiest machines">'
        + "".join(body)
        + "</svg>"
    )
    legend = "".join(
        f'<span><i class="sw" style="background:{colours[r]}"></i>{r} config</span>' for r in runs
    )
    return (
        f'<figure class="plot" data-plot="noisiest" data-points="{n_bars}">'
        f"<figcaption><b>Noisiest machines</b>: pages per machine, the {len(rows)} with the "
        f'most.</figcaption>{svg}<div class="legend">{legend}</div></figure>'
    )


def detectors_plot(series: dict[str, Any], runs: Sequence[str]) -> str:
    """Pages per detector per time bucket: solid the new config, dashed the old."""
    pd = series["pages_per_detector"]
    detectors = sorted({d for r in runs for d in pd["runs"].get(r, {})})
    if not detectors:
        return '<p class="empty">No pages in either config.</p>'
    n = pd["buckets"]
    ymax = max(max(v) for r in runs for v in pd["runs"].get(r, {}).values()) * 1.1
    f = _Frame(900, 240, n, max(ymax, 1.0), _start(series), pd["bucket_s"])
    body: list[str] = []
    points = 0
    legend = []
    for k, d in enumerate(detectors):
        colour = _DETECTOR_COLOURS[k % len(_DETECTOR_COLOURS)]
        legend.append(f'<span><i class="sw" style="background:{colour}"></i>{_e(d)}</span>')
        for run in runs:
            counts = pd["runs"].get(run, {}).get(d)
            if counts is None:
                continue
            dash = ' stroke-dasharray="5 3"' if run == "old" else ""
            body.append(
                _polyline(
                    f,
                    list(enumerate(map(float, counts))),
                    "series",
                    f' fill="none" stroke="{colour}" stroke-width="1.5"{dash}',
                )
            )
            points += len(counts)
            for i, c in enumerate(counts):
                if c:
                    body.append(
                        f'<circle cx="{f.x(i):.1f}" cy="{f.y(c):.1f}" r="2.5" '
                        f'fill="{colour if run == "new" else "#fff"}" stroke="{colour}">'
                        f"<title>{_e(d)}: {c} pages ({run})</title></circle>"
                    )
    hours = pd["bucket_s"] / 3600
    size = f"{hours:g} hour" if hours >= 1 else f"{pd['bucket_s'] // 60} minute"
    caption = f"<b>Pages per detector over time</b>, per {size} bucket" + (
        ": solid the new config, dashed the old." if "old" in runs else "."
    )
    return (
        f'<figure class="plot" data-plot="detectors" data-points="{points}">'
        f"<figcaption>{caption}</figcaption>"
        + f.svg(body, "pages per detector over time")
        + f'<div class="legend">{"".join(legend)}</div></figure>'
    )


def _change(n: int, o: int) -> str:
    if n == o:
        return "<td>0</td>"
    return f'<td class="{"up" if n > o else "down"}">{n - o:+d}</td>'


def _tables(doc: dict[str, Any], runs: Sequence[str]) -> str:
    r = doc["runs"]
    head = "".join(f"<th>{x}</th>" for x in runs) + ("<th>change</th>" if "old" in runs else "")
    parts = []
    for title, key, names in (
        ("Pages by detector", "by_detector", None),
        ("Pages by severity", "by_severity", ("critical", "high", "medium")),
    ):
        keys = list(names or dict.fromkeys(k for run in runs for k in r[run][key]))
        rows = []
        for k in keys:
            vals = [r[run][key].get(k, 0) for run in runs]
            cells = "".join(f"<td>{v}</td>" for v in vals)
            if "old" in runs:
                cells += _change(vals[0], vals[1])
            rows.append(f"<tr><td>{_e(k)}</td>{cells}</tr>")
        totals = [r[run]["pages"] for run in runs]
        cells = "".join(f"<td><b>{v}</b></td>" for v in totals)
        if "old" in runs:
            cells += _change(totals[0], totals[1])
        rows.append(f"<tr><td><b>all pages</b></td>{cells}</tr>")
        parts.append(f"<h2>{title}</h2><table><tr><th></th>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _score_table(doc: dict[str, Any], runs: Sequence[str]) -> str:
    labels = doc.get("labels")
    if labels is None:
        return ""
    rows = []
    for title, key, spec in (
        ("precision", "precision", ".2f"),
        ("recall", "recall", ".2f"),
        ("true pages", "true_pages", "d"),
        ("false pages", "false_pages", "d"),
        ("false pages per 1000 machine-hours", "false_pages_per_1000_machine_hours", ".2f"),
    ):
        cells = ""
        for run in runs:
            v = doc["runs"][run]["score"][key]
            cells += f"<td>{'-' if v is None else format(v, spec)}</td>"
        rows.append(f"<tr><td>{title}</td>{cells}</tr>")
    head = "".join(f"<th>{x}</th>" for x in runs)
    return (
        f'<h2>Precision and recall</h2><p class="meta">Against {labels["malicious"]} '
        f"labelled malicious episodes ({_e(labels['source'])}); pages from "
        f"{_e(labels['score_from'])} count.</p><table><tr><th></th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


def _diff(doc: dict[str, Any]) -> str:
    d = doc.get("diff")
    if d is None:
        return ""
    parts = [
        f'<h2>What changes</h2><p class="meta">Paged episodes matched by {_e(d["matched_by"])}: '
        f"in both {d['both']}, only with the new config {len(d['only_new'])}, only with the "
        f"old {len(d['only_old'])}.</p>"
    ]
    for side, title in (("only_new", "Only the new config pages"), ("only_old", "Only the old")):
        eps = d[side]
        if not eps:
            continue
        rows = "".join(
            f"<tr><td>{_e(e['first_page_time'][:16].replace('T', ' '))}</td>"
            f'<td class="text">{_e(e["machine_id"])}</td><td class="text">{_e(e["detector"])}'
            f'</td><td class="text">{_e(e["severity"])}</td>'
            f'<td class="text">{_e(e["summary"])}</td></tr>'
            for e in eps[:50]
        )
        more = f'<p class="meta">... and {len(eps) - 50} more.</p>' if len(eps) > 50 else ""
        parts.append(
            f"<h3>{title} ({len(eps)})</h3><table><tr><th>first page (UTC)</th>"
            '<th class="text">machine</th><th class="text">detector</th>'
            '<th class="text">severity</th><th class="text">summary</th></tr>'
            f"{rows}</table>{more}"
        )
    return "".join(parts)


def render_html(doc: dict[str, Any]) -> str:
    """The whole report as one HTML document."""
    runs = [r for r in ("new", "old") if r in doc["runs"]]
    src, series = doc["source"], doc["series"]
    cfgs = "".join(
        f"<div>{run}: {_e(doc['runs'][run]['config_file'] or 'built-in defaults')} "
        f"(config_version {_e(doc['runs'][run]['config_version'])})</div>"
        for run in runs
    )
    dead = ", ".join(f"{k} {v}" for k, v in src["dead_letters"].items()) or "none"
    meta = (
        f'<div class="meta"><div>{src["events"]:,} events from {_e(src["description"])}, '
        f"{_e(src['first_event_time'])} to {_e(src['last_event_time'])}; "
        f"rejected: {_e(dead)}</div>{cfgs}</div>"
    )
    machines = "".join(machine_plot(series, m, runs) for m in series["machines"])
    if not machines:
        machines = '<p class="empty">No machines to plot.</p>'
    body = (
        f"<h1>auditwatch backtest</h1>{meta}"
        + _tables(doc, runs)
        + _score_table(doc, runs)
        + _diff(doc)
        + "<h2>Noisiest machines</h2>"
        + noisiest_plot(series, runs)
        + "<h2>Pages per detector over time</h2>"
        + detectors_plot(series, runs)
        + f"<h2>Machines: event rate against the learned band</h2>{machines}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # No network at all, whatever the content: a CSP that allows only inline styles.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        "<title>auditwatch backtest</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
