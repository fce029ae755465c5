"""Validation during training: accuracy over fixed episodes, from images embedded once per validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.imageset import ImageSet
from ..embeddings import embed_all
from ..episodes import EpisodeSampler
from ..errors import EpisodeError
from ..intervals import mean_interval
from ..models.base import FewShotClassifier

#: added to the training seed to draw the validation episodes, so they never repeat training episodes
VALIDATION_SEED_OFFSET = 1_000_003


def episode_accuracies(model: FewShotClassifier, images: ImageSet, n_way: int, n_shot: int, n_query: int,
                       episodes: int, seed: int, classes: Sequence[str] | None = None,
                       embeddings: torch.Tensor | None = None) -> np.ndarray:
    """Accuracy of each of the first ``episodes`` episodes of ``EpisodeSampler(images, n_way, n_shot,
    n_query, classes, seed)``, scored from embeddings computed once; the model is not changed.

    Args:
        model: the few-shot model (scored in eval mode; its training mode is restored).
        images: the images to draw episodes from.
        n_way / n_shot / n_query: episode shape (n_query queries per class).
        episodes: how many episodes.
        seed: the sampler's seed.
        classes: the classes to draw from (default: all).
        embeddings: (N, D) embeddings of ``images`` when already computed. None: they are computed
            with :func:`~fsl_xai.embeddings.embed_all` without its cache, since during training the
            weights change between validations and a cached entry would never be used again.

    Returns:
        (episodes,) accuracy of each episode.
    """
    sampler = EpisodeSampler(images, n_way, n_shot, n_query, classes=classes, seed=seed)
    emb = embeddings if embeddings is not None else embed_all(model, images, cache=False)
    accs = np.empty(episodes)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(episodes):
                _, s, sl, q, ql = sampler.sample_indices(i)
                logits = model.fit_embeddings(emb[s], torch.from_numpy(sl)).logits_from_embeddings(emb[q])
                accs[i] = float((logits.argmax(1).numpy() == ql).mean())
    finally:
        model.train(was_training)
    return accs


def validation_shape(images: ImageSet, n_way: int, n_shot: int, classes: Sequence[str] | None
                     ) -> tuple[int, int, int]:
    """(n_way, n_shot, n_query) of validation episodes on ``images``: at most ``n_way`` classes and
    up to 15 queries per class, as many as the smallest class allows.

    Raises:
        EpisodeError: a class has no image beyond ``n_shot``.
    """
    names = list(classes) if classes is not None else list(images.class_names)
    counts = images.class_counts()
    smallest = min(counts[c] for c in names)
    n_query = min(15, smallest - n_shot)
    if n_query < 1:
        raise EpisodeError(f"validation set {images.name!r} has a class with only {smallest} images; "
                           f"it needs more than n_shot = {n_shot} per class")
    return min(n_way, len(names)), n_shot, n_query


def validation_accuracy(model: FewShotClassifier, val_images: ImageSet, n_way: int, n_shot: int,
                        episodes: int = 100, seed: int = 0, classes: Sequence[str] | None = None) -> dict:
    """Mean accuracy and its 95% CI on ``episodes`` fixed validation episodes, as recorded in
    checkpoints (the episodes ``train_episodic`` validates on with the same seed and classes).

    Returns:
        {"best_val_accuracy", "best_val_ci95" [low, high], "val_episodes", "val_set", "val_shape"}.
    """
    vw, vs, vq = validation_shape(val_images, n_way, n_shot, classes)
    acc = episode_accuracies(model, val_images, vw, vs, vq, episodes, seed + VALIDATION_SEED_OFFSET, classes)
    interval = mean_interval(acc)
    return {"best_val_accuracy": interval.estimate, "best_val_ci95": list(interval.as_tuple()),
            "val_episodes": episodes, "val_set": val_images.name, "val_shape": [vw, vs, vq]}
