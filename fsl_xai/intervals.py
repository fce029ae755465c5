"""Confidence intervals: every interval in fsl_xai comes from this module.

What is here, and when each applies:

- :func:`wilson_interval` / :func:`newcombe_difference_interval`: a binomial proportion (and the
  difference of two) from independent trials (answers of a study, queries of one episode, a table
  without an ``episode`` column). Closed formulas, vectorised.
- :func:`mean_interval`: the mean of independent values (per-episode accuracies, per-map quality
  scores, ratings): ``"normal"`` (``mean +- 1.96 s / sqrt(n)``, what the few-shot literature reports
  over episodes), ``"t"`` (Student's t, wider for few values) or ``"bootstrap"`` (percentile).
  :func:`mean_difference_interval` is Welch's t interval of a difference of two means.
- :func:`cluster_bootstrap` / :func:`cluster_bootstrap_proportion` / :func:`proportion_interval`:
  statistics of queries that share a support set. Queries of one episode are correlated: a support
  set with a poor prototype makes many of its queries wrong together, and treating every query as
  an independent coin flip gives intervals that are too narrow (with intra-episode correlation 0.15
  and 15 queries per episode a Wilson interval covers the true rate only about 70% of the time).
  The cluster bootstrap resamples whole episodes with replacement.

- :func:`crossed_bootstrap_ratio`: a ratio of sums over observations that share two crossed
  factors at once, such as the readings of a reader study (every reader reads many cases, every
  case is read by many readers). It is Owen's pigeonhole bootstrap (Owen 2007, Annals of Applied
  Statistics 1(1)): readers and cases are resampled with replacement independently, and each
  reading counts (times its reader was drawn) x (times its case was drawn). Its variance is mildly
  conservative for crossed random effects; a one-way cluster bootstrap over either factor alone
  ignores the other factor's variation and is too narrow.

The bootstrap works on per-cluster sums. Every statistic used here (error rate, sensitivity,
calibration error, the gap between two subgroups) is a function of sums over clusters of a few
per-cluster numbers, so a resample is ``counts @ per_cluster``, where ``counts`` says how often
each cluster was drawn, and its jackknife (for BCa) is ``total - per_cluster``. Memory therefore
stays at about ``CHUNK_ELEMENTS`` resampled indices plus the per-cluster table, whatever the number
of clusters (a per-query bootstrap over 100,000 queries included; an index-based jackknife would
hold n x n indices). The draws and the BCa formulas follow :func:`scipy.stats.bootstrap` exactly
(Efron and Tibshirani 1993, 14.3 and 15.4), so the intervals equal scipy's up to rounding; the
tests check that.

BCa is the default. With very few episodes BCa and percentile intervals are both a little too
narrow (coverage about 93% with 30 episodes, 95% with 100): callers flag groups with fewer than
:data:`MIN_EPISODES` episodes. When BCa is undefined (degenerate resamples, or resamples where the
statistic is NaN) the interval falls back to percentiles of the defined resamples; a degenerate
proportion (no error at all, or the same rate in every episode) gets the Wilson interval on the
pooled counts. The method label of every :class:`Interval` says which one it is.

This is a bottom-layer module: numpy and the standard library only at import (scipy.special on
use), so the workbench starts without scipy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike

from .errors import DataError

#: fewer episodes than this in a group and a cluster bootstrap interval is flagged as unreliable
MIN_EPISODES = 10
#: the interval methods a caller may ask for on a proportion of queries
CI_METHODS = ("cluster_bootstrap", "wilson")
#: the interval methods of :func:`mean_interval`
MEAN_METHODS = ("normal", "t", "bootstrap")
#: the bootstrap interval methods
BOOTSTRAP_METHODS = ("BCa", "percentile")
#: resampled cluster indices held at once: a bootstrap holds a few arrays of this many 8-byte numbers
CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and the method that produced it.

    Attributes:
        estimate: the statistic on all the data.
        low, high: the interval's ends (NaN where it is undefined, e.g. one value).
        method: which interval this is ("wilson", "t", "cluster_bootstrap_bca", ...).
        n: the number of values or trials behind it, where one number says it.
    """

    estimate: float
    low: float
    high: float
    method: str
    n: int | None = None

    def as_tuple(self) -> tuple[float, float]:
        """The ends ``(low, high)``."""
        return self.low, self.high

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (NaN as null): ``estimate``, ``ci95`` ([low, high]), ``method``, ``n``."""
        return {"estimate": json_number(self.estimate), "ci95": [json_number(self.low), json_number(self.high)],
                "method": self.method, "n": self.n}


def json_number(x: float | None) -> float | None:
    """A float for JSON: NaN and infinities (which JSON cannot hold) become None."""
    return None if x is None or not math.isfinite(x) else float(x)


def _z(confidence: float) -> float:
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise DataError(f"confidence must lie strictly between 0 and 1, got {confidence}; use 0.95 for a 95% CI")


# ---------------------------------------------------------------------------------------- proportions
@overload
def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]: ...
@overload
def wilson_interval(successes: ArrayLike, n: ArrayLike, confidence: float = 0.95) -> tuple[Any, Any]: ...
def wilson_interval(successes: ArrayLike, n: ArrayLike, confidence: float = 0.95) -> tuple[Any, Any]:
    """Wilson score interval of a binomial proportion (vectorised).

    Args:
        successes: counts (any shape).
        n: trials (same shape or broadcastable).
        confidence: the coverage, 0.95 for a 95% CI.

    Returns:
        (low, high): floats for scalar input, arrays otherwise; NaN where n == 0.
    """
    k = np.asarray(successes, dtype=np.float64)
    t = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > t):
        raise DataError("wilson_interval needs 0 <= successes <= n for every entry")
    z = _z(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / t
        denom = 1 + z * z / t
        centre = (p + z * z / (2 * t)) / denom
        half = z * np.sqrt(p * (1 - p) / t + z * z / (4 * t * t)) / denom
        low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    # exact ends: the formula gives them up to rounding; make 0/n and n/n touch the boundary
    low = np.where(k == 0, 0.0, low)
    high = np.where(k == t, 1.0, high)
    low = np.where(t > 0, low, np.nan)
    high = np.where(t > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def newcombe_difference_interval(k1: float, n1: float, k2: float, n2: float,
                                 confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 of two independent proportions (method 10 of
    Newcombe 1998), built from the two Wilson intervals."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(float(k1), float(n1), confidence)
    l2, u2 = wilson_interval(float(k2), float(n2), confidence)
    d = p1 - p2
    return float(d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)), float(d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


# ---------------------------------------------------------------------------------------- means
def mean_interval(values: ArrayLike, confidence: float = 0.95, method: str = "normal", n_boot: int = 2000,
                  seed: int = 0) -> Interval:
    """Mean of independent values with a confidence interval; non-finite values are left out.

    Args:
        values: the values (any shape; flattened). NaN and infinite values are dropped, and
            ``Interval.n`` counts the rest.
        confidence: the coverage, 0.95 for a 95% CI.
        method: ``"normal"``: ``mean +- z s / sqrt(n)`` with the sample standard deviation s
            (ddof 1) and z = 1.96 at 95% (the rounded value the few-shot literature uses);
            ``"t"``: Student's t quantile with n - 1 degrees of freedom; ``"bootstrap"``: the
            percentile interval of ``n_boot`` resampled means (seeded by ``seed``).
        n_boot: bootstrap resamples (``"bootstrap"`` only).
        seed: seeds ``numpy.random.default_rng`` (``"bootstrap"`` only).

    Returns:
        An :class:`Interval` (not clipped to any range). With no value every field is NaN; with one
        value both ends are NaN.
    """
    if method not in MEAN_METHODS:
        raise DataError(f"unknown interval method {method!r}; choose one of {list(MEAN_METHODS)}")
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    n = int(x.size)
    label = "bootstrap_percentile" if method == "bootstrap" else method
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, "none (n = 0)", 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, f"{label} (undefined for one value)", n)
    if method == "bootstrap":
        dist = _resampled_statistic(x[:, None], lambda s: s[..., 0] / n, n_boot, seed)
        low, high = np.quantile(dist, [(1 - confidence) / 2, 0.5 + confidence / 2])
        return Interval(mean, float(low), float(high), label, n)
    if method == "normal":
        q = 1.96 if confidence == 0.95 else _z(confidence)
    else:
        from scipy.special import stdtrit  # the t quantile; far lighter to import than scipy.stats

        q = float(stdtrit(n - 1, 0.5 + confidence / 2))
    half = q * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, label, n)


def mean_difference_interval(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> Interval:
    """Welch's t interval of mean(a) - mean(b) for two independent samples (unequal variances).

    Non-finite values are left out. ``Interval.n`` is the size of ``a``. With fewer than two
    values on a side the ends are NaN; when both samples are constant the interval is the point.
    """
    _check_confidence(confidence)
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return Interval(math.nan, math.nan, math.nan, "none (a sample is empty)", len(x))
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, math.nan, math.nan, "welch_t (undefined for one value)", len(x))
    vx, vy = float(x.var(ddof=1)) / len(x), float(y.var(ddof=1)) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Interval(diff, diff, diff, "welch_t", len(x))
    # Welch-Satterthwaite degrees of freedom
    dof = se ** 4 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    from scipy.special import stdtrit

    half = float(stdtrit(dof, 0.5 + confidence / 2)) * se
    return Interval(diff, diff - half, diff + half, "welch_t", len(x))


# ---------------------------------------------------------------------------------------- bootstrap
def _resample_counts(rng: np.random.Generator, n_units: int, size: int) -> np.ndarray:
    """How often each unit is drawn in each of ``size`` resamples: (size, n_units) floats.

    The draws are ``rng.integers(0, n_units, (size, n_units))``, as in scipy's bootstrap; numpy's
    generator gives the same stream whether it is drawn at once or in chunks of rows.
    """
    idx = rng.integers(0, n_units, (size, n_units))
    idx += (np.arange(size, dtype=np.int64) * n_units)[:, None]
    counts = np.bincount(idx.ravel(), minlength=size * n_units)
    del idx
    return counts.reshape(size, n_units).astype(np.float64)


def _resampled_statistic(table: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int,
                         seed: int) -> np.ndarray:
    """The statistic of ``n_boot`` resamples of the units (axis -2) of ``table`` (..., n_units, m),
    drawn in chunks: (..., n_boot)."""
    if n_boot < 1:
        raise DataError(f"n_boot must be at least 1, got {n_boot}")
    n_units = table.shape[-2]
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // n_units)
    out = []
    for start in range(0, n_boot, chunk):
        counts = _resample_counts(rng, n_units, min(chunk, n_boot - start))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.asarray(statistic(counts @ table), dtype=np.float64))
    return np.concatenate(out, axis=-1)


def _bca_levels(estimate: np.ndarray, dist: np.ndarray, jackknife: np.ndarray,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The two quantile levels of the BCa interval (Efron and Tibshirani 1993, eq. 14.10, 14.15)."""
    from scipy.special import ndtr, ndtri

    b = dist.shape[-1]
    # the share of resamples below the estimate, ties counted half
    point = estimate[..., None]
    below = np.count_nonzero(dist < point, axis=-1) + np.count_nonzero(dist <= point, axis=-1)
    z0 = ndtri(below / (2 * b))
    k = jackknife.shape[-1]
    u = (k - 1) * (jackknife.mean(-1, keepdims=True) - jackknife)
    with np.errstate(invalid="ignore", divide="ignore"):
        accel = (np.sum(u ** 3, -1) / k ** 3) / (np.sum(u ** 2, -1) / k ** 2) ** 1.5 / 6
        z = float(ndtri(alpha))
        lo = ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
        hi = ndtr(z0 + (z0 - z) / (1 - accel * (z0 - z)))
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def _quantile_rows(dist: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``quantile(dist[i], levels[i])`` for every leading index; NaN where either is NaN."""
    flat_d = dist.reshape(-1, dist.shape[-1])
    flat_l = levels.reshape(-1)
    out = np.full(len(flat_l), np.nan)
    for i, (row, level) in enumerate(zip(flat_d, flat_l, strict=True)):
        if np.isfinite(level) and not np.isnan(row).any():
            out[i] = np.quantile(row, level)
    return out.reshape(levels.shape)


def _bootstrap_sums(table: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int, seed: int,
                    confidence: float, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(estimate, low, high, label) of a bootstrap over the units (axis -2) of ``table``."""
    if method not in BOOTSTRAP_METHODS:
        raise DataError(f"unknown bootstrap method {method!r}; choose one of {list(BOOTSTRAP_METHODS)}")
    _check_confidence(confidence)
    total = table.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = np.asarray(statistic(total), dtype=np.float64)
    dist = _resampled_statistic(table, statistic, n_boot, seed)
    alpha = (1 - confidence) / 2
    label = f"cluster_bootstrap_{method.lower()}"
    if method == "BCa":
        with np.errstate(invalid="ignore", divide="ignore"):
            jackknife = np.asarray(statistic(total[..., None, :] - table), dtype=np.float64)
        lo_level, hi_level = _bca_levels(estimate, dist, jackknife, alpha)
    else:
        lo_level = np.full(estimate.shape, alpha)
        hi_level = np.full(estimate.shape, 1 - alpha)
    # a ratio's resamples may be infinite (no event in a denominator): interpolating between two
    # infinities is NaN, which falls back below
    with np.errstate(invalid="ignore"):
        low, high = _quantile_rows(dist, lo_level), _quantile_rows(dist, hi_level)
    bad = ~(np.isfinite(low) & np.isfinite(high))
    if bad.any():
        # BCa is undefined when the resamples are degenerate or some are NaN (a resample without
        # any query of a group): fall back to percentiles of the defined resamples
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
            plow = np.nanquantile(dist, alpha, axis=-1)
            phigh = np.nanquantile(dist, 1 - alpha, axis=-1)
        low, high = np.where(bad, plow, low), np.where(bad, phigh, high)
        if estimate.ndim == 0:
            label = "cluster_bootstrap_percentile"
    return estimate, low, high, label


def cluster_bootstrap(
    per_cluster: ArrayLike,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "BCa",
) -> Interval:
    """Cluster bootstrap of a statistic of per-cluster sums, in memory bounded by the chunk size.

    Args:
        per_cluster: (n_clusters, m): per cluster (episode, or query for a per-query bootstrap)
            the m numbers whose sums over clusters determine the statistic, e.g. errors and
            queries per episode.
        statistic: maps sums (..., m) to the statistic (...), e.g. ``lambda s: s[..., 0] / s[..., 1]``.
            It is called on the sums over all clusters, over each resample and (for BCa) over all
            clusters but one; division by zero gives NaN resamples, which are handled.
        n_boot: resamples.
        seed: seeds ``numpy.random.default_rng``.
        confidence: the coverage, e.g. 0.95.
        method: "BCa" (default) or "percentile".

    Returns:
        An :class:`Interval` (estimate from all clusters; ``n`` the number of clusters).
    """
    table = np.asarray(per_cluster, dtype=np.float64)
    if table.ndim != 2:
        raise DataError(f"per_cluster must be (n_clusters, m), got shape {table.shape}")
    n_clusters = table.shape[0]
    if n_clusters < 2:
        with np.errstate(invalid="ignore", divide="ignore"):
            single = float(statistic(table.sum(0))) if n_clusters else math.nan
        return Interval(single, math.nan, math.nan, "none (fewer than 2 clusters)", n_clusters)
    estimate, low, high, label = _bootstrap_sums(table, statistic, n_boot, seed, confidence, method)
    return Interval(float(estimate), float(low), float(high), label, n_clusters)


def _ratio(sums: np.ndarray) -> np.ndarray:
    return sums[..., 0] / sums[..., 1]


def cluster_bootstrap_proportion(
    events: ArrayLike,
    totals: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "BCa",
    fallback: str = "wilson",
) -> Any:
    """Cluster bootstrap interval of a pooled proportion sum(events) / sum(totals).

    Args:
        events: per-episode counts (..., n_episodes), e.g. errors per episode.
        totals: per-episode totals, same shape (episodes with total 0 should be left out).
        n_boot, seed, confidence, method: as in :func:`cluster_bootstrap`.
        fallback: "wilson" replaces a degenerate bootstrap (all episodes 0% or all 100%, or the same
            rate in every episode) or one with fewer than two episodes by the Wilson interval on
            the pooled counts; anything else keeps the bootstrap (NaN ends with one episode).

    Returns:
        For 1-d input an :class:`Interval`; for (R, n_episodes) input a tuple
        (estimate, low, high) of arrays (R,) (used by vectorised coverage studies; every row is
        resampled with the same draws).
    """
    e = np.asarray(events, dtype=np.float64)
    t = np.asarray(totals, dtype=np.float64)
    if e.shape != t.shape:
        raise DataError(f"events {e.shape} and totals {t.shape} must have the same shape")
    if np.any(e < 0) or np.any(e > t):
        raise DataError("need 0 <= events <= totals in every episode")
    k, n = e.sum(-1), t.sum(-1)
    n_clusters = e.shape[-1]
    if e.ndim == 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = float(k / n)
        if n_clusters < 2 or float(n) == 0:
            if fallback != "wilson":
                return Interval(estimate, math.nan, math.nan, "none (fewer than 2 episodes)", int(n))
            lo, hi = wilson_interval(float(k), float(n), confidence)
            return Interval(estimate, lo, hi, "wilson (fewer than 2 episodes)", int(n))
        rates = np.divide(e, t, out=np.zeros_like(e), where=t > 0)
        if fallback == "wilson" and (np.all(e == 0) or np.all(e == t) or np.ptp(rates) == 0):
            lo, hi = wilson_interval(float(k), float(n), confidence)
            return Interval(estimate, lo, hi, "wilson (bootstrap degenerate)", int(n))
    est, low, high, label = _bootstrap_sums(np.stack([e, t], axis=-1), _ratio, n_boot, seed, confidence, method)
    if e.ndim == 1:
        return Interval(float(est), float(low), float(high), label, int(n))
    return est, low, high


def crossed_bootstrap_ratio(numerator: ArrayLike, denominator: ArrayLike, rows: ArrayLike, cols: ArrayLike,
                            n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """Percentile interval of sum(numerator) / sum(denominator) over observations that belong to
    two crossed factors (``rows``: e.g. the reader of each reading; ``cols``: its case), by the
    pigeonhole bootstrap (module docstring). With one level of a factor it is the cluster
    bootstrap over the other.

    Args:
        numerator, denominator: one number per observation (e.g. correct 0/1 and 1).
        rows, cols: the two factor labels of each observation (any hashable values).
        n_boot, seed, confidence: as in :func:`cluster_bootstrap`.

    Returns:
        An :class:`Interval` (``n``: the observations); NaN ends when sum(denominator) is 0 or no
        resample has a positive denominator.
    """
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    r, c = np.asarray(rows), np.asarray(cols)
    if not num.shape == den.shape == r.shape == c.shape or num.ndim != 1:
        raise DataError(f"numerator {num.shape}, denominator {den.shape}, rows {r.shape} and cols {c.shape} "
                        "must be 1-d arrays of one length")
    if n_boot < 1:
        raise DataError(f"n_boot must be at least 1, got {n_boot}")
    _check_confidence(confidence)
    total = float(den.sum())
    if total == 0:
        return Interval(math.nan, math.nan, math.nan, "none (n = 0)", len(num))
    estimate = float(num.sum()) / total
    row_of = np.unique(r, return_inverse=True)[1].ravel()
    col_of = np.unique(c, return_inverse=True)[1].ravel()
    n_rows, n_cols = int(row_of.max()) + 1, int(col_of.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(len(num), n_rows + n_cols))
    out = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        weights = _resample_counts(rng, n_rows, size)[:, row_of] * _resample_counts(rng, n_cols, size)[:, col_of]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((weights @ num) / (weights @ den))
    dist = np.concatenate(out)
    dist = dist[np.isfinite(dist)]
    if dist.size == 0:
        return Interval(estimate, math.nan, math.nan, "none (no defined resample)", len(num))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(dist, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), "pigeonhole bootstrap (percentile)", len(num))


def proportion_interval(events: ArrayLike, totals: ArrayLike, ci: str = "cluster_bootstrap", n_boot: int = 2000,
                        seed: int = 0, confidence: float = 0.95) -> Interval:
    """A proportion with the interval chosen by ``ci``, from per-episode counts (1-d arrays).

    Episodes with total 0 are left out; ``Interval.n`` is the pooled total.
    """
    if ci not in CI_METHODS:
        raise DataError(f"unknown interval {ci!r}; choose one of {list(CI_METHODS)}")
    e = np.asarray(events, dtype=np.float64)
    t = np.asarray(totals, dtype=np.float64)
    keep = t > 0
    e, t = e[keep], t[keep]
    k, n = float(e.sum()), float(t.sum())
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, "none (n = 0)", 0)
    if ci == "wilson":
        lo, hi = wilson_interval(k, n, confidence)
        return Interval(k / n, lo, hi, "wilson", int(n))
    result: Interval = cluster_bootstrap_proportion(e, t, n_boot=n_boot, seed=seed, confidence=confidence)
    return result


__all__ = [
    "BOOTSTRAP_METHODS", "CHUNK_ELEMENTS", "CI_METHODS", "Interval", "MEAN_METHODS", "MIN_EPISODES",
    "cluster_bootstrap", "cluster_bootstrap_proportion", "crossed_bootstrap_ratio", "mean_difference_interval",
    "mean_interval", "newcombe_difference_interval", "proportion_interval", "wilson_interval",
]
