"""Explanations through the support set: which support images shaped a query's decision (exact
leave-one-out influence) and which of their pixels mattered (support-pixel attribution).

Both take a fitted episode and change neither it nor its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import DataError, ModelError
from ..models import FewShotClassifier, FittedEpisode
from .attribution import normalize_maps
from .core import (
    as_images,
    baseline_name,
    eval_mode,
    make_baseline,
    quiet_captum,
    require_fitted,
    resolve_classes,
    seeded,
    selection_weights,
)

# --------------------------------------------------------------------------------------------
# leave-one-out influence


def leave_one_out_logits(fitted: FittedEpisode, query_embeddings: torch.Tensor) -> torch.Tensor:
    """Logits of each query with each support image of the fitted episode left out.

    Args:
        fitted: the fitted episode (its support embeddings and labels are used; not changed).
        query_embeddings: (n_query, D).

    Returns:
        (n_support, n_query, n_way); NaN in the slice of a support image that is the only one of its
        class (leaving it out removes the class, so the query's logits are undefined).

    When the model scores against class means (``uses_class_means()``) the new prototype of the
    left-out image's class is ``(n_c * p_c - e_i) / (n_c - 1)`` (no re-embedding, no refit); other
    models recompute their logits from the stored embeddings without that image
    (``logits_from_support``), still exact.
    """
    fitted = require_fitted(fitted, "leave_one_out_logits")
    model = fitted.model
    emb = fitted.support_embeddings_.detach().float()
    labels = fitted.support_labels_
    q = torch.as_tensor(query_embeddings).detach().float()
    counts = torch.bincount(labels, minlength=fitted.n_way)
    out = torch.full((len(emb), len(q), fitted.n_way), float("nan"))
    with torch.no_grad():
        if model.uses_class_means():
            protos = model.compute_prototypes(emb, labels)
            for i in range(len(emb)):
                c = int(labels[i])
                n_c = int(counts[c])
                if n_c < 2:
                    continue
                p = protos.clone()
                p[c] = (n_c * protos[c] - emb[i]) / (n_c - 1)
                out[i] = model.score(q, p)
        else:
            keep = torch.ones(len(emb), dtype=torch.bool)
            for i in range(len(emb)):
                if int(counts[labels[i]]) < 2:
                    continue
                keep[i] = False
                out[i] = model.logits_from_support(q, emb[keep], labels[keep])
                keep[i] = True
    return out


@dataclass(frozen=True, eq=False)
class SupportInfluence:
    """The leave-one-out influence of each support image on one query's margin.

    Attributes:
        table: one row per support image, ranked by |influence| (undefined rows last), columns
            ``rank, support_index, sample_id, label, class, influence, margin_full, margin_without,
            contrast_without, pred_without, flips, note``.
        target: the explained class (fixed on the full support set).
        contrast: the contrast class on the full support set.
        margin_full: ``logit[target] - logit[contrast]`` with every support image.
    """

    table: pd.DataFrame
    target: int
    contrast: int
    margin_full: float


def support_influence(fitted: FittedEpisode, query_embedding: torch.Tensor | None = None, *,
                      query_image: torch.Tensor | None = None, target: Any = "predicted",
                      contrast: Any = "runner_up", sample_ids: Sequence[str] | None = None,
                      class_names: Sequence[str] | None = None) -> SupportInfluence:
    """The exact effect of each support image on one query's margin, by leaving it out.

    The margin is ``logit[target] - logit[contrast]``, target fixed on the full support set (default
    the predicted class). With ``contrast="runner_up"`` (default) the contrast is the best other class
    of each leave-one-out refit (so the margin is the usual "target minus best other", and
    ``contrast_without`` says which class that was); with an explicit contrast label the pair is
    fixed. ``influence = margin(full) - margin(without image i)``: positive means the image pushed the
    query towards the target (its removal lowers the margin), negative means it worked against it.

    Args:
        fitted: the fitted episode (its support embeddings and labels are used; not changed).
        query_embedding: (D,) or (1, D); or give ``query_image`` (C, H, W) to embed it.
        target, contrast: as in ``explain`` (an episode label, "predicted"; contrast "runner_up").
        sample_ids: the support images' sample ids (e.g. ``episode.support_ids``), for the table.
        class_names: the episode's class names (e.g. ``episode.classes``), for the table.

    Returns:
        A :class:`SupportInfluence`; ``influence`` is NaN, with a note, for the only image of its class.
    """
    fitted = require_fitted(fitted, "support_influence")
    model = fitted.model
    emb, labels = fitted.support_embeddings_.float(), fitted.support_labels_
    if query_embedding is None:
        if query_image is None:
            raise ModelError("give query_embedding (D,) or query_image (C, H, W)")
        with eval_mode(fitted), torch.no_grad():
            query_embedding = fitted.embed(as_images(query_image, "query_image", single=True))
    q = torch.as_tensor(query_embedding, dtype=torch.float32).detach().reshape(1, -1)
    if q.shape[1] != emb.shape[1]:
        raise DataError(f"query embedding has {q.shape[1]} features, support embeddings have {emb.shape[1]}")
    if sample_ids is not None and len(sample_ids) != len(emb):
        raise DataError(f"{len(sample_ids)} sample ids for {len(emb)} support images")
    with torch.no_grad():
        full = model.logits_from_support(q, emb, labels)
    if contrast is None:
        raise ModelError("support_influence explains a margin: give contrast='runner_up' (the default) or a class")
    targets, contrasts = resolve_classes(target, contrast, 1, full.shape[1], full)
    t, c = targets[0], (contrasts or [-1])[0]
    loo = leave_one_out_logits(fitted, q)[:, 0, :]  # (n_support, n_way)
    margin_full = float(full[0, t] - full[0, c])
    if isinstance(contrast, str) and contrast == "runner_up":
        # the margin against the best other class, which may change when an image is left out
        others = loo.clone()
        others[:, t] = -np.inf
        contrast_without = others.argmax(1)
        margin_without = (loo[:, t] - others.max(1).values).numpy().astype(np.float64)
    else:
        contrast_without = torch.full((len(loo),), c)
        margin_without = (loo[:, t] - loo[:, c]).numpy().astype(np.float64)
    influence = margin_full - margin_without
    undefined = np.isnan(margin_without)
    pred_without = np.where(undefined, -1, np.nan_to_num(loo.numpy(), nan=-np.inf).argmax(1))
    lab = labels.numpy()
    df = pd.DataFrame({
        "support_index": np.arange(len(emb)),
        "sample_id": list(sample_ids) if sample_ids is not None else [None] * len(emb),
        "label": lab,
        "class": [None if class_names is None else str(class_names[int(y)]) for y in lab],
        "influence": influence,
        "margin_full": margin_full,
        "margin_without": margin_without,
        "contrast_without": np.where(undefined, -1, contrast_without.numpy()).astype(np.int64),
        "pred_without": pred_without.astype(np.int64),
        "flips": (~undefined) & (pred_without != int(full[0].argmax())),
        "note": np.where(undefined, "only support image of its class: leaving it out removes the class", ""),
    })
    order = np.lexsort((df["support_index"].to_numpy(), -np.abs(np.nan_to_num(influence, nan=-1.0)), undefined))
    df = df.iloc[order].reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return SupportInfluence(table=df, target=t, contrast=c, margin_full=margin_full)


# --------------------------------------------------------------------------------------------
# support-pixel attribution


@dataclass(frozen=True, eq=False)
class SupportAttribution:
    """Attributions of one query's explained logit to the pixels of every support image.

    Attributes:
        attributions: float32 (n_support, C, H, W) signed; maps: (n_support, H, W) channel sums;
        normalized: (n_support, H, W) in [-1, 1], scaled by one common factor for all support
            images (so images can be compared with each other).
        support_labels: (n_support,) episode labels; sample_ids: when known.
        target, contrast: the explained classes; explained: the explained quantity.
        method, params, model_fingerprint, episode_id, query_index: provenance.
    """

    attributions: np.ndarray
    maps: np.ndarray
    normalized: np.ndarray
    support_labels: tuple[int, ...]
    target: int
    contrast: int | None
    explained: float
    method: str
    params: dict
    model_fingerprint: str
    sample_ids: tuple[str, ...] | None = None
    episode_id: str = ""
    query_index: int | None = None

    def totals(self) -> np.ndarray:
        """(n_support,) summed attribution per support image (for ranking images by pixel evidence)."""
        return self.maps.reshape(len(self.maps), -1).sum(1)


class _SupportForward(nn.Module):
    """Forward over support pixels: (b, n_support, C, H, W) -> (b, 1) explained quantity, with the
    prototypes recomputed from the (perturbed) support embeddings and the query embedding fixed."""

    def __init__(self, model: FewShotClassifier, support_labels: torch.Tensor, query_embedding: torch.Tensor,
                 weights: torch.Tensor):
        super().__init__()
        self.model = model
        self.labels = support_labels
        self.query = query_embedding
        self.weights = weights

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        b, s = support.shape[:2]
        emb = self.model.embed(support.reshape(b * s, *support.shape[2:])).reshape(b, s, -1)
        out = []
        for j in range(b):
            logits = self.model.logits_from_support(self.query, emb[j], self.labels)
            out.append((logits * self.weights).sum(1))
        return torch.stack(out)


SUPPORT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")


def support_attribution(fitted: FittedEpisode, support_images: torch.Tensor, query_image: torch.Tensor,
                        method: str = "integrated_gradients", target: Any = "predicted", contrast: Any = None,
                        n_steps: int = 32, baselines: Any = "zeros", seed: int = 0,
                        internal_batch_size: int | None = None, sample_ids: Sequence[str] | None = None,
                        episode_id: str = "", query_index: int | None = None) -> SupportAttribution:
    """Attribute a query's logit (or logit difference) to the pixels of the support images.

    The prototypes are recomputed inside the forward pass from the support images, so the gradient
    flows query logit -> prototype -> support embedding -> support pixels.

    Args:
        fitted: the fitted episode (its support labels are used; not changed).
        support_images: (n_support, C, H, W), the images the episode was fitted with, in order.
        query_image: (C, H, W) or (1, C, H, W).
        method: "saliency" (the gradient), "input_x_gradient" or "integrated_gradients" (all
            support images move together from the baseline to themselves; the attributions then
            sum to the change of the explained quantity along that path).
        target, contrast: as in ``explain``.
        n_steps, baselines, internal_batch_size: Integrated Gradients settings (``baselines`` as
            everywhere: "zeros", "mean", "blur", a number or a tensor).

    Raises:
        ModelError: unknown method, not a fitted episode, non-differentiable model.
        DataError: bad shapes, or support images that are not the fitted episode's.
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    if method not in SUPPORT_METHODS:
        raise ModelError(f"unknown support attribution method {method!r}; choose one of {list(SUPPORT_METHODS)}")
    fitted = require_fitted(fitted, "support_attribution")
    model = fitted.model
    if not model.is_differentiable():
        raise ModelError(f"{type(model).__name__} is not differentiable; support-pixel attribution needs gradients "
                         "(use support_influence instead)")
    support = as_images(support_images, "support_images")
    labels = fitted.support_labels_
    query = as_images(query_image, "query_image", single=True)
    if len(support) != len(labels):
        raise DataError(f"{len(support)} support images but the fitted episode has {len(labels)}; pass the images "
                        "the episode was fitted with")
    if support.shape[1:] != query.shape[1:]:
        raise DataError(f"support images {tuple(support.shape)} and query {tuple(query.shape[1:])} must share "
                        "(C, H, W)")
    with eval_mode(fitted), seeded(seed), quiet_captum():
        with torch.no_grad():
            q = model.embed(query)
            emb = model.embed(support)
            if not torch.allclose(emb, fitted.support_embeddings_.to(emb.dtype), rtol=1e-3, atol=1e-4):
                raise DataError("support_images are not the images this episode was fitted with (their embeddings "
                                "differ); pass the fitted episode's support images in their order")
            logits = model.logits_from_support(q, emb, labels)
        targets, contrasts = resolve_classes(target, contrast, 1, logits.shape[1], logits)
        t, c = targets[0], None if contrasts is None else contrasts[0]
        w = selection_weights(targets, contrasts, logits.shape[1])
        fwd = _SupportForward(model, labels, q, w)
        inputs = support[None]
        if method == "saliency":
            attr = Saliency(fwd).attribute(inputs, target=0, abs=False)
        elif method == "input_x_gradient":
            attr = InputXGradient(fwd).attribute(inputs, target=0)
        else:
            base = make_baseline(support, baselines)[None]
            attr = IntegratedGradients(fwd).attribute(inputs, baselines=base, target=0, n_steps=n_steps,
                                                      method="gausslegendre",
                                                      internal_batch_size=internal_batch_size)
    attributions = np.ascontiguousarray(attr[0].detach().float().numpy())
    maps = attributions.sum(1)
    # one common scale for all support images: normalise them as one tall image
    normalized = normalize_maps(maps.reshape(1, -1, maps.shape[-1])).reshape(maps.shape)
    return SupportAttribution(
        attributions=attributions, maps=maps, normalized=normalized, support_labels=tuple(labels.tolist()),
        target=t, contrast=c, explained=float((logits * w).sum()), method=method,
        params={"n_steps": n_steps, "baselines": baseline_name(baselines), "seed": seed},
        model_fingerprint=fitted.fingerprint(), sample_ids=None if sample_ids is None else tuple(sample_ids),
        episode_id=episode_id, query_index=query_index,
    )
