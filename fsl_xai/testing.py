"""Small, deterministic building blocks for tests (in the spirit of ``captum.testing``).

Everything here is generated, tiny and seeded, so a test can build an image set, an episode or a
model in milliseconds and get the same result every time::

    from fsl_xai.testing import make_episode, tiny_model

    images, episode = make_episode(n_way=3, n_shot=2, n_query=4, seed=0)
    model = tiny_model(channels=images.n_channels, size=images.image_size[0])
    s_img, s_lab, q_img, q_lab = episode.tensors(images)
    logits = model.fit(s_img, s_lab)(q_img)

These images are for unit tests of mechanics (shapes, bookkeeping, errors). Features that are
about real data are tested on the real shared data sets.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data.imageset import ImageSet
from .episodes import Episode, EpisodeSampler
from .models import make_backbone, make_model
from .models.base import FewShotClassifier

__all__ = ["make_episode", "make_imageset", "quietly", "tiny_model"]


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with torch's TorchScript deprecation notices silenced (a
    DeprecationWarning in torch 2.13, a FutureWarning in 2.14): tests still make TorchScript files
    as users have them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args, **kwargs)


def make_imageset(
    n_classes: int = 3,
    n_per_class: int = 10,
    channels: int = 1,
    size: int = 28,
    seed: int = 0,
    name: str = "toy",
    with_masks: bool = False,
) -> ImageSet:
    """A tiny image set whose classes are easy to tell apart.

    Class ``k`` shows a bright square blob at its own place on a dark, noisy background (the
    places are spread around a circle), with a small random jitter per image, so a class mean
    is a good prototype even in pixel space.

    Args:
        n_classes: number of classes (named ``c0``, ``c1``, ...).
        n_per_class: images per class.
        channels: 1 (grey) or 3 (RGB; the channels get slightly different intensities).
        size: height and width in pixels (at least 8).
        seed: the random seed; the same seed gives the same images.
        name: the set's name (sample ids are ``{name}-{i:04d}``).
        with_masks: also return the blob masks in ``masks``.

    Returns:
        An ImageSet with images (n_classes * n_per_class, channels, size, size) in [0, 1],
        labels grouped by class, and metadata columns ``sample_id``, ``site`` ("A"/"B",
        alternating) and ``age`` (a number).
    """
    if n_classes < 1 or n_per_class < 1:
        raise ValueError("make_imageset needs at least one class and one image per class")
    if size < 8:
        raise ValueError(f"make_imageset needs size >= 8, got {size}")
    rng = np.random.default_rng(seed)
    n = n_classes * n_per_class
    half = max(1, size // 8)
    radius = size / 2 - half - 2
    images = rng.normal(0.1, 0.03, size=(n, channels, size, size))
    masks = np.zeros((n, size, size), dtype=bool)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    for i, k in enumerate(labels):
        angle = 2 * np.pi * k / n_classes
        cy = int(round(size / 2 + radius * np.sin(angle))) + int(rng.integers(-1, 2))
        cx = int(round(size / 2 + radius * np.cos(angle))) + int(rng.integers(-1, 2))
        y0, y1 = max(cy - half, 0), min(cy + half + 1, size)
        x0, x1 = max(cx - half, 0), min(cx + half + 1, size)
        masks[i, y0:y1, x0:x1] = True
        for c in range(channels):
            images[i, c, y0:y1, x0:x1] += 0.7 - 0.1 * c
    images = np.clip(images, 0.0, 1.0).astype(np.float32)
    metadata = pd.DataFrame({
        "sample_id": [f"{name}-{i:04d}" for i in range(n)],
        "site": np.where(np.arange(n) % 2 == 0, "A", "B"),
        "age": (20 + (np.arange(n) * 7) % 60).astype(np.float64),
    })
    return ImageSet(images, labels, tuple(f"c{k}" for k in range(n_classes)), metadata, name,
                    masks if with_masks else None)


def make_episode(
    n_way: int = 3,
    n_shot: int = 2,
    n_query: int = 3,
    channels: int = 1,
    size: int = 28,
    seed: int = 0,
    index: int = 0,
    n_classes: int | None = None,
) -> tuple[ImageSet, Episode]:
    """A tiny image set and one episode drawn from it by the real EpisodeSampler.

    Args:
        n_way, n_shot, n_query: the episode's shape (n_query images per class).
        channels, size: image shape.
        seed: seeds both the images and the sampler.
        index: which episode of the sampler.
        n_classes: classes in the image set (default ``n_way``).

    Returns:
        (images, episode); ``episode.tensors(images)`` gives the torch tensors.
    """
    images = make_imageset(n_classes or n_way, n_shot + n_query + 2, channels, size, seed)
    sampler = EpisodeSampler(images, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=seed)
    return images, sampler.sample(index)


def tiny_model(
    channels: int = 1,
    size: int = 28,
    width: int = 8,
    backbone: str = "conv4",
    model: str = "protonet",
    seed: int = 0,
    **model_kwargs,
) -> FewShotClassifier:
    """A narrow, randomly initialised few-shot model in eval mode (same seed -> same weights).

    Args:
        channels, size: the input images it expects.
        width: channels of each block (Conv-4 and ResNet-12).
        backbone, model: registry names.
        seed: seeds the weight initialisation without touching the global random state.
        model_kwargs: passed to the model (for example ``distance="cosine"``).
    """
    options: dict[str, dict[str, Any]] = {"conv4": {"width": width}, "resnet12": {"widths": (width,) * 4}}
    kwargs = options.get(backbone, {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_backbone(backbone, in_channels=channels, image_size=size, **kwargs)
        clf = make_model(model, net, **model_kwargs)
    return clf.eval()
