"""The workbench: every view composed around one WorkbenchState, laid out as an app.

The layout (styles in widgets/layout.py): a header with the status, the episode's classes in their
colours and the teaching-mode switch; below it two columns, on the left the query gallery and the
support set (scrolling on their own), on the right the decision: the selected query's prediction,
its heatmaps with their titles and badges, and its distances to the prototypes, visible together on a
1366x768 screen; below, tabs for dataset and model, the failure explorer, subgroups, DICOM import and
export."""

from __future__ import annotations

import html

import ipywidgets as w

from ._base import episode_colors
from .dataset_model import DatasetModelPicker
from .distances import DistanceView
from .export import ExportView
from .failures import FailureExplorer
from .heatmap import HeatmapViewer
from .layout import class_legend_html, style_widget
from .queries import QueryGallery
from .state import WorkbenchState
from .subgroups import SubgroupDashboard
from .support_set import SupportSetView

TEACHING_CLASS = "fsl-teaching"


def _box(children: list, css_class: str, vertical: bool = True) -> w.Box:
    box = (w.VBox if vertical else w.Box)(children)
    box.add_class(css_class)
    return box


class Workbench(w.VBox):
    """All views on one state: dataset and model, support set, queries, heatmaps, distances, and tabs
    for the failure explorer, subgroup dashboard, DICOM import and export.

    Args:
        state: a loaded WorkbenchState (``WorkbenchState().load("pbc-blood-64")``).
        episodes: episodes for the failure explorer and subgroup dashboard (600 by default).
        methods: attribution methods shown side by side at start.
        badges: compute quality badges next to each map.
        export_folder: where Export writes.
        dicom: offer the DICOM import tab (when pydicom is installed).
        teaching: start in teaching mode (larger type and controls, for a projector); the
            "teaching mode" switch in the header turns it on and off.
    """

    def __init__(self, state: WorkbenchState, episodes: int = 600, methods: list[str] | None = None,
                 badges: bool = True, export_folder: str = "artifacts/workbench_export", dicom: bool = True,
                 teaching: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.state = state
        if methods:
            state.methods = list(methods)
        self.picker = DatasetModelPicker(state)
        self.support = SupportSetView(state)
        self.queries = QueryGallery(state)
        self.heatmaps = HeatmapViewer(state, badges=badges)
        self.distances = DistanceView(state)
        self.failures = FailureExplorer(state, episodes=episodes)
        self.subgroups = SubgroupDashboard(state, failures=self.failures, episodes=episodes)
        self.export = ExportView(state, folder=export_folder)
        self.dicom = None
        tabs: list[w.Widget] = [self.picker, self.failures, self.subgroups]
        titles = ["dataset and model", "failure explorer", "subgroups"]
        if dicom:
            import importlib.util

            if importlib.util.find_spec("pydicom") is not None:  # the dicom extra is installed
                from .dicom_import import DicomImportView

                self.dicom = DicomImportView(state)
                tabs.append(self.dicom)
                titles.append("DICOM import")
        tabs.append(self.export)
        titles.append("export")
        self.tabs = w.Tab(children=tabs)
        self.tabs.titles = titles
        self.tabs.add_class("fsl-app-tools")
        self.status = w.HTML()
        self.status.add_class("fsl-status")
        # the domain guard and the validation score: "checking…" / "computing…" while they are computed
        # after the first paint, then how they stand (updated in place)
        self.trust_status = w.HTML()
        self.trust_status.add_class("fsl-trust-status")
        self.legend = w.HTML()
        self.legend.add_class("fsl-class-legend-box")
        self.teaching = w.ToggleButton(value=teaching, description="teaching mode", icon="television",
                                       tooltip="larger type and controls, for a projector")
        self.teaching.add_class("fsl-teaching-toggle")
        self.teaching.observe(self._on_teaching, names="value")
        state.observe(self._on_status, names=["status", "error"])
        state.observe(self._on_episode, names=["episode"])
        state.observe(self._on_trust, names=["result", "model"])
        header = _box([w.HTML("<b>fsl-xai workbench</b>"), self.status, self.trust_status, self.legend,
                       self.teaching],
                      "fsl-app-header", vertical=False)
        left = _box([self.queries, self.support], "fsl-app-left")
        decision = _box([self.heatmaps, self.distances], "fsl-app-decision", vertical=False)
        right = _box([decision], "fsl-app-right")
        grid = _box([left, right], "fsl-app-grid", vertical=False)
        self.children = [style_widget(), header, grid, self.tabs]
        self.add_class("fsl-workbench")
        self._on_status()
        self._on_episode()
        self._on_trust()
        self._on_teaching()

    def _on_status(self, change=None) -> None:
        """The status line: what is going on, in red when the last step failed or was cancelled
        (the view that failed shows the message and how to fix it)."""
        text = self.state.status
        bad = text.startswith(("failed", "training cancelled"))
        colour = "#a00" if bad else "#555"
        self.status.value = f"<span style='color:{colour}'>{'⚠ ' if bad else ''}{html.escape(text)}</span>"

    def _on_trust(self, change=None) -> None:
        """The header's trust line: the guard and the validation score, or that they are still being
        computed (each new result re-reads them, so the line changes in place when they are ready)."""
        text = self.state.trust.status_html() if self.state.model is not None else ""
        if self.trust_status.value != text:
            self.trust_status.value = text

    def _on_episode(self, change=None) -> None:
        """The legend: each class of the episode in its colour (the colour it has in every view)."""
        ep = self.state.episode
        text = class_legend_html(list(ep.classes), episode_colors(self.state)) if ep is not None else ""
        if self.legend.value != text:
            self.legend.value = text

    def _on_teaching(self, change=None) -> None:
        if self.teaching.value:
            self.add_class(TEACHING_CLASS)
        else:
            self.remove_class(TEACHING_CLASS)
