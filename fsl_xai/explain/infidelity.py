"""Captum's infidelity and max-sensitivity (Yeh et al. 2019) of attribution maps, batched over queries.

Degenerate maps: infidelity is defined for every map (its optimal rescaling makes an all-zero map
score the mean squared change of the explained quantity, the worst possible value); max-sensitivity
is a change relative to the map's own norm, so it is undefined (NaN) for an all-zero map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..models import FittedEpisode
from .core import (
    DEFAULT_INTERNAL_BATCH,
    ExplainedOutput,
    as_images,
    eval_mode,
    fitted_classes,
    require_fitted,
    seeded,
    selection_weights,
)
from .fast import explanation_model
from .method_maps import MethodLike, method_attributions


@dataclass(frozen=True)
class InfidelitySensitivityResult:
    """Captum's infidelity (normalised by the optimal scale, lower = more faithful) and
    max-sensitivity (relative change of the attribution under small input noise, lower = more
    stable), one value per query; sensitivity is NaN (undefined) where the map is all zero, and
    everywhere when it was skipped."""

    infidelity: np.ndarray
    sensitivity: np.ndarray
    noise_std: float
    radius: float
    targets: tuple[int, ...]


def _per_channel(attr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A single map per pixel (n, H, W) (e.g. Grad-CAM) spread evenly over the channels of ``like``."""
    return attr[:, None].expand_as(like) / like.shape[1] if attr.ndim == 3 else attr


def infidelity_sensitivity(
    fitted: FittedEpisode,
    query_images: Any,
    method: MethodLike,
    targets: Any = "predicted",
    contrasts: Any = None,
    seed: int = 0,
    layer: str | None = None,
    noise_std: float = 0.02,
    n_perturb_samples: int = 10,
    radius: float = 0.02,
    n_sensitivity_samples: int = 5,
    attributions: Any = None,
    max_examples_per_batch: int | None = None,
    **params: Any,
) -> InfidelitySensitivityResult:
    """Captum's infidelity and sensitivity_max for one method on the explained scalar.

    Infidelity perturbs each query with Gaussian noise (``noise_std``, ``n_perturb_samples`` draws)
    and compares attribution . perturbation with the change of the explained scalar, after the
    optimal rescaling of the attributions (``normalize=True``), so methods of different scale are
    comparable. Sensitivity re-explains ``n_sensitivity_samples`` copies perturbed uniformly
    within ``radius`` (L-inf) and reports the largest relative change of the attribution.
    Both are seeded and batched over queries x samples.

    Args:
        fitted: the fitted episode (not changed).
        query_images: (n, C, H, W).
        method: a registry name or a callable (see :mod:`fsl_xai.explain.method_maps`).
        targets, contrasts: as in :func:`~fsl_xai.explain.deletion.deletion_insertion`.
        seed: seeds the perturbations and the method.
        layer: for layer methods.
        noise_std, n_perturb_samples: infidelity's perturbations.
        radius, n_sensitivity_samples: sensitivity's perturbations (0 samples skips sensitivity).
        attributions: precomputed attributions (n, C, H, W) for these targets (skips one explain).
        max_examples_per_batch: Captum's batching of the perturbed copies within a chunk of queries
            (queries go to Captum in chunks of about DEFAULT_INTERNAL_BATCH images).
        **params: passed to the method.
    """
    from captum.metrics import infidelity, sensitivity_max

    fitted = require_fitted(fitted, "infidelity_sensitivity")
    x = as_images(query_images)
    n = len(x)
    tgt, con = fitted_classes(fitted, x, targets, contrasts)
    weights = selection_weights(tgt, con, fitted.n_way)
    # sensitivity re-explains perturbed copies: Captum repeats these (target, contrast or -1) rows with them
    classes = torch.stack([tgt, con if con is not None else torch.full_like(tgt, -1)], 1)
    with eval_mode(fitted):
        if attributions is None:
            attr = method_attributions(fitted, x, method, tgt, con, seed, layer, params)
        else:
            attr = torch.as_tensor(np.asarray(attributions) if not isinstance(attributions, torch.Tensor)
                                   else attributions).detach().float()
        attr = _per_channel(attr, x)
        if attr.shape != x.shape:
            raise DataError(f"attributions {tuple(attr.shape)} do not match the images {tuple(x.shape)}")
        scalar = ExplainedOutput(explanation_model(fitted))  # forward only: the fast copy computes the same
        # Captum puts all given queries (times their samples) in each pass; passes of about
        # DEFAULT_INTERNAL_BATCH images stay in the CPU cache, so queries go in chunks
        per_chunk = max(1, DEFAULT_INTERNAL_BATCH // max(1, n_perturb_samples, n_sensitivity_samples))
        chunks = [slice(i, i + per_chunk) for i in range(0, n, per_chunk)]

        def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = torch.randn_like(inputs) * noise_std
            return noise, inputs - noise

        with seeded(seed):
            infid = torch.cat([
                infidelity(scalar, perturb, x[c], attr[c], additional_forward_args=(weights[c],),
                           n_perturb_samples=n_perturb_samples, max_examples_per_batch=max_examples_per_batch,
                           normalize=True).reshape(-1)
                for c in chunks])

        sens_np = np.full(n, np.nan)
        if n_sensitivity_samples > 0:
            def explanation(inputs: Any, additional_forward_args: Any = None) -> tuple[torch.Tensor]:
                # Captum passes the unperturbed inputs as a 1-tuple and the perturbed ones as a tensor
                inputs = inputs[0] if isinstance(inputs, tuple) else inputs
                args = additional_forward_args
                cls = args[0] if isinstance(args, tuple) else args
                with torch.enable_grad():
                    out = method_attributions(fitted, inputs.detach(), method, cls[:, 0],
                                              None if con is None else cls[:, 1], seed, layer, params)
                # Captum iterates over the result as a tuple of per-input tensors
                return (_per_channel(out, inputs),)

            def uniform(inputs: torch.Tensor, r: float) -> torch.Tensor:
                return inputs + (torch.rand_like(inputs) * 2 - 1) * r

            with seeded(seed + 1):
                sens = torch.cat([
                    sensitivity_max(explanation, x[c], perturb_func=uniform, perturb_radius=radius,
                                    n_perturb_samples=n_sensitivity_samples,
                                    max_examples_per_batch=max_examples_per_batch,
                                    additional_forward_args=(classes[c],)).reshape(-1)
                    for c in chunks])
            sens_np = sens.detach().double().numpy()
            zero = attr.reshape(n, -1).abs().amax(1) == 0
            sens_np = np.where(zero.numpy(), np.nan, sens_np)
    return InfidelitySensitivityResult(infidelity=infid.detach().double().numpy().reshape(n),
                                       sensitivity=sens_np.reshape(n),
                                       noise_std=float(noise_std), radius=float(radius),
                                       targets=tuple(int(t) for t in tgt))
