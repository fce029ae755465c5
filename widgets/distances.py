"""View 5: the selected query's distance to every prototype, and a 2D map of support embeddings,
prototypes and queries; a click on a query selects it; prototypes move when the support set is edited.

The distances are bars drawn in HTML, not a plotly figure: they change on every click and every edit,
and a plotly redraw costs the page 40-90 ms of its main thread in the workbench (measured in headless
Chromium), where these cost a few. Exports draw the same numbers with ``figures.distance_figure``."""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go

from ._base import FigureSlot, View, episode_colors
from .figures import projection_figure

#: the embedding map's key (each class's colour is in the header's legend and on the distance bars)
MAP_KEY = ("<div style='font-size:85%;color:#444;width:440px'>small dots: support images · large circles: "
           "queries (filled: right, open: wrong) · ★ prototypes (faded ☆: before the last edit; dotted line: "
           "how far it moved) · black ring: the selected query</div>")


def distance_bars_html(classes: Sequence[str], distances: np.ndarray, pred: int, true: int,
                       colors: Sequence[str]) -> str:
    """One row per class: its name after a chip of its colour, a bar in that colour as long as its
    distance to the query, and the distance; the predicted class (the shortest bar) is outlined and
    named, the true class named. The hover text of each row gives the distance to three decimals."""
    d = np.asarray(distances, dtype=float)
    low, high = min(0.0, float(d.min())), max(0.0, float(d.max()))
    span = (high - low) or 1.0
    rows = []
    for i, name in enumerate(classes):
        marks = [m for m, on in (("predicted", i == pred), ("true", i == true)) if on]
        label = html.escape(str(name)) + (f" <span class='fsl-dist-mark'>({', '.join(marks)})</span>" if marks else "")
        width = max(1.0, 100 * (d[i] - low) / span)
        outline = "outline:2px solid #000;outline-offset:0" if i == pred else ""
        hover = html.escape(f"{name}: distance {d[i]:.3f}" + (" (shortest: the predicted class)" if i == pred else ""),
                            quote=True)
        rows.append(f"<div class='fsl-dist-row' title='{hover}' data-distance='{d[i]:.6g}'>"
                    f"<span class='fsl-dist-label'><span class='fsl-dist-chip' style='background:{colors[i]}'>"
                    f"</span>{label}</span>"
                    f"<span class='fsl-dist-track'><span class='fsl-dist-bar' style='width:{width:.1f}%;"
                    f"background:{colors[i]};{outline}'></span></span>"
                    f"<span class='fsl-dist-value'>{d[i]:.2f}</span></div>")
    title = (f"<div class='fsl-dist-title'>distance to each prototype (−logit; the shortest is the prediction: "
             f"<b>{html.escape(str(classes[pred]))}</b>)</div>")
    return f"<div class='fsl-dist'>{title}{''.join(rows)}</div>"


class DistanceView(View):
    title = "Prototype distances"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        self.bars = w.HTML()
        self.bars.add_class("fsl-distance-bars")
        self.map_slot = FigureSlot(css_class="fsl-projection", on_figure=self._wire_map)
        self.projection = w.ToggleButtons(options=[("PCA", "pca"), ("t-SNE", "tsne")], value=state.projection,
                                          style={"button_width": "60px"}, tooltip="how the embeddings are drawn in 2D")
        self.projection.observe(self.guard(self._on_projection), names="value")
        self.key = w.HTML(MAP_KEY)  # the map's legend, drawn once (plotly's would be laid out on every redraw)
        self.key.add_class("fsl-projection-key")
        self.children = [w.HBox([w.HTML("<b>prototype distances</b>&nbsp;"), self.projection]), self.error_area,
                         self.bars, self.map_slot, self.key]
        # a new episode result and a new selection both redraw (one redraw per change)
        state.observe(self.guard(lambda _: self._on_selection()), names=["result", "query_index"])
        self.redraw_map()
        self.redraw_bars()

    def _on_selection(self) -> None:
        # a resample changes both the result and the query: draw once per (result, query)
        # a query click on the same result only moves the ring of the map (the map itself is unchanged)
        last_result, last_query = getattr(self, "_drawn_for", (None, -2))
        if self.state.result is not last_result or self.state.query_index != last_query:
            self._drawn_for = (self.state.result, self.state.query_index)
            if self.state.result is not last_result or not self.move_selection():
                self.redraw_map()
            self.redraw_bars()

    def move_selection(self) -> bool:
        """Ring the selected query on the map in place; False when the map has no 'selected' trace."""
        s, fig = self.state, self.map
        ring = None if fig is None or s.result is None else next((t for t in fig.data if t.name == "selected"), None)
        if ring is None or s.result is None:
            return False
        xy = s.result.query_xy
        chosen = [s.query_index] if 0 <= s.query_index < len(xy) else []
        with fig.batch_update():
            ring.x, ring.y = xy[chosen, 0].tolist(), xy[chosen, 1].tolist()
        return True

    @property
    def map(self) -> go.FigureWidget:
        return self.map_slot.figure

    def _on_projection(self, change) -> None:
        if change["new"] != self.state.projection:
            self.state.set_projection(change["new"])

    def redraw_bars(self) -> None:
        s = self.state
        if s.result is None or s.query_index < 0:
            return
        _, ep, _, r = s.shown()
        qi = s.query_index
        text = distance_bars_html(ep.classes, r.distances[qi], int(r.pred[qi]), int(r.true[qi]), episode_colors(s))
        if self.bars.value != text:
            self.bars.value = text

    def redraw_map(self) -> None:
        s = self.state
        if s.result is None:
            return
        _, ep, _, r = s.shown()
        self.map_slot.show(projection_figure(r, ep.support_ids, ep.query_ids, s.query_index, height=340,
                                             colors=episode_colors(s), legend=False))

    def _wire_map(self, fig: go.FigureWidget) -> None:
        queries = next((t for t in fig.data if t.name == "queries"), None)
        if queries is not None:
            queries.on_click(self._on_click)

    def _on_click(self, trace, points, selector) -> None:
        if points.point_inds:
            self.guard(self.state.select_query)(int(points.point_inds[0]))
