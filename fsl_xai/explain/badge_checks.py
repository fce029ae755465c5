"""Quality badges: the cheap per-map checks shown next to a heatmap, as a frozen result.

Each check compares the map's score with a threshold and says "passed", "failed" or "undefined":

- ``randomization``: |map| rank correlation with the map of a fully randomised model; passes
  below ``threshold`` (the map depends on what the model learned).
- ``deletion``: deletion area; passes below the area of a seeded random map on the same queries.
- ``insertion``: insertion area; passes above the random map's.
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
from .attribution import AttributionMap
from .core import as_images, eval_mode, fitted_classes, require_fitted
from .deletion import deletion_insertion
from .localization import localization
from .method_maps import MethodLike, as_maps, flat_maps, method_maps, method_name, random_maps
from .randomization import FAILED, PASSED, UNDEFINED, randomized_copy, spearman_rows

_RANDOM_CACHE: OrderedDict[tuple, FittedEpisode] = OrderedDict()
_RANDOM_CACHE_SIZE = 4


@dataclass(frozen=True)
class BadgeCheck:
    """One quality check of one or a few maps.

    Attributes:
        name: "randomization", "deletion", "insertion", "pointing_game" or "energy_inside".
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
            insertion, then with a mask pointing_game and energy_inside).
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
    value, threshold = float(v[defined].mean()), float(ref[defined].mean())
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
    **params: Any,
) -> Badges:
    """Cheap quality badges for the maps of one or a few queries (for display next to a map).

    Costs one explanation with a randomised copy of the model (cached per model, support set and
    seed) plus 4 x (steps + 1) forward passes per query (the map's and a random map's deletion and
    insertion curves); pass the already computed map as ``attribution`` to skip re-explaining with
    the trained model. Nothing given is changed.

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
    if attribution is None:
        with eval_mode(fitted):
            maps = method_maps(fitted, x, method, tgt, con, seed, layer, params)
    else:
        maps = as_maps(attribution, len(x), tuple(x.shape[2:]))
    rand = _cached_randomized(fitted, s_img, seed).with_queries(x)
    rmaps = method_maps(rand, x, method, tgt, con, seed, layer, params)
    rho = np.where(flat_maps(maps), np.nan, spearman_rows(maps.abs().numpy(), rmaps.abs().numpy()))
    di = deletion_insertion(fitted, x, maps, tgt, con, steps=steps, baseline=baseline, seed=seed)
    ref = deletion_insertion(fitted, x, random_maps(maps.shape, seed=seed), tgt, con, steps=steps,
                             baseline=baseline, seed=seed)
    checks = [_check("randomization", rho, float(threshold), higher_is_better=False),
              _check("deletion", di.deletion_auc, ref.deletion_auc, higher_is_better=False),
              _check("insertion", di.insertion_auc, ref.insertion_auc, higher_is_better=True)]
    if mask is not None:
        loc = localization(maps, mask)
        checks += [_check("pointing_game", loc.pointing_hit, loc.mask_fraction, higher_is_better=True),
                   _check("energy_inside", loc.energy_inside, loc.mask_fraction, higher_is_better=True)]
    return Badges(method=method_name(method), n_queries=len(x), checks=tuple(checks))
