"""An audit folder (``fsl-xai audit --out DIR``, format ``fsl-xai-audit/1``) as the failure explorer and
the subgroup dashboard show it: read with :func:`fsl_xai.report.load_audit` (the one reader of the
format, which checks it), turned into the views' column names, and never recomputed: no episode is
run, the accuracy interval comes from ``accuracy.json`` and the subgroup rates and intervals from
``subgroups.parquet``; maps come from the audit's float16 shards.

The audit's tables hold no sample ids or file names, so the views show queries by row, episode and
query position only.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable

import ipywidgets as w
import numpy as np
import pandas as pd

from fsl_xai.intervals import Interval
from fsl_xai.report import LoadedAudit, load_audit

__all__ = ["AuditOpener", "LoadedAudit", "accuracy_of", "audit_predictions", "audit_subgroups", "group_rows",
           "open_audit", "provenance_html", "query_image_of", "subgroup_note"]


def open_audit(path: str | os.PathLike[str]) -> LoadedAudit:
    """Read and check an audit folder (a foreign, unfinished or damaged one raises an
    ``AuditFolderError`` saying what is wrong and how to fix it)."""
    text = str(path).strip()
    if not text:
        raise ValueError("type the path of an audit folder (the folder `fsl-xai audit --out` wrote) first")
    return load_audit(os.path.expanduser(text))


def provenance_html(audit: LoadedAudit) -> str:
    """One line saying what the audit is of: data, checkpoint file, protocol, episodes and n."""
    m = audit.manifest
    data, ckpt, proto = m["data"], m["checkpoint"], m["protocol"]
    acc = audit.accuracy["accuracy"]
    sha = str(ckpt.get("sha256", ""))[:12]
    text = (f"audit folder (read, not recomputed): data {data.get('name')} / {data.get('split')} "
            f"({data.get('n_images')} images) · checkpoint {ckpt.get('file')}{f' (sha256 {sha}…)' if sha else ''} · "
            f"{proto.get('n_way')}-way {proto.get('n_shot')}-shot, {proto.get('n_query')} queries per class, "
            f"seed {proto.get('seed')} · {acc['n_episodes']} episodes, n={acc['n']} queries"
            f"{' · created ' + str(m['created']) if m.get('created') else ''}")
    return f"<div class='fsl-audit-provenance' style='color:#333;font-size:90%'>📁 {html.escape(text)}</div>"


def audit_predictions(audit: LoadedAudit) -> pd.DataFrame:
    """``queries.parquet`` with the views' column names (``true_class``, ``pred_class``,
    ``query_index``), in row order; the ``--by`` columns and the guard's columns kept."""
    table = audit.queries.rename(columns={"true": "true_class", "pred": "pred_class", "query": "query_index"})
    table["true_class"] = table["true_class"].astype(str)
    table["pred_class"] = table["pred_class"].astype(str)
    table["correct"] = table["correct"].astype(bool)
    return table


def accuracy_of(audit: LoadedAudit) -> tuple[Interval, int, int | None]:
    """The audit's pooled accuracy from ``accuracy.json``: (interval, episodes, flagged queries or None)."""
    a = audit.accuracy["accuracy"]
    nan = float("nan")

    def num(key: str) -> float:
        return nan if a.get(key) is None else float(a[key])

    interval = Interval(num("value"), num("low"), num("high"), str(a.get("method", "")), int(a["n"]))
    flagged = a.get("n_flagged")
    return interval, int(a["n_episodes"]), None if flagged is None else int(flagged)


def audit_subgroups(audit: LoadedAudit, columns: list[str]) -> pd.DataFrame:
    """The rows of ``subgroups.parquet`` for ``columns``, with the dashboard's column names
    (``error_ci_low``/``error_ci_high``); ``group`` reads ``column=value`` when several columns are shown."""
    if audit.subgroups is None:
        raise ValueError(subgroup_note(audit))
    table = audit.subgroups[audit.subgroups["column"].astype(str).isin(columns)].reset_index(drop=True)
    table = table.rename(columns={"low": "error_ci_low", "high": "error_ci_high"})
    table["value"] = table["group"].astype(str)
    if len(columns) > 1:
        table["group"] = table["column"].astype(str) + "=" + table["value"]
    for name, default in (("too_small", False), ("note", ""), ("ci_method", "")):
        if name not in table.columns:
            table[name] = default
    return table


def subgroup_note(audit: LoadedAudit) -> str:
    """Why an audit has no subgroup table to show."""
    for section, message in audit.problems:
        if section == "subgroups":
            return message
    return ("this audit has no subgroup table (it ran without --by); rerun it with --by and the metadata "
            f"columns to compare, e.g. --by site: {audit.rerun_hint}")


def group_rows(predictions: pd.DataFrame, column: str, value: str) -> np.ndarray:
    """Rows of the query table in the group ``value`` of ``column``, grouped as the audit grouped them
    (:func:`fsl_xai.metrics.bin_column`: age bands, ``"missing"``)."""
    from fsl_xai.metrics import bin_column

    if column not in predictions.columns:
        raise ValueError(f"the audit's query table has no column {column!r}; it has {list(predictions.columns)}")
    return (bin_column(predictions[column], None, column).astype(str) == str(value)).to_numpy()


def query_image_of(audit: LoadedAudit, images, image_index: int, shape: tuple[int, int]) -> np.ndarray | None:
    """The audited query image when ``images`` (the workbench's loaded set) is the audited split
    (same name, size and classes) at the map's size; None otherwise."""
    data = audit.manifest["data"]
    if (images is None or images.name != data.get("name") or len(images) != data.get("n_images")
            or list(images.class_names) != list(data.get("classes", []))
            or tuple(images.images.shape[2:]) != tuple(shape) or not 0 <= image_index < len(images)):
        return None
    return np.asarray(images.images[image_index])


class AuditOpener(w.HBox):
    """A path field and an "open audit folder" button; ``on_open(path)`` runs on click or Enter."""

    def __init__(self, on_open: Callable[[str], None], **kwargs):
        super().__init__(**kwargs)
        self.path = w.Text(placeholder="audit folder (fsl-xai audit --out DIR)", description="audit",
                           layout=w.Layout(width="420px"), style={"description_width": "40px"})
        self.button = w.Button(description="open audit folder", icon="folder-open",
                               tooltip="show an audit's tables here and in the subgroup dashboard, without "
                                       "running any episode")
        self.button.on_click(lambda _: on_open(self.path.value))
        self.path.continuous_update = False
        self.children = [self.path, self.button]
        self.add_class("fsl-audit-opener")
