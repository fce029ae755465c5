"""Error rates, per-class sensitivity/specificity and calibration per subgroup, with 95% CIs.

Input is the per-query table of :func:`fsl_xai.evaluation.evaluate` (see docs/CONTRACTS.md):
one row per query with ``episode``, ``correct``, ``true_class``, ``pred_class``, ``dist_<class>``
(minus the logits; NaN for classes not in the episode) and metadata columns (sex, age, site, ...).

Library choice: grouping uses pandas ``groupby`` (:mod:`fsl_xai.metrics.grouping`; not
Fairlearn's ``MetricFrame``, whose bootstrap resamples single queries and so ignores the support
set that an episode's queries share; the tests check our point estimates against ``MetricFrame``).
Intervals come from :mod:`fsl_xai.intervals`: a cluster bootstrap over episodes by default, Wilson
on request or when a table has no episode structure; every row says which interval it carries in
``ci_method``. Every interval works on per-episode (or per-query) sums, so memory stays bounded
for any number of rows.

:func:`subgroup_report` returns a :class:`SubgroupReport`: the table, the settings it was computed
with and the predictions behind it, which :func:`fsl_xai.metrics.disparity` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..intervals import CI_METHODS, MIN_EPISODES, Interval, cluster_bootstrap, proportion_interval
from .grouping import ALL, Bins, Group, as_columns, check_predictions, episode_codes, subgroups

#: confidence bins of the expected calibration error
ECE_BINS = 10

#: called as progress(done, total) while a report is computed
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SubgroupSettings:
    """The arguments a subgroup report was computed with (see :func:`subgroup_report`).

    ``ci`` is the interval asked for; ``ci_used`` the one used (``"wilson"`` when the predictions
    have no ``episode`` column).
    """

    by: tuple[str, ...]
    bins: dict[str, tuple[float, ...] | int]
    min_n: int
    n_boot: int
    seed: int
    ci: str
    ci_used: str
    confidence: float
    per_class: bool
    include_overall: bool

    @classmethod
    def from_arguments(cls, predictions: pd.DataFrame, by: str | Sequence[str], bins: Bins | None = None,
                       min_n: int = 30, n_boot: int = 2000, seed: int = 0, ci: str = "cluster_bootstrap",
                       confidence: float = 0.95, per_class: bool = True,
                       include_overall: bool = True) -> SubgroupSettings:
        """Checked settings for ``predictions`` (which must be a non-empty per-query table)."""
        check_predictions(predictions)
        if ci not in CI_METHODS:
            raise DataError(f"unknown interval {ci!r}; choose one of {list(CI_METHODS)}")
        if min_n < 1:
            raise DataError(f"min_n must be at least 1, got {min_n}")
        frozen_bins = {c: (int(b) if isinstance(b, int | np.integer) else tuple(float(e) for e in b))
                       for c, b in dict(bins or {}).items()}
        ci_used = ci if "episode" in predictions.columns else "wilson"
        return cls(tuple(as_columns(by)), frozen_bins, int(min_n), int(n_boot), int(seed), ci, ci_used,
                   float(confidence), bool(per_class), bool(include_overall))


@dataclass(frozen=True, eq=False)
class SubgroupReport:
    """The subgroup table with everything needed to interpret it and to compute a disparity.

    Attributes:
        table: one row per group (columns as described in :func:`subgroup_report`).
        settings: the grouping and interval settings.
        predictions: the per-query table the report was computed from (shared, not copied).
    """

    table: pd.DataFrame
    settings: SubgroupSettings
    predictions: pd.DataFrame = field(repr=False)

    @property
    def by(self) -> list[str]:
        """The grouping columns."""
        return list(self.settings.by)

    def groups(self) -> list[Group]:
        """The groups of the table's rows, in the table's order (without the overall row)."""
        return subgroups(self.predictions, self.settings.by, self.settings.bins)

    def rows(self, group: str) -> np.ndarray:
        """(n_predictions,) bool: the predictions of the group labelled ``group`` (e.g. ``"sex=F"``;
        ``"all"`` for every row)."""
        if group == ALL:
            return np.ones(len(self.predictions), dtype=bool)
        for g in self.groups():
            if g.label == group:
                return g.mask
        raise DataError(f"no group {group!r} in this report; its groups are {list(self.table['group'])}")

    def __repr__(self) -> str:
        return (f"SubgroupReport(by={list(self.settings.by)}, groups={len(self.table)}, "
                f"ci={self.settings.ci_used!r}, predictions={len(self.predictions)} rows)")


# ---------------------------------------------------------------------------------------- inputs
def class_probabilities(predictions: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Softmax over the non-NaN logits (minus the ``dist_<class>`` columns) of each row.

    Returns:
        (probabilities (n_rows, n_classes) with 0 for classes not in the row's episode, class names).
    """
    cols = [c for c in predictions.columns if str(c).startswith("dist_")]
    if not cols:
        raise DataError("the predictions table has no dist_<class> columns, so calibration cannot be computed")
    logits = -predictions[cols].to_numpy(dtype=np.float64)
    present = np.isfinite(logits)
    if not present.any(axis=1).all():
        raise DataError("some rows have no finite dist_<class> value; every query needs its episode's distances")
    shifted = np.where(present, logits - np.nanmax(np.where(present, logits, -np.inf), axis=1, keepdims=True), -np.inf)
    w = np.exp(shifted)
    return w / w.sum(axis=1, keepdims=True), [c[len("dist_"):] for c in cols]


def _confidence(predictions: pd.DataFrame) -> np.ndarray | None:
    """The predicted class's probability per row, or None without distance columns."""
    if not any(str(c).startswith("dist_") for c in predictions.columns):
        return None
    probs, names = class_probabilities(predictions)
    if "pred_class" in predictions.columns:
        pos = {n: i for i, n in enumerate(names)}
        idx = predictions["pred_class"].astype(str).map(pos)
        if idx.notna().all():
            return probs[np.arange(len(probs)), idx.to_numpy(dtype=np.int64)]
    return probs.max(axis=1)


def _episode_classes(predictions: pd.DataFrame, codes: np.ndarray, true: np.ndarray, cls: str) -> np.ndarray:
    """Rows whose episode includes class ``cls`` (from the dist column, else from true classes)."""
    col = f"dist_{cls}"
    if col in predictions.columns:
        return predictions[col].notna().to_numpy()
    if "episode" in predictions.columns:
        has = np.bincount(codes, weights=(true == cls).astype(np.float64)) > 0
        return has[codes]
    return np.ones(len(predictions), dtype=bool)


# ---------------------------------------------------------------------------------------- statistics
def _rate(events: np.ndarray, mask: np.ndarray, codes: np.ndarray, s: SubgroupSettings) -> tuple[Interval, int, int]:
    """Interval of mean(events[mask]), clustered by episode; also n and the number of episodes."""
    c = codes[mask]
    if c.size == 0:
        return Interval(np.nan, np.nan, np.nan, "none (n = 0)"), 0, 0
    uniq, local = np.unique(c, return_inverse=True)
    e = np.bincount(local, weights=events[mask], minlength=len(uniq))
    t = np.bincount(local, minlength=len(uniq)).astype(np.float64)
    iv = proportion_interval(e, t, ci=s.ci_used, n_boot=s.n_boot, seed=s.seed, confidence=s.confidence)
    return iv, int(c.size), len(uniq)


def _ece_statistic(sums: np.ndarray) -> np.ndarray:
    # sums: per confidence bin sum(confidence - correct), then the number of queries
    return np.abs(sums[..., :-1]).sum(-1) / sums[..., -1]


def _ece(conf: np.ndarray, correct: np.ndarray, mask: np.ndarray, codes: np.ndarray, s: SubgroupSettings,
         n_bins: int = ECE_BINS) -> Interval:
    """Top-label expected calibration error (equal-width confidence bins) with a bootstrap over
    episodes, or over queries when they are independent (Wilson asked for, no episode column or
    one episode): the ECE has no closed-form interval."""
    c = codes[mask]
    if c.size == 0:
        return Interval(np.nan, np.nan, np.nan, "none (n = 0)")
    uniq, local = np.unique(c, return_inverse=True)
    by_query = s.ci_used == "wilson" or len(uniq) < 2
    units = np.arange(c.size) if by_query else local
    n_units = c.size if by_query else len(uniq)
    b = np.clip((conf[mask] * n_bins).astype(np.int64), 0, n_bins - 1)
    # per unit and bin: sum(confidence - correct), and queries per unit; the ECE of any resample of
    # units is a function of the sums of these
    table = np.empty((n_units, n_bins + 1))
    table[:, :-1] = np.bincount(units * n_bins + b, weights=conf[mask] - correct[mask],
                                minlength=n_units * n_bins).reshape(n_units, n_bins)
    table[:, -1] = np.bincount(units, minlength=n_units)
    out = cluster_bootstrap(table, _ece_statistic, n_boot=s.n_boot, seed=s.seed, confidence=s.confidence)
    if by_query:
        method = out.method.replace("cluster_bootstrap", "query_bootstrap").replace("clusters", "queries")
    else:
        method = out.method.replace("clusters", "episodes")
    return Interval(out.estimate, out.low, out.high, method, int(c.size))


# ---------------------------------------------------------------------------------------- tables
def _class_rows(predictions: pd.DataFrame, groups: list[Group], codes: np.ndarray, s: SubgroupSettings,
                tick: Callable[[], None]) -> pd.DataFrame:
    for col in ("true_class", "pred_class"):
        if col not in predictions.columns:
            raise DataError(f"the predictions table has no {col!r} column; per-class metrics need it")
    true = predictions["true_class"].astype(str).to_numpy()
    pred = predictions["pred_class"].astype(str).to_numpy()
    classes = sorted(set(true))
    in_episode = {c: _episode_classes(predictions, codes, true, c) for c in classes}
    rows = []
    for g in groups:
        for cls in classes:
            pos = g.mask & (true == cls)
            neg = g.mask & (true != cls) & in_episode[cls]
            for metric, sel, hit in (("sensitivity", pos, pred == cls), ("specificity", neg, pred != cls)):
                iv, n, n_ep = _rate(hit.astype(np.float64), sel, codes, s)
                rows.append({**g.values, "group": g.label, "class": cls, "metric": metric, "value": iv.estimate,
                             "ci_low": iv.low, "ci_high": iv.high, "n": n, "n_episodes": n_ep,
                             "ci_method": iv.method})
        tick()
    return pd.DataFrame(rows)


def class_table(
    predictions: pd.DataFrame,
    by: str | Sequence[str],
    bins: Bins | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: str = "cluster_bootstrap",
    confidence: float = 0.95,
    include_overall: bool = True,
) -> pd.DataFrame:
    """Per-class sensitivity and specificity per subgroup, in long format.

    Sensitivity of class c: among queries whose true class is c, the fraction predicted c.
    Specificity of class c: among queries of episodes that include c whose true class is not c,
    the fraction not predicted c (a query of an episode without c cannot be called c).

    Returns:
        One row per (group, class, metric) with columns ``<by>...``, ``group``, ``class``,
        ``metric`` ("sensitivity"/"specificity"), ``value``, ``ci_low``, ``ci_high``, ``n``,
        ``n_episodes``, ``ci_method``.
    """
    s = SubgroupSettings.from_arguments(predictions, by, bins, 1, n_boot, seed, ci, confidence, True,
                                        include_overall)
    codes, _ = episode_codes(predictions)
    groups = subgroups(predictions, s.by, s.bins, include_overall)
    return _class_rows(predictions, groups, codes, s, lambda: None)


def _wide(long: pd.DataFrame) -> pd.DataFrame:
    """The long per-class table as columns ``<metric>_<class>[_ci_low|_ci_high|_n]``, one row per group."""
    wide: dict[str, dict[str, Any]] = {}
    for label, cls, metric, value, low, high, n in zip(long["group"], long["class"], long["metric"], long["value"],
                                                        long["ci_low"], long["ci_high"], long["n"], strict=True):
        name = f"{metric}_{cls}"
        wide.setdefault(str(label), {}).update({name: value, f"{name}_ci_low": low, f"{name}_ci_high": high,
                                                f"{name}_n": n})
    return pd.DataFrame.from_dict(wide, orient="index")


def subgroup_report(
    predictions: pd.DataFrame,
    by: str | Sequence[str],
    bins: Bins | None = None,
    min_n: int = 30,
    n_boot: int = 2000,
    seed: int = 0,
    ci: str = "cluster_bootstrap",
    confidence: float = 0.95,
    per_class: bool = True,
    include_overall: bool = True,
    progress: Progress | None = None,
) -> SubgroupReport:
    """Accuracy, error rate, calibration and per-class sensitivity/specificity per subgroup.

    Args:
        predictions: the per-query table (columns ``correct``, ideally ``episode``,
            ``true_class``, ``pred_class``, ``dist_<class>``, and the metadata columns).
        by: a column or a list of columns; with several, groups are their intersections
            (``by=["sex", "age"]`` gives sex x age band).
        bins: per column, inner cut points or a number of quantile bins (see
            :func:`fsl_xai.metrics.bin_column`); ``age`` defaults to the bands <30, 30-44, 45-59,
            60-74, 75+.
        min_n: groups with fewer queries are kept but flagged ``too_small`` (and left out of
            :func:`fsl_xai.metrics.disparity`).
        n_boot: bootstrap resamples.
        seed: the bootstrap seed (same seed -> same table).
        ci: "cluster_bootstrap" (resample episodes; the default) or "wilson" (queries treated
            as independent). A table without an ``episode`` column always gets Wilson.
        confidence: interval coverage (0.95).
        per_class: add ``sensitivity_<class>`` / ``specificity_<class>`` columns (value, ci_low,
            ci_high, n) from :func:`class_table`.
        include_overall: a first row ``group == "all"`` over every query.
        progress: called as ``progress(done, total)`` after each group (twice per group with
            ``per_class``).

    Returns:
        A :class:`SubgroupReport` whose ``table`` has one row per group: the ``by`` columns
        (strings; ``"missing"`` for missing values), ``group`` (a label like
        ``"sex=female, age=45-59"``), ``n``, ``n_episodes``, ``n_errors``, ``accuracy``,
        ``accuracy_ci_low``, ``accuracy_ci_high``, ``error_rate``, ``error_ci_low``,
        ``error_ci_high``, ``ece``, ``ece_ci_low``, ``ece_ci_high``, ``ece_ci_method`` (with
        distance columns), ``ci_method``, ``confidence``, ``too_small``, ``few_episodes``,
        ``note``, then the per-class columns.
    """
    s = SubgroupSettings.from_arguments(predictions, by, bins, min_n, n_boot, seed, ci, confidence, per_class,
                                        include_overall)
    codes, clustered = episode_codes(predictions)
    correct = predictions["correct"].astype(bool).to_numpy()
    errors = (~correct).astype(np.float64)
    conf = _confidence(predictions)
    groups = subgroups(predictions, s.by, s.bins, include_overall)
    with_classes = per_class and {"true_class", "pred_class"} <= set(predictions.columns)
    total, done = len(groups) * (2 if with_classes else 1), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    rows = []
    for g in groups:
        err, n, n_ep = _rate(errors, g.mask, codes, s)
        row: dict[str, Any] = {
            **g.values, "group": g.label, "n": n, "n_episodes": n_ep, "n_errors": int(errors[g.mask].sum()),
            "accuracy": 1 - err.estimate, "accuracy_ci_low": 1 - err.high, "accuracy_ci_high": 1 - err.low,
            "error_rate": err.estimate, "error_ci_low": err.low, "error_ci_high": err.high}
        if conf is not None:
            ece = _ece(conf, correct, g.mask, codes, s)
            row.update(ece=ece.estimate, ece_ci_low=ece.low, ece_ci_high=ece.high, ece_ci_method=ece.method)
        notes = []
        too_small = n < min_n
        few = clustered and s.ci_used == "cluster_bootstrap" and n_ep < MIN_EPISODES
        if too_small:
            notes.append(f"too small: n = {n} < {min_n}")
        if few:
            notes.append(f"only {n_ep} episode(s): the interval is unreliable")
        if not clustered:
            notes.append("no episode column: queries treated as independent")
        row.update(ci_method=err.method, confidence=confidence, too_small=too_small, few_episodes=few,
                   note="; ".join(notes))
        rows.append(row)
        tick()
    table = pd.DataFrame(rows)
    if with_classes:
        table = table.join(_wide(_class_rows(predictions, groups, codes, s, tick)), on="group")
    return SubgroupReport(table, s, predictions)


def subgroup_table(
    predictions: pd.DataFrame,
    by: str | Sequence[str],
    bins: Bins | None = None,
    min_n: int = 30,
    n_boot: int = 2000,
    seed: int = 0,
    ci: str = "cluster_bootstrap",
    confidence: float = 0.95,
    per_class: bool = True,
    include_overall: bool = True,
) -> pd.DataFrame:
    """The table of :func:`subgroup_report` alone (same arguments and columns); use the report
    where a disparity or the settings are needed too."""
    return subgroup_report(predictions, by, bins, min_n, n_boot, seed, ci, confidence, per_class,
                           include_overall).table


__all__ = ["ECE_BINS", "SubgroupReport", "SubgroupSettings", "class_probabilities", "class_table", "subgroup_report",
           "subgroup_table"]
