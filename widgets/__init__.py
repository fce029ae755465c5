"""Interactive views of the fsl-xai workbench (ipywidgets + plotly FigureWidget), all thin shells over
one :class:`WorkbenchState`.

Typical use in a notebook::

    from widgets import WorkbenchState, Workbench
    state = WorkbenchState().load("pbc-blood-64")
    Workbench(state)
"""

from fsl_xai.deferred import defer

# before anything imports plotly's FigureWidget: jsonschema would compile rfc3987_syntax's grammars
# (about 2 s of every kernel start) for a format checker the workbench never calls
defer("rfc3987_syntax", functions=("is_valid_syntax",))

from .state import EpisodeResult, WorkbenchState  # noqa: E402

__all__ = ["DatasetModelPicker", "DicomImportView", "DistanceView", "EpisodeResult", "ExportView", "FailureExplorer",
           "HeatmapViewer", "QueryGallery", "SubgroupDashboard", "SupportSetView", "Workbench", "WorkbenchState",
           "export_state"]


def __getattr__(name: str):
    # views import ipywidgets and plotly; load them only when asked so the state stays light
    import importlib

    modules = {"DatasetModelPicker": "dataset_model", "DistanceView": "distances", "ExportView": "export",
               "export_state": "export", "FailureExplorer": "failures", "HeatmapViewer": "heatmap",
               "QueryGallery": "queries", "SubgroupDashboard": "subgroups", "SupportSetView": "support_set",
               "Workbench": "workbench", "DicomImportView": "dicom_import"}
    if name in modules:
        return getattr(importlib.import_module(f".{modules[name]}", __name__), name)
    raise AttributeError(name)
