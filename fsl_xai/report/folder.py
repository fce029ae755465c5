"""Reading an audit folder (format ``fsl-xai-audit/1``, written by ``fsl-xai audit``) for the report.

The folder is checked before anything is rendered: a missing or foreign folder, a format this
version does not read, an unfinished audit or a core table that is missing or malformed is an
:class:`AuditFolderError` naming the file and what to do. Tables that only some sections need
(subgroups, quality, maps) are loaded when the manifest says they exist; when one is missing the
folder records a problem and the report shows that section as partial.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..audit import FORMAT as AUDIT_FORMAT
from ..audit import QUALITY_COLUMNS
from ..errors import DataError

MANIFEST = "manifest.json"
QUERIES = "queries.parquet"
ACCURACY = "accuracy.json"
SUBGROUPS = "subgroups.parquet"
QUALITY = "quality.parquet"
MAPS = "maps"

QUERY_COLUMNS = ("row", "episode", "query", "image_index", "true", "pred", "correct", "margin", "confidence")
SUBGROUP_COLUMNS = ("column", "group", "n", "n_episodes", "error_rate", "low", "high", "gap")
QUALITY_STATUSES = ("passed", "failed", "undefined")
MANIFEST_KEYS = ("format", "complete", "reproduce", "report_command", "checkpoint", "data", "protocol", "methods")
ESTIMATE_KEYS = ("value", "low", "high", "n", "n_episodes")


class AuditFolderError(DataError):
    """An audit folder is missing, foreign, unfinished or damaged (the message names the file)."""


@dataclass(frozen=True)
class LoadedAudit:
    """An audit folder as the report reads it (its tables in memory, its maps read on demand).

    Attributes:
        path: the folder.
        manifest: ``manifest.json`` as a dict.
        queries: ``queries.parquet``, one row per query, in ``row`` order.
        accuracy: ``accuracy.json`` as a dict (``accuracy`` and ``per_class``).
        subgroups: ``subgroups.parquet``, or None when the audit had no ``--by`` or it is missing.
        quality: ``quality.parquet``, or None when the audit had no ``--quality`` or it is missing.
        problems: (section, message) for each part that is missing or unreadable; the report shows
            those sections as partial.
    """

    path: Path
    manifest: dict
    queries: pd.DataFrame
    accuracy: dict
    subgroups: pd.DataFrame | None = None
    quality: pd.DataFrame | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        """The attribution methods of the audit, in the manifest's order."""
        return [str(m) for m in self.manifest.get("methods") or []]

    @property
    def rerun_hint(self) -> str:
        """How to rebuild the folder: the manifest's command, when it has one."""
        return rerun_hint(self.manifest)

    def map_files(self, method: str) -> list[Path]:
        """The map chunks of one method, in chunk order (empty when there are none)."""
        folder = self.path / MAPS / method
        return sorted(folder.glob("chunk-*.npz")) if folder.is_dir() else []

    def maps_for_rows(self, method: str, rows: Sequence[int]) -> dict[int, np.ndarray]:
        """The float32 maps (H, W) of some query rows of one method, read chunk by chunk.

        Only the chunks that hold a wanted row have their maps read, so memory stays at one chunk.
        Rows with no stored map are absent from the result.

        Raises:
            AuditFolderError: a chunk that is not a readable npz with ``rows`` and ``maps``.
        """
        wanted = {int(r) for r in rows}
        found: dict[int, np.ndarray] = {}
        for chunk in self.map_files(method):
            if len(found) == len(wanted):
                break
            for row, image in _chunk_maps(chunk, wanted - found.keys(), self.rerun_hint):
                found[row] = image
        return found


def _chunk_maps(path: Path, wanted: set[int], hint: str) -> Iterator[tuple[int, np.ndarray]]:
    try:  # the file is opened here so that it is closed whatever np.load makes of it
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            names = list(npz.files)
            rows = np.asarray(npz["rows"]).astype(np.int64).reshape(-1) if "rows" in names else None
            hits = np.flatnonzero(np.isin(rows, list(wanted))) if rows is not None else np.zeros(0, np.int64)
            maps = npz["maps"] if len(hits) and "maps" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise AuditFolderError(f"{path} cannot be read ({exc}); the map chunk is damaged: {hint}") from exc
    if rows is None or "maps" not in names:
        raise AuditFolderError(f"{path} has arrays {sorted(names)}, not 'rows' and 'maps': the map chunk is not "
                               f"in the {AUDIT_FORMAT} format; {hint}")
    if maps is None:
        return
    if maps.ndim != 3 or len(maps) != len(rows):
        raise AuditFolderError(f"{path} holds maps of shape {maps.shape} for {len(rows)} rows; expected "
                               f"(n_rows, height, width): {hint}")
    for i in hits:
        yield int(rows[i]), maps[i].astype(np.float32)


def rerun_hint(manifest: dict) -> str:
    """What to tell the user to rebuild a folder: rerun the manifest's command, when it has one."""
    command = str(manifest.get("reproduce") or "").strip()
    return f"rerun the audit ({command})" if command else "rerun the audit that wrote this folder"


def _read_json(path: Path, what: str, hint: str) -> dict:
    if not path.is_file():
        raise AuditFolderError(f"{path} is missing: {what}; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditFolderError(f"{path} is not readable JSON ({exc}); {hint}") from exc
    if not isinstance(data, dict):
        raise AuditFolderError(f"{path} holds a JSON {type(data).__name__}, not an object; {hint}")
    return data


def _read_parquet(path: Path, columns: Sequence[str], hint: str) -> pd.DataFrame:
    if not path.is_file():
        raise AuditFolderError(f"{path} is missing; {hint}")
    try:
        table = pd.read_parquet(path)
    except ImportError as exc:
        raise AuditFolderError(f"reading {path} needs pyarrow, which is not installed: install the audit extra "
                               "(pip install -c constraints.txt 'fsl-xai[audit]')") from exc
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise AuditFolderError(f"{path} is not a readable Parquet table ({type(exc).__name__}: {exc}); "
                               f"{hint}") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AuditFolderError(f"{path} lacks the columns {missing} of the {AUDIT_FORMAT} format (it has "
                               f"{list(table.columns)}); {hint}")
    return table


def read_manifest(folder: str | os.PathLike[str]) -> dict:
    """``manifest.json`` of an audit folder, checked to be a finished ``fsl-xai-audit/1`` audit.

    Raises:
        AuditFolderError: no such folder, no manifest, another format, or an unfinished audit.
    """
    path = Path(folder)
    make = "run `fsl-xai audit --checkpoint C --dataset NAME --episodes E --methods M --out DIR` to make one"
    if not path.is_dir():
        raise AuditFolderError(f"{path} is not a folder: give the folder `fsl-xai audit --out` wrote, or {make}")
    manifest = _read_json(path / MANIFEST, f"{path} is not an audit folder", make)
    fmt = manifest.get("format")
    if fmt != AUDIT_FORMAT:
        raise AuditFolderError(f"{path / MANIFEST} says format {fmt!r}, but this fsl-xai reads {AUDIT_FORMAT!r}: "
                               "rerun the audit with this version of fsl-xai, or make the report with the "
                               "version that wrote the folder")
    hint = rerun_hint(manifest)
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise AuditFolderError(f"{path / MANIFEST} lacks the keys {missing} of the {AUDIT_FORMAT} format; {hint}")
    if manifest.get("complete") is not True:
        raise AuditFolderError(f"{path / MANIFEST} says the audit is not complete (\"complete\": "
                               f"{json.dumps(manifest.get('complete'))}): it was stopped or is still running; "
                               f"{hint.replace('rerun the audit', 'rerun the same command to finish it')}, "
                               "then make the report")
    for key in ("checkpoint", "data", "protocol"):
        if not isinstance(manifest[key], dict):
            raise AuditFolderError(f"{path / MANIFEST}: {key!r} must be an object; {hint}")
    if not isinstance(manifest["methods"], list):
        raise AuditFolderError(f"{path / MANIFEST}: 'methods' must be a list of method names; {hint}")
    return manifest


def _check_estimate(entry: Any, where: str, path: Path, hint: str) -> None:
    if not isinstance(entry, dict) or any(k not in entry for k in ESTIMATE_KEYS):
        raise AuditFolderError(f"{path}: {where} needs the keys {list(ESTIMATE_KEYS)}; {hint}")
    for key in ESTIMATE_KEYS:
        value = entry[key]
        if value is not None and not isinstance(value, int | float):
            raise AuditFolderError(f"{path}: {where}[{key!r}] is {value!r}, not a number; {hint}")


def _read_accuracy(path: Path, n_queries: int, hint: str) -> dict:
    data = _read_json(path, "the accuracy table of the audit", hint)
    _check_estimate(data.get("accuracy"), "'accuracy'", path, hint)
    per_class = data.get("per_class")
    if not isinstance(per_class, list):
        raise AuditFolderError(f"{path}: 'per_class' must be a list of per-class accuracies; {hint}")
    for i, entry in enumerate(per_class):
        _check_estimate(entry, f"'per_class'[{i}]", path, hint)
        if "class" not in entry:
            raise AuditFolderError(f"{path}: 'per_class'[{i}] has no 'class'; {hint}")
    n = data["accuracy"]["n"]
    if n != n_queries:
        raise AuditFolderError(f"{path} counts n = {n} queries but {QUERIES} has {n_queries} rows: the tables "
                               f"come from different runs; {hint}")
    return data


def _check_queries(table: pd.DataFrame, path: Path, hint: str) -> pd.DataFrame:
    table = table.sort_values("row", kind="stable").reset_index(drop=True)
    if not np.array_equal(table["row"].to_numpy(), np.arange(len(table))):
        raise AuditFolderError(f"{path}: column 'row' must number the queries 0..n-1; {hint}")
    if not len(table):
        raise AuditFolderError(f"{path} has no queries; {hint}")
    return table


def load_audit(folder: str | os.PathLike[str]) -> LoadedAudit:
    """Read and check an audit folder.

    Raises:
        AuditFolderError: the folder, its manifest, ``queries.parquet`` or ``accuracy.json`` is
            missing, foreign, unfinished or malformed (the message names the file and the fix).
    """
    path = Path(folder)
    manifest = read_manifest(path)
    hint = rerun_hint(manifest)
    queries = _check_queries(_read_parquet(path / QUERIES, QUERY_COLUMNS, hint), path / QUERIES, hint)
    accuracy = _read_accuracy(path / ACCURACY, len(queries), hint)
    problems: list[tuple[str, str]] = []
    subgroups = quality = None
    if manifest.get("by"):
        try:
            subgroups = _read_parquet(path / SUBGROUPS, SUBGROUP_COLUMNS, hint)
        except AuditFolderError as exc:
            problems.append(("subgroups", str(exc)))
    if manifest.get("quality"):
        try:
            quality = _read_parquet(path / QUALITY, QUALITY_COLUMNS, hint)
        except AuditFolderError as exc:
            problems.append(("quality", str(exc)))
        else:
            odd = sorted(set(quality["status"].astype(str)) - set(QUALITY_STATUSES))
            if odd:
                quality = None
                problems.append(("quality", f"{path / QUALITY} has statuses {odd}, not only "
                                            f"{list(QUALITY_STATUSES)}; {hint}"))
    result = LoadedAudit(path, manifest, queries, accuracy, subgroups, quality, problems)
    for method in result.methods:
        if not result.map_files(method):
            problems.append(("gallery", f"{path / MAPS / method} holds no map chunks, so the gallery has no "
                                        f"{method} maps; {hint}"))
    return result


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


__all__ = [
    "ACCURACY", "AUDIT_FORMAT", "LoadedAudit", "AuditFolderError", "MANIFEST", "MAPS", "QUALITY", "QUALITY_STATUSES",
    "QUERIES", "SUBGROUPS", "finite", "load_audit", "read_manifest", "rerun_hint",
]
