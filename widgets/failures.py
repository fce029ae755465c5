"""View 6: the failure explorer: a confusion matrix over many episodes whose cells open their cases,
sorted by margin; a case opens in the heatmap viewer together with its nearest support images."""

from __future__ import annotations

import html

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from fsl_xai.evaluation import accuracy_interval, confusion_matrix

from ._base import Card, CardRow, FigureSlot, View, thumbnail, tooltip_of
from .figures import confusion_figure, rate_text


class FailureExplorer(View):
    title = "Failure explorer"

    def __init__(self, state, episodes: int = 600, **kwargs):
        super().__init__(state, **kwargs)
        self.episodes = w.BoundedIntText(value=episodes, min=1, max=10000, description="episodes",
                                         layout=w.Layout(width="170px"), style={"description_width": "60px"})
        self.run_button = w.Button(description="evaluate", icon="play", button_style="primary",
                                   tooltip="score this many episodes with the current model (embeddings computed once)")
        self.run_button.on_click(self.guard(lambda _: self.run()))
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="200px"))
        self.summary = w.HTML()
        self.slot = FigureSlot(css_class="fsl-confusion", on_figure=self._wire)
        self.true_class = w.Dropdown(description="true", layout=w.Layout(width="220px"),
                                     style={"description_width": "35px"})
        self.pred_class = w.Dropdown(description="predicted", layout=w.Layout(width="240px"),
                                     style={"description_width": "60px"})
        for widget in (self.true_class, self.pred_class):
            widget.observe(self.guard(lambda _: self._fill_cases()), names="value")
        self.cases = w.Select(rows=8, layout=w.Layout(width="560px"))
        self.open_button = w.Button(description="open in heatmap viewer", icon="search")
        self.open_button.on_click(self.guard(lambda _: self.open_selected()))
        self.nearest = CardRow()
        self.extra_filter: dict = {}
        self.children = [w.HTML("<b>failure explorer</b>"), w.HBox([self.episodes, self.run_button, self.progress]),
                         self.summary, self.error_area, self.slot,
                         w.HTML("cell: click the matrix or choose below; cases sorted by margin "
                                "(confident mistakes first)"),
                         w.HBox([self.true_class, self.pred_class]), self.cases, self.open_button,
                         w.HTML("<b>nearest support images of the opened case</b>"), self.nearest]
        state.observe(self.guard(lambda _: self._on_predictions()), names=["predictions"])
        self._on_predictions()

    @property
    def figure(self) -> go.FigureWidget:
        return self.slot.figure

    def run(self) -> None:
        self.progress.max = self.episodes.value
        self.progress.value = 0

        def tick(done: int, total: int) -> None:
            if done == total or done % max(1, total // 50) == 0:
                self.progress.value = done

        self.state.evaluate_many(self.episodes.value, progress=tick)
        self.progress.value = self.progress.max

    def _on_predictions(self) -> None:
        table = self.state.predictions
        if table is None:
            self.summary.value = "<i>click evaluate to score many episodes</i>"
            return
        names = sorted(set(table["true_class"]))
        self.true_class.options = names
        self.pred_class.options = sorted(set(table["pred_class"]) | set(names))
        # queries of one episode share a support set: the interval resamples whole episodes
        accuracy, n_episodes = accuracy_interval(table), table["episode"].nunique()
        flagged = int(table["ood_flag"].sum()) if "ood_flag" in table.columns else None
        self.slot.show(confusion_figure(confusion_matrix(table), accuracy, n_episodes, flagged=flagged))
        self.summary.value = (f"{n_episodes} episodes, {len(table)} queries · "
                              + rate_text(int(table["correct"].sum()), len(table), interval=accuracy, flagged=flagged)
                              + " (episode-level bootstrap)")
        wrong = table[~table["correct"]]
        if len(wrong):
            counts = wrong.groupby(["true_class", "pred_class"]).size()
            self.true_class.value, self.pred_class.value = counts.index[int(np.argmax(counts.to_numpy()))]
        self._fill_cases()

    def _wire(self, fig) -> None:
        if fig.data:
            fig.data[0].on_click(self._on_click)

    def _on_click(self, trace, points, selector) -> None:
        if points.xs and points.ys:
            self.guard(self.select_cell)(points.ys[0], points.xs[0])

    def select_cell(self, true_class: str, pred_class: str) -> None:
        self.true_class.value, self.pred_class.value = true_class, pred_class

    def case_table(self) -> pd.DataFrame:
        """Cases of the chosen cell (and subgroup filter, if any), sorted by margin."""
        table = self.state.predictions
        if table is None or self.true_class.value is None:
            return pd.DataFrame()
        sel = table[(table["true_class"] == self.true_class.value) & (table["pred_class"] == self.pred_class.value)]
        for col, val in self.extra_filter.items():
            sel = sel[sel[col].astype(str) == str(val)]
        wrong = self.true_class.value != self.pred_class.value
        return sel.sort_values("margin", ascending=not wrong)

    def _fill_cases(self) -> None:
        cases = self.case_table()
        extra = "".join(f" · {k}={v}" for k, v in self.extra_filter.items())
        head = cases.head(300)
        pairs = zip(head["episode"].astype(int), head["query_index"].astype(int), strict=True)
        flags = head["ood_flag"] if "ood_flag" in head.columns else [False] * len(head)
        self.cases.options = [
            (f"{'⚠ out-of-distribution · ' if flag else ''}episode {e} query {q} · {sid} · margin {m:.3f}{extra}",
             (e, q))
            for (e, q), sid, m, flag in zip(pairs, head["sample_id"], head["margin"], flags, strict=True)]

    def open_selected(self) -> None:
        if not self.cases.value:
            raise ValueError("choose a case in the list first")
        self.open_case(*self.cases.value)

    def open_case(self, episode: int, query_index: int) -> None:
        s = self.state
        s.open_case(episode, query_index)
        if s.error:
            return
        table = s.explanations.nearest_support(k=5)
        self.nearest.show([
            Card(thumbnail(s, row["sample_id"]), tooltip_of(s, row["sample_id"], f"class {row['class']}"),
                 f"<span style='font-size:85%'>{html.escape(str(row['class']))[:10]} d={row['distance']:.2f}</span>")
            for _, row in table.iterrows()])
