"""Opening and re-opening a workbench session: a dataset with its default model, your own images
(:func:`open_own_images`) with a checkpoint, the model on screen or a default model (never trained
behind your back: :func:`own_default_model` says when training is needed), and the state file that
re-opens the same view (dataset, model fingerprint, episode JSON, selected query and explanation
settings), written by Export and read by ``WorkbenchState.restore``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsl_xai import config
from fsl_xai.data.imageset import ImageSet
from fsl_xai.embeddings import images_for_model
from fsl_xai.episodes import Episode
from fsl_xai.errors import DataError
from fsl_xai.models import FewShotClassifier

if TYPE_CHECKING:
    from .state import WorkbenchState

STATE_FORMAT = "fsl-xai-workbench/1"


def state_dict(state: WorkbenchState) -> dict:
    """The state file's content for a WorkbenchState."""
    return {
        "format": STATE_FORMAT, "dataset": state.dataset_name, "split": state.split,
        "model": state.model_name, "model_fingerprint": state.fingerprint,
        "episode": state.episode.to_dict() if state.episode else None,
        "seed": state.seed, "n_way": state.n_way, "n_shot": state.n_shot, "n_query": state.n_query,
        "query_index": state.query_index, "methods": list(state.methods), "params": dict(state.params),
        "target": state.target, "contrast": state.contrast, "projection": state.projection,
    }


def write_state(state: WorkbenchState, path: str | Path) -> Path:
    """Write the state file of a WorkbenchState (JSON); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state_dict(state), indent=2, default=str))
    return path


def read_state(data: dict | str | Path) -> dict:
    """A state file's content, from its path or as already parsed.

    Raises:
        DataError: the file cannot be read or is not a workbench state.
    """
    if isinstance(data, (str, Path)):
        try:
            data = json.loads(Path(data).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read the workbench state file {data} ({exc}); "
                            "choose a file saved by Export") from exc
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise DataError(f"not a workbench state (expected format {STATE_FORMAT!r}); choose a file saved by Export")
    return data


def open_dataset(dataset_name: str, model_name: str, split: str = "test", progress: bool = True,
                 images: ImageSet | None = None, model: FewShotClassifier | None = None, model_info: Any = None,
                 status: Callable[[str], None] = print) -> tuple[ImageSet, FewShotClassifier, Any]:
    """A split of a dataset (or the ImageSet given) and its cached default model (trained on first
    use; or the model given), in eval mode, with the images converted to the model's input.

    Returns:
        (images, model, model_info); ``status`` is told what is being loaded.
    """
    from fsl_xai.data import registry

    status(f"loading {dataset_name} ...")
    imgs = images if images is not None else registry.load_dataset(dataset_name, split=split, progress=progress)
    if model is None:
        import fsl_xai.training as training

        status(f"loading the {model_name} model for {dataset_name} (trained on first use) ...")
        model, model_info = training.default_model(dataset_name, model=model_name, progress=progress)
    model.eval()
    return images_for_model(imgs, model), model, model_info


def open_own_images(path: str | Path, split: str = "test", labels_csv: str | Path | None = None,
                    size: int | None = None, channels: int | None = None) -> ImageSet:
    """Your own images from a path (npz, image folder + CSV, DICOM folder), as
    :func:`fsl_xai.data.open.open_images` reads them; DICOM images at ``size``/``channels``."""
    from fsl_xai.data.open import open_images

    text = str(path).strip()
    if not text:
        raise DataError("type the path of your images first: a MedMNIST-format .npz file, an image folder "
                        "(class sub-folders, or a CSV with path and label columns) or a folder of DICOM files")
    csv = str(labels_csv).strip() if labels_csv is not None else ""
    return open_images(text, split=split, labels_csv=csv or None, size=size, channels=channels)


def open_checkpoint(path: str | Path) -> tuple[FewShotClassifier, Any]:
    """(model in eval mode, CheckpointInfo) of a checkpoint file written by ``fsl-xai train``."""
    from fsl_xai.checkpoints import load_checkpoint
    from fsl_xai.errors import CheckpointError

    text = str(path).strip()
    if not text:
        raise CheckpointError("type the path of a checkpoint file (.pt, written by `fsl-xai train`) first")
    if Path(text).expanduser().is_dir():
        raise CheckpointError(f"{text} is a folder; give the checkpoint file itself (.pt, written by `fsl-xai train`)")
    return load_checkpoint(Path(text).expanduser())


def own_default_model(images: ImageSet, model_name: str) -> tuple[Any, Path, bool]:
    """(recipe, cache file, cached?) of the default model for images like ``images`` (their channels
    and size; meta-trained on MedNIST + PBC). When it is not cached, loading it means training first."""
    from fsl_xai.training import default_recipe

    channels = images.n_channels if images.n_channels in (1, 3) else 3
    recipe = default_recipe("own-images", channels=channels, size=max(images.image_size))
    path = default_model_file(recipe, model_name)
    return recipe, path, path.is_file()


def default_model_file(recipe: Any, model_name: str) -> Path:
    """Where ``fsl_xai.training.default_model_from_recipe`` caches the model of ``recipe``."""
    return config.cache_dir() / "models" / f"{recipe.target}-{model_name}-{recipe.key(model_name)}.pt"


def novel_classes(info: Any, images: ImageSet) -> list[str]:
    """The classes a model was NOT trained on (its checkpoint's novel split) that are in ``images``;
    all classes when the checkpoint does not say."""
    split = getattr(info, "class_split", None) or {}
    novel = [c for c in split.get("novel", ()) if c in images.class_names]
    if len(novel) >= 2:
        return novel
    trained = set(getattr(info, "classes", ()) or ())
    rest = [c for c in images.class_names if c not in trained]
    return rest if len(rest) >= 2 else list(images.class_names)


def classes_note(info: Any, classes: list[str] | tuple[str, ...], dataset: str = "") -> str:
    """What the model knows of the episode classes, as plain text (only what its checkpoint says).

    Default models trained on several datasets list their classes as ``dataset:class``."""
    trained = set(getattr(info, "classes", ()) or ())
    if not classes:
        return ""
    names = ", ".join(classes)
    if not trained:
        return f"episode classes: {names} (the model's checkpoint does not list the classes it was trained on)"
    seen = [c for c in classes if c in trained or f"{dataset}:{c}" in trained]
    if not seen:
        return f"episodes drawn from classes the model was not trained on: {names}"
    if len(seen) == len(classes):
        return f"episode classes: {names} (all seen by the model in training)"
    return f"episode classes: {names} (seen in training: {', '.join(seen)})"


def restore_state(state: WorkbenchState, data: dict | str | Path, images: ImageSet | None = None,
                  model: FewShotClassifier | None = None, model_info: Any = None) -> None:
    """Re-open a saved state in ``state``: loads its dataset and model (unless they are loaded
    already) and shows the same episode, query and settings.

    Raises:
        DataError: the file is not a workbench state.
    """
    data = read_state(data)
    for name in ("n_way", "n_shot", "n_query", "seed"):
        setattr(state, name, int(data[name]))
    if (state.images is None or state.dataset_name != data["dataset"] or state.model is None
            or images is not None or model is not None):
        state.load(data["dataset"], data.get("model"), split=data.get("split", "test"), images=images, model=model,
                   model_info=model_info)
    if data.get("model_fingerprint") and data["model_fingerprint"] != state.fingerprint:
        state.status = (f"note: the saved state used model {data['model_fingerprint']}, this session has "
                        f"{state.fingerprint}; predictions may differ")
    episode = Episode.from_dict(data["episode"])
    with state.hold_trait_notifications():
        state.methods = list(data.get("methods", ["gradcam"]))
        state.params = dict(data.get("params", {}))
        state.target = data.get("target", "predicted")
        state.contrast = data.get("contrast")
        state.projection = data.get("projection", "pca")
    state.set_episode(episode, refit_projection=True, query_index=int(data.get("query_index", 0)))
