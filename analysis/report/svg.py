"""Small inline-SVG plots for the offline HTML report: no JavaScript, no plotting library.

A `Plot` maps data to a fixed canvas with linear axes and "nice" ticks, and collects lines,
points, error bars and labels; `render()` returns one `<svg>` element as text. The chart
helpers below build the report's figures from plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    x = start
    while x <= hi + 1e-9 * step:
        ticks.append(round(x, 12))
        x += step
    return ticks


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.0f}"
    return f"{x:.3g}"


@dataclass
class Plot:
    """One chart: data ranges, axis titles, and the SVG elements drawn so far."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    title: str
    x_label: str = ""
    y_label: str = ""
    width: int = 420
    height: int = 300
    margin: tuple[int, int, int, int] = (34, 16, 44, 58)  # top, right, bottom, left
    y_ticks: list[tuple[float, str]] | None = None  # fixed labelled ticks (categorical axes)
    parts: list[str] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        lo, hi = self.x_range
        if not hi > lo:
            self.x_range = (lo - 0.5, hi + 0.5) if math.isfinite(lo) else (0.0, 1.0)
        lo, hi = self.y_range
        if not hi > lo:
            self.y_range = (lo - 0.5, hi + 0.5) if math.isfinite(lo) else (0.0, 1.0)

    def x(self, v: float) -> float:
        _, right, _, left = self.margin
        lo, hi = self.x_range
        return left + (v - lo) / (hi - lo) * (self.width - left - right)

    def y(self, v: float) -> float:
        top, _, bottom, _ = self.margin
        lo, hi = self.y_range
        return self.height - bottom - (v - lo) / (hi - lo) * (self.height - top - bottom)

    def line(
        self,
        pts: Sequence[tuple[float, float]],
        color: str,
        *,
        dash: bool = False,
        label: str | None = None,
        step: bool = False,
    ) -> None:
        """A polyline through data points (a step line for CDFs)."""
        pts = [(a, b) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
        if not pts:
            return
        coords = []
        for i, (a, b) in enumerate(pts):
            if step and i:
                coords.append(f"{self.x(a):.1f},{self.y(pts[i - 1][1]):.1f}")
            coords.append(f"{self.x(a):.1f},{self.y(b):.1f}")
        style = ' stroke-dasharray="4 3"' if dash else ""
        self.parts.append(
            f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8"{style} '
            f'points="{" ".join(coords)}"/>'
        )
        if label:
            self.legend.append((label, color))

    def point(self, a: float, b: float, color: str, r: float = 4.0, title: str = "") -> None:
        """A dot with a hover title."""
        if not (math.isfinite(a) and math.isfinite(b)):
            return
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.parts.append(
            f'<circle class="point" cx="{self.x(a):.1f}" cy="{self.y(b):.1f}" r="{r:.1f}" '
            f'fill="{color}">{tip}</circle>'
        )

    def hbar(self, lo: float, hi: float, b: float, color: str) -> None:
        """A horizontal interval at height b."""
        if math.isfinite(lo) and math.isfinite(hi):
            y = self.y(b)
            self.parts.append(
                f'<line class="interval" x1="{self.x(lo):.1f}" y1="{y:.1f}" x2="{self.x(hi):.1f}" '
                f'y2="{y:.1f}" stroke="{color}" stroke-width="2"/>'
            )

    def vbar(self, a: float, lo: float, hi: float, color: str) -> None:
        """A vertical interval at position a."""
        if math.isfinite(lo) and math.isfinite(hi):
            x = self.x(a)
            self.parts.append(
                f'<line class="interval" x1="{x:.1f}" y1="{self.y(lo):.1f}" x2="{x:.1f}" '
                f'y2="{self.y(hi):.1f}" stroke="{color}" stroke-width="2"/>'
            )

    def text(self, a: float, b: float, s: str, anchor: str = "start", size: int = 11) -> None:
        self.parts.append(
            f'<text x="{self.x(a):.1f}" y="{self.y(b):.1f}" font-size="{size}" '
            f'text-anchor="{anchor}">{escape(s)}</text>'
        )

    def vline(self, a: float, color: str = "#888", label: str = "") -> None:
        """A reference line across the plot (a limit, zero)."""
        x = self.x(a)
        self.parts.append(
            f'<line x1="{x:.1f}" y1="{self.y(self.y_range[0]):.1f}" x2="{x:.1f}" '
            f'y2="{self.y(self.y_range[1]):.1f}" stroke="{color}" stroke-dasharray="3 3"/>'
        )
        if label:
            self.parts.append(
                f'<text x="{x + 3:.1f}" y="{self.margin[0] + 10}" font-size="10" fill="{color}">'
                f"{escape(label)}</text>"
            )

    def _axes(self) -> list[str]:
        top, right, bottom, left = self.margin
        w, h = self.width, self.height
        out = [
            f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
            'fill="#fff" stroke="#ccc"/>'
        ]
        for v in nice_ticks(*self.x_range):
            x = self.x(v)
            out.append(
                f'<line x1="{x:.1f}" y1="{h - bottom}" x2="{x:.1f}" y2="{h - bottom + 4}" stroke="#555"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{h - bottom + 16}" font-size="10" text-anchor="middle">{_fmt(v)}</text>'
            )
        yt = self.y_ticks or [(v, _fmt(v)) for v in nice_ticks(*self.y_range)]
        for v, label in yt:
            y = self.y(v)
            out.append(
                f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#555"/>'
            )
            out.append(
                f'<text x="{left - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{escape(label)}</text>'
            )
        out.append(
            f'<text x="{(left + w - right) / 2:.0f}" y="{h - 8}" font-size="11" '
            f'text-anchor="middle">{escape(self.x_label)}</text>'
        )
        out.append(
            f'<text x="12" y="{(top + h - bottom) / 2:.0f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {(top + h - bottom) / 2:.0f})">{escape(self.y_label)}</text>'
        )
        out.append(
            f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(self.title)}</text>'
        )
        return out

    def _legend(self) -> list[str]:
        out = []
        top, right, _, _ = self.margin
        for i, (label, color) in enumerate(self.legend):
            y = top + 12 + 14 * i
            x = self.width - right - 110
            out.append(f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{color}"/>')
            out.append(f'<text x="{x + 14}" y="{y + 1}" font-size="10">{escape(label)}</text>')
        return out

    def render(self) -> str:
        """The chart as one standalone `<svg>` element."""
        body = "".join(self._axes() + self.parts + self._legend())
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" '
            f'aria-label="{escape(self.title)}" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif">{body}</svg>'
        )


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def reliability_diagram(
    name: str, bins: Sequence[tuple[float, float, int]], ece: float, c: str
) -> str:
    """Accuracy against mean confidence per equal-mass bin, with the diagonal of perfection."""
    p = Plot(
        (0.0, 1.0),
        (0.0, 1.0),
        f"Reliability: {name} (ECE {ece:.3f})",
        "mean confidence",
        "accuracy",
        width=300,
        height=280,
    )
    p.line([(0.0, 0.0), (1.0, 1.0)], "#999", dash=True)
    p.line([(m, a) for m, a, _ in bins], c)
    for m, a, n in bins:
        p.point(m, a, c, r=2.5 + min(n, 200) ** 0.5 / 3, title=f"conf {m:.2f}, acc {a:.2f}, n {n}")
    return p.render()


def cdf_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    x_label: str,
    limit: float | None = None,
) -> str:
    """Step CDFs of several targets, with an optional limit line (an SLO)."""
    xs = [x for _, pts in series for x, _ in pts if math.isfinite(x)]
    hi = max([*xs, limit or 0.0]) if xs else 1.0
    p = Plot((0.0, hi * 1.05), (0.0, 1.0), title, x_label, "share of calls ≤ x")
    for i, (name, pts) in enumerate(series):
        p.line(pts, color(i), label=name, step=True)
    if limit is not None:
        p.vline(limit, "#d62728", "SLO")
    return p.render()


def forest_plot(
    title: str,
    rows: Sequence[tuple[str, float, float, float, bool]],
    x_label: str = "difference vs production (points)",
) -> str:
    """One interval per row around zero; rows flagged True are drawn grey (n too small)."""
    vals = [v for _, e, lo, hi, _ in rows for v in (e, lo, hi) if math.isfinite(v)]
    span = max([abs(v) for v in vals] + [1.0]) * 1.1
    n = len(rows)
    ticks = [(float(n - i), label) for i, (label, *_rest) in enumerate(rows)]
    p = Plot(
        (-span, span),
        (0.3, n + 0.7),
        title,
        x_label,
        "",
        width=460,
        height=max(120, 60 + 26 * n),
        margin=(34, 16, 44, 130),
        y_ticks=ticks,
    )
    p.vline(0.0)
    for i, (_, est, lo, hi, small) in enumerate(rows):
        c = "#aaa" if small else color(0)
        p.hbar(lo, hi, n - i, c)
        p.point(est, n - i, c, title=f"{est:+.1f} [{lo:+.1f}, {hi:+.1f}]")
    return p.render()


def accuracy_cost_chart(
    rows: Sequence[tuple[str, float, float, float, float, float, float]],
) -> str:
    """Accuracy against cost per 1,000 requests, both with intervals: (name, c, clo, chi, a, alo, ahi)."""
    xs = [v for r in rows for v in r[1:4] if math.isfinite(v)]
    ys = [v for r in rows for v in r[4:7] if math.isfinite(v)]
    x_hi = max([*xs, 1e-06]) * 1.15
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 100.0)
    pad = max((y_hi - y_lo) * 0.15, 1.0)
    p = Plot(
        (0.0, x_hi),
        (max(0.0, y_lo - pad), min(100.0, y_hi + pad)),
        "Accuracy against cost",
        "call cost, USD per 1,000 requests",
        "accuracy (%)",
    )
    for i, (name, c, clo, chi, a, alo, ahi) in enumerate(rows):
        p.hbar(clo, chi, a, color(i))
        p.vbar(c, alo, ahi, color(i))
        p.point(c, a, color(i), title=f"{name}: {a:.1f}% at ${c:.2f}")
        p.text(c, a, f"  {name}")
    return p.render()


def risk_coverage_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]], target_risk: float | None = None
) -> str:
    """Error rate among kept requests against the share kept, as the threshold rises."""
    risks = [r for _, pts in series for _, r in pts if math.isfinite(r)]
    p = Plot(
        (0.0, 1.0),
        (0.0, max([*risks, 0.05]) * 1.1),
        "Risk against coverage",
        "coverage (share of requests kept)",
        "error rate among kept",
    )
    for i, (name, pts) in enumerate(series):
        p.line(pts, color(i), label=name)
    if target_risk is not None:
        p.line([(0.0, target_risk), (1.0, target_risk)], "#999", dash=True)
    return p.render()
