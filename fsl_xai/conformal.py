"""Split-conformal prediction sets for few-shot episodes: a set of classes per query that holds the
true class with probability at least 1 - alpha.

Typical use::

    held_in = evaluate(model, val_images, n_way=3, n_shot=5, n_query=15, episodes=600, seed=1)
    calibration = calibrate(held_in.predictions, alpha=0.1)
    result = evaluate(model, test_images, n_way=3, n_shot=5, n_query=15, episodes=600, seed=0)
    table = add_prediction_sets(result.predictions, calibration)   # pred_set, set_size columns
    set_text(table.pred_set[0])                                    # "lymphocyte or monocyte"
    report = conformal_report(table, calibration)                  # coverage, mean set size, intervals

Score: the LAC score (Sadinle, Lei and Wasserman 2019), one minus the softmax probability of the
true class, where the probabilities are the softmax of the episode's logits (minus the distances
of a prototype model, the ``dist_<class>`` columns of the per-query table). A class joins a query's
set when its probability is at least ``1 - threshold``. Among sets with the coverage guarantee built
from the same probabilities, LAC gives the smallest sets on average; the adaptive (APS) score gives
larger ones, and with 2 to 5 classes per episode a small set is what tells the reader something.
The predicted class is always in the set: without it a query none of whose classes reaches the
threshold would get an empty set, and adding a class never lowers coverage.

Calibration episodes: held-in episodes with the evaluation's protocol and classes but other
queries, by default drawn from the validation split (``fsl-xai evaluate --conformal`` does this):
the validation and test splits are random image splits of one source, so calibration and test
episodes are exchangeable, which is all the guarantee needs, and no test image calibrates its own
set. Episodes of the test split drawn with another seed are exchangeable too (the fallback when a
set has no validation split). Calibrating on other classes (the training classes) would not be:
their scores follow another distribution.

Guarantee with episodes: queries of one episode share a support set, so they are not exchangeable
one by one; whole episodes are. With N calibration episodes of Q queries each, the threshold is the
k-th smallest calibration score, k = ceil((1 - alpha) (N + 1) Q). The k-th smallest of all (N + 1) Q
scores of the calibration and test episodes is a symmetric function of the episodes, at least
(1 - alpha) of those scores lie at or below it, so by exchangeability the expected share of a test
episode's scores at or below it is at least 1 - alpha; dropping the test episode's scores can only
raise the k-th smallest. Hence the expected coverage of a test query is at least 1 - alpha. With
one query per episode (a table without an ``episode`` column) this is the usual split-conformal
quantile, ceil((1 - alpha)(n + 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError
from .intervals import Interval, cluster_bootstrap, proportion_interval

#: the nonconformity score: one minus the softmax probability of the true class
SCORE = "lac"
#: joins the class names of a set in the ``pred_set`` column ("lymphocyte|monocyte")
SET_SEPARATOR = "|"
#: prefix of the per-query table's distance columns (minus the logits), one per class
DIST_PREFIX = "dist_"


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise DataError(f"alpha must lie strictly between 0 and 1 (the share of queries whose set may miss the "
                        f"true class), got {alpha}; use 0.1 for 90% coverage")
    return float(alpha)


def class_probabilities(predictions: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...]]:
    """The softmax probabilities of every query over its episode's classes.

    Args:
        predictions: a per-query table with the ``dist_<class>`` columns (minus the logits; NaN for
            the classes outside a row's episode).

    Returns:
        (probabilities, classes): (n_queries, n_classes) float64, NaN outside the row's episode,
        the rest summing to one; and the class names of the columns.

    Raises:
        DataError: no distance columns, or a row without any finite distance.
    """
    columns = [c for c in predictions.columns if isinstance(c, str) and c.startswith(DIST_PREFIX)]
    if not columns:
        raise DataError("the table has no dist_<class> columns; pass the per-query table of evaluate() (its "
                        "predictions)")
    logits = -predictions[columns].to_numpy(dtype=np.float64)
    finite = np.isfinite(logits)
    if not finite.any(axis=1).all():
        raise DataError("some rows of the table have no finite distance; each query needs its episode's distances")
    logits = np.where(finite, logits, -np.inf)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # exp(-inf) = 0 outside the episode
    probabilities = np.where(finite, shifted / shifted.sum(axis=1, keepdims=True), np.nan)
    return probabilities, tuple(c[len(DIST_PREFIX):] for c in columns)


def _true_columns(predictions: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    if "true_class" not in predictions.columns:
        raise DataError("the table has no true_class column; calibrating and measuring coverage need the true "
                        "classes of the queries")
    index = {c: i for i, c in enumerate(classes)}
    true = predictions["true_class"].map(index)
    if true.isna().any():
        missing = sorted(set(predictions["true_class"][true.isna()].astype(str)))
        raise DataError(f"true classes {missing} have no dist_<class> column in the table")
    return true.to_numpy(dtype=np.int64)


def nonconformity_scores(predictions: pd.DataFrame) -> np.ndarray:
    """The LAC score of every query, (n_queries,) float64: one minus the softmax probability of its
    true class (0: the model is certain of the right class; near 1: it gives it no weight)."""
    probabilities, classes = class_probabilities(predictions)
    true = _true_columns(predictions, classes)
    return 1.0 - probabilities[np.arange(len(true)), true]


def _episode_codes(predictions: pd.DataFrame) -> np.ndarray:
    """An integer code per row for its episode; each row its own episode without the column."""
    if "episode" not in predictions.columns:
        return np.arange(len(predictions))
    return pd.factorize(predictions["episode"])[0]


@dataclass(frozen=True)
class ConformalCalibration:
    """A calibrated threshold on the LAC score (see the module docstring).

    Attributes:
        alpha: the allowed miss rate; sets hold the true class with probability >= 1 - alpha.
        threshold: the k-th smallest calibration score; a class is in a query's set when one minus
            its probability is at most this.
        n_calibration: calibration queries; n_episodes: calibration episodes;
            queries_per_episode: queries in each of them.
        score: the nonconformity score, ``"lac"``.
        calibration_data: what the calibration episodes were drawn from (free text).
    """

    alpha: float
    threshold: float
    n_calibration: int
    n_episodes: int
    queries_per_episode: int
    score: str = SCORE
    calibration_data: str = ""

    def in_set(self, probabilities: np.ndarray) -> np.ndarray:
        """(n, K) bool: the classes in each query's set, from its (n, K) probabilities (NaN outside
        the episode, as :func:`class_probabilities` gives them). A class of the episode is in when
        its score is at most the threshold; the most probable class always is."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            members = 1.0 - probabilities <= self.threshold  # NaN (outside the episode) compares False
        members[np.arange(len(probabilities)), np.nanargmax(probabilities, axis=1)] = True
        return members

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {"alpha": self.alpha, "score": self.score, "threshold": self.threshold,
                "n_calibration": self.n_calibration, "n_episodes": self.n_episodes,
                "queries_per_episode": self.queries_per_episode, "calibration_data": self.calibration_data}


def calibrate(predictions: pd.DataFrame, alpha: float, calibration_data: str = "") -> ConformalCalibration:
    """Calibrate prediction sets on the per-query table of held-in episodes.

    Args:
        predictions: the per-query table of ``evaluate`` on calibration episodes (columns
            ``dist_<class>``, ``true_class`` and ``episode``; without ``episode`` each row counts
            as an episode of its own). Use other episodes than the ones the sets are for, with the
            same protocol and classes (see the module docstring).
        alpha: the allowed miss rate, e.g. 0.1 for sets that hold the true class 90% of the time.
        calibration_data: what the episodes were drawn from, kept for reports.

    Returns:
        The calibration; :func:`add_prediction_sets` applies it to another table.

    Raises:
        DataError: alpha outside (0, 1), a table without the needed columns, episodes of unequal
            size, or too few calibration episodes for this alpha.
    """
    alpha = _check_alpha(alpha)
    scores = nonconformity_scores(predictions)
    sizes = np.bincount(_episode_codes(predictions))
    if len(sizes) == 0:
        raise DataError("the calibration table is empty; evaluate some held-in episodes first")
    if (sizes != sizes[0]).any():
        raise DataError(f"calibration episodes have from {sizes.min()} to {sizes.max()} queries; the guarantee "
                        "needs episodes of one size (as evaluate draws them)")
    n_episodes, per_episode = len(sizes), int(sizes[0])
    rank = math.ceil(round((1 - alpha) * (n_episodes + 1) * per_episode, 9))
    if rank > len(scores):
        need = math.ceil(round((1 - alpha) / alpha, 9))
        raise DataError(f"{n_episodes} calibration episodes are too few for alpha = {alpha}: at least {need} are "
                        "needed (1 - alpha of one more episode's queries must fit below the threshold); evaluate "
                        "more held-in episodes or raise alpha")
    threshold = float(np.partition(scores, rank - 1)[rank - 1])
    return ConformalCalibration(alpha=alpha, threshold=threshold, n_calibration=len(scores), n_episodes=n_episodes,
                                queries_per_episode=per_episode, calibration_data=calibration_data)


def add_prediction_sets(predictions: pd.DataFrame, calibration: ConformalCalibration) -> pd.DataFrame:
    """The per-query table with two more columns: ``pred_set``, the class names of each query's set
    joined by ``|``, most probable first ("lymphocyte|monocyte"; :func:`set_text` gives
    "lymphocyte or monocyte"), and ``set_size`` (int, >= 1).

    Args:
        predictions: a per-query table with ``dist_<class>`` columns (from ``evaluate``).
        calibration: from :func:`calibrate` on other, held-in episodes.

    Returns:
        A new table; the given one is not changed.

    Raises:
        DataError: no distance columns, or a class name that contains ``|``.
    """
    probabilities, classes = class_probabilities(predictions)
    clash = [c for c in classes if SET_SEPARATOR in c]
    if clash:
        raise DataError(f"class names {clash} contain {SET_SEPARATOR!r}, which separates the classes of a set; "
                        "rename those classes")
    members = calibration.in_set(probabilities)
    # members are the most probable classes, so each set is a prefix of the descending order
    # (NaN, outside the episode, sorts last)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    sizes = members.sum(axis=1)
    names = np.asarray(classes, dtype=object)
    sets = [SET_SEPARATOR.join(names[row[:size]]) for row, size in zip(order, sizes, strict=True)]
    return predictions.assign(pred_set=sets, set_size=sizes.astype(np.int64))


def set_text(pred_set: str | Sequence[str]) -> str:
    """A prediction set as words: "lymphocyte", "lymphocyte or monocyte", "a, b or c".

    Args:
        pred_set: a ``pred_set`` value ("lymphocyte|monocyte") or a sequence of class names.
    """
    names = pred_set.split(SET_SEPARATOR) if isinstance(pred_set, str) else list(pred_set)
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"


def covered(predictions: pd.DataFrame) -> np.ndarray:
    """(n_queries,) bool: whether each query's ``pred_set`` holds its ``true_class``."""
    missing = {"pred_set", "true_class"} - set(predictions.columns)
    if missing:
        raise DataError(f"the table lacks {sorted(missing)}; add the sets with add_prediction_sets first")
    return np.fromiter((t in s.split(SET_SEPARATOR) for t, s in zip(predictions["true_class"],
                                                                   predictions["pred_set"], strict=True)),
                       dtype=bool, count=len(predictions))


@dataclass(frozen=True)
class ConformalReport:
    """How the sets did on a table of test episodes.

    Attributes:
        alpha: the calibration's miss rate.
        coverage: share of queries whose set holds the true class, with its interval (a cluster
            bootstrap over episodes; ``n`` queries).
        mean_set_size: mean classes per set, with its interval (the same bootstrap; ``n`` queries).
        n_queries, n_episodes: the table's size.
        calibration: the calibration the sets came from.
    """

    alpha: float
    coverage: Interval
    mean_set_size: Interval
    n_queries: int
    n_episodes: int
    calibration: ConformalCalibration

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values; an undefined interval end is null."""
        return {"alpha": self.alpha, "coverage": self.coverage.to_dict(),
                "mean_set_size": self.mean_set_size.to_dict(), "n_queries": self.n_queries,
                "n_episodes": self.n_episodes, "calibration": self.calibration.to_dict()}


def conformal_report(predictions: pd.DataFrame, calibration: ConformalCalibration, n_boot: int = 2000,
                     seed: int = 0) -> ConformalReport:
    """Coverage and mean set size of a table with prediction sets, each with its 95% interval.

    Queries of one episode share a support set, so both intervals resample whole episodes (a
    cluster bootstrap, :mod:`fsl_xai.intervals`); a table without ``episode`` counts each row as
    its own.

    Args:
        predictions: a table from :func:`add_prediction_sets` (columns ``pred_set``, ``set_size``,
            ``true_class`` and ``episode``).
        calibration: the calibration behind the sets.
        n_boot, seed: bootstrap resamples and their seed.
    """
    hit = covered(predictions)
    codes = _episode_codes(predictions)
    totals = np.bincount(codes).astype(np.float64)
    coverage = proportion_interval(np.bincount(codes, weights=hit), totals, n_boot=n_boot, seed=seed)
    set_sums = np.bincount(codes, weights=predictions["set_size"].to_numpy(dtype=np.float64))
    size = cluster_bootstrap(np.stack([set_sums, totals], axis=1), lambda s: s[..., 0] / s[..., 1],
                             n_boot=n_boot, seed=seed)
    size = replace(size, n=len(predictions))  # as coverage's: the queries behind it (episodes: n_episodes)
    return ConformalReport(alpha=calibration.alpha, coverage=coverage, mean_set_size=size,
                           n_queries=len(predictions), n_episodes=len(totals), calibration=calibration)


__all__ = ["DIST_PREFIX", "SCORE", "SET_SEPARATOR", "ConformalCalibration", "ConformalReport", "add_prediction_sets",
           "calibrate", "class_probabilities", "conformal_report", "covered", "nonconformity_scores", "set_text"]
