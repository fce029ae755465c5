"""How far to trust an explanation: faithfulness, localisation and sanity checks of attribution maps.

Every metric is computed for many queries at once (one tensor per batch, never a Python loop over
queries or pixels):

- :func:`deletion_insertion`: remove (or insert) the most-attributed pixels first and follow the
  explained class probability (or logit); a faithful map makes the deletion curve fall fast (low
  area) and the insertion curve rise fast (high area) (Petsiuk et al. 2018).
- :func:`localization`: the pointing game (is the map's maximum inside the lesion mask?) and the
  share of positive attribution that falls inside the mask.
- :func:`randomization_check`: the model-parameter randomisation test (Adebayo et al. 2018); a map
  that hardly changes when the weights are destroyed does not explain the model.
- :func:`infidelity_sensitivity`: Captum's infidelity and max-sensitivity (Yeh et al. 2019).
- :func:`quality_table`: all of these for several methods, one row per method x metric, with n and
  a 95% confidence interval over queries.
- :func:`badges`: the cheap per-query summary shown next to a map in the widgets.

Methods are given by name (resolved with ``fsl_xai.explain.attribution.explain``) or as a callable
``fn(model, query_images, targets, contrasts, seed) -> (n, H, W) or (n, C, H, W)`` for maps that do
not come from the registry (useful for baselines such as an edge detector of the input).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, ModelError
from .attribution import DEFAULT_INTERNAL_BATCH, _gaussian_blur, explanation_model

__all__ = [
    "DeletionInsertionResult", "LocalizationResult", "RandomizationResult", "InfidelitySensitivityResult",
    "deletion_insertion", "localization", "randomization_check", "infidelity_sensitivity",
    "quality_table", "badges", "random_maps", "spearman_rows", "confidence_interval",
]

MethodLike = str | Callable[..., Any]

#: metrics where a larger value means a better explanation (others: smaller is better)
HIGHER_IS_BETTER = {
    "deletion_auc": False, "insertion_auc": True, "pointing_game": True, "energy_inside_mask": True,
    "randomization_spearman": False, "infidelity": False, "sensitivity_max": False,
}


# ====================================================================== small helpers
@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate with frozen batch-norm statistics, restoring the caller's train/eval flags after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block without changing it for the caller."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _as_images(query_images: Any, what: str = "query_images") -> torch.Tensor:
    x = torch.as_tensor(np.asarray(query_images) if not isinstance(query_images, torch.Tensor) else query_images)
    if x.ndim == 3:
        raise DataError(f"{what} must be a batch (n, C, H, W); got one image {tuple(x.shape)}; "
                        "add a batch axis (images[None])")
    if x.ndim != 4:
        raise DataError(f"{what} must have shape (n, C, H, W), got {tuple(x.shape)}")
    if len(x) == 0:
        raise DataError(f"{what} is empty; give at least one query image")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite pixels; repair or drop those images first")
    return x


def _as_maps(maps: Any, n: int | None = None, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """AttributionMap, (n, H, W) or (n, C, H, W) -> float tensor (n, H, W) (channels summed)."""
    if hasattr(maps, "maps") and hasattr(maps, "attributions"):
        maps = maps.maps
    m = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).detach().float()
    if m.ndim == 4:
        m = m.sum(1)
    if m.ndim != 3:
        raise DataError(f"maps must have shape (n, H, W) or (n, C, H, W), got {tuple(m.shape)}")
    if n is not None and len(m) != n:
        raise DataError(f"{len(m)} maps for {n} query images; give one map per query")
    if hw is not None and tuple(m.shape[1:]) != tuple(hw):
        raise DataError(f"maps are {tuple(m.shape[1:])} but the images are {tuple(hw)}; "
                        "upsample the maps to the input size first")
    if not torch.isfinite(m).all():
        raise DataError("maps contain NaN or infinite values; check the attribution method's parameters")
    return m


def _n_way(model: nn.Module) -> int:
    protos = getattr(model, "prototypes_", None)
    if protos is None:
        raise ModelError(f"{type(model).__name__} has no support set yet; call fit_support(images, labels) "
                         "or pass support_images and support_labels")
    return int(len(protos))


def _label_vector(value: Any, n: int, n_way: int, what: str) -> torch.Tensor:
    if isinstance(value, (int, np.integer)):
        vec = torch.full((n,), int(value), dtype=torch.long)
    else:
        vec = torch.as_tensor(np.asarray(list(value) if not isinstance(value, (np.ndarray, torch.Tensor)) else value),
                              dtype=torch.long).reshape(-1)
        if len(vec) != n:
            raise DataError(f"{what}: {len(vec)} values for {n} queries; give one per query or a single int")
    if len(vec) and (vec.min() < 0 or vec.max() >= n_way):
        raise ModelError(f"{what} {sorted(set(vec.tolist()))} not all in this episode's classes 0..{n_way - 1}")
    return vec


def _resolve_targets(model: nn.Module, images: torch.Tensor, targets: Any, contrasts: Any = None,
                     batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """targets: "predicted", an int or one int per query; contrasts: None, "runner_up", an int or
    one int per query. Returns (targets (n,), contrasts (n,) or None)."""
    n, n_way = len(images), _n_way(model)
    need_logits = (isinstance(targets, str)) or (isinstance(contrasts, str))
    logits = None
    if need_logits:
        with torch.no_grad(), _eval_mode(model):
            logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, n, batch_size)])
    if isinstance(targets, str):
        if targets != "predicted":
            raise DataError(f"unknown target {targets!r}; use 'predicted', a class index or one index per query")
        tgt = logits.argmax(1)
    else:
        tgt = _label_vector(targets, n, n_way, "target class")
    if contrasts is None:
        return tgt, None
    if isinstance(contrasts, str):
        if contrasts != "runner_up":
            raise DataError(f"unknown contrast {contrasts!r}; use None, 'runner_up', a class index or one per query")
        if n_way < 2:
            raise ModelError("a contrast needs at least two classes in the episode")
        masked = logits.clone()
        masked[torch.arange(n), tgt] = -torch.inf
        con = masked.argmax(1)
    else:
        con = _label_vector(contrasts, n, n_way, "contrast class")
    if (con == tgt).any():
        raise ModelError("a contrast class equals the target class for some queries; pick a different class")
    return tgt, con


def _explained_scalar(logits: torch.Tensor, targets: torch.Tensor, contrasts: torch.Tensor | None,
                      output: str = "logit") -> torch.Tensor:
    """The number an explanation explains: logit[target] (- logit[contrast]), or the softmax version."""
    if output == "probability":
        logits = logits.softmax(-1)
    elif output != "logit":
        raise DataError(f"unknown output {output!r}; use 'logit' or 'probability'")
    rows = torch.arange(len(logits))
    value = logits[rows, targets]
    if contrasts is not None:
        value = value - logits[rows, contrasts]
    return value


def _baseline_images(x: torch.Tensor, baseline: str | float | torch.Tensor, blur_sigma: float | None) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor) or isinstance(baseline, np.ndarray):
        b = torch.as_tensor(baseline, dtype=x.dtype)
        try:
            return b.expand_as(x).clone()
        except RuntimeError:
            raise DataError(f"baseline of shape {tuple(b.shape)} does not fit images {tuple(x.shape)}") from None
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if baseline == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(1.0, max(x.shape[2:]) / 8)
        return _gaussian_blur(x, float(sigma))
    raise DataError(f"unknown baseline {baseline!r}; use 'blur', 'zero', 'mean', a number or a tensor")


def random_maps(shape: Sequence[int], seed: int = 0, smooth: float = 0.0) -> torch.Tensor:
    """Seeded random maps (n, H, W), the chance reference for localisation and deletion.

    Args:
        shape: (n, H, W).
        seed: same seed -> same maps.
        smooth: Gaussian blur sigma in pixels (0 = white noise); blobby random maps are a fairer
            reference for smooth methods such as Grad-CAM.
    """
    g = torch.Generator().manual_seed(int(seed))
    m = torch.randn(tuple(shape), generator=g)
    if smooth > 0:
        m = _gaussian_blur(m[:, None], smooth)[:, 0]
    return m


def _pixel_ranks(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, H, W) -> (n, H*W) rank of each pixel, 0 = most attributed; ties broken at random (seeded)
    so that flat regions (Grad-CAM plateaus, zero maps) are not removed in raster order."""
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


def confidence_interval(values: Any, method: str = "t", level: float = 0.95, n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the non-NaN values; ``method`` "t" (Student t interval), "wilson"
    (for 0/1 values) or "bootstrap" (percentile, seeded). With n < 2 the interval is (nan, nan)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if method == "wilson":
        z = stats.norm.ppf(0.5 + level / 2)
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return mean, max(0.0, centre - half), min(1.0, centre + half), n
    if n < 2:
        return mean, float("nan"), float("nan"), n
    if method == "t":
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        return mean, mean - half, mean + half, n
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, n, size=(n_boot, n))].mean(1)
        lo, hi = np.quantile(means, [(1 - level) / 2, 0.5 + level / 2])
        return mean, float(lo), float(hi), n
    raise DataError(f"unknown interval method {method!r}; use 't', 'wilson' or 'bootstrap'")


def spearman_rows(a: Any, b: Any) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (n, ...) -> (n,).

    Ties get average ranks. When one map of a pair is constant and the other is not, the
    correlation is 0 (the map carries no ranking any more); when both are constant it is 1.
    """
    from scipy.stats import rankdata

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    na, nb = np.sqrt((ra * ra).sum(1)), np.sqrt((rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / (na * nb)
    const_a, const_b = na == 0, nb == 0
    rho = np.where(const_a & const_b, 1.0, np.where(const_a | const_b, 0.0, rho))
    return np.clip(rho, -1.0, 1.0)


# ====================================================================== explaining (lazy)
def _method_name(method: MethodLike) -> str:
    if isinstance(method, str):
        return method
    return getattr(method, "name", None) or getattr(method, "__name__", None) or type(method).__name__


def _attributions(model: nn.Module, images: torch.Tensor, method: MethodLike, targets: torch.Tensor,
                  contrasts: torch.Tensor | None, seed: int, layer: str | None = None,
                  params: dict | None = None) -> torch.Tensor:
    """Attributions (n, C, H, W) or maps (n, H, W) for explicit integer targets."""
    params = dict(params or {})
    if callable(method) and not isinstance(method, str):
        out = method(model, images, targets=targets, contrasts=contrasts, seed=seed, **params)
    else:
        # imported here: the attribution module may arrive later, and quality metrics on given
        # maps must work without it
        from .attribution import explain

        if layer is not None:
            params["layer"] = layer
        amap = explain(model, images, method=method, target=targets.tolist(),
                       contrast=None if contrasts is None else contrasts.tolist(), seed=seed, **params)
        out = amap.attributions
    if hasattr(out, "attributions"):
        out = out.attributions
    out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).detach().float()
    if out.ndim not in (3, 4) or len(out) != len(images) or tuple(out.shape[-2:]) != tuple(images.shape[-2:]):
        raise ModelError(f"method {_method_name(method)!r} returned shape {tuple(out.shape)} for images "
                         f"{tuple(images.shape)}; it must return (n, H, W) or (n, C, H, W) at the input size")
    return out


def _maps_of(model: nn.Module, images: torch.Tensor, method: MethodLike, targets: torch.Tensor,
             contrasts: torch.Tensor | None, seed: int, layer: str | None, params: dict | None) -> torch.Tensor:
    out = _attributions(model, images, method, targets, contrasts, seed, layer, params)
    return out.sum(1) if out.ndim == 4 else out


# ====================================================================== deletion / insertion
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
            a random map (:func:`random_maps`) on the same queries.
        deletion_auc_normalized / insertion_auc_normalized: (n,) areas after rescaling each
            query's curves so that the original image scores 1 and the baseline image 0 (useful
            with ``output="logit"``; NaN where both scores are equal, unstable where they are close).
        targets, contrasts: the explained classes; output: "logit" or "probability"; baseline: its name.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    deletion_auc_normalized: np.ndarray
    insertion_auc_normalized: np.ndarray
    targets: tuple[int, ...]
    contrasts: tuple[int, ...] | None
    output: str
    baseline: str

    def to_frame(self) -> pd.DataFrame:
        """One row per query with the four areas."""
        return pd.DataFrame({
            "query": np.arange(len(self.deletion_auc)), "target": list(self.targets),
            "deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc,
            "deletion_auc_normalized": self.deletion_auc_normalized,
            "insertion_auc_normalized": self.insertion_auc_normalized,
        })


def deletion_insertion(
    model: nn.Module,
    query_images: Any,
    maps: Any,
    targets: Any = None,
    contrasts: Any = None,
    steps: int = 20,
    baseline: str | float | torch.Tensor = "blur",
    output: str = "probability",
    batch_size: int = DEFAULT_INTERNAL_BATCH,
    blur_sigma: float | None = None,
    seed: int = 0,
) -> DeletionInsertionResult:
    """Deletion and insertion curves of attribution maps, batched over queries and steps.

    At step k of ``steps`` the ``round(k / steps * H * W)`` most-attributed pixels (all channels of
    a pixel together, highest signed value first) are replaced by the baseline (deletion) or copied
    into the baseline image (insertion), and the model's explained score is recorded. All
    (steps + 1) x n images of both curves go through the model in batches of ``batch_size``.

    Args:
        model: a few-shot model fit on its support set.
        query_images: (n, C, H, W).
        maps: an ``AttributionMap`` or maps (n, H, W) / attributions (n, C, H, W).
        targets: the explained class per query: None (the map's targets when ``maps`` is an
            AttributionMap, else "predicted"), "predicted", an int or one int per query.
        contrasts: None, "runner_up", an int or one per query (explains target minus contrast);
            None with an AttributionMap uses the map's contrasts.
        steps: number of steps (curves have steps + 1 points).
        baseline: "blur" (Gaussian blur of the image), "zero", "mean" (per image and channel),
            a number or a tensor broadcastable to the images.
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
    x = _as_images(query_images)
    n, c, h, w = x.shape
    if steps < 1:
        raise DataError(f"steps must be at least 1, got {steps}")
    if targets is None and hasattr(maps, "targets") and getattr(maps, "targets", None) is not None:
        targets = list(maps.targets)
        if contrasts is None and getattr(maps, "contrasts", None) is not None:
            contrasts = list(maps.contrasts)
    if targets is None:
        targets = "predicted"
    m = _as_maps(maps, n, (h, w))
    tgt, con = _resolve_targets(model, x, targets, contrasts, batch_size)
    base = _baseline_images(x, baseline, blur_sigma)
    ranks = _pixel_ranks(m, seed)                                            # (n, HW)
    counts = torch.round(torch.linspace(0, 1, steps + 1) * (h * w)).long()  # pixels removed per step

    total = (steps + 1) * n
    del_scores = torch.empty(total)
    ins_scores = torch.empty(total)
    chunk = max(1, batch_size // 2)  # deletion and insertion images share one forward pass
    with torch.no_grad(), _eval_mode(model):
        runner = explanation_model(model)  # BatchNorm folded, channels-last: the same function, faster
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total))
            step, q = idx // n, idx % n
            removed = (ranks[q] < counts[step][:, None]).view(-1, 1, h, w).to(x.dtype)
            xs, bs = x[q], base[q]
            deleted = xs * (1 - removed) + bs * removed
            inserted = bs * (1 - removed) + xs * removed
            logits = runner(torch.cat([deleted, inserted]).contiguous(memory_format=torch.channels_last))
            tq = tgt[q]
            cq = None if con is None else con[q]
            del_scores[idx] = _explained_scalar(logits[: len(idx)], tq, cq, output)
            ins_scores[idx] = _explained_scalar(logits[len(idx):], tq, cq, output)
    deletion = del_scores.view(steps + 1, n).T.numpy().astype(np.float64)
    insertion = ins_scores.view(steps + 1, n).T.numpy().astype(np.float64)
    fractions = (counts.double() / (h * w)).numpy()

    full, empty = deletion[:, :1], deletion[:, -1:]
    span = full - empty
    ok = np.abs(span) > 1e-6 * (1 + np.abs(full))
    with np.errstate(invalid="ignore", divide="ignore"):
        del_norm = np.where(ok, (deletion - empty) / span, np.nan)
        ins_norm = np.where(ok, (insertion - empty) / span, np.nan)
    return DeletionInsertionResult(
        fractions=fractions, deletion=deletion, insertion=insertion,
        deletion_auc=np.trapezoid(deletion, fractions, axis=1),
        insertion_auc=np.trapezoid(insertion, fractions, axis=1),
        deletion_auc_normalized=np.trapezoid(del_norm, fractions, axis=1),
        insertion_auc_normalized=np.trapezoid(ins_norm, fractions, axis=1),
        targets=tuple(int(t) for t in tgt), contrasts=None if con is None else tuple(int(v) for v in con),
        output=output, baseline=baseline if isinstance(baseline, str) else "custom",
    )


# ====================================================================== localisation
@dataclass(frozen=True)
class LocalizationResult:
    """Localisation of n maps against n masks.

    Attributes:
        pointing_hit: (n,) 1.0 when the map's maximum lies inside the (tolerance-dilated) mask,
            0.0 when not, NaN when the mask is empty. A constant map never hits.
        energy_inside: (n,) share of the positive attribution that falls inside the mask (NaN when
            the mask is empty or the map has no positive value).
        mask_fraction: (n,) the mask's share of the image: what a uniform or random map scores on
            ``energy_inside`` on average, and about its pointing-game hit rate.
        tolerance: the dilation radius (pixels) used for the pointing game.
    """

    pointing_hit: np.ndarray
    energy_inside: np.ndarray
    mask_fraction: np.ndarray
    tolerance: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"query": np.arange(len(self.pointing_hit)), "pointing_hit": self.pointing_hit,
                             "energy_inside": self.energy_inside, "mask_fraction": self.mask_fraction})


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return masks
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius * radius + 1e-6).float()
    out = F.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0]
    return out > 0.5


def localization(maps: Any, masks: Any, tolerance: int = 0) -> LocalizationResult:
    """Pointing game and positive-energy share of maps inside masks, vectorised over queries.

    Args:
        maps: an ``AttributionMap``, maps (n, H, W) or attributions (n, C, H, W) (channels summed).
        masks: (n, H, W) bool (e.g. ``ImageSet.masks`` of the queries), or (H, W) for all maps.
        tolerance: the pointing game counts a hit when the maximum lies within this many pixels
            of the mask (a disk dilation; Zhang et al. 2018 use 15 px at 224 px).

    Returns:
        A :class:`LocalizationResult`.
    """
    m = _as_maps(maps)
    mk = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    if mk.ndim == 2:
        mk = mk.expand(len(m), -1, -1)
    if mk.ndim != 3 or len(mk) != len(m):
        raise DataError(f"masks must have shape (n, H, W) with n = {len(m)} maps, got {tuple(mk.shape)}")
    if tuple(mk.shape[1:]) != tuple(m.shape[1:]):
        raise DataError(f"masks are {tuple(mk.shape[1:])} but maps are {tuple(m.shape[1:])}; "
                        "resize the masks (ImageSet.convert(size=...)) to the map size")
    if tolerance < 0:
        raise DataError(f"tolerance must be >= 0 pixels, got {tolerance}")
    mk = mk.bool()
    flat = m.reshape(len(m), -1)
    area = mk.reshape(len(m), -1).float().sum(1)
    empty = area == 0
    # a hit when the global maximum is attained inside the dilated mask (ties count as inside)
    grown = _dilate(mk, int(tolerance)).reshape(len(m), -1)
    top = flat.max(1).values
    inside_top = torch.where(grown, flat, torch.full_like(flat, -torch.inf)).max(1).values
    constant = top == flat.min(1).values
    hit = ((inside_top >= top) & ~constant).double()
    hit[empty] = torch.nan
    pos = flat.clamp(min=0)
    total = pos.sum(1)
    inside = (pos * mk.reshape(len(m), -1)).sum(1)
    energy = torch.where((total > 0) & ~empty, inside / total.clamp(min=1e-30), torch.full_like(total, torch.nan))
    frac = torch.where(empty, torch.full_like(area, torch.nan), area / flat.shape[1])
    return LocalizationResult(pointing_hit=hit.numpy(), energy_inside=energy.double().numpy(),
                              mask_fraction=frac.double().numpy(), tolerance=int(tolerance))


# ====================================================================== randomisation
@dataclass(frozen=True)
class RandomizationResult:
    """The model-parameter randomisation check for one method.

    Attributes:
        method: the method's name.
        stages: names of the stages; stage i has the parameter groups of ``randomized[i]``
            re-initialised (cascade: the top i + 1 groups; the last stage is the whole model).
        randomized: for each stage, the tuple of module names re-initialised.
        spearman_abs: (n_stages, n) rank correlation of |map| between trained and randomised model.
        spearman_signed: (n_stages, n) the same on the signed maps.
        threshold: a method fails when the mean |map| correlation of the fully randomised model
            is at or above this.
        passed: whether the method passed.
        targets, seed: the explained classes (the trained model's) and the randomisation seed.
    """

    method: str
    stages: tuple[str, ...]
    randomized: tuple[tuple[str, ...], ...]
    spearman_abs: np.ndarray
    spearman_signed: np.ndarray
    threshold: float
    passed: bool
    targets: tuple[int, ...]
    seed: int

    @property
    def final_spearman(self) -> np.ndarray:
        """(n,) |map| correlation with the fully randomised model (what ``passed`` is based on)."""
        return self.spearman_abs[-1]

    def to_frame(self) -> pd.DataFrame:
        """One row per stage: mean correlations with a 95% t interval over queries."""
        rows = []
        for i, stage in enumerate(self.stages):
            ma, la, ha, n = confidence_interval(self.spearman_abs[i])
            ms, ls, hs, _ = confidence_interval(self.spearman_signed[i])
            rows.append({"method": self.method, "stage": i, "randomized": stage, "n": n,
                         "spearman_abs": ma, "spearman_abs_ci_low": la, "spearman_abs_ci_high": ha,
                         "spearman_signed": ms, "spearman_signed_ci_low": ls, "spearman_signed_ci_high": hs,
                         "ci_method": "t"})
        return pd.DataFrame(rows)


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Parameter groups of a few-shot model from the output down to the input.

    Any parameterised module outside the backbone (a learned metric or head) comes first; then the
    backbone's blocks (``backbone.blocks.i`` when the backbone has a ``blocks`` sequence, else each
    parameterised leaf module), last block first.

    Returns:
        [(group name, [module names with parameters in that group]), ...], top first.
    """
    named = dict(model.named_modules())

    def has_own_params(mod: nn.Module) -> bool:
        return any(True for _ in mod.parameters(recurse=False))

    head = [name for name, mod in named.items()
            if name and not name.startswith("backbone") and has_own_params(mod)]
    groups: list[tuple[str, list[str]]] = [("head", head)] if head else []
    backbone = getattr(model, "backbone", model)
    prefix = "backbone." if backbone is not model else ""
    blocks = getattr(backbone, "blocks", None)
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
    """Re-draw the parameters of these modules from their default initialisation (seeded); batch
    norms go back to identity statistics."""
    import zlib

    named = dict(model.named_modules())
    for name in module_names:
        mod = named[name]
        # seeded by module name: a cascade stage re-draws the same weights as the stage before it
        with _seeded(seed * 1_000_003 + zlib.crc32(name.encode())):
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
            else:
                for p in mod.parameters(recurse=False):
                    with torch.no_grad():
                        p.normal_(0.0, 0.05)


def randomized_copy(model: nn.Module, support_images: Any, support_labels: Any, seed: int = 0,
                    modules: Sequence[str] | None = None) -> nn.Module:
    """A deep copy of ``model`` with these modules (default: all) re-initialised and the support
    set re-embedded with the randomised backbone (the stored prototypes came from the old one)."""
    work = copy.deepcopy(model).eval()
    if modules is None:
        modules = [m for _, group in layer_groups(work) for m in group]
    _reinitialize(work, modules, seed)
    work.fit_support(_as_images(support_images, "support_images"), torch.as_tensor(np.asarray(support_labels)))
    return work.eval()


def randomization_check(
    model: nn.Module,
    query_images: Any,
    method: MethodLike,
    support_images: Any,
    support_labels: Any,
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

    The model is copied (the caller's model is never changed), its parameters re-initialised group
    by group from the top (output side) down, the support set re-embedded with the randomised
    backbone, and the queries explained again for the same target classes. The Spearman rank
    correlation between the trained and randomised maps (of |map| and of the signed map) is
    computed per query. A method whose maps of the fully randomised model still correlate at
    ``threshold`` or more (mean |map| correlation) is flagged as failing: it does not depend on
    what the model learned.

    Args:
        model: a few-shot model (fit on the support set, or not: it is refit on a copy).
        query_images: (n, C, H, W).
        method: a registry name or a callable ``fn(model, images, targets, contrasts, seed, **params)``.
        support_images, support_labels: the episode's support set (n_support, C, H, W), (n_support,).
        layers: "cascade" (top group, then top two, ... then all), "independent" (each group alone,
            then all), "full" (only the fully randomised model; cheapest), or a list of module names
            randomised cumulatively in that order.
        targets, contrasts: as in :func:`deletion_insertion`, resolved on the trained model and
            kept fixed for the randomised ones.
        threshold: the failing threshold on the fully randomised model's mean |map| correlation.
        seed: seeds the re-initialisation and the explanations.
        layer: the layer for layer methods (Grad-CAM).
        maps: the trained model's maps if already computed (n, H, W) or (n, C, H, W).
        **params: passed to the method.

    Returns:
        A :class:`RandomizationResult`.
    """
    x = _as_images(query_images)
    s_img = _as_images(support_images, "support_images")
    s_lab = torch.as_tensor(np.asarray(support_labels) if not isinstance(support_labels, torch.Tensor)
                            else support_labels, dtype=torch.long)
    trained = copy.deepcopy(model).eval()
    trained.fit_support(s_img, s_lab)
    tgt, con = _resolve_targets(trained, x, targets, contrasts)
    if maps is None:
        base_maps = _maps_of(trained, x, method, tgt, con, seed, layer, params)
    else:
        base_maps = _as_maps(maps, len(x), tuple(x.shape[2:]))

    groups = layer_groups(trained)
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
    else:
        named = dict(trained.named_modules())
        acc = []
        for name in layers:
            if name not in named:
                raise ModelError(f"unknown module {name!r}; modules with parameters: {all_modules}")
            mods = [name + ("." + n if n else "") for n, mod in named[name].named_modules()
                    if any(True for _ in mod.parameters(recurse=False))]
            acc = acc + mods
            stages.append((name, list(acc)))

    rho_abs, rho_signed = [], []
    for i, (_, mods) in enumerate(stages):
        rand = randomized_copy(trained, s_img, s_lab, seed=seed, modules=mods)
        rmaps = _maps_of(rand, x, method, tgt, con, seed, layer, params)
        rho_abs.append(spearman_rows(base_maps.abs().numpy(), rmaps.abs().numpy()))
        rho_signed.append(spearman_rows(base_maps.numpy(), rmaps.numpy()))
    rho_abs_a, rho_signed_a = np.stack(rho_abs), np.stack(rho_signed)
    final = float(np.nanmean(rho_abs_a[-1]))
    return RandomizationResult(
        method=_method_name(method), stages=tuple(s for s, _ in stages),
        randomized=tuple(tuple(m) for _, m in stages), spearman_abs=rho_abs_a, spearman_signed=rho_signed_a,
        threshold=float(threshold), passed=bool(final < threshold), targets=tuple(int(t) for t in tgt), seed=int(seed),
    )


# ====================================================================== infidelity / sensitivity
@dataclass(frozen=True)
class InfidelitySensitivityResult:
    """Captum's infidelity (normalised by the optimal scale, lower = more faithful) and
    max-sensitivity (relative change of the attribution under small input noise, lower = more
    stable), one value per query."""

    infidelity: np.ndarray
    sensitivity: np.ndarray
    noise_std: float
    radius: float
    targets: tuple[int, ...]


class _ScalarModel(nn.Module):
    """f(x, classes) -> (n,) the explained scalar, with classes (n, 2) = (target, contrast or -1)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        rows = torch.arange(len(x))
        value = logits[rows, classes[:, 0]]
        has_con = classes[:, 1] >= 0
        other = logits[rows, classes[:, 1].clamp(min=0)]
        return value - torch.where(has_con, other, torch.zeros_like(other))


def infidelity_sensitivity(
    model: nn.Module,
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
        model: a few-shot model fit on its support set.
        query_images: (n, C, H, W).
        method: a registry name or a callable (see the module docs).
        targets, contrasts: as in :func:`deletion_insertion`.
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

    x = _as_images(query_images)
    n = len(x)
    tgt, con = _resolve_targets(model, x, targets, contrasts)
    classes = torch.stack([tgt, con if con is not None else torch.full_like(tgt, -1)], 1)
    with _eval_mode(model):
        if attributions is None:
            attr = _attributions(model, x, method, tgt, con, seed, layer, params)
        else:
            attr = torch.as_tensor(np.asarray(attributions) if not isinstance(attributions, torch.Tensor)
                                   else attributions).detach().float()
        if attr.ndim == 3:
            # a single map per pixel (e.g. Grad-CAM): spread it evenly over the channels
            attr = attr[:, None].expand_as(x) / x.shape[1]
        if attr.shape != x.shape:
            raise DataError(f"attributions {tuple(attr.shape)} do not match the images {tuple(x.shape)}")
        scalar = _ScalarModel(explanation_model(model))  # forward only: the fast copy computes the same
        # Captum puts all given queries (times their samples) in each pass; passes of about
        # DEFAULT_INTERNAL_BATCH images stay in the CPU cache, so queries go in chunks
        per_chunk = max(1, DEFAULT_INTERNAL_BATCH // max(1, n_perturb_samples, n_sensitivity_samples))
        chunks = [slice(i, i + per_chunk) for i in range(0, n, per_chunk)]

        def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = torch.randn_like(inputs) * noise_std
            return noise, inputs - noise

        with _seeded(seed):
            infid = torch.cat([
                infidelity(scalar, perturb, x[c], attr[c], additional_forward_args=(classes[c],),
                           n_perturb_samples=n_perturb_samples, max_examples_per_batch=max_examples_per_batch,
                           normalize=True).reshape(-1)
                for c in chunks])

        if n_sensitivity_samples > 0:
            def explanation(inputs: Any, additional_forward_args: Any = None) -> tuple[torch.Tensor]:
                # Captum passes the unperturbed inputs as a 1-tuple and the perturbed ones as a tensor
                inputs = inputs[0] if isinstance(inputs, tuple) else inputs
                cls = (additional_forward_args[0] if isinstance(additional_forward_args, tuple)
                       else additional_forward_args)
                with torch.enable_grad():
                    out = _attributions(model, inputs.detach(), method, cls[:, 0],
                                        None if con is None else cls[:, 1], seed, layer, params)
                if out.ndim == 3:
                    out = out[:, None].expand_as(inputs) / inputs.shape[1]
                # Captum iterates over the result as a tuple of per-input tensors
                return (out,)

            def uniform(inputs: torch.Tensor, r: float) -> torch.Tensor:
                return inputs + (torch.rand_like(inputs) * 2 - 1) * r

            with _seeded(seed + 1):
                sens = torch.cat([
                    sensitivity_max(explanation, x[c], perturb_func=uniform, perturb_radius=radius,
                                    n_perturb_samples=n_sensitivity_samples,
                                    max_examples_per_batch=max_examples_per_batch,
                                    additional_forward_args=(classes[c],)).reshape(-1)
                    for c in chunks])
            sens_np = sens.detach().double().numpy()
        else:
            sens_np = np.full(n, np.nan)
    return InfidelitySensitivityResult(infidelity=infid.detach().double().numpy().reshape(n),
                                       sensitivity=sens_np.reshape(n),
                                       noise_std=float(noise_std), radius=float(radius),
                                       targets=tuple(int(t) for t in tgt))


# ====================================================================== the table
ALL_METRICS = ("deletion", "localization", "randomization", "infidelity")


def _row(method: str, metric: str, values: Any, ci: str, seed: int, threshold: float | None = None,
         passed: bool | None = None, reference: float | None = None) -> dict:
    mean, lo, hi, n = confidence_interval(values, ci, seed=seed)
    return {"method": method, "metric": metric, "mean": mean, "n": n, "ci_low": lo, "ci_high": hi,
            "ci_method": ci, "higher_is_better": HIGHER_IS_BETTER.get(metric), "reference": reference,
            "threshold": threshold, "passed": passed}


def quality_table(
    model: nn.Module,
    query_images: Any,
    methods: Sequence[MethodLike],
    support_images: Any = None,
    support_labels: Any = None,
    masks: Any = None,
    targets: Any = "predicted",
    contrasts: Any = None,
    seed: int = 0,
    metrics: Sequence[str] = ALL_METRICS,
    steps: int = 20,
    baseline: str | float | torch.Tensor = "blur",
    output: str = "probability",
    tolerance: int = 0,
    randomization_layers: str | Sequence[str] = "full",
    randomization_threshold: float = 0.5,
    ci: str = "t",
    method_params: dict[str, dict] | None = None,
    infidelity_kwargs: dict | None = None,
    include_random: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Quality of several attribution methods on the same queries, one row per method x metric.

    Metrics (``metrics`` chooses groups): ``deletion_auc`` and ``insertion_auc`` (normalised areas,
    see :func:`deletion_insertion`); with ``masks``: ``pointing_game`` and ``energy_inside_mask``;
    ``randomization_spearman`` (|map| rank correlation with the fully randomised model, with a
    pass/fail flag against ``randomization_threshold``; needs the support set); ``infidelity`` and
    ``sensitivity_max``. With ``include_random`` a seeded random-map row ("random") gives the chance
    level for deletion, insertion and localisation; every method's row carries it in ``reference``.

    Args:
        model: a few-shot model fit on its support set (or give the support set: it is fit on a copy).
        query_images: (n, C, H, W).
        methods: registry names and/or callables.
        support_images, support_labels: the episode's support set; needed for randomisation.
        masks: (n, H, W) bool lesion masks of the queries, or None.
        targets, contrasts: explained classes, as in :func:`deletion_insertion` (resolved once and
            shared by every method).
        seed: one seed for maps, tie-breaking, perturbations, randomisation and bootstrap.
        metrics: subset of ("deletion", "localization", "randomization", "infidelity").
        steps, baseline, output: deletion/insertion settings (see :func:`deletion_insertion`).
        tolerance: pointing-game tolerance in pixels.
        randomization_layers: "full" (default, one randomised model) or "cascade"/"independent".
        randomization_threshold: fail threshold for the randomisation correlation.
        ci: "t" (Student t) or "bootstrap" for continuous metrics; the pointing game always uses
            the Wilson interval (it is a proportion). The interval used is in ``ci_method``.
        method_params: extra parameters per method name, e.g. {"integrated_gradients": {"n_steps": 32}}.
        infidelity_kwargs: passed to :func:`infidelity_sensitivity`.
        include_random: add the random-map reference rows.
        progress: show a progress bar over methods.

    Returns:
        DataFrame with columns method, metric, mean, n, ci_low, ci_high, ci_method,
        higher_is_better, reference, threshold, passed.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise DataError(f"unknown metric group(s) {sorted(unknown)}; choose from {list(ALL_METRICS)}")
    if not methods:
        raise DataError("give at least one method")
    if ci not in ("t", "bootstrap"):
        raise DataError(f"unknown ci {ci!r}; use 't' or 'bootstrap'")
    x = _as_images(query_images)
    n = len(x)
    has_support = support_images is not None and support_labels is not None
    work = model
    if getattr(model, "prototypes_", None) is None:
        if not has_support:
            raise ModelError("the model has no support set; fit it or pass support_images and support_labels")
        work = copy.deepcopy(model).eval()
        work.fit_support(_as_images(support_images, "support_images"),
                         torch.as_tensor(np.asarray(support_labels), dtype=torch.long))
    if "randomization" in metrics and not has_support:
        raise DataError("the randomisation check needs the support set (support_images, support_labels): "
                        "prototypes must be recomputed with the randomised backbone; pass them or drop "
                        "'randomization' from metrics")
    mk = None
    if masks is not None and "localization" in metrics:
        mk = torch.as_tensor(np.asarray(masks)).bool()
        if mk.ndim != 3 or len(mk) != n:
            raise DataError(f"masks must have shape (n, H, W) with n = {n} queries, got {tuple(mk.shape)}")
    tgt, con = _resolve_targets(work, x, targets, contrasts)
    method_params = method_params or {}

    rows: list[dict] = []
    ref_del = ref_ins = ref_hit = ref_energy = None
    if include_random and ("deletion" in metrics or mk is not None):
        rmaps = random_maps((n, *x.shape[2:]), seed=seed)
        if "deletion" in metrics:
            di = deletion_insertion(work, x, rmaps, tgt, con, steps=steps, baseline=baseline, output=output, seed=seed)
            ref_del, ref_ins = float(np.nanmean(di.deletion_auc)), float(np.nanmean(di.insertion_auc))
            rows.append(_row("random", "deletion_auc", di.deletion_auc, ci, seed))
            rows.append(_row("random", "insertion_auc", di.insertion_auc, ci, seed))
        if mk is not None:
            loc = localization(rmaps, mk, tolerance)
            ref_hit, ref_energy = float(np.nanmean(loc.pointing_hit)), float(np.nanmean(loc.energy_inside))
            rows.append(_row("random", "pointing_game", loc.pointing_hit, "wilson", seed))
            rows.append(_row("random", "energy_inside_mask", loc.energy_inside, ci, seed))

    iterator: Any = methods
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(methods, desc="explanation quality", unit="method")
    for method in iterator:
        name = _method_name(method)
        params = dict(method_params.get(name, {}))
        layer = params.pop("layer", None)
        with _eval_mode(work):
            attr = _attributions(work, x, method, tgt, con, seed, layer, params)
        maps = attr.sum(1) if attr.ndim == 4 else attr
        if "deletion" in metrics:
            di = deletion_insertion(work, x, maps, tgt, con, steps=steps, baseline=baseline, output=output, seed=seed)
            rows.append(_row(name, "deletion_auc", di.deletion_auc, ci, seed, reference=ref_del))
            rows.append(_row(name, "insertion_auc", di.insertion_auc, ci, seed, reference=ref_ins))
        if mk is not None:
            loc = localization(maps, mk, tolerance)
            rows.append(_row(name, "pointing_game", loc.pointing_hit, "wilson", seed, reference=ref_hit))
            rows.append(_row(name, "energy_inside_mask", loc.energy_inside, ci, seed, reference=ref_energy))
        if "randomization" in metrics:
            rc = randomization_check(work, x, method, support_images, support_labels, layers=randomization_layers,
                                     targets=tgt, contrasts=con, threshold=randomization_threshold, seed=seed,
                                     layer=layer, maps=maps, **params)
            rows.append(_row(name, "randomization_spearman", rc.final_spearman, ci, seed,
                             threshold=randomization_threshold, passed=rc.passed))
        if "infidelity" in metrics:
            res = infidelity_sensitivity(work, x, method, tgt, con, seed=seed, layer=layer,
                                         attributions=attr if attr.ndim == 4 else None,
                                         **(infidelity_kwargs or {}), **params)
            rows.append(_row(name, "infidelity", res.infidelity, ci, seed))
            rows.append(_row(name, "sensitivity_max", res.sensitivity, ci, seed))
    table = pd.DataFrame(rows, columns=["method", "metric", "mean", "n", "ci_low", "ci_high", "ci_method",
                                        "higher_is_better", "reference", "threshold", "passed"])
    table["passed"] = table["passed"].astype(object)
    return table


# ====================================================================== per-query badges
_RANDOM_CACHE: "OrderedDict[tuple, nn.Module]" = OrderedDict()
_RANDOM_CACHE_SIZE = 4


def _cached_randomized(model: nn.Module, support_images: torch.Tensor, support_labels: torch.Tensor,
                       seed: int) -> nn.Module:
    import hashlib

    h = hashlib.sha1(support_images.numpy().tobytes())
    h.update(support_labels.numpy().tobytes())
    fp = model.fingerprint() if hasattr(model, "fingerprint") else str(id(model))
    key = (fp, h.hexdigest()[:16], int(seed))
    if key in _RANDOM_CACHE:
        _RANDOM_CACHE.move_to_end(key)
        return _RANDOM_CACHE[key]
    rand = randomized_copy(model, support_images, support_labels, seed=seed)
    _RANDOM_CACHE[key] = rand
    while len(_RANDOM_CACHE) > _RANDOM_CACHE_SIZE:
        _RANDOM_CACHE.popitem(last=False)
    return rand


def badges(
    model: nn.Module,
    query_image: Any,
    method: MethodLike,
    support_images: Any,
    support_labels: Any,
    mask: Any = None,
    target: Any = "predicted",
    contrast: Any = None,
    seed: int = 0,
    attribution: Any = None,
    steps: int = 10,
    baseline: str = "blur",
    threshold: float = 0.5,
    layer: str | None = None,
    reference: bool = True,
    **params: Any,
) -> dict:
    """Cheap quality badges for the maps of one or a few queries (for display next to a map).

    Costs one explanation with a randomised copy of the model (cached per model, support set and
    seed) plus 2 x (steps + 1) forward passes per query; pass the already computed map as
    ``attribution`` to skip re-explaining with the trained model.

    Args:
        model: the fitted few-shot model.
        query_image: (C, H, W) for one query or (n, C, H, W).
        method: registry name or callable.
        support_images, support_labels: the episode's support set.
        mask: (H, W) or (n, H, W) lesion mask, or None.
        target, contrast: the explained class(es) (as in :func:`deletion_insertion`).
        seed: randomisation and tie-breaking seed.
        attribution: an AttributionMap or (n, [C,] H, W) maps of these queries for these targets.
        steps: deletion/insertion steps.
        baseline: deletion baseline.
        threshold: randomisation fail threshold.
        layer, **params: passed to the method.
        reference: also compute the deletion area of a seeded random map (``random_deletion_auc``,
            None when False), the chance level to show beside ``deletion_auc``.

    Returns:
        {"method", "randomization": {"passed", "spearman", "threshold"}, "deletion_auc",
        "insertion_auc", "random_deletion_auc", "pointing_hit", "energy_inside", "mask_fraction"}:
        floats for one query, lists for several; localisation entries are None without a mask.
    """
    x = torch.as_tensor(np.asarray(query_image) if not isinstance(query_image, torch.Tensor) else query_image)
    single = x.ndim == 3
    x = _as_images(x[None] if single else x)
    s_img = _as_images(support_images, "support_images")
    s_lab = torch.as_tensor(np.asarray(support_labels) if not isinstance(support_labels, torch.Tensor)
                            else support_labels, dtype=torch.long)
    if attribution is not None and hasattr(attribution, "targets") and target == "predicted":
        target = list(attribution.targets)
        if contrast is None and getattr(attribution, "contrasts", None) is not None:
            contrast = list(attribution.contrasts)
    tgt, con = _resolve_targets(model, x, target, contrast)
    with _eval_mode(model):
        if attribution is None:
            maps = _maps_of(model, x, method, tgt, con, seed, layer, params)
        else:
            maps = _as_maps(attribution, len(x), tuple(x.shape[2:]))
    rand = _cached_randomized(model, s_img, s_lab, seed)
    rmaps = _maps_of(rand, x, method, tgt, con, seed, layer, params)
    rho = spearman_rows(maps.abs().numpy(), rmaps.abs().numpy())
    di = deletion_insertion(model, x, maps, tgt, con, steps=steps, baseline=baseline, seed=seed)
    ref = (deletion_insertion(model, x, random_maps(maps.shape, seed=seed), tgt, con, steps=steps,
                              baseline=baseline, seed=seed) if reference else None)

    passed = [bool(v) for v in rho < threshold]

    def out(values: np.ndarray) -> Any:
        vals = [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=float)]
        return vals[0] if single else vals

    result = {
        "method": _method_name(method),
        "randomization": {"passed": passed[0] if single else passed, "spearman": out(rho),
                          "threshold": float(threshold)},
        "deletion_auc": out(di.deletion_auc), "insertion_auc": out(di.insertion_auc),
        "random_deletion_auc": out(ref.deletion_auc) if ref is not None else None,
        "pointing_hit": None, "energy_inside": None, "mask_fraction": None,
    }
    if mask is not None:
        mk = torch.as_tensor(np.asarray(mask))
        if mk.ndim == 2:
            mk = mk[None].expand(len(x), -1, -1)
        loc = localization(maps, mk)
        hits = [None if not np.isfinite(v) else bool(v) for v in loc.pointing_hit]
        result.update(pointing_hit=hits[0] if single else hits, energy_inside=out(loc.energy_inside),
                      mask_fraction=out(loc.mask_fraction))
    return result
