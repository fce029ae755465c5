"""Deletion and insertion curves (Petsiuk et al. 2018), batched over queries and steps.

Remove (or insert) the most-attributed pixels first and follow the explained class probability (or
logit): a faithful map makes the deletion curve fall fast (low area) and the insertion curve rise
fast (high area). A flat map (one value everywhere, all zero included) ranks no pixel first, so its
areas are undefined (NaN, flagged in ``undefined``), never a chance-level number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from ..models import FittedEpisode
from .attribution import AttributionMap
from .core import (
    DEFAULT_INTERNAL_BATCH,
    as_images,
    baseline_name,
    eval_mode,
    explained_value,
    fitted_classes,
    make_baseline,
    require_fitted,
    selection_weights,
)
from .fast import explanation_model
from .method_maps import as_maps, flat_maps


@dataclass(frozen=True)
class DeletionInsertionResult:
    """Deletion and insertion curves for n queries.

    Attributes:
        fractions: (steps + 1,) fraction of pixels removed/inserted at each step, 0 .. 1.
        deletion: (n, steps + 1) explained score as the most-attributed pixels are replaced by the
            baseline (step 0 = the original image).
        insertion: (n, steps + 1) explained score as the most-attributed pixels are put back into
            the baseline image (step 0 = the baseline image).
        deletion_auc / insertion_auc: (n,) areas under the curves over the fraction axis, in the
            units of ``output`` (with the default "probability": between 0 and 1, as in Petsiuk
            et al.). Lower deletion and higher insertion area = a more faithful map; compare with
            a random map (:func:`~fsl_xai.explain.method_maps.random_maps`) on the same queries.
            NaN where ``undefined``.
        deletion_auc_normalized / insertion_auc_normalized: (n,) areas after rescaling each
            query's curves so that the original image scores 1 and the baseline image 0 (useful
            with ``output="logit"``; NaN where both scores are equal, unstable where they are close,
            and NaN where ``undefined``).
        undefined: (n,) True for flat maps, whose pixel order is only the random tie-break.
        targets, contrasts: the explained classes; output: "logit" or "probability"; baseline: its
            name (or number; "custom" for an array).
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    deletion_auc_normalized: np.ndarray
    insertion_auc_normalized: np.ndarray
    undefined: np.ndarray
    targets: tuple[int, ...]
    contrasts: tuple[int, ...] | None
    output: str
    baseline: str | float

    def to_frame(self) -> pd.DataFrame:
        """One row per query with the four areas."""
        return pd.DataFrame({
            "query": np.arange(len(self.deletion_auc)), "target": list(self.targets),
            "deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc,
            "deletion_auc_normalized": self.deletion_auc_normalized,
            "insertion_auc_normalized": self.insertion_auc_normalized,
            "undefined": self.undefined,
        })


def pixel_ranks(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, H, W) -> (n, H*W) rank of each pixel, 0 = most attributed; ties broken at random (seeded)
    so that flat regions (Grad-CAM plateaus) are not removed in raster order."""
    flat = maps.reshape(len(maps), -1)
    g = torch.Generator().manual_seed(int(seed))
    tie = torch.rand(flat.shape, generator=g)
    order = torch.argsort(tie, dim=1)
    # stable sort on the map values of the shuffled pixels: equal values keep the random order
    sorted_idx = torch.sort(-flat.gather(1, order), dim=1, stable=True).indices
    order = order.gather(1, sorted_idx)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks


def deletion_insertion(
    fitted: FittedEpisode,
    query_images: Any,
    maps: Any,
    targets: Any = None,
    contrasts: Any = None,
    steps: int = 20,
    baseline: Any = "blur",
    output: str = "probability",
    batch_size: int = DEFAULT_INTERNAL_BATCH,
    blur_sigma: float | None = None,
    seed: int = 0,
) -> DeletionInsertionResult:
    """Deletion and insertion curves of attribution maps, batched over queries and steps.

    At step k of ``steps`` the ``round(k / steps * H * W)`` most-attributed pixels (all channels of
    a pixel together, highest signed value first) are replaced by the baseline (deletion) or copied
    into the baseline image (insertion), and the fitted episode's explained score is recorded. All
    (steps + 1) x n images of both curves go through the model in batches of ``batch_size``.

    Args:
        fitted: the fitted episode (not changed).
        query_images: (n, C, H, W).
        maps: an ``AttributionMap`` or maps (n, H, W) / attributions (n, C, H, W).
        targets: the explained class per query: None (the map's targets when ``maps`` is an
            AttributionMap, else "predicted"), "predicted", an int or one int per query.
        contrasts: None, "runner_up", an int or one per query (explains target minus contrast);
            None with an AttributionMap uses the map's contrasts.
        steps: number of steps (curves have steps + 1 points).
        baseline: "blur" (Gaussian blur of the image), "zeros", "mean" (per image and channel),
            a number or a tensor broadcastable to the images (as everywhere in fsl_xai.explain).
        output: "probability" (softmax of the logits; with a contrast, the difference of the two
            probabilities) or "logit" (minus the distance; unbounded, so compare its areas only
            between maps of the same queries).
        batch_size: images per forward pass (half deletion, half insertion images). Small
            batches that stay in the CPU cache are fastest for a Conv-4 at 64 px; larger ones
            help on wide GPUs.
        blur_sigma: blur width in pixels (default max(H, W) / 8).
        seed: breaks ties between equal map values.

    Returns:
        A :class:`DeletionInsertionResult`.
    """
    fitted = require_fitted(fitted, "deletion_insertion")
    x = as_images(query_images)
    n, c, h, w = x.shape
    if steps < 1:
        raise DataError(f"steps must be at least 1, got {steps}")
    if output not in ("probability", "logit"):
        raise DataError(f"unknown output {output!r}; use 'logit' or 'probability'")
    if targets is None and isinstance(maps, AttributionMap):
        targets = list(maps.targets)
        if contrasts is None and maps.contrasts is not None:
            contrasts = list(maps.contrasts)
    if targets is None:
        targets = "predicted"
    m = as_maps(maps, n, (h, w))
    tgt, con = fitted_classes(fitted, x, targets, contrasts, batch_size)
    weights = selection_weights(tgt, con, fitted.n_way)
    base = make_baseline(x, baseline, blur_sigma)
    ranks = pixel_ranks(m, seed)                                             # (n, HW)
    counts = torch.round(torch.linspace(0, 1, steps + 1) * (h * w)).long()  # pixels removed per step

    total = (steps + 1) * n
    del_scores = torch.empty(total)
    ins_scores = torch.empty(total)
    chunk = max(1, batch_size // 2)  # deletion and insertion images share one forward pass
    with torch.no_grad(), eval_mode(fitted):
        runner = explanation_model(fitted)  # BatchNorm folded, channels-last: the same function, faster
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total))
            step, q = idx // n, idx % n
            removed = (ranks[q] < counts[step][:, None]).view(-1, 1, h, w).to(x.dtype)
            xs, bs = x[q], base[q]
            deleted = xs * (1 - removed) + bs * removed
            inserted = bs * (1 - removed) + xs * removed
            logits = runner(torch.cat([deleted, inserted]).contiguous(memory_format=torch.channels_last))
            del_scores[idx] = explained_value(logits[: len(idx)], weights[q], output)
            ins_scores[idx] = explained_value(logits[len(idx):], weights[q], output)
    deletion = del_scores.view(steps + 1, n).T.numpy().astype(np.float64)
    insertion = ins_scores.view(steps + 1, n).T.numpy().astype(np.float64)
    fractions = (counts.double() / (h * w)).numpy()

    undefined = flat_maps(m)
    full, empty = deletion[:, :1], deletion[:, -1:]
    span = full - empty
    ok = np.abs(span) > 1e-6 * (1 + np.abs(full))
    with np.errstate(invalid="ignore", divide="ignore"):
        del_norm = np.where(ok, (deletion - empty) / span, np.nan)
        ins_norm = np.where(ok, (insertion - empty) / span, np.nan)

    def area(curves: np.ndarray) -> np.ndarray:
        return np.where(undefined, np.nan, np.trapezoid(curves, fractions, axis=1))

    return DeletionInsertionResult(
        fractions=fractions, deletion=deletion, insertion=insertion,
        deletion_auc=area(deletion), insertion_auc=area(insertion),
        deletion_auc_normalized=area(del_norm), insertion_auc_normalized=area(ins_norm), undefined=undefined,
        targets=tuple(int(t) for t in tgt), contrasts=None if con is None else tuple(int(v) for v in con),
        output=output, baseline=baseline_name(baseline),
    )
