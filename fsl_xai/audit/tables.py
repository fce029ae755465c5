"""The audit's tables, from the per-query table of :func:`fsl_xai.evaluation.evaluate`: the query
table of the folder format, accuracy with episode-aware intervals, and the subgroup table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..data import ImageSet
from ..errors import DataError
from ..intervals import json_number, proportion_interval
from .spec import IDENTIFYING_COLUMNS


def by_columns(images: ImageSet, by: Sequence[str]) -> None:
    """Check that every ``--by`` column is a shareable metadata column of the images."""
    allowed = [c for c in images.metadata.columns if c not in IDENTIFYING_COLUMNS]
    for column in by:
        if column not in allowed:
            raise DataError(f"--by {column}: {images.name} has no metadata column {column!r}; its columns are "
                            f"{allowed}")


def meta_name(predictions: pd.DataFrame, column: str) -> str:
    """The name of a metadata column in the evaluation table (``meta_<c>`` when it clashed)."""
    return column if column in predictions.columns else f"meta_{column}"


def query_table(predictions: pd.DataFrame, image_index: np.ndarray, by: Sequence[str]) -> pd.DataFrame:
    """The folder's ``queries.parquet``: one row per query in (episode, query) order, no sample ids."""
    from ..metrics import class_probabilities

    probs, names = class_probabilities(predictions)
    position = {n: i for i, n in enumerate(names)}
    pred_pos = predictions["pred_class"].map(position).to_numpy(dtype=np.int64)
    table = pd.DataFrame({
        "row": np.arange(len(predictions), dtype=np.int64),
        "episode": predictions["episode"].to_numpy(dtype=np.int64),
        "query": predictions["query_index"].to_numpy(dtype=np.int64),
        "image_index": np.asarray(image_index, dtype=np.int64),
        "true": predictions["true_class"].astype(str).to_numpy(),
        "pred": predictions["pred_class"].astype(str).to_numpy(),
        "correct": predictions["correct"].to_numpy(dtype=bool),
        "margin": predictions["margin"].to_numpy(dtype=np.float64),
        "confidence": probs[np.arange(len(probs)), pred_pos],
    })
    if "ood_score" in predictions.columns:
        table["ood_score"] = predictions["ood_score"].to_numpy(dtype=np.float64)
        table["ood_flag"] = predictions["ood_flag"].to_numpy(dtype=bool)
    for column in by:
        table[column] = predictions[meta_name(predictions, column)].to_numpy()
    return table


def _per_episode(mask: np.ndarray, correct: np.ndarray, episode: np.ndarray, n_episodes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    events = np.bincount(episode[mask], weights=correct[mask].astype(np.float64), minlength=n_episodes)
    totals = np.bincount(episode[mask], minlength=n_episodes).astype(np.float64)
    return events, totals


def accuracy_summary(predictions: pd.DataFrame, classes: Sequence[str], seed: int) -> dict[str, Any]:
    """``accuracy.json``: pooled accuracy and per-class accuracy (recall), each with a cluster
    bootstrap 95% interval over episodes (:func:`fsl_xai.intervals.proportion_interval`)."""
    episode = predictions["episode"].to_numpy(dtype=np.int64)
    correct = predictions["correct"].to_numpy(dtype=bool)
    n_episodes = int(episode.max()) + 1 if len(episode) else 0
    every = np.ones(len(correct), dtype=bool)
    events, totals = _per_episode(every, correct, episode, n_episodes)
    overall = proportion_interval(events, totals, seed=seed)
    flagged = int(predictions["ood_flag"].sum()) if "ood_flag" in predictions.columns else None
    out: dict[str, Any] = {"accuracy": {
        "value": json_number(overall.estimate), "low": json_number(overall.low), "high": json_number(overall.high),
        "n": len(correct), "n_episodes": int((totals > 0).sum()), "n_flagged": flagged, "method": overall.method}}
    per_class = []
    true = predictions["true_class"].astype(str).to_numpy()
    for cls in classes:
        events, totals = _per_episode(true == cls, correct, episode, n_episodes)
        if totals.sum() == 0:
            continue
        iv = proportion_interval(events, totals, seed=seed)
        per_class.append({"class": cls, "value": json_number(iv.estimate), "low": json_number(iv.low),
                          "high": json_number(iv.high), "n": int(totals.sum()), "n_episodes": int((totals > 0).sum()),
                          "method": iv.method})
    out["per_class"] = per_class
    return out


def subgroup_rows(predictions: pd.DataFrame, by: Sequence[str], seed: int) -> pd.DataFrame:
    """``subgroups.parquet``: one row per (column, group) from :func:`fsl_xai.metrics.subgroup_report`
    (error rate with a cluster bootstrap interval over episodes), with the gap to the overall error rate."""
    from ..metrics import subgroup_report

    overall_error = float(1.0 - predictions["correct"].to_numpy(dtype=bool).mean())
    parts = []
    for column in by:
        name = meta_name(predictions, column)
        report = subgroup_report(predictions, by=name, seed=seed, per_class=False, include_overall=False)
        t = report.table
        parts.append(pd.DataFrame({
            "column": column, "group": t[name].astype(str).to_numpy(), "n": t["n"].to_numpy(dtype=np.int64),
            "n_episodes": t["n_episodes"].to_numpy(dtype=np.int64),
            "error_rate": t["error_rate"].to_numpy(dtype=np.float64),
            "low": t["error_ci_low"].to_numpy(dtype=np.float64), "high": t["error_ci_high"].to_numpy(dtype=np.float64),
            "gap": t["error_rate"].to_numpy(dtype=np.float64) - overall_error,
            "n_errors": t["n_errors"].to_numpy(dtype=np.int64), "ci_method": t["ci_method"].astype(str).to_numpy(),
            "too_small": t["too_small"].to_numpy(dtype=bool), "few_episodes": t["few_episodes"].to_numpy(dtype=bool),
            "note": t["note"].astype(str).to_numpy()}))
    return pd.concat(parts, ignore_index=True)


__all__ = ["accuracy_summary", "by_columns", "meta_name", "query_table", "subgroup_rows"]
