"""Subgroups of a per-query table: binning of columns, the groups of one or more columns, and the
checks and episode codes that every subgroup metric needs.

Grouping uses pandas ``groupby`` on the requested columns (their intersection when several are
given); continuous columns are binned first (:func:`bin_column`) and missing values form their own
group ``"missing"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError

#: inner cut points of the default age bands: <30, 30-44, 45-59, 60-74, 75+
DEFAULT_AGE_BANDS: tuple[float, ...] = (30, 45, 60, 75)
#: the label of rows whose grouping value is missing
MISSING = "missing"
#: numeric columns with more distinct values than this are binned (quartiles) unless told otherwise
MAX_LEVELS = 12
#: the label (and the value of every ``by`` column) of the row over all queries
ALL = "all"

#: per column, inner cut points or a number of quantile bins
Bins = Mapping[str, Sequence[float] | int]


def band_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bands cut at ``edges``: (30, 45) -> ["<30", "30-44", "45+"] (integer style
    when the edges are whole numbers, ``[a, b)`` otherwise)."""
    edges = list(edges)
    whole = all(float(e).is_integer() for e in edges)

    def fmt(v: float) -> str:
        return str(int(v)) if whole else f"{v:g}"

    labels = [f"<{fmt(edges[0])}"]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        labels.append(f"{fmt(lo)}-{fmt(hi - 1)}" if whole else f"[{fmt(lo)}, {fmt(hi)})")
    labels.append(f"{fmt(edges[-1])}+")
    return labels


def bin_column(values: pd.Series, edges: Sequence[float] | int | None = None, name: str | None = None) -> pd.Series:
    """Turn a column into ordered string groups; missing values become ``"missing"``.

    Args:
        values: the column.
        edges: inner cut points (bands ``[e_i, e_{i+1})``, plus below the first and from the last),
            an int q for q quantile bins, or None: age-like columns (named ``age...``) get
            :data:`DEFAULT_AGE_BANDS`, other numeric columns with more than :data:`MAX_LEVELS`
            distinct values get quartiles, everything else is used as is (as strings).
        name: the column name (default ``values.name``).

    Returns:
        A pandas Categorical series (ordered; ``"missing"`` last) of strings.
    """
    name = name if name is not None else str(values.name)
    s = pd.Series(values).reset_index(drop=True)
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        # blank strings are missing too (CSV exports write them for None)
        s = s.where(~s.map(lambda v: isinstance(v, str) and v.strip() == ""), None)
    missing = s.isna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if edges is None and numeric:
        if name.lower().startswith("age"):
            edges = DEFAULT_AGE_BANDS
        elif s.nunique(dropna=True) > MAX_LEVELS:
            edges = 4
    if edges is not None:
        if not numeric:
            raise DataError(f"column {name!r} is not numeric, so it cannot be binned with {edges!r}; "
                            "pass bins only for numeric columns")
        x = s.to_numpy(dtype=np.float64)
        if isinstance(edges, int | np.integer):
            if edges < 2:
                raise DataError(f"quantile bins for {name!r} need at least 2 bins, got {edges}")
            qs = np.nanquantile(x[~missing], np.linspace(0, 1, int(edges) + 1)[1:-1]) if (~missing).any() else []
            cuts = sorted({float(q) for q in qs})
        else:
            cuts = [float(e) for e in edges]
            if any(b <= a for a, b in zip(cuts[:-1], cuts[1:], strict=True)):
                raise DataError(f"bin edges for {name!r} must increase strictly, got {list(edges)}")
        if not cuts:
            labels = ["all values"]
            codes = np.zeros(len(x), dtype=np.int64)
        else:
            labels = band_labels(cuts)
            codes = np.searchsorted(np.asarray(cuts), x, side="right")
        out = np.array(labels, dtype=object)[np.clip(codes, 0, len(labels) - 1)]
        categories = labels
    else:
        out = s.astype(str).to_numpy(dtype=object)
        present = s[~missing]
        try:
            order = sorted(present.unique().tolist())
        except TypeError:
            order = sorted(present.astype(str).unique().tolist())
        categories = list(dict.fromkeys(str(v) for v in order))
    out[missing] = MISSING
    if missing.any() and MISSING not in categories:
        categories = [*categories, MISSING]
    return pd.Series(pd.Categorical(out, categories=categories, ordered=True), name=name)


def as_columns(by: str | Sequence[str]) -> list[str]:
    """``by`` as a non-empty list of column names."""
    if isinstance(by, str):
        return [by]
    columns = list(by)
    if not columns:
        raise DataError("give at least one column to group by, e.g. by=['sex'] or by=['sex', 'age']")
    return columns


def check_predictions(predictions: pd.DataFrame) -> None:
    """Raise a DataError unless ``predictions`` is a non-empty per-query table with ``correct``."""
    if not isinstance(predictions, pd.DataFrame):
        raise DataError(f"predictions must be a pandas DataFrame (the per-query table), got "
                        f"{type(predictions).__name__}")
    if "correct" not in predictions.columns:
        hint = (" (this looks like a subgroup table: pass the SubgroupReport from subgroup_report(...) instead)"
                if {"group", "error_rate"} <= set(predictions.columns) else "")
        raise DataError("the predictions table has no 'correct' column; pass the per-query table of "
                        f"fsl_xai.evaluation.evaluate(...).predictions{hint}")
    if len(predictions) == 0:
        raise DataError("the predictions table is empty; evaluate at least one episode first")


def episode_codes(predictions: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """Integer episode codes 0..E-1 per row and whether the table has an episode structure (without
    an ``episode`` column every row is its own cluster)."""
    if "episode" in predictions.columns:
        codes, _ = pd.factorize(predictions["episode"], sort=True)
        return codes.astype(np.int64), True
    return np.arange(len(predictions), dtype=np.int64), False


@dataclass(frozen=True, eq=False)
class Group:
    """One subgroup: its value per ``by`` column, its label and its rows.

    Attributes:
        values: ``by`` column -> the group's value (a string; ``"all"`` for the overall row).
        label: e.g. ``"sex=female, age=45-59"`` (``"all"`` for the overall row).
        mask: (n_rows,) bool, the group's rows.
    """

    values: dict[str, str]
    label: str
    mask: np.ndarray


def subgroups(predictions: pd.DataFrame, by: Sequence[str], bins: Bins | None = None,
              include_overall: bool = False) -> list[Group]:
    """The groups of the rows by the (binned) ``by`` columns, in sorted category order (bands in
    order, ``"missing"`` last), optionally after a first overall group ``"all"``."""
    bins = dict(bins or {})
    unknown = [c for c in list(by) + list(bins) if c not in predictions.columns]
    if unknown:
        raise DataError(f"no column(s) {unknown} in the predictions table; its columns are "
                        f"{list(predictions.columns)}")
    frame = pd.DataFrame({c: bin_column(predictions[c], bins.get(c), c) for c in by})
    out = []
    if include_overall:
        out.append(Group({c: ALL for c in by}, ALL, np.ones(len(predictions), dtype=bool)))
    gid = frame.groupby(list(by), observed=True, sort=True).ngroup().to_numpy()
    for g in range(int(gid.max()) + 1 if len(gid) else 0):
        mask = gid == g
        first = int(np.flatnonzero(mask)[0])
        key = [str(frame[c].iloc[first]) for c in by]
        label = ", ".join(f"{c}={v}" for c, v in zip(by, key, strict=True))
        out.append(Group(dict(zip(by, key, strict=True)), label, mask))
    return out


__all__ = ["ALL", "Bins", "DEFAULT_AGE_BANDS", "Group", "MAX_LEVELS", "MISSING", "as_columns", "band_labels",
           "bin_column", "check_predictions", "episode_codes", "subgroups"]
