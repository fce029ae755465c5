"""Pixel attributions of few-shot decisions with Captum.

A prototype model scores a query by its distance to each class prototype (logit = minus the
distance). ``explain`` attributes one scalar per query to the query's pixels: the logit of the
target class, or with a contrast class the difference ``logit[target] - logit[contrast]`` ("why A
rather than B"; the difference of the two distances). Every Captum method sees the same small
wrapper module (:class:`~fsl_xai.explain.core.ExplainedOutput`) whose forward returns that (n, 1)
quantity, so adding a method is one registry entry (:mod:`fsl_xai.explain.methods`).

``explain`` takes a fitted episode (``model.fit(support_images, support_labels)``) and changes
neither it nor its model: it runs in eval mode (BatchNorm with running statistics, no dropout) and
gives every module its train/eval flag back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import EpisodeError, ModelError
from ..intervals import json_number
from ..models import FewShotClassifier, FittedEpisode
from . import fast
from .core import (
    DEFAULT_INTERNAL_BATCH,
    ExplainedOutput,
    as_images,
    check_method_backbone,
    default_layer,
    eval_mode,
    explained_value,
    make_baseline,
    quiet_captum,
    require_fitted,
    resolve_classes,
    resolve_layer,
    seeded,
    selection_weights,
)
from .methods import METHODS, MethodContext, method_spec


@dataclass(frozen=True, eq=False)
class AttributionMap:
    """Attributions of a batch of queries, with their provenance.

    Attributes:
        attributions: float32 (n, C, H, W), signed, at the input's size. For layer methods
            (Grad-CAM) the upsampled map is spread evenly over the channels so that ``maps`` is
            the map itself.
        maps: float32 (n, H, W), the signed sum over channels.
        normalized: float32 (n, H, W) in [-1, 1]: ``maps`` divided per image by the 99th
            percentile of ``|maps|`` and clipped (for display with a diverging colour scale).
        method: registry name; params: the parameters used (defaults filled in).
        targets: the explained class per query (episode labels).
        contrasts: the contrast class per query, or None when a single logit is explained.
        model_fingerprint: ``fitted.fingerprint()`` of the explained model.
        episode_id: the episode's id ("" when unknown); query_indices: the queries' positions in
            the episode (or in the batch when no episode was given).
        explained: float32 (n,), the explained quantity at the input (logit or logit difference).
        margins: float32 (n,), each query's decision margin (top logit minus the runner-up, as
            ``fsl_xai.evaluation.margins``), or None.
        completeness_gap: float32 (n,) for methods with the completeness property (Integrated
            Gradients): the sum of the attributions minus ``explained - baseline_output``, i.e. the
            part of the explained change the map does not account for (integration error); None
            for other methods.
        baseline_output: float32 (n,), the explained quantity at the baseline image, F(baseline),
            where ``completeness_gap`` is recorded, else None.
    """

    attributions: np.ndarray
    maps: np.ndarray
    normalized: np.ndarray
    method: str
    params: dict
    targets: tuple[int, ...]
    contrasts: tuple[int, ...] | None
    model_fingerprint: str
    episode_id: str = ""
    query_indices: tuple[int, ...] = ()
    explained: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    margins: np.ndarray | None = None
    completeness_gap: np.ndarray | None = None
    baseline_output: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def relative_gap(self) -> np.ndarray | None:
        """(n,) |completeness_gap| / margin: the map's own error against what separates the decision
        from its runner-up (NaN where the margin is 0); None when no gap is recorded."""
        if self.completeness_gap is None or self.margins is None:
            return None
        return relative_gaps(self.completeness_gap, self.margins)

    def to_dict(self) -> dict:
        """The provenance (no arrays), JSON-serialisable."""
        import captum

        return {
            "method": self.method,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "targets": list(self.targets),
            "contrasts": None if self.contrasts is None else list(self.contrasts),
            "model_fingerprint": self.model_fingerprint,
            "episode_id": self.episode_id,
            "query_indices": list(self.query_indices),
            "explained": [float(v) for v in self.explained],
            "margins": _floats(self.margins),
            "completeness_gap": _floats(self.completeness_gap),
            "baseline_output": _floats(self.baseline_output),
            "relative_gap": _floats(self.relative_gap),
            "shape": list(self.attributions.shape),
            "captum_version": captum.__version__,
        }


def _floats(values: np.ndarray | None) -> list[float | None] | None:
    """Per-query values for JSON (NaN as None), or None."""
    return None if values is None else [json_number(float(v)) for v in values]


def relative_gaps(gaps: Any, margins: Any) -> np.ndarray:
    """(n,) |gap| / margin as float64; NaN where the margin is not positive."""
    g = np.abs(np.asarray(gaps, dtype=np.float64))
    m = np.asarray(margins, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, g / m, np.nan)


def completeness_gaps(fitted: FittedEpisode | nn.Module, images: torch.Tensor, attribution_sums: Any,
                      weights: torch.Tensor, baseline: Any, explained: Any = None,
                      batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """How far attributions are from completeness: sum of attributions - (F(x) - F(baseline)).

    Args:
        fitted: the fitted episode (or its explanation twin) whose explained quantity F was attributed.
        images: the queries x (n, C, H, W).
        attribution_sums: (n,) the sum of each query's attributions over channels and pixels.
        weights: (n, n_way) selection weights of the explained quantity (+1 target, -1 contrast).
        baseline: the baseline the attributions were computed from ("zeros", "blur", "mean", a
            number or a tensor), as given to the method.
        explained: (n,) F(x) if already computed.
        batch_size: images per forward pass.

    Returns:
        (gap (n,), F(baseline) (n,)), float32.
    """
    ref = make_baseline(images.detach(), baseline)
    with torch.no_grad(), eval_mode(fitted):
        f_base = torch.cat([explained_value(fitted(ref[i:i + batch_size]), weights[i:i + batch_size])
                            for i in range(0, len(ref), batch_size)])
        if explained is None:
            explained = torch.cat([explained_value(fitted(images[i:i + batch_size]), weights[i:i + batch_size])
                                   for i in range(0, len(images), batch_size)])
    f_x = np.asarray(explained, dtype=np.float64).reshape(-1)
    fb = f_base.double().numpy()
    gap = np.asarray(attribution_sums, dtype=np.float64).reshape(-1) - (f_x - fb)
    return gap.astype(np.float32), fb.astype(np.float32)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"<array {tuple(value.shape)}>"
    return repr(value)


def normalize_maps(maps: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """(n, H, W) signed maps -> (n, H, W) in [-1, 1], scaled per image by a high percentile of |map|.

    A percentile rather than the maximum keeps one extreme pixel from washing out the display.
    An all-zero map stays zero.
    """
    flat = np.abs(maps.reshape(len(maps), -1))
    scale = np.percentile(flat, percentile, axis=1) if flat.shape[1] else np.zeros(len(maps))
    scale = np.where(scale > 0, scale, flat.max(axis=1, initial=0.0))
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(maps / scale[:, None, None], -1.0, 1.0).astype(np.float32)


def _recorded_params(run_params: dict, layer: str | nn.Module | None, layer_method: bool, fitted: FittedEpisode,
                     internal_batch_size: int | None, seed: int, target: Any, contrast: Any) -> dict:
    recorded = dict(run_params)
    if layer_method:
        if layer is None:
            recorded["layer"] = default_layer(fitted)
        else:
            recorded["layer"] = layer if isinstance(layer, str) else type(layer).__name__
    if internal_batch_size is not None:
        recorded["internal_batch_size"] = internal_batch_size
    recorded["seed"] = seed
    recorded["target_spec"] = target if isinstance(target, (str, int)) else "per-query"
    recorded["contrast_spec"] = contrast if contrast is None or isinstance(contrast, (str, int)) else "per-query"
    return recorded


def explain(fitted: FittedEpisode, query_images: torch.Tensor | np.ndarray, method: str = "integrated_gradients",
            target: Any = "predicted", contrast: Any = None, seed: int = 0, episode_id: str = "",
            layer: str | nn.Module | None = None, internal_batch_size: int | None = None,
            query_indices: Sequence[int] | None = None, **params: Any) -> AttributionMap:
    """Attribute the decisions of a fitted episode for a batch of queries to their pixels.

    Args:
        fitted: the fitted episode (``model.fit(support_images, support_labels)``; for a model that
            refines with the queries, ``.with_queries(episode_query_images)``). Not changed.
        query_images: (n, C, H, W) (or one image (C, H, W)), values as the model expects.
        method: a name from ``list_methods()``.
        target: "predicted" (the top class of each query), an episode label, or one label per query.
        contrast: None (explain ``logit[target]``), "runner_up" (the best class other than the
            target), an episode label or one per query: explain ``logit[target] - logit[contrast]``.
        seed: seeds every random draw (noise tunnels, GradientSHAP); same seed -> same maps.
        episode_id: recorded in the result.
        layer: backbone layer for Grad-CAM methods (name like "blocks.2"; default the backbone's
            ``default_layer``).
        internal_batch_size: about how many images go through the network in one pass (queries x
            steps / samples / perturbations); queries are explained in chunks of that size
            (default ``DEFAULT_INTERNAL_BATCH``). Results do not depend on it, except for the random
            draws of noise methods.
        query_indices: the queries' positions in their episode (recorded; default 0..n-1).
        **params: method parameters overriding the registry defaults (``METHODS[name].defaults``;
            Integrated Gradients' integration rule is ``rule``).

    Returns:
        An ``AttributionMap`` with maps at the input's size, each query's decision margin, and for
        Integrated Gradients each map's completeness gap against F(x) - F(baseline).

    Raises:
        ModelError: unknown method, layer or parameter; not a fitted episode; gradient method on a
            model without gradients; a transductive episode not frozen with its queries.
        DataError: bad images.
        EpisodeError: a target or contrast class outside the episode.
    """
    spec = method_spec(method)
    fitted = require_fitted(fitted, "explain")
    model = fitted.model
    check_method_backbone(fitted, method)
    if spec.needs_gradients and not model.is_differentiable():
        perturb = sorted(n for n, s in METHODS.items() if not s.needs_gradients)
        raise ModelError(f"method {method!r} needs gradients but {type(model).__name__} is not differentiable "
                         f"with respect to the query pixels; use a perturbation method: {perturb}")
    run_params = spec.parameters(params)
    if not fitted.queries_frozen():
        # such a model refines its prototypes with whatever batch it is given; Captum's
        # interpolated and perturbed copies would take part in that refinement
        raise ModelError(f"{type(model).__name__} refines its prototypes with the query batch; freeze them first "
                         "with fitted = fitted.with_queries(episode_query_images) (explain_episode does this)")
    inputs = as_images(query_images)
    model.check_images(inputs, "query_images")
    n = len(inputs)
    if query_indices is None:
        indices = tuple(range(n))
    else:
        indices = tuple(int(i) for i in query_indices)
        if len(indices) != n:
            raise ModelError(f"{len(indices)} query indices for {n} query images")
    # a layer given to a pixel method is checked but unused, so one call can loop over all methods
    layer_name = resolve_layer(fitted, layer)[0] if spec.layer_method or layer is not None else None

    with eval_mode(fitted), seeded(seed), quiet_captum():
        runner = fast.explanation_model(fitted)
        layer_module = dict(runner.model.named_modules())[layer_name] if spec.layer_method else None
        inputs_run = inputs.contiguous(memory_format=torch.channels_last) if runner is not fitted else inputs
        with torch.no_grad():
            logits = runner(inputs_run)
            if runner is not fitted and logits.shape[1] > 1:
                # the fast copy agrees with the model to float rounding; near-ties are settled by the
                # fitted episode itself so that "predicted" is always its own prediction
                top = logits.topk(2, dim=1).values
                if ((top[:, 0] - top[:, 1]) <= 1e-4 * (top[:, 0].abs() + 1)).any():
                    logits = fitted(inputs)
        targets, contrasts = resolve_classes(target, contrast, n, logits.shape[1], logits)
        weights = selection_weights(targets, contrasts, logits.shape[1])
        explained = (logits * weights).sum(1)
        chunk = max(1, (internal_batch_size or DEFAULT_INTERNAL_BATCH) // spec.images_per_query(params))
        forward = ExplainedOutput(runner)
        parts = []
        for start in range(0, n, chunk):
            part = inputs_run[start:start + chunk].detach().requires_grad_(spec.needs_gradients)
            ctx = MethodContext(forward, part, weights[start:start + chunk], layer_module, internal_batch_size, seed,
                                slice(start, start + chunk))
            parts.append(spec.run(ctx, **run_params).detach())
        attr = torch.cat(parts).to(torch.float32)

    if attr.shape != inputs.shape:
        raise ModelError(f"method {method!r} returned shape {tuple(attr.shape)} for inputs {tuple(inputs.shape)}")
    from ..evaluation import margins as decision_margins  # evaluation imports pandas: on first use

    attributions = np.ascontiguousarray(attr.numpy())
    maps = attributions.sum(axis=1)
    gap = f_base = None
    if spec.completeness:
        # against the same function the method attributed (the fast twin), in float64 sums
        sums = attributions.reshape(n, -1).astype(np.float64).sum(1)
        gap, f_base = completeness_gaps(runner, inputs_run, sums, weights, run_params["baselines"],
                                        explained=explained.numpy())
    recorded = _recorded_params(run_params, layer, spec.layer_method, fitted, internal_batch_size, seed, target,
                                contrast)
    return AttributionMap(
        attributions=attributions, maps=maps, normalized=normalize_maps(maps), method=method, params=recorded,
        targets=tuple(targets), contrasts=None if contrasts is None else tuple(contrasts),
        model_fingerprint=fitted.fingerprint(), episode_id=episode_id, query_indices=indices,
        explained=explained.numpy().astype(np.float32), margins=decision_margins(logits.numpy()).astype(np.float32),
        completeness_gap=gap, baseline_output=f_base,
    )


def explain_episode(model: FewShotClassifier, images, episode, query_indices: int | Sequence[int] | None = None,
                    method: str = "integrated_gradients", target: Any = "predicted", contrast: Any = None,
                    seed: int = 0, layer: str | nn.Module | None = None, internal_batch_size: int | None = None,
                    **params: Any) -> AttributionMap:
    """Fit a model on an episode's support set and explain some of its queries; the model is not changed.

    The episode is fitted with ``model.fit`` (in eval mode) and, for a model that refines its
    prototypes with the queries, frozen with all of the episode's queries (``with_queries``).

    Args:
        model: a few-shot model (a FewShotClassifier, not a fitted episode).
        images: the ``ImageSet`` the episode was drawn from.
        episode: an ``Episode``.
        query_indices: positions in ``episode.query_ids`` (an int, a list, or None for all).
        target: as in ``explain``, plus "true" for each query's own label.
        Other arguments as in ``explain``.

    Raises:
        EpisodeError: a query index out of range, an unknown true label, a class outside the episode.
        ModelError: not a model, and as in ``explain``.
    """
    if not isinstance(model, FewShotClassifier):
        raise ModelError(f"explain_episode fits the episode itself and needs the model, got {type(model).__name__}; "
                         "pass fitted.model, or call explain(fitted, query_images, ...) with a fitted episode")
    episode.check_dataset(images)
    if query_indices is None:
        qidx = list(range(episode.n_query))
    elif isinstance(query_indices, (int, np.integer)):
        qidx = [int(query_indices)]
    else:
        qidx = [int(i) for i in query_indices]
    if not qidx:
        raise EpisodeError("no query chosen; give at least one query index")
    bad = [i for i in qidx if not 0 <= i < episode.n_query]
    if bad:
        raise EpisodeError(f"query index {bad} out of range; this episode has {episode.n_query} queries "
                           f"(indices 0..{episode.n_query - 1})")
    support, support_labels, queries, query_labels = episode.tensors(images)
    if isinstance(target, str) and target == "true":
        labels = query_labels[qidx]
        if (labels < 0).any():
            raise EpisodeError("target='true' needs known query labels, but some chosen queries have label -1")
        target = labels.tolist()
    with eval_mode(model):
        fitted = model.fit(support, support_labels).with_queries(queries)
    return explain(fitted, queries[qidx], method=method, target=target, contrast=contrast, seed=seed,
                   episode_id=episode.episode_id, layer=layer, internal_batch_size=internal_batch_size,
                   query_indices=qidx, **params)
