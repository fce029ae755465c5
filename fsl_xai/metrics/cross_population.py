"""Cross-population protocol: the support set comes from one subgroup, queries from another.

For each episode ``i`` (``numpy.random.default_rng([seed, i])``) we draw ``n_way`` classes, then per
class ``n_shot`` support images and ``n_query`` *in-population* queries from the support subgroup
(disjoint), and ``n_query`` *cross-population* queries from the query subgroup. Both query sets
are scored against the same prototypes, so the in-minus-cross accuracy gap is a paired
comparison within each episode; its CI is a cluster bootstrap over episodes
(:func:`fsl_xai.intervals.cluster_bootstrap`). Both image sets are embedded once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..data.imageset import ImageSet
from ..errors import EpisodeError
from ..evaluation import margins, true_margins
from ..intervals import Interval, cluster_bootstrap, proportion_interval

Where = Mapping[str, object] | Callable[[pd.DataFrame], pd.Series] | None


@dataclass
class CrossPopulationResult:
    """In-population vs cross-population accuracy of one protocol run.

    Attributes:
        in_population / cross_population: accuracy :class:`Interval` (cluster bootstrap).
        gap: in minus cross accuracy, with its paired cluster-bootstrap interval.
        flagged: the gap's CI excludes 0.
        n_in / n_cross: queries; episodes: episodes run; n_way, n_shot, n_query: episode shape.
        support_where / query_where: the subgroup definitions (as given, printable).
        predictions: the per-query table (contract columns plus ``population`` = "in" / "cross").
        per_episode: DataFrame with per-episode accuracies (episode, acc_in, acc_cross).
    """

    in_population: Interval
    cross_population: Interval
    gap: Interval
    flagged: bool
    n_in: int
    n_cross: int
    episodes: int
    n_way: int
    n_shot: int
    n_query: int
    support_where: str
    query_where: str
    classes: tuple[str, ...]
    predictions: pd.DataFrame = field(repr=False)
    per_episode: pd.DataFrame = field(repr=False)

    def summary(self) -> pd.DataFrame:
        """Three rows (in-population, cross-population, gap) with estimate, CI, n and method."""
        rows = []
        for name, iv, n in (("in-population", self.in_population, self.n_in),
                            ("cross-population", self.cross_population, self.n_cross),
                            ("gap (in - cross)", self.gap, self.n_in + self.n_cross)):
            rows.append({"quantity": name, "estimate": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "n": n,
                         "episodes": self.episodes, "ci_method": iv.method})
        return pd.DataFrame(rows)[["quantity", "estimate", "ci_low", "ci_high", "n", "episodes", "ci_method"]]


def _select(images: ImageSet, where: Where, what: str) -> np.ndarray:
    if where is None:
        return np.arange(len(images))
    meta = images.metadata
    if callable(where):
        return np.flatnonzero(np.asarray(where(meta), dtype=bool))
    mask = np.ones(len(images), dtype=bool)
    for column, value in dict(where).items():
        if column not in meta.columns:
            raise EpisodeError(f"{what}: no metadata column {column!r} in {images.name}; columns: {list(meta.columns)}")
        values = value if isinstance(value, (list, tuple, set)) else [value]
        mask &= meta[column].isin(list(values)).to_numpy()
    return np.flatnonzero(mask)


def _embed(model, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model.embed(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))))
    return torch.cat(out) if out else torch.empty(0)


def _describe(where: Where) -> str:
    if where is None:
        return "all"
    if callable(where):
        return getattr(where, "__name__", "condition")
    return ", ".join(f"{k}={v}" for k, v in dict(where).items())


def _table(parts: list, src: ImageSet, pos: np.ndarray, class_names: tuple[str, ...], population: str) -> pd.DataFrame:
    """The per-query table of one population, built with array operations."""
    episode = np.concatenate([np.full(len(p[3]), p[0]) for p in parts])
    episode_id = np.concatenate([np.full(len(p[3]), p[1], dtype=object) for p in parts])
    query_index = np.concatenate([np.arange(len(p[3])) for p in parts])
    rows = np.concatenate([pos[p[3]] for p in parts])
    chosen = np.concatenate([np.repeat(p[2][None], len(p[3]), 0) for p in parts])
    true_label = np.concatenate([p[4] for p in parts])
    logits = np.concatenate([p[5] for p in parts])
    n = len(rows)
    pred_label = logits.argmax(1)
    names = np.asarray(class_names, dtype=object)
    table = pd.DataFrame({
        "episode": episode, "episode_id": episode_id, "query_index": query_index,
        "sample_id": src.sample_ids[rows], "true_label": true_label, "pred_label": pred_label,
        "true_class": names[chosen[np.arange(n), true_label]], "pred_class": names[chosen[np.arange(n), pred_label]],
        "correct": pred_label == true_label, "margin": margins(logits),
        "true_margin": true_margins(logits, true_label),
    })
    dist = np.full((n, len(class_names)), np.nan)
    dist[np.arange(n)[:, None], chosen] = -logits
    table = pd.concat([table, pd.DataFrame(dist, columns=[f"dist_{c}" for c in class_names])], axis=1)
    meta = src.metadata.iloc[rows].reset_index(drop=True).drop(columns=["sample_id"])
    table = pd.concat([table, meta], axis=1)
    table["population"] = population
    return table


def cross_population(
    model,
    images: ImageSet,
    support_where: Where,
    query_where: Where,
    n_way: int = 2,
    n_shot: int = 5,
    n_query: int = 5,
    episodes: int = 200,
    seed: int = 0,
    classes: list[str] | None = None,
    query_images: ImageSet | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    progress: bool = False,
) -> CrossPopulationResult:
    """Support set from one subgroup, queries from another; in- vs cross-population accuracy.

    Args:
        model: a few-shot model (``embed``, ``fit_embeddings``).
        images: the image set the support (and, by default, the queries) come from.
        support_where / query_where: the subgroups, as ``{"site": "A"}`` (a value or a list of
            values per column) or a callable ``metadata -> bool mask``.
        n_way, n_shot, n_query: the episode shape (n_query queries per class per population).
        episodes: number of episodes; seed: episode ``i`` uses ``default_rng([seed, i])``.
        classes: classes to draw from (default: every class with enough images in both subgroups).
        query_images: take cross-population queries from this set instead (same class names).
        n_boot, confidence: bootstrap settings of the intervals.
        progress: show a tqdm bar over episodes.

    Returns:
        A :class:`CrossPopulationResult`.
    """
    if n_way < 2 or n_shot < 1 or n_query < 1 or episodes < 1:
        raise EpisodeError(f"need n_way >= 2, n_shot >= 1, n_query >= 1, episodes >= 1; got "
                           f"{n_way}, {n_shot}, {n_query}, {episodes}")
    qset = images if query_images is None else query_images
    if qset.class_names != images.class_names:
        raise EpisodeError("query_images must have the same class names, in the same order, as images")
    s_idx = _select(images, support_where, "support_where")
    q_idx = _select(qset, query_where, "query_where")
    if len(s_idx) == 0 or len(q_idx) == 0:
        raise EpisodeError(f"the support subgroup ({_describe(support_where)}) has {len(s_idx)} images and the "
                           f"query subgroup ({_describe(query_where)}) has {len(q_idx)}; both need images")
    s_counts = np.bincount(images.labels[s_idx], minlength=images.n_classes)
    q_counts = np.bincount(qset.labels[q_idx], minlength=qset.n_classes)
    wanted = ([images.class_index(c) for c in classes] if classes is not None else range(images.n_classes))
    eligible = [c for c in wanted if s_counts[c] >= n_shot + n_query and q_counts[c] >= n_query]
    if len(eligible) < n_way:
        detail = ", ".join(f"{images.class_names[c]}: {s_counts[c]} support-side / {q_counts[c]} query-side"
                           for c in wanted)
        raise EpisodeError(
            f"only {len(eligible)} class(es) have at least n_shot + n_query = {n_shot + n_query} images in the support "
            f"subgroup and n_query = {n_query} in the query subgroup, but n_way = {n_way} ({detail}); lower n_way, "
            "n_shot or n_query, or widen the subgroups")
    usable = np.asarray(eligible, dtype=np.int64)

    was_training = model.training
    model.eval()
    try:
        emb_s = _embed(model, images.images[s_idx])
        emb_q = emb_s if (qset is images and np.array_equal(s_idx, q_idx)) else _embed(model, qset.images[q_idx])
    finally:
        model.train(was_training)
    s_pools = {c: np.flatnonzero(images.labels[s_idx] == c) for c in usable}
    q_pools = {c: np.flatnonzero(qset.labels[q_idx] == c) for c in usable}
    s_ids = images.sample_ids[s_idx]
    q_ids = qset.sample_ids[q_idx]

    iterator: Iterable[int] = range(episodes)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="cross-population episodes", unit="episode")
    parts: dict[str, list] = {"in": [], "cross": []}
    acc = np.zeros((episodes, 2))
    cnt = np.zeros((episodes, 2))
    for i in iterator:
        rng = np.random.default_rng([seed, i])
        chosen = usable[np.sort(rng.choice(len(usable), n_way, replace=False))]
        sup, inq, crq = [], [], []
        for c in chosen:
            pool = s_pools[c]
            pick = pool[rng.choice(len(pool), n_shot + n_query, replace=False)]
            sup.append(pick[:n_shot])
            inq.append(pick[n_shot:])
            qpool = q_pools[c]
            # never query an image that is in this episode's support set (overlapping subgroups)
            qpool = qpool[~np.isin(q_ids[qpool], s_ids[pick[:n_shot]])]
            if len(qpool) < n_query:
                raise EpisodeError(f"class {images.class_names[c]!r} has too few query-side images outside the "
                                   f"support set in episode {i}; lower n_query")
            crq.append(qpool[rng.choice(len(qpool), n_query, replace=False)])
        support = np.concatenate(sup)
        fitted = model.fit_embeddings(emb_s[torch.as_tensor(support)],
                                      torch.as_tensor(np.repeat(np.arange(n_way), n_shot)))
        q_labels = np.repeat(np.arange(n_way), n_query)
        for p, (population, idx, emb, ids) in enumerate((("in", np.concatenate(inq), emb_s, s_ids),
                                                         ("cross", np.concatenate(crq), emb_q, q_ids))):
            with torch.no_grad():
                logits = fitted.logits_from_embeddings(emb[torch.as_tensor(idx)]).double().numpy()
            payload = json.dumps([[images.class_names[c] for c in chosen], s_ids[support].tolist(), ids[idx].tolist()])
            digest = hashlib.sha1(payload.encode()).hexdigest()[:12]
            parts[population].append((i, digest, chosen, idx, q_labels, logits))
            correct = logits.argmax(1) == q_labels
            acc[i, p], cnt[i, p] = correct.sum(), len(idx)

    tables = []
    for population, src, pos in (("in", images, s_idx), ("cross", qset, q_idx)):
        tables.append(_table(parts[population], src, pos, images.class_names, population))
    predictions = pd.concat(tables, ignore_index=True).sort_values(["episode", "population"], kind="stable",
                                                                   key=lambda s: s.map({"in": 0, "cross": 1})
                                                                   if s.name == "population" else s)
    predictions = predictions.reset_index(drop=True)
    acc_in = proportion_interval(acc[:, 0], cnt[:, 0], n_boot=n_boot, seed=seed, confidence=confidence)
    acc_cross = proportion_interval(acc[:, 1], cnt[:, 1], n_boot=n_boot, seed=seed, confidence=confidence)

    def gap_stat(sums: np.ndarray) -> np.ndarray:
        # sums of (correct in, queries in, correct cross, queries cross) over episodes
        return sums[..., 0] / sums[..., 1] - sums[..., 2] / sums[..., 3]

    per_episode_counts = np.stack([acc[:, 0], cnt[:, 0], acc[:, 1], cnt[:, 1]], axis=1)
    gap = cluster_bootstrap(per_episode_counts, gap_stat, n_boot=n_boot, seed=seed, confidence=confidence)
    flagged = bool(np.isfinite(gap.low) and (gap.low > 0 or gap.high < 0))
    per_episode = pd.DataFrame({"episode": np.arange(episodes), "acc_in": acc[:, 0] / cnt[:, 0],
                                "acc_cross": acc[:, 1] / cnt[:, 1]})
    return CrossPopulationResult(
        in_population=acc_in, cross_population=acc_cross, gap=gap, flagged=flagged,
        n_in=int(cnt[:, 0].sum()), n_cross=int(cnt[:, 1].sum()), episodes=episodes, n_way=n_way, n_shot=n_shot,
        n_query=n_query, support_where=_describe(support_where), query_where=_describe(query_where),
        classes=tuple(images.class_names[c] for c in usable), predictions=predictions, per_episode=per_episode)
