"""View 6: the failure explorer: a confusion matrix over many episodes whose cells open their cases,
sorted by margin; a case opens in the heatmap viewer together with its nearest support images.

An audit folder (``fsl-xai audit --out DIR``) opens here too ("open audit folder", or
:meth:`FailureExplorer.open_audit`): its query table, accuracy and maps are shown as the audit wrote them,
without running any episode, under a line saying what the audit is of; views registered in
``audit_listeners`` (the subgroup dashboard) get the same audit."""

from __future__ import annotations

import html
import os
from collections.abc import Callable

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from fsl_xai.evaluation import accuracy_interval, confusion_matrix
from fsl_xai.intervals import Interval

from ._base import Card, CardRow, FigureSlot, View, thumbnail, tooltip_of
from .audit_folder import (
    AuditOpener,
    LoadedAudit,
    accuracy_of,
    audit_predictions,
    open_audit,
    provenance_html,
    query_image_of,
)
from .figures import confusion_figure, heatmap_figure, rate_text


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
        self.audit: LoadedAudit | None = None
        self.audit_table: pd.DataFrame | None = None
        #: called with the opened audit (None when the view leaves it), e.g. by the subgroup dashboard
        self.audit_listeners: list[Callable[[LoadedAudit | None], None]] = []
        self.opener = AuditOpener(self.guard(self.open_audit))
        self.provenance = w.HTML()
        self.maps_slot = FigureSlot(css_class="fsl-audit-maps")
        self.case_note = w.HTML()
        self.children = [w.HTML("<b>failure explorer</b>"), w.HBox([self.episodes, self.run_button, self.progress]),
                         self.opener, self.provenance, self.summary, self.error_area, self.slot,
                         w.HTML("cell: click the matrix or choose below; cases sorted by margin "
                                "(confident mistakes first)"),
                         w.HBox([self.true_class, self.pred_class]), self.cases, self.open_button,
                         self.case_note, self.maps_slot,
                         w.HTML("<b>nearest support images of the opened case</b>"), self.nearest]
        state.observe(self.guard(lambda _: self._on_predictions()), names=["predictions"])
        self._on_predictions()

    @property
    def figure(self) -> go.FigureWidget:
        return self.slot.figure

    def run(self) -> None:
        self.close_audit()
        self.progress.max = self.episodes.value
        self.progress.value = 0

        def tick(done: int, total: int) -> None:
            if done == total or done % max(1, total // 50) == 0:
                self.progress.value = done

        self.state.evaluate_many(self.episodes.value, progress=tick)
        self.progress.value = self.progress.max

    # ------------------------------------------------------------------ audit folders
    def open_audit(self, path: str | os.PathLike[str]) -> LoadedAudit:
        """Show the audit folder ``path`` (written by ``fsl-xai audit``) here and in the listening views,
        without running any episode. A foreign, unfinished or damaged folder raises (shown inline by the
        button) and leaves what was shown before."""
        audit = open_audit(path)
        self.show_audit(audit)
        return audit

    def show_audit(self, audit: LoadedAudit) -> None:
        """Show an audit that is already read."""
        self.audit, self.audit_table = audit, audit_predictions(audit)
        self.provenance.value = provenance_html(audit)
        self.maps_slot.children, self.case_note.value = [], ""
        self.nearest.show([])
        interval, n_episodes, flagged = accuracy_of(audit)
        self._show(self.audit_table, interval, n_episodes, flagged, f" ({interval.method}, from the audit)")
        for listener in self.audit_listeners:
            listener(audit)

    def close_audit(self) -> None:
        """Leave the audit shown (if any) and show the workbench's own evaluation again."""
        if self.audit is None:
            return
        self.audit = self.audit_table = None
        self.provenance.value, self.case_note.value = "", ""
        self.maps_slot.children = []
        self.slot.children, self.slot.figure = [], None  # the audit's matrix goes with it
        self.true_class.options, self.pred_class.options, self.cases.options = [], [], []
        for listener in self.audit_listeners:
            listener(None)
        self._on_predictions()

    def shown_table(self) -> pd.DataFrame | None:
        """The per-query table shown: the open audit's, else the workbench's many-episode evaluation."""
        return self.audit_table if self.audit is not None else self.state.predictions

    def _on_predictions(self) -> None:
        table = self.state.predictions
        if self.audit is not None:
            if table is None:
                return  # a new data set or model: the audit stays on screen
            self.close_audit()  # a new evaluation replaces the audit (close_audit shows it)
            return
        if table is None:
            self.summary.value = "<i>click evaluate to score many episodes, or open an audit folder</i>"
            return
        # queries of one episode share a support set: the interval resamples whole episodes
        accuracy, n_episodes = accuracy_interval(table), table["episode"].nunique()
        flagged = int(table["ood_flag"].sum()) if "ood_flag" in table.columns else None
        self._show(table, accuracy, n_episodes, flagged, " (episode-level bootstrap)")

    def _show(self, table: pd.DataFrame, accuracy: Interval, n_episodes: int, flagged: int | None, how: str) -> None:
        names = sorted(set(table["true_class"]))
        self.true_class.options = names
        self.pred_class.options = sorted(set(table["pred_class"]) | set(names))
        self.slot.show(confusion_figure(confusion_matrix(table), accuracy, n_episodes, flagged=flagged))
        self.summary.value = (f"{n_episodes} episodes, {len(table)} queries · "
                              + rate_text(int(table["correct"].sum()), len(table), interval=accuracy, flagged=flagged)
                              + html.escape(how))
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
        table = self.shown_table()
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
        if self.audit is not None:  # the audit has no sample ids: a case is its row
            self.cases.options = [
                (f"{'⚠ out-of-distribution · ' if flag else ''}row {r} · episode {e} query {q} · confidence {c:.2f} · "
                 f"margin {m:.3f}{extra}", (e, q))
                for (e, q), r, c, m, flag in zip(pairs, head["row"], head["confidence"], head["margin"], flags,
                                                 strict=True)]
            return
        self.cases.options = [
            (f"{'⚠ out-of-distribution · ' if flag else ''}episode {e} query {q} · {sid} · margin {m:.3f}{extra}",
             (e, q))
            for (e, q), sid, m, flag in zip(pairs, head["sample_id"], head["margin"], flags, strict=True)]

    def open_selected(self) -> None:
        if not self.cases.value:
            raise ValueError("choose a case in the list first")
        self.open_case(*self.cases.value)

    def open_case(self, episode: int, query_index: int) -> None:
        if self.audit is not None:
            self.show_audit_case(episode, query_index)
            return
        s = self.state
        s.open_case(episode, query_index)
        if s.error:
            return
        table = s.explanations.nearest_support(k=5)
        self.nearest.show([
            Card(thumbnail(s, row["sample_id"]), tooltip_of(s, row["sample_id"], f"class {row['class']}"),
                 f"<span style='font-size:85%'>{html.escape(str(row['class']))[:10]} d={row['distance']:.2f}</span>")
            for _, row in table.iterrows()])

    def show_audit_case(self, episode: int, query_index: int) -> None:
        """The stored maps of one query of the open audit (every method of the audit, side by side), over
        the query image when the workbench has the audited split loaded."""
        from fsl_xai.explain import normalize_maps

        if self.audit is None or self.audit_table is None:
            raise ValueError("open an audit folder first")
        t = self.audit_table
        hit = t[(t["episode"] == int(episode)) & (t["query_index"] == int(query_index))]
        if not len(hit):
            raise ValueError(f"the audit has no query {query_index} in episode {episode}")
        case = hit.iloc[0]
        row = int(case["row"])
        methods, maps = [], []
        for method in self.audit.methods:
            found = self.audit.maps_for_rows(method, [row])
            if row in found:
                methods.append(method)
                maps.append(found[row])
        if not maps:
            raise ValueError(f"the audit stored no map of row {row} (methods {self.audit.methods}); "
                             f"{self.audit.rerun_hint}")
        shape = maps[0].shape
        image = query_image_of(self.audit, self.state.images, int(case["image_index"]), shape)
        name = self.audit.manifest["data"].get("name")
        note = ("" if image is not None else
                f"the query image is not shown: load the audited data set ({name}, "
                f"{self.audit.manifest['data'].get('split')} split) under 'dataset and model' to see it under the map")
        if image is None:
            image = np.full((1, *shape), 0.5, dtype=np.float32)
        head = (f"row {row} · true {case['true_class']}, predicted {case['pred_class']} · "
                f"confidence {float(case['confidence']):.2f} · margin {float(case['margin']):.3f}")
        flagged = bool(case["ood_flag"]) if "ood_flag" in t.columns else False
        fig = heatmap_figure(image, list(normalize_maps(np.stack(maps))), methods, opacity=0.6,
                             warning="the domain guard flags this query as out-of-distribution" if flagged else "")
        self.maps_slot.show(fig)
        self.case_note.value = (f"<b>audit maps of {html.escape(head)}</b> (stored by the audit, not recomputed)"
                                + (f"<br><i>{html.escape(note)}</i>" if note else ""))
