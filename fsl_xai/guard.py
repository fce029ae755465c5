"""The domain guard: a score that says when a query lies outside what the model knows.

A few-shot model answers every query with one of its episode's classes, whatever the image is: a
chest X-ray among blood cells is called "lymphocyte" with a large margin. The guard scores each
query's embedding against what the model knows (reference embeddings of the data it is meant for,
plus the episode's support embeddings) and flags the queries that lie further away than nearly all
held-in images do.

Score: the distance to the k-th nearest neighbour among L2-normalised embeddings (Sun et al., 2022,
"Out-of-distribution detection with deep nearest neighbors"), k = 5 by default. Chosen over a
Mahalanobis distance with a Ledoit-Wolf covariance after measuring both on the shared data with the
default Conv-4 ProtoNets (``benchmarks/guard_auroc.py``). Against another modality, which is what
the guard is for, both separate PBC blood cells from CT/MRI/X-ray, ultrasound and fundus images
perfectly (AUROC 1.000), and kNN is ahead against dermoscopy (AUROC 0.993, FPR at 95% TPR 0.019,
against 0.989 and 0.053). Between HAM10000 acquisition sites (a near shift) neither detects the
shift reliably: mean AUROC over the 12 site pairs 0.72 for kNN, 0.75 for Mahalanobis (0.44-0.97).
kNN also needs no covariance of a 1024-dimensional embedding estimated from a few hundred images,
and the episode's support joins the reference simply as more neighbours, where a Gaussian would
have to be refitted per episode.

Threshold: the ``quantile`` (0.95) of the scores of held-in calibration images, which must not be
part of the reference (a reference image is its own nearest neighbour). About 5% of in-distribution
queries are then flagged; adding the support to the reference only lowers scores, so with a
support set at most about 5% are.

Typical use::

    guard = fit_guard(model, train_images, val_images)          # embeds both with embed_all
    result = guard.assess_episode(fitted, query_embeddings)     # scores, flags, warnings
    table = add_guard_columns(table, guard, query_embeddings)   # ood_score, ood_flag columns
    guard.save("guard.json")                                    # + guard.npz (reference embeddings)
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data.imageset import ImageSet
from .embeddings import Pixels, embed_all, embedding_fingerprint
from .errors import DataError, ModelError
from .files import atomic_write

if TYPE_CHECKING:
    from .models.base import FewShotClassifier
    from .models.fitted import FittedEpisode

#: the scoring methods a guard can use
GUARD_METHODS = ("knn",)
DEFAULT_K = 5
DEFAULT_QUANTILE = 0.95
#: share of the train split held out for calibration when a held-in set has no val split
HELD_OUT_SHARE = 0.2
#: query rows per distance block: bounds memory at ROWS x n_reference floats
_ROWS = 2048
#: episodes per batched support product
_GROUPS = 64

Embeddings = torch.Tensor | np.ndarray
#: support embeddings: one set for every query, or one per episode keyed by the table's ``episode``
SupportEmbeddings = Embeddings | Mapping[Any, Embeddings] | None


def _matrix(values: Embeddings, what: str, dim: int | None = None, check: bool = True) -> torch.Tensor:
    """values as a float32 (n, D) tensor, checked (shape always; finiteness when ``check``)."""
    x = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if x.ndim != 2:
        raise DataError(f"{what} must be (n, D) embeddings, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{what} have {x.shape[1]} dimensions but the guard was fitted on {dim}; "
                        "embed them with the model the guard was fitted for")
    x = x.to(torch.float32)
    if check and not torch.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values; check the model that produced them")
    return x


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1).contiguous()


def _nearest(queries: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """The min(k, n_reference) smallest distances (n, k), ascending, between unit vectors."""
    k = min(k, len(reference))
    out = []
    for start in range(0, len(queries), _ROWS):
        q = queries[start:start + _ROWS]
        # |a - b|^2 = 2 - 2 a.b for unit vectors; clamped, as rounding can take it below zero
        sq = (2.0 - 2.0 * (q @ reference.T)).clamp_min_(0.0)
        out.append(sq.topk(k, dim=1, largest=False, sorted=True).values.sqrt_())
    return torch.cat(out) if out else torch.zeros(0, k)


def _nearest_in_groups(queries: torch.Tensor, rows: list[np.ndarray], supports: list[torch.Tensor],
                       k: int) -> torch.Tensor:
    """The k smallest distances (n, k), ascending, from each query row to the unit support
    embeddings of its group; +inf where a group has fewer than k. Group g holds the query rows
    ``rows[g]`` and the support ``supports[g]`` (n_support, D). The groups of a chunk are padded
    into one batched product: one small product per episode costs more in call overhead than in
    arithmetic."""
    out = torch.full((len(queries), k), float("inf"))
    for start in range(0, len(rows), _GROUPS):
        chunk_rows, chunk_sup = rows[start:start + _GROUPS], supports[start:start + _GROUPS]
        n_q, n_s = max(len(r) for r in chunk_rows), max(len(s) for s in chunk_sup)
        if n_q == 0 or n_s == 0:
            continue
        row_index = np.zeros((len(chunk_rows), n_q), dtype=np.int64)
        row_valid = np.zeros((len(chunk_rows), n_q), dtype=bool)
        sup_index = np.zeros((len(chunk_sup), n_s), dtype=np.int64)
        padding = np.ones((len(chunk_sup), 1, n_s), dtype=bool)
        offset = 0
        for g, (r, sup) in enumerate(zip(chunk_rows, chunk_sup, strict=True)):
            row_index[g, :len(r)], row_valid[g, :len(r)] = r, True
            sup_index[g, :len(sup)] = np.arange(offset, offset + len(sup))
            padding[g, 0, :len(sup)] = False
            offset += len(sup)
        q = queries[torch.from_numpy(row_index)]
        s = torch.cat(chunk_sup)[torch.from_numpy(sup_index)]
        sq = (2.0 - 2.0 * torch.bmm(q, s.transpose(1, 2))).clamp_min_(0.0)
        sq.masked_fill_(torch.from_numpy(padding), float("inf"))
        top = sq.topk(min(k, n_s), dim=2, largest=False, sorted=True).values.sqrt_()
        valid = torch.from_numpy(row_valid)
        out[torch.from_numpy(row_index)[valid], :top.shape[2]] = top[valid]
    return out


def _check_settings(method: str, k: int, quantile: float) -> None:
    if method not in GUARD_METHODS:
        raise ModelError(f"unknown guard method {method!r}; choose one of {list(GUARD_METHODS)}")
    if k < 1:
        raise ModelError(f"k must be at least 1, got {k}")
    if not 0 < quantile < 1:
        raise ModelError(f"quantile must lie strictly between 0 and 1, got {quantile}")


@dataclass(frozen=True)
class GuardScores:
    """The guard's verdict on a batch of queries, ready for a view or a table.

    Attributes:
        scores: (n_query,) out-of-distribution scores (higher: further from what the model knows).
        flags: (n_query,) True where the score exceeds the threshold.
        threshold: the guard's calibrated threshold.
        quantile: the share of held-in calibration images scoring at or below the threshold.
    """

    scores: np.ndarray
    flags: np.ndarray
    threshold: float
    quantile: float

    @property
    def n_flagged(self) -> int:
        """How many queries are flagged."""
        return int(self.flags.sum())

    def warning(self, index: int) -> str | None:
        """The warning to show with query ``index``, or None when it is not flagged."""
        if not self.flags[index]:
            return None
        return (f"out of the model's depth: this image is unlike the images the model knows (OOD score "
                f"{self.scores[index]:.3f} > threshold {self.threshold:.3f}, which only "
                f"{1 - self.quantile:.0%} of held-in images exceed); do not trust its prediction")


@dataclass(frozen=True)
class DomainGuard:
    """A calibrated out-of-distribution score over a model's embeddings (see the module docstring).

    Build it with :meth:`fit` or :func:`fit_guard`. Everything but the reference embeddings is plain
    data (:meth:`to_dict`), so a model card can cite it; :meth:`save` writes the reference beside.

    Attributes:
        threshold: scores above it are flagged.
        k: the neighbour whose distance is the score.
        quantile: the share of calibration scores at or below the threshold.
        n_reference: reference embeddings; n_calibration: calibration embeddings; dim: their size D.
        method: ``"knn"``.
        embedding_fingerprint: the model's :func:`~fsl_xai.embeddings.embedding_fingerprint`, when
            known: scoring a fitted episode of other weights is refused.
        reference_data, calibration_data: what the embeddings were made from (free text).
        reference_: (n_reference, D) L2-normalised reference embeddings; None for a guard read from
            its JSON alone, which can be cited but not used to score.
    """

    threshold: float
    k: int
    quantile: float
    n_reference: int
    n_calibration: int
    dim: int
    method: str = "knn"
    embedding_fingerprint: str | None = None
    reference_data: str = ""
    calibration_data: str = ""
    reference_: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_settings(self.method, self.k, self.quantile)
        if self.reference_ is not None:
            ref = _matrix(self.reference_, "reference embeddings", self.dim)
            if len(ref) != self.n_reference:
                raise DataError(f"the guard expects {self.n_reference} reference embeddings, got {len(ref)}")
            # normalised once; rows that are unit already (a saved guard) keep their exact bits
            if not torch.allclose(ref.norm(dim=1), torch.ones(len(ref)), atol=1e-5):
                ref = _unit(ref)
            object.__setattr__(self, "reference_", ref.contiguous())  # frozen: set once, here

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, reference_embeddings: Embeddings, calibration_embeddings: Embeddings, k: int = DEFAULT_K,
            quantile: float = DEFAULT_QUANTILE, embedding_fingerprint: str | None = None,
            reference_data: str = "", calibration_data: str = "") -> DomainGuard:
        """A guard whose reference is ``reference_embeddings`` (n_reference, D) and whose threshold is
        the ``quantile`` of the scores of ``calibration_embeddings`` (n_calibration, D).

        The calibration images must be held in (the data the model is meant for) but not among the
        reference images: a reference image scores zero distance to itself.

        Raises:
            DataError: wrong shapes, non-finite values, fewer than k reference embeddings, too few
                calibration embeddings for the quantile, or calibration embeddings that are the
                reference itself.
        """
        _check_settings("knn", k, quantile)
        ref = _matrix(reference_embeddings, "reference embeddings")
        cal = _matrix(calibration_embeddings, "calibration embeddings", ref.shape[1])
        if calibration_embeddings is reference_embeddings or (cal.shape == ref.shape and torch.equal(cal, ref)):
            raise DataError("the calibration embeddings are the reference embeddings; calibrate on held-out "
                            "images of the same kind (e.g. the validation split)")
        if len(ref) < k:
            raise DataError(f"the reference has {len(ref)} embeddings, fewer than k = {k}; give more reference "
                            "images or a smaller k")
        need = math.ceil(1 / (1 - quantile) - 1e-9)
        if len(cal) < need:
            raise DataError(f"{len(cal)} calibration embeddings cannot place a {quantile:.0%} threshold (at least "
                            f"{need} are needed); give more held-in calibration images")
        unit_ref = _unit(ref)
        scores = _nearest(_unit(cal), unit_ref, k)[:, k - 1].double().numpy()
        threshold = float(np.quantile(scores, quantile))
        return cls(threshold=threshold, k=k, quantile=quantile, n_reference=len(ref), n_calibration=len(cal),
                   dim=int(ref.shape[1]), embedding_fingerprint=embedding_fingerprint,
                   reference_data=reference_data, calibration_data=calibration_data, reference_=unit_ref)

    # ------------------------------------------------------------------ scoring
    def _reference(self) -> torch.Tensor:
        if self.reference_ is None:
            raise ModelError("this guard has no reference embeddings (it was read from its JSON alone); load it "
                             "with DomainGuard.load(path) with its .npz beside, or fit it again")
        return self.reference_

    def _nearest_reference(self, queries: torch.Tensor) -> torch.Tensor:
        """The k smallest reference distances (n, k) of unit query rows, each distinct row searched
        once (an evaluation's table repeats each image over many episodes)."""
        # exact: rows are the same when their bytes are (a hash of the bytes; torch.unique sorts, slower)
        ids: dict[bytes, int] = {}
        inverse = np.fromiter((ids.setdefault(row.tobytes(), len(ids)) for row in queries.numpy()),
                              dtype=np.int64, count=len(queries))
        rows = np.zeros(len(ids), dtype=np.int64)
        rows[inverse] = np.arange(len(queries))  # one row standing for each distinct id
        return _nearest(queries[torch.from_numpy(rows)], self._reference(), self.k)[torch.from_numpy(inverse)]

    def _scores(self, queries: torch.Tensor, support: SupportEmbeddings, episodes: pd.Series | None = None
                ) -> np.ndarray:
        """(n,) float64 k-th smallest distances of unit query rows over the reference and the
        support (one set, or one per value of ``episodes``, a label per row)."""
        nearest = self._nearest_reference(queries)
        rows: list[np.ndarray] = []
        sets: list[torch.Tensor] = []
        if isinstance(support, Mapping):
            if episodes is None:
                raise DataError("support embeddings per episode need the table's 'episode' column")
            for episode, positions in episodes.groupby(episodes, sort=False).indices.items():
                if episode not in support:
                    raise DataError(f"no support embeddings for episode {episode}; give one set per episode of "
                                    "the table")
                rows.append(np.asarray(positions))
                sets.append(_matrix(support[episode], "support embeddings", self.dim, check=False))
        elif support is not None:
            rows.append(np.arange(len(queries)))
            sets.append(_matrix(support, "support embeddings", self.dim, check=False))
        if rows:
            # checked and normalised once for all episodes, then cut back into the episodes' sets
            every = _unit(_matrix(torch.cat(sets), "support embeddings", self.dim))
            sets = list(every.split([len(x) for x in sets]))
            nearest = torch.cat([nearest, _nearest_in_groups(queries, rows, sets, self.k)], dim=1).sort(dim=1).values
        return nearest[:, self.k - 1].double().numpy()

    def score(self, query_embeddings: Embeddings, support_embeddings: Embeddings | None = None) -> np.ndarray:
        """Out-of-distribution scores (n_query,) float64 of query embeddings (n_query, D); support
        embeddings (n_support, D), when given, count as part of what the model knows."""
        return self._scores(_unit(_matrix(query_embeddings, "query embeddings", self.dim)), support_embeddings)

    def flag(self, query_embeddings: Embeddings, support_embeddings: Embeddings | None = None) -> np.ndarray:
        """(n_query,) bool: True where a query's score exceeds the threshold."""
        return self.score(query_embeddings, support_embeddings) > self.threshold

    def assess(self, query_embeddings: Embeddings, support_embeddings: Embeddings | None = None) -> GuardScores:
        """Scores and flags of query embeddings (n_query, D) together (see :class:`GuardScores`)."""
        scores = self.score(query_embeddings, support_embeddings)
        return GuardScores(scores=scores, flags=scores > self.threshold, threshold=self.threshold,
                           quantile=self.quantile)

    def assess_episode(self, fitted: FittedEpisode, query_embeddings: Embeddings) -> GuardScores:
        """Scores and flags of an episode's query embeddings (n_query, D), with the fitted episode's
        support embeddings as part of what the model knows. Neither the guard nor the fitted episode
        changes.

        Raises:
            ModelError: the fitted episode's model has other weights than the guard was fitted for.
        """
        self.check_model(fitted.model)
        return self.assess(query_embeddings, fitted.support_embeddings_)

    def check_model(self, model: FewShotClassifier) -> None:
        """Raise ModelError when the guard was fitted on another model's embeddings."""
        if self.embedding_fingerprint is not None and embedding_fingerprint(model) != self.embedding_fingerprint:
            raise ModelError("this domain guard was fitted on another model's embeddings; fit a guard for this "
                             "model (fit_guard(model, reference_images, calibration_images))")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything but the reference embeddings, as JSON-ready values."""
        return {"method": self.method, "k": self.k, "quantile": self.quantile, "threshold": self.threshold,
                "n_reference": self.n_reference, "n_calibration": self.n_calibration, "dim": self.dim,
                "embedding_fingerprint": self.embedding_fingerprint, "reference_data": self.reference_data,
                "calibration_data": self.calibration_data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], reference: Embeddings | None = None) -> DomainGuard:
        """The guard :meth:`to_dict` described, with its reference embeddings when given."""
        missing = {"threshold", "k", "quantile", "n_reference", "n_calibration", "dim"} - set(data)
        if missing:
            raise DataError(f"the guard description lacks {sorted(missing)}; write it with DomainGuard.to_dict()")
        fp = data.get("embedding_fingerprint")
        return cls(threshold=float(data["threshold"]), k=int(data["k"]), quantile=float(data["quantile"]),
                   n_reference=int(data["n_reference"]), n_calibration=int(data["n_calibration"]),
                   dim=int(data["dim"]), method=str(data.get("method", "knn")),
                   embedding_fingerprint=None if fp is None else str(fp),
                   reference_data=str(data.get("reference_data", "")),
                   calibration_data=str(data.get("calibration_data", "")),
                   reference_=None if reference is None else _matrix(reference, "reference embeddings"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (JSON, :meth:`to_dict`) and the reference embeddings beside it in
        ``path`` with the suffix ``.npz``. Returns the JSON path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.reference_ is not None:
            buffer = io.BytesIO()
            np.savez(buffer, reference=self.reference_.numpy())
            _replace(target.with_suffix(".npz"), buffer.getvalue())
        _replace(target, json.dumps(self.to_dict(), indent=2).encode())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DomainGuard:
        """Read a guard written by :meth:`save` (without its .npz: citeable, but it cannot score)."""
        source = Path(path)
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the guard file {source} ({exc}); write it with DomainGuard.save") from exc
        npz = source.with_suffix(".npz")
        reference = None
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as stored:
                reference = stored["reference"]
        return cls.from_dict(data, reference)


def _replace(path: Path, content: bytes) -> None:
    """Write a file through a temporary sibling and a rename, so no reader sees half of it."""
    with atomic_write(path) as handle:
        handle.write(content)


def _describe(images: Pixels) -> str:
    if isinstance(images, ImageSet):
        return f"{images.name} ({len(images)} images, fingerprint {images.fingerprint()})"
    return f"{len(images)} images"


def reference_and_calibration(train: ImageSet, val: ImageSet | None, seed: int = 0
                              ) -> tuple[ImageSet, ImageSet, str]:
    """A guard's reference and calibration images: ``train`` and ``val``, or, without a val split, a
    seeded share (``HELD_OUT_SHARE``) of ``train`` held out of the reference for calibration.

    Returns:
        (reference, calibration, where the calibration images came from, in words).
    """
    if val is not None:
        return train, val, f"val split ({len(val)} images)"
    order = np.random.default_rng(seed).permutation(len(train))
    n_cal = max(1, round(HELD_OUT_SHARE * len(train)))
    return (train.subset(order[n_cal:]), train.subset(order[:n_cal]),
            f"{HELD_OUT_SHARE:.0%} of the train split (seed {seed}) held out, {n_cal} images")


def fit_guard(model: FewShotClassifier, reference_images: Pixels, calibration_images: Pixels, k: int = DEFAULT_K,
              quantile: float = DEFAULT_QUANTILE, batch_size: int = 64, progress: bool = False) -> DomainGuard:
    """A domain guard for ``model``: reference = the embeddings of ``reference_images`` (its
    training images, or the train split of the data it is meant for), threshold calibrated on
    ``calibration_images`` (held-in images that are not in the reference, e.g. the validation
    split). Both are embedded with :func:`~fsl_xai.embeddings.embed_all` (cached); the model is
    not changed.

    Args:
        model: the few-shot model whose embeddings are guarded.
        reference_images, calibration_images: ImageSets or arrays (N, C, H, W) in [0, 1] that fit
            the model.
        k: the neighbour whose distance is the score.
        quantile: share of calibration images below the threshold.
        batch_size, progress: passed to ``embed_all``.
    """
    ref = embed_all(model, reference_images, batch_size=batch_size, progress=progress)
    cal = embed_all(model, calibration_images, batch_size=batch_size, progress=progress)
    return DomainGuard.fit(ref, cal, k=k, quantile=quantile, embedding_fingerprint=embedding_fingerprint(model),
                           reference_data=_describe(reference_images),
                           calibration_data=_describe(calibration_images))


def add_guard_columns(table: pd.DataFrame, guard: DomainGuard, query_embeddings: Embeddings,
                      support_embeddings: SupportEmbeddings = None) -> pd.DataFrame:
    """The per-query table with two more columns: ``ood_score`` (float) and ``ood_flag`` (bool).

    Args:
        table: one row per query (the per-query table of ``evaluate`` or the workbench).
        guard: a fitted domain guard.
        query_embeddings: (len(table), D) embeddings of the table's queries, row by row.
        support_embeddings: None (the guard's reference only); one (n_support, D) set for every
            row; or a mapping from the table's ``episode`` values to each episode's (n_support, D)
            support embeddings.

    Returns:
        A new table; the given one is not changed.

    Raises:
        DataError: the embeddings do not match the table row for row, or an episode of the table
            has no support embeddings in the mapping.
    """
    queries = _unit(_matrix(query_embeddings, "query embeddings", guard.dim))
    if len(queries) != len(table):
        raise DataError(f"the table has {len(table)} rows but {len(queries)} query embeddings were given; "
                        "pass the embeddings of the table's queries, in its row order")
    episodes = table["episode"].reset_index(drop=True) if "episode" in table.columns else None
    values = guard._scores(queries, support_embeddings, episodes)
    return table.assign(ood_score=values, ood_flag=values > guard.threshold)


# ---------------------------------------------------------------------------------------------
# how well the score separates held-in from out-of-distribution images
def _scores_pair(in_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(ood_scores, dtype=np.float64).reshape(-1)
    if len(a) == 0 or len(b) == 0:
        raise DataError(f"need scores of both kinds, got {len(a)} in-distribution and {len(b)} out-of-distribution")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("the scores contain NaN or infinite values")
    return a, b


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling out-of-distribution (positive, higher score) from
    in-distribution images: the Mann-Whitney U statistic over n_in x n_ood, ties counted half.
    0.5 is chance, 1.0 perfect separation."""
    from scipy.stats import rankdata

    a, b = _scores_pair(in_scores, ood_scores)
    ranks = rankdata(np.concatenate([a, b]))  # average ranks: a tie counts half
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def fpr_at_tpr(in_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of in-distribution images flagged at the highest threshold that flags at least ``tpr``
    of the out-of-distribution images (flagged: score >= threshold)."""
    if not 0 < tpr <= 1:
        raise DataError(f"tpr must lie in (0, 1], got {tpr}")
    a, b = _scores_pair(in_scores, ood_scores)
    ordered = np.sort(b)
    # the j-th smallest OOD score keeps (n - j) / n >= tpr of them at or above it
    j = int(math.floor(round(len(b) * (1 - tpr), 9)))
    return float(np.mean(a >= ordered[j]))


def detection_summary(guard: DomainGuard, in_embeddings: Embeddings, ood_embeddings: Embeddings) -> dict[str, Any]:
    """How the guard separates held-in test embeddings (n_in, D) from out-of-distribution ones
    (n_ood, D): ``auroc``, ``fpr_at_95_tpr``, ``n_in``, ``n_ood``, the share of each flagged at the
    calibrated threshold (``in_flag_rate``, ``ood_flag_rate``) and the guard's settings."""
    a = guard.score(in_embeddings)
    b = guard.score(ood_embeddings)
    return {"auroc": auroc(a, b), "fpr_at_95_tpr": fpr_at_tpr(a, b, 0.95), "n_in": len(a), "n_ood": len(b),
            "in_flag_rate": float(np.mean(a > guard.threshold)), "ood_flag_rate": float(np.mean(b > guard.threshold)),
            **guard.to_dict()}


__all__ = ["DEFAULT_K", "DEFAULT_QUANTILE", "GUARD_METHODS", "HELD_OUT_SHARE", "DomainGuard", "GuardScores",
           "add_guard_columns", "auroc", "detection_summary", "fit_guard", "fpr_at_tpr", "reference_and_calibration"]
