"""The domain guard (fsl_xai.guard): its score, threshold, table columns, persistence and metrics.

The mechanics are checked exactly on small embeddings built here; real data is the CLI test's
business (tests/fsl_xai/test_cli_guard.py).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from fsl_xai.embeddings import embed_all, embedding_fingerprint
from fsl_xai.errors import DataError, ModelError
from fsl_xai.guard import (
    DomainGuard,
    GuardScores,
    add_guard_columns,
    auroc,
    detection_summary,
    fit_guard,
    fpr_at_tpr,
)
from fsl_xai.testing import make_imageset, tiny_model


def brute_knn(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest Euclidean distance between L2-normalised rows, the slow obvious way."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    d = np.linalg.norm(unit(queries)[:, None, :] - unit(reference)[None, :, :], axis=2)
    return np.sort(d, axis=1)[:, k - 1]


@pytest.fixture
def blobs():
    """Reference, calibration and query embeddings around one direction, and a far cluster."""
    rng = np.random.default_rng(0)
    centre = np.zeros(16)
    centre[0] = 5.0

    def near(n):
        return centre + rng.normal(size=(n, 16))

    far = -centre + rng.normal(size=(30, 16))
    return near(200), near(60), near(40), far


# ---------------------------------------------------------------------------------------------- score
def test_score_is_the_kth_neighbour_distance_of_normalised_embeddings(blobs):
    ref, cal, query, far = blobs
    for k in (1, 3, 7):
        guard = DomainGuard.fit(ref, cal, k=k)
        np.testing.assert_allclose(guard.score(query), brute_knn(query, ref, k), atol=1e-5)
        np.testing.assert_allclose(guard.score(far), brute_knn(far, ref, k), atol=1e-5)
        # scale-free: only directions count
        np.testing.assert_allclose(guard.score(3.0 * query), guard.score(query), atol=1e-5)
    assert guard.score(query).dtype == np.float64 and guard.score(query).shape == (40,)


def test_support_embeddings_join_the_reference(blobs):
    ref, cal, query, far = blobs
    guard = DomainGuard.fit(ref, cal, k=3)
    support = far[:4]
    with_support = guard.score(far, support)
    np.testing.assert_allclose(with_support, brute_knn(far, np.concatenate([ref, support]), 3), atol=1e-5)
    assert (with_support <= guard.score(far) + 1e-7).all()  # more neighbours never raise a score
    # a support set of torch tensors works the same as numpy arrays
    np.testing.assert_allclose(guard.score(torch.from_numpy(far), torch.from_numpy(support)), with_support)
    # with k = 1 a query that is a support image is at distance 0 and not flagged
    one = DomainGuard.fit(ref, cal, k=1)
    assert one.score(far[:2], far[:2]) == pytest.approx([0.0, 0.0], abs=1e-3)
    assert not one.flag(far[:2], far[:2]).any() and one.flag(far[:2]).all()


def test_threshold_is_the_calibration_quantile(blobs):
    ref, cal, query, far = blobs
    for q in (0.9, 0.95):
        guard = DomainGuard.fit(ref, cal, k=5, quantile=q)
        cal_scores = brute_knn(cal, ref, 5)
        assert guard.threshold == pytest.approx(np.quantile(cal_scores, q), abs=1e-5)
        share = np.mean(guard.score(cal) > guard.threshold)
        assert abs(share - (1 - q)) < 1 / len(cal)  # the quantile interpolates between two scores
    assert (guard.n_reference, guard.n_calibration, guard.dim, guard.k, guard.method) == (200, 60, 16, 5, "knn")


def test_far_cluster_is_flagged_and_the_held_in_one_mostly_not(blobs):
    ref, cal, query, far = blobs
    guard = DomainGuard.fit(ref, cal)
    assert guard.flag(far).all()
    assert guard.flag(query).mean() <= 0.15
    verdict = guard.assess(np.concatenate([query, far]))
    assert isinstance(verdict, GuardScores)
    np.testing.assert_array_equal(verdict.flags, verdict.scores > guard.threshold)
    assert verdict.n_flagged == int(verdict.flags.sum()) >= 30
    flagged = int(np.flatnonzero(verdict.flags)[0])
    unflagged = int(np.flatnonzero(~verdict.flags)[0])
    assert verdict.warning(unflagged) is None
    text = verdict.warning(flagged)
    assert text is not None and f"{verdict.scores[flagged]:.3f}" in text and "5%" in text


def test_guard_is_frozen_and_compares_by_its_settings(blobs):
    ref, cal, _, _ = blobs
    guard = DomainGuard.fit(ref, cal)
    with pytest.raises(dataclasses.FrozenInstanceError):
        guard.threshold = 0.0
    assert guard == DomainGuard.fit(ref.copy(), cal.copy())
    assert "reference_=" not in repr(guard)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_inputs_say_what_to_do(blobs):
    ref, cal, query, _ = blobs
    with pytest.raises(DataError, match="calibrate on held-out"):
        DomainGuard.fit(ref, ref)
    with pytest.raises(DataError, match="calibrate on held-out"):
        DomainGuard.fit(ref, ref.copy())
    with pytest.raises(DataError, match="at least 20 are needed"):
        DomainGuard.fit(ref, cal[:19])
    with pytest.raises(DataError, match="fewer than k"):
        DomainGuard.fit(ref[:3], cal, k=5)
    with pytest.raises(DataError, match="dimensions"):
        DomainGuard.fit(ref, cal[:, :8])
    with pytest.raises(DataError, match="NaN"):
        DomainGuard.fit(np.where(np.arange(16) == 0, np.nan, ref), cal)
    with pytest.raises(DataError, match=r"\(n, D\)"):
        DomainGuard.fit(ref[0], cal)
    with pytest.raises(ModelError, match="k must be at least 1"):
        DomainGuard.fit(ref, cal, k=0)
    with pytest.raises(ModelError, match="quantile"):
        DomainGuard.fit(ref, cal, quantile=1.0)
    guard = DomainGuard.fit(ref, cal)
    with pytest.raises(DataError, match="embed them with the model"):
        guard.score(query[:, :8])
    with pytest.raises(ModelError, match="unknown guard method"):
        DomainGuard.from_dict({**guard.to_dict(), "method": "energy"})


# ---------------------------------------------------------------------------------------------- persistence
def test_json_round_trip_and_save_load(blobs, tmp_path):
    ref, cal, query, _ = blobs
    guard = DomainGuard.fit(ref, cal, k=4, embedding_fingerprint="abc", reference_data="r", calibration_data="c")
    data = json.loads(json.dumps(guard.to_dict()))
    assert {"threshold", "k", "method", "n_reference", "quantile"} <= data.keys()
    assert DomainGuard.from_dict(data) == guard  # settings compare; the reference does not
    path = guard.save(tmp_path / "card" / "guard.json")
    assert path.is_file() and (tmp_path / "card" / "guard.npz").is_file()
    loaded = DomainGuard.load(path)
    assert loaded == guard
    np.testing.assert_array_equal(loaded.score(query), guard.score(query))
    # the JSON alone can be cited but not used to score
    (tmp_path / "card" / "guard.npz").unlink()
    cited = DomainGuard.load(path)
    assert cited.to_dict() == guard.to_dict()
    with pytest.raises(ModelError, match="no reference embeddings"):
        cited.score(query)
    with pytest.raises(DataError, match="lacks"):
        DomainGuard.from_dict({"k": 5})
    with pytest.raises(DataError, match="cannot read the guard file"):
        DomainGuard.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------- table
def test_add_guard_columns_one_support_or_one_per_episode(blobs):
    ref, cal, query, far = blobs
    guard = DomainGuard.fit(ref, cal, k=2)
    queries = np.concatenate([query[:5], far[:5]])
    table = pd.DataFrame({"episode": [0] * 4 + [1] * 3 + [2] * 3, "sample_id": [f"s{i}" for i in range(10)]})
    before = table.copy()

    plain = add_guard_columns(table, guard, queries)
    np.testing.assert_allclose(plain["ood_score"], guard.score(queries))
    np.testing.assert_array_equal(plain["ood_flag"], guard.flag(queries))
    assert plain["ood_flag"].dtype == bool and list(plain.columns[:2]) == ["episode", "sample_id"]
    pd.testing.assert_frame_equal(table, before)  # the given table is not changed

    shared = add_guard_columns(table, guard, queries, far[5:8])
    np.testing.assert_allclose(shared["ood_score"], guard.score(queries, far[5:8]))

    # episodes of different sizes, smaller than k (= 2) and empty included; repeated query rows
    queries[7] = queries[0]
    supports = {0: far[5:8], 1: far[8:9], 2: np.zeros((0, 16))}
    per_episode = add_guard_columns(table, guard, torch.from_numpy(queries), supports)
    for episode, rows in table.groupby("episode").indices.items():
        np.testing.assert_allclose(per_episode["ood_score"].to_numpy()[rows],
                                   brute_knn(queries[rows], np.concatenate([ref, supports[episode]]), 2), atol=1e-5)
    with pytest.raises(DataError, match="no support embeddings for episode 2"):
        add_guard_columns(table, guard, queries, {0: far[:2], 1: far[:2]})
    with pytest.raises(DataError, match="10 rows but 9"):
        add_guard_columns(table, guard, queries[:9])
    with pytest.raises(DataError, match="'episode' column"):
        add_guard_columns(table.drop(columns="episode"), guard, queries, supports)


# ---------------------------------------------------------------------------------------------- metrics
def test_auroc_is_the_mann_whitney_statistic_of_sklearn():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.7, 3.0):
        a = rng.normal(size=150).round(1)  # rounding makes ties, which count half
        b = rng.normal(shift, size=90).round(1)
        expected = roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
        assert auroc(a, b) == pytest.approx(expected, abs=1e-12)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(DataError, match="both kinds"):
        auroc([], [1.0])


def test_fpr_at_95_tpr_matches_the_roc_curve():
    rng = np.random.default_rng(2)
    for n_ood in (20, 57, 200):
        a = rng.normal(size=300).round(1)
        b = rng.normal(1.5, size=n_ood).round(1)
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b], drop_intermediate=False)
        assert fpr_at_tpr(a, b, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)])
    assert fpr_at_tpr([0.0, 0.1], [1.0, 2.0]) == 0.0
    assert fpr_at_tpr([5.0, 6.0], [1.0, 2.0]) == 1.0
    with pytest.raises(DataError, match="tpr"):
        fpr_at_tpr([0.0], [1.0], tpr=0.0)


def test_detection_summary(blobs):
    ref, cal, query, far = blobs
    guard = DomainGuard.fit(ref, cal)
    summary = detection_summary(guard, query, far)
    assert summary["auroc"] == 1.0 and summary["fpr_at_95_tpr"] == 0.0
    assert (summary["n_in"], summary["n_ood"], summary["ood_flag_rate"]) == (40, 30, 1.0)
    assert summary["threshold"] == guard.threshold and summary["k"] == guard.k
    json.dumps(summary)  # JSON-ready


# ---------------------------------------------------------------------------------------------- with a model
def test_fit_guard_and_assess_episode_leave_model_and_episode_unchanged():
    model = tiny_model(channels=1, size=28, seed=0)
    images = make_imageset(n_classes=3, n_per_class=20, seed=0)
    reference, calibration = images.subset(np.arange(0, 60, 3)), images.subset(np.r_[1:60:3, 2:60:3])
    before = embedding_fingerprint(model)
    guard = fit_guard(model, reference, calibration, k=2)
    assert guard.embedding_fingerprint == before and "toy" in guard.reference_data
    emb = embed_all(model, images)
    np.testing.assert_allclose(guard.score(emb[:5]), brute_knn(emb[:5].numpy(), emb[::3].numpy(), 2), atol=1e-5)

    pixels = torch.from_numpy(images.images)
    fitted = model.fit(pixels[[0, 20, 40]], torch.tensor([0, 1, 2]))
    support = fitted.support_embeddings_.clone()
    query = embed_all(model, images)[[5, 25, 45]]
    verdict = guard.assess_episode(fitted, query)
    np.testing.assert_allclose(verdict.scores, guard.score(query, support))
    assert embedding_fingerprint(model) == before and torch.equal(fitted.support_embeddings_, support)

    other = tiny_model(channels=1, size=28, seed=1)
    with pytest.raises(ModelError, match="another model"):
        guard.assess_episode(other.fit(pixels[[0, 20, 40]], torch.tensor([0, 1, 2])), query)
