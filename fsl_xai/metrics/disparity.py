"""The largest gap in error rate between subgroups, with an interval that respects episodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..intervals import MIN_EPISODES, cluster_bootstrap, newcombe_difference_interval
from .grouping import Bins, as_columns, episode_codes, subgroups
from .subgroups import SubgroupReport, SubgroupSettings


def _gap(sums: np.ndarray) -> np.ndarray:
    # sums of (errors worst, queries worst, errors best, queries best) over episodes
    return sums[..., 0] / sums[..., 1] - sums[..., 2] / sums[..., 3]


def _ratio(sums: np.ndarray) -> np.ndarray:
    return (sums[..., 0] / sums[..., 1]) / (sums[..., 2] / sums[..., 3])


def disparity(
    data: SubgroupReport | pd.DataFrame,
    by: str | Sequence[str] | None = None,
    bins: Bins | None = None,
    min_n: int = 30,
    n_boot: int = 2000,
    seed: int = 0,
    ci: str = "cluster_bootstrap",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The largest gap (and ratio) in error rate between subgroups, with its CI.

    The worst and best groups are chosen on the full data among groups with at least ``min_n``
    queries; the gap (worst - best) and the ratio (worst / best) are then bootstrapped over
    episodes with the two groups held fixed, so the interval reflects the shared support sets.
    Note that picking the extreme pair among many groups favours large gaps; with k groups there
    are k(k-1)/2 pairs, so treat a flag among many groups as a lead to check, not a finding.

    Args:
        data: a :class:`SubgroupReport` (its settings and predictions are used; give no other
            argument), or the per-query table with ``by``.
        by, bins, min_n, n_boot, seed, ci, confidence: as in :func:`fsl_xai.metrics.subgroup_report`.

    Returns:
        A dict: ``by``, ``worst_group``, ``best_group``, their ``worst_error_rate``,
        ``best_error_rate``, ``worst_n``, ``best_n``, ``gap``, ``gap_ci_low``, ``gap_ci_high``,
        ``ratio``, ``ratio_ci_low``, ``ratio_ci_high``, ``flagged`` (the gap's CI excludes 0),
        ``ci_method``, ``n_groups_compared``, ``too_small_groups`` (list of (label, n)),
        ``confidence``, ``note``.
    """
    if isinstance(data, SubgroupReport):
        if by is not None:
            raise DataError("disparity(report) takes its grouping from the report; pass by=... only with the "
                            "per-query table")
        s, predictions = data.settings, data.predictions
    else:
        if by is None:
            raise DataError("disparity needs by=... (the column(s) that define the subgroups), or a SubgroupReport "
                            "from fsl_xai.metrics.subgroup_report(...)")
        s = SubgroupSettings.from_arguments(data, by, bins, min_n, n_boot, seed, ci, confidence, False, False)
        predictions = data
    codes, _ = episode_codes(predictions)
    errors = (~predictions["correct"].astype(bool)).to_numpy().astype(np.float64)
    sizes = [(g.label, int(g.mask.sum()), g.mask) for g in subgroups(predictions, s.by, s.bins)]
    eligible = [(label, n, mask) for label, n, mask in sizes if n >= s.min_n]
    small = [(label, n) for label, n, _ in sizes if n < s.min_n]
    result: dict[str, Any] = {
        "by": list(s.by), "worst_group": None, "best_group": None, "worst_error_rate": np.nan,
        "best_error_rate": np.nan, "worst_n": 0, "best_n": 0, "gap": np.nan, "gap_ci_low": np.nan,
        "gap_ci_high": np.nan, "ratio": np.nan, "ratio_ci_low": np.nan, "ratio_ci_high": np.nan,
        "flagged": False, "ci_method": "none", "n_groups_compared": len(eligible), "too_small_groups": small,
        "confidence": s.confidence, "note": ""}
    if len(eligible) < 2:
        result["note"] = (f"fewer than two groups have at least {s.min_n} queries ({len(eligible)} do); "
                          "evaluate more episodes or lower min_n")
        return result
    rates = [errors[mask].mean() for _, _, mask in eligible]
    w, b = int(np.argmax(rates)), int(np.argmin(rates))
    (wl, wn, wm), (bl, bn, bm) = eligible[w], eligible[b]
    gap = rates[w] - rates[b]
    ratio = rates[w] / rates[b] if rates[b] > 0 else np.inf
    result.update(worst_group=wl, best_group=bl, worst_error_rate=float(rates[w]), best_error_rate=float(rates[b]),
                  worst_n=wn, best_n=bn, gap=float(gap), ratio=float(ratio))
    if s.ci_used == "wilson":
        lo, hi = newcombe_difference_interval(errors[wm].sum(), wn, errors[bm].sum(), bn, s.confidence)
        result.update(gap_ci_low=lo, gap_ci_high=hi, ci_method="newcombe (wilson-based, independent queries)",
                      note="the ratio has no interval without an episode structure")
    else:
        keep = wm | bm
        uniq, local = np.unique(codes[keep], return_inverse=True)
        n_episodes = len(uniq)
        per_episode = np.stack([np.bincount(local, weights=v[keep], minlength=n_episodes)
                                for v in (errors * wm, wm.astype(np.float64), errors * bm, bm.astype(np.float64))],
                               axis=1)
        g = cluster_bootstrap(per_episode, _gap, n_boot=s.n_boot, seed=s.seed, confidence=s.confidence)
        result.update(gap_ci_low=g.low, gap_ci_high=g.high, ci_method=g.method)
        if np.isfinite(ratio):
            r = cluster_bootstrap(per_episode, _ratio, n_boot=s.n_boot, seed=s.seed, confidence=s.confidence,
                                  method="percentile")
            result.update(ratio_ci_low=r.low, ratio_ci_high=r.high)
        else:
            result["note"] = "the best group has no error, so the ratio is infinite"
        if n_episodes < MIN_EPISODES:
            result["note"] = (result["note"] + "; " if result["note"] else "") + \
                f"only {n_episodes} episode(s): the interval is unreliable"
    result["flagged"] = bool(np.isfinite(result["gap_ci_low"]) and result["gap_ci_low"] > 0)
    return result


def disparity_table(predictions: pd.DataFrame, by_list: Sequence[str | Sequence[str]], **kwargs: Any) -> pd.DataFrame:
    """:func:`disparity` for several groupings, one row each (for a dashboard overview)."""
    rows = []
    for by in by_list:
        d = disparity(predictions, by, **kwargs)
        d = dict(d, by=", ".join(as_columns(by)), too_small_groups=len(d["too_small_groups"]))
        rows.append(d)
    return pd.DataFrame(rows)


__all__ = ["disparity", "disparity_table"]
