"""Explanations through the support set: which support images shaped a query's decision, which of
their pixels mattered, and where the query looks like a prototype ("this looks like that")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EpisodeError, ModelError
from .attribution import _resolve_classes, eval_mode, make_baseline, quiet_captum, seeded

# --------------------------------------------------------------------------------------------
# helpers


def _require_fitted(model: nn.Module) -> None:
    if getattr(model, "prototypes_", None) is None:
        raise ModelError(f"{type(model).__name__} has no support set yet; call model.fit_support(images, labels) first")


def _one_image(image: Any, what: str = "query_image") -> torch.Tensor:
    x = torch.as_tensor(image, dtype=torch.float32) if not isinstance(image, torch.Tensor) else image.detach().float()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ModelError(f"{what} must be one image (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ModelError(f"{what} contains NaN or infinite pixels; repair the image first")
    return x


def _uses_class_means(model: nn.Module) -> bool:
    """True when the logits are ``score(query, class means)``: the leave-one-out prototype then has a
    closed form."""
    from ..models.base import FewShotClassifier

    cls = type(model)
    return (cls.compute_prototypes is FewShotClassifier.compute_prototypes
            and getattr(cls, "logits_from_support", None) is getattr(FewShotClassifier, "logits_from_support", None))


def _logits_from_support(model: nn.Module, q: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits of query embeddings against a support set given by embeddings (differentiable)."""
    if hasattr(model, "logits_from_support"):
        return model.logits_from_support(q, emb, labels)
    return model.score(q, model.compute_prototypes(emb, labels))


def _class_label(class_names: Sequence[str] | None, y: int) -> str | None:
    return None if class_names is None else str(class_names[y])


# --------------------------------------------------------------------------------------------
# leave-one-out influence


def leave_one_out_logits(model: nn.Module, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                         query_embeddings: torch.Tensor) -> torch.Tensor:
    """Logits of each query with each support image left out.

    Args:
        support_embeddings: (n_support, D); support_labels: (n_support,) episode labels.
        query_embeddings: (n_query, D).

    Returns:
        (n_support, n_query, n_way); NaN in the slice of a support image that is the only one of its
        class (leaving it out removes the class, so the query's logits are undefined).

    For mean prototypes the new prototype of the left-out image's class is
    ``(n_c * p_c - e_i) / (n_c - 1)`` (no re-embedding, no refit); other models recompute their
    logits from the stored embeddings without that image (``logits_from_support``), still exact.
    """
    emb = support_embeddings.detach().float()
    labels = torch.as_tensor(support_labels, dtype=torch.long)
    q = query_embeddings.detach().float()
    n_way = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_way)
    out = torch.full((len(emb), len(q), n_way), float("nan"))
    with torch.no_grad():
        if _uses_class_means(model):
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
                out[i] = _logits_from_support(model, q, emb[keep], labels[keep])
                keep[i] = True
    return out


def support_influence(model: nn.Module, support_embeddings: torch.Tensor | None = None,
                      support_labels: torch.Tensor | None = None, query_embedding: torch.Tensor | None = None,
                      *, query_image: torch.Tensor | None = None, target: Any = "predicted",
                      contrast: Any = "runner_up", sample_ids: Sequence[str] | None = None,
                      class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The exact effect of each support image on one query's margin, by leaving it out.

    The margin is ``logit[target] - logit[contrast]``, target fixed on the full support set (default
    the predicted class). With ``contrast="runner_up"`` (default) the contrast is the best other class
    of each leave-one-out refit (so the margin is the usual "target minus best other", and
    ``contrast_without`` says which class that was); with an explicit contrast label the pair is
    fixed. ``influence = margin(full) - margin(without image i)``: positive means the image pushed the
    query towards the target (its removal lowers the margin), negative means it worked against it.

    Args:
        model: a fitted few-shot model; its stored ``support_embeddings_`` / ``support_labels_`` are
            used when ``support_embeddings`` / ``support_labels`` are None.
        support_embeddings: (n_support, D); support_labels: (n_support,).
        query_embedding: (D,) or (1, D); or give ``query_image`` (C, H, W) to embed it.
        target, contrast: as in ``explain`` (an episode label, "predicted"; contrast "runner_up").
        sample_ids: the support images' sample ids (e.g. ``episode.support_ids``), for the table.
        class_names: the episode's class names (e.g. ``episode.classes``), for the table.

    Returns:
        A DataFrame, one row per support image, ranked by |influence| (undefined rows last), columns
        ``rank, support_index, sample_id, label, class, influence, margin_full, margin_without,
        contrast_without, pred_without, flips, note``; ``df.attrs`` holds target, contrast, margin_full. ``influence`` is NaN, with a note, for the only image of its class.
    """
    _require_fitted(model)
    emb = model.support_embeddings_ if support_embeddings is None else torch.as_tensor(support_embeddings)
    labels = model.support_labels_ if support_labels is None else torch.as_tensor(support_labels, dtype=torch.long)
    if emb is None or labels is None:
        raise ModelError("no support embeddings: fit the model or pass support_embeddings and support_labels")
    if len(emb) != len(labels):
        raise ModelError(f"{len(emb)} support embeddings but {len(labels)} labels")
    if query_embedding is None:
        if query_image is None:
            raise ModelError("give query_embedding (D,) or query_image (C, H, W)")
        with eval_mode(model), torch.no_grad():
            query_embedding = model.embed(_one_image(query_image))
    q = torch.as_tensor(query_embedding, dtype=torch.float32).detach().reshape(1, -1)
    if q.shape[1] != emb.shape[1]:
        raise ModelError(f"query embedding has {q.shape[1]} features, support embeddings have {emb.shape[1]}")
    if sample_ids is not None and len(sample_ids) != len(emb):
        raise ModelError(f"{len(sample_ids)} sample ids for {len(emb)} support images")
    with torch.no_grad():
        full = _logits_from_support(model, q, emb.float(), labels)
    t = _resolve_classes(target, full, "target")[0]
    c = _resolve_classes(contrast, full, "contrast", exclude=[t])[0]
    if c == t:
        raise ModelError("the contrast class equals the target class; choose another class or 'runner_up'")
    loo = leave_one_out_logits(model, emb, labels, q)[:, 0, :]  # (n_support, n_way)
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
        "class": [_class_label(class_names, int(y)) for y in lab],
        "influence": influence,
        "margin_full": margin_full,
        "margin_without": margin_without,
        "contrast_without": np.where(undefined, -1, contrast_without.numpy()).astype(np.int64),
        "pred_without": pred_without.astype(np.int64),
        "flips": (~undefined) & (pred_without != int(full[0].argmax())),
        "note": np.where(undefined, "only support image of its class: leaving it out removes the class", ""),
    })
    df.attrs.update(target=t, contrast=c, margin_full=margin_full)
    order = np.lexsort((df["support_index"].to_numpy(), -np.abs(np.nan_to_num(influence, nan=-1.0)), undefined))
    df = df.iloc[order].reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


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

    def __init__(self, model: nn.Module, support_labels: torch.Tensor, query_embedding: torch.Tensor,
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
            logits = _logits_from_support(self.model, self.query, emb[j], self.labels)
            out.append((logits * self.weights).sum(1))
        return torch.stack(out)


def support_attribution(model: nn.Module, support_images: torch.Tensor, support_labels: torch.Tensor,
                        query_image: torch.Tensor, method: str = "integrated_gradients", target: Any = "predicted",
                        contrast: Any = None, n_steps: int = 32, baselines: Any = "zeros", seed: int = 0,
                        internal_batch_size: int | None = None, sample_ids: Sequence[str] | None = None,
                        episode_id: str = "", query_index: int | None = None) -> SupportAttribution:
    """Attribute a query's logit (or logit difference) to the pixels of the support images.

    The prototypes are recomputed inside the forward pass from the support images, so the gradient
    flows query logit -> prototype -> support embedding -> support pixels.

    Args:
        support_images: (n_support, C, H, W); support_labels: (n_support,) episode labels.
        query_image: (C, H, W) or (1, C, H, W).
        method: "saliency" (the gradient), "input_x_gradient" or "integrated_gradients" (all
            support images move together from the baseline to themselves; the attributions then
            sum to the change of the explained quantity along that path).
        target, contrast: as in ``explain``.
        n_steps, baselines, internal_batch_size: Integrated Gradients settings.

    Raises:
        ModelError: unknown method, non-differentiable model, bad shapes.
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    if method not in ("saliency", "input_x_gradient", "integrated_gradients"):
        raise ModelError(f"unknown support attribution method {method!r}; choose 'saliency', "
                         "'input_x_gradient' or 'integrated_gradients'")
    if not getattr(model, "differentiable", True):
        raise ModelError(f"{type(model).__name__} is not differentiable; support-pixel attribution needs gradients "
                         "(use support_influence instead)")
    support = torch.as_tensor(support_images, dtype=torch.float32).detach()
    labels = model._check_support(support_labels, len(support)) if hasattr(model, "_check_support") \
        else torch.as_tensor(support_labels, dtype=torch.long)
    query = _one_image(query_image)
    if support.ndim != 4 or support.shape[1:] != query.shape[1:]:
        raise ModelError(f"support images {tuple(support.shape)} and query {tuple(query.shape[1:])} must share "
                         "(C, H, W)")
    with eval_mode(model), seeded(seed), quiet_captum():
        with torch.no_grad():
            q = model.embed(query)
            logits = _logits_from_support(model, q, model.embed(support), labels)
        t = _resolve_classes(target, logits, "target")[0]
        c = None if contrast is None else _resolve_classes(contrast, logits, "contrast", exclude=[t])[0]
        if c is not None and c == t:
            raise ModelError("the contrast class equals the target class; choose another class or 'runner_up'")
        w = torch.zeros(1, logits.shape[1])
        w[0, t] = 1.0
        if c is not None:
            w[0, c] -= 1.0
        fwd = _SupportForward(model, labels, q, w)
        inputs = support[None]
        if method == "saliency":
            attr = Saliency(fwd).attribute(inputs, target=0, abs=False)
        elif method == "input_x_gradient":
            attr = InputXGradient(fwd).attribute(inputs, target=0)
        else:
            base = make_baseline(support, baselines)
            base = base[None] if isinstance(base, torch.Tensor) else base
            attr = IntegratedGradients(fwd).attribute(inputs, baselines=base, target=0, n_steps=n_steps,
                                                      method="gausslegendre",
                                                      internal_batch_size=internal_batch_size)
    attributions = np.ascontiguousarray(attr[0].detach().float().numpy())
    maps = attributions.sum(1)
    flat = np.abs(maps).reshape(-1)
    scale = float(np.percentile(flat, 99)) or float(flat.max()) or 1.0
    normalized = np.clip(maps / scale, -1, 1).astype(np.float32)
    return SupportAttribution(
        attributions=attributions, maps=maps, normalized=normalized, support_labels=tuple(labels.tolist()),
        target=t, contrast=c, explained=float((logits * w).sum()), method=method,
        params={"n_steps": n_steps, "baselines": baselines if isinstance(baselines, (str, float, int)) else "tensor",
                "seed": seed},
        model_fingerprint=model.fingerprint(), sample_ids=None if sample_ids is None else tuple(sample_ids),
        episode_id=episode_id, query_index=query_index,
    )


# --------------------------------------------------------------------------------------------
# "this looks like that"


def _prototype_maps(model: nn.Module, fmap_shape: tuple[int, int, int]) -> tuple[torch.Tensor, bool]:
    """The prototypes as (n_way, C, h, w) maps (flattening backbones) or (n_way, C) vectors (pooled)."""
    c, h, w = fmap_shape
    protos = model.prototypes_.detach().float()
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


def similarity_map(model: nn.Module, query_image: torch.Tensor, cls: int | Sequence[int] | None = None,
                   measure: str = "cosine") -> SimilarityMap:
    """Similarity between each spatial position of the query's feature map and class prototypes.

    For flattening backbones (Conv-4) the prototype is reshaped back to (C, h, w) and compared
    position by position; for pooled backbones (ResNet-12) each position's vector is compared with
    the pooled prototype.

    Args:
        query_image: (C, H, W) or (1, C, H, W).
        cls: an episode label, several, or None for every class.
        measure: "cosine" (default) or "neg_sqdist" (minus the squared distance).
    """
    _require_fitted(model)
    x = _one_image(query_image)
    n_way = len(model.prototypes_)
    classes = list(range(n_way)) if cls is None else ([int(cls)] if isinstance(cls, (int, np.integer))
                                                      else [int(c) for c in cls])
    bad = [c for c in classes if not 0 <= c < n_way]
    if bad:
        raise EpisodeError(f"class(es) {bad} are not in this episode; valid episode labels are 0..{n_way - 1}")
    with eval_mode(model), torch.no_grad():
        fmap = model.backbone.feature_map(x)[0]  # (C, h, w)
    protos, positionwise = _prototype_maps(model, tuple(fmap.shape))
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


def nearest_support(model: nn.Module, query_image: torch.Tensor, k: int = 5,
                    support_images: torch.Tensor | None = None, sample_ids: Sequence[str] | None = None,
                    class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The k support images nearest to the query in embedding space, each with its most similar patch.

    The distance is the model's own (minus its score against that single support embedding). For
    each neighbour, the pair of feature-map cells (query cell, support cell) with the highest cosine
    similarity gives the matching patches, as input-pixel boxes ``(y0, x0, y1, x1)``.

    Args:
        support_images: (n_support, C, H, W); needed for patches with pooled backbones. With a
            flattening backbone the stored support embeddings are the feature maps, so it may be None.
        sample_ids, class_names: for the table (e.g. ``episode.support_ids``, ``episode.classes``).

    Returns:
        DataFrame ranked by distance: ``rank, support_index, sample_id, label, class, distance,
        patch_similarity, query_box, support_box``.
    """
    _require_fitted(model)
    x = _one_image(query_image)
    emb = model.support_embeddings_
    labels = model.support_labels_
    if k < 1:
        raise ModelError(f"k must be at least 1, got {k}")
    k = min(k, len(emb))
    with eval_mode(model), torch.no_grad():
        q_emb = model.embed(x)
        dist = -model.score(emb.float(), q_emb)[:, 0]  # (n_support,)
        order = torch.argsort(dist, stable=True)[:k]
        qmap = model.backbone.feature_map(x)[0]  # (C, h, w)
        c, h, w = qmap.shape
        if support_images is not None:
            simgs = torch.as_tensor(support_images, dtype=torch.float32)
            if len(simgs) != len(emb):
                raise ModelError(f"{len(simgs)} support images but the model holds {len(emb)} support embeddings")
            smaps = model.backbone.feature_map(simgs[order])
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
