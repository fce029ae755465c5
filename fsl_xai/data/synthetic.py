"""A built-in synthetic image set with known ground truth, for offline use and explanation tests.

Each image is a grey, smooth "tissue" background with one lesion. The class is carried only by
the lesion's shape or texture (round smooth disc, spiculated star, ring, cross-hatched texture,
lobulated outline, target), so a correct explanation must point inside the lesion mask. Images
come from named acquisition sites that differ in noise level and contrast, and an optional
spurious marker (a small bright square in the top-right corner) can be burnt into the images of
one class at one site: a shortcut that lies outside every lesion mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .imageset import ImageSet

CLASS_SHAPES: tuple[str, ...] = ("round", "spiculated", "ring", "textured", "lobulated", "target")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


def _site_settings(n_sites: int, noise: Sequence[float] | None, contrast: Sequence[float] | None):
    """Per-site white-noise sigma and global contrast factor (the first site is the cleanest)."""
    steps = np.linspace(0.0, 1.0, n_sites) if n_sites > 1 else np.zeros(1)
    sigma = np.asarray(noise if noise is not None else 0.015 + 0.055 * steps, dtype=np.float32)
    gain = np.asarray(contrast if contrast is not None else 1.0 - 0.4 * steps, dtype=np.float32)
    if sigma.shape != (n_sites,) or gain.shape != (n_sites,):
        raise DataError(f"site_noise and site_contrast need one value per site ({n_sites} sites)")
    if (sigma < 0).any() or (gain <= 0).any():
        raise DataError("site_noise must be >= 0 and site_contrast > 0 for every site")
    return sigma, gain


def _smoothing_matrix(size: int, sigma_px: float) -> np.ndarray:
    """(size, n_nodes) gaussian weights from coarse noise nodes to pixels, rows of unit L2 norm.

    Smoothing white noise on a grid of nodes spaced at most one sigma apart gives a field that
    looks like gaussian-filtered pixel noise, at a fraction of the cost of filtering every pixel.
    """
    n_nodes = int(min(size, np.ceil(size / sigma_px)))
    nodes = (np.arange(n_nodes, dtype=np.float64) + 0.5) * size / n_nodes
    pixels = np.arange(size, dtype=np.float64) + 0.5
    weights = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) / sigma_px) ** 2)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return weights.astype(np.float32)


def _smooth_fields(rng: np.random.Generator, n: int, size: int, sigma_px: float) -> np.ndarray:
    """n random smooth fields (n, size, size) with unit variance at every pixel."""
    weights = _smoothing_matrix(size, sigma_px)
    nodes = weights.shape[1]
    coarse = rng.standard_normal((n * nodes, nodes), dtype=np.float32)
    # two large matrix products instead of n small ones
    rows_done = (coarse @ weights.T).reshape(n, nodes, size).transpose(1, 0, 2).reshape(nodes, n * size)
    return np.ascontiguousarray((weights @ rows_done).reshape(size, n, size).transpose(1, 0, 2))


def _edge(distance_inside: np.ndarray, width: float) -> np.ndarray:
    """A soft step: 1 well inside (positive distance), 0 well outside."""
    return 0.5 * (1.0 + np.tanh(distance_inside / width))


def _lesion_profiles(shape: str, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray, phase: np.ndarray,
                     lobes: np.ndarray, period: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Lesion intensity profile in [0, 1] and the lesion mask for one class, for a batch.

    All arrays broadcast to (m, H, W): dx, dy are offsets from the lesion centre in pixels;
    radius, phase, lobes, period are per image, shaped (m, 1, 1).
    """
    rr = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    if shape == "round":
        inside = radius - rr
        profile = _edge(inside, width) * (1.0 - 0.25 * np.clip(rr / radius, 0, 1) ** 2)
        mask = inside >= 0
    elif shape == "spiculated":
        spikes = np.clip(np.cos(lobes * (theta - phase)), 0.0, 1.0) ** 4
        outline = radius * (0.62 + 0.6 * spikes)
        inside = outline - rr
        profile = _edge(inside, width)
        mask = inside >= 0
    elif shape == "ring":
        thickness = 0.38 * radius
        profile = _edge(radius - rr, width) * _edge(rr - (radius - thickness), width)
        mask = (rr <= radius) & (rr >= radius - thickness)
    elif shape == "textured":
        inside = radius - rr
        u = dx * np.cos(phase) + dy * np.sin(phase)
        v = -dx * np.sin(phase) + dy * np.cos(phase)
        hatch = (0.5 + 0.5 * np.sin(2 * np.pi * u / period)) * (0.5 + 0.5 * np.sin(2 * np.pi * v / period))
        profile = _edge(inside, width) * (0.25 + 0.75 * hatch)
        mask = inside >= 0
    elif shape == "lobulated":
        outline = radius * (0.9 + 0.22 * np.cos((3 + lobes % 2) * (theta - phase)))
        inside = outline - rr
        profile = _edge(inside, width)
        mask = inside >= 0
    elif shape == "target":
        core = _edge(0.38 * radius - rr, width)
        rim = _edge(radius - rr, width) * _edge(rr - 0.72 * radius, width)
        profile = np.maximum(core, rim)
        mask = (rr <= 0.38 * radius) | ((rr <= radius) & (rr >= 0.72 * radius))
    else:  # pragma: no cover - guarded by make_synthetic
        raise DataError(f"unknown lesion shape {shape!r}")
    return profile.astype(np.float32), mask


def marker_box(size: int) -> tuple[slice, slice]:
    """Rows and columns of the spurious marker square (top-right corner) for this image size."""
    side = max(2, int(round(size * 0.08)))
    margin = max(1, int(round(size * 0.04)))
    return slice(margin, margin + side), slice(size - margin - side, size - margin)


def _make_split(n_per_class: int, size: int, n_classes: int, seed: int, split: str, sites: tuple[str, ...],
                sigma: np.ndarray, gain: np.ndarray):
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_STREAM[split]]))
    n = n_per_class * n_classes
    labels = np.repeat(np.arange(n_classes), n_per_class)
    # balanced sites within each class, in random order
    site_idx = np.concatenate([rng.permutation(np.resize(np.arange(len(sites)), n_per_class))
                               for _ in range(n_classes)])
    order = rng.permutation(n)
    labels, site_idx = labels[order], site_idx[order]

    # per-image lesion geometry and appearance
    cx = rng.uniform(0.38, 0.62, n).astype(np.float32) * size
    cy = rng.uniform(0.38, 0.62, n).astype(np.float32) * size
    radius = rng.uniform(0.13, 0.19, n).astype(np.float32) * size
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    lobes = rng.integers(5, 9, n).astype(np.float32)
    period = (rng.uniform(0.9, 1.2, n) * max(3.0, size / 14.0)).astype(np.float32)
    lesion_gain = rng.uniform(0.28, 0.42, n).astype(np.float32)
    base = rng.uniform(0.30, 0.40, n).astype(np.float32)

    # smooth tissue: large-scale structure plus a finer parenchyma texture, darker towards the edge
    # (in-place arithmetic: fresh temporaries of this size cost more than the arithmetic)
    images = _smooth_fields(rng, n, size, size / 8.0)
    images *= 0.07
    fine = _smooth_fields(rng, n, size, max(1.0, size / 32.0))
    fine *= 0.035
    images += fine
    del fine
    grid = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = grid[None, :, None], grid[None, None, :]
    centre = np.float32(size / 2.0)
    images -= 0.12 * (((xs - centre) ** 2 + (ys - centre) ** 2) / centre ** 2)
    images += base[:, None, None]

    masks = np.zeros((n, size, size), dtype=bool)
    width = max(0.5, size / 80.0)
    # lesions reach at most ~0.24 * size from their centre: draw each in a window around it
    window = min(size, 2 * (int(np.ceil(0.25 * size)) + 2))
    span = np.arange(window)
    for k in range(n_classes):
        rows = np.flatnonzero(labels == k)
        if rows.size == 0:
            continue
        ox = np.clip(np.floor(cx[rows]).astype(np.int64) - window // 2, 0, size - window)
        oy = np.clip(np.floor(cy[rows]).astype(np.int64) - window // 2, 0, size - window)
        local_x = (ox[:, None, None] + span[None, None, :] + 0.5 - cx[rows][:, None, None]).astype(np.float32)
        local_y = (oy[:, None, None] + span[None, :, None] + 0.5 - cy[rows][:, None, None]).astype(np.float32)
        sel = (slice(None), None, None)
        profile, mask = _lesion_profiles(
            CLASS_SHAPES[k], local_x, local_y, radius[rows][sel], phase[rows][sel],
            lobes[rows][sel], period[rows][sel], width)
        index = (rows[:, None, None], oy[:, None, None] + span[None, :, None], ox[:, None, None] + span[None, None, :])
        images[index] += lesion_gain[rows][sel] * profile
        masks[index] = mask

    # acquisition site: global contrast around mid-grey, then sensor noise
    images -= 0.5
    images *= gain[site_idx][:, None, None]
    images += 0.5
    noise = rng.standard_normal((n, size, size), dtype=np.float32)
    noise *= sigma[site_idx][:, None, None]
    images += noise
    meta = pd.DataFrame({
        "sample_id": [f"synthetic-{split}-{i:05d}" for i in range(n)],
        "site": np.asarray(sites, dtype=object)[site_idx],
        "marker": np.zeros(n, dtype=bool),
        "split": split,
        "lesion_x": cx.astype(np.float64),
        "lesion_y": cy.astype(np.float64),
        "lesion_radius": radius.astype(np.float64),
    })
    # the marker decision gets its own stream so the images do not depend on the marker settings
    marker_draw = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_STREAM[split], 7])).random(n)
    return images, labels, masks, meta, marker_draw


def make_synthetic(
    n_per_class: int = 60,
    size: int = 64,
    n_classes: int = 4,
    seed: int = 0,
    sites: Sequence[str] = ("A", "B"),
    spurious_marker: bool = False,
    marker_site: str = "A",
    marker_class: int | str = 0,
    marker_rate: float = 1.0,
    split: str = "train",
    site_noise: Sequence[float] | None = None,
    site_contrast: Sequence[float] | None = None,
    name: str | None = None,
) -> ImageSet:
    """Generate the synthetic lesion set; the same arguments always give the same bytes.

    Args:
        n_per_class: images per class (per split; ``split="all"`` gives three times as many).
        size: image height and width in pixels (at least 16).
        n_classes: 2 to 6 classes, named by lesion type in this order: round, spiculated, ring,
            textured, lobulated, target.
        seed: the random seed.
        sites: acquisition site names; images are spread evenly over them within each class.
            Later sites are noisier and have lower contrast.
        spurious_marker: burn a small bright square into the top-right corner of images of
            ``marker_class`` taken at ``marker_site`` (a shortcut outside the lesion).
        marker_site: the site whose images get the marker.
        marker_class: the class (index or name) whose images get the marker.
        marker_rate: the fraction of those images that get it (1.0 = all).
        split: ``"train"``, ``"val"``, ``"test"`` (independent random streams of the same seed, so
            the splits never share an image) or ``"all"`` (the three joined, in that order).
        site_noise: white-noise standard deviation per site (default 0.015 rising to 0.07).
        site_contrast: contrast factor per site (default 1.0 falling to 0.6).
        name: the image set's name (default ``"synthetic"``, or ``"synthetic-biased"`` with the marker).

    Returns:
        An ImageSet of grey images (n, 1, size, size) in [0, 1] (quantised to 8-bit levels), with
        lesion ``masks`` (n, size, size) and metadata columns ``sample_id``, ``site``, ``marker``
        (bool), ``split``, ``lesion_x``, ``lesion_y`` and ``lesion_radius`` (pixels).
    """
    if int(n_per_class) < 1:
        raise DataError(f"n_per_class must be at least 1, got {n_per_class}")
    if int(size) < 16:
        raise DataError(f"size must be at least 16 pixels so that lesions are visible, got {size}")
    if not 2 <= int(n_classes) <= len(CLASS_SHAPES):
        raise DataError(f"n_classes must be between 2 and {len(CLASS_SHAPES)} (lesion types {list(CLASS_SHAPES)}), "
                        f"got {n_classes}")
    sites = tuple(str(s) for s in sites)
    if not sites or len(set(sites)) != len(sites):
        raise DataError(f"sites must be a non-empty list of distinct names, got {list(sites)}")
    if split not in (*SPLITS, "all"):
        raise DataError(f"unknown split {split!r}; choose one of {[*SPLITS, 'all']}")
    class_names = CLASS_SHAPES[:int(n_classes)]
    if isinstance(marker_class, str):
        if marker_class not in class_names:
            raise DataError(f"marker_class {marker_class!r} is not one of the classes {list(class_names)}")
        marker_class = class_names.index(marker_class)
    if not 0 <= int(marker_class) < int(n_classes):
        raise DataError(f"marker_class must be a class index 0..{int(n_classes) - 1} or a class name, "
                        f"got {marker_class}")
    if spurious_marker and str(marker_site) not in sites:
        raise DataError(f"marker_site {marker_site!r} is not one of the sites {list(sites)}")
    if not 0.0 <= float(marker_rate) <= 1.0:
        raise DataError(f"marker_rate must lie in [0, 1], got {marker_rate}")
    size, n_per_class, n_classes = int(size), int(n_per_class), int(n_classes)
    sigma, gain = _site_settings(len(sites), site_noise, site_contrast)

    parts = []
    for part in (SPLITS if split == "all" else (split,)):
        images, labels, masks, meta, marker_draw = _make_split(n_per_class, size, n_classes, seed, part,
                                                               sites, sigma, gain)
        if spurious_marker:
            on = (labels == int(marker_class)) & (meta["site"].to_numpy() == str(marker_site)) \
                & (marker_draw < float(marker_rate))
            rows, cols = marker_box(size)
            images[on, rows, cols] = 0.96
            meta["marker"] = on
        parts.append((images, labels, masks, meta))

    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    # quantise to 8-bit grey levels like a stored image, which also makes the bytes exactly reproducible
    np.clip(images, 0.0, 1.0, out=images)
    images *= 255.0
    np.round(images, out=images)
    images /= 255.0
    return ImageSet(
        images[:, None],
        np.concatenate([p[1] for p in parts]),
        class_names,
        pd.concat([p[3] for p in parts], ignore_index=True),
        name or ("synthetic-biased" if spurious_marker else "synthetic"),
        np.concatenate([p[2] for p in parts]),
    )
