"""Error rates, per-class sensitivity/specificity and calibration per subgroup, with 95% CIs.

Input is the per-query table of :func:`fsl_xai.evaluation.evaluate` (see docs/CONTRACTS.md):
one row per query with ``episode``, ``correct``, ``true_class``, ``pred_class``, ``dist_<class>``
(minus the logits; NaN for classes not in the episode) and metadata columns (sex, age, site, ...).

Library choice: grouping uses pandas ``groupby`` (not Fairlearn's ``MetricFrame``, whose
bootstrap resamples single queries and so ignores the support set that an episode's queries
share; the tests check our point estimates against ``MetricFrame``); intervals use
:func:`scipy.stats.bootstrap` over episodes (see :mod:`fsl_xai.metrics.intervals` for why).

Grouping uses pandas ``groupby`` on the requested columns (their intersection when several are
given); continuous columns are binned first (:func:`bin_column`) and missing values form their own
group ``"missing"``. Intervals come from :mod:`fsl_xai.metrics.intervals` (cluster bootstrap over
episodes by default, via :func:`scipy.stats.bootstrap`; Wilson on request or when a table has no
episode structure); every row says which interval it carries in ``ci_method``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .intervals import CI_METHODS, MIN_EPISODES, Interval, cluster_bootstrap, newcombe_difference_interval, \
    proportion_interval, resampled_sums, wilson_interval

#: inner cut points of the default age bands: <30, 30-44, 45-59, 60-74, 75+
DEFAULT_AGE_BANDS: tuple[float, ...] = (30, 45, 60, 75)
#: the label of rows whose grouping value is missing
MISSING = "missing"
#: numeric columns with more distinct values than this are binned (quartiles) unless told otherwise
MAX_LEVELS = 12
#: confidence bins of the expected calibration error
ECE_BINS = 10
ALL = "all"


# ---------------------------------------------------------------------------------------- binning
def band_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bands cut at ``edges``: (30, 45) -> ["<30", "30-44", "45+"] (integer style
    when the edges are whole numbers, ``[a, b)`` otherwise)."""
    edges = list(edges)
    whole = all(float(e).is_integer() for e in edges)
    fmt = (lambda v: str(int(v))) if whole else (lambda v: f"{v:g}")
    labels = [f"<{fmt(edges[0])}"]
    for lo, hi in zip(edges[:-1], edges[1:]):
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
        if isinstance(edges, (int, np.integer)):
            if edges < 2:
                raise DataError(f"quantile bins for {name!r} need at least 2 bins, got {edges}")
            qs = np.nanquantile(x[~missing], np.linspace(0, 1, int(edges) + 1)[1:-1]) if (~missing).any() else []
            cuts = sorted(set(float(q) for q in qs))
        else:
            cuts = [float(e) for e in edges]
            if any(b <= a for a, b in zip(cuts[:-1], cuts[1:])):
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


def _grouping(predictions: pd.DataFrame, by: Sequence[str], bins: Mapping | None) -> pd.DataFrame:
    bins = dict(bins or {})
    unknown = [c for c in list(by) + list(bins) if c not in predictions.columns]
    if unknown:
        raise DataError(f"no column(s) {unknown} in the predictions table; its columns are "
                        f"{list(predictions.columns)}")
    return pd.DataFrame({c: bin_column(predictions[c], bins.get(c), c) for c in by})


def _as_list(by) -> list[str]:
    if isinstance(by, str):
        return [by]
    by = list(by)
    if not by:
        raise DataError("give at least one column to group by, e.g. by=['sex'] or by=['sex', 'age']")
    return by


# ---------------------------------------------------------------------------------------- inputs
def _check_predictions(predictions: pd.DataFrame) -> None:
    if not isinstance(predictions, pd.DataFrame):
        raise DataError(f"predictions must be a pandas DataFrame (the per-query table), got {type(predictions).__name__}")
    if "correct" not in predictions.columns:
        raise DataError("the predictions table has no 'correct' column; pass the per-query table of "
                        "fsl_xai.evaluation.evaluate(...).predictions")
    if len(predictions) == 0:
        raise DataError("the predictions table is empty; evaluate at least one episode first")


def _episode_codes(predictions: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """Integer episode codes 0..E-1 and whether the table has an episode structure."""
    if "episode" in predictions.columns:
        codes, _ = pd.factorize(predictions["episode"], sort=True)
        return codes.astype(np.int64), True
    return np.arange(len(predictions), dtype=np.int64), False


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


# ---------------------------------------------------------------------------------------- core
def _per_episode(codes: np.ndarray, values: np.ndarray, n_episodes: int) -> np.ndarray:
    return np.bincount(codes, weights=values.astype(np.float64), minlength=n_episodes)


def _rate(events: np.ndarray, mask: np.ndarray, codes: np.ndarray, ci: str, n_boot: int, seed: int,
          confidence: float) -> tuple[Interval, int, int]:
    """Interval of mean(events[mask]), clustered by episode; also n and the number of episodes."""
    c = codes[mask]
    if c.size == 0:
        return Interval(np.nan, np.nan, np.nan, "none (n = 0)"), 0, 0
    uniq, local = np.unique(c, return_inverse=True)
    e = _per_episode(local, events[mask], len(uniq))
    t = np.bincount(local, minlength=len(uniq)).astype(np.float64)
    return proportion_interval(e, t, ci=ci, n_boot=n_boot, seed=seed, confidence=confidence), int(c.size), len(uniq)


def _ece(conf: np.ndarray, correct: np.ndarray, mask: np.ndarray, codes: np.ndarray, ci: str, n_boot: int,
         seed: int, confidence: float, n_bins: int = ECE_BINS) -> Interval:
    """Top-label expected calibration error (equal-width confidence bins) with a cluster bootstrap."""
    c = codes[mask]
    if c.size == 0:
        return Interval(np.nan, np.nan, np.nan, "none (n = 0)")
    uniq, local = np.unique(c, return_inverse=True)
    b = np.clip((conf[mask] * n_bins).astype(np.int64), 0, n_bins - 1)
    cell = local * n_bins + b
    size = len(uniq) * n_bins
    # per-episode, per-bin sums: the ECE of any resample of episodes is a function of these
    conf_sum = np.bincount(cell, weights=conf[mask], minlength=size).reshape(len(uniq), n_bins)
    corr_sum = np.bincount(cell, weights=correct[mask].astype(np.float64), minlength=size).reshape(len(uniq), n_bins)
    count = np.bincount(local, minlength=len(uniq)).astype(np.float64)

    table = np.concatenate([conf_sum - corr_sum, count[:, None]], axis=1)

    def statistic(idx):
        sums = resampled_sums(idx, table)
        return np.abs(sums[..., :-1]).sum(-1) / sums[..., -1]

    if ci == "wilson" or len(uniq) < 2:
        # no closed form for the ECE; with independent queries, bootstrap the queries instead
        q_conf, q_corr = conf[mask], correct[mask].astype(np.float64)
        qb = b
        diff = np.zeros((len(q_conf), n_bins))
        diff[np.arange(len(q_conf)), qb] = q_conf - q_corr

        def query_stat(idx):
            return np.abs(resampled_sums(idx, diff)).sum(-1) / idx.shape[-1]

        out = cluster_bootstrap(query_stat, len(q_conf), n_boot=n_boot, seed=seed, confidence=confidence)
        return Interval(out.estimate, out.low, out.high, out.method.replace("cluster_bootstrap", "query_bootstrap"))
    return cluster_bootstrap(statistic, len(uniq), n_boot=n_boot, seed=seed, confidence=confidence)


def _group_frames(predictions: pd.DataFrame, by: list[str], bins, include_overall: bool):
    groups = _grouping(predictions, by, bins)
    out = []
    if include_overall:
        out.append(({c: ALL for c in by}, ALL, np.ones(len(predictions), dtype=bool)))
    # ngroup numbers groups in sorted category order (bands in order, "missing" last)
    gid = groups.groupby(by, observed=True, sort=True).ngroup().to_numpy()
    for g in range(int(gid.max()) + 1 if len(gid) else 0):
        mask = gid == g
        first = int(np.flatnonzero(mask)[0])
        key = tuple(groups[c].iloc[first] for c in by)
        label = ", ".join(f"{c}={v}" for c, v in zip(by, key))
        out.append((dict(zip(by, (str(k) for k in key))), label, mask))
    return out


def _episode_classes(predictions: pd.DataFrame, cls: str) -> np.ndarray:
    """Rows whose episode includes class ``cls`` (from the dist column, else from true classes)."""
    col = f"dist_{cls}"
    if col in predictions.columns:
        return predictions[col].notna().to_numpy()
    if "episode" in predictions.columns:
        has = predictions.groupby("episode")["true_class"].transform(lambda s: (s.astype(str) == cls).any())
        return has.to_numpy(dtype=bool)
    return np.ones(len(predictions), dtype=bool)


def class_table(
    predictions: pd.DataFrame,
    by: str | Sequence[str],
    bins: Mapping[str, Sequence[float] | int] | None = None,
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
    _check_predictions(predictions)
    by = _as_list(by)
    if ci not in CI_METHODS:
        raise DataError(f"unknown interval {ci!r}; choose one of {list(CI_METHODS)}")
    for col in ("true_class", "pred_class"):
        if col not in predictions.columns:
            raise DataError(f"the predictions table has no {col!r} column; per-class metrics need it")
    codes, clustered = _episode_codes(predictions)
    ci_used = ci if clustered else "wilson"
    true = predictions["true_class"].astype(str).to_numpy()
    pred = predictions["pred_class"].astype(str).to_numpy()
    classes = sorted(set(true))
    in_episode = {c: _episode_classes(predictions, c) for c in classes}
    rows = []
    for values, label, mask in _group_frames(predictions, by, bins, include_overall):
        for cls in classes:
            pos = mask & (true == cls)
            neg = mask & (true != cls) & in_episode[cls]
            for metric, sel, hit in (("sensitivity", pos, pred == cls), ("specificity", neg, pred != cls)):
                iv, n, n_ep = _rate(hit.astype(np.float64), sel, codes, ci_used, n_boot, seed, confidence)
                rows.append({**values, "group": label, "class": cls, "metric": metric, "value": iv.estimate,
                             "ci_low": iv.low, "ci_high": iv.high, "n": n, "n_episodes": n_ep,
                             "ci_method": iv.method})
    return pd.DataFrame(rows)


def subgroup_table(
    predictions: pd.DataFrame,
    by: str | Sequence[str],
    bins: Mapping[str, Sequence[float] | int] | None = None,
    min_n: int = 30,
    n_boot: int = 2000,
    seed: int = 0,
    ci: str = "cluster_bootstrap",
    confidence: float = 0.95,
    per_class: bool = True,
    include_overall: bool = True,
) -> pd.DataFrame:
    """Accuracy, error rate, calibration and per-class sensitivity/specificity per subgroup.

    Args:
        predictions: the per-query table (columns ``correct``, ideally ``episode``,
            ``true_class``, ``pred_class``, ``dist_<class>``, and the metadata columns).
        by: a column or a list of columns; with several, groups are their intersections
            (``by=["sex", "age"]`` gives sex x age band).
        bins: per column, inner cut points or a number of quantile bins (see :func:`bin_column`);
            ``age`` defaults to the bands <30, 30-44, 45-59, 60-74, 75+.
        min_n: groups with fewer queries are kept but flagged ``too_small``.
        n_boot: bootstrap resamples; seed: the bootstrap seed (same seed -> same table).
        ci: "cluster_bootstrap" (resample episodes; the default) or "wilson" (queries treated
            as independent). A table without an ``episode`` column always gets Wilson.
        confidence: interval coverage (0.95).
        per_class: add ``sensitivity_<class>`` / ``specificity_<class>`` columns (value, ci_low,
            ci_high) from :func:`class_table`.
        include_overall: a first row ``group == "all"`` over every query.

    Returns:
        One row per group: the ``by`` columns (strings; ``"missing"`` for missing values),
        ``group`` (a label like ``"sex=female, age=45-59"``), ``n``, ``n_episodes``, ``n_errors``,
        ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``, ``error_rate``, ``error_ci_low``,
        ``error_ci_high``, ``ece``, ``ece_ci_low``, ``ece_ci_high``, ``ci_method``,
        ``confidence``, ``too_small``, ``few_episodes``, ``note``, then the per-class columns.
        ``table.attrs`` keeps the arguments and the predictions so that :func:`disparity` can be
        called on the table.
    """
    _check_predictions(predictions)
    by = _as_list(by)
    if ci not in CI_METHODS:
        raise DataError(f"unknown interval {ci!r}; choose one of {list(CI_METHODS)}")
    if min_n < 1:
        raise DataError(f"min_n must be at least 1, got {min_n}")
    codes, clustered = _episode_codes(predictions)
    ci_used = ci if clustered else "wilson"
    correct = predictions["correct"].astype(bool).to_numpy()
    errors = (~correct).astype(np.float64)
    conf = _confidence(predictions)
    rows = []
    for values, label, mask in _group_frames(predictions, by, bins, include_overall):
        err, n, n_ep = _rate(errors, mask, codes, ci_used, n_boot, seed, confidence)
        row = {**values, "group": label, "n": n, "n_episodes": n_ep, "n_errors": int(errors[mask].sum()),
               "accuracy": 1 - err.estimate, "accuracy_ci_low": 1 - err.high, "accuracy_ci_high": 1 - err.low,
               "error_rate": err.estimate, "error_ci_low": err.low, "error_ci_high": err.high}
        if conf is not None:
            ece = _ece(conf, correct, mask, codes, ci_used, n_boot, seed, confidence)
            row.update(ece=ece.estimate, ece_ci_low=ece.low, ece_ci_high=ece.high, ece_ci_method=ece.method)
        notes = []
        too_small = n < min_n
        few = clustered and ci_used == "cluster_bootstrap" and n_ep < MIN_EPISODES
        if too_small:
            notes.append(f"too small: n = {n} < {min_n}")
        if few:
            notes.append(f"only {n_ep} episode(s): the interval is unreliable")
        if not clustered:
            notes.append("no episode column: queries treated as independent")
        row.update(ci_method=err.method, confidence=confidence, too_small=too_small, few_episodes=few,
                   note="; ".join(notes))
        rows.append(row)
    table = pd.DataFrame(rows)
    if per_class and {"true_class", "pred_class"} <= set(predictions.columns):
        long = class_table(predictions, by, bins, n_boot, seed, ci, confidence, include_overall)
        wide = {}
        for (label, cls, metric), r in long.set_index(["group", "class", "metric"]).iterrows():
            d = wide.setdefault(label, {})
            d[f"{metric}_{cls}"] = r["value"]
            d[f"{metric}_{cls}_ci_low"] = r["ci_low"]
            d[f"{metric}_{cls}_ci_high"] = r["ci_high"]
            d[f"{metric}_{cls}_n"] = r["n"]
        extra = pd.DataFrame.from_dict(wide, orient="index")
        table = table.join(extra, on="group")
    table.attrs["fsl_xai_subgroups"] = {"by": by, "bins": dict(bins or {}), "min_n": min_n, "n_boot": n_boot,
                                        "seed": seed, "ci": ci, "confidence": confidence}
    table.attrs["fsl_xai_predictions"] = _Source(predictions)
    return table


class _Source:
    """Holds the predictions behind a subgroup table in ``table.attrs``; pandas deep-copies attrs
    into every derived frame, so the holder shares the frame instead of copying it."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __deepcopy__(self, memo) -> "_Source":
        return self

    def __repr__(self) -> str:
        return f"<predictions: {len(self.frame)} rows>"


# ---------------------------------------------------------------------------------------- disparity
def disparity(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    bins: Mapping[str, Sequence[float] | int] | None = None,
    min_n: int = 30,
    n_boot: int = 2000,
    seed: int = 0,
    ci: str = "cluster_bootstrap",
    confidence: float = 0.95,
) -> dict:
    """The largest gap (and ratio) in error rate between subgroups, with its CI.

    The worst and best groups are chosen on the full data among groups with at least ``min_n``
    queries; the gap (worst - best) and the ratio (worst / best) are then bootstrapped over
    episodes with the two groups held fixed, so the interval reflects the shared support sets.
    Note that picking the extreme pair among many groups favours large gaps; with k groups there
    are k(k-1)/2 pairs, so treat a flag among many groups as a lead to check, not a finding.

    Args:
        data: the per-query table, or a table from :func:`subgroup_table` (its settings and
            predictions are taken from ``table.attrs``; other arguments are then ignored).
        by, bins, min_n, n_boot, seed, ci, confidence: as in :func:`subgroup_table`.

    Returns:
        A dict: ``by``, ``worst_group``, ``best_group``, their ``worst_error_rate``,
        ``best_error_rate``, ``worst_n``, ``best_n``, ``gap``, ``gap_ci_low``, ``gap_ci_high``,
        ``ratio``, ``ratio_ci_low``, ``ratio_ci_high``, ``flagged`` (the gap's CI excludes 0),
        ``ci_method``, ``n_groups_compared``, ``too_small_groups`` (list of (label, n)),
        ``confidence``, ``note``.
    """
    if isinstance(data, pd.DataFrame) and "fsl_xai_predictions" in data.attrs and "error_rate" in data.columns:
        settings = data.attrs["fsl_xai_subgroups"]
        predictions = data.attrs["fsl_xai_predictions"].frame
        by, bins, min_n = settings["by"], settings["bins"], settings["min_n"]
        n_boot, seed, ci, confidence = settings["n_boot"], settings["seed"], settings["ci"], settings["confidence"]
    else:
        predictions = data
        if by is None:
            raise DataError("disparity needs by=... (the column(s) that define the subgroups)")
    _check_predictions(predictions)
    by = _as_list(by)
    if ci not in CI_METHODS:
        raise DataError(f"unknown interval {ci!r}; choose one of {list(CI_METHODS)}")
    codes, clustered = _episode_codes(predictions)
    ci_used = ci if clustered else "wilson"
    errors = (~predictions["correct"].astype(bool)).to_numpy().astype(np.float64)
    groups = _group_frames(predictions, by, bins, include_overall=False)
    sizes = [(label, int(mask.sum()), mask) for _, label, mask in groups]
    eligible = [(label, n, mask) for label, n, mask in sizes if n >= min_n]
    small = [(label, n) for label, n, _ in sizes if n < min_n]
    result = {"by": by, "worst_group": None, "best_group": None, "worst_error_rate": np.nan,
              "best_error_rate": np.nan, "worst_n": 0, "best_n": 0, "gap": np.nan, "gap_ci_low": np.nan,
              "gap_ci_high": np.nan, "ratio": np.nan, "ratio_ci_low": np.nan, "ratio_ci_high": np.nan,
              "flagged": False, "ci_method": "none", "n_groups_compared": len(eligible),
              "too_small_groups": small, "confidence": confidence, "note": ""}
    if len(eligible) < 2:
        result["note"] = (f"fewer than two groups have at least {min_n} queries ({len(eligible)} do); "
                          "evaluate more episodes or lower min_n")
        return result
    rates = [errors[mask].mean() for _, _, mask in eligible]
    w, b = int(np.argmax(rates)), int(np.argmin(rates))
    (wl, wn, wm), (bl, bn, bm) = eligible[w], eligible[b]
    gap = rates[w] - rates[b]
    ratio = rates[w] / rates[b] if rates[b] > 0 else np.inf
    result.update(worst_group=wl, best_group=bl, worst_error_rate=float(rates[w]), best_error_rate=float(rates[b]),
                  worst_n=wn, best_n=bn, gap=float(gap), ratio=float(ratio))
    if ci_used == "wilson":
        lo, hi = newcombe_difference_interval(errors[wm].sum(), wn, errors[bm].sum(), bn, confidence)
        result.update(gap_ci_low=lo, gap_ci_high=hi, ci_method="newcombe (wilson-based, independent queries)",
                      note="the ratio has no interval without an episode structure")
    else:
        keep = wm | bm
        uniq, local = np.unique(codes[keep], return_inverse=True)
        E = len(uniq)
        ew = _per_episode(local, errors[keep] * wm[keep], E)
        nw = _per_episode(local, wm[keep].astype(np.float64), E)
        eb = _per_episode(local, errors[keep] * bm[keep], E)
        nb = _per_episode(local, bm[keep].astype(np.float64), E)

        def gap_stat(idx):
            return ew[idx].sum(-1) / nw[idx].sum(-1) - eb[idx].sum(-1) / nb[idx].sum(-1)

        def ratio_stat(idx):
            return (ew[idx].sum(-1) / nw[idx].sum(-1)) / (eb[idx].sum(-1) / nb[idx].sum(-1))

        g = cluster_bootstrap(gap_stat, E, n_boot=n_boot, seed=seed, confidence=confidence)
        result.update(gap_ci_low=g.low, gap_ci_high=g.high, ci_method=g.method)
        if np.isfinite(ratio):
            r = cluster_bootstrap(ratio_stat, E, n_boot=n_boot, seed=seed, confidence=confidence, method="percentile")
            result.update(ratio_ci_low=r.low, ratio_ci_high=r.high)
        else:
            result["note"] = "the best group has no error, so the ratio is infinite"
        if E < MIN_EPISODES:
            result["note"] = (result["note"] + "; " if result["note"] else "") + \
                f"only {E} episode(s): the interval is unreliable"
    result["flagged"] = bool(np.isfinite(result["gap_ci_low"]) and result["gap_ci_low"] > 0)
    return result


def disparity_table(predictions: pd.DataFrame, by_list: Sequence[str | Sequence[str]], **kwargs) -> pd.DataFrame:
    """:func:`disparity` for several groupings, one row each (for a dashboard overview)."""
    rows = []
    for by in by_list:
        d = disparity(predictions, by, **kwargs)
        d = dict(d, by=", ".join(_as_list(by)), too_small_groups=len(d["too_small_groups"]))
        rows.append(d)
    return pd.DataFrame(rows)


__all__ = ["ALL", "DEFAULT_AGE_BANDS", "MISSING", "band_labels", "bin_column", "class_probabilities", "class_table",
           "disparity", "disparity_table", "subgroup_table", "wilson_interval"]
