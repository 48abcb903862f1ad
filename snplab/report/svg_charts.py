"""Inline SVG charts for the HTML reports: histograms and an exit timeline (no JS, no network).

Each function returns one ``<svg>`` element as text; every mark has a ``<title>`` so a browser
shows its value on hover.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

DENSE_LANE = 60  # more marks than this in one lane are drawn binned
FONT = "font-family:system-ui,sans-serif;font-size:11px"


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def fmt_seconds(s: float) -> str:
    """3 significant digits in the unit that suits (µs, ms, s)."""
    if s == 0:
        return "0"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def histogram(values: Sequence[float], *, title: str, width: int = 520, height: int = 180,
              bins: int = 24, colour: str = "#3b6fb6") -> str:
    """A histogram of durations in seconds, with count, median and p95; the axis ends at the
    99th percentile (slower values are counted in the last bar, its tooltip says so)."""
    if not values:
        return f'<svg width="{width}" height="40" role="img"><title>{esc(title)}: no data</title>' \
               f'<text x="4" y="20" style="{FONT}">{esc(title)}: no data</text></svg>'
    vals = sorted(values)
    lo, hi = 0.0, (vals[min(len(vals) - 1, int(len(vals) * 0.99))] * 1.05) or 1e-3
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    left, right, top, bottom = 40, 14, 36, 30
    pw, ph = width - left - right, height - top - bottom
    cmax = max(counts)
    out = [f'<svg width="{width}" height="{height}" role="img" class="chart">',
           f'<title>{esc(title)}</title>',
           f'<text x="{left}" y="14" style="{FONT};font-weight:600">{esc(title)}</text>']
    bw = pw / bins
    for i, c in enumerate(counts):
        if not c:
            continue
        h = ph * c / cmax
        out.append(f'<rect x="{left + i * bw:.1f}" y="{top + ph - h:.1f}" width="{bw - 1:.1f}" '
                   f'height="{h:.1f}" fill="{colour}"><title>{c} between '
                   f'{fmt_seconds(edges[i])} and {fmt_seconds(edges[i + 1])}</title></rect>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" '
               'stroke="#555"/>')
    for t in _ticks(lo, hi):
        x = left + pw * (t - lo) / (hi - lo)
        out.append(f'<text x="{x:.1f}" y="{top + ph + 13}" text-anchor="middle" '
                   f'style="{FONT}">{esc(fmt_seconds(t))}</text>')
    out.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" style="{FONT}">{cmax}</text>')
    med, p95 = vals[len(vals) // 2], vals[min(len(vals) - 1, int(len(vals) * 0.95))]
    for label, v, dash in (("median", med, "4 2"), ("p95", p95, "1 2")):
        x = left + pw * (v - lo) / (hi - lo)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#c0392b" '
                   f'stroke-dasharray="{dash}"><title>{label} {fmt_seconds(v)}</title></line>')
    out.append(f'<text x="{left}" y="28" style="{FONT}">n={len(vals)} '
               f'median {esc(fmt_seconds(med))} p95 {esc(fmt_seconds(p95))} max '
               f'{esc(fmt_seconds(vals[-1]))}</text>')
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Mark:
    """One exit on the timeline: time since the guest started, its lane, and a tooltip."""

    t: float
    lane: str
    label: str
    colour: str = "#3b6fb6"


def timeline(marks: Sequence[Mark], lanes: Sequence[str], *, title: str,
             phases: Sequence[tuple[str, float]] = (), width: int = 760) -> str:
    """Exits of one guest run on a time axis, one lane per kind; ``phases`` (name, seconds)
    are drawn as consecutive segments above the lanes (create, load, launch, run)."""
    left, right, top, lane_h = 150, 16, 34, 18
    used = [ln for ln in lanes if any(m.lane == ln for m in marks)]
    height = top + lane_h * max(1, len(used)) + 26
    tmax = max([m.t for m in marks] + [sum(s for _, s in phases), 1e-6])
    pw = width - left - right

    def x(t: float) -> float:
        return left + pw * t / tmax

    out = [f'<svg width="{width}" height="{height}" role="img" class="chart timeline">',
           f'<title>{esc(title)}</title>',
           f'<text x="4" y="12" style="{FONT};font-weight:600">{esc(title)}</text>']
    t0, palette = 0.0, ("#d9e6f7", "#f7e3c8", "#dcefd8", "#eadcf2", "#f2d9d9")
    for i, (name, secs) in enumerate(phases):
        out.append(f'<rect x="{x(t0):.1f}" y="17" width="{max(1.0, x(t0 + secs) - x(t0)):.1f}" '
                   f'height="12" fill="{palette[i % len(palette)]}" stroke="#999">'
                   f'<title>{esc(name)} {esc(fmt_seconds(secs))}</title></rect>')
        if x(t0 + secs) - x(t0) > 60:
            out.append(f'<text x="{x(t0) + 3:.1f}" y="27" style="{FONT}">{esc(name)} '
                       f'{esc(fmt_seconds(secs))}</text>')
        t0 += secs
    for i, ln in enumerate(used):
        y = top + i * lane_h
        n = sum(1 for m in marks if m.lane == ln)
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" style="{FONT}">'
                   f'{esc(ln)} ({n})</text>')
        out.append(f'<line x1="{left}" y1="{y + 9}" x2="{left + pw}" y2="{y + 9}" '
                   'stroke="#eee"/>')
        mine = [m for m in marks if m.lane == ln]
        if len(mine) <= DENSE_LANE:
            for m in mine:
                out.append(f'<rect x="{x(m.t) - 1:.1f}" y="{y + 2}" width="2.5" height="14" '
                           f'fill="{m.colour}"><title>{esc(fmt_seconds(m.t))}: '
                           f'{esc(m.label)}</title></rect>')
            continue
        # a dense lane (hundreds of page-validation exits): one bar per 3 px with its count
        buckets: dict[int, list[Mark]] = {}
        for m in mine:
            buckets.setdefault(int((x(m.t) - left) // 3), []).append(m)
        for b, ms in sorted(buckets.items()):
            out.append(f'<rect x="{left + 3 * b:.1f}" y="{y + 2}" width="3" height="14" '
                       f'fill="{ms[0].colour}"><title>{len(ms)} exits '
                       f'{esc(fmt_seconds(ms[0].t))}–{esc(fmt_seconds(ms[-1].t))}</title></rect>')
    yb = top + lane_h * max(1, len(used)) + 2
    out.append(f'<line x1="{left}" y1="{yb}" x2="{left + pw}" y2="{yb}" stroke="#555"/>')
    for t in _ticks(0.0, tmax):
        out.append(f'<text x="{x(t):.1f}" y="{yb + 13}" text-anchor="middle" style="{FONT}">'
                   f'{esc(fmt_seconds(t))}</text>')
    out.append("</svg>")
    return "".join(out)
