"""The model's extra output frozen into a study: conformal prediction sets and the domain guard's
warning, computed once at freeze time (heavy imports inside the functions: the rater kernel never
imports this module).

- Prediction sets (``conformal: {alpha: ...}`` and a condition showing ``prediction_set``):
  split-conformal sets from :mod:`fsl_xai.conformal`, calibrated on held-in episodes with the
  study's protocol and classes (by default of the dataset's ``val`` split, so no case calibrates
  its own set), then applied to the cases' softmax probabilities.
- Domain guard (``guard: {file: guard.json}``): a guard saved by ``fsl-xai guard --save-guard``
  scores each case against its reference and the study episode's support; a flagged case shows
  :data:`GUARD_WARNING` on its screens that show the AI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .design import StudyDesign, StudyDesignError

if TYPE_CHECKING:
    import torch

    from ..conformal import ConformalCalibration
    from ..episodes import Episode
    from ..guard import GuardScores
    from ..models import FewShotClassifier
    from ..models.fitted import FittedEpisode

#: what a rater reads on a screen with the AI when the guard flags the case
GUARD_WARNING = "This image looks unlike the images the model knows; its advice may not apply."
#: calibration defaults (the study file's ``conformal`` may set each)
CONFORMAL_SPLIT, CONFORMAL_EPISODES, CONFORMAL_N_QUERY = "val", 200, 5


def calibrate_sets(design: StudyDesign, model: FewShotClassifier, episode: Episode, progress: bool = False
                   ) -> tuple[ConformalCalibration, dict[str, Any]]:
    """Calibrate prediction sets at the study's alpha on held-in episodes of the study's classes
    and protocol; returns the calibration and how it was drawn (for the provenance).

    Raises:
        StudyDesignError: the calibration split is missing or too small for the episodes, or
            there are too few episodes for alpha (the message names the ``conformal`` field).
    """
    from ..conformal import calibrate
    from ..data.registry import load_dataset
    from ..embeddings import images_for_model
    from ..errors import EpisodeError
    from ..evaluation import evaluate

    cfg = design.conformal or {}
    split = cfg.get("split", CONFORMAL_SPLIT)
    n_episodes = int(cfg.get("episodes", CONFORMAL_EPISODES))
    n_query = int(cfg.get("n_query", CONFORMAL_N_QUERY))
    seed = int(cfg.get("seed", int(design.episode.get("seed", 0)) + 1))
    try:
        images = images_for_model(load_dataset(design.dataset["name"], split=split, progress=progress), model)
        held_in = evaluate(model, images, n_way=len(episode.classes), n_shot=int(design.episode["n_shot"]),
                           n_query=n_query, episodes=n_episodes, seed=seed, classes=list(episode.classes),
                           progress=progress)
        calibration = calibrate(held_in.predictions, float(cfg["alpha"]),
                                calibration_data=f"{images.name} {split} split, {n_episodes} episodes (seed {seed})")
    except (DataError, EpisodeError) as exc:
        raise StudyDesignError(f"conformal: the prediction sets cannot be calibrated on the {split} split ({exc}); "
                               "set conformal.split, conformal.episodes or conformal.n_query") from None
    return calibration, {"split": split, "episodes": n_episodes, "n_query": n_query, "seed": seed}


def prediction_sets(calibration: ConformalCalibration, probabilities: np.ndarray,
                    classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per case: its set's classes (most probable first), the set in words and the alpha."""
    from ..conformal import set_text

    probabilities = np.asarray(probabilities, dtype=np.float64)
    members = calibration.in_set(probabilities)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    out = []
    for row, inside in zip(order, members, strict=True):
        names = [classes[int(k)] for k in row if inside[int(k)]]
        out.append({"classes": names, "text": set_text(names), "alpha": calibration.alpha})
    return out


def guard_scores(design: StudyDesign, base: Path, fitted: FittedEpisode, query_images: torch.Tensor
                 ) -> tuple[GuardScores, dict[str, Any]]:
    """The study guard's scores and flags of the cases (with the episode's support as part of what
    the model knows), and the guard's description for the provenance.

    Raises:
        StudyDesignError: the guard file cannot be read, has no reference embeddings beside it, or
            was fitted for another model.
    """
    import torch

    from ..errors import ModelError
    from ..guard import DomainGuard

    given = Path(str((design.guard or {})["file"]))
    path = given if given.is_absolute() else base / given
    try:
        guard = DomainGuard.load(path)
        with torch.no_grad():
            scores = guard.assess_episode(fitted, fitted.embed(query_images))
    except (DataError, ModelError) as exc:
        raise StudyDesignError(f"guard.file {str(given)!r}: {exc}; write one for this model with "
                               "fsl-xai guard --checkpoint ... --save-guard guard.json") from None
    return scores, guard.to_dict()
