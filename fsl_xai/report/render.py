"""The whole report: one standalone HTML file that loads nothing from anywhere.

Plain HTML with an inline style sheet, inline SVG charts and images as ``data:`` URIs; no script,
no font, no link to another resource. Written atomically with :func:`fsl_xai.files.atomic_write`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import __version__
from ..errors import DataError
from ..files import atomic_write
from . import sections
from .folder import LoadedAudit, load_audit
from .gallery import DEFAULT_GALLERY, QueryImages, gallery_section, load_query_images
from .markup import STYLE, esc

#: the page forbids every request but inline style and data: images (a last guard against a stray URL)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _problems_banner(audit: LoadedAudit, images: QueryImages) -> str:
    items = [f"<li>{esc(where)}: {esc(message)}</li>" for where, message in audit.problems]
    if images.problem:
        items.append(f"<li>gallery: {esc(images.problem)}</li>")
    if not items:
        return ""
    return ('<div class="banner" role="alert"><b>This report is partial.</b> Some parts of the audit could not be '
            f"shown:<ul>{''.join(items)}</ul></div>")


def render_report(audit: LoadedAudit, images: QueryImages | None = None, gallery: int = DEFAULT_GALLERY,
                  title: str | None = None) -> str:
    """The report of an audit folder as one HTML document (the same folder gives the same bytes).

    Args:
        audit: the folder, from :func:`load_audit`.
        images: the audited images (default: loaded as the manifest says, see
            :func:`~fsl_xai.report.gallery.load_query_images`).
        gallery: how many of the most confident failures to show.
        title: the page title (default: "Audit: <model> on <data set>").
    """
    if images is None:
        images = load_query_images(audit.manifest)
    info = audit.manifest["checkpoint"].get("info") or {}
    data = audit.manifest["data"]
    title = title or f"Audit: {info.get('model', 'model')} on {data.get('name', 'data')} ({data.get('split', '')})"
    parts = [sections.overview(audit), sections.provenance(audit), sections.accuracy(audit),
             sections.subgroups(audit), sections.quality(audit), gallery_section(audit, images, gallery),
             sections.reproduce(audit)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">A model card for a few-shot model, made from the audit folder "
            f"{esc(audit.path.name)} (audit of {esc(audit.manifest.get('created', 'unknown date'))}). Every rate "
            "shows its 95% interval, n and episodes.</p>"
            + _problems_banner(audit, images) + "".join(parts)
            + f"<footer>Made by fsl-xai {esc(__version__)} (fsl-xai report). This file is self-contained: it "
              "loads nothing from any machine.</footer></main></body></html>\n")


def write_report(folder: str | os.PathLike[str], out: str | os.PathLike[str],
                 data_file: str | os.PathLike[str] | None = None, gallery: int = DEFAULT_GALLERY,
                 title: str | None = None) -> list[tuple[str, str]]:
    """Read an audit folder and write its report to ``out`` atomically.

    Args:
        folder: the audit folder (``fsl-xai audit --out``).
        out: the HTML file to write.
        data_file: the ``.npz`` file the audit read, when it used one (for the query images).
        gallery: how many of the most confident failures to show.
        title: the page title.

    Returns:
        (section, message) for every part the report shows as partial (empty when complete).

    Raises:
        AuditFolderError: the folder is missing, foreign, unfinished or damaged.
        DataError: ``out`` is a folder.
    """
    if Path(out).is_dir():
        raise DataError(f"--out {out} is a folder; give the HTML file to write, e.g. {Path(out) / 'report.html'}")
    audit = load_audit(folder)
    images = load_query_images(audit.manifest, data_file)
    document = render_report(audit, images, gallery, title)
    with atomic_write(Path(out)) as handle:
        handle.write(document.encode("utf-8"))
    return [*audit.problems, *([("gallery", images.problem)] if images.problem else [])]


__all__ = ["CSP", "render_report", "write_report"]
