"""Small seeded images, episodes, models and hand-made attribution methods shared by the explanation tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import fsl_xai
from fsl_xai import EpisodeSampler, ImageSet
from fsl_xai.models import FewShotClassifier, FittedEpisode


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
    """(an episode's fitted episode, query images, episode, image set)."""
    images = shapes_imageset(channels=channels, size=size, seed=seed)
    episode = episode_for(images, n_shot=n_shot, seed=seed)
    model = make_model(backbone, channels, size, seed, **kw)
    s, sl, q, _ = episode.tensors(images)
    return model.fit(s, sl), q, episode, images


# ---------------------------------------------------------------------------------------------- quality checks
class _RegionSumBackbone(nn.Module):
    """Embeds an image as the sum of its pixels inside a square region: (n, C, H, W) -> (n, 1)."""

    def __init__(self, region: tuple[slice, slice]):
        super().__init__()
        self.region = region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.region[0], self.region[1]].sum((1, 2, 3))[:, None]


class RegionSum(FewShotClassifier):
    """A hand-made two-class model: logit 0 is the sum of the pixels inside a square region, logit 1
    its negative. Its exact attribution is the region itself."""

    name = "region_sum"

    def __init__(self, region: tuple[slice, slice] = (slice(4, 8), slice(4, 8))):
        super().__init__(_RegionSumBackbone(region))

    def score(self, query_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return torch.cat([query_embeddings, -query_embeddings], 1)


def region_sum(size: int = 16) -> FittedEpisode:
    """RegionSum's fitted episode (two placeholder support images; the logits ignore the prototypes)."""
    return RegionSum().fit(torch.zeros(2, 1, size, size), torch.tensor([0, 1]))


def region_gradient(fitted, images, targets, contrasts=None, seed=0):
    """Saliency (signed gradient) of the explained logit, computed by hand (needs no registry)."""
    x = images.clone().requires_grad_(True)
    logits = fitted(x)
    value = logits[torch.arange(len(x)), targets]
    if contrasts is not None:
        value = value - logits[torch.arange(len(x)), contrasts]
    (grad,) = torch.autograd.grad(value.sum(), x)
    return grad


def edge_detector(fitted, images, targets, contrasts=None, seed=0):
    """A 'method' that ignores the model: the gradient magnitude of the input image."""
    x = images.sum(1)
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[:, 1:-1] = x[:, 2:] - x[:, :-2]
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    return torch.sqrt(gx * gx + gy * gy)


def zero_maps(fitted, images, targets, contrasts=None, seed=0):
    """A degenerate 'method': all-zero maps."""
    return torch.zeros(len(images), *images.shape[2:])


def constant_maps(fitted, images, targets, contrasts=None, seed=0):
    """A degenerate 'method': the same positive value everywhere."""
    return torch.full((len(images), *images.shape[2:]), 0.25)


def negative_maps(fitted, images, targets, contrasts=None, seed=0):
    """A degenerate 'method': varied, but negative everywhere (no positive attribution)."""
    return -1.0 - images.sum(1)


def query_intensity(fitted, images, targets, contrasts=None, seed=0):
    """A support-blind 'method': the query's own intensity (channels summed), whatever the support set."""
    return images.sum(1)
