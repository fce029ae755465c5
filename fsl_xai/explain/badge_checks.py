"""Quality badges: the cheap per-map checks shown next to a heatmap, as a frozen result.

Each check compares the map's score with a threshold and says "passed", "failed" or "undefined":

- ``randomization``: |map| rank correlation with the map of a fully randomised model; passes
  below ``threshold`` (the map depends on what the model learned).
- ``deletion``: deletion area; passes below the area of a seeded random map on the same queries.
- ``insertion``: insertion area; passes above the random map's.
- ``support_labels`` and ``support_images``: |map| rank correlation with the map of the same
  query when the support labels are shuffled, or the support images replaced by images of other
  classes (:mod:`~fsl_xai.explain.support_randomization`); each passes below ``support_threshold``
  (default 0.9). A map that ignores the support set (computed from the query alone) scores 1.
- ``completeness`` (methods whose registry entry has ``completeness``, i.e. Integrated Gradients):
  |sum of attributions - (F(x) - F(baseline))| / the query's decision margin; passes below
  ``completeness_threshold`` (default 0.1): the part of the explained change the map fails to
  account for (its integration error) must be at most a tenth of what separates the decision
  from the runner-up, so that the error cannot be mistaken for, or hide, evidence that would
  change the decision. A zero margin (a tie) leaves it undefined.
- with a mask, ``pointing_game`` (the map's maximum inside the mask) and ``energy_inside`` (share
  of positive attribution inside the mask); both pass above the mask's share of the image (what a
  uniform or random map gets).

A flat map (one value everywhere, all zero included) never passes: every check of it is
"undefined", as is a localisation check on an empty mask or an energy share without positive
attribution.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models import FittedEpisode
from .attribution import AttributionMap, completeness_gaps, relative_gaps
from .core import as_images, eval_mode, fitted_classes, require_fitted, selection_weights
from .deletion import deletion_insertion
from .localization import localization
from .method_maps import MethodLike, checked_maps, flat_maps, method_maps, method_name, random_maps
from .methods import METHODS
from .randomization import FAILED, PASSED, UNDEFINED, randomized_copy, spearman_rows
from .support_randomization import DEFAULT_SUPPORT_THRESHOLD, support_check

#: a completeness gap at or above this share of the query's decision margin fails the completeness badge
DEFAULT_COMPLETENESS_THRESHOLD = 0.1
#: the badge name of each support perturbation
SUPPORT_BADGES = {"shuffled_labels": "support_labels", "other_images": "support_images"}

_RANDOM_CACHE: OrderedDict[tuple, FittedEpisode] = OrderedDict()
_RANDOM_CACHE_SIZE = 4


@dataclass(frozen=True)
class BadgeCheck:
    """One quality check of one or a few maps.

    Attributes:
        name: "randomization", "deletion", "insertion", "support_labels", "support_images",
            "completeness", "pointing_game" or "energy_inside".
        value: the mean over the queries where the check is defined (None when it is nowhere).
        threshold: what ``value`` is compared with (None when undefined).
        status: "passed", "failed" or "undefined".
        n: queries where the check is defined; n_undefined: queries where it is not.
        higher_is_better: whether passing means above (True) or below (False) the threshold.
        values: per query, the value or None where undefined.
    """

    name: str
    value: float | None
    threshold: float | None
    status: str
    n: int
    n_undefined: int
    higher_is_better: bool
    values: tuple[float | None, ...]

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "status": self.status,
                "n": self.n, "n_undefined": self.n_undefined, "higher_is_better": self.higher_is_better,
                "values": list(self.values)}


@dataclass(frozen=True)
class Badges:
    """The quality badges of a method's maps for one or a few queries.

    Attributes:
        method: the method's name.
        n_queries: how many queries the maps are of.
        checks: one :class:`BadgeCheck` per check, in a fixed order (randomization, deletion,
            insertion, support_labels and support_images unless turned off, completeness for
            methods with that property, then with a mask pointing_game and energy_inside).
    """

    method: str
    n_queries: int
    checks: tuple[BadgeCheck, ...]

    def __getitem__(self, name: str) -> BadgeCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no badge {name!r}; the badges are {[c.name for c in self.checks]}")

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.checks)

    def to_dict(self) -> dict:
        """JSON-serialisable: {"method", "n_queries", "checks": {name: check as a dict}}."""
        return {"method": self.method, "n_queries": self.n_queries,
                "checks": {c.name: c.to_dict() for c in self.checks}}


def _check(name: str, values: np.ndarray, reference: np.ndarray | float, higher_is_better: bool) -> BadgeCheck:
    """A check from per-query values (NaN = undefined) against a per-query or fixed reference; the
    threshold is the reference's mean over the queries where the value is defined."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ref = np.broadcast_to(np.asarray(reference, dtype=np.float64), v.shape)
    defined = np.isfinite(v) & np.isfinite(ref)
    per_query = tuple(float(x) if d else None for x, d in zip(v, defined, strict=True))
    n = int(defined.sum())
    if n == 0:
        return BadgeCheck(name, None, None, UNDEFINED, 0, len(v), higher_is_better, per_query)
    value = float(v[defined].mean())
    # a fixed threshold stays exactly as given (a mean of copies of 0.1 is not 0.1 in floats)
    threshold = float(reference) if np.ndim(reference) == 0 else float(ref[defined].mean())
    better = value > threshold if higher_is_better else value < threshold
    return BadgeCheck(name, value, threshold, PASSED if better else FAILED, n, len(v) - n, higher_is_better,
                      per_query)


def _cached_randomized(fitted: FittedEpisode, support_images: torch.Tensor, seed: int) -> FittedEpisode:
    """The fully randomised fitted episode of this model, support set and seed (a few are kept)."""
    h = hashlib.sha1(support_images.numpy().tobytes())
    h.update(fitted.support_labels_.numpy().tobytes())
    key = (fitted.fingerprint(), h.hexdigest()[:16], int(seed))
    if key in _RANDOM_CACHE:
        _RANDOM_CACHE.move_to_end(key)
        return _RANDOM_CACHE[key]
    rand = randomized_copy(fitted, support_images, seed=seed)
    _RANDOM_CACHE[key] = rand
    while len(_RANDOM_CACHE) > _RANDOM_CACHE_SIZE:
        _RANDOM_CACHE.popitem(last=False)
    return rand


def completeness_values(fitted: FittedEpisode, x: torch.Tensor, method: MethodLike, maps: torch.Tensor,
                        attribution: Any, tgt: torch.Tensor, con: torch.Tensor | None,
                        params: dict) -> np.ndarray | None:
    """(n,) |completeness gap| / decision margin of the maps (n, H, W) of queries x (n, C, H, W) for a
    method with the completeness property: taken from an AttributionMap that recorded it, else
    computed from the maps with the method's ``baselines`` parameter. None for other methods."""
    if not isinstance(method, str) or method not in METHODS or not METHODS[method].completeness:
        return None
    if isinstance(attribution, AttributionMap) and attribution.relative_gap is not None:
        return attribution.relative_gap
    from ..evaluation import margins  # evaluation imports pandas: on first use

    spec = METHODS[method]
    baseline = spec.parameters({k: v for k, v in params.items() if k in spec.defaults})["baselines"]
    weights = selection_weights(tgt, con, fitted.n_way)
    gap, _ = completeness_gaps(fitted, x, maps.double().sum((1, 2)).numpy(), weights, baseline)
    with torch.no_grad(), eval_mode(fitted):
        return relative_gaps(gap, margins(fitted(x).numpy()))


def badges(
    fitted: FittedEpisode,
    query_images: Any,
    method: MethodLike,
    support_images: Any,
    mask: Any = None,
    target: Any = "predicted",
    contrast: Any = None,
    seed: int = 0,
    attribution: Any = None,
    steps: int = 10,
    baseline: Any = "blur",
    threshold: float = 0.5,
    layer: str | None = None,
    support: bool = True,
    other_images: Any = None,
    support_threshold: float = DEFAULT_SUPPORT_THRESHOLD,
    completeness_threshold: float = DEFAULT_COMPLETENESS_THRESHOLD,
    **params: Any,
) -> Badges:
    """Cheap quality badges for the maps of one or a few queries (for display next to a map).

    Costs one explanation with a randomised copy of the model (cached per model, support set and
    seed) plus 4 x (steps + 1) forward passes per query (the map's and a random map's deletion and
    insertion curves), and with ``support`` two explanations with a destroyed support set (refits
    of the stored support embeddings, no re-embedding unless ``other_images`` are given); pass the
    already computed map as ``attribution`` to skip re-explaining with the trained model. Nothing
    given is changed.

    Args:
        fitted: the fitted episode.
        query_images: (C, H, W) for one query or (n, C, H, W).
        method: registry name or callable.
        support_images: the images ``fitted`` was fitted with (re-embedded by the randomised model).
        mask: (H, W) or (n, H, W) lesion mask, or None.
        target, contrast: the explained class(es) (as in ``deletion_insertion``); with the default
            "predicted" and an AttributionMap as ``attribution``, the map's own classes.
        seed: randomisation, random-map and tie-breaking seed.
        attribution: an AttributionMap or (n, [C,] H, W) maps of these queries for these targets.
        steps: deletion/insertion steps.
        baseline: deletion baseline ("blur", "zeros", "mean", a number or a tensor).
        threshold: randomisation fail threshold.
        layer, **params: passed to the method.
        support: add the support-set checks ``support_labels`` and ``support_images``.
        other_images: (m, C, H, W) images of classes outside the episode for ``support_images``
            (default: the images of the episode's next class).
        support_threshold: the support checks fail at or above this mean |map| correlation.
        completeness_threshold: the completeness badge fails at or above this mean |gap| / margin.

    Returns:
        :class:`Badges`.
    """
    fitted = require_fitted(fitted, "badges")
    x = as_images(query_images)
    s_img = as_images(support_images, "support_images")
    if isinstance(attribution, AttributionMap) and target == "predicted":
        target = list(attribution.targets)
        if contrast is None and attribution.contrasts is not None:
            contrast = list(attribution.contrasts)
    tgt, con = fitted_classes(fitted, x, target, contrast)
    maps = checked_maps(fitted, x, method, tgt, con, seed, layer, params, attribution)
    rand = _cached_randomized(fitted, s_img, seed).with_queries(x)
    rmaps = method_maps(rand, x, method, tgt, con, seed, layer, params)
    rho = np.where(flat_maps(maps), np.nan, spearman_rows(maps.abs().numpy(), rmaps.abs().numpy()))
    di = deletion_insertion(fitted, x, maps, tgt, con, steps=steps, baseline=baseline, seed=seed)
    ref = deletion_insertion(fitted, x, random_maps(maps.shape, seed=seed), tgt, con, steps=steps,
                             baseline=baseline, seed=seed)
    checks = [_check("randomization", rho, float(threshold), higher_is_better=False),
              _check("deletion", di.deletion_auc, ref.deletion_auc, higher_is_better=False),
              _check("insertion", di.insertion_auc, ref.insertion_auc, higher_is_better=True)]
    if support:
        sc = support_check(fitted, x, method, other_images, targets=tgt, contrasts=con, threshold=support_threshold,
                           seed=seed, layer=layer, maps=maps, **params)
        checks += [_check(SUPPORT_BADGES[v], sc.spearman_abs[i], sc.threshold, higher_is_better=False)
                   for i, v in enumerate(sc.variants)]
    relative_gap = completeness_values(fitted, x, method, maps, attribution, tgt, con, params)
    if relative_gap is not None:
        checks.append(_check("completeness", relative_gap, float(completeness_threshold), higher_is_better=False))
    if mask is not None:
        loc = localization(maps, mask)
        checks += [_check("pointing_game", loc.pointing_hit, loc.mask_fraction, higher_is_better=True),
                   _check("energy_inside", loc.energy_inside, loc.mask_fraction, higher_is_better=True)]
    return Badges(method=method_name(method), n_queries=len(x), checks=tuple(checks))
