"""Localisation of attribution maps against lesion masks: the pointing game and the share of
positive attribution inside the mask, vectorised over queries.

Degenerate cases are undefined (NaN), never a number that looks like a result: an empty mask; a
flat map (one value everywhere, all zero included), which has no maximum to point with; and, for
the energy share, a map without any positive value (0 / 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import DataError
from .method_maps import as_maps, flat_maps


@dataclass(frozen=True)
class LocalizationResult:
    """Localisation of n maps against n masks.

    Attributes:
        pointing_hit: (n,) 1.0 when the map's maximum lies inside the (tolerance-dilated) mask,
            0.0 when not; NaN (undefined) when the mask is empty or the map is flat.
        energy_inside: (n,) share of the positive attribution that falls inside the mask; NaN
            (undefined) when the mask is empty, the map is flat or it has no positive value.
        mask_fraction: (n,) the mask's share of the image: what a uniform or random map scores on
            ``energy_inside`` on average, and about its pointing-game hit rate.
        flat: (n,) True for flat maps.
        tolerance: the dilation radius (pixels) used for the pointing game.
    """

    pointing_hit: np.ndarray
    energy_inside: np.ndarray
    mask_fraction: np.ndarray
    flat: np.ndarray
    tolerance: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"query": np.arange(len(self.pointing_hit)), "pointing_hit": self.pointing_hit,
                             "energy_inside": self.energy_inside, "mask_fraction": self.mask_fraction,
                             "flat": self.flat})


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
    m = as_maps(maps)
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
    undefined = (area == 0) | torch.from_numpy(flat_maps(flat))
    # a hit when the global maximum is attained inside the dilated mask (ties count as inside)
    grown = _dilate(mk, int(tolerance)).reshape(len(m), -1)
    top = flat.max(1).values
    inside_top = torch.where(grown, flat, torch.full_like(flat, -torch.inf)).max(1).values
    hit = (inside_top >= top).double()
    hit[undefined] = torch.nan
    pos = flat.clamp(min=0)
    total = pos.sum(1)
    inside = (pos * mk.reshape(len(m), -1)).sum(1)
    energy = torch.where((total > 0) & ~undefined, inside / total.clamp(min=1e-30),
                         torch.full_like(total, torch.nan))
    frac = torch.where(area == 0, torch.full_like(area, torch.nan), area / flat.shape[1])
    return LocalizationResult(pointing_hit=hit.numpy(), energy_inside=energy.double().numpy(),
                              mask_fraction=frac.double().numpy(), flat=flat_maps(flat), tolerance=int(tolerance))
