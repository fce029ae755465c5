"""WorkbenchState: the one plain-Python object every view is built from.

It holds what the user chose (dataset, model, episode, selected query, explanation settings), the
trained model with the current :class:`~fsl_xai.models.FittedEpisode`, and caches: the image set's
shared embedding table (:mod:`fsl_xai.embeddings`), the 2D map (:mod:`fsl_xai.projection`) and,
in ``state.explanations``, attribution maps and badges. Every support-set edit swaps in a new
fitted episode (``fitted.add_to_class`` for an added image, ``model.fit_embeddings`` from cached
embeddings for a swap or removal); the model is never changed, so nothing is restored after an
explanation, a quality check or an evaluation. The state holds no widgets: tests and benchmarks
drive it directly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, HasTraits, Instance, Int, List, Unicode, observe

from fsl_xai.data.imageset import ImageSet
from fsl_xai.embeddings import EmbeddingTable, embedding_table, images_for_model
from fsl_xai.episodes import Episode, EpisodeSampler
from fsl_xai.errors import DataError, EpisodeError, FslXaiError
from fsl_xai.evaluation import evaluate, margins
from fsl_xai.models import FewShotClassifier, FittedEpisode
from fsl_xai.projection import Projection

from . import support_edits as edits
from .episode_result import EpisodeResult
from .explanations import ExpectedEdit, Explanations
from .session import novel_classes, open_dataset, restore_state, write_state
from .trust import DEFAULT_ALPHA, Trust


class WorkbenchState(HasTraits):
    """Everything the workbench shows, in one object. Views observe its traits.

    Traits: dataset_name, model_name, images, model, fitted (the current fitted episode), model_info,
    episode, seed, n_way, n_shot, n_query, query_index (-1: none), methods (1-4 shown side by side),
    params (per method), target ("predicted", "true" or an episode label), contrast (None,
    "runner_up" or an episode label), projection, result (EpisodeResult), error (the last error
    message, shown inline), status, busy, predictions (the many-episode table of the failure
    explorer), focus (a subgroup filter set by the dashboard), alpha (the prediction sets' miss rate).

    ``state.trust`` holds the domain guard, the validation score of the data on screen and the
    conformal calibration: computed when the model, the data or the episode protocol change,
    never on a query click; in a kernel, after the first episode is shown (the views say
    "checking…" until then; saving, exporting and the many-episode table wait for them), and kept
    in the cache folder for the next page load (see ``widgets.trust``).
    """

    dataset_name = Unicode("")
    split = Unicode("test")
    model_name = Unicode("protonet")
    images = Instance(ImageSet, allow_none=True)
    model = Instance(FewShotClassifier, allow_none=True)
    fitted = Instance(FittedEpisode, allow_none=True)
    model_info = AnyTrait(None)
    fingerprint = Unicode("")  # of the model's weights
    episode = Instance(Episode, allow_none=True)
    seed = Int(0)
    n_way = Int(5)
    n_shot = Int(5)
    n_query = Int(5)
    episode_classes = List(Unicode())
    query_index = Int(-1)
    methods = List(Unicode(), default_value=["gradcam"])
    # interactive defaults: Gauss-Legendre IG converges with few steps (the viewer's slider raises them)
    params = Dict(default_value={"integrated_gradients": {"n_steps": 20}})
    target = AnyTrait("predicted")
    contrast = AnyTrait(None)
    projection = Unicode("pca")
    result = Instance(EpisodeResult, allow_none=True)
    error = Unicode("")
    status = Unicode("")
    busy = Bool(False)
    predictions = Instance(pd.DataFrame, allow_none=True)
    predictions_config = Dict()
    focus = Dict()
    alpha = Float(DEFAULT_ALPHA)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.embedding_table: EmbeddingTable | None = None
        self.explanations = Explanations(self)
        self.trust = Trust(self)
        #: compute the guard and the held-in evaluation after the first episode is shown when an event
        #: loop runs (a kernel); False computes them before it, as scripts and tests always do
        self.defer_trust = True
        self.timings: dict[str, float] = {}
        self._proj: Projection | None = None
        self._query_idx = np.zeros(0, dtype=np.int64)

    # ================================================================== loading
    def load(self, dataset_name: str, model_name: str | None = None, split: str = "test", progress: bool = True,
             images: ImageSet | None = None, model: FewShotClassifier | None = None,
             model_info: Any = None) -> WorkbenchState:
        """Open a dataset (by name, or the ImageSet given) and its cached default model (trained on
        first use, or the model given), then draw an episode."""
        self.busy = True
        try:
            imgs, model, model_info = open_dataset(dataset_name, model_name or self.model_name, split, progress, images,
                                                   model, model_info, status=lambda text: setattr(self, "status", text))
            self.embedding_table = embedding_table(model, imgs)  # shared with evaluation and training
            self.explanations.clear()
            with self.hold_trait_notifications():
                self.dataset_name, self.split, self.model_name = dataset_name, split, model_name or self.model_name
                self.model_info, self.model, self.images = model_info, model, imgs
                self.fingerprint = model.fingerprint()
                self.episode_classes = novel_classes(model_info, imgs)
                self.n_way = min(max(self.n_way, 2), len(self.episode_classes))
            self.predictions = None
            self.trust.model_changed()  # the guard is fitted with the first episode (deferred in a kernel)
            self.resample(self.seed)
            self.status = f"{dataset_name}: {len(imgs)} images, {imgs.n_classes} classes"
        finally:
            self.busy = False
        return self

    def loaded(self) -> tuple[ImageSet, FewShotClassifier, EmbeddingTable]:
        """(images, model, embedding table) of the loaded dataset; EpisodeError before ``load``."""
        if self.images is None or self.model is None or self.embedding_table is None:
            raise EpisodeError("no dataset is loaded; call load(...) first")
        return self.images, self.model, self.embedding_table

    def shown(self) -> tuple[ImageSet, Episode, FittedEpisode, EpisodeResult]:
        """(images, episode, fitted episode, result) shown now; EpisodeError before ``load``."""
        if self.images is None or self.episode is None or self.fitted is None or self.result is None:
            raise EpisodeError("no episode is shown; load a dataset first (state.load(...))")
        return self.images, self.episode, self.fitted, self.result

    def embeddings(self, idx: np.ndarray) -> torch.Tensor:
        """Embeddings (len(idx), D) of image-set positions; only images not seen before are embedded."""
        return self.loaded()[2].rows(idx)

    def use_images(self, images: ImageSet) -> None:
        """Switch to an image set that extends the current one (images appended, e.g. imported DICOM),
        keeping the embeddings computed so far."""
        current, model, table = self.loaded()
        if list(images.sample_ids[: len(current)]) != list(current.sample_ids):
            raise EpisodeError("the new image set must start with the current images; append images to it")
        images = images_for_model(images, model)
        self.embedding_table = table.extended(images)
        self.images = images

    # ================================================================== episodes
    def resample(self, seed: int | None = None) -> None:
        """Draw a fresh episode with this seed (default: the next seed) and refit the projection."""
        self._guard(self._resample, self.seed + 1 if seed is None else seed)

    def _resample(self, seed: int) -> None:
        sampler = EpisodeSampler(self.loaded()[0], self.n_way, self.n_shot, self.n_query,
                                 classes=list(self.episode_classes) or None, seed=seed)
        with self.hold_trait_notifications():
            self.seed = seed
            self.set_episode(sampler.sample(0), refit_projection=True)

    def set_episode(self, episode: Episode, refit_projection: bool = True, query_index: int = 0) -> None:
        """Show this episode (checked against the image set); the query selection is reset."""
        images, model, _ = self.loaded()
        # cached per model, data and protocol (in memory and on disk); in a kernel, what is not cached
        # is computed after this episode is shown, and the views say "checking…" until then
        self.trust.prepare(defer=self.defer_trust, on_ready=self._trust_ready)
        unknown = [c for c in episode.classes if c not in images.class_names]
        if unknown:
            raise EpisodeError(f"the episode's classes {unknown} are not in {images.name}; "
                               "load the dataset it came from")
        support = episode.support_indices(images)
        fitted = model.fit_embeddings(self.embeddings(support), torch.tensor(episode.support_labels))
        if refit_projection or self._proj is None or self._proj.method != self.projection:
            self._proj = Projection(self.projection, seed=self.seed)
            self._proj.fit(self.embeddings(np.concatenate([support, episode.query_indices(images)])).numpy())
        self._show(episode, fitted, keep_map=not refit_projection, query_index=query_index)

    def _show(self, episode: Episode, fitted: FittedEpisode, keep_map: bool, query_index: int) -> None:
        """Score the queries of ``episode`` with ``fitted`` and publish the result (one refresh)."""
        t0 = time.perf_counter()
        images, proj = self.loaded()[0], self._proj
        assert proj is not None  # fitted by set_episode before any episode is shown
        query = episode.query_indices(images)
        s_emb, q_emb = self.embeddings(episode.support_indices(images)), self.embeddings(query)
        with torch.no_grad():  # all queries together: a transductive model refines with them
            logits = fitted.logits_from_embeddings(q_emb).numpy().astype(np.float64)
        s_xy, q_xy, p_xy = proj.transform_groups(s_emb.numpy(), q_emb.numpy(), fitted.prototypes_.numpy())
        sets = self.trust.prediction_sets(logits, episode.classes)
        result = EpisodeResult(
            episode_id=episode.episode_id, classes=episode.classes, logits=logits, pred=logits.argmax(1),
            true=np.asarray(episode.query_labels), margin=margins(logits),
            support_labels=np.asarray(episode.support_labels), support_xy=s_xy, query_xy=q_xy, proto_xy=p_xy,
            prev_proto_xy=self.result.proto_xy if keep_map and self.result is not None else None,
            projection=proj.method, guard=self.trust.assess(fitted, q_emb),
            pred_sets=None if sets is None else sets[0], set_size=None if sets is None else sets[1],
            alpha=None if sets is None else self.trust.alpha)
        with self.hold_trait_notifications():
            self._query_idx = query
            self.episode, self.fitted, self.result = episode, fitted, result
            self.query_index = min(max(query_index, 0), len(query) - 1)
            self.error = ""
        self.timings["refresh"] = time.perf_counter() - t0

    def _trust_ready(self) -> None:
        """The deferred guard and held-in evaluation are done: republish the episode on screen with
        the guard's flags and the prediction sets (the views update in place)."""
        def run() -> None:
            r, fitted = self.result, self.fitted
            if r is None or fitted is None or self.episode is None:
                return
            sets = self.trust.prediction_sets(r.logits, r.classes)
            self.result = dataclasses.replace(
                r, guard=self.trust.assess(fitted, self.embeddings(self._query_idx)),
                pred_sets=None if sets is None else sets[0], set_size=None if sets is None else sets[1],
                alpha=None if sets is None else self.trust.alpha)
        self._guard(run)

    def finish_trust(self) -> None:
        """Wait for the domain guard and the held-in evaluation (deferred after the first paint in a
        kernel): they are computed now if they are still pending, and the episode is republished."""
        self.trust.finish()

    @observe("alpha")
    def _on_alpha(self, change: Any) -> None:
        """Recalibrate the prediction sets (cached held-in episodes) and republish the sets."""
        def run() -> None:
            self.trust.recalibrate(change["new"])
            r = self.result
            if r is None or self.episode is None:
                return
            sets = self.trust.prediction_sets(r.logits, r.classes)
            self.result = dataclasses.replace(r, pred_sets=None if sets is None else sets[0],
                                              set_size=None if sets is None else sets[1],
                                              alpha=None if sets is None else self.trust.alpha)
        self._guard(run)

    def set_projection(self, method: str) -> None:
        """Switch the embedding map between 'pca' and 'tsne' (refits it)."""
        def run() -> None:
            self.projection = method
            self.set_episode(self.shown()[1], refit_projection=True, query_index=max(self.query_index, 0))
        self._guard(run)

    # ================================================================== support-set edits
    def _edit(self, episode: Episode, fitted: FittedEpisode | None = None) -> None:
        """Show an edited episode: ``fitted`` when the edit built it incrementally, otherwise a refit
        of the support set from cached embeddings. The 2D map stays, so prototypes visibly move."""
        self._show(episode, self.fit_support(episode) if fitted is None else fitted, keep_map=True,
                   query_index=self.query_index)

    def fit_support(self, episode: Episode) -> FittedEpisode:
        """The fitted episode of ``episode``'s support set, from the cached embeddings."""
        images, model, _ = self.loaded()
        return model.fit_embeddings(self.embeddings(episode.support_indices(images)),
                                    torch.tensor(episode.support_labels))

    def expect_edit(self, position: int | None, sample_id: str | None = None) -> None:
        """Say which support-set edit is prepared on screen: swapping support image ``position`` for
        pool image ``sample_id``, or removing it (no ``sample_id``); None: none. The selected query's
        maps after that edit are then computed while the kernel is idle, so the edit, once made, draws
        them from the cache. An edit that would be refused is not expected (its click says why)."""
        prefetch = self.explanations.prefetch
        if position is None or self.result is None:
            prefetch.expect(None)
            return
        images, ep, _, _ = self.shown()
        try:
            episode = (edits.removed(ep, position) if sample_id is None
                       else edits.swapped(images, ep, position, sample_id))
        except (EpisodeError, DataError):
            prefetch.expect(None)
            return
        prefetch.expect(ExpectedEdit(episode, self.fit_support, self.result))

    def swap_support(self, position: int, sample_id: str) -> None:
        """Replace support image ``position`` with a pool image (same class label)."""
        self._guard(lambda: self._edit(edits.swapped(self.loaded()[0], self.shown()[1], position, sample_id)))

    def remove_support(self, position: int) -> None:
        """Drop one support image (refused when it is the last image of its class)."""
        self._guard(lambda: self._edit(edits.removed(self.shown()[1], position)))

    def add_support(self, sample_id: str, label: int | str) -> None:
        """Add a pool image to the support set as class ``label`` (an episode label or class name);
        the label need not be its true class (to try a mislabelled support image)."""
        def run() -> None:
            images, ep, fitted, _ = self.shown()
            lab = edits.episode_label(ep, label)
            new = edits.with_support_image(images, ep, sample_id, lab)
            self._edit(new, fitted.add_to_class(self.embeddings(images.indices_of([sample_id]))[0], lab))
        self._guard(run)

    def add_query(self, sample_id: str, label: int | str | None = None) -> None:
        """Add an image as a query (its true class ``label``, or unknown) and select it."""
        def run() -> None:
            images, ep, fitted, _ = self.shown()
            lab = -1 if label is None else edits.episode_label(ep, label)
            self._edit(edits.with_query_image(images, ep, sample_id, lab), fitted)
            self.query_index = len(ep.query_ids)
        self._guard(run)

    def confirm_query(self, query_index: int | None = None, label: int | None = None) -> None:
        """Move a query into the support set as a confirmed case of its true class (or ``label``, or the
        predicted class when the truth is unknown), with the incremental prototype update."""
        def run() -> None:
            _, ep, fitted, result = self.shown()
            qi = self.query_index if query_index is None else query_index
            if not 0 <= qi < len(ep.query_ids):
                raise EpisodeError("select a query first")
            lab = ep.query_labels[qi] if label is None else int(label)
            lab = edits.episode_label(ep, int(result.pred[qi]) if lab < 0 else lab)  # unknown truth: the prediction
            query = self.embeddings(self._query_idx[[qi]])[0]
            self._edit(edits.confirmed(ep, qi, lab), fitted.add_to_class(query, lab))
        self._guard(run)

    def pool(self, class_name: str | None = None, **filters: Any) -> pd.DataFrame:
        """Images not in the episode, with class and metadata; ``filters`` match metadata columns
        (``site="A"``, ``sex="female"``); a value of None or "" means any."""
        return edits.pool_table(self.loaded()[0], self.episode, class_name, **filters)

    # ================================================================== queries
    def select_query(self, index: int) -> None:
        if self.episode is None or not 0 <= index < len(self.episode.query_ids):
            self.error = f"query {index} does not exist in this episode"
            return
        self.query_index = index

    def query_image(self, index: int | None = None) -> np.ndarray:
        """(C, H, W) pixels of a query (default: the selected one)."""
        images = self.shown()[0]
        return images.images[self._query_idx[self.query_index if index is None else index]]

    def query_mask(self, index: int | None = None) -> np.ndarray | None:
        """(H, W) lesion mask of a query, None when the image set has no masks."""
        images = self.shown()[0]
        qi = self.query_index if index is None else index
        return None if images.masks is None else images.masks[self._query_idx[qi]]

    def query_table(self) -> pd.DataFrame:
        """One row per query: sample id, true and predicted class, correct, margin, distances."""
        _, episode, _, result = self.shown()
        return result.query_table(episode)

    # ================================================================== many episodes
    def evaluate_many(self, episodes: int = 600, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """The per-query table over many episodes (shared by the failure explorer and subgroup
        dashboard); ``progress(done, total)`` is called after each episode."""
        images, model, _ = self.loaded()
        self.finish_trust()  # the table's flags come from the guard: never a table silently without them
        guard = self.trust.guard
        config = {"episodes": episodes, "n_way": self.n_way, "n_shot": self.n_shot, "n_query": self.n_query,
                  "seed": self.seed, "model": self.fingerprint, "data": images.fingerprint(),
                  "classes": list(self.episode_classes), "guard": None if guard is None else guard.threshold}
        if self.predictions is not None and self.predictions_config == config:
            return self.predictions
        table = evaluate(model, images, self.n_way, self.n_shot, self.n_query, episodes, self.seed,
                         classes=list(self.episode_classes) or None, progress=progress or False,
                         guard=guard).predictions
        with self.hold_trait_notifications():
            self.predictions_config = config
            self.predictions = table
        return table

    def open_case(self, episode_number: int, query_index: int) -> None:
        """Show query ``query_index`` of episode ``episode_number`` of the many-episode evaluation."""
        def run() -> None:
            cfg = self.predictions_config
            sampler = EpisodeSampler(self.loaded()[0], cfg.get("n_way", self.n_way), cfg.get("n_shot", self.n_shot),
                                     cfg.get("n_query", self.n_query), classes=cfg.get("classes") or None,
                                     seed=cfg.get("seed", self.seed))
            self.set_episode(sampler.sample(int(episode_number)), refit_projection=True, query_index=int(query_index))
        self._guard(run)

    # ================================================================== errors, save and restore
    def _guard(self, fn: Callable, *args: Any) -> bool:
        """Run a user action; a library error becomes ``self.error`` (shown inline) instead of raising."""
        try:
            fn(*args)
        except (FslXaiError, ValueError, KeyError, RuntimeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    def save(self, path: str | Path) -> Path:
        """Write the state file (``widgets.session``) that re-opens this view (after the guard and
        the held-in evaluation are ready: an export made right after the page opened waits for them)."""
        self.finish_trust()
        return write_state(self, path)

    def restore(self, data: dict | str | Path, images: ImageSet | None = None, model: FewShotClassifier | None = None,
                model_info: Any = None) -> None:
        """Re-open a saved state (a state file's path or content): see ``widgets.session.restore_state``."""
        restore_state(self, data, images=images, model=model, model_info=model_info)
        self.finish_trust()  # a re-opened view shows its guard and validation score with its episode
