"""EpisodeResult: what the views draw for the current episode (predictions and map coordinates)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fsl_xai.episodes import Episode
from fsl_xai.guard import GuardScores
from fsl_xai.intervals import wilson_interval


@dataclass
class EpisodeResult:
    """Predictions of the current episode (all arrays numpy), computed by fsl_xai from the fitted episode.

    Attributes:
        logits: (n_query, n_way); distances: minus the logits.
        pred, true: (n_query,) episode labels (true is -1 when unknown).
        correct: (n_query,) bool; margin: (n_query,) predicted minus runner-up logit (>= 0).
        support_xy, query_xy: (n, 2) projected embeddings; proto_xy: (n_way, 2) projected prototypes;
        prev_proto_xy: where the prototypes were before the last support edit (None after a resample).
        accuracy, n, ci95: over the queries with a known label (one episode: its queries are
            independent given the support set, so the interval is Wilson's).
        guard: the domain guard's scores and flags of the queries (None without a guard).
        pred_sets: each query's conformal prediction set ("lymphocyte|monocyte", most probable
            first); set_size: (n_query,) classes in it; alpha: their miss rate (None without sets).
    """

    episode_id: str
    classes: tuple[str, ...]
    logits: np.ndarray
    pred: np.ndarray
    true: np.ndarray
    margin: np.ndarray
    support_labels: np.ndarray
    support_xy: np.ndarray
    query_xy: np.ndarray
    proto_xy: np.ndarray
    prev_proto_xy: np.ndarray | None
    projection: str
    guard: GuardScores | None = None
    pred_sets: tuple[str, ...] | None = None
    set_size: np.ndarray | None = None
    alpha: float | None = None

    @property
    def distances(self) -> np.ndarray:
        return -self.logits

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.true

    @property
    def n(self) -> int:
        return int((self.true >= 0).sum())

    @property
    def accuracy(self) -> float:
        known = self.true >= 0
        return float(self.correct[known].mean()) if known.any() else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        known = self.true >= 0
        return wilson_interval(int(self.correct[known].sum()), int(known.sum()))

    @property
    def ood_flag(self) -> np.ndarray:
        """(n_query,) bool: queries the domain guard flags (all False without a guard)."""
        return np.zeros(len(self.pred), dtype=bool) if self.guard is None else np.asarray(self.guard.flags, dtype=bool)

    @property
    def n_flagged(self) -> int | None:
        """Flagged queries among those with a known label (the ones an accuracy counts); None
        without a guard."""
        return None if self.guard is None else int(self.ood_flag[self.true >= 0].sum())

    def warning(self, index: int) -> str | None:
        """The domain guard's warning for query ``index``; None when it is not flagged."""
        return None if self.guard is None else self.guard.warning(index)

    def query_table(self, episode: Episode) -> pd.DataFrame:
        """One row per query of ``episode`` (the episode of this result): sample id, true and predicted
        class, correct, margin, the distance to each class (``dist_<class>``), and, where known,
        ``ood_score`` / ``ood_flag`` (domain guard) and ``pred_set`` / ``set_size`` (conformal)."""
        table = pd.DataFrame({
            "query_index": np.arange(len(self.pred)), "sample_id": list(episode.query_ids),
            "true_class": [episode.classes[y] if y >= 0 else "?" for y in self.true],
            "pred_class": [episode.classes[y] for y in self.pred], "correct": self.correct, "margin": self.margin})
        for i, c in enumerate(episode.classes):
            table[f"dist_{c}"] = self.distances[:, i]
        if self.guard is not None:
            table["ood_score"] = self.guard.scores
            table["ood_flag"] = self.ood_flag
        if self.pred_sets is not None and self.set_size is not None:
            table["pred_set"] = list(self.pred_sets)
            table["set_size"] = self.set_size
        return table
