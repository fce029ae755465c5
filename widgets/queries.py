"""View 3: the query gallery: predicted and true class, correct or wrong, margin, the conformal prediction
set and the domain guard's flag (a ⚠ badge with its meaning in the tooltip); filters; a click selects the
query that the heatmap and distance views show. Flags and sets are computed with the episode, not here."""

from __future__ import annotations

import html

import ipywidgets as w

from ._base import Card, CardRow, View, thumbnail, tooltip_of
from .figures import rate_text
from .trust_text import set_words

#: the badge of a query the domain guard flags
FLAG = "⚠"

ANY = "(any)"


class QueryGallery(View):
    title = "Queries"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        self.summary = w.HTML()
        self.show = w.ToggleButtons(options=["all", "wrong", "correct", "flagged"], value="all",
                                    tooltips=["every query", "wrong predictions", "right predictions",
                                              "queries the domain guard flags as out-of-distribution"],
                                    style={"button_width": "70px"})
        self.alpha = w.BoundedFloatText(value=state.alpha, min=0.01, max=0.5, step=0.01, description="set α",
                                        tooltip="miss rate of the prediction sets: they hold the true class "
                                                "1 - α of the time", layout=w.Layout(width="130px"),
                                        style={"description_width": "40px"})
        self.alpha.observe(self.guard(self._on_alpha), names="value")
        self.detail = w.HTML()
        self.detail.add_class("fsl-query-detail")
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
        self.children = [self.summary, w.HBox([self.show, self.true_class, self.sort, self.alpha]), self.detail,
                         self.cards, self.empty, self.error_area]
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
        elif self.show.value == "flagged":
            flags = r.ood_flag
            idx = [i for i in idx if flags[i]]
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
        summary = (f"<b>queries</b> · "
                   f"{rate_text(int(r.correct[known].sum()), int(known.sum()), flagged=r.n_flagged)} · "
                   f"{int((~r.correct[known]).sum())} wrong")
        t = self.state.trust
        if r.guard is not None and r.ood_flag.any():
            summary += (f"<br><span style='color:#a00'>{FLAG} {int(r.ood_flag.sum())} queries flagged "
                        "out-of-distribution: the model is not fit to predict them</span>")
        elif r.guard is None and t.guard_note:
            summary += f"<br><span style='color:#a60'>{html.escape(t.guard_note)}</span>"
        caption = t.sets_caption()
        if caption:
            summary += f"<br><span style='color:#555;font-size:90%'>{html.escape(caption)}</span>"
        self.summary.value = summary
        if self.alpha.value != self.state.alpha:
            self.alpha.value = self.state.alpha
        self._render()

    def _render(self) -> None:
        s = self.state
        if s.result is None:
            return
        _, ep, _, r = s.shown()
        cards = []
        shown = self.visible_indices()
        flags = r.ood_flag
        for i in shown:
            ok = bool(r.correct[i])
            known = r.true[i] >= 0
            true = ep.classes[r.true[i]] if known else "?"
            pred = ep.classes[r.pred[i]]
            # no margin here (the selected query's is in the heatmap caption): a support edit changes
            # every margin, and would resend every card's hover text
            note = f"true {true}, predicted {pred}"
            if r.pred_sets is not None:
                note += f"; prediction set ({1 - (r.alpha or 0):.0%}): {set_words(r.pred_sets[i])}"
            badge = ""
            if flags[i]:
                badge = FLAG
                note += f"\n{FLAG} {r.warning(i)}"
            cards.append(Card(thumbnail(s, ep.query_ids[i]), tooltip_of(s, ep.query_ids[i]),
                              caption=f"{badge}#{i} {('✓' if ok else '✗') if known else '?'} {pred}",
                              border="#1f77b4" if i == s.query_index else ("#2ca02c" if ok else "#d62728"),
                              button_style="info" if i == s.query_index else self._style(i),
                              button_tooltip=f"query #{i}: {note}", payload=i))
        self.cards.show(cards)
        self.buttons = dict(zip(shown, self.cards.footers, strict=True))
        self.empty.layout.display = "none" if cards else ""
        self._detail()

    def _detail(self) -> None:
        """The selected query's prediction, its prediction set with its size, and its flag."""
        s = self.state
        _, ep, _, r = s.shown()
        qi = s.query_index
        if not 0 <= qi < len(r.pred):
            self.detail.value = ""
            return
        parts = [f"query #{qi}: predicted <b>{html.escape(ep.classes[r.pred[qi]])}</b>"]
        if r.pred_sets is not None and r.set_size is not None:
            size = int(r.set_size[qi])
            parts.append(f"{1 - (r.alpha or 0):.0%} prediction set: <b>{html.escape(set_words(r.pred_sets[qi]))}</b> "
                         f"({size} class{'es' if size != 1 else ''})")
        text = " · ".join(parts)
        warning = r.warning(qi)
        if warning:
            text += f"<br><span style='color:#a00'>{FLAG} {html.escape(warning)}</span>"
        if self.detail.value != text:
            self.detail.value = text

    def _on_alpha(self, change) -> None:
        if change["new"] != self.state.alpha:
            self.state.alpha = float(change["new"])

    def _on_select(self, change=None) -> None:
        if self.state.result is not None:
            self._render()  # only the borders and button styles that changed are sent

    def _style(self, i: int) -> str:
        r = self.state.shown()[3]
        if r.true[i] < 0:
            return "warning"  # true class unknown (e.g. an imported image)
        return "success" if r.correct[i] else "danger"
