"""View 3: the query gallery: predicted and true class, correct or wrong, margin; filters; a click
selects the query that the heatmap and distance views show."""

from __future__ import annotations

import ipywidgets as w

from ._base import Card, CardRow, View, thumbnail, tooltip_of
from .figures import rate_text

ANY = "(any)"


class QueryGallery(View):
    title = "Queries"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        self.summary = w.HTML()
        self.show = w.ToggleButtons(options=["all", "wrong", "correct"], value="all",
                                    style={"button_width": "70px"})
        self.true_class = w.Dropdown(description="true class", layout=w.Layout(width="230px"),
                                     style={"description_width": "65px"})
        self.sort = w.Dropdown(options=[("episode order", "order"), ("margin, lowest first", "margin")],
                               value="order", description="sort", layout=w.Layout(width="230px"),
                               style={"description_width": "35px"})
        for widget in (self.show, self.true_class, self.sort):
            widget.observe(self.guard(lambda _: self._render()), names="value")
        self.cards = CardRow(on_pick=self.guard(self.select))
        self.empty = w.HTML("<i>no query matches these filters</i>", layout=w.Layout(display="none"))
        self.buttons: dict[int, w.Button] = {}  # query index -> its button, for the cards shown
        self.children = [self.summary, w.HBox([self.show, self.true_class, self.sort]), self.cards, self.empty,
                         self.error_area]
        state.observe(self._on_result, names=["result"])
        state.observe(self._on_select, names=["query_index"])
        self._on_result()

    def select(self, index: int) -> None:
        self.state.select_query(index)

    def visible_indices(self) -> list[int]:
        """Query indices shown under the current filters, in display order."""
        _, ep, _, r = self.state.shown()
        idx = list(range(len(r.pred)))
        if self.show.value == "wrong":
            idx = [i for i in idx if not r.correct[i]]
        elif self.show.value == "correct":
            idx = [i for i in idx if r.correct[i]]
        if self.true_class.value not in (None, ANY):
            c = ep.classes.index(self.true_class.value)
            idx = [i for i in idx if r.true[i] == c]
        if self.sort.value == "margin":
            idx.sort(key=lambda i: r.margin[i])
        return idx

    def _on_result(self, change=None) -> None:
        if self.state.result is None:
            return
        _, ep, _, r = self.state.shown()
        options = [ANY] + list(ep.classes)
        if tuple(self.true_class.options) != tuple(options):
            self.true_class.options = options
            self.true_class.value = ANY
        known = r.true >= 0
        self.summary.value = (f"<b>queries</b> · {rate_text(int(r.correct[known].sum()), int(known.sum()))} · "
                              f"{int((~r.correct[known]).sum())} wrong")
        self._render()

    def _render(self) -> None:
        s = self.state
        if s.result is None:
            return
        _, ep, _, r = s.shown()
        cards = []
        shown = self.visible_indices()
        for i in shown:
            ok = bool(r.correct[i])
            known = r.true[i] >= 0
            true = ep.classes[r.true[i]] if known else "?"
            pred = ep.classes[r.pred[i]]
            note = f"true {true}, predicted {pred}, margin {r.margin[i]:.3f}"
            cards.append(Card(thumbnail(s, ep.query_ids[i]), tooltip_of(s, ep.query_ids[i], note),
                              caption=f"#{i} {('✓' if ok else '✗') if known else '?'} {pred[:10]}",
                              border="#1f77b4" if i == s.query_index else ("#2ca02c" if ok else "#d62728"),
                              button_style="info" if i == s.query_index else self._style(i),
                              button_tooltip=f"query #{i}: {note}", payload=i))
        self.cards.show(cards)
        self.buttons = dict(zip(shown, self.cards.footers, strict=True))
        self.empty.layout.display = "none" if cards else ""

    def _on_select(self, change=None) -> None:
        if self.state.result is not None:
            self._render()  # only the borders and button styles that changed are sent

    def _style(self, i: int) -> str:
        r = self.state.shown()[3]
        if r.true[i] < 0:
            return "warning"  # true class unknown (e.g. an imported image)
        return "success" if r.correct[i] else "danger"
