"""This looks like that: where a query resembles each class prototype (similarity maps), and which
support images, and which of their patches, it is nearest to.

Both take a fitted episode and change neither it nor its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import DataError, EpisodeError, ModelError
from ..models import FittedEpisode
from .core import as_images, eval_mode, require_fitted


def feature_map(fitted: FittedEpisode, images: torch.Tensor) -> torch.Tensor:
    """The backbone's spatial feature map (N, C, h, w) of images (N, C, H, W) (before pooling or flattening)."""
    backbone: Any = fitted.backbone  # every backbone in fsl_xai.models has feature_map
    return backbone.feature_map(images)


def _prototype_maps(fitted: FittedEpisode, fmap_shape: tuple[int, int, int]) -> tuple[torch.Tensor, bool]:
    """The prototypes as (n_way, C, h, w) maps (flattening backbones) or (n_way, C) vectors (pooled)."""
    c, h, w = fmap_shape
    protos = fitted.prototypes_.detach().float()
    if protos.shape[1] == c * h * w:
        return protos.reshape(len(protos), c, h, w), True
    if protos.shape[1] == c:
        return protos, False
    raise ModelError(f"prototypes have {protos.shape[1]} features but the feature map is {c}x{h}x{w}; a similarity "
                     "map needs prototypes in the backbone's feature space (flattened or pooled)")


def _similarity(a: torch.Tensor, b: torch.Tensor, measure: str) -> torch.Tensor:
    """Similarity along dim 1 of broadcastable tensors."""
    if measure == "cosine":
        return F.cosine_similarity(a, b, dim=1, eps=1e-8)
    if measure == "neg_sqdist":
        return -(a - b).pow(2).sum(1)
    raise ModelError(f"unknown similarity measure {measure!r}; use 'cosine' or 'neg_sqdist'")


@dataclass(frozen=True, eq=False)
class SimilarityMap:
    """Where the query looks like each prototype.

    Attributes:
        maps: float32 (k, H, W), the similarity upsampled (bilinear) to the input size.
        low_res: float32 (k, h, w) at the feature map's resolution.
        classes: the k episode labels; measure: "cosine" or "neg_sqdist".
        peaks: per class, the (y, x) input pixel at the centre of the most similar feature cell.
        positionwise: True when compared position by position with a flattened (C, h, w) prototype.
    """

    maps: np.ndarray
    low_res: np.ndarray
    classes: tuple[int, ...]
    measure: str
    peaks: tuple[tuple[int, int], ...]
    positionwise: bool


def similarity_map(fitted: FittedEpisode, query_image: torch.Tensor, cls: int | Sequence[int] | None = None,
                   measure: str = "cosine") -> SimilarityMap:
    """Similarity between each spatial position of the query's feature map and class prototypes.

    For flattening backbones (Conv-4) the prototype is reshaped back to (C, h, w) and compared
    position by position; for pooled backbones (ResNet-12) each position's vector is compared with
    the pooled prototype.

    Args:
        fitted: the fitted episode (its prototypes are compared; not changed).
        query_image: (C, H, W) or (1, C, H, W).
        cls: an episode label, several, or None for every class.
        measure: "cosine" (default) or "neg_sqdist" (minus the squared distance).
    """
    fitted = require_fitted(fitted, "similarity_map")
    x = as_images(query_image, "query_image", single=True)
    n_way = fitted.n_way
    classes = list(range(n_way)) if cls is None else ([int(cls)] if isinstance(cls, (int, np.integer))
                                                      else [int(c) for c in cls])
    bad = [c for c in classes if not 0 <= c < n_way]
    if bad:
        raise EpisodeError(f"class(es) {bad} are not in this episode; valid episode labels are 0..{n_way - 1}")
    with eval_mode(fitted), torch.no_grad():
        fmap = feature_map(fitted, x)[0]  # (C, h, w)
    c, h, w = fmap.shape
    protos, positionwise = _prototype_maps(fitted, (c, h, w))
    p = protos[classes]
    if positionwise:
        sim = _similarity(fmap[None], p, measure)  # (k, h, w)
    else:
        sim = _similarity(fmap[None], p[:, :, None, None], measure)
    up = F.interpolate(sim[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    h, w = sim.shape[1:]
    sy, sx = x.shape[2] / h, x.shape[3] / w
    peaks = []
    for k in range(len(classes)):
        iy, ix = divmod(int(sim[k].reshape(-1).argmax()), w)
        peaks.append((int((iy + 0.5) * sy), int((ix + 0.5) * sx)))
    return SimilarityMap(maps=up.numpy().astype(np.float32), low_res=sim.numpy().astype(np.float32),
                         classes=tuple(classes), measure=measure, peaks=tuple(peaks), positionwise=positionwise)


def nearest_support(fitted: FittedEpisode, query_image: torch.Tensor, k: int = 5,
                    support_images: torch.Tensor | None = None, sample_ids: Sequence[str] | None = None,
                    class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The k support images nearest to the query in embedding space, each with its most similar patch.

    The distance is the model's own (minus its score against that single support embedding). For
    each neighbour, the pair of feature-map cells (query cell, support cell) with the highest cosine
    similarity gives the matching patches, as input-pixel boxes ``(y0, x0, y1, x1)``.

    Args:
        fitted: the fitted episode (its support embeddings are ranked; not changed).
        query_image: (C, H, W) or (1, C, H, W).
        k: how many neighbours.
        support_images: (n_support, C, H, W); needed for patches with pooled backbones. With a
            flattening backbone the stored support embeddings are the feature maps, so it may be None.
        sample_ids, class_names: for the table (e.g. ``episode.support_ids``, ``episode.classes``).

    Returns:
        DataFrame ranked by distance: ``rank, support_index, sample_id, label, class, distance,
        patch_similarity, query_box, support_box``.
    """
    fitted = require_fitted(fitted, "nearest_support")
    x = as_images(query_image, "query_image", single=True)
    emb = fitted.support_embeddings_
    labels = fitted.support_labels_
    if k < 1:
        raise ModelError(f"k must be at least 1, got {k}")
    k = min(k, len(emb))
    with eval_mode(fitted), torch.no_grad():
        q_emb = fitted.embed(x)
        dist = -fitted.model.score(emb.float(), q_emb)[:, 0]  # (n_support,)
        order = torch.argsort(dist, stable=True)[:k]
        qmap = feature_map(fitted, x)[0]  # (C, h, w)
        c, h, w = qmap.shape
        if support_images is not None:
            simgs = as_images(support_images, "support_images")
            if len(simgs) != len(emb):
                raise DataError(f"{len(simgs)} support images but the fitted episode holds {len(emb)} support "
                                "embeddings; pass the images it was fitted with")
            smaps = feature_map(fitted, simgs[order])
        elif emb.shape[1] == c * h * w:
            smaps = emb[order].float().reshape(-1, c, h, w)
        else:
            smaps = None
    sy, sx = x.shape[2] / h, x.shape[3] / w

    def box(cell: int) -> tuple[int, int, int, int]:
        """Feature-map cell index -> its input-pixel box (y0, x0, y1, x1)."""
        r, c_ = divmod(cell, w)
        return int(r * sy), int(c_ * sx), int((r + 1) * sy), int((c_ + 1) * sx)

    rows = []
    for r, i in enumerate(order.tolist()):
        row = {"rank": r + 1, "support_index": i, "sample_id": None if sample_ids is None else sample_ids[i],
               "label": int(labels[i]),
               "class": None if class_names is None else str(class_names[int(labels[i])]),
               "distance": float(dist[i]), "patch_similarity": np.nan, "query_box": None, "support_box": None}
        if smaps is not None:
            qv = F.normalize(qmap.reshape(c, -1), dim=0)  # (C, hw)
            sv = F.normalize(smaps[r].reshape(c, -1), dim=0)
            sim = qv.T @ sv  # (hw query, hw support)
            best = int(sim.reshape(-1).argmax())
            qi, si = divmod(best, h * w)
            row.update(patch_similarity=float(sim.reshape(-1)[best]), query_box=box(qi), support_box=box(si))
        rows.append(row)
    return pd.DataFrame(rows)
