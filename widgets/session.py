"""Opening and re-opening a workbench session: a dataset with its default model, and the state file
that re-opens the same view (dataset, model fingerprint, episode JSON, selected query and
explanation settings), written by Export and read by ``WorkbenchState.restore``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
