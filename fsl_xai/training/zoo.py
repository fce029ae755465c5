"""The default-model zoo: a ready model per shared dataset, trained once by its recipe and cached.

:func:`default_model` gives the cached model of :func:`~fsl_xai.training.recipes.default_recipe`,
training it on first use with :func:`train_recipe`. The cache lives under
``fsl_xai.config.cache_dir() / "models"``: one checkpoint per (recipe, model) named
``{target}-{model}-{key}.pt``, and one pre-trained backbone per recipe
(``{target}-pretrained-{backbone}-{key}.pt``) shared by SimpleShot and the fine-tuning baseline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import CheckpointInfo, atomic_torch_save, load_checkpoint, save_checkpoint
from ..config import cache_dir as _cache_dir
from ..data.imageset import ImageSet
from ..embeddings import embed_all
from ..episodes import ClassSplit
from ..errors import CheckpointError, ModelError
from ..models import make_backbone, make_model
from ..models.base import FewShotClassifier
from ..models.simpleshot import SimpleShot
from .loops import pretrain, train_episodic
from .recipes import (
    CROSS_DOMAIN,
    DEFAULT_SPLITS,
    FROM_PROTONET,
    PRETRAINED_MODELS,
    SELF_TRAINED,
    DefaultRecipe,
    default_recipe,
)
from .validation import validation_accuracy


def build_model(model: str, backbone: str, in_channels: int, image_size: int | tuple[int, int],
                seed: int = 0, backbone_params: dict | None = None, **model_params: Any) -> FewShotClassifier:
    """A freshly initialised model; same seed -> same initial weights."""
    torch.manual_seed(seed)
    net = make_backbone(backbone, in_channels=in_channels, image_size=image_size, **(backbone_params or {}))
    return make_model(model, net, **model_params)


def fit_base_statistics(model: FewShotClassifier, images: ImageSet) -> None:
    """Give a model that centres its features on the base classes (SimpleShot) the mean embedding of
    the base images; other models have no base statistics and are left as they are."""
    if isinstance(model, SimpleShot):
        # embedded once with the final weights and never looked up again: not worth a cache entry
        model.fit_base(embed_all(model, images, cache=False))


def _models_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(_cache_dir(cache_dir)) / "models"


def _source_sets(recipe: DefaultRecipe, split: str, progress: bool) -> ImageSet:
    from ..data.registry import load_dataset

    sets = []
    for name in recipe.sources:
        s = load_dataset(name, split=split, progress=progress).convert(channels=recipe.channels, size=recipe.size)
        s.name = name
        sets.append(s)
    if len(sets) == 1:
        return sets[0]
    return ImageSet.concat(sets, name="+".join(recipe.sources))


def train_recipe(recipe: DefaultRecipe, model_name: str = "protonet", progress: bool = True,
                 checkpoint: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
                 ) -> tuple[FewShotClassifier, CheckpointInfo]:
    """Train a model by ``recipe``: episodic meta-training (protonet, matching), classification
    pre-training (simpleshot, finetune; one cached backbone serves both), or the meta-trained
    ProtoNet backbone (transductive).

    Args:
        recipe: what to train on and how.
        model_name: a registered model name.
        progress: progress bars.
        checkpoint: where to save the result (episodic training also resumes from it).
        cache_dir: the cache of pre-trained backbones and of the ProtoNet a transductive model
            starts from (default: fsl_xai.config.cache_dir()).

    Returns:
        (model in eval mode, CheckpointInfo).
    """
    train = _source_sets(recipe, "train", progress)
    val_src = _source_sets(recipe, "val", progress)
    model = build_model(model_name, recipe.backbone, recipe.channels, recipe.size, seed=recipe.seed)
    base_set = train.select_classes(recipe.base)
    val_set = val_src.select_classes(recipe.val)
    split = ClassSplit(base=recipe.base, val=() if recipe.val == recipe.base else recipe.val, novel=recipe.novel)
    extra: dict[str, Any] = {"recipe": recipe.to_dict()}
    common: dict[str, Any] = dict(dataset=train.name, data_fingerprint=base_set.fingerprint(), classes=recipe.base,
                                  class_split=split.to_dict())
    if model_name in PRETRAINED_MODELS or model_name in FROM_PROTONET:
        how: dict[str, Any]
        if model_name in PRETRAINED_MODELS:
            name = f"{recipe.target}-pretrained-{recipe.backbone}-{recipe.key('pretrained')}.pt"
            source = _models_dir(cache_dir) / name
            if source.exists():
                model.backbone.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
                how = {"backbone": "classification pre-training (cached)"}
            else:
                result = pretrain(model.backbone, base_set, epochs=100, batch_size=recipe.pretrain_batch,
                                  max_steps=recipe.pretrain_steps, seed=recipe.seed, progress=progress)
                atomic_torch_save(model.backbone.state_dict(), source)
                how = {"backbone": "classification pre-training", "history": result.history}
            extra["pretrain"] = {"steps": recipe.pretrain_steps, "batch_size": recipe.pretrain_batch}
        else:
            proto, proto_info = default_model_from_recipe(recipe, "protonet", progress, cache_dir)
            model.backbone.load_state_dict(proto.backbone.state_dict())
            how = {"backbone": "meta-trained ProtoNet backbone", "protonet_val": proto_info.val_metrics}
        fit_base_statistics(model, base_set)
        model.eval()
        val_metrics = validation_accuracy(model, val_set, recipe.n_way, recipe.n_shot, recipe.val_episodes,
                                          recipe.seed)
        info = CheckpointInfo.for_model(model, val_metrics=val_metrics, progress={"finished": True, **how},
                                        extra=extra, **common)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, info)
        return model, info
    trained = train_episodic(model, base_set, recipe.n_way, recipe.n_shot, recipe.n_query, recipe.episodes,
                             seed=recipe.seed, val_images=val_set, val_every=recipe.val_every, lr=recipe.lr,
                             progress=progress, checkpoint=checkpoint, resume=checkpoint is not None,
                             val_episodes=recipe.val_episodes, class_split=split, extra_info=extra)
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    return model, CheckpointInfo.for_model(model, val_metrics=trained.val_metrics(), extra=extra, **common)


def default_model_from_recipe(recipe: DefaultRecipe, model: str = "protonet", progress: bool = True,
                              cache_dir: str | os.PathLike | None = None) -> tuple[FewShotClassifier, CheckpointInfo]:
    """Load the cached model for ``recipe``, training and caching it first when missing."""
    path = _models_dir(cache_dir) / f"{recipe.target}-{model}-{recipe.key(model)}.pt"
    if path.exists():
        try:
            return load_checkpoint(path)
        except CheckpointError:
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    if progress:
        print(f"Training the default {model} model for {recipe.target} once (cached at {path}) ...", flush=True)
    # a stable name, so that an interrupted first training resumes where it stopped
    tmp = path.with_name(f".{path.name}.partial")
    try:
        train_recipe(recipe, model, progress=progress, checkpoint=tmp, cache_dir=cache_dir)
    except CheckpointError:
        tmp.unlink(missing_ok=True)  # an unusable partial run: start over
        train_recipe(recipe, model, progress=progress, checkpoint=tmp, cache_dir=cache_dir)
    os.replace(tmp, path)
    return load_checkpoint(path)


def default_model(dataset_name: str, model: str = "protonet", progress: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> tuple[FewShotClassifier, CheckpointInfo]:
    """A ready model for a dataset, trained on first use (a small budget) and cached.

    PBC and MedNIST models are meta-trained on the dataset's base classes (``DEFAULT_SPLITS``)
    and meant for its novel classes; HAM10000, BreastMNIST, RetinaMNIST and other sets get a
    model meta-trained on MedNIST + PBC converted to their channels and size (one model per
    channels x size, shared). Later calls load the checkpoint cached under
    ``cache_dir()/models``.

    Args:
        dataset_name: a registered dataset name (``pbc-blood``, ``ham10000``, ...).
        model: a registered model name.
        progress: progress bars while training.
        cache_dir: where to cache (default: fsl_xai.config.cache_dir()).

    Returns:
        (model in eval mode, CheckpointInfo).

    Raises:
        ModelError: unknown model. DatasetNotFoundError: unknown dataset, or training data
        (MedNIST, PBC) not available.
    """
    from ..data.registry import get_info
    from ..models import list_models

    if model not in list_models():
        raise ModelError(f"unknown model {model!r}; choose one of {list_models()}")
    info = get_info(dataset_name)
    name = info.name
    if name in DEFAULT_SPLITS or name in CROSS_DOMAIN or name in SELF_TRAINED:
        recipe = default_recipe(name)
    else:
        recipe = default_recipe(name, channels=int(info.channels), size=int(info.image_size))
    return default_model_from_recipe(recipe, model, progress, cache_dir)
