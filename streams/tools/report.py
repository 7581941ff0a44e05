"""The backtest's HTML report: one self-contained file, plots as inline SVG written here.

No script, stylesheet, font or image is loaded from anywhere: the page is readable offline,
attachable to a ticket, and safe to open from an untrusted source. Each plot is a
`<figure class="plot" data-plot=KIND data-points=N>` whose SVG draws N data points (a plot
with nothing to show says so instead of drawing an empty frame), so a browser test can check
that every plot rendered data. Hovering a page marker or a bar shows its details (SVG
`<title>`, no script). Every page is also listed, per config, in a `<table class="pages">`.

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
.threshold { fill: none; stroke: #08519c; stroke-width: 1.4; }
.old-threshold { fill: none; stroke: #777; stroke-width: 1.2; stroke-dasharray: 1 3; }
.threshold.off-scale { stroke-width: 2.5; stroke-dasharray: 6 3; }
.old-threshold.off-scale { stroke-width: 2.5; stroke-dasharray: 2 3; }
.observed { fill: none; stroke: #222; stroke-width: 1.3; }
.marker-new { stroke: none; }
.marker-old { stroke-width: 1.5; }
.guide { stroke-width: 1; stroke-opacity: 0.35; }
svg text.note { fill: #333; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg text.count { font-size: 9px; }
svg text.lane { font-size: 10px; fill: #777; }
table.pages td { vertical-align: top; }
table.pages td:nth-child(-n+2) { white-space: nowrap; }
td.true { color: #080; } td.false { color: #b00; } td.none { color: #777; }
td.true, td.false, td.none { white-space: nowrap; }
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

    LEFT, RIGHT, BOTTOM = 52, 12, 26

    def __init__(
        self,
        width: int,
        height: int,
        n: int,
        ymax: float,
        start: datetime,
        bucket_s: int,
        top: int = 10,
    ) -> None:
        self.width, self.height, self.n, self.top = width, height, max(n, 1), top
        self.start, self.bucket_s = start, bucket_s
        step = _nice_step(ymax)
        self.ymax = max(step * math.ceil(ymax / step), step)
        self.step = step
        self.pw = width - self.LEFT - self.RIGHT
        self.ph = height - self.top - self.BOTTOM

    def x(self, i: float) -> float:
        # Each bucket's point sits in the middle of its slot.
        return self.LEFT + (i + 0.5) * self.pw / self.n

    def x_at(self, t: datetime) -> float:
        """Where a moment falls (not its bucket's middle): pages seconds apart stay apart."""
        i = (t - self.start).total_seconds() / self.bucket_s
        return self.LEFT + min(max(i, 0.0), self.n) * self.pw / self.n

    def y(self, v: float) -> float:
        return self.top + self.ph - min(v, self.ymax) / self.ymax * self.ph

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
        base = self.top + self.ph
        out.append(
            f'<line class="axis" x1="{self.LEFT}" x2="{self.width - self.RIGHT}" '
            f'y1="{base}" y2="{base}"/>'
            f'<line class="axis" x1="{self.LEFT}" x2="{self.LEFT}" y1="{self.top}" y2="{base}"/>'
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


# Past this multiple of the machine's own highest rate the page threshold is left off the
# y-axis: scaling to a far-off floor squashes the observed rate into a flat line at the bottom.
_THRESHOLD_IN_SCALE = 2.0
# Page markers: a triangle this wide and tall, in lanes of this height above the plot.
_MARKER_W, _MARKER_H, _LANE_H = 9.0, 8.0, 11.0
_MARKER_GAP = 2.0
_TITLE_PAGES = 8  # pages listed in the hover text of one marker


def _utc(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, AttributeError):
        return None


def _time_text(text: str) -> str:
    t = _utc(text)
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else str(text)


def detector_colours(doc: dict[str, Any]) -> dict[str, str]:
    """One colour per detector for the whole report, so a detector looks the same in every
    plot."""
    names = sorted({d for run in doc["runs"].values() for d in run["by_detector"]})
    return {d: _DETECTOR_COLOURS[k % len(_DETECTOR_COLOURS)] for k, d in enumerate(names)}


def _colour_of(colours: dict[str, str], detector: str) -> str:
    if detector not in colours:
        colours[detector] = _DETECTOR_COLOURS[len(colours) % len(_DETECTOR_COLOURS)]
    return colours[detector]


class _Cluster:
    """Pages of one config and one detector close enough in time to share one marker."""

    def __init__(self, run: str, detector: str, x: float, page: dict[str, Any]) -> None:
        self.run, self.detector, self.x = run, detector, x
        self.pages = [page]
        self.level = 0

    @property
    def right(self) -> float:
        n = len(self.pages)
        # A marker for several pages carries their count to its right.
        label = len(str(n)) * 6.0 + 2.0 if n > 1 else 0.0
        return self.x + _MARKER_W / 2 + label


def _lanes(
    f: _Frame, markers: Sequence[dict[str, Any]], runs: Sequence[str]
) -> dict[str, list[_Cluster]]:
    """Markers per config, merged per detector where they would cover each other, each on the
    lowest level of its config's lane where it overlaps no other marker."""
    out: dict[str, list[_Cluster]] = {}
    for run in runs:
        clusters: list[_Cluster] = []
        last: dict[str, _Cluster] = {}
        mine = [mk for mk in markers if mk["run"] == run]
        for mk in sorted(mine, key=lambda mk: (_utc(mk["time"]) or f.start, mk["detector"])):
            x = f.x_at(_utc(mk["time"]) or f.start)
            c = last.get(mk["detector"])
            if c is not None and x - c.x < _MARKER_W:
                c.pages.append(mk)
                continue
            c = last[mk["detector"]] = _Cluster(run, mk["detector"], x, mk)
            clusters.append(c)
        ends: list[float] = []
        for c in sorted(clusters, key=lambda c: c.x):
            left = c.x - _MARKER_W / 2
            for level, end in enumerate(ends):
                if left >= end + _MARKER_GAP:
                    c.level, ends[level] = level, c.right
                    break
            else:
                c.level = len(ends)
                ends.append(c.right)
        out[run] = clusters
    return out


def _marker(c: _Cluster, y0: float, base: float, colour: str) -> str:
    x, w, h = c.x, _MARKER_W / 2, _MARKER_H
    if c.run == "new":
        # Filled, pointing down at the plot.
        pts = f"M{x - w:.1f},{y0:.1f} L{x + w:.1f},{y0:.1f} L{x:.1f},{y0 + h:.1f} Z"
        shape = f'class="marker marker-new" fill="{colour}"'
    else:
        # Hollow, pointing up: another shape, not only another lane.
        pts = f"M{x - w:.1f},{y0 + h:.1f} L{x + w:.1f},{y0 + h:.1f} L{x:.1f},{y0:.1f} Z"
        shape = f'class="marker marker-old" fill="#fff" stroke="{colour}"'
    n = len(c.pages)
    head = (
        f"{c.detector}, {c.run} config" if n == 1 else f"{n} pages of {c.detector}, {c.run} config"
    )
    lines = [
        f"{_time_text(p['time'])} UTC, {p['severity']}: {p['summary']}"
        for p in c.pages[:_TITLE_PAGES]
    ]
    if n > _TITLE_PAGES:
        lines.append(f"... and {n - _TITLE_PAGES} more (the pages table lists all)")
    dash = ' stroke-dasharray="2 2"' if c.run == "old" else ""
    out = [
        f'<line class="guide" x1="{x:.1f}" x2="{x:.1f}" y1="{y0 + h:.1f}" y2="{base:.1f}" '
        f'stroke="{colour}"{dash}/>',
        f'<path {shape} data-run="{c.run}" data-detector="{_e(c.detector)}" '
        f'data-pages="{n}" d="{pts}"><title>{_e(chr(10).join([head, *lines]))}</title></path>',
    ]
    if n > 1:
        out.append(
            f'<text class="count" x="{x + w + 1.5:.1f}" y="{y0 + h - 0.5:.1f}" '
            f'fill="{colour}">{n}</text>'
        )
    return "".join(out)


def _span(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return _fmt_num(lo) if _fmt_num(lo) == _fmt_num(hi) else f"{_fmt_num(lo)} to {_fmt_num(hi)}"


def machine_plot(
    series: dict[str, Any],
    m: dict[str, Any],
    runs: Sequence[str],
    colours: dict[str, str] | None = None,
) -> str:
    """Busiest rate interval per bucket against the learned band and the page threshold, with
    each config's pages in a lane of markers above the plot.

    The y-axis follows the machine's own rates: a page threshold far above them (a floor such
    as min_count on a quiet machine) is not drawn to scale but as a dashed line just above
    the top edge, its value written on the plot, and the band is shaded only where its top
    is on the scale, so the shading never stands for "anything up to somewhere off the
    plot". Markers are coloured by detector (named in the legend and the hover text); the
    old config's are another shape in their own lane, so the two never cover each other."""
    colours = {} if colours is None else colours
    observed: list[int] = m["busiest_interval"]
    band_new = m["band"]["new"]
    old_high = m["band"]["old"]["high"] if "old" in m["band"] else None
    thresholds = {"new": band_new["high"], **({"old": old_high} if old_high is not None else {})}
    rates = [
        *map(float, observed),
        *(v for v in band_new["expected"] if v is not None),
        *(v for v in band_new["low"] if v is not None),
    ]
    top_rate = max([1.0, *rates])
    highest = max((v for hs in thresholds.values() for v in hs if v is not None), default=0.0)
    scale = highest if top_rate < highest <= _THRESHOLD_IN_SCALE * top_rate else top_rate
    start, bucket_s = _start(series), series["bucket_s"]
    probe = _Frame(900, 230, len(observed), scale * 1.08, start, bucket_s)
    lanes = _lanes(probe, m["markers"], runs)
    lane_top: dict[str, float] = {}
    top = 6.0
    for run in runs:
        lane_top[run] = top
        levels = max((c.level + 1 for c in lanes[run]), default=1)
        top += levels * _LANE_H
    top += 6
    f = _Frame(900, int(top) + 200, len(observed), scale * 1.08, start, bucket_s, top=int(top))
    base = f.top + f.ph
    body: list[str] = []
    for run in runs:
        body.append(
            f'<text class="lane" x="{f.LEFT - 6}" y="{lane_top[run] + _MARKER_H:.1f}" '
            f'text-anchor="end">{run}</text>'
        )

    def on_scale(v: float | None) -> bool:
        return v is not None and v <= f.ymax

    shaded = [
        on_scale(h) and lo is not None
        for lo, h in zip(band_new["low"], band_new["high"], strict=True)
    ]
    lows = [lo if s else None for lo, s in zip(band_new["low"], shaded, strict=True)]
    highs = [h if s else None for h, s in zip(band_new["high"], shaded, strict=True)]
    for lo_run, hi_run in zip(_segments(lows), _segments(highs), strict=True):
        pts = [(f.x(i), f.y(v)) for i, v in hi_run] + [(f.x(i), f.y(v)) for i, v in lo_run[::-1]]
        body.append(
            '<polygon class="band" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>'
        )
    for seg in _segments(band_new["expected"]):
        body.append(_polyline(f, seg, "expected"))
    off_scale: dict[str, list[float]] = {}
    for name, values in thresholds.items():
        cls = "threshold" if name == "new" else "old-threshold"
        for seg in _segments([v if on_scale(v) else None for v in values]):
            body.append(_polyline(f, seg, cls))
        above = [v if v is not None and not on_scale(v) else None for v in values]
        for seg in _segments(above):
            # Just above the frame, where no value of the scale is: each config its own row.
            yy = f.top - (2.5 if name == "new" else 5.5)
            coords = " ".join(f"{f.x(i):.1f},{yy}" for i, _ in seg)
            body.append(f'<polyline class="{cls} off-scale" points="{coords}"/>')
        if any(v is not None for v in above):
            off_scale[name] = [v for v in above if v is not None]
    body.append(_polyline(f, list(enumerate(map(float, observed))), "series observed"))
    if off_scale:
        values = ", ".join(f"{name} {_span(vs)}" for name, vs in off_scale.items())
        note = f"page threshold above this scale: {values}"
        body.append(
            f'<text class="note" x="{f.width - f.RIGHT - 4}" y="{f.top + 13}" '
            f'text-anchor="end">↑ {_e(note)}</text>'
        )
    for run in runs:
        for c in lanes[run]:
            y0 = lane_top[run] + c.level * _LANE_H
            body.append(_marker(c, y0, base, _colour_of(colours, c.detector)))
    pages = ", ".join(f"{m['pages'][r]} pages ({r})" for r in runs)
    minutes = series["bucket_s"] // 60
    interval = series["interval_s"]
    caption = (
        f"<b>{_e(m['machine_id'])}</b>: {m['events']:,} events, {pages}. Events in the "
        f"busiest {interval}-second interval of each {minutes}-minute bucket against the "
        "learned band; pages of every detector above, one lane per config."
    )
    if off_scale:
        caption += (
            f" The page threshold is far above this machine's rates ({_e(values)} events per "
            f"{interval} s): the y-axis follows the rates, and the threshold is drawn dashed "
            "just above the top edge, where it is off the scale."
        )
    detectors = sorted({mk["detector"] for mk in m["markers"]})
    legend = (
        '<div class="legend"><span><i class="sw" style="background:#222;height:2px"></i>'
        "observed (busiest interval)</span>"
        '<span><i class="sw" style="background:#9ecae1"></i>learned band (new): from expected '
        "&minus; z·sd up to the page threshold, shaded where the threshold is on this scale</span>"
        '<span><i class="sw" style="border-top:2px dashed #3182bd;height:0"></i>expected'
        "</span>"
        '<span><i class="sw" style="border-top:2px solid #08519c;height:0"></i>page threshold '
        "(new): the largest of expected + z·sd, min_ratio &times; expected, min_count and "
        "rate_peak_ratio &times; the recent peak</span>"
        + (
            '<span><i class="sw" style="border-top:2px dotted #777;height:0"></i>page threshold '
            "(old)</span>"
            if old_high is not None
            else ""
        )
        + "<span>▼ page, new config</span>"
        + ("<span>△ page, old config</span>" if "old" in runs else "")
        + "<span>a number: pages at that time</span>"
        + "".join(
            f'<span class="det"><i class="sw" style="background:{_colour_of(colours, d)}">'
            f"</i>{_e(d)}</span>"
            for d in detectors
        )
        + "</div>"
    )
    return (
        f'<figure class="plot" data-plot="machine" data-machine="{_e(m["machine_id"])}" '
        f'data-points="{len(observed)}" data-markers="{len(m["markers"])}" '
        f'data-off-scale="{",".join(off_scale)}">'
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


def detectors_plot(
    series: dict[str, Any], runs: Sequence[str], colours: dict[str, str] | None = None
) -> str:
    """Pages per detector per time bucket: solid the new config, dashed the old."""
    colours = {} if colours is None else colours
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
    for d in detectors:
        colour = _colour_of(colours, d)
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


MAX_PAGE_ROWS = 1000  # pages listed per config; --json has all of them


def _verdict_cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return '<td class="text none">not scored</td>'
    if v["true"]:
        return f'<td class="text true">true: {_e(", ".join(v["malicious"]))}</td>'
    benign = f": benign {_e(', '.join(v['benign']))}" if v["benign"] else ""
    return f'<td class="text false">false{benign}</td>'


def pages_tables(doc: dict[str, Any], runs: Sequence[str]) -> str:
    """Every page of each config in time order: time, machine, detector, severity, summary,
    and with labels whether it was a true page."""
    labelled = doc.get("labels") is not None
    parts = []
    for run in runs:
        r = doc["runs"][run]
        pages: list[dict[str, Any]] = r["page_list"]
        verdicts = r.get("page_verdicts") or [None] * len(pages)
        order = sorted(
            range(len(pages)),
            key=lambda k: (_utc(pages[k]["event_time"]) or datetime.max.replace(tzinfo=UTC), k),
        )
        title = f"Pages ({run} config)" if len(runs) > 1 else "Pages"
        if not pages:
            parts.append(f'<h2>{title}</h2><p class="empty">No pages.</p>')
            continue
        rows = []
        for k in order[:MAX_PAGE_ROWS]:
            p = pages[k]
            rows.append(
                f"<tr><td>{_e(_time_text(p['event_time']))}</td>"
                f'<td class="text">{_e(p["machine_id"])}</td>'
                f'<td class="text">{_e(p["detector"])}</td>'
                f'<td class="text">{_e(p["severity"])}</td>'
                f'<td class="text">{_e(p["summary"])}</td>'
                + (_verdict_cell(verdicts[k]) if labelled else "")
                + "</tr>"
            )
        more = (
            f'<p class="meta">... and {len(pages) - MAX_PAGE_ROWS} later pages: --json has '
            "all of them.</p>"
            if len(pages) > MAX_PAGE_ROWS
            else ""
        )
        note = (
            '<p class="meta">True: the page falls in a labelled malicious episode\'s window on '
            "its machine (the episode kinds follow); not scored: before the scoring start.</p>"
            if labelled
            else ""
        )
        parts.append(
            f"<h2>{title}</h2>{note}"
            f'<table class="pages" data-run="{run}" data-pages="{len(pages)}">'
            "<tr><th>time (UTC)</th>"
            '<th class="text">machine</th><th class="text">detector</th>'
            '<th class="text">severity</th><th class="text">summary</th>'
            + ('<th class="text">label</th>' if labelled else "")
            + f"</tr>{''.join(rows)}</table>{more}"
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
    colours = detector_colours(doc)
    machines = "".join(machine_plot(series, m, runs, colours) for m in series["machines"])
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
        + detectors_plot(series, runs, colours)
        + f"<h2>Machines: event rate against the learned band</h2>{machines}"
        + pages_tables(doc, runs)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        # No network at all, whatever the content: a CSP that allows only inline styles.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        "<title>auditwatch backtest</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
