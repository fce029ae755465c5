"""View 5: the selected query's distance to every prototype, and a 2D map of support embeddings,
prototypes and queries; a click on a query selects it; prototypes move when the support set is edited."""

from __future__ import annotations

import ipywidgets as w
import plotly.graph_objects as go

from ._base import FigureSlot, View, episode_colors
from .figures import distance_figure, projection_figure


class DistanceView(View):
    title = "Prototype distances"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        self.bars_slot = FigureSlot(css_class="fsl-distance-bars")
        self.map_slot = FigureSlot(css_class="fsl-projection", on_figure=self._wire_map)
        self.projection = w.ToggleButtons(options=[("PCA", "pca"), ("t-SNE", "tsne")], value=state.projection,
                                          style={"button_width": "60px"}, tooltip="how the embeddings are drawn in 2D")
        self.projection.observe(self.guard(self._on_projection), names="value")
        self.children = [w.HBox([w.HTML("<b>prototype distances</b>&nbsp;"), self.projection]), self.error_area,
                         self.bars_slot, self.map_slot]
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
    def bars(self) -> go.FigureWidget:
        return self.bars_slot.figure

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
        self.bars_slot.show(distance_figure(ep.classes, r.distances[qi], int(r.pred[qi]), int(r.true[qi]),
                                           colors=episode_colors(s)))

    def redraw_map(self) -> None:
        s = self.state
        if s.result is None:
            return
        _, ep, _, r = s.shown()
        self.map_slot.show(projection_figure(r, ep.support_ids, ep.query_ids, s.query_index,
                                             colors=episode_colors(s)))

    def _wire_map(self, fig: go.FigureWidget) -> None:
        queries = next((t for t in fig.data if t.name == "queries"), None)
        if queries is not None:
            queries.on_click(self._on_click)

    def _on_click(self, trace, points, selector) -> None:
        if points.point_inds:
            self.guard(self.state.select_query)(int(points.point_inds[0]))
