"""``fsl-xai report``: a standalone, offline HTML audit report (a model card) from an audit folder.

``write_report(folder, out)`` reads a folder written by ``fsl-xai audit`` (format
``fsl-xai-audit/1``), checks it, and writes one HTML file with the model and data provenance,
accuracy with its interval, per-class accuracy, subgroup error rates and gaps, explanation sanity
checks, a gallery of the most confident failures with their maps, and the commands that reproduce
it. Every rate shows n and its 95% interval; the page loads nothing from any machine.

Modules: ``folder`` (reading and checking the folder), ``sections`` and ``gallery`` (the parts of
the page), ``markup`` and ``charts`` (HTML and SVG helpers), ``render`` (the document).
"""

from .folder import AUDIT_FORMAT, AuditFolderError, LoadedAudit, load_audit, read_manifest
from .gallery import DEFAULT_GALLERY, QueryImages, confident_failures, load_query_images
from .render import render_report, write_report

__all__ = [
    "AUDIT_FORMAT", "DEFAULT_GALLERY", "LoadedAudit", "AuditFolderError", "QueryImages", "confident_failures",
    "load_audit", "load_query_images", "read_manifest", "render_report", "write_report",
]
