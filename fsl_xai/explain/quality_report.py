"""The quality table: every quality metric for several attribution methods on the same queries, one
row per method x metric, with the number of queries where the metric is defined (``n``), where it
is not (``n_undefined``: flat maps, maps without positive attribution, empty masks), and a 95%
confidence interval over the defined ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from ..intervals import mean_interval, wilson_interval
from ..models import FittedEpisode
from .core import as_images, eval_mode, fitted_classes, require_fitted
from .deletion import deletion_insertion
from .infidelity import infidelity_sensitivity
from .localization import localization
from .method_maps import MethodLike, method_attributions, method_name, random_maps
from .randomization import randomization_check
from .support_randomization import DEFAULT_SUPPORT_THRESHOLD, support_check

#: metrics where a larger value means a better explanation (others: smaller is better)
HIGHER_IS_BETTER = {
    "deletion_auc": False, "insertion_auc": True, "pointing_game": True, "energy_inside_mask": True,
    "randomization_spearman": False, "infidelity": False, "sensitivity_max": False,
    "support_labels_spearman": False, "support_images_spearman": False,
}
#: the metric groups ``quality_table`` can compute
ALL_METRICS = ("deletion", "localization", "randomization", "support", "infidelity")
#: the table's metric for each support perturbation
SUPPORT_METRICS = {"shuffled_labels": "support_labels_spearman", "other_images": "support_images_spearman"}
#: the table's columns, in order
COLUMNS = ["method", "metric", "mean", "n", "n_undefined", "ci_low", "ci_high", "ci_method", "higher_is_better",
           "reference", "threshold", "status"]


def _row(method: str, metric: str, values: Any, ci: str, seed: int, threshold: float | None = None,
         status: str | None = None, reference: float | None = None) -> dict:
    """One table row; NaN values are the undefined ones (counted, not averaged)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    defined = v[np.isfinite(v)]
    if ci == "wilson":
        low, high = wilson_interval(float(defined.sum()), len(defined)) if len(defined) else (np.nan, np.nan)
        mean = float(defined.mean()) if len(defined) else np.nan
    else:
        interval = mean_interval(defined, method=ci, seed=seed)
        mean, low, high = interval.estimate, interval.low, interval.high
    return {"method": method, "metric": metric, "mean": mean, "n": int(len(defined)),
            "n_undefined": int(len(v) - len(defined)), "ci_low": float(low), "ci_high": float(high),
            "ci_method": ci, "higher_is_better": HIGHER_IS_BETTER.get(metric), "reference": reference,
            "threshold": threshold, "status": status}


def _mean_or_none(values: np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def quality_table(
    fitted: FittedEpisode,
    query_images: Any,
    methods: Sequence[MethodLike],
    support_images: Any = None,
    masks: Any = None,
    targets: Any = "predicted",
    contrasts: Any = None,
    seed: int = 0,
    metrics: Sequence[str] = ALL_METRICS,
    steps: int = 20,
    baseline: Any = "blur",
    output: str = "probability",
    tolerance: int = 0,
    randomization_layers: str | Sequence[str] = "full",
    randomization_threshold: float = 0.5,
    other_images: Any = None,
    support_threshold: float = DEFAULT_SUPPORT_THRESHOLD,
    ci: str = "t",
    method_params: dict[str, dict] | None = None,
    infidelity_kwargs: dict | None = None,
    include_random: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Quality of several attribution methods on the same queries, one row per method x metric.

    Metrics (``metrics`` chooses groups): ``deletion_auc`` and ``insertion_auc`` (see
    :func:`~fsl_xai.explain.deletion.deletion_insertion`); with ``masks``: ``pointing_game`` and
    ``energy_inside_mask``; ``randomization_spearman`` (|map| rank correlation with the fully
    randomised model, with a status against ``randomization_threshold``; needs the support images);
    ``support_labels_spearman`` and ``support_images_spearman`` (|map| rank correlation with the
    maps of the same queries when the support labels are shuffled, or the support images replaced
    by images of other classes; a status against ``support_threshold``: "failed" flags a method
    whose maps ignore the support set, see :mod:`~fsl_xai.explain.support_randomization`);
    ``infidelity`` and ``sensitivity_max``. With ``include_random`` a seeded random-map row
    ("random") gives the chance level for deletion, insertion and localisation; every method's row
    carries it in ``reference``.

    A metric that is undefined for a query (a flat map, a map without positive attribution, an empty
    mask; see each metric's module) is left out of ``mean`` and its interval and counted in
    ``n_undefined``; ``n + n_undefined`` is always the number of queries.

    Args:
        fitted: the fitted episode (not changed).
        query_images: (n, C, H, W).
        methods: registry names and/or callables.
        support_images: the images ``fitted`` was fitted with; needed for randomisation.
        masks: (n, H, W) bool lesion masks of the queries, or None.
        targets, contrasts: explained classes, as in ``deletion_insertion`` (resolved once and
            shared by every method).
        seed: one seed for maps, tie-breaking, perturbations, randomisation and bootstrap.
        metrics: subset of ("deletion", "localization", "randomization", "support", "infidelity").
        steps, baseline, output: deletion/insertion settings.
        tolerance: pointing-game tolerance in pixels.
        randomization_layers: "full" (default, one randomised model) or "cascade"/"independent".
        randomization_threshold: fail threshold for the randomisation correlation.
        other_images: (m, C, H, W) images of classes outside the episode for the "other images"
            support perturbation (default: the images of the episode's next class).
        support_threshold: fail threshold for the support-set correlations.
        ci: "t" (Student t) or "bootstrap" for continuous metrics; the pointing game always uses
            the Wilson interval (it is a proportion). The interval used is in ``ci_method``.
        method_params: extra parameters per method name, e.g. {"integrated_gradients": {"n_steps": 32}}.
        infidelity_kwargs: passed to ``infidelity_sensitivity``.
        include_random: add the random-map reference rows.
        progress: show a progress bar over methods.

    Returns:
        DataFrame with the columns of ``COLUMNS``: method, metric, mean, n, n_undefined, ci_low,
        ci_high, ci_method, higher_is_better, reference, threshold, status ("passed" / "failed" /
        "undefined" for the randomisation and support checks, None for metrics without a threshold).
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise DataError(f"unknown metric group(s) {sorted(unknown)}; choose from {list(ALL_METRICS)}")
    if not methods:
        raise DataError("give at least one method")
    if ci not in ("t", "bootstrap"):
        raise DataError(f"unknown ci {ci!r}; use 't' or 'bootstrap'")
    fitted = require_fitted(fitted, "quality_table")
    x = as_images(query_images)
    n = len(x)
    if "randomization" in metrics and support_images is None:
        raise DataError("the randomisation check needs the support set's images (support_images): prototypes "
                        "must be recomputed with the randomised backbone; pass them or drop 'randomization' "
                        "from metrics")
    mk = None
    if masks is not None and "localization" in metrics:
        mk = torch.as_tensor(np.asarray(masks)).bool()
        if mk.ndim != 3 or len(mk) != n:
            raise DataError(f"masks must have shape (n, H, W) with n = {n} queries, got {tuple(mk.shape)}")
    tgt, con = fitted_classes(fitted, x, targets, contrasts)
    method_params = method_params or {}
    di_kwargs = {"steps": steps, "baseline": baseline, "output": output, "seed": seed}

    rows: list[dict] = []
    ref_del = ref_ins = ref_hit = ref_energy = None
    if include_random and ("deletion" in metrics or mk is not None):
        rmaps = random_maps((n, *x.shape[2:]), seed=seed)
        if "deletion" in metrics:
            di = deletion_insertion(fitted, x, rmaps, tgt, con, **di_kwargs)
            ref_del, ref_ins = _mean_or_none(di.deletion_auc), _mean_or_none(di.insertion_auc)
            rows.append(_row("random", "deletion_auc", di.deletion_auc, ci, seed))
            rows.append(_row("random", "insertion_auc", di.insertion_auc, ci, seed))
        if mk is not None:
            loc = localization(rmaps, mk, tolerance)
            ref_hit, ref_energy = _mean_or_none(loc.pointing_hit), _mean_or_none(loc.energy_inside)
            rows.append(_row("random", "pointing_game", loc.pointing_hit, "wilson", seed))
            rows.append(_row("random", "energy_inside_mask", loc.energy_inside, ci, seed))

    iterator: Any = methods
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(methods, desc="explanation quality", unit="method")
    for method in iterator:
        name = method_name(method)
        params = dict(method_params.get(name, {}))
        layer = params.pop("layer", None)
        with eval_mode(fitted):
            attr = method_attributions(fitted, x, method, tgt, con, seed, layer, params)
        maps = attr.sum(1) if attr.ndim == 4 else attr
        if "deletion" in metrics:
            di = deletion_insertion(fitted, x, maps, tgt, con, **di_kwargs)
            rows.append(_row(name, "deletion_auc", di.deletion_auc, ci, seed, reference=ref_del))
            rows.append(_row(name, "insertion_auc", di.insertion_auc, ci, seed, reference=ref_ins))
        if mk is not None:
            loc = localization(maps, mk, tolerance)
            rows.append(_row(name, "pointing_game", loc.pointing_hit, "wilson", seed, reference=ref_hit))
            rows.append(_row(name, "energy_inside_mask", loc.energy_inside, ci, seed, reference=ref_energy))
        if "randomization" in metrics:
            rc = randomization_check(fitted, x, method, support_images, layers=randomization_layers, targets=tgt,
                                     contrasts=con, threshold=randomization_threshold, seed=seed, layer=layer,
                                     maps=maps, **params)
            rows.append(_row(name, "randomization_spearman", rc.final_spearman, ci, seed,
                             threshold=randomization_threshold, status=rc.status))
        if "support" in metrics:
            sc = support_check(fitted, x, method, other_images, targets=tgt, contrasts=con, threshold=support_threshold,
                               seed=seed, layer=layer, maps=maps, **params)
            for variant, status in zip(sc.variants, sc.statuses, strict=True):
                rows.append(_row(name, SUPPORT_METRICS[variant], sc.spearman(variant), ci, seed,
                                 threshold=support_threshold, status=status))
        if "infidelity" in metrics:
            res = infidelity_sensitivity(fitted, x, method, tgt, con, seed=seed, layer=layer,
                                         attributions=attr if attr.ndim == 4 else None,
                                         **(infidelity_kwargs or {}), **params)
            rows.append(_row(name, "infidelity", res.infidelity, ci, seed))
            rows.append(_row(name, "sensitivity_max", res.sensitivity, ci, seed))
    table = pd.DataFrame(rows, columns=COLUMNS)
    # object, not a string dtype: None (no threshold) stays None rather than becoming NaN
    table["status"] = pd.Series([r["status"] for r in rows], index=table.index, dtype=object)
    return table
