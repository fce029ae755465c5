"""How far to trust what the workbench shows: the domain guard's flags, conformal prediction sets and the
validation score of the data on screen.

``state.trust`` (a :class:`Trust`) computes these when the model, the data or the episode protocol
changes, and caches them per model and data; a query click only reads them. The guard and the
held-in evaluation are kept in module caches, so a second workbench on the same model and data
(a test, a benchmark, a re-opened session) reuses them. Where they come from: :mod:`widgets.held_in`.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from fsl_xai.conformal import ConformalCalibration, add_prediction_sets, calibrate, set_text
from fsl_xai.embeddings import embed_all, embedding_fingerprint
from fsl_xai.errors import DataError, FslXaiError
from fsl_xai.evaluation import accuracy_interval, evaluate
from fsl_xai.guard import DomainGuard, GuardScores
from fsl_xai.intervals import Interval
from fsl_xai.training import torch_threads
from fsl_xai.training.validation import VALIDATION_SEED_OFFSET

from . import held_in
from .figures import rate_text

if TYPE_CHECKING:
    from fsl_xai.models import FittedEpisode

    from .state import WorkbenchState

#: held-in episodes behind the validation score and the calibration of the prediction sets
HELD_IN_EPISODES = 100
#: the prediction sets' default miss rate: sets hold the true class 90% of the time
DEFAULT_ALPHA = 0.1
#: what a flagged query's explanation is (the heatmap banner, exports)
NOT_FIT = "the explanation explains a prediction the model is not fit to make"
#: model x data entries kept in each cache
CACHE_SIZE = 8

_GUARDS: OrderedDict[tuple, tuple[DomainGuard | None, str]] = OrderedDict()
_HELD_IN: OrderedDict[tuple, tuple[pd.DataFrame | None, str, tuple[int, int, int]]] = OrderedDict()


def _remember(cache: OrderedDict, key: tuple, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return value


@dataclass(frozen=True)
class HeldInScore:
    """Accuracy on held-in episodes of the data on screen (its validation score).

    Attributes:
        accuracy: pooled accuracy with its interval (a cluster bootstrap over episodes).
        n_correct, n_queries, n_episodes: what it counts.
        n_flagged: held-in queries the domain guard flags (None without a guard).
        where: what the episodes were drawn from; shape: (n_way, n_shot, n_query).
        classes: the classes drawn from.
    """

    accuracy: Interval
    n_correct: int
    n_queries: int
    n_episodes: int
    n_flagged: int | None
    where: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]

    def text(self) -> str:
        way, shot, query = self.shape
        return (f"{rate_text(self.n_correct, self.n_queries, 'validation accuracy', self.accuracy, self.n_flagged)}"
                f", measured on {self.where}: {self.n_episodes} episodes, {way}-way {shot}-shot, {query} "
                f"quer{'ies' if query != 1 else 'y'} per class, classes {', '.join(self.classes)}")


class Trust:
    """The guard, the validation score and the prediction sets of one WorkbenchState.

    Attributes:
        guard: the domain guard for the loaded model (None when none could be fitted: ``guard_note``).
        guard_text: what the guard was fitted on.
        validation: the held-in score of the data on screen (None: ``validation_note`` says why).
        calibration: the conformal calibration at ``alpha`` (None: ``sets_note`` says why).
    """

    def __init__(self, state: WorkbenchState):
        self.state = state
        self.alpha = DEFAULT_ALPHA
        self.guard: DomainGuard | None = None
        self.guard_text = ""
        self.guard_note = ""
        self.validation: HeldInScore | None = None
        self.validation_note = ""
        self.calibration: ConformalCalibration | None = None
        self.sets_note = ""
        self._held_in: pd.DataFrame | None = None
        self._held_in_where = ""
        self._protocol: tuple | None = None

    # ------------------------------------------------------------------ when the model or data change
    def _model_key(self) -> tuple:
        s = self.state
        images, model, table = s.loaded()
        # the image shape too: the same weights on another image size give embeddings of another size
        return (table.key[0] if table.key else embedding_fingerprint(model), s.dataset_name, s.split,
                held_in.training_sources(s.model_info), images.n_channels, images.image_size)

    def prepare_model(self) -> None:
        """Fit (or fetch) the domain guard of the loaded model; on failure ``guard_note`` says why."""
        s = self.state
        _, model, _ = s.loaded()
        key = self._model_key()
        if key not in _GUARDS:
            try:
                data = held_in.guard_data(s.model_info, model, s.dataset_name, s.split)
                # embedded once per machine (the embedding cache on disk), then read back
                fitted = DomainGuard.fit(embed_all(model, data.reference, disk_cache=True),
                                         embed_all(model, data.calibration, disk_cache=True),
                                         embedding_fingerprint=key[0],
                                         reference_data=data.description, calibration_data=data.description)
                _remember(_GUARDS, key, (fitted, data.description))
            except FslXaiError as exc:
                _remember(_GUARDS, key, (None, str(exc)))
        guard, text = _GUARDS[key]
        self.guard = guard
        self.guard_text, self.guard_note = (text, "") if guard is not None else ("", text)
        self._protocol = None  # the held-in evaluation counts flags with this guard

    # ------------------------------------------------------------------ when the episode protocol changes
    def prepare_protocol(self) -> None:
        """Evaluate held-in episodes for the protocol on screen (cached): the validation score and
        the prediction sets' calibration."""
        s = self.state
        images, model, _ = s.loaded()
        classes = tuple(s.episode_classes) or tuple(images.class_names)
        n_way = min(s.n_way, len(classes))
        # not keyed on the images on screen: images appended to them (an import) need no new episodes
        protocol = (*self._model_key(), classes, n_way, s.n_shot, s.n_query,
                    self.guard.threshold if self.guard is not None else None, HELD_IN_EPISODES)
        if protocol == self._protocol:
            return
        if protocol not in _HELD_IN:
            _remember(_HELD_IN, protocol, self._evaluate_held_in(classes, n_way))
        table, where, shape = _HELD_IN[protocol]
        self._protocol, self._held_in, self._held_in_where = protocol, table, where
        if table is None:
            self.validation, self.validation_note = None, where
            self.calibration, self.sets_note = None, f"no prediction sets: {where}"
            return
        flags = int(table["ood_flag"].sum()) if "ood_flag" in table.columns else None
        self.validation = HeldInScore(
            accuracy=accuracy_interval(table), n_correct=int(table["correct"].sum()), n_queries=len(table),
            n_episodes=int(table["episode"].nunique()), n_flagged=flags, where=where, shape=shape, classes=classes)
        self.validation_note = ""
        self.recalibrate(self.alpha)

    def _evaluate_held_in(self, classes: tuple[str, ...], n_way: int
                          ) -> tuple[pd.DataFrame | None, str, tuple[int, int, int]]:
        s = self.state
        images, model, _ = s.loaded()
        n_shot = s.n_shot
        shape = (n_way, n_shot, s.n_query)
        try:
            held, other_split, where = held_in.held_in_images(s.dataset_name, s.split, images, classes, n_shot + 1,
                                                              model)
            counts = held.class_counts()
            n_query = min(s.n_query, min(counts.get(c, 0) for c in classes) - n_shot)
            if n_query < 1:
                raise DataError(f"{where} has too few images of some class for {n_shot}-shot episodes with queries")
            shape = (n_way, n_shot, n_query)
            embed_all(model, held)  # batched convolutions: with every thread torch has
            with torch_threads(1):
                result = evaluate(model, held, n_way, n_shot, n_query, HELD_IN_EPISODES, seed=VALIDATION_SEED_OFFSET,
                                  classes=list(classes), progress=False, guard=self.guard)
        except FslXaiError as exc:
            return None, f"no held-in episodes of the data on screen ({exc})", shape
        seed_note = "" if other_split else f", seed {VALIDATION_SEED_OFFSET}"
        return result.predictions, f"{where}{seed_note}", shape

    def recalibrate(self, alpha: float) -> None:
        """Calibrate the prediction sets at miss rate ``alpha`` on the cached held-in episodes."""
        self.alpha = float(alpha)
        if self._held_in is None:
            return
        try:
            self.calibration = calibrate(self._held_in, self.alpha, calibration_data=self._held_in_where)
            self.sets_note = ""
        except FslXaiError as exc:
            self.calibration, self.sets_note = None, f"no prediction sets: {exc}"

    # ------------------------------------------------------------------ per shown episode (not per click)
    def assess(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> GuardScores | None:
        """Guard scores of the episode's queries, its support counted as known (None without a guard).
        The guard was fitted for this model's embeddings (its fingerprint is the cache key)."""
        if self.guard is None:
            return None
        with torch_threads(1):  # small products: see fsl_xai.training.torch_threads
            return self.guard.assess(query_embeddings, fitted.support_embeddings_)

    def prediction_sets(self, logits: np.ndarray, classes: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray] | None:
        """(pred_set strings "a|b", set sizes) of an episode's queries from their (n, n_way) logits."""
        if self.calibration is None:
            return None
        table = pd.DataFrame(-np.asarray(logits, dtype=np.float64), columns=[f"dist_{c}" for c in classes])
        try:
            sets = add_prediction_sets(table, self.calibration)
        except DataError as exc:
            self.sets_note = f"no prediction sets: {exc}"
            return None
        return tuple(sets["pred_set"]), sets["set_size"].to_numpy()

    # ------------------------------------------------------------------ texts
    def sets_caption(self) -> str:
        """What the prediction sets are, for the gallery."""
        c = self.calibration
        if c is None:
            return self.sets_note
        return (f"prediction sets hold the true class {1 - c.alpha:.0%} of the time (conformal, alpha {c.alpha:g}, "
                f"calibrated on {c.n_episodes} held-in episodes: {c.calibration_data})")


def set_words(pred_set: str | None) -> str:
    """A prediction set in words ("lymphocyte or monocyte"), '' for none."""
    return set_text(pred_set) if pred_set else ""


def header_lines(state: WorkbenchState) -> list[str]:
    """HTML lines for the page header: the validation score of the data on screen (with n, interval
    and what it was measured on), the domain guard (what it was fitted on, or why there is none),
    and this episode's accuracy with its flagged queries. (Which episode classes the model saw in
    training is ``widgets.session.classes_note``.)"""
    t = state.trust
    lines = []
    if t.validation is not None:
        lines.append(html.escape(t.validation.text()))
    elif t.validation_note:
        lines.append(f"<span style='color:#a60'>no validation score for the data on screen: "
                     f"{html.escape(t.validation_note)}</span>")
    if t.guard is not None:
        lines.append(html.escape(f"domain guard (k={t.guard.k}, threshold {t.guard.threshold:.3f}, the "
                                 f"{t.guard.quantile:.0%} quantile of held-in images) fitted on {t.guard_text}"))
    elif t.guard_note:
        lines.append(f"<span style='color:#a60'>{html.escape(t.guard_note)}</span>")
    r = state.result
    if r is not None:
        lines.append("this episode: " + html.escape(episode_accuracy_text(r)))
    return lines


def episode_accuracy_text(result: Any) -> str:
    """'accuracy 94.0% (n=16, 95% CI …; 1 flagged out-of-distribution)' for the shown episode."""
    known = result.true >= 0
    return rate_text(int(result.correct[known].sum()), int(known.sum()), flagged=result.n_flagged)
