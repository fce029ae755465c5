"""HTML building blocks of the report: escaping, numbers with their n and interval, tables, the style.

Every string that reaches the page goes through :func:`esc` (text and attribute values alike),
so a class or group name such as ``<script>`` shows as text. Every rate is shown by
:func:`estimate` as "value (95% CI low-high; n = ..., episodes)" and carries the exact numbers
in ``data-*`` attributes, so a reader (or a test) can check them against the audit's tables.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

#: the page's whole style sheet (inline: the report loads nothing from anywhere)
STYLE = """
:root { --fg: #1d2330; --muted: #5b6474; --line: #d9dde4; --bg: #f6f7f9; --ok: #1b7f4b; --bad: #b3261e;
        --warn: #8a5a00; --accent: #2e5fa8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 16px 0; }
.sub { color: var(--muted); margin: 0 0 12px; }
.muted { color: var(--muted); }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { flex: 1 1 220px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.tile .big { font-size: 26px; font-weight: 600; }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
.ci { color: var(--muted); font-size: 12px; }
.status-passed { color: var(--ok); } .status-failed { color: var(--bad); } .status-undefined { color: var(--warn); }
.partial { border-left: 4px solid var(--warn); background: #fff8e6; padding: 8px 12px; margin: 8px 0; }
.banner { border-left: 4px solid var(--bad); background: #fdeceb; padding: 8px 12px; margin: 12px 0; }
pre { background: #f1f3f6; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-all; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 4px 28px; }
dl.kv dd { overflow-wrap: anywhere; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.case { border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
.case .imgs { display: flex; gap: 6px; flex-wrap: wrap; }
.case figure { margin: 0; text-align: center; font-size: 11px; color: var(--muted); }
.case img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid var(--line); display: block; }
.legend { display: inline-block; width: 120px; height: 10px; vertical-align: middle;
          background: linear-gradient(90deg, rgb(40,90,220), #fff, rgb(220,40,40)); border: 1px solid var(--line); }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
"""


def esc(value: Any) -> str:
    """``value`` as text that is safe inside HTML text and inside quoted attribute values."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals ("n/a" when missing or not finite)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def percent(value: Any, digits: int = 1) -> str:
    """A proportion as a percentage ("n/a" when missing or not finite)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * x:.{digits}f}%" if math.isfinite(x) else "n/a"


def count(value: Any) -> str:
    """A whole number with thousands separators ("n/a" when missing)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "n/a"


def _attr(value: Any) -> str:
    """An exact number for a data attribute: repr of the float, "nan" when missing."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "nan"
    return repr(x) if math.isfinite(x) else "nan"


def interval_text(low: Any, high: Any) -> str:
    """"95% CI a-b" in percent, or a note that the interval is undefined."""
    if percent(low) == "n/a" or percent(high) == "n/a":
        return "95% CI undefined"
    return f"95% CI {percent(low)}\u2013{percent(high)}"


def sample_text(n: Any, n_episodes: Any = None, unit: str = "queries") -> str:
    """"n = 1,200 queries, 80 episodes" (the episodes part only when given)."""
    text = f"n = {count(n)} {unit}"
    if n_episodes is not None:
        text += f", {count(n_episodes)} episodes"
    return text


def estimate(key: str, value: Any, low: Any, high: Any, n: Any, n_episodes: Any = None, unit: str = "queries",
             big: bool = False) -> str:
    """A rate with its 95% interval and sample size, text plus exact ``data-*`` attributes.

    Args:
        key: identifies the number on the page (``data-key``), e.g. ``"accuracy"`` or
            ``"class:round"``; escaped like everything else.
        value, low, high: the proportion and its interval's ends (0..1).
        n, n_episodes: queries (or maps) behind it, and the episodes they come from.
        unit: what n counts.
        big: the value in large type (for a headline tile).
    """
    episodes_attr = "" if n_episodes is None else f' data-episodes="{esc(count(n_episodes).replace(",", ""))}"'
    value_html = f'<span class="big">{esc(percent(value))}</span>' if big else f"<b>{esc(percent(value))}</b>"
    sep = "<br>" if big else " "
    return (f'<span class="estimate" data-key="{esc(key)}" data-value="{_attr(value)}" data-low="{_attr(low)}" '
            f'data-high="{_attr(high)}" data-n="{esc(count(n).replace(",", ""))}"{episodes_attr}>{value_html}{sep}'
            f'<span class="ci">({esc(interval_text(low, high))}; {esc(sample_text(n, n_episodes, unit))})</span>'
            "</span>")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = (),
          caption: str = "") -> str:
    """An HTML table. Header texts are escaped; cells must already be HTML (built with :func:`esc`).

    Args:
        headers: column titles.
        rows: cell HTML per row.
        numeric: indices of right-aligned columns.
        caption: an optional caption (escaped).
    """
    right = set(numeric)
    head = "".join(f'<th{" class=r" if i in right else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=r" if i in right else ""}>{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    cap = f"<caption class=muted>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def partial(message: str) -> str:
    """A clearly marked note that part of a section could not be shown, and why."""
    return f'<div class="partial" role="note"><b>Partial:</b> {esc(message)}</div>'


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of escaped labels and values."""
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs) + "</dl>"


__all__ = ["STYLE", "count", "esc", "estimate", "interval_text", "key_values", "number", "partial", "percent",
           "sample_text", "table"]
