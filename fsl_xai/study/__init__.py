"""Clinician trust studies: study files, a crash-safe answer store, rater sessions and analysis.

Names are imported lazily so that the rater app's store starts without pandas, scipy or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "agreement_by_condition": "analysis", "cohen_kappa": "analysis", "fleiss_kappa": "analysis",
    "reliance_summary": "analysis", "responses_table": "analysis",
    "StudyDesign": "design", "StudyDesignError": "design", "load_design": "design", "parse_design": "design",
    "read_study_file": "schema",
    "AccessDenied": "store", "AlreadyAnswered": "store", "ResponseStore": "store", "StudyStoreError": "store",
    "StudyExistsError": "freeze", "ServeError": "serve",
    "RaterSession": "session",
    "MRMCResult": "mrmc", "mrmc_analysis": "mrmc", "readings_from_export": "mrmc", "to_imrmc": "export",
    "revision_summary": "revisions", "revisions_from_export": "revisions", "sequential_readings": "revisions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
