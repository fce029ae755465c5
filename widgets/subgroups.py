"""View 7: the subgroup dashboard: error rate per subgroup with 95% CI error bars and disparity flags,
from the many-episode predictions table; a subgroup opens its failure cases.

An audit folder opened here (:meth:`SubgroupDashboard.open_audit`) or in the failure explorer shows the
audit's own subgroup table (``subgroups.parquet``: error rates, 95% intervals, n, gaps to the overall
error rate) without running any episode."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ._base import FigureSlot, View
from .audit_folder import (
    LoadedAudit,
    audit_predictions,
    audit_subgroups,
    group_rows,
    open_audit,
    provenance_html,
    subgroup_note,
)
from .figures import subgroup_figure

if TYPE_CHECKING:
    from fsl_xai.metrics import SubgroupReport

_SKIP = {"sample_id", "episode", "episode_id", "query_index", "true_label", "pred_label", "correct", "margin",
         "true_margin", "pred_class", "filenames", "filename", "image_id", "lesion_id", "split", "path"}


class SubgroupDashboard(View):
    title = "Subgroups"

    def __init__(self, state, failures=None, episodes: int = 600, **kwargs):
        super().__init__(state, **kwargs)
        self.failures = failures
        self.episodes = episodes
        self.by = w.SelectMultiple(rows=4, description="by", layout=w.Layout(width="260px"),
                                   style={"description_width": "25px"})
        self.min_n = w.BoundedIntText(value=30, min=1, max=10000, description="min n", layout=w.Layout(width="140px"),
                                      style={"description_width": "40px"})
        self.run_button = w.Button(description="compute", icon="bar-chart", button_style="primary",
                                   tooltip="error rates per subgroup (evaluates the episodes first if needed)")
        self.run_button.on_click(self.guard(lambda _: self.compute()))
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="140px"))
        self.slot = FigureSlot(css_class="fsl-subgroup-bars", on_figure=self._wire)
        self.table_html = w.HTML()
        self.flag_html = w.HTML()
        self.group = w.Dropdown(description="subgroup", layout=w.Layout(width="320px"),
                                style={"description_width": "60px"})
        self.cases = w.Select(rows=6, layout=w.Layout(width="560px"))
        self.open_button = w.Button(description="open case", icon="search")
        self.open_button.on_click(self.guard(lambda _: self.open_selected()))
        self.group.observe(self.guard(lambda _: self._fill_cases()), names="value")
        self.table: pd.DataFrame | None = None
        self.report: SubgroupReport | None = None
        self.disparity: dict[str, Any] | None = None
        self.by_used: list[str] = []
        self.audit: LoadedAudit | None = None
        self.audit_table: pd.DataFrame | None = None
        self.provenance = w.HTML()
        self.by.observe(self.guard(lambda _: self._on_by()), names="value")
        if failures is not None:  # an audit opened in the failure explorer shows here too
            failures.audit_listeners.append(self.guard(self.show_audit))
        self.children = [w.HTML("<b>subgroup dashboard</b> (error rates over the failure explorer's episodes, "
                                "or of an audit folder opened there)"), self.provenance,
                         w.HBox([self.by, w.VBox([self.min_n, self.run_button, self.progress])]), self.error_area,
                         self.flag_html,
                         self.slot, self.table_html, w.HTML("<b>failure cases of a subgroup</b>"),
                         self.group, self.cases, self.open_button]
        state.observe(self.guard(lambda _: self._on_predictions()), names=["predictions", "images"])
        self._on_predictions()

    @property
    def figure(self) -> go.FigureWidget:
        return self.slot.figure

    def _columns(self) -> list[str]:
        s = self.state
        if s.images is None:
            return []
        meta = s.images.metadata
        return [c for c in meta.columns if c not in _SKIP and (meta[c].nunique() <= 30 or c == "age")
                and meta[c].nunique() > 1] + ["true_class"]

    def _on_predictions(self) -> None:
        if self.audit is not None:
            return  # the audit's columns stay until it is closed
        cols = self._columns()
        if tuple(self.by.options) != tuple(cols):
            keep = tuple(c for c in self.by.value if c in cols)
            self.by.options = cols
            self.by.value = keep or tuple(cols[:1])

    def _tick(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done

    def compute(self) -> pd.DataFrame:
        """Compute the report (and the disparity) for the chosen columns, evaluating episodes if needed;
        returns the table shown (without the overall row)."""
        from fsl_xai.metrics import disparity, subgroup_report

        s = self.state
        by = list(self.by.value)
        if not by:
            raise ValueError("choose at least one column to group by")
        if self.audit is not None:
            return self._show_audit_table(by)
        predictions = s.predictions if s.predictions is not None else s.evaluate_many(self.episodes,
                                                                                      progress=self._tick)
        missing = [c for c in by if c not in predictions.columns]
        if missing:
            raise ValueError(f"the predictions table has no column(s) {missing}")
        report = subgroup_report(predictions, by=by, min_n=self.min_n.value, per_class=False, progress=self._tick)
        table = report.table[report.table["group"] != "all"].reset_index(drop=True)
        disp = disparity(report)
        self.report, self.table, self.disparity, self.by_used = report, table, disp, by
        self.slot.show(subgroup_figure(table, by, disp))
        self.table_html.value = self._table_html(table, self._flagged(report, table))
        self.flag_html.value = self._flag_html(disp)
        self.group.options = [(str(g), i) for i, g in enumerate(table["group"])]
        return table

    # ------------------------------------------------------------------ audit folders
    def open_audit(self, path: str | os.PathLike[str]) -> LoadedAudit:
        """Show the subgroup table of the audit folder ``path`` without running any episode (through the
        failure explorer when there is one, so that both views show the same audit)."""
        if self.failures is not None:
            return self.failures.open_audit(path)
        audit = open_audit(path)
        self.show_audit(audit)
        return audit

    def show_audit(self, audit: LoadedAudit | None) -> None:
        """Show an audit that is already read (None: leave it, back to the workbench's evaluation)."""
        self.table = self.report = self.disparity = None
        self.slot.children, self.slot.figure = [], None
        self.table_html.value = self.flag_html.value = ""
        self.group.options, self.cases.options = [], []
        if audit is None:
            self.audit = self.audit_table = None
            self.provenance.value = ""
            self._on_predictions()
            return
        self.audit, self.audit_table = audit, audit_predictions(audit)
        self.provenance.value = provenance_html(audit)
        columns = ([] if audit.subgroups is None else
                   list(dict.fromkeys(audit.subgroups["column"].astype(str))))
        with self.hold_trait_notifications():
            self.by.options = columns
            self.by.value = tuple(columns[:1])
        if audit.subgroups is None:
            raise ValueError(subgroup_note(audit))
        self._show_audit_table(list(self.by.value))

    def _on_by(self) -> None:
        if self.audit is not None and self.audit.subgroups is not None and self.by.value:
            self._show_audit_table(list(self.by.value))

    def _show_audit_table(self, by: list[str]) -> pd.DataFrame:
        assert self.audit is not None and self.audit_table is not None
        table = audit_subgroups(self.audit, by)
        self.table, self.by_used, self.report, self.disparity = table, by, None, None
        self.slot.show(subgroup_figure(table, by, None))
        flagged = None
        if "ood_flag" in self.audit_table.columns:
            flags = self.audit_table["ood_flag"].to_numpy(dtype=bool)
            flagged = [int(flags[self._audit_rows(k)].sum()) for k in range(len(table))]
        self.table_html.value = self._table_html(table, flagged)
        self.flag_html.value = self._gap_html(table)
        self.group.options = [(str(g), i) for i, g in enumerate(table["group"])]
        return table

    def _audit_rows(self, row: int) -> np.ndarray:
        assert self.table is not None and self.audit_table is not None
        r = self.table.iloc[row]
        return group_rows(self.audit_table, str(r["column"]), str(r["value"]))

    @staticmethod
    def _gap_html(table: pd.DataFrame) -> str:
        """The group furthest above the audit's overall error rate (the audit's ``gap`` column)."""
        if not len(table) or "gap" not in table.columns:
            return "<i>no subgroup in this audit</i>"
        r = table.iloc[int(np.nanargmax(table["gap"].to_numpy(dtype=float)))]
        return (f"<span>largest gap in the audit: {html.escape(str(r['group']))}: error "
                f"{100 * r['error_rate']:.1f}% (n={int(r['n'])}, 95% CI {100 * r['error_ci_low']:.1f}-"
                f"{100 * r['error_ci_high']:.1f}%), {100 * r['gap']:+.1f} points against the overall error rate"
                "</span>")

    @staticmethod
    def _flagged(report: SubgroupReport, table: pd.DataFrame) -> list[int] | None:
        """Queries of each subgroup the domain guard flags (None when the table has no guard columns)."""
        preds = report.predictions
        if "ood_flag" not in preds.columns:
            return None
        flags = preds["ood_flag"].to_numpy(dtype=bool)
        return [int(flags[report.rows(str(g))].sum()) for g in table["group"]]

    def _table_html(self, table: pd.DataFrame, flagged: list[int] | None = None) -> str:
        rows = []
        for k, (_, r) in enumerate(table.iterrows()):
            flags = "" if flagged is None else f"<td>{flagged[k]}</td>"
            rows.append(f"<tr><td>{html.escape(str(r['group']))}</td><td>{int(r['n'])}</td>"
                        f"<td>{100 * r['error_rate']:.1f}%</td><td>{100 * r['error_ci_low']:.1f}-"
                        f"{100 * r['error_ci_high']:.1f}%</td>{flags}"
                        f"<td>{html.escape(str(r.get('note', '')))}</td></tr>")
        method = html.escape(str(table["ci_method"].iloc[0])) if len(table) and "ci_method" in table else ""
        head = ("" if flagged is None else
                "<th title='queries the domain guard flags as out-of-distribution'>flagged</th>")
        return ("<table style='font-size:90%'><tr><th>group</th><th>n</th><th>error</th><th>95% CI</th>"
                f"{head}<th>note</th></tr>" + "".join(rows)
                + f"</table><span style='color:#666'>interval: {method}"
                + ("" if flagged is None else "; flagged: queries of the group (counted in its n) that the domain "
                   "guard flags as out-of-distribution")
                + "</span>")

    @staticmethod
    def _flag_html(disp: dict | None) -> str:
        if not disp or disp.get("worst_group") is None:
            note = (disp or {}).get("note", "")
            return f"<i>no disparity computed{': ' + html.escape(note) if note else ''}</i>"
        style = "color:#a00;font-weight:bold" if disp["flagged"] else "color:#333"
        flag = "⚑ flagged: " if disp["flagged"] else "not flagged: "
        return (f"<span style='{style}'>{flag}{html.escape(str(disp['worst_group']))} vs "
                f"{html.escape(str(disp['best_group']))}: error gap {100 * disp['gap']:+.1f} points "
                f"(95% CI {100 * disp['gap_ci_low']:.1f} to {100 * disp['gap_ci_high']:.1f}; "
                f"n={disp['worst_n']} vs {disp['best_n']}, {html.escape(str(disp['ci_method']))})</span>")

    def _wire(self, fig) -> None:
        if fig.data:
            fig.data[0].on_click(self._on_click)

    def _on_click(self, trace, points, selector) -> None:
        if points.point_inds:
            self.group.value = int(points.point_inds[0])

    def cases_of(self, row: int) -> pd.DataFrame:
        """The wrong predictions of subgroup ``row`` of the table, most confident first."""
        if self.table is None:
            raise ValueError("compute the subgroup table first")
        if self.audit is not None and self.audit_table is not None:
            preds = self.audit_table
            wrong = self._audit_rows(row) & ~preds["correct"].to_numpy(dtype=bool)
            return preds[wrong].sort_values("margin", ascending=False)
        if self.report is None:
            raise ValueError("compute the subgroup table first")
        preds = self.report.predictions
        mask = self.report.rows(str(self.table.iloc[row]["group"])) & ~preds["correct"].astype(bool).to_numpy()
        return preds[mask].sort_values("margin", ascending=False)

    def _fill_cases(self) -> None:
        if self.table is None or self.group.value is None:
            return
        cases = self.cases_of(self.group.value)
        head = cases.head(300)
        if self.audit is not None:  # the audit has no sample ids: a case is its row
            self.cases.options = [
                (f"row {r} · episode {ep} query {q} · true {true}, predicted {pred} · margin {margin:.3f}",
                 (int(ep), int(q)))
                for r, ep, q, true, pred, margin in zip(
                    head["row"], head["episode"], head["query_index"], head["true_class"], head["pred_class"],
                    head["margin"].to_numpy(dtype=float), strict=True)]
            r = self.table.iloc[self.group.value]
            self.state.focus = {str(r["column"]): str(r["value"])}
            return
        self.cases.options = [
            (f"episode {ep} query {q} · {sid} · true {true}, predicted {pred} · margin {margin:.3f}", (int(ep), int(q)))
            for ep, q, sid, true, pred, margin in zip(
                head["episode"].to_numpy(dtype=int), head["query_index"].to_numpy(dtype=int), head["sample_id"],
                head["true_class"], head["pred_class"], head["margin"].to_numpy(dtype=float), strict=True)]
        r = self.table.iloc[self.group.value]
        self.state.focus = {col: str(r[col]) for col in self.by_used}

    def open_selected(self) -> None:
        if not self.cases.value:
            raise ValueError("choose a case first")
        if self.audit is not None and (self.failures is None or self.failures.audit is not self.audit):
            raise ValueError("the maps of an audit's cases open in the failure explorer: open the audit folder there")
        if self.failures is not None:
            self.failures.open_case(*self.cases.value)
        else:
            self.state.open_case(*self.cases.value)
