"""The model-parameter randomisation check (Adebayo et al. 2018): a map that hardly changes when the
weights are destroyed does not explain the model.

The check works on a deep copy of the fitted episode (its model included); the caller's fitted
episode and model are never changed. A query whose trained map is flat (one value everywhere) has
no ranking to compare, so its correlation is undefined (NaN) and it never counts as passing.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import DataError, ModelError
from ..intervals import mean_interval
from ..models import FewShotClassifier, FittedEpisode
from .core import as_images, fitted_classes, require_fitted, seeded
from .method_maps import MethodLike, checked_maps, flat_maps, method_maps, method_name

PASSED, FAILED, UNDEFINED = "passed", "failed", "undefined"


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each row of ``x`` (n, m), ties sharing their average rank (what
    ``scipy.stats.rankdata(x, axis=1)`` gives, without importing scipy on a click: that import alone
    took seconds on a busy machine)."""
    n, m = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=1)
    positions = np.broadcast_to(np.arange(m), (n, m))
    differs = ordered[:, 1:] != ordered[:, :-1]
    starts = np.ones((n, m), dtype=bool)
    starts[:, 1:] = differs
    ends = np.ones((n, m), dtype=bool)
    ends[:, :-1] = differs
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, positions, m - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, m), dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks


def spearman_rows(a: Any, b: Any) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (n, ...) -> (n,).

    Ties get average ranks. When one map of a pair is constant and the other is not, the
    correlation is 0 (the map carries no ranking any more); when both are constant it is 1.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    na, nb = np.sqrt((ra * ra).sum(1)), np.sqrt((rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / (na * nb)
    const_a, const_b = na == 0, nb == 0
    rho = np.where(const_a & const_b, 1.0, np.where(const_a | const_b, 0.0, rho))
    return np.clip(rho, -1.0, 1.0)


@dataclass(frozen=True)
class RandomizationResult:
    """The model-parameter randomisation check for one method.

    Attributes:
        method: the method's name.
        stages: names of the stages; stage i has the parameter groups of ``randomized[i]``
            re-initialised (cascade: the top i + 1 groups; the last stage is the whole model).
        randomized: for each stage, the tuple of module names re-initialised.
        spearman_abs: (n_stages, n) rank correlation of |map| between trained and randomised model;
            NaN for queries whose trained map is flat.
        spearman_signed: (n_stages, n) the same on the signed maps.
        threshold: a method fails when the mean |map| correlation of the fully randomised model
            is at or above this.
        status: "passed" (mean below the threshold), "failed", or "undefined" (every trained map
            is flat).
        targets, seed: the explained classes (the trained model's) and the randomisation seed.
    """

    method: str
    stages: tuple[str, ...]
    randomized: tuple[tuple[str, ...], ...]
    spearman_abs: np.ndarray
    spearman_signed: np.ndarray
    threshold: float
    status: str
    targets: tuple[int, ...]
    seed: int

    @property
    def passed(self) -> bool:
        """True only when the check passed (False when it failed or is undefined)."""
        return self.status == PASSED

    @property
    def final_spearman(self) -> np.ndarray:
        """(n,) |map| correlation with the fully randomised model (what ``status`` is based on)."""
        return self.spearman_abs[-1]

    def to_frame(self) -> pd.DataFrame:
        """One row per stage: mean correlations with a 95% t interval over the queries where defined."""
        rows = []
        for i, stage in enumerate(self.stages):
            ia = mean_interval(self.spearman_abs[i], method="t")
            isg = mean_interval(self.spearman_signed[i], method="t")
            rows.append({"method": self.method, "stage": i, "randomized": stage, "n": ia.n,
                         "n_undefined": int(np.isnan(self.spearman_abs[i]).sum()),
                         "spearman_abs": ia.estimate, "spearman_abs_ci_low": ia.low, "spearman_abs_ci_high": ia.high,
                         "spearman_signed": isg.estimate, "spearman_signed_ci_low": isg.low,
                         "spearman_signed_ci_high": isg.high, "ci_method": "t"})
        return pd.DataFrame(rows)


def layer_groups(model: FewShotClassifier) -> list[tuple[str, list[str]]]:
    """Parameter groups of a few-shot model from the output down to the input.

    Any parameterised module outside the backbone (a learned metric or head) comes first; then the
    backbone's blocks (``backbone.blocks.i`` when the backbone has a ``blocks`` sequence, else each
    parameterised leaf module), last block first. Names are relative to the model.

    Returns:
        [(group name, [module names with parameters in that group]), ...], top first.
    """
    named = dict(model.named_modules())

    def has_own_params(mod: nn.Module) -> bool:
        return any(True for _ in mod.parameters(recurse=False))

    head = [name for name, mod in named.items()
            if name and not name.startswith("backbone") and has_own_params(mod)]
    groups: list[tuple[str, list[str]]] = [("head", head)] if head else []
    backbone, prefix = model.backbone, "backbone."
    blocks = getattr(backbone, "blocks", None)  # Conv-4 and ResNet-12 are a sequence of blocks
    if isinstance(blocks, nn.Sequential) and len(blocks) > 0:
        for i in reversed(range(len(blocks))):
            base = f"{prefix}blocks.{i}"
            mods = [base + ("." + n if n else "") for n, mod in blocks[i].named_modules() if has_own_params(mod)]
            if mods:
                groups.append((base, mods))
    else:
        leaves = [n for n, mod in named.items() if n.startswith(prefix.rstrip(".")) and has_own_params(mod)]
        groups.extend((n, [n]) for n in reversed(leaves))
    if not groups:
        raise ModelError(f"{type(model).__name__} has no parameters to randomise")
    return groups


def _reinitialize(model: nn.Module, module_names: Sequence[str], seed: int) -> None:
    """Re-draw the parameters of these modules of ``model`` (a private copy) from their default
    initialisation (seeded); batch norms go back to identity statistics."""
    named = dict(model.named_modules())
    for name in module_names:
        mod = named[name]
        # seeded by module name: a cascade stage re-draws the same weights as the stage before it
        with seeded(seed * 1_000_003 + zlib.crc32(name.encode())):
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
            else:
                for p in mod.parameters(recurse=False):
                    with torch.no_grad():
                        p.normal_(0.0, 0.05)


def randomized_copy(fitted: FittedEpisode, support_images: Any, seed: int = 0,
                    modules: Sequence[str] | None = None) -> FittedEpisode:
    """A new fitted episode from a deep copy of the model with these modules (names relative to the
    model; default: all) re-initialised and the support set re-embedded with the randomised backbone
    (the stored prototypes came from the old one). ``fitted`` and its model are not changed.

    Args:
        fitted: the trained fitted episode (its support labels are reused).
        support_images: (n_support, C, H, W), the images it was fitted with.
        seed: seeds the re-initialisation.
        modules: module names to re-initialise.
    """
    fitted = require_fitted(fitted, "randomized_copy")
    s_img = as_images(support_images, "support_images")
    if len(s_img) != len(fitted.support_labels_):
        raise DataError(f"{len(s_img)} support images but the fitted episode has {len(fitted.support_labels_)}; "
                        "pass the images it was fitted with")
    model = copy.deepcopy(fitted.model).eval()
    if modules is None:
        modules = [m for _, group in layer_groups(model) for m in group]
    _reinitialize(model, modules, seed)
    return model.fit(s_img, fitted.support_labels_)


def _stages(model: FewShotClassifier, layers: str | Sequence[str]) -> list[tuple[str, list[str]]]:
    groups = layer_groups(model)
    all_modules = [m for _, g in groups for m in g]
    stages: list[tuple[str, list[str]]] = []
    if isinstance(layers, str):
        if layers == "cascade":
            acc: list[str] = []
            for name, mods in groups:
                acc = acc + mods
                stages.append((name if len(stages) == 0 else f"... {name}", list(acc)))
            stages[-1] = ("all", stages[-1][1])
        elif layers == "independent":
            stages = [(name, mods) for name, mods in groups] + [("all", all_modules)]
        elif layers == "full":
            stages = [("all", all_modules)]
        else:
            raise DataError(f"unknown layers {layers!r}; use 'cascade', 'independent', 'full' or a list of modules")
        return stages
    named = dict(model.named_modules())
    acc = []
    for name in layers:
        if name not in named:
            raise ModelError(f"unknown module {name!r}; modules with parameters: {all_modules}")
        mods = [name + ("." + n if n else "") for n, mod in named[name].named_modules()
                if any(True for _ in mod.parameters(recurse=False))]
        acc = acc + mods
        stages.append((name, list(acc)))
    return stages


def randomization_status(spearman: np.ndarray, threshold: float) -> str:
    """"passed" when the mean of the defined correlations is below ``threshold``, "failed" when
    not, "undefined" when none is defined."""
    values = np.asarray(spearman, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return UNDEFINED
    return PASSED if float(values.mean()) < threshold else FAILED


def randomization_check(
    fitted: FittedEpisode,
    query_images: Any,
    method: MethodLike,
    support_images: Any,
    layers: str | Sequence[str] = "cascade",
    targets: Any = "predicted",
    contrasts: Any = None,
    threshold: float = 0.5,
    seed: int = 0,
    layer: str | None = None,
    maps: Any = None,
    **params: Any,
) -> RandomizationResult:
    """The model-parameter randomisation sanity check (Adebayo et al. 2018).

    A deep copy of the model has its parameters re-initialised group by group from the top (output
    side) down, the support set is re-embedded with the randomised backbone, and the queries are
    explained again for the same target classes. The Spearman rank correlation between the trained
    and randomised maps (of |map| and of the signed map) is computed per query. A method whose maps
    of the fully randomised model still correlate at ``threshold`` or more (mean |map| correlation
    over the queries with a non-flat trained map) fails: it does not depend on what the model learned.

    Args:
        fitted: the trained fitted episode (not changed).
        query_images: (n, C, H, W).
        method: a registry name or a callable ``fn(fitted, images, targets, contrasts, seed, **params)``.
        support_images: (n_support, C, H, W), the images ``fitted`` was fitted with.
        layers: "cascade" (top group, then top two, ... then all), "independent" (each group alone,
            then all), "full" (only the fully randomised model; cheapest), or a list of module names
            (relative to the model) randomised cumulatively in that order.
        targets, contrasts: as in :func:`~fsl_xai.explain.deletion.deletion_insertion`, resolved on the
            trained model and kept fixed for the randomised ones.
        threshold: the failing threshold on the fully randomised model's mean |map| correlation.
        seed: seeds the re-initialisation and the explanations.
        layer: the layer for layer methods (Grad-CAM).
        maps: the trained model's maps if already computed (n, H, W) or (n, C, H, W).
        **params: passed to the method.

    Returns:
        A :class:`RandomizationResult`.
    """
    fitted = require_fitted(fitted, "randomization_check")
    x = as_images(query_images)
    tgt, con = fitted_classes(fitted, x, targets, contrasts)
    base_maps = checked_maps(fitted, x, method, tgt, con, seed, layer, params, maps)
    flat = flat_maps(base_maps)

    rho_abs, rho_signed = [], []
    stages = _stages(fitted.model, layers)
    for _, mods in stages:
        rand = randomized_copy(fitted, support_images, seed=seed, modules=mods).with_queries(x)
        rmaps = method_maps(rand, x, method, tgt, con, seed, layer, params)
        rho_abs.append(np.where(flat, np.nan, spearman_rows(base_maps.abs().numpy(), rmaps.abs().numpy())))
        rho_signed.append(np.where(flat, np.nan, spearman_rows(base_maps.numpy(), rmaps.numpy())))
    rho_abs_a, rho_signed_a = np.stack(rho_abs), np.stack(rho_signed)
    return RandomizationResult(
        method=method_name(method), stages=tuple(s for s, _ in stages),
        randomized=tuple(tuple(m) for _, m in stages), spearman_abs=rho_abs_a, spearman_signed=rho_signed_a,
        threshold=float(threshold), status=randomization_status(rho_abs_a[-1], threshold),
        targets=tuple(int(t) for t in tgt), seed=int(seed),
    )
