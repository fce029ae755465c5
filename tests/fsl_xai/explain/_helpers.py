"""Small seeded images, episodes and models shared by the explanation tests."""

from __future__ import annotations

import numpy as np
import torch

import fsl_xai
from fsl_xai import EpisodeSampler, ImageSet


def shapes_imageset(n_classes: int = 3, n_per_class: int = 6, channels: int = 1, size: int = 32,
                    seed: int = 0) -> ImageSet:
    """Classes differ by the shape and place of a bright object on a noisy background
    (0: square top-left, 1: horizontal bar in the middle, 2: disc bottom-right, 3: vertical bar);
    ``masks`` hold the objects."""
    rng = np.random.default_rng(seed)
    n = n_classes * n_per_class
    images = rng.normal(0.15, 0.05, size=(n, channels, size, size))
    masks = np.zeros((n, size, size), dtype=bool)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    yy, xx = np.mgrid[:size, :size]
    s = size / 32
    for i, k in enumerate(labels):
        dy, dx = rng.integers(-2, 3, size=2)
        if k == 0:
            m = (abs(yy - 9 * s - dy) <= 4 * s) & (abs(xx - 9 * s - dx) <= 4 * s)
        elif k == 1:
            m = (abs(yy - 16 * s - dy) <= 2 * s) & (abs(xx - 16 * s - dx) <= 10 * s)
        elif k == 2:
            m = (yy - 22 * s - dy) ** 2 + (xx - 22 * s - dx) ** 2 <= (5 * s) ** 2
        else:
            m = (abs(yy - 16 * s - dy) <= 10 * s) & (abs(xx - 6 * s - dx) <= 2 * s)
        masks[i] = m
        for c in range(channels):
            images[i, c][m] += 0.6 + 0.1 * c
    images = np.clip(images, 0, 1).astype(np.float32)
    return ImageSet(images, labels, tuple(f"shape{k}" for k in range(n_classes)), None, "shapes", masks)


def make_model(backbone: str = "conv4", channels: int = 1, size: int = 32, seed: int = 0, model: str = "protonet",
               **model_kwargs):
    """A narrow, seeded, untrained model (eval mode)."""
    kwargs = {"conv4": {"width": 8}, "resnet12": {"widths": (8, 8, 8, 8)}}[backbone]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = fsl_xai.make_backbone(backbone, channels, size, **kwargs)
        clf = fsl_xai.make_model(model, net, **model_kwargs)
    return clf.eval()


def episode_for(images: ImageSet, n_way: int = 3, n_shot: int = 2, n_query: int = 2, seed: int = 0):
    return EpisodeSampler(images, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=seed).sample(0)


def fitted(backbone: str = "conv4", channels: int = 1, size: int = 32, n_shot: int = 2, seed: int = 0, **kw):
    """(model fitted on an episode's support, query images, episode, image set)."""
    images = shapes_imageset(channels=channels, size=size, seed=seed)
    episode = episode_for(images, n_shot=n_shot, seed=seed)
    model = make_model(backbone, channels, size, seed, **kw)
    s, sl, q, _ = episode.tensors(images)
    model.fit_support(s, sl)
    return model, q, episode, images
