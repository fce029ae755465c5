"""Pure figure builders: results in, plotly figures out (no widgets, no state).

Every builder returns a ``plotly.graph_objects.Figure``; views wrap them in ``go.FigureWidget`` or
copy their data into an existing one, and Export writes them as standalone HTML.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from fsl_xai.evaluation import ConfusionMatrix
from fsl_xai.intervals import Interval, wilson_interval

if TYPE_CHECKING:  # the explain package (and captum) is imported only when a map is computed
    from fsl_xai.explain import Badges

#: plotly's config for every figure on a page or in an exported file: nothing on it leads off this machine.
#: plotly.js (4.1, with plotly 7.1) offers "Share chart..." (an upload to Plotly's cloud, ``plotlyServerURL``)
#: unless ``showSendToCloud`` is off, and its modebar logo links to plotly.com. (The older ``showLink``,
#: ``linkText`` and ``showEditInChartStudio`` no longer exist in plotly.js, and plotly.py warns on them.)
#: Pass ``dict(PLOTLY_CONFIG)``: plotly adds keys to the dict it is given.
PLOTLY_CONFIG: Mapping[str, object] = MappingProxyType(
    {"showSendToCloud": False, "displaylogo": False, "plotlyServerURL": ""})

PALETTE = qualitative.Plotly + qualitative.D3
COLORMAPS = ("RdBu_r", "Viridis", "Inferno", "Jet", "Greys")


def class_color(key: int | str, classes: Sequence[str] = ()) -> str:
    """The colour of a class, the same in every view and export whatever episode shows it.

    Args:
        key: the class's index in its image set's class list, or its name (then ``classes`` is that
            list; a name not in it gets a colour derived from the name itself, stable across runs).
        classes: the image set's class names (``ImageSet.class_names``), for a ``key`` given by name.
    """
    if isinstance(key, str):
        names = list(classes)
        key = names.index(key) if key in names else zlib.crc32(key.encode("utf-8"))
    return PALETTE[int(key) % len(PALETTE)]


def class_colors(names: Sequence[str], classes: Sequence[str] = ()) -> list[str]:
    """The colours of an episode's classes, by name (``class_color``): a resample never recolours a class."""
    return [class_color(str(n), classes) for n in names]


def rate_text(k: int, n: int, what: str = "accuracy", interval: Interval | None = None,
              flagged: int | None = None) -> str:
    """'accuracy 72.0% (n=25, 95% CI 52.4-85.7%)': k of n with ``interval``, by default Wilson's (right
    for the queries of one episode; pass an episode-level interval for queries of many episodes).
    ``flagged``: how many of the n queries the domain guard flags (said in the parentheses:
    "...; 1 flagged out-of-distribution"); None when no guard checked them."""
    flags = "" if flagged is None else f"; {flagged} flagged out-of-distribution"
    if n == 0:
        return f"{what}: no labelled cases (n=0{flags})"
    lo, hi = wilson_interval(k, n) if interval is None else interval.as_tuple()
    return f"{what} {100 * k / n:.1f}% (n={n}, 95% CI {100 * lo:.1f}-{100 * hi:.1f}%{flags})"


# ---------------------------------------------------------------------------------------- images
def to_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    return (np.clip(img[:3].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)


def png_bytes(image: np.ndarray, size: int | None = None) -> bytes:
    """PNG of a (C, H, W) image, optionally upscaled (nearest) to ``size`` pixels wide."""
    from PIL import Image

    pil = Image.fromarray(to_rgb(image))
    if size and pil.width != size:
        pil = pil.resize((size, int(round(size * pil.height / pil.width))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: np.ndarray, size: int | None = None) -> str:
    """``png_bytes`` as a data URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, size)).decode()


def pixels_data_url(pixels: np.ndarray) -> str:
    """A data URL of the PNG of (H, W, 3) or (H, W, 4) uint8 pixels, as they are (RGBA keeps its alpha)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------------------------------- heatmaps
def overlay_colorscale(name: str, signed: bool, steps: int = 11) -> list[list]:
    """A plotly colour scale whose opacity grows with |attribution|, so weak attribution leaves the
    image visible instead of washing it out (0 is transparent; signed: both ends opaque)."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    ts = np.linspace(0, 1, steps)
    colors = sample_colorscale(name, list(ts))
    scale = []
    for t, c in zip(ts, colors, strict=True):
        r, g, b = (int(round(v)) for v in unlabel_rgb(c)) if c.startswith("rgb") else (0, 0, 0)
        alpha = abs(2 * t - 1) if signed else t
        scale.append([float(t), f"rgba({r},{g},{b},{alpha:.2f})"])
    return scale



def heatmap_figure(image: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str], opacity: float = 0.5,
                   colorscale: str = "RdBu_r", signed: bool = True, mask: np.ndarray | None = None,
                   height: int = 300, warning: str = "", compact: bool = False) -> go.Figure:
    """The query image with each attribution map overlaid, side by side.

    Args:
        image: (C, H, W) in [0, 1].
        maps: one (H, W) normalized map in [-1, 1] per method.
        titles: one title per map (method name and quality badges).
        opacity: of the overlay, 0..1.
        signed: show signed values (red for, blue against) or their absolute value.
        mask: optional (H, W) bool lesion mask drawn as an outline.
        warning: a line shown above the maps in red (a query the domain guard flags).
        compact: send less (smaller files and pages):
            the image as a PNG (``source``) instead of its pixel values (``z``), and each map as whole
            percent of its largest attribution (int8: about half the bytes of the same map with three
            decimals; plotly sends a 2-D array as a JSON list); ``map_values`` reads it back.

    Exports and the failure explorer's case view draw this figure (the workbench's live view draws
    the same maps in HTML, ``heatmap_html``). It is built from a cached skeleton: everything but the
    pixels, the maps and the titles is made (and checked by plotly) once per layout (number of maps,
    image size, title lines, options); each call copies it and puts in its own values, which plotly
    then takes unchecked (about 15x faster; the same figure).
    """
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    picture = data_url(image) if compact else rgb
    has_mask = mask is not None and bool(np.asarray(mask).any())
    lines = tuple(str(t).count("<br>") if str(t) else -1 for t in titles)  # plotly skips an empty title
    skeleton = _heatmap_skeleton(len(maps), h, w, lines, opacity, colorscale, signed, has_mask, height, warning,
                                 compact)
    traces = copy.deepcopy(skeleton["data"])  # nothing of the cached skeleton is shared with a figure
    per_map = 3 if has_mask else 2
    for i, m in enumerate(maps):
        z = np.asarray(m, dtype=np.float32)
        z = z if signed else np.abs(z)
        traces[per_map * i]["source" if compact else "z"] = picture
        # compact: whole percent of the largest attribution, short integers on the wire
        traces[per_map * i + 1]["z"] = np.clip(np.round(100 * np.nan_to_num(z)), -100, 100).astype(np.int8) \
            if compact else z
        if has_mask:
            traces[per_map * i + 2]["z"] = np.asarray(mask, dtype=np.float32)
    layout = copy.deepcopy(skeleton["layout"])
    for ann, text in zip(layout.get("annotations", []), [t for t in titles if str(t)], strict=False):
        ann["text"] = text  # the subplot titles come first
    return go.Figure(dict(data=traces, layout=layout), _validate=False)


@functools.lru_cache(maxsize=32)
def _heatmap_skeleton(n_maps: int, h: int, w: int, title_lines: tuple[int, ...], opacity: float, colorscale: str,
                      signed: bool, has_mask: bool, height: int, warning: str, compact: bool) -> dict:
    """``heatmap_figure``'s figure for this layout as plotly's JSON dict, built and checked by plotly,
    with placeholder pixels, maps and titles (each title's line count is the real one; -1: empty)."""
    image = np.zeros((3, h, w), np.float32)
    maps = [np.zeros((h, w), np.float32)] * n_maps
    titles = ["" if n < 0 else "t" + "<br>" * n for n in title_lines]
    mask = np.ones((h, w), bool) if has_mask else None
    return _checked_heatmap_figure(image, maps, titles, opacity, colorscale, signed, mask, height, warning,
                                   compact).to_plotly_json()


def _checked_heatmap_figure(image: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str], opacity: float,
                            colorscale: str, signed: bool, mask: np.ndarray | None, height: int, warning: str,
                            compact: bool) -> go.Figure:
    """``heatmap_figure`` built property by property through plotly (its skeleton; and the
    reference its tests compare the fast one with)."""
    k = max(1, len(maps))
    fig = make_subplots(1, k, subplot_titles=list(titles) or [""], horizontal_spacing=0.04)
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    picture = dict(source=data_url(image)) if compact else dict(z=rgb)
    scale = overlay_colorscale(colorscale, signed)
    for i, m in enumerate(maps):
        m = np.asarray(m, dtype=np.float32)
        z = m if signed else np.abs(m)
        fig.add_trace(go.Image(**picture, hoverinfo="skip", name="image"), 1, i + 1)
        if compact:  # whole percent of the largest attribution: short integers on the wire
            percent = np.clip(np.round(100 * np.nan_to_num(z)), -100, 100).astype(np.int8)
            values: dict = dict(z=percent, zmin=-100 if signed else 0, zmax=100,
                                hovertemplate="x %{x}, y %{y}: %{z}%<extra></extra>")
            bar = dict(len=0.8, thickness=10, ticksuffix="%")
        else:
            values = dict(z=z, zmin=-1 if signed else 0, zmax=1,
                          hovertemplate="x %{x}, y %{y}: %{z:.2f}<extra></extra>")
            bar = dict(len=0.8, thickness=10)
        fig.add_trace(go.Heatmap(**values, colorscale=scale, opacity=opacity, showscale=(i == k - 1),
                                 name="attribution", colorbar=bar), 1, i + 1)
        if mask is not None and np.asarray(mask).any():
            fig.add_trace(go.Contour(z=np.asarray(mask, dtype=np.float32), showscale=False, name="lesion mask",
                                     contours=dict(start=0.5, end=0.5, size=1, coloring="none"),
                                     line=dict(color="lime", width=2), hoverinfo="skip"), 1, i + 1)
        fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], row=1, col=i + 1)
        fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor=f"x{i + 1 if i else ''}", row=1, col=i + 1)
    # fixed widths: the views sit in half-width columns, and plotly's default width (700 px) overflows them
    lines = max((str(t).count("<br>") for t in titles), default=0)
    # the warning wrapped to the figure's width (about 7 px a character at this size)
    warned = textwrap.wrap(f"⚠ {warning}", max(40, (40 + 215 * k) // 7)) if warning else []
    top = 30 + 14 * lines + (16 * len(warned) + 6 if warned else 0)
    fig.update_layout(height=height + top - 30, width=40 + 215 * k, margin=dict(l=5, r=5, t=top, b=5),
                      showlegend=False)
    for ann in fig.layout.annotations:
        ann.font = dict(size=11)
    if warned:
        fig.update_layout(title=dict(text="<br>".join(warned), font=dict(size=12, color="#a00"), x=0.01,
                                     xanchor="left", y=0.99, yanchor="top", yref="container"))
    return fig


def map_values(trace) -> np.ndarray:
    """The attribution map a heatmap trace of ``heatmap_figure`` shows, as floats in [-1, 1] (also for
    a compact figure, whose maps are whole percent)."""
    z = np.asarray(trace.z)
    return z / 100.0 if z.dtype.kind in "iu" else z.astype(np.float64)


#: how each quality check is named on a map, and whether its value reads as a percentage
_BADGE_LABELS = {"randomization": ("randomisation ρ", False), "deletion": ("deletion AUC", False),
                 "insertion": ("insertion AUC", False), "pointing_game": ("pointing", True),
                 "energy_inside": ("in mask", True), "support_labels": ("shuffled-labels ρ", False),
                 "support_images": ("other-images ρ", False), "completeness": ("IG gap / margin", False)}
_STATUS_MARKS = {"passed": "✔", "failed": "✘ FAILED", "undefined": "– undefined"}


def badge_text(badges: Badges | None) -> str:
    """A short label for a map's quality badges ('' when none): per check its status, its value and
    what the value was compared with, e.g. 'deletion AUC ✔ 0.21 (random 0.43)'."""
    if badges is None:
        return ""
    parts = []
    for check in badges.checks:
        label, percent = _BADGE_LABELS.get(check.name, (check.name, False))
        text = f"{label} {_STATUS_MARKS.get(check.status, check.status)}"
        if check.value is not None and check.threshold is not None:
            value, ref = (f"{100 * check.value:.0f}%", f"{100 * check.threshold:.0f}%") if percent else \
                (f"{check.value:.2f}", f"{check.threshold:.2f}")
            reference = {"deletion": "random", "insertion": "random", "pointing_game": "mask",
                         "energy_inside": "mask"}.get(check.name, "limit")
            text += f" {value} ({reference} {ref})"
        parts.append(text)
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------- distances
def distance_figure(classes: Sequence[str], distances: np.ndarray, pred: int, true: int,
                    height: int = 260, colors: Sequence[str] | None = None, checked: bool = False) -> go.Figure:
    """Bars of one query's distance to every prototype (shortest = predicted); ``colors``: one per class
    (``class_colors``; default: by position). For exports (the workbench draws the same bars in HTML,
    ``widgets.distances``); written in plotly's JSON form and taken unchecked (``checked``: through
    plotly's checks, as the tests compare)."""
    colors = list(colors) if colors is not None else [class_color(i) for i in range(len(classes))]
    line = ["black" if i == pred else "rgba(0,0,0,0)" for i in range(len(classes))]
    labels = [f"{c}{' (true)' if i == true else ''}" for i, c in enumerate(classes)]
    bars = dict(type="bar", x=labels, y=np.asarray(distances, dtype=float),
                marker=dict(color=colors, line=dict(color=line, width=3)),
                text=[f"{d:.2f}" for d in distances], textposition="outside", name="distance",
                hovertemplate="%{x}: distance %{y:.3f}<extra></extra>")
    layout = dict(height=height, width=460, margin=dict(l=40, r=10, t=40, b=40), showlegend=False,
                  title=dict(text=f"distance to each prototype (predicted: {classes[pred]})", font=dict(size=13)),
                  yaxis=dict(title=dict(text="distance (-logit)")))
    return go.Figure(dict(data=[bars], layout=layout), _validate=checked)


def projection_figure(result, support_ids: Sequence[str], query_ids: Sequence[str], selected: int = -1,
                      height: int = 380, colors: Sequence[str] | None = None, checked: bool = False,
                      legend: bool = True) -> go.Figure:
    """2D map of support embeddings (dots), prototypes (stars, with where they were before the last
    edit) and queries (circles: filled = correct, open = wrong); the selected query is ringed.

    Trace names: 'support: <class>', 'prototypes', 'previous prototypes', 'queries', 'selected'.
    The 'queries' trace holds every query in episode order, so a click's point index is the query index.
    ``colors``: one per episode class (``class_colors``; default: by position). Redrawn on every edit,
    so it is written in plotly's JSON form and taken unchecked (``checked``: through plotly's checks,
    as the tests compare). ``legend``: plotly's legend under the map (the workbench shows a key of
    its own instead: a legend makes every redraw lay out the figure's margins again).
    """
    classes = result.classes
    palette = list(colors) if colors is not None else [class_color(i) for i in range(len(classes))]
    data: list[dict] = []
    for c, name in enumerate(classes):
        idx = np.flatnonzero(result.support_labels == c)
        data.append(dict(type="scatter", x=result.support_xy[idx, 0], y=result.support_xy[idx, 1], mode="markers",
                         marker=dict(color=palette[c], size=8, opacity=0.7), name=f"support: {name}",
                         text=[support_ids[int(i)] for i in idx], hovertemplate="support %{text}<extra></extra>"))
    # where the prototypes were before the last edit: always two traces (empty before any edit), so
    # that an edit restyles the shown map instead of replacing its traces (a full plotly redraw)
    prev = result.prev_proto_xy
    xs, ys = [], []
    if prev is not None:
        for c in np.flatnonzero(np.linalg.norm(prev - result.proto_xy, axis=1) > 1e-9).tolist():
            xs += [prev[c, 0], result.proto_xy[c, 0], None]
            ys += [prev[c, 1], result.proto_xy[c, 1], None]
    data.append(dict(type="scatter", x=prev[:, 0] if prev is not None else [], y=prev[:, 1] if prev is not None else [],
                     mode="markers", marker=dict(symbol="star", size=14, opacity=0.3, color=palette[:len(classes)]),
                     name="previous prototypes", hoverinfo="skip", showlegend=prev is not None))
    data.append(dict(type="scatter", x=xs, y=ys, mode="lines", line=dict(color="grey", dash="dot"),
                     name="prototype moved", hoverinfo="skip", showlegend=bool(xs)))
    correct = result.correct
    qcol = [palette[t] if t >= 0 else "grey" for t in result.true]
    data.append(dict(
        type="scatter", x=result.query_xy[:, 0], y=result.query_xy[:, 1], mode="markers", name="queries",
        marker=dict(size=11, color=qcol, symbol=["circle" if c else "circle-open" for c in correct],
                    line=dict(width=2, color=qcol)),
        customdata=np.arange(len(query_ids)),
        text=[f"query #{i}: {query_ids[i]}<br>true {classes[t] if t >= 0 else '?'}, predicted {classes[p]}"
              for i, (t, p) in enumerate(zip(result.true, result.pred, strict=True))],
        hovertemplate="%{text}<extra>click to select</extra>"))
    data.append(dict(type="scatter", x=result.proto_xy[:, 0], y=result.proto_xy[:, 1], mode="markers+text",
                     marker=dict(symbol="star", size=20, color=palette[:len(classes)],
                                 line=dict(width=1.5, color="black")),
                     text=list(classes), textposition="top center", name="prototypes",
                     hovertemplate="prototype of %{text}<extra></extra>"))
    sel = [selected] if 0 <= selected < len(query_ids) else []
    data.append(dict(type="scatter", x=result.query_xy[sel, 0], y=result.query_xy[sel, 1], mode="markers",
                     name="selected", marker=dict(size=22, color="rgba(0,0,0,0)", line=dict(width=3, color="black")),
                     hoverinfo="skip"))
    layout = dict(height=height, width=460, margin=dict(l=10, r=10, t=40, b=10), showlegend=legend,
                  legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.02, x=0),
                  title=dict(text=f"embedding map ({'PCA' if result.projection == 'pca' else 't-SNE'}; "
                                  "stars: prototypes, click a query)", font=dict(size=13)),
                  xaxis=dict(showticklabels=False, zeroline=False), yaxis=dict(showticklabels=False, zeroline=False))
    return go.Figure(dict(data=data, layout=layout), _validate=checked)


# ---------------------------------------------------------------------------------------- many episodes
def confusion_figure(matrix: ConfusionMatrix, accuracy: Interval, n_episodes: int, height: int = 420,
                     flagged: int | None = None) -> go.Figure:
    """Row-normalised confusion matrix (``fsl_xai.evaluation.confusion_matrix``); each cell shows its rate
    and n, its hover text the 95% CI; the title gives the accuracy with its interval (and, given
    ``flagged``, how many of its queries the domain guard flags). Click a cell for its cases."""
    names, counts, rates = list(matrix.classes), matrix.counts, matrix.rates
    totals = counts.sum(1)
    text, hover = [], []
    for i in range(len(names)):
        text.append([f"{100 * rates[i, j]:.0f}%<br>{counts[i, j]}/{totals[i]}" for j in range(len(names))])
        hover.append([f"true {names[i]}, predicted {names[j]}: {counts[i, j]} of {totals[i]} "
                      f"({100 * rates[i, j]:.1f}%, 95% CI {100 * matrix.low[i, j]:.1f}-{100 * matrix.high[i, j]:.1f}%)"
                      for j in range(len(names))])
    fig = go.Figure(go.Heatmap(z=rates, x=names, y=names, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra>click for the cases</extra>",
                               colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="rate")))
    n = int(totals.sum())
    correct = int(np.trace(counts))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=60, b=10),
                      title=dict(text=f"confusion over {n_episodes} episodes — "
                                      f"{rate_text(correct, n, interval=accuracy, flagged=flagged)}",
                                 font=dict(size=13)),
                      xaxis=dict(title="predicted"), yaxis=dict(title="true", autorange="reversed"))
    return fig


def subgroup_figure(table: pd.DataFrame, by: Sequence[str], disparity: dict | None = None,
                    height: int = 340) -> go.Figure:
    """Error rate per subgroup with 95% CI error bars. Grey: too small to judge; red: the worst group
    of a flagged disparity. Bar order is the table's row order (a click's point index is the row)."""
    labels = (table["group"].astype(str).tolist() if "group" in table.columns
              else [", ".join(str(row[b]) for b in by) for _, row in table.iterrows()])
    rate = table["error_rate"].to_numpy(dtype=float)
    small = table["too_small"].astype(bool).to_numpy() if "too_small" in table.columns else np.zeros(len(table), bool)
    worst = disparity.get("worst_group") if disparity and disparity.get("flagged") else None
    colors = ["#999999" if s else ("#d62728" if lab == worst else "#1f77b4")
              for lab, s in zip(labels, small, strict=True)]
    text = [f"n={n}" + (" (too small)" if s else "") + (" ⚑ disparity" if lab == worst else "")
            for n, s, lab in zip(table["n"], small, labels, strict=True)]
    method = str(table["ci_method"].iloc[0]) if "ci_method" in table.columns and len(table) else ""
    fig = go.Figure(go.Bar(
        x=labels, y=rate, marker_color=colors, name="error rate", text=text, textposition="outside",
        error_y=dict(type="data", symmetric=False, array=table["error_ci_high"].to_numpy(dtype=float) - rate,
                     arrayminus=rate - table["error_ci_low"].to_numpy(dtype=float)),
        hovertemplate="%{x}: error %{y:.1%}<extra>click for the failure cases</extra>"))
    fig.update_layout(height=height, margin=dict(l=40, r=10, t=40, b=80),
                      yaxis=dict(title="error rate", tickformat=".0%", rangemode="tozero"),
                      title=dict(text=f"error rate by {' × '.join(by)} (95% CI{', ' + method if method else ''})",
                                 font=dict(size=13)))
    return fig
