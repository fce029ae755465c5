"""Fast few-shot evaluation: embed every image once, then score many episodes from the cache.

Typical use::

    result = evaluate(model, images, n_way=3, n_shot=5, n_query=15, episodes=600, seed=0)
    print(result.summary())              # accuracy with its 95% CI and n
    result.predictions                   # the per-query table (docs/CONTRACTS.md)
    result.episode(12)                   # the Episode behind rows with episode == 12

With a domain guard (:mod:`fsl_xai.guard`) the table also gets ``ood_score`` and ``ood_flag``;
prediction sets come from :mod:`fsl_xai.conformal`, applied to the table afterwards.

The embeddings come from the one cache in :mod:`fsl_xai.embeddings` (``embed_all`` and
``clear_embedding_cache`` are also importable from here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .data.imageset import ImageSet
from .embeddings import clear_embedding_cache, embed_all, embedding_fingerprint
from .episodes import Episode, EpisodeSampler
from .errors import DataError, ModelError
from .guard import DomainGuard, add_guard_columns
from .intervals import (
    Interval,
    cluster_bootstrap_proportion,
    json_number,
    mean_interval,
    proportion_interval,
    wilson_interval,
)
from .models.base import FewShotClassifier

#: a progress callback: called with (episodes done, episodes in all)
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# margins
def margins(logits: np.ndarray) -> np.ndarray:
    """How far each decision is from changing: the top logit minus the runner-up.

    Args:
        logits: (..., n_way) scores, higher = more likely.

    Returns:
        (...,) margins, >= 0; zero with a single class.
    """
    logits = np.asarray(logits)
    if logits.shape[-1] < 2:
        return np.zeros(logits.shape[:-1], dtype=np.float64)
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]).astype(np.float64)


def true_margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The true class's logit minus the best other class's: positive when the decision is right.

    Args:
        logits: (..., n_way) scores; labels: (...,) true episode labels 0..n_way-1.

    Returns:
        (...,) signed margins.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)[..., None]
    true_logit = np.take_along_axis(logits, labels, -1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels, -np.inf, -1)
    return true_logit - others.max(-1)


# ---------------------------------------------------------------------------------------------
# evaluation
@dataclass
class EvaluationResult:
    """Accuracy over many episodes, with its 95% CI and the per-query table.

    Attributes:
        accuracy: mean of the per-episode accuracies.
        ci95: (low, high) = accuracy -+ half_width, with half_width = 1.96 * s / sqrt(episodes).
        half_width: the CI's half width.
        episodes, n_way, n_shot, n_query: the protocol (n_query per class).
        per_episode: accuracy of each episode, (episodes,).
        predictions: one row per query (columns in docs/CONTRACTS.md).
        model, dataset: names; model_fingerprint, dataset_fingerprint: hashes; seed, classes: the
            sampler's settings.
    """

    accuracy: float
    ci95: tuple[float, float]
    half_width: float
    episodes: int
    n_way: int
    n_shot: int
    n_query: int
    per_episode: np.ndarray
    predictions: pd.DataFrame
    model: str = ""
    dataset: str = ""
    model_fingerprint: str = ""
    dataset_fingerprint: str = ""
    seed: int = 0
    classes: tuple[str, ...] | None = None
    sampler: EpisodeSampler | None = field(default=None, repr=False, compare=False)

    @property
    def n_queries(self) -> int:
        return len(self.predictions)

    def episode(self, index: int) -> Episode:
        """The episode behind the rows with ``episode == index`` (rebuilt exactly by the sampler)."""
        if self.sampler is None:
            raise ModelError("this result has no sampler attached; rebuild the episode with EpisodeSampler")
        if not 0 <= index < self.episodes:
            raise ModelError(f"episode {index} is out of range 0..{self.episodes - 1}")
        return self.sampler.sample(index)

    def summary(self) -> str:
        low, high = self.ci95
        return (f"{self.model} on {self.dataset}: accuracy {100 * self.accuracy:.2f}% "
                f"(95% CI {100 * low:.2f}-{100 * high:.2f}%, +-{100 * self.half_width:.2f}) over "
                f"{self.episodes} episodes of {self.n_way}-way {self.n_shot}-shot, "
                f"n = {self.n_queries} queries")

    def to_dict(self) -> dict:
        """A JSON-ready summary (no per-query table); an undefined interval (one episode) is null."""
        return {"accuracy": self.accuracy, "ci95": [json_number(self.ci95[0]), json_number(self.ci95[1])],
                "half_width": json_number(self.half_width),
                "episodes": self.episodes, "n_way": self.n_way, "n_shot": self.n_shot, "n_query": self.n_query,
                "n_queries": self.n_queries, "model": self.model, "dataset": self.dataset,
                "model_fingerprint": self.model_fingerprint, "dataset_fingerprint": self.dataset_fingerprint,
                "seed": self.seed, "classes": None if self.classes is None else list(self.classes)}


def evaluate(model: FewShotClassifier, images: ImageSet, n_way: int, n_shot: int, n_query: int,
             episodes: int = 600, seed: int = 0, classes: Sequence[str | int] | None = None,
             progress: bool | Progress = True, batch_size: int = 64, disk_cache: bool = False,
             guard: DomainGuard | None = None) -> EvaluationResult:
    """Evaluate a few-shot model on ``episodes`` episodes drawn from ``images``.

    Every image is embedded once (:func:`embed_all`); each episode then fits the support set from
    the cached embeddings (``model.fit_embeddings``) and scores its queries
    (``fitted.logits_from_embeddings``, all queries of an episode together, so the transductive
    model refines with them). Episodes come from ``EpisodeSampler(images, n_way, n_shot, n_query,
    classes, seed)``: episode ``i`` is ``sampler.sample(i)`` and its ``episode_id`` is in the table.

    SimpleShot uses its base mean as set by ``fit_base`` beforehand (centring is skipped without
    it); the fine-tuning model trains its head on each episode's support embeddings. Each episode
    gets its own fitted episode: the model is not changed (its train/eval mode is restored after
    embedding).

    Args:
        model: a few-shot model with trained weights.
        images: the evaluation image set (e.g. novel classes).
        n_way, n_shot, n_query: classes per episode, support images per class, queries per class.
        episodes: number of episodes.
        seed: sampler seed; the same seed gives the same episodes and results.
        classes: restrict episodes to these classes (names or indices).
        progress: True shows progress bars; a callable is called as ``progress(done, episodes)``
            after each episode (for a progress widget) and no bar is shown.
        batch_size: images per forward pass when embedding.
        disk_cache: also cache embeddings on disk (see :func:`embed_all`).
        guard: a domain guard fitted for this model; the table then gets ``ood_score`` and
            ``ood_flag``, each query scored against the guard's reference and its episode's
            support (:func:`fsl_xai.guard.add_guard_columns`). The accuracies still count every
            query, flagged or not.

    Returns:
        EvaluationResult with accuracy, ci95, per_episode and the per-query ``predictions`` table.

    Raises:
        EpisodeError: the protocol asks for more classes or images than the set has.
        ModelError: the images do not fit the model, or the guard was fitted for another model.
    """
    from tqdm.auto import tqdm

    if episodes < 1:
        raise DataError(f"episodes must be at least 1, got {episodes}")
    # the sampler checks the protocol against the data first, before any long computation
    sampler = EpisodeSampler(images, n_way, n_shot, n_query, classes=classes, seed=seed)
    if guard is not None:
        guard.check_model(model)
        if guard.reference_ is None:  # found now, not after every episode has been scored
            raise ModelError("the domain guard has no reference embeddings (its .npz file was not beside its JSON); "
                             "load it with DomainGuard.load(path) with the .npz beside, or fit it again")
    report = progress if callable(progress) else None
    show_bars = bool(progress) and report is None
    if report is not None:
        report(0, episodes)
    emb = embed_all(model, images, batch_size=batch_size, progress=show_bars, disk_cache=disk_cache)

    n_q = n_way * n_query
    logits = np.empty((episodes, n_q, n_way), dtype=np.float64)
    chosen = np.empty((episodes, n_way), dtype=np.int64)
    query_idx = np.empty((episodes, n_q), dtype=np.int64)
    query_lab = np.empty((episodes, n_q), dtype=np.int64)
    # the guard scores each query against its own episode's support as well
    support_idx = np.empty((episodes, n_way * n_shot), dtype=np.int64) if guard is not None else None
    episode_ids: list[str] = []
    # plain arrays once: reading pandas columns inside the loop costs milliseconds per episode
    sample_ids = np.asarray(images.sample_ids, dtype=object)
    class_names = images.class_names
    dataset_fp = images.fingerprint()
    with torch.no_grad():
        for i in tqdm(range(episodes), desc=f"evaluating {model.name}", unit="episode", disable=not show_bars):
            cls, s, sl, q, ql = sampler.sample_indices(i)
            # index_select rather than emb[s]: advanced indexing stalls now and then on a busy machine
            support = torch.index_select(emb, 0, torch.from_numpy(s))
            query = torch.index_select(emb, 0, torch.from_numpy(q))
            out = model.fit_embeddings(support, torch.from_numpy(sl)).logits_from_embeddings(query)
            logits[i] = out.detach().to(torch.float64).numpy()
            chosen[i], query_idx[i], query_lab[i] = cls, q, ql
            if support_idx is not None:
                support_idx[i] = s
            # the same Episode that sampler.sample(i) builds, without drawing it a second time
            episode_ids.append(Episode(
                classes=tuple(class_names[c] for c in cls), support_ids=tuple(sample_ids[s]),
                support_labels=tuple(sl.tolist()), query_ids=tuple(sample_ids[q]),
                query_labels=tuple(ql.tolist()), dataset=images.name, dataset_fingerprint=dataset_fp,
                seed=seed, index=i).episode_id)
            if report is not None:
                report(i + 1, episodes)

    if not np.isfinite(logits).all():
        raise ModelError(f"{model.name} produced NaN or infinite logits; check the weights and model options")
    predictions, per_episode = _query_table(logits, chosen, query_idx, query_lab, episode_ids, images)
    if guard is not None and support_idx is not None:
        supports = {i: emb[torch.from_numpy(row)] for i, row in enumerate(support_idx)}
        predictions = add_guard_columns(predictions, guard, emb[torch.from_numpy(query_idx.reshape(-1))], supports)
    interval = mean_interval(per_episode, method="normal")  # mean +- 1.96 s / sqrt(episodes)
    chosen_classes = None if classes is None else tuple(images.class_names[images.class_index(c)] for c in classes)
    return EvaluationResult(
        accuracy=interval.estimate, ci95=interval.as_tuple(), half_width=(interval.high - interval.low) / 2,
        episodes=episodes, n_way=n_way, n_shot=n_shot, n_query=n_query, per_episode=per_episode,
        predictions=predictions, model=model.name, dataset=images.name, model_fingerprint=model.fingerprint(),
        dataset_fingerprint=images.fingerprint(), seed=seed, classes=chosen_classes, sampler=sampler,
    )


def _query_table(logits: np.ndarray, chosen: np.ndarray, query_idx: np.ndarray, query_lab: np.ndarray,
                 episode_ids: list[str], images: ImageSet) -> tuple[pd.DataFrame, np.ndarray]:
    """The per-query table, built with array operations over all episodes at once.

    logits: (E, Q, W); chosen: (E, W) class ids; query_idx, query_lab: (E, Q).
    """
    n_ep, n_q, n_way = logits.shape
    pred = logits.argmax(-1)
    correct = pred == query_lab
    per_episode = correct.mean(1)

    margin = margins(logits)
    true_margin = true_margins(logits, query_lab)

    rows = n_ep * n_q
    flat_q = query_idx.reshape(-1)
    true_cls = np.take_along_axis(chosen, query_lab, 1).reshape(-1)
    pred_cls = np.take_along_axis(chosen, pred, 1).reshape(-1)
    names = np.asarray(images.class_names, dtype=object)

    dist = np.full((rows, images.n_classes), np.nan)
    row_ids = np.repeat(np.arange(rows), n_way)
    col_ids = np.repeat(chosen, n_q, axis=0).reshape(-1)
    dist[row_ids, col_ids] = -logits.reshape(-1)

    table = pd.DataFrame({
        "episode": np.repeat(np.arange(n_ep), n_q),
        "episode_id": np.repeat(np.asarray(episode_ids, dtype=object), n_q),
        "query_index": np.tile(np.arange(n_q), n_ep),
        "sample_id": images.sample_ids[flat_q],
        "true_label": query_lab.reshape(-1),
        "pred_label": pred.reshape(-1),
        "true_class": names[true_cls],
        "pred_class": names[pred_cls],
        "correct": correct.reshape(-1),
        "margin": margin.reshape(-1),
        "true_margin": true_margin.reshape(-1),
    })
    dist_table = pd.DataFrame(dist, columns=[f"dist_{c}" for c in images.class_names])
    meta = images.metadata.drop(columns=["sample_id"]).iloc[flat_q].reset_index(drop=True)
    clash = [c for c in meta.columns if c in table.columns or c in dist_table.columns]
    if clash:
        meta = meta.rename(columns={c: f"meta_{c}" for c in clash})
    return pd.concat([table, dist_table, meta], axis=1), per_episode



# ---------------------------------------------------------------------------------------------
# summaries of a per-query table
def accuracy_interval(predictions: pd.DataFrame, confidence: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> Interval:
    """Pooled accuracy of a per-query table with its confidence interval.

    Queries of one episode share a support set, so with an ``episode`` column the interval is a
    cluster bootstrap over episodes (:func:`fsl_xai.intervals.proportion_interval`); without one
    (a single episode's queries) it is Wilson's.
    """
    correct = predictions["correct"].to_numpy(dtype=np.float64)
    if "episode" not in predictions.columns:
        return proportion_interval([correct.sum()], [len(correct)], ci="wilson", confidence=confidence)
    codes, _ = pd.factorize(predictions["episode"])
    events = np.bincount(codes, weights=correct)
    totals = np.bincount(codes).astype(np.float64)
    return proportion_interval(events, totals, n_boot=n_boot, seed=seed, confidence=confidence)


@dataclass(frozen=True)
class ConfusionMatrix:
    """Row-normalised confusion matrix of a per-query table, with an interval for every rate.

    Attributes:
        classes: class names, the order of rows (true) and columns (predicted).
        counts: (K, K) queries of true class i predicted as j.
        rates: (K, K) counts divided by the row total (0 in an empty row).
        low, high: (K, K) confidence interval of each rate (NaN in an empty row).
        method: how the intervals were computed.
    """

    classes: tuple[str, ...]
    counts: np.ndarray
    rates: np.ndarray
    low: np.ndarray
    high: np.ndarray
    method: str


def confusion_matrix(predictions: pd.DataFrame, confidence: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> ConfusionMatrix:
    """The confusion matrix of a per-query table (columns ``true_class``, ``pred_class`` and, for
    many episodes, ``episode``).

    With an ``episode`` column each rate's interval is a cluster bootstrap over the episodes that
    contain the row's class (queries of one episode are not independent); a cell whose per-episode
    rates are all equal (all 0 or all 1, typically) and a row seen in fewer than two episodes get
    Wilson's interval on the pooled counts instead. Without an ``episode`` column every cell gets
    Wilson's interval.
    """
    classes = tuple(sorted(set(predictions["true_class"]) | set(predictions["pred_class"])))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    true = predictions["true_class"].map(index).to_numpy()
    pred = predictions["pred_class"].map(index).to_numpy()
    episode = pd.factorize(predictions["episode"])[0] if "episode" in predictions.columns else np.zeros(len(true), int)
    per_episode = np.zeros((episode.max() + 1 if len(episode) else 0, k, k))
    np.add.at(per_episode, (episode, true, pred), 1)
    counts = per_episode.sum(0)
    totals = counts.sum(1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros((k, k)), where=totals > 0)
    low, high = wilson_interval(counts, np.broadcast_to(totals, (k, k)), confidence)
    method = "wilson"
    if "episode" in predictions.columns:
        method = "cluster_bootstrap (wilson where degenerate)"
        for i in range(k):
            seen = per_episode[:, i, :].sum(1) > 0
            if seen.sum() < 2:
                continue
            events = per_episode[seen, i, :].T  # (K, episodes with class i)
            row_totals = np.broadcast_to(events.sum(0), events.shape)
            rate = events / row_totals
            spread = rate.max(1) > rate.min(1)  # equal rates everywhere: the bootstrap has no spread
            if spread.any():
                _, lo, hi = cluster_bootstrap_proportion(events[spread], row_totals[spread], n_boot=n_boot,
                                                         seed=seed, confidence=confidence)
                low[i, spread], high[i, spread] = lo, hi
    return ConfusionMatrix(classes, counts.astype(np.int64), rates, np.asarray(low), np.asarray(high), method)


__all__ = ["ConfusionMatrix", "EvaluationResult", "Progress", "accuracy_interval", "clear_embedding_cache",
           "confusion_matrix", "embed_all", "embedding_fingerprint", "evaluate", "margins",
           "true_margins"]
