"""Small helpers shared by the notebooks (so each notebook's first cells stay short and alike)."""

from __future__ import annotations

import os

from fsl_xai.data import list_datasets

from .state import WorkbenchState


def smoke() -> bool:
    """True in CI (``CI`` set) or with ``FSL_XAI_SMOKE=1``: notebooks shrink their work."""
    return "CI" in os.environ or os.environ.get("FSL_XAI_SMOKE", "") == "1"


def open_state(*preferred: str, n_way: int = 5, n_shot: int = 5, n_query: int = 5, seed: int = 0,
               all_classes: bool = False) -> WorkbenchState:
    """A loaded WorkbenchState on the first of ``preferred`` present here (else the built-in synthetic set).

    The dataset's cached default model is used (trained on first use, with a progress bar).

    Args:
        preferred: dataset names in order of preference.
        n_way, n_shot, n_query, seed: the first episode.
        all_classes: draw episodes from every class, not only the classes the model was not trained on.
    """
    present = {i.name for i in list_datasets() if i.present and i.supported}
    name = next((p for p in preferred if p in present), "synthetic")  # no download from a notebook's first cell
    state = WorkbenchState(n_way=n_way, n_shot=n_shot, n_query=n_query, seed=seed)
    # smoke mode shrinks episode counts in the notebooks, never the model: CI trains (once, cached)
    # the same default model a user gets, so what the notebooks show is a trained model's behaviour
    state.load(name, progress=True)
    if all_classes:
        images = state.loaded()[0]
        state.episode_classes = list(images.class_names)
        state.n_way = min(n_way, images.n_classes)
        state.resample(seed)
    if state.error:
        raise RuntimeError(state.error)
    return state
