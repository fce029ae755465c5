"""The workbench's 2D map: PCA fixed between edits, t-SNE warm-started, groups mapped together."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_xai.errors import ModelError
from fsl_xai.projection import Projection


def test_pca_is_the_top_two_principal_directions_with_a_fixed_sign():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    proj = Projection("pca").fit(points)
    xy = proj.transform(points)
    # the same variances as the two largest principal components, and uncorrelated coordinates
    eig = np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1][:2]
    np.testing.assert_allclose(xy.var(0, ddof=1), eig, rtol=1e-9)
    assert abs(np.corrcoef(xy.T)[0, 1]) < 1e-9
    # the same data in another order gives the same picture (the SVD's sign is fixed)
    np.testing.assert_allclose(Projection("pca").fit(points[::-1]).transform(points), xy, atol=1e-9)


def test_pca_stays_put_and_transform_groups_maps_each_group():
    rng = np.random.default_rng(1)
    proj = Projection("pca").fit(rng.normal(size=(20, 4)))
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    ga, gb = proj.transform_groups(a, b)
    np.testing.assert_allclose(ga, proj.transform(a))
    np.testing.assert_allclose(gb, proj.transform(b))


def test_one_dimensional_embeddings_are_drawn_on_a_line():
    proj = Projection("pca").fit(np.arange(5.0)[:, None])
    xy = proj.transform(np.arange(5.0)[:, None])
    assert xy.shape == (5, 2) and np.all(xy[:, 1] == 0)


def test_tsne_places_all_groups_together_and_warm_starts_from_its_layout():
    rng = np.random.default_rng(2)
    groups = [rng.normal(size=(8, 5)), rng.normal(size=(6, 5)) + 4, rng.normal(size=(3, 5))]
    proj = Projection("tsne", seed=0)
    first = proj.transform_groups(*groups)
    assert [g.shape for g in first] == [(8, 2), (6, 2), (3, 2)]
    np.testing.assert_allclose(np.concatenate(first), proj.layout_)
    # seeded: a fresh map gives the same layout; a second run starts from the previous layout instead
    np.testing.assert_allclose(np.concatenate(Projection("tsne", seed=0).transform_groups(*groups)), proj.layout_)
    second = np.concatenate(proj.transform_groups(*groups))
    assert not np.allclose(second, np.concatenate(first))
    # other points (another number of them) start afresh
    np.testing.assert_allclose(proj.transform(groups[0]), Projection("tsne", seed=0).transform(groups[0]))


def test_errors():
    with pytest.raises(ModelError, match="unknown projection"):
        Projection("umap")
    with pytest.raises(ModelError, match="not fitted"):
        Projection("pca").transform(np.zeros((2, 3)))
    with pytest.raises(ModelError, match=r"\(n, D\)"):
        Projection("pca").fit(np.zeros(3))
