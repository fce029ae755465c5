"""The workbench: every view composed around one WorkbenchState."""

from __future__ import annotations

import html

import ipywidgets as w

from .dataset_model import DatasetModelPicker
from .distances import DistanceView
from .export import ExportView
from .failures import FailureExplorer
from .heatmap import HeatmapViewer
from .queries import QueryGallery
from .state import WorkbenchState
from .subgroups import SubgroupDashboard
from .support_set import SupportSetView


class Workbench(w.VBox):
    """All views on one state: dataset and model, support set, queries, heatmaps, distances, and tabs
    for the failure explorer, subgroup dashboard, DICOM import and export.

    Args:
        state: a loaded WorkbenchState (``WorkbenchState().load("pbc-blood-64")``).
        episodes: episodes for the failure explorer and subgroup dashboard (600 by default).
        methods: attribution methods shown side by side at start.
        badges: compute quality badges next to each map.
        export_folder: where Export writes.
    """

    def __init__(self, state: WorkbenchState, episodes: int = 600, methods: list[str] | None = None,
                 badges: bool = True, export_folder: str = "artifacts/workbench_export", dicom: bool = True, **kwargs):
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
        tabs = [self.failures, self.subgroups]
        titles = ["failure explorer", "subgroups"]
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
        self.status = w.HTML()
        state.observe(self._on_status, names=["status", "error"])
        half = dict(width="50%", padding="0 6px")
        self.children = [
            self.status,
            self.picker,
            w.HBox([w.VBox([self.support], layout=w.Layout(**half)),
                    w.VBox([self.queries], layout=w.Layout(**half))]),
            w.HBox([w.VBox([self.heatmaps], layout=w.Layout(**half)),
                    w.VBox([self.distances], layout=w.Layout(**half))]),
            self.tabs,
        ]
        self.add_class("fsl-workbench")
        self._on_status()

    def _on_status(self, change=None) -> None:
        """The status line: what is going on, in red when the last step failed or was cancelled
        (the view that failed shows the message and how to fix it)."""
        text = self.state.status
        bad = text.startswith(("failed", "training cancelled"))
        colour = "#a00" if bad else "#555"
        self.status.value = f"<span style='color:{colour}'>{'⚠ ' if bad else ''}{html.escape(text)}</span>"
