"""Small helpers shared by the notebooks (so each notebook's first cells stay short and alike)."""

from __future__ import annotations

import os

from . import _backend as backend
from .state import WorkbenchState


def smoke() -> bool:
    """True in CI (``CI`` set) or with ``FSL_XAI_SMOKE=1``: notebooks shrink their work."""
    return "CI" in os.environ or os.environ.get("FSL_XAI_SMOKE", "") == "1"


def open_state(*preferred: str, n_way: int = 5, n_shot: int = 5, n_query: int = 5, seed: int = 0,
               smoke_mode: bool | None = None, all_classes: bool = False) -> WorkbenchState:
    """A loaded WorkbenchState on the first of ``preferred`` present here (else the built-in synthetic set).

    Normally the dataset's cached default model is used (trained on first use, with a progress bar).
    In smoke mode a tiny seeded model is used instead, so CI never trains.

    Args:
        preferred: dataset names in order of preference.
        n_way, n_shot, n_query, seed: the first episode.
        all_classes: draw episodes from every class, not only the classes the model was not trained on.
    """
    smoke_mode = smoke() if smoke_mode is None else smoke_mode
    name = backend.pick_dataset(*preferred)
    state = WorkbenchState(n_way=n_way, n_shot=n_shot, n_query=n_query, seed=seed)
    if smoke_mode:
        from fsl_xai.testing import tiny_model

        images = backend.load_images(name, "test")
        model = tiny_model(channels=images.n_channels, size=images.image_size[0], width=16)
        state.load(name, images=images, model=model,
                   model_info=backend.ModelInfo(name, "protonet", trained=False, note="smoke test: tiny untrained model"))
    else:
        state.load(name, progress=True)
    if all_classes:
        state.episode_classes = list(state.images.class_names)
        state.n_way = min(n_way, state.images.n_classes)
        state.resample(seed)
    if state.error:
        raise RuntimeError(state.error)
    return state
