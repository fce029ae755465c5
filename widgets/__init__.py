"""Interactive views of the fsl-xai workbench (ipywidgets + plotly FigureWidget), all thin shells over
one :class:`WorkbenchState`.

Typical use in a notebook::

    from widgets import WorkbenchState, Workbench
    state = WorkbenchState().load("pbc-blood-64")
    Workbench(state)

Every name is imported on first use (PEP 562): importing one light module of the package, such as
the trust study's rater app (``widgets.rater_app``), loads neither the state (torch, pandas) nor the
views (plotly).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fsl_xai.deferred import defer

# before anything imports plotly's FigureWidget: jsonschema would compile rfc3987_syntax's grammars
# (about 2 s of every kernel start) for a format checker the workbench never calls
defer("rfc3987_syntax", functions=("is_valid_syntax",))

if TYPE_CHECKING:
    from .state import EpisodeResult as EpisodeResult
    from .state import WorkbenchState as WorkbenchState

_MODULES = {"EpisodeResult": "state", "WorkbenchState": "state",
            "DatasetModelPicker": "dataset_model", "DistanceView": "distances", "ExportView": "export",
            "export_state": "export", "FailureExplorer": "failures", "HeatmapViewer": "heatmap",
            "QueryGallery": "queries", "SubgroupDashboard": "subgroups", "SupportSetView": "support_set",
            "Workbench": "workbench", "DicomImportView": "dicom_import", "FigureWidget": "_figurewidget"}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        value = getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
