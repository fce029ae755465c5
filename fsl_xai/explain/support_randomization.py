"""The support-set randomisation check, the few-shot analogue of the model-randomisation check: a
map that hardly changes when the support set is destroyed does not explain a few-shot decision.

A few-shot decision depends on two things, the trained weights and the support set. The model
randomisation check (:mod:`~fsl_xai.explain.randomization`) destroys the first; this check destroys
the second and keeps the weights:

- ``"shuffled_labels"``: the support labels are permuted at random (seeded), so every class's
  prototype is built from images of mixed classes; the class counts stay the same.
- ``"other_images"``: every support image is replaced by an image of another class: by the
  ``other_images`` given (images of classes outside the episode, drawn at random, seeded), or when
  none are given by the images of the next class of the episode (class k gets the images of class
  k + 1 mod n_way, cycled when the counts differ).

Each query is explained again for the same explained classes (resolved once on the original
episode), and the maps are compared with the same measure as the model randomisation check: the
Spearman rank correlation of |map| per query. A query whose original map is flat has no ranking
to compare: undefined (NaN), never passing.

**"Ignores the support set"** means: for at least one perturbation, the mean |map| rank
correlation over the queries (where defined) is at or above ``threshold`` (default 0.9): the
maps rank the pixels almost as before although the classes the decision is about are gone. A
map computed from the query alone (its intensity, an edge detector) has correlation exactly 1.
The default is 0.9, higher than the randomisation check's 0.5, because the weights are kept: the
backbone's gradients are still the same function of the query, so part of a gradient map's
ranking (where the object is) survives any support set; what must change is how the pixels rank
inside it. Measured on the tests' trained Conv-4 (synthetic lesions, 12 queries, both
perturbations, with and without a contrast class): saliency, Integrated Gradients, Grad-CAM and
Input x Gradient have means 0.15-0.59 (Input x Gradient above 0.5, so the randomisation
threshold would flag a map that does follow the support set); a map of the query alone has 1.

The interval of each mean is a t interval over the queries of this episode (they share one
support set, so it holds for this episode, not for the method in general); to judge a method
across episodes, run the check on several episodes and pool the results with
:func:`support_check_summary`, which resamples whole episodes (cluster bootstrap).

Every perturbed episode is a new fitted episode (``model.fit`` / ``model.fit_embeddings``); the
fitted episode given and its model are never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from ..intervals import MIN_EPISODES, cluster_bootstrap, mean_interval
from ..models import FittedEpisode
from .core import as_images, eval_mode, fitted_classes, require_fitted
from .method_maps import MethodLike, checked_maps, flat_maps, method_maps, method_name
from .randomization import FAILED, PASSED, UNDEFINED, randomization_status, spearman_rows

#: the support perturbations, in the order of the results
SUPPORT_VARIANTS = ("shuffled_labels", "other_images")
#: a method whose mean |map| rank correlation with a perturbed support set is at or above this ignores it
DEFAULT_SUPPORT_THRESHOLD = 0.9
#: label permutations tried before the one that changes the most labels is taken
_MAX_DRAWS = 200


def shuffled_labels(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A seeded random permutation of support labels (n_support,) that changes a typical share of them.

    A uniform shuffle of n_way balanced classes moves a share 1 - 1/n_way of the labels on average;
    draws that move fewer (the identity, or a draw that keeps most of a class in place) are
    rejected so that the check never compares a support set with itself. After ``_MAX_DRAWS``
    draws the one that moved the most labels is taken. The class counts are unchanged.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    n_way = int(labels.max()) + 1 if len(labels) else 0
    if n_way < 2:
        raise DataError("shuffling the support labels needs at least two classes in the episode")
    wanted = 1.0 - 1.0 / n_way
    g = torch.Generator().manual_seed(int(seed))
    best, best_moved = labels, -1.0
    for _ in range(_MAX_DRAWS):
        candidate = labels[torch.randperm(len(labels), generator=g)]
        moved = float((candidate != labels).float().mean())
        if moved > best_moved:
            best, best_moved = candidate, moved
        if moved >= wanted - 1e-9:
            break
    return best


def _next_class_indices(labels: torch.Tensor) -> torch.Tensor:
    """For each support image of class k, the index of an image of class k + 1 mod n_way (cycled)."""
    n_way = int(labels.max()) + 1
    pools = [torch.nonzero(labels == k).flatten() for k in range(n_way)]
    out = torch.empty_like(labels)
    for k in range(n_way):
        mine, donors = pools[k], pools[(k + 1) % n_way]
        out[mine] = donors[torch.arange(len(mine)) % len(donors)]
    return out


def perturbed_support(fitted: FittedEpisode, variant: str, other_images: Any = None, seed: int = 0) -> FittedEpisode:
    """A new fitted episode of the same model with its support set destroyed in one way.

    Args:
        fitted: the original fitted episode (not changed; its support embeddings are reused, nothing
            is re-embedded except ``other_images``).
        variant: "shuffled_labels" or "other_images" (see the module's description).
        other_images: (m, C, H, W) images of classes outside the episode, or None (then the images of
            the next class of the episode are used). At least as many as the support set is not
            needed: they are drawn with replacement when there are fewer.
        seed: seeds the permutation or the draw.

    Raises:
        DataError: an unknown variant, an episode with one class, or empty ``other_images``.
    """
    fitted = require_fitted(fitted, "perturbed_support")
    model, labels, emb = fitted.model, fitted.support_labels_, fitted.support_embeddings_
    if variant == "shuffled_labels":
        return model.fit_embeddings(emb, shuffled_labels(labels, seed))
    if variant != "other_images":
        raise DataError(f"unknown support perturbation {variant!r}; choose one of {list(SUPPORT_VARIANTS)}")
    if fitted.n_way < 2:
        raise DataError("replacing the support images by other classes needs at least two classes")
    if other_images is None:
        return model.fit_embeddings(emb[_next_class_indices(labels)], labels)
    pool = as_images(other_images, "other_images")
    g = torch.Generator().manual_seed(int(seed))
    replace = len(pool) < len(labels)
    idx = torch.randint(len(pool), (len(labels),), generator=g) if replace else \
        torch.randperm(len(pool), generator=g)[:len(labels)]
    with eval_mode(model):
        return model.fit(pool[idx], labels)


@dataclass(frozen=True)
class SupportCheckResult:
    """The support-set randomisation check of one method on the queries of one episode.

    Attributes:
        method: the method's name.
        variants: the perturbations, a subset of ``SUPPORT_VARIANTS`` in that order.
        spearman_abs: (n_variants, n) |map| rank correlation between the original and the perturbed
            support set's maps; NaN for queries whose original map is flat.
        spearman_signed: (n_variants, n) the same on the signed maps.
        threshold: a perturbation fails when its mean |map| correlation is at or above this.
        statuses: per variant "passed", "failed" or "undefined" (every original map flat).
        status: "failed" when any variant failed (the map ignores that change of the support set),
            "passed" when every variant passed, "undefined" when none is defined.
        targets: the explained classes; seed: the perturbation and explanation seed;
        other_images: whether images of other classes were given (else the episode's next class).
    """

    method: str
    variants: tuple[str, ...]
    spearman_abs: np.ndarray
    spearman_signed: np.ndarray
    threshold: float
    statuses: tuple[str, ...]
    status: str
    targets: tuple[int, ...]
    seed: int
    other_images: bool

    @property
    def passed(self) -> bool:
        """True only when every perturbation changed the maps (False when failed or undefined)."""
        return self.status == PASSED

    def spearman(self, variant: str) -> np.ndarray:
        """(n,) |map| correlation for one perturbation (what its status is based on)."""
        if variant not in self.variants:
            raise KeyError(f"no perturbation {variant!r}; this result has {list(self.variants)}")
        return self.spearman_abs[self.variants.index(variant)]

    def to_frame(self) -> pd.DataFrame:
        """One row per perturbation: mean correlations with a 95% t interval over this episode's
        queries where defined, n, n_undefined, the threshold and the status."""
        rows = []
        for i, variant in enumerate(self.variants):
            ia = mean_interval(self.spearman_abs[i], method="t")
            isg = mean_interval(self.spearman_signed[i], method="t")
            rows.append({"method": self.method, "variant": variant, "n": ia.n,
                         "n_undefined": int(np.isnan(self.spearman_abs[i]).sum()),
                         "spearman_abs": ia.estimate, "spearman_abs_ci_low": ia.low, "spearman_abs_ci_high": ia.high,
                         "spearman_signed": isg.estimate, "spearman_signed_ci_low": isg.low,
                         "spearman_signed_ci_high": isg.high, "ci_method": "t", "threshold": self.threshold,
                         "status": self.statuses[i]})
        return pd.DataFrame(rows)


def combined_status(statuses: Sequence[str]) -> str:
    """"failed" when any is failed, "passed" when all are passed, else "undefined"."""
    if FAILED in statuses:
        return FAILED
    if statuses and all(s == PASSED for s in statuses):
        return PASSED
    return UNDEFINED


def support_check(
    fitted: FittedEpisode,
    query_images: Any,
    method: MethodLike,
    other_images: Any = None,
    variants: Sequence[str] = SUPPORT_VARIANTS,
    targets: Any = "predicted",
    contrasts: Any = None,
    threshold: float = DEFAULT_SUPPORT_THRESHOLD,
    seed: int = 0,
    layer: str | None = None,
    maps: Any = None,
    **params: Any,
) -> SupportCheckResult:
    """The support-set randomisation check: does a method's map change when the support set is destroyed?

    Costs one explanation per perturbation (plus one of the original episode unless ``maps`` is
    given) and, with ``other_images``, one embedding pass over the drawn images.

    Args:
        fitted: the fitted episode (not changed).
        query_images: (n, C, H, W) (or one image (C, H, W)).
        method: a registry name or a callable ``fn(fitted, images, targets, contrasts, seed, **params)``.
        other_images: (m, C, H, W) images of classes outside the episode for "other_images", or None
            (the episode's next class).
        variants: which perturbations (default both).
        targets, contrasts: as in :func:`~fsl_xai.explain.deletion.deletion_insertion`, resolved on
            the original episode and kept for the perturbed ones.
        threshold: a perturbation fails when the mean |map| correlation is at or above this.
        seed: seeds the perturbations and the explanations.
        layer: the layer for layer methods (Grad-CAM).
        maps: the original episode's maps if already computed, (n, H, W) or (n, C, H, W).
        **params: passed to the method.

    Returns:
        A :class:`SupportCheckResult`.

    Raises:
        DataError: an unknown variant, no variant, or an episode with one class.
    """
    fitted = require_fitted(fitted, "support_check")
    unknown = [v for v in variants if v not in SUPPORT_VARIANTS]
    if unknown or not variants:
        raise DataError(f"variants must be a non-empty subset of {list(SUPPORT_VARIANTS)}, got {list(variants)}")
    order = tuple(v for v in SUPPORT_VARIANTS if v in variants)
    x = as_images(query_images)
    tgt, con = fitted_classes(fitted, x, targets, contrasts)
    base_maps = checked_maps(fitted, x, method, tgt, con, seed, layer, params, maps)
    flat = flat_maps(base_maps)
    rho_abs, rho_signed = [], []
    for variant in order:
        other = perturbed_support(fitted, variant, other_images, seed=seed).with_queries(x)
        with eval_mode(other):
            pmaps = method_maps(other, x, method, tgt, con, seed, layer, params)
        rho_abs.append(np.where(flat, np.nan, spearman_rows(base_maps.abs().numpy(), pmaps.abs().numpy())))
        rho_signed.append(np.where(flat, np.nan, spearman_rows(base_maps.numpy(), pmaps.numpy())))
    abs_a, signed_a = np.stack(rho_abs), np.stack(rho_signed)
    # randomization_status passes below the threshold: the same rule, applied to each perturbation
    statuses = tuple(randomization_status(row, threshold) for row in abs_a)
    return SupportCheckResult(
        method=method_name(method), variants=order, spearman_abs=abs_a, spearman_signed=signed_a,
        threshold=float(threshold), statuses=statuses, status=combined_status(statuses),
        targets=tuple(int(t) for t in tgt), seed=int(seed), other_images=other_images is not None)


def support_check_summary(results: Sequence[SupportCheckResult], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Pool the checks of one method on several episodes: per perturbation the mean |map| correlation
    over all defined queries, with a cluster-bootstrap 95% interval that resamples whole episodes
    (queries of one episode share its support set and are not independent).

    Args:
        results: one :class:`SupportCheckResult` per episode, all of the same method and threshold.
        n_boot, seed: bootstrap resamples and seed.

    Returns:
        One row per perturbation: method, variant, episodes, n, n_undefined, spearman_abs, ci_low,
        ci_high, ci_method, few_episodes (fewer than ``fsl_xai.intervals.MIN_EPISODES`` episodes:
        the interval is too narrow to trust), threshold, status (on the pooled mean).

    Raises:
        DataError: no results, or results of different methods, thresholds or perturbations.
    """
    if not results:
        raise DataError("give the support checks of at least one episode")
    first = results[0]
    if any(r.method != first.method or r.threshold != first.threshold or r.variants != first.variants
           for r in results):
        raise DataError("pool the support checks of one method with one threshold and the same perturbations")
    rows = []
    for i, variant in enumerate(first.variants):
        per_episode = np.array([[np.nansum(r.spearman_abs[i]), np.isfinite(r.spearman_abs[i]).sum()]
                                for r in results], dtype=np.float64)
        n = int(per_episode[:, 1].sum())
        undefined = int(sum(np.isnan(r.spearman_abs[i]).sum() for r in results))
        defined = per_episode[per_episode[:, 1] > 0]
        interval = cluster_bootstrap(defined, lambda s: s[..., 0] / s[..., 1], n_boot=n_boot, seed=seed) \
            if len(defined) else None
        mean = interval.estimate if interval is not None else float("nan")
        status = UNDEFINED if n == 0 else (PASSED if mean < first.threshold else FAILED)
        rows.append({"method": first.method, "variant": variant, "episodes": len(results), "n": n,
                     "n_undefined": undefined, "spearman_abs": mean,
                     "ci_low": interval.low if interval is not None else float("nan"),
                     "ci_high": interval.high if interval is not None else float("nan"),
                     "ci_method": interval.method if interval is not None else "none (n = 0)",
                     "few_episodes": len(results) < MIN_EPISODES,
                     "threshold": first.threshold, "status": status})
    return pd.DataFrame(rows)
