"""View 3: the query gallery: predicted and true class, correct or wrong, margin; filters; a click
selects the query that the heatmap and distance views show."""

from __future__ import annotations

import html

import ipywidgets as w

from ._base import View, image_card, thumbnail, tooltip_of
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
        self.cards = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.buttons: dict[int, w.Button] = {}
        self.children = [self.summary, w.HBox([self.show, self.true_class, self.sort]), self.cards, self.error_area]
        state.observe(self._on_result, names=["result"])
        state.observe(self._on_select, names=["query_index"])
        self._on_result()

    def select(self, index: int) -> None:
        self.state.select_query(index)

    def visible_indices(self) -> list[int]:
        """Query indices shown under the current filters, in display order."""
        s = self.state
        r = s.result
        idx = list(range(len(r.pred)))
        if self.show.value == "wrong":
            idx = [i for i in idx if not r.correct[i]]
        elif self.show.value == "correct":
            idx = [i for i in idx if r.correct[i]]
        if self.true_class.value not in (None, ANY):
            c = s.episode.classes.index(self.true_class.value)
            idx = [i for i in idx if r.true[i] == c]
        if self.sort.value == "margin":
            idx.sort(key=lambda i: r.margin[i])
        return idx

    def _on_result(self, change=None) -> None:
        s = self.state
        if s.result is None:
            return
        options = [ANY] + list(s.episode.classes)
        if tuple(self.true_class.options) != tuple(options):
            self.true_class.options = options
            self.true_class.value = ANY
        r = s.result
        known = r.true >= 0
        self.summary.value = (f"<b>queries</b> · {rate_text(int(r.correct[known].sum()), int(known.sum()))} · "
                              f"{int((~r.correct[known]).sum())} wrong")
        self._render()

    def _render(self) -> None:
        s, r, ep = self.state, self.state.result, self.state.episode
        if r is None:
            return
        cards, self.buttons = [], {}
        for i in self.visible_indices():
            ok = bool(r.correct[i])
            known = r.true[i] >= 0
            true = ep.classes[r.true[i]] if known else "?"
            pred = ep.classes[r.pred[i]]
            label = f"#{i} {('✓' if ok else '✗') if known else '?'} {pred[:10]}"
            button = w.Button(description=label, layout=w.Layout(width="74px", height="24px"),
                              button_style="info" if i == s.query_index else self._style(i),
                              tooltip=f"query #{i}: true {true}, predicted {pred}, margin {r.margin[i]:.3f}")
            button.on_click(self.guard(lambda _, q=i: self.select(q)))
            self.buttons[i] = button
            tip = tooltip_of(s, ep.query_ids[i], f"true {true}, predicted {pred}, margin {r.margin[i]:.3f}")
            cards.append(image_card(thumbnail(s, ep.query_ids[i]), tip, button,
                                    border="#1f77b4" if i == s.query_index else ("#2ca02c" if ok else "#d62728")))
        if not cards:
            cards = [w.HTML("<i>no query matches these filters</i>")]
        self.cards.children = cards

    def _on_select(self, change=None) -> None:
        if self.state.result is None:
            return
        r = self.state.result
        for i, button in self.buttons.items():
            button.button_style = "info" if i == self.state.query_index else self._style(i)
            card = self.cards.children[list(self.buttons).index(i)]
            card.layout.border = "2px solid " + ("#1f77b4" if i == self.state.query_index
                                                  else ("#2ca02c" if r.correct[i] else "#d62728"))

    def _style(self, i: int) -> str:
        r = self.state.result
        if r.true[i] < 0:
            return "warning"  # true class unknown (e.g. an imported image)
        return "success" if r.correct[i] else "danger"
