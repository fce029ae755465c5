"""The maps the quality checks read: maps of an attribution method given by registry name or as a
callable, given maps checked (``as_maps``), the degenerate-map test (``flat_maps``) and seeded
random reference maps.

The quality checks accept a method as a registry name (run with :func:`~fsl_xai.explain.explain`)
or as a callable ``fn(fitted, query_images, targets=, contrasts=, seed=, **params) -> (n, H, W) or
(n, C, H, W)`` for maps that do not come from the registry (useful for baselines such as an edge
detector of the input).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError, ModelError
from ..models import FittedEpisode
from .attribution import AttributionMap, explain
from .core import eval_mode, gaussian_blur

MethodLike = str | Callable[..., Any]


def as_maps(maps: Any, n: int | None = None, hw: tuple[int, ...] | None = None) -> torch.Tensor:
    """An AttributionMap, maps (n, H, W) or attributions (n, C, H, W) -> float tensor (n, H, W)
    (channels summed)."""
    if isinstance(maps, AttributionMap):
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


def flat_maps(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, ...) -> (n,) bool: True where a map has one value everywhere (all zero included).

    Such a map ranks no pixel above another and points nowhere, so every quality metric that
    reads a ranking or a location (deletion/insertion, pointing game, energy inside a mask,
    randomisation) is undefined for it.
    """
    flat = np.asarray(maps).reshape(len(maps), -1)
    if flat.shape[1] == 0:
        return np.ones(len(flat), dtype=bool)
    return np.asarray(flat.max(1) == flat.min(1))


def method_name(method: MethodLike) -> str:
    """A registry name as is; a callable's ``name`` or ``__name__``."""
    if isinstance(method, str):
        return method
    return getattr(method, "name", None) or getattr(method, "__name__", None) or type(method).__name__


def method_attributions(fitted: FittedEpisode, images: torch.Tensor, method: MethodLike, targets: torch.Tensor,
                        contrasts: torch.Tensor | None, seed: int, layer: str | None = None,
                        params: dict | None = None) -> torch.Tensor:
    """Attributions (n, C, H, W) or maps (n, H, W) of ``images`` (n, C, H, W) for explicit classes (n,)."""
    params = dict(params or {})
    if callable(method) and not isinstance(method, str):
        out = method(fitted, images, targets=targets, contrasts=contrasts, seed=seed, **params)
    else:
        if layer is not None:
            params["layer"] = layer
        out = explain(fitted, images, method=method, target=targets.tolist(),
                      contrast=None if contrasts is None else contrasts.tolist(), seed=seed, **params).attributions
    if isinstance(out, AttributionMap):
        out = out.attributions
    out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).detach().float()
    if out.ndim not in (3, 4) or len(out) != len(images) or tuple(out.shape[-2:]) != tuple(images.shape[-2:]):
        raise ModelError(f"method {method_name(method)!r} returned shape {tuple(out.shape)} for images "
                         f"{tuple(images.shape)}; it must return (n, H, W) or (n, C, H, W) at the input size")
    return out


def method_maps(fitted: FittedEpisode, images: torch.Tensor, method: MethodLike, targets: torch.Tensor,
                contrasts: torch.Tensor | None, seed: int, layer: str | None = None,
                params: dict | None = None) -> torch.Tensor:
    """As :func:`method_attributions`, summed over channels: maps (n, H, W)."""
    out = method_attributions(fitted, images, method, targets, contrasts, seed, layer, params)
    return out.sum(1) if out.ndim == 4 else out


def checked_maps(fitted: FittedEpisode, images: torch.Tensor, method: MethodLike, targets: torch.Tensor,
                 contrasts: torch.Tensor | None, seed: int, layer: str | None, params: dict | None,
                 maps: Any = None) -> torch.Tensor:
    """The maps (n, H, W) a sanity check compares against: ``maps`` as given (maps, attributions or
    an AttributionMap), or computed with the method on the fitted episode in eval mode."""
    if maps is not None:
        return as_maps(maps, len(images), tuple(images.shape[2:]))
    with eval_mode(fitted):
        return method_maps(fitted, images, method, targets, contrasts, seed, layer, params)


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
        m = gaussian_blur(m[:, None], smooth)[:, 0]
    return m
