"""Concept-based explanations: TCAV (Kim et al. 2018) for few-shot models.

A user defines a concept by a handful of example images (a spurious marker, a ruler, a colour
cast, ...). At a chosen backbone layer a linear classifier separates the concept's activations from
those of a random counter-set; its normal vector is the concept activation vector (CAV). The TCAV
score of class k is the fraction of class-k queries whose class-k logit (minus the distance to the
prototype) increases along the CAV. Repeating with fresh random counter-sets, and comparing with
CAVs of random-vs-random sets, gives a two-sided t-test of whether the concept matters to the
decision, per class.

Activations come from Captum's ``LayerActivation`` and the gradients of the logits with respect to
the layer from ``LayerGradientXActivation`` (with ``multiply_by_inputs=False``, i.e. the plain
layer gradient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import DataError, ModelError
from ..models import FewShotClassifier, FittedEpisode
from .core import as_images, eval_mode, quiet_captum, require_fitted, resolve_layer

__all__ = ["tcav", "layer_activations", "layer_gradients", "concept_activation_vector", "draw_patch"]


def layer_activations(owner: FewShotClassifier | FittedEpisode, images: Any, layer: str | nn.Module | None = None,
                      batch_size: int = 256) -> torch.Tensor:
    """Flattened activations (n, D) of ``images`` (n, C, H, W) at ``layer`` (eval mode).

    Args:
        owner: a fitted episode or a model (activations do not depend on the support set).
        images: (n, C, H, W).
        layer: as in :func:`~fsl_xai.explain.core.resolve_layer`.
        batch_size: images per forward pass.
    """
    from captum.attr import LayerActivation

    x = as_images(images, "images")
    _, module = resolve_layer(owner, layer)
    # only the embedding runs: the activations do not depend on the prototypes
    with eval_mode(owner), torch.no_grad():
        la = LayerActivation(owner.embed, module)
        out = [la.attribute(x[i:i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).detach()


def layer_gradients(fitted: FittedEpisode, images: Any, classes: Sequence[int], layer: str | nn.Module | None = None,
                    batch_size: int = 256) -> torch.Tensor:
    """Gradients (n_classes, n, D) of each class's logit with respect to the flattened layer output."""
    from captum.attr import LayerGradientXActivation

    fitted = require_fitted(fitted, "layer_gradients")
    x = as_images(images, "images")
    _, module = resolve_layer(fitted, layer)
    grads = []
    with eval_mode(fitted), quiet_captum():
        lg = LayerGradientXActivation(fitted, module, multiply_by_inputs=False)
        for k in classes:
            parts = [lg.attribute(x[i:i + batch_size], target=int(k)).flatten(1).detach()
                     for i in range(0, len(x), batch_size)]
            grads.append(torch.cat(parts))
    return torch.stack(grads)


def _logistic_direction(X: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (labels 0/1) -> (weights (D,), intercept).

    The weights of a ridge-penalised linear model lie in the span of the examples (representer
    theorem), so with few examples in a wide layer the problem is solved exactly in that span:
    a thin SVD reduces it to at most n dimensions, where damped Newton steps converge in a few
    iterations. Deterministic (no random initialisation or shuffling).
    """
    mu = X.mean(0)
    Xc = X - mu
    scale = float(np.sqrt((Xc * Xc).sum(1).mean())) or 1.0
    Xc = Xc / scale
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    keep = S > S[0] * 1e-9 if S.size and S[0] > 0 else np.zeros_like(S, dtype=bool)
    Z = U[:, keep] * S[keep]                                  # (n, r) coordinates in the span
    r = Z.shape[1]
    A = np.c_[Z, np.ones(len(Z))]
    lam = 1.0 / (C * len(Z))
    reg = np.r_[np.full(r, lam), 0.0]
    theta = np.zeros(r + 1)

    def loss(t: np.ndarray) -> float:
        f = A @ t
        return float(np.mean(np.logaddexp(0.0, f) - y * f) + 0.5 * (reg * t * t).sum())

    current = loss(theta)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(A @ theta)))
        grad = A.T @ (p - y) / len(y) + reg * theta
        hess = (A * (p * (1 - p))[:, None]).T @ A / len(y) + np.diag(reg + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-4:
            candidate = theta - t * step
            value = loss(candidate)
            if value <= current - 1e-4 * t * float(grad @ step):
                break
            t *= 0.5
        theta, previous, current = candidate, current, value
        if abs(previous - current) < 1e-10 or np.abs(grad).max() < 1e-8:
            break
    w = Vt[keep].T @ theta[:r] / scale
    return w, float(theta[r] - w @ mu)


def concept_activation_vector(concept: np.ndarray, random: np.ndarray, method: str = "logistic",
                              seed: int = 0, regularization: float = 1.0,
                              accuracy: bool = True) -> tuple[np.ndarray, float]:
    """The unit CAV pointing from the random activations towards the concept, and its held-out accuracy.

    Args:
        concept, random: activations (n_concept, D) and (n_random, D).
        method: "logistic" (L2-regularised logistic regression, the linear classifier of Kim et al.)
            or "mean" (the difference of the two means).
        seed: seeds the two-fold split used for the reported accuracy.
        regularization: the inverse penalty C of the logistic regression (activations are
            rescaled to unit mean norm first, so C does not depend on the layer's scale).
        accuracy: also estimate the accuracy (two more fits); NaN when False.

    Returns:
        (cav (D,) of unit length, two-fold cross-validated accuracy of the classifier).
    """
    if method not in ("logistic", "mean"):
        raise DataError(f"unknown CAV method {method!r}; use 'logistic' or 'mean'")
    concept = np.asarray(concept, dtype=np.float64)
    random = np.asarray(random, dtype=np.float64)
    X = np.concatenate([concept, random])
    y = np.r_[np.ones(len(concept)), np.zeros(len(random))]

    def fit(Xa: np.ndarray, ya: np.ndarray) -> tuple[np.ndarray, float]:
        if method == "mean":
            m1, m0 = Xa[ya == 1].mean(0), Xa[ya == 0].mean(0)
            w = m1 - m0
            return w, -float(w @ (m1 + m0) / 2)
        return _logistic_direction(Xa, ya, regularization)

    w, _ = fit(X, y)
    norm = np.linalg.norm(w)
    cav = w / norm if norm > 0 else w

    if not accuracy:
        return cav, float("nan")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        fold[idx] = rng.permutation(np.arange(len(idx)) % 2)
    correct, counted = 0, 0
    for f in (0, 1):
        tr, te = fold != f, fold == f
        if len(np.unique(y[tr])) < 2 or not te.any():
            continue
        wf, bf = fit(X[tr], y[tr])
        correct += int(((X[te] @ wf + bf > 0).astype(float) == y[te]).sum())
        counted += int(te.sum())
    return cav, correct / counted if counted else float("nan")


def draw_patch(images: Any, rows: slice, cols: slice, value: float | Sequence[float] = 1.0) -> np.ndarray:
    """Copies of ``images`` (n, C, H, W) with a constant patch burnt in (e.g. to build the example
    images of a marker concept from ordinary images: ``draw_patch(x, *marker_box(64), 0.96)``)."""
    x = np.array(images, dtype=np.float32, copy=True)
    if x.ndim != 4:
        raise DataError(f"images must have shape (n, C, H, W), got {x.shape}")
    v = np.asarray(value, dtype=np.float32)
    x[:, :, rows, cols] = v.reshape(-1, 1, 1) if v.ndim else v
    return x


def _two_sided_t(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value of mean(a) == mean(b) (unequal variances)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb <= 1e-300:
        # no spread at all: the scores either coincide or differ for certain
        return 1.0 if abs(diff) < 1e-12 else 0.0
    t = diff / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return float(2 * stats.t.sf(abs(t), df))


def tcav(
    fitted: FittedEpisode,
    concepts: Mapping[str, Any] | Any,
    query_images: Any,
    random_images: Any,
    query_labels: Any = None,
    layer: str | nn.Module | None = None,
    n_repeats: int = 20,
    n_examples: int | None = None,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.05,
    correction: str = "bonferroni",
    cav_method: str = "logistic",
    seed: int = 0,
    batch_size: int = 256,
) -> pd.DataFrame:
    """TCAV scores with a significance test, per concept and class.

    For each repeat r a CAV separates the concept examples from random set A_r, and a random CAV
    separates random set B_r from A_r (A_r, B_r disjoint draws of ``n_examples`` images from
    ``random_images``). The TCAV score of class k is the fraction of class-k queries whose class-k
    logit has a positive directional derivative along the CAV.

    Significance, per concept and class, needs two things (the p-value is the larger of the two,
    a valid test of both together):

    - ``p_value_t``: a two-sided Welch t-test of the concept's ``n_repeats`` scores against the
      random CAVs' scores (Kim et al.);
    - ``p_value_queries``: a two-sided exact binomial test of how many class-k queries the concept
      pushes up (in most repeats) against one half. The repeats reuse the same queries, so a
      fixed direction's query-sampling noise (a score of, say, 0.35 on 20 queries) looks like a
      consistent effect to the t-test alone; this second test asks whether the queries agree
      beyond chance.

    The concept is significant when the p-value, Bonferroni-corrected over concepts x classes, is
    below ``alpha``. When every class-k query moves the same way along any direction (their
    gradients share a large common part), random CAVs score near 0 or 1 and the t-test needs
    about 20 repeats to separate a concept scoring 1.0 from them; hence the default.

    Args:
        fitted: the fitted episode (the logits depend on the prototypes); not changed.
        concepts: {name: example images (m, C, H, W)} or one array of example images (named "concept").
        query_images: (n, C, H, W), the images whose decisions are tested; best without the concept
            (e.g. images without the marker), so that the derivative asks "would adding it push
            towards class k".
        random_images: (n_random, C, H, W) a pool of ordinary images (at least 2 x ``n_examples``).
        query_labels: the class of each query (n,); None uses the model's predictions.
        layer: the layer (name relative to the model or its backbone, e.g. "blocks.2"); default the
            backbone's default layer (``core.default_layer``).
        n_repeats: random counter-sets (at least 2).
        n_examples: images per random set (default: the number of concept examples).
        classes: the classes to score (default all classes of the episode).
        class_names: names for the ``class_name`` column.
        alpha, correction: significance level; "bonferroni" or "none".
        cav_method: "logistic" or "mean" (see :func:`concept_activation_vector`).
        seed: seeds the random sets and the accuracy split; same seed -> same table.
        batch_size: images per forward pass.

    Returns:
        DataFrame, one row per concept x class: concept, class, class_name, n_queries, tcav_score
        (mean over repeats), tcav_std, random_score, random_std, p_value_t, p_value_queries,
        p_value, p_adjusted, significant,
        direction ("+" the concept pushes towards the class, "-" away), cav_accuracy (mean held-out
        accuracy of the concept CAVs), layer, n_repeats, n_examples, scores and random_scores
        (the per-repeat values).
    """
    from scipy.stats import binomtest

    if not isinstance(concepts, Mapping):
        concepts = {"concept": concepts}
    if not concepts:
        raise DataError("give at least one concept as {name: example images}")
    if n_repeats < 2:
        raise DataError(f"n_repeats must be at least 2 for a t-test, got {n_repeats}")
    if correction not in ("bonferroni", "none"):
        raise DataError(f"unknown correction {correction!r}; use 'bonferroni' or 'none'")
    fitted = require_fitted(fitted, "tcav")
    layer_name, module = resolve_layer(fitted, layer)
    n_way = fitted.n_way
    q = as_images(query_images, "query_images")
    pool = as_images(random_images, "random_images")
    concept_x = {name: as_images(imgs, f"concept {name!r} images") for name, imgs in concepts.items()}
    for name, cx in concept_x.items():
        if cx.shape[1:] != q.shape[1:]:
            raise DataError(f"concept {name!r} images are {tuple(cx.shape[1:])} but queries are {tuple(q.shape[1:])}")
        if len(cx) < 2:
            raise DataError(f"concept {name!r} needs at least 2 example images, got {len(cx)}")
    if pool.shape[1:] != q.shape[1:]:
        raise DataError(f"random images are {tuple(pool.shape[1:])} but queries are {tuple(q.shape[1:])}")
    m = int(n_examples) if n_examples is not None else max(len(c) for c in concept_x.values())
    if len(pool) < 2 * m:
        raise DataError(f"the random pool has {len(pool)} images but each repeat draws two disjoint sets of {m}; "
                        f"give at least {2 * m} random images or lower n_examples")

    if query_labels is None:
        with eval_mode(fitted), torch.no_grad():
            labels = torch.cat([fitted(q[i:i + batch_size]) for i in range(0, len(q), batch_size)]).argmax(1).numpy()
    else:
        labels = np.asarray(query_labels).reshape(-1).astype(np.int64)
        if len(labels) != len(q):
            raise DataError(f"{len(labels)} query labels for {len(q)} query images")
    ks = list(range(n_way)) if classes is None else [int(k) for k in classes]
    bad = [k for k in ks if not 0 <= k < n_way]
    if bad:
        raise ModelError(f"classes {bad} are not in this episode (0..{n_way - 1})")

    # activations: concept examples, the random pool; gradients of each class logit at the queries
    acts = {name: layer_activations(fitted, cx, module, batch_size).double().numpy() for name, cx in concept_x.items()}
    pool_acts = layer_activations(fitted, pool, module, batch_size).double().numpy()
    grads = layer_gradients(fitted, q, ks, module, batch_size).double().numpy()   # (K, n, D)

    rng = np.random.default_rng(seed)
    draws = [rng.permutation(len(pool))[: 2 * m] for _ in range(n_repeats)]
    random_cavs = np.stack([concept_activation_vector(pool_acts[d[m:]], pool_acts[d[:m]], cav_method, seed + r,
                                                       accuracy=False)[0]
                            for r, d in enumerate(draws)])                     # (R, D)

    def scores(cavs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R, D) -> (K, R) fraction of class-k queries with a positive directional derivative,
        and (K, n) the fraction of repeats in which each query's derivative is positive."""
        positive = np.einsum("knd,rd->krn", grads, cavs) > 0
        out = np.full((len(ks), len(cavs)), np.nan)
        for i, k in enumerate(ks):
            sel = labels == k
            if sel.any():
                out[i] = positive[i][:, sel].mean(1)
        return out, positive.mean(1)

    rand_scores, _ = scores(random_cavs)
    rows = []
    for name, a in acts.items():
        fits = [concept_activation_vector(a, pool_acts[d[:m]], cav_method, seed + r) for r, d in enumerate(draws)]
        cavs = np.stack([c for c, _ in fits])
        acc = float(np.mean([s for _, s in fits]))
        conc_scores, per_query = scores(cavs)
        for i, k in enumerate(ks):
            sel = labels == k
            n_k = int(sel.sum())
            cs, rs = conc_scores[i], rand_scores[i]
            if n_k:
                p_t = _two_sided_t(cs, rs)
                # the repeats share the same queries, so the t-test alone would take the query
                # sampling noise of one fixed direction for an effect: also ask whether the
                # queries' majority direction departs from one half beyond chance (exact binomial)
                up, down = int((per_query[i][sel] > 0.5).sum()), int((per_query[i][sel] < 0.5).sum())
                p_q = float(binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
            else:
                p_t = p_q = float("nan")
            rows.append({
                "concept": name, "class": k,
                "class_name": class_names[k] if class_names is not None else str(k),
                "n_queries": n_k,
                "tcav_score": float(np.mean(cs)) if n_k else float("nan"),
                "tcav_std": float(np.std(cs, ddof=1)) if n_k else float("nan"),
                "random_score": float(np.mean(rs)) if n_k else float("nan"),
                "random_std": float(np.std(rs, ddof=1)) if n_k else float("nan"),
                "p_value_t": p_t, "p_value_queries": p_q, "p_value": max(p_t, p_q) if n_k else float("nan"),
                "cav_accuracy": acc, "layer": layer_name, "n_repeats": int(n_repeats),
                "n_examples": m, "scores": tuple(float(v) for v in cs), "random_scores": tuple(float(v) for v in rs),
            })
    table = pd.DataFrame(rows)
    n_tests = int(table["p_value"].notna().sum()) if correction == "bonferroni" else 1
    table["p_adjusted"] = (table["p_value"] * max(1, n_tests)).clip(upper=1.0)
    table["significant"] = table["p_adjusted"] < alpha
    table["direction"] = np.where(table["tcav_score"] >= table["random_score"], "+", "-")
    cols = ["concept", "class", "class_name", "n_queries", "tcav_score", "tcav_std", "random_score", "random_std",
            "p_value_t", "p_value_queries", "p_value", "p_adjusted", "significant", "direction", "cav_accuracy",
            "layer", "n_repeats", "n_examples",
            "scores", "random_scores"]
    return table[cols]
