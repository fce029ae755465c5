"""WorkbenchState: the one plain-Python object every view is built from.

It holds the dataset, model, episode, selected query and explanation settings, and caches what is
expensive: embeddings of the image set (each image embedded at most once per model), predictions and
distances of the current episode, and attribution maps keyed by (model fingerprint, episode id,
query, method, params, target, contrast). A support-set edit embeds at most the one new image, refits
the prototypes from cached embeddings and re-scores the queries; the 2D projection stays fitted so
that prototypes visibly move.

The state holds no widgets: tests and benchmarks drive it directly.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import traitlets
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, HasTraits, Instance, Int, List, Unicode

from fsl_xai.data.imageset import ImageSet
from fsl_xai.episodes import Episode, EpisodeSampler
from fsl_xai.errors import DataError, EpisodeError, FslXaiError, ModelError

from . import _backend as backend

STATE_FORMAT = "fsl-xai-workbench/1"
TARGETS = ("predicted", "true")


@dataclass
class EpisodeResult:
    """Predictions of the current episode (all arrays numpy).

    Attributes:
        logits: (n_query, n_way); distances: minus the logits.
        pred, true: (n_query,) episode labels (true is -1 when unknown).
        correct: (n_query,) bool; margin: (n_query,) predicted minus runner-up logit (>= 0).
        support_xy, query_xy: (n, 2) projected embeddings; proto_xy: (n_way, 2) projected prototypes;
        prev_proto_xy: where the prototypes were before the last support edit (None after a resample).
        accuracy, n, ci95: over the queries with a known label.
    """

    episode_id: str
    classes: tuple[str, ...]
    logits: np.ndarray
    pred: np.ndarray
    true: np.ndarray
    margin: np.ndarray
    support_labels: np.ndarray
    support_xy: np.ndarray
    query_xy: np.ndarray
    proto_xy: np.ndarray
    prev_proto_xy: np.ndarray | None
    projection: str

    @property
    def distances(self) -> np.ndarray:
        return -self.logits

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.true

    @property
    def n(self) -> int:
        return int((self.true >= 0).sum())

    @property
    def accuracy(self) -> float:
        known = self.true >= 0
        return float(self.correct[known].mean()) if known.any() else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        known = self.true >= 0
        return backend.wilson(int(self.correct[known].sum()), int(known.sum()))


def _one_blas_thread():
    """numpy's OpenBLAS on one thread for the small projection maths: its idle threads keep
    spinning after a call and then slow torch's next forward pass ~10x on a 2-core machine
    (a support edit right after a PCA fit measured ~110 ms instead of ~10 ms)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # scikit-learn brings it; without it, run as is
            _BLAS = False
        else:
            _BLAS = ThreadpoolController()  # scanning the loaded libraries once, not per call
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


_BLAS = None


class Projection:
    """A 2D map of embeddings that stays fixed between support edits (PCA) or is re-run warm-started
    from the previous layout (t-SNE), so that moving prototypes are visible."""

    def __init__(self, method: str = "pca", seed: int = 0):
        if method not in ("pca", "tsne"):
            raise ModelError(f"unknown projection {method!r}; choose 'pca' or 'tsne'")
        self.method, self.seed = method, seed
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self._layout: np.ndarray | None = None

    def fit(self, points: np.ndarray) -> "Projection":
        """points: (n, D) embeddings that define the map (support and queries of an episode)."""
        self.mean_ = points.mean(0)
        centred = points - self.mean_
        with _one_blas_thread():
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
        comps = vt[:2]
        # fix the sign so that the same data always gives the same picture
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
        self.components_ = comps * signs[:, None]
        self._layout = None
        return self

    def transform(self, points: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, 2)."""
        if self.method == "pca":
            with _one_blas_thread():
                out = (points - self.mean_) @ self.components_.T
            return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        from sklearn.manifold import TSNE

        init = self._layout if self._layout is not None and len(self._layout) == len(points) else "pca"
        perplexity = float(min(30, max(2, (len(points) - 1) / 3)))
        self._layout = TSNE(2, perplexity=perplexity, init=init, random_state=self.seed,
                            max_iter=250 if isinstance(init, str) else 250).fit_transform(points)
        return self._layout


class WorkbenchState(HasTraits):
    """Everything the workbench shows, in one object. Views observe its traits.

    Traits: dataset_name, model_name, images, model, model_info, episode, seed, n_way, n_shot, n_query,
    query_index (-1: none), methods (1-4 shown side by side), params (per method), target ("predicted",
    "true" or an episode label), contrast (None, "runner_up" or an episode label), projection, result
    (EpisodeResult), error (the last error message, shown inline), status, busy, predictions (the
    many-episode table of the failure explorer), focus (a subgroup filter set by the dashboard).
    """

    dataset_name = Unicode("")
    split = Unicode("test")
    model_name = Unicode("protonet")
    images = Instance(ImageSet, allow_none=True)
    model = Instance(torch.nn.Module, allow_none=True)
    model_info = AnyTrait(None)
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._emb: torch.Tensor | None = None
        self._have: np.ndarray | None = None
        self._fingerprint: str | None = None
        self._proj: Projection | None = None
        self._attr_cache: dict[tuple, Any] = {}
        self._badge_cache: dict[tuple, dict] = {}
        self._support_idx = np.zeros(0, dtype=np.int64)
        self._query_idx = np.zeros(0, dtype=np.int64)
        self.timings: dict[str, float] = {}

    # ================================================================== loading
    def load(self, dataset_name: str, model_name: str | None = None, split: str = "test",
             progress: bool = True, images: ImageSet | None = None, model=None, model_info=None) -> "WorkbenchState":
        """Open a dataset (by name, or the ImageSet given) and its cached default model, then draw an episode."""
        self.busy = True
        try:
            self.status = f"loading {dataset_name} ..."
            imgs = images if images is not None else backend.load_images(dataset_name, split=split, progress=progress)
            if model is None:
                self.status = f"loading the {model_name or self.model_name} model for {dataset_name} (trained on first use) ..."
                model, model_info = backend.load_model(dataset_name, imgs, model_name or self.model_name,
                                                       progress=progress)
            model.eval()
            imgs = backend.check_channels(imgs, model)
            with self.hold_trait_notifications():
                self.dataset_name, self.split = dataset_name, split
                if model_name:
                    self.model_name = model_name
                self.model_info = model_info
                self.model = model
                self.images = imgs
                self.episode_classes = backend.novel_classes(model_info, imgs)
                self.n_way = min(max(self.n_way, 2), len(self.episode_classes))
            self._reset_caches()
            self.predictions = None
            self.resample(self.seed)
            self.status = f"{dataset_name}: {len(imgs)} images, {imgs.n_classes} classes"
        finally:
            self.busy = False
        return self

    def _reset_caches(self) -> None:
        n = len(self.images) if self.images is not None else 0
        self._emb, self._have = None, np.zeros(n, dtype=bool)
        self._fingerprint = None
        self._attr_cache.clear()
        self._badge_cache.clear()

    @property
    def fingerprint(self) -> str:
        """The model's fingerprint (computed once per model)."""
        if self._fingerprint is None:
            self._fingerprint = self.model.fingerprint() if self.model is not None else ""
        return self._fingerprint

    def embeddings(self, idx: np.ndarray) -> torch.Tensor:
        """Embeddings (len(idx), D) of image-set positions, embedding only those not seen before."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._have is None or len(self._have) != len(self.images):
            self._have = np.zeros(len(self.images), dtype=bool)
            self._emb = None
        missing = np.unique(idx[~self._have[idx]])
        if len(missing):
            with torch.no_grad():
                new = self.model.embed(torch.from_numpy(self.images.images[missing])).float()
            if self._emb is None:
                self._emb = torch.zeros(len(self.images), new.shape[1])
            self._emb[missing] = new
            self._have[missing] = True
        return self._emb[idx]

    # ================================================================== episodes
    def resample(self, seed: int | None = None) -> None:
        """Draw a fresh episode with this seed (default: the next seed) and refit the projection."""
        self._guard(self._resample, self.seed + 1 if seed is None else seed)

    def _resample(self, seed: int) -> None:
        sampler = EpisodeSampler(self.images, self.n_way, self.n_shot, self.n_query,
                                 classes=list(self.episode_classes) or None, seed=seed)
        episode = sampler.sample(0)
        with self.hold_trait_notifications():
            self.seed = seed
            self.set_episode(episode, refit_projection=True)

    def set_episode(self, episode: Episode, refit_projection: bool = True, query_index: int = 0) -> None:
        """Show this episode (checked against the image set); the query selection is reset."""
        t0 = time.perf_counter()
        support = episode.support_indices(self.images)
        query = episode.query_indices(self.images)
        unknown = [c for c in episode.classes if c not in self.images.class_names]
        if unknown:
            raise EpisodeError(f"the episode's classes {unknown} are not in {self.images.name}; load the dataset it came from")
        self._support_idx, self._query_idx = support, query
        if refit_projection or self._proj is None or self._proj.method != self.projection:
            self._proj = Projection(self.projection, seed=self.seed)
            self._proj.fit(self.embeddings(np.concatenate([support, query])).numpy())
        prev = None if refit_projection or self.result is None else self.result.proto_xy
        result = self._compute(episode, prev)
        with self.hold_trait_notifications():
            self.episode = episode
            self.result = result
            self.query_index = min(query_index, len(query) - 1) if len(query) else -1
            self.error = ""
        self.timings["refresh"] = time.perf_counter() - t0

    def _compute(self, episode: Episode, prev_proto_xy: np.ndarray | None) -> EpisodeResult:
        s_emb = self.embeddings(self._support_idx)
        q_emb = self.embeddings(self._query_idx)
        labels = torch.tensor(episode.support_labels)
        self.model.fit_support_embeddings(s_emb, labels)
        return self._score(episode, s_emb, q_emb, prev_proto_xy)

    def _score(self, episode, s_emb, q_emb, prev_proto_xy) -> EpisodeResult:
        with torch.no_grad():
            logits = self.model.logits_from_embeddings(q_emb).numpy().astype(np.float64)
        protos = self.model.prototypes_.numpy()
        ordered = np.sort(logits, axis=1)
        margin = ordered[:, -1] - ordered[:, -2] if logits.shape[1] > 1 else np.zeros(len(logits))
        proj = self._proj
        if proj.method == "pca":
            s_xy, q_xy, p_xy = (proj.transform(s_emb.numpy()), proj.transform(q_emb.numpy()), proj.transform(protos))
        else:
            allxy = proj.transform(np.concatenate([s_emb.numpy(), q_emb.numpy(), protos]))
            s_xy, q_xy, p_xy = np.split(allxy, [len(s_emb), len(s_emb) + len(q_emb)])
        return EpisodeResult(
            episode_id=episode.episode_id, classes=episode.classes, logits=logits, pred=logits.argmax(1),
            true=np.asarray(episode.query_labels), margin=margin,
            support_labels=np.asarray(episode.support_labels), support_xy=s_xy, query_xy=q_xy,
            proto_xy=p_xy, prev_proto_xy=prev_proto_xy, projection=proj.method)

    def set_projection(self, method: str) -> None:
        """Switch the embedding map between 'pca' and 't-SNE' (refits it)."""
        def run():
            self.projection = method
            self.set_episode(self.episode, refit_projection=True, query_index=max(self.query_index, 0))
        self._guard(run)

    # ================================================================== support-set edits
    def _edit(self, support_ids: list[str], support_labels: list[int], query_ids=None, query_labels=None,
              model_update: Callable[[], None] | None = None) -> None:
        ep = self.episode.with_support(support_ids, support_labels)
        if query_ids is not None:
            if not query_ids:
                raise EpisodeError("this would leave the episode without queries; keep at least one query")
            ep = ep.with_queries(query_ids, query_labels)
        keep_query = self.query_index
        t0 = time.perf_counter()
        self._support_idx = ep.support_indices(self.images)
        self._query_idx = ep.query_indices(self.images)
        if model_update is not None:
            model_update()
            result = self._score(ep, self.model.support_embeddings_, self.embeddings(self._query_idx),
                                 self.result.proto_xy)
        else:
            result = self._compute(ep, self.result.proto_xy)
        with self.hold_trait_notifications():
            self.episode, self.result = ep, result
            self.query_index = min(max(keep_query, 0), len(ep.query_ids) - 1)
            self.error = ""
        self.timings["refresh"] = time.perf_counter() - t0

    def swap_support(self, position: int, sample_id: str) -> None:
        """Replace support image ``position`` with a pool image (same class label)."""
        def run():
            self._check_pool_id(sample_id)
            ids, labels = list(self.episode.support_ids), list(self.episode.support_labels)
            if not 0 <= position < len(ids):
                raise EpisodeError(f"support position {position} does not exist (0..{len(ids) - 1})")
            ids[position] = sample_id
            self._edit(ids, labels)
        self._guard(run)

    def remove_support(self, position: int) -> None:
        """Drop one support image (refused when it is the last image of its class)."""
        def run():
            ids, labels = list(self.episode.support_ids), list(self.episode.support_labels)
            if not 0 <= position < len(ids):
                raise EpisodeError(f"support position {position} does not exist (0..{len(ids) - 1})")
            label = labels[position]
            if labels.count(label) == 1:
                raise EpisodeError(f"class {self.episode.classes[label]!r} has only this support image; "
                                   "add another image of the class before removing it")
            del ids[position], labels[position]
            self._edit(ids, labels)
        self._guard(run)

    def add_support(self, sample_id: str, label: int | str) -> None:
        """Add a pool image to the support set as class ``label`` (an episode label or class name);
        the label need not be its true class (to try a mislabelled support image)."""
        def run():
            self._check_pool_id(sample_id)
            lab = self._episode_label(label)
            self._edit(list(self.episode.support_ids) + [sample_id], list(self.episode.support_labels) + [lab])
        self._guard(run)

    def add_query(self, sample_id: str, label: int | str | None = None) -> None:
        """Add an image as a query (its true class ``label``, or unknown) and select it."""
        def run():
            self._check_pool_id(sample_id)
            lab = -1 if label is None else self._episode_label(label)
            self._edit(list(self.episode.support_ids), list(self.episode.support_labels),
                       list(self.episode.query_ids) + [sample_id], list(self.episode.query_labels) + [lab])
            self.query_index = len(self.episode.query_ids) - 1
        self._guard(run)

    def confirm_query(self, query_index: int | None = None, label: int | None = None) -> None:
        """Move a query into the support set as a confirmed case of its true class (or ``label``, or the
        predicted class when the truth is unknown), with the incremental prototype update."""
        def run():
            qi = self.query_index if query_index is None else query_index
            if not 0 <= qi < len(self.episode.query_ids):
                raise EpisodeError("select a query first")
            lab = label if label is not None else self.episode.query_labels[qi]
            if lab < 0:
                lab = int(self.result.pred[qi])
            qid = self.episode.query_ids[qi]
            emb = self.embeddings(self._query_idx[[qi]])[0]
            q_ids = [q for i, q in enumerate(self.episode.query_ids) if i != qi]
            q_labels = [y for i, y in enumerate(self.episode.query_labels) if i != qi]
            update = None
            if hasattr(self.model, "add_to_class"):
                def update():
                    try:
                        self.model.add_to_class(emb, int(lab))
                    except (ModelError, NotImplementedError):
                        labels = torch.cat([self.model.support_labels_, torch.tensor([int(lab)])])
                        self.model.fit_support_embeddings(torch.cat([self.model.support_embeddings_, emb[None]]), labels)
            self._edit(list(self.episode.support_ids) + [qid], list(self.episode.support_labels) + [int(lab)],
                       q_ids, q_labels, model_update=update)
        self._guard(run)

    def _episode_label(self, label: int | str) -> int:
        if isinstance(label, str):
            if label not in self.episode.classes:
                raise EpisodeError(f"class {label!r} is not in this episode ({list(self.episode.classes)})")
            return self.episode.classes.index(label)
        if not 0 <= int(label) < self.episode.n_way:
            raise EpisodeError(f"label {label} is not an episode label (0..{self.episode.n_way - 1})")
        return int(label)

    def _check_pool_id(self, sample_id: str) -> None:
        if sample_id in self.episode.support_ids:
            raise EpisodeError(f"{sample_id} is already in the support set")
        if sample_id in self.episode.query_ids:
            raise EpisodeError(f"{sample_id} is a query of this episode; a query cannot also be a support image "
                               "(use 'add query as confirmed case' instead)")
        self.images.indices_of([sample_id])

    def pool(self, class_name: str | None = None, **filters) -> pd.DataFrame:
        """Images not in the episode, with class and metadata; ``filters`` match metadata columns
        (``site="A"``, ``sex="female"``); a value of None or "" means any."""
        meta = self.images.metadata.copy()
        meta.insert(1, "class", np.asarray(self.images.class_names)[self.images.labels])
        used = set(self.episode.support_ids) | set(self.episode.query_ids) if self.episode else set()
        mask = ~meta["sample_id"].isin(used)
        if class_name:
            mask &= meta["class"] == class_name
        for column, value in filters.items():
            if value is None or value == "":
                continue
            if column not in meta.columns:
                raise DataError(f"no metadata column {column!r}; columns: {list(meta.columns)}")
            mask &= meta[column].astype(str) == str(value)
        return meta[mask.to_numpy()].reset_index(drop=True)

    # ================================================================== queries and explanations
    def select_query(self, index: int) -> None:
        if self.episode is None or not 0 <= index < len(self.episode.query_ids):
            self.error = f"query {index} does not exist in this episode"
            return
        self.query_index = index

    def query_image(self, index: int | None = None) -> np.ndarray:
        """(C, H, W) pixels of a query."""
        qi = self.query_index if index is None else index
        return self.images.images[self._query_idx[qi]]

    def query_mask(self, index: int | None = None) -> np.ndarray | None:
        qi = self.query_index if index is None else index
        return None if self.images.masks is None else self.images.masks[self._query_idx[qi]]

    def support_image(self, position: int) -> np.ndarray:
        return self.images.images[self._support_idx[position]]

    def _target_arg(self, target=None, contrast=None, query_index: int | None = None):
        target = self.target if target is None else target
        contrast = self.contrast if contrast is None else contrast
        qi = self.query_index if query_index is None else query_index
        if target == "true":
            target = self.episode.query_labels[qi]
            if target < 0:
                raise EpisodeError("this query's true class is unknown; explain the predicted class instead")
        if isinstance(contrast, str) and contrast not in ("runner_up",):
            contrast = self._episode_label(contrast)
        if isinstance(target, str) and target != "predicted":
            target = self._episode_label(target)
        if contrast == "none":
            contrast = None
        return target, contrast

    def attribution(self, method: str, query_index: int | None = None, target=None, contrast=None,
                    params: dict | None = None):
        """The attribution map of one query (cached); raises on a failing method."""
        qi = self.query_index if query_index is None else query_index
        if qi < 0:
            raise EpisodeError("select a query first")
        target, contrast = self._target_arg(target, contrast, qi)
        p = dict(self.params.get(method, {}) if params is None else params)
        key = (self.fingerprint, self.result.episode_id, qi, method, json.dumps(p, sort_keys=True, default=str),
               str(target), str(contrast))
        if key not in self._attr_cache:
            t0 = time.perf_counter()
            x = torch.from_numpy(self.query_image(qi)[None].copy())
            amap = backend.explain(self.model, x, method, target=target, contrast=contrast, seed=self.seed,
                                   episode_id=self.result.episode_id, **p)
            self._attr_cache[key] = amap
            self.timings[f"explain:{method}"] = time.perf_counter() - t0
        return self._attr_cache[key]

    def badges(self, method: str, query_index: int | None = None) -> dict:
        """Quality badges of the map shown for ``method`` (cached)."""
        qi = self.query_index if query_index is None else query_index
        target, contrast = self._target_arg(None, None, qi)
        p = dict(self.params.get(method, {}))
        key = (self.fingerprint, self.result.episode_id, qi, method, json.dumps(p, sort_keys=True, default=str),
               str(target), str(contrast))
        if key not in self._badge_cache:
            amap = self.attribution(method, qi)
            x = torch.from_numpy(self.query_image(qi)[None].copy())
            mask = self.query_mask(qi)
            s_img = torch.from_numpy(self.images.images[self._support_idx])
            s_lab = torch.tensor(self.episode.support_labels)
            self._badge_cache[key] = backend.quality_badges(
                self.model, x, amap, method, s_img, s_lab, mask=mask, target=target, contrast=contrast,
                seed=self.seed, **p)
            # the quality checks may refit or re-run the model; keep the episode's prototypes
            self.model.fit_support_embeddings(self.embeddings(self._support_idx), s_lab)
        return self._badge_cache[key]

    def influence(self, query_index: int | None = None) -> pd.DataFrame:
        """Support images ranked by their influence on this query's decision (sample_id, class, influence)."""
        qi = self.query_index if query_index is None else query_index
        s_emb = self.embeddings(self._support_idx)
        q_emb = self.embeddings(self._query_idx[[qi]])[0]
        table = backend.support_influence(self.model, s_emb, torch.tensor(self.episode.support_labels), q_emb).copy()
        ep = self.episode
        pos = table["support_index"].to_numpy() if "support_index" in table.columns else np.arange(len(table))
        table["position"] = pos
        table["sample_id"] = [ep.support_ids[i] for i in pos]
        table["class"] = [ep.classes[ep.support_labels[i]] for i in pos]
        order = np.lexsort((-table["influence"].abs().fillna(-1).to_numpy(), table["influence"].isna().to_numpy()))
        return table.iloc[order].reset_index(drop=True)

    def nearest_support(self, query_index: int | None = None, k: int = 5) -> pd.DataFrame:
        """The k support images closest to the query in embedding space."""
        qi = self.query_index if query_index is None else query_index
        s_emb = self.embeddings(self._support_idx)
        q_emb = self.embeddings(self._query_idx[[qi]])
        dist = torch.cdist(q_emb, s_emb)[0].numpy()
        order = np.argsort(dist)[:k]
        return pd.DataFrame({"position": order, "sample_id": [self.episode.support_ids[i] for i in order],
                             "class": [self.episode.classes[self.episode.support_labels[i]] for i in order],
                             "distance": dist[order]})

    def query_table(self) -> pd.DataFrame:
        """One row per query: sample id, true and predicted class, correct, margin, distances."""
        r, ep = self.result, self.episode
        table = pd.DataFrame({
            "query_index": np.arange(ep.n_query), "sample_id": list(ep.query_ids),
            "true_class": [ep.classes[y] if y >= 0 else "?" for y in ep.query_labels],
            "pred_class": [ep.classes[y] for y in r.pred], "correct": r.correct, "margin": r.margin})
        for i, c in enumerate(ep.classes):
            table[f"dist_{c}"] = r.distances[:, i]
        return table

    def metadata_of(self, sample_id: str) -> dict:
        row = self.images.metadata.iloc[int(self.images.indices_of([sample_id])[0])]
        return {k: v for k, v in row.items() if k != "sample_id"}

    # ================================================================== many episodes
    def evaluate_many(self, episodes: int = 600, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """The per-query table over many episodes (shared by the failure explorer and subgroup dashboard)."""
        config = {"episodes": episodes, "n_way": self.n_way, "n_shot": self.n_shot, "n_query": self.n_query,
                  "seed": self.seed, "model": self.fingerprint, "data": self.images.fingerprint(),
                  "classes": list(self.episode_classes)}
        if self.predictions is not None and self.predictions_config == config:
            return self.predictions
        table = backend.evaluate(self.model, self.images, self.n_way, self.n_shot, self.n_query, episodes,
                                 self.seed, classes=list(self.episode_classes) or None, progress=progress)
        # evaluation refits the model on other support sets; restore the current episode
        self.model.fit_support_embeddings(self.embeddings(self._support_idx), torch.tensor(self.episode.support_labels))
        with self.hold_trait_notifications():
            self.predictions_config = config
            self.predictions = table
        return table

    def open_case(self, episode_number: int, query_index: int) -> None:
        """Show query ``query_index`` of episode ``episode_number`` of the many-episode evaluation."""
        def run():
            cfg = self.predictions_config
            sampler = EpisodeSampler(self.images, cfg.get("n_way", self.n_way), cfg.get("n_shot", self.n_shot),
                                     cfg.get("n_query", self.n_query), classes=cfg.get("classes") or None,
                                     seed=cfg.get("seed", self.seed))
            episode = sampler.sample(int(episode_number))
            self.set_episode(episode, refit_projection=True, query_index=int(query_index))
        self._guard(run)

    # ================================================================== errors
    def _guard(self, fn: Callable, *args) -> bool:
        """Run a user action; a library error becomes ``self.error`` (shown inline) instead of raising."""
        try:
            fn(*args)
        except (FslXaiError, ValueError, KeyError, RuntimeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    # ================================================================== save / restore
    def to_dict(self) -> dict:
        """What re-opens the same view: dataset, model fingerprint, episode JSON, query and explanation settings."""
        return {
            "format": STATE_FORMAT, "dataset": self.dataset_name, "split": self.split,
            "model": self.model_name, "model_fingerprint": self.fingerprint,
            "episode": self.episode.to_dict() if self.episode else None,
            "seed": self.seed, "n_way": self.n_way, "n_shot": self.n_shot, "n_query": self.n_query,
            "query_index": self.query_index, "methods": list(self.methods), "params": dict(self.params),
            "target": self.target, "contrast": self.contrast, "projection": self.projection,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    def restore(self, data: dict | str | Path, images: ImageSet | None = None, model=None, model_info=None) -> None:
        """Re-open a saved state: loads its dataset and model (unless this one is already loaded) and
        shows the same episode, query and settings.

        Raises:
            DataError: the file is not a workbench state.
        """
        if isinstance(data, (str, Path)):
            try:
                data = json.loads(Path(data).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read the workbench state file {data} ({exc}); choose a file saved by Export") from exc
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise DataError(f"not a workbench state (expected format {STATE_FORMAT!r}); choose a file saved by Export")
        for name in ("n_way", "n_shot", "n_query", "seed"):
            setattr(self, name, int(data[name]))
        if (self.images is None or self.dataset_name != data["dataset"] or self.model is None
                or images is not None or model is not None):
            self.load(data["dataset"], data.get("model"), split=data.get("split", "test"), images=images,
                      model=model, model_info=model_info)
        if data.get("model_fingerprint") and data["model_fingerprint"] != self.fingerprint:
            self.status = ("note: the saved state used model " + data["model_fingerprint"] +
                           f", this session has {self.fingerprint}; predictions may differ")
        episode = Episode.from_dict(data["episode"])
        with self.hold_trait_notifications():
            self.methods = list(data.get("methods", ["gradcam"]))
            self.params = dict(data.get("params", {}))
            self.target = data.get("target", "predicted")
            self.contrast = data.get("contrast")
            self.projection = data.get("projection", "pca")
        self.set_episode(episode, refit_projection=True, query_index=int(data.get("query_index", 0)))


def apply_images(state: WorkbenchState, extra: ImageSet) -> None:
    """Append images (for example imported DICOM) to the state's image set so they can be used as
    support or query images; embeddings of the existing images are kept."""
    base = state.images
    extra = backend.check_channels(extra, state.model)
    if extra.class_names != base.class_names:
        mapping = np.array([base.class_index(c) if c in base.class_names else -1 for c in extra.class_names])
        if (mapping[extra.labels] < 0).any():
            missing = sorted({extra.class_names[i] for i in np.unique(extra.labels) if mapping[i] < 0})
            raise DataError(f"classes {missing} are not classes of {base.name} ({list(base.class_names)}); "
                            "label the imported images with one of those classes")
        labels = mapping[extra.labels]
    else:
        labels = extra.labels
    clash = set(extra.sample_ids) & set(base.sample_ids)
    if clash:
        raise DataError(f"sample ids {sorted(clash)[:3]} are already in {base.name}; these images were imported before")
    meta = pd.concat([base.metadata, extra.metadata], ignore_index=True)
    masks = None
    if base.masks is not None:
        masks = np.concatenate([base.masks, extra.masks if extra.masks is not None
                                else np.zeros((len(extra), *base.image_size), dtype=bool)])
    combined = ImageSet(np.concatenate([base.images, extra.images]), np.concatenate([base.labels, labels]),
                        base.class_names, meta, base.name, masks)
    old_emb, old_have = state._emb, state._have
    state.images = combined
    state._have = np.concatenate([old_have, np.zeros(len(extra), dtype=bool)])
    if old_emb is not None:
        state._emb = torch.cat([old_emb, torch.zeros(len(extra), old_emb.shape[1])])
