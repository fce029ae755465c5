"""The one place where the widgets call into ``fsl_xai``: every view goes through these functions,
so that the library's entry points are named once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from fsl_xai.data.imageset import ImageSet
from fsl_xai.errors import DataError
from fsl_xai.metrics.intervals import wilson_interval


# ---------------------------------------------------------------------------------------- data
def list_dataset_names() -> list[str]:
    """Dataset names that can be opened now (present locally, downloadable or built in)."""
    from fsl_xai.data.registry import list_datasets

    return [i.name for i in list_datasets() if i.supported and (i.present or i.downloadable or i.kind == "builtin")]


def pick_dataset(*preferred: str) -> str:
    """The first of ``preferred`` that is on this machine now (no download), else the built-in 'synthetic'."""
    from fsl_xai.data.registry import list_datasets

    present = {i.name for i in list_datasets() if i.present and i.supported}
    return next((p for p in preferred if p in present), "synthetic")


def load_images(name: str, split: str = "test", progress: bool = False) -> ImageSet:
    """One split of a named dataset (DatasetNotFoundError when unknown or absent)."""
    from fsl_xai.data.registry import load_dataset

    return load_dataset(name, split=split, progress=progress)


# ---------------------------------------------------------------------------------------- models
def list_model_names() -> list[str]:
    from fsl_xai.models import list_models

    return list_models()


@dataclass
class ModelInfo:
    """What the workbench shows about a model when the training module gives no CheckpointInfo."""

    dataset: str
    model: str
    trained: bool
    note: str = ""


def load_model(dataset_name: str, images: ImageSet, model_name: str = "protonet",
               progress: bool = True) -> tuple[torch.nn.Module, Any]:
    """The cached default model for a dataset (trained on first use, with a progress bar), in eval mode."""
    from fsl_xai.training import default_model

    model, info = default_model(dataset_name, model=model_name, progress=progress)
    model.eval()
    return model, info


# ---------------------------------------------------------------------------------------- explain
def list_methods() -> list[str]:
    from fsl_xai.explain import list_methods as methods

    return list(methods())


def explain(model, query_images: torch.Tensor, method: str, target, contrast=None, seed: int = 0,
            episode_id: str = "", **params):
    """An attribution map (``.normalized`` (n, H, W) in [-1, 1]) for the fitted model."""
    from fsl_xai.explain import explain as attribute

    return attribute(model, query_images, method=method, target=target, contrast=contrast, seed=seed,
                     episode_id=episode_id, **params)


def quality_badges(model, query_images: torch.Tensor, amap, method: str, support_images: torch.Tensor,
                   support_labels: torch.Tensor, mask=None, target="predicted", contrast=None,
                   seed: int = 0, **params) -> dict[str, Any]:
    """Quality badges of one shown map: randomisation check, deletion AUC (with a random-map
    reference) and, with a mask, localisation."""
    from fsl_xai.explain import badges

    return dict(badges(model, query_images[0], method, support_images, support_labels, mask=mask, target=target,
                       contrast=contrast, seed=seed, attribution=amap, **params))


def support_influence(model, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                      query_embedding: torch.Tensor) -> pd.DataFrame:
    """One row per support image with an ``influence`` column (positive = supports the decision)."""
    from fsl_xai.explain import support_influence as influence

    return influence(model, support_embeddings, support_labels, query_embedding)


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(model, images: ImageSet, n_way: int, n_shot: int, n_query: int, episodes: int, seed: int,
             classes: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The per-query predictions table over many episodes (columns as in docs/CONTRACTS.md)."""
    from fsl_xai.evaluation import evaluate as run

    return run(model, images, n_way=n_way, n_shot=n_shot, n_query=n_query, episodes=episodes,
               seed=seed, classes=classes, progress=False).predictions


def subgroup_table(predictions: pd.DataFrame, by: Sequence[str], min_n: int = 30) -> pd.DataFrame:
    """Error rate per subgroup with n and a 95% CI (episode-level bootstrap; see fsl_xai.metrics)."""
    from fsl_xai.metrics import subgroup_table as table

    return table(predictions, by=list(by), min_n=min_n, per_class=False)


def disparity(predictions: pd.DataFrame, by: Sequence[str], min_n: int = 30) -> dict | None:
    """The largest subgroup gap with its CI (fsl_xai.metrics.disparity)."""
    from fsl_xai.metrics import disparity as gap

    return gap(predictions, by=list(by), min_n=min_n)


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion k/n ((nan, nan) when n is 0)."""
    return wilson_interval(k, n)


def novel_classes(info: Any, images: ImageSet) -> list[str]:
    """The classes a model was NOT trained on (its checkpoint's novel split) that are in ``images``;
    all classes when the checkpoint does not say."""
    split = getattr(info, "class_split", None) or {}
    novel = [c for c in split.get("novel", ()) if c in images.class_names]
    trained = set(getattr(info, "classes", ()) or ())
    if len(novel) >= 2:
        return novel
    rest = [c for c in images.class_names if c not in trained]
    return rest if len(rest) >= 2 else list(images.class_names)


def check_channels(images: ImageSet, model) -> ImageSet:
    """The images converted to the model's channels and input size, when they differ."""
    cin = getattr(model.backbone, "in_channels", images.n_channels)
    size = getattr(model.backbone, "image_size", images.image_size)
    if images.n_channels != cin or images.image_size != tuple(size):
        try:
            return images.convert(channels=cin, size=tuple(size))
        except DataError as exc:
            raise DataError(f"these images do not fit the model ({exc}); pick a model trained on such images") from exc
    return images
