"""A 2D map of embeddings (PCA or t-SNE) that stays put while a support set is edited.

The workbench draws support embeddings, prototypes and queries on one map. A PCA map is fitted
once per episode and then only applied, so a support edit moves the edited class's prototype and
nothing else; a t-SNE map is re-run from the previous layout (warm start), so points keep roughly
their places.

Typical use::

    proj = Projection("pca").fit(np.concatenate([support_emb, query_emb]))
    support_xy, query_xy, proto_xy = proj.transform_groups(support_emb, query_emb, fitted.prototypes_.numpy())
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import ModelError

#: the projections a caller may ask for
PROJECTIONS = ("pca", "tsne")

_BLAS: Any = None  # threadpoolctl's controller once looked up; False when threadpoolctl is missing


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
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
    with _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext():
        yield


class Projection:
    """A 2D map of embeddings.

    Args:
        method: "pca" (fitted once, then a fixed linear map) or "tsne" (re-run on every transform,
            warm-started from the previous layout when the number of points is unchanged).
        seed: t-SNE's random state.

    Raises:
        ModelError: an unknown method.
    """

    def __init__(self, method: str = "pca", seed: int = 0):
        if method not in PROJECTIONS:
            raise ModelError(f"unknown projection {method!r}; choose one of {list(PROJECTIONS)}")
        self.method, self.seed = method, seed
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.layout_: np.ndarray | None = None

    def fit(self, points: np.ndarray) -> Projection:
        """Fit the map to points (n, D) (an episode's support and query embeddings); returns self."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or len(points) == 0:
            raise ModelError(f"a projection needs points (n, D), got shape {points.shape}")
        self.mean_ = points.mean(0)
        with _one_blas_thread():
            _, _, vt = np.linalg.svd(points - self.mean_, full_matrices=False)
        comps = vt[:2]
        # fix the sign so that the same data always gives the same picture
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
        self.components_ = comps * signs[:, None]
        self.layout_ = None
        return self

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Points (n, D) -> map coordinates (n, 2).

        Raises:
            ModelError: a PCA map that was not fitted.
        """
        points = np.asarray(points, dtype=np.float64)
        if self.method == "pca":
            if self.mean_ is None or self.components_ is None:
                raise ModelError("this projection is not fitted; call fit(points) first")
            with _one_blas_thread():
                out = (points - self.mean_) @ self.components_.T
            # one-dimensional embeddings give a single component: draw them on a line
            return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        from sklearn.manifold import TSNE

        warm = self.layout_ is not None and len(self.layout_) == len(points)
        perplexity = float(min(30, max(2, (len(points) - 1) / 3)))
        tsne = TSNE(2, perplexity=perplexity, init=self.layout_ if warm else "pca", random_state=self.seed,
                    max_iter=250)
        self.layout_ = tsne.fit_transform(points)
        return self.layout_

    def transform_groups(self, *groups: np.ndarray) -> list[np.ndarray]:
        """Several groups of points (each (n_i, D)) -> their coordinates (each (n_i, 2)).

        t-SNE places all groups in one run (its layout depends on every point shown together);
        PCA maps each group on its own.
        """
        if self.method == "pca":
            return [self.transform(g) for g in groups]
        sizes = np.cumsum([len(g) for g in groups])[:-1]
        return np.split(self.transform(np.concatenate(groups)), sizes)


__all__ = ["PROJECTIONS", "Projection"]
