"""Small inline SVG charts for the report (no script, no external resource).

Each chart is plain SVG markup with every label escaped; a ``<title>`` per mark gives the exact
numbers on hover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .markup import esc, percent

LABEL_W = 170
PLOT_W = 420
ROW_H = 22
PAD = 24


@dataclass(frozen=True)
class Mark:
    """One row of a forest plot: a rate with its interval.

    Attributes:
        label: the row's name (a class, a subgroup).
        value, low, high: the rate and its 95% interval (NaN ends: no whisker).
        n: what the rate is computed from (shown on hover).
        flagged: draw the point in the warning colour (e.g. a group with few queries).
    """

    label: str
    value: float
    low: float
    high: float
    n: int
    flagged: bool = False


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def forest(marks: Sequence[Mark], reference: float | None = None, reference_label: str = "",
           title: str = "") -> str:
    """Points with 95% interval whiskers on a 0-100% axis, one row per mark.

    Args:
        marks: the rows, drawn top to bottom.
        reference: a vertical line (e.g. the overall error rate), or None.
        reference_label: the line's label.
        title: the chart's accessible name.
    """
    height = PAD + ROW_H * len(marks) + PAD

    def x(value: float) -> float:
        return LABEL_W + PLOT_W * min(max(value, 0.0), 1.0)

    parts = [f'<svg role="img" width="{LABEL_W + PLOT_W + 30}" '
             f'height="{height}" viewBox="0 0 {LABEL_W + PLOT_W + 30} {height}"><title>{esc(title)}</title>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{PAD - 6}" x2="{tx:.1f}" y2="{height - PAD + 4}" stroke="#e3e6ea"/>'
                     f'<text x="{tx:.1f}" y="{height - 6}" text-anchor="middle">{esc(percent(tick, 0))}</text>')
    if reference is not None and _finite(reference):
        rx = x(reference)
        parts.append(f'<line x1="{rx:.1f}" y1="{PAD - 8}" x2="{rx:.1f}" y2="{height - PAD + 4}" stroke="#5b6474" '
                     f'stroke-dasharray="4 3"/><text x="{rx:.1f}" y="{PAD - 11}" text-anchor="middle">'
                     f"{esc(reference_label)}</text>")
    for i, mark in enumerate(marks):
        cy = PAD + ROW_H * i + ROW_H / 2
        colour = "#8a5a00" if mark.flagged else "#2e5fa8"
        label = mark.label if len(mark.label) <= 26 else mark.label[:25] + "\u2026"
        hover = (f"{mark.label}: {percent(mark.value)} (95% CI {percent(mark.low)}\u2013{percent(mark.high)}; "
                 f"n = {mark.n})")
        parts.append(f'<g><title>{esc(hover)}</title><text x="{LABEL_W - 8}" y="{cy + 4:.1f}" '
                     f'text-anchor="end">{esc(label)}</text>')
        if _finite(mark.low) and _finite(mark.high):
            parts.append(f'<line x1="{x(mark.low):.1f}" y1="{cy:.1f}" x2="{x(mark.high):.1f}" y2="{cy:.1f}" '
                         f'stroke="{colour}" stroke-width="2"/>')
        if _finite(mark.value):
            parts.append(f'<circle cx="{x(mark.value):.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def status_bar(passed: int, failed: int, undefined: int, width: int = 160) -> str:
    """A one-line stacked bar of passed / failed / undefined counts."""
    total = passed + failed + undefined
    parts = [f'<svg role="img" width="{width}" height="12" '
             f'viewBox="0 0 {width} 12"><title>{passed} passed, {failed} failed, {undefined} undefined '
             f"of {total}</title>"]
    start = 0.0
    for n, colour in ((passed, "#1b7f4b"), (failed, "#b3261e"), (undefined, "#d9a21b")):
        w = width * n / total if total else 0.0
        if w > 0:
            parts.append(f'<rect x="{start:.1f}" y="0" width="{w:.1f}" height="12" fill="{colour}"/>')
        start += w
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["Mark", "forest", "status_bar"]
