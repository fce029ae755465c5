"""WorkbenchState without any widget: episodes, edits, caches, save/restore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsl_xai.embeddings import clear_embedding_cache
from fsl_xai.episodes import EpisodeSampler
from fsl_xai.projection import Projection
from fsl_xai.testing import tiny_model
from widgets.state import WorkbenchState


def test_resample_is_deterministic_and_shows_the_seed(state, synthetic_images):
    first = state.episode
    state.resample(5)
    assert state.seed == 5 and state.episode.seed == 5
    again = EpisodeSampler(synthetic_images, 3, 3, 3, seed=5).sample(0)
    assert state.episode == again
    state.resample()
    assert state.seed == 6 and state.episode != first


def test_predictions_match_the_model_on_pixels(state):
    s_img, s_lab, q_img, _ = state.episode.tensors(state.images)
    model = state.model
    with torch.no_grad():
        expected = model.fit(s_img, s_lab)(q_img).numpy()
    np.testing.assert_allclose(state.result.logits, expected, rtol=1e-4, atol=1e-4)
    assert (state.result.pred == expected.argmax(1)).all()
    assert np.all(state.result.margin >= 0)


@pytest.fixture
def unshared_state(synthetic_images) -> WorkbenchState:
    """A workbench whose embedding table starts empty: earlier tests (an audit folder's evaluation,
    the held-in episodes) may have embedded every image of the shared table."""
    clear_embedding_cache()
    s = WorkbenchState(n_way=3, n_shot=3, n_query=3)
    s.load("synthetic", images=synthetic_images, model=tiny_model(channels=1, size=32, width=8))
    assert s.error == ""
    return s


def test_swap_moves_only_that_prototype_and_embeds_one_image(unshared_state):
    state = unshared_state
    before = state.result.proto_xy.copy()
    embedded_before = state.embedding_table.n_embedded
    label = state.episode.support_labels[0]
    pool = state.pool(state.episode.classes[label]).sample_id
    # the embedding table is shared (tests with the same model and images reuse it): pick an image it lacks
    new_id = next(i for i in pool if not state.embedding_table.is_embedded(state.images.indices_of([i]))[0])
    state.swap_support(0, new_id)
    assert state.error == ""
    assert state.episode.support_ids[0] == new_id
    assert state.embedding_table.n_embedded == embedded_before + 1  # only the new image was embedded
    moved = np.linalg.norm(state.result.proto_xy - before, axis=1) > 1e-9
    assert moved.tolist() == [c == label for c in range(state.episode.n_way)]
    np.testing.assert_allclose(state.result.prev_proto_xy, before)


def test_confirm_query_is_the_incremental_update_of_a_refit(state):
    qi = 2
    qid, qlab = state.episode.query_ids[qi], state.episode.query_labels[qi]
    n_query = state.episode.n_query
    state.confirm_query(qi)
    assert state.error == ""
    assert state.episode.support_ids[-1] == qid and state.episode.support_labels[-1] == qlab
    assert qid not in state.episode.query_ids and state.episode.n_query == n_query - 1
    refit = state.model.fit_embeddings(state.embeddings(state.episode.support_indices(state.images)),
                                       torch.tensor(state.episode.support_labels))
    torch.testing.assert_close(state.fitted.prototypes_, refit.prototypes_, rtol=1e-5, atol=1e-5)


def test_bad_edits_become_inline_errors_and_change_nothing(state):
    episode = state.episode
    # a class with a single support image cannot lose it
    state.n_shot = 1
    state.resample(0)
    episode = state.episode
    state.remove_support(0)
    assert "only this support image" in state.error
    assert state.episode == episode
    state.swap_support(0, episode.query_ids[0])
    assert "is a query of this episode" in state.error
    state.add_support("no-such-id", 0)
    assert "unknown sample ids" in state.error
    state.add_support(state.pool().sample_id[0], "not-a-class")
    assert "not in this episode" in state.error
    assert state.episode == episode


def test_too_few_shots_is_reported(state):
    state.n_shot = 50
    state.resample(1)
    assert "n_shot + n_query" in state.error and "lower n_shot" in state.error


def test_pool_filters_by_class_and_metadata(state):
    cls = state.episode.classes[0]
    pool = state.pool(cls, site="B")
    assert len(pool) > 0
    assert (pool["class"] == cls).all() and (pool["site"] == "B").all()
    used = set(state.episode.support_ids) | set(state.episode.query_ids)
    assert not used & set(pool.sample_id)


def test_attribution_cache_is_keyed_by_model_episode_query_method_and_target(state):
    explain = state.explanations
    a = explain.attribution("saliency", 0)
    assert explain.attribution("saliency", 0) is a
    assert explain.attribution("saliency", 1) is not a
    assert explain.attribution("saliency", 0, target=0 if a.targets[0] != 0 else 1) is not a
    state.resample()
    assert explain.attribution("saliency", 0) is not a
    assert a.normalized.shape == (1, 32, 32)
    assert np.abs(a.normalized).max() <= 1.0 + 1e-6


def test_influence_and_nearest_support(state):
    table = state.explanations.influence(0)
    assert len(table) == len(state.episode.support_ids)
    assert set(table.sample_id) == set(state.episode.support_ids)
    assert table["influence"].abs().is_monotonic_decreasing
    near = state.explanations.nearest_support(0, k=3)
    assert near["distance"].is_monotonic_increasing and len(near) == 3


def test_save_and_restore_reopen_the_same_view(state, tmp_path, synthetic_images):
    state.swap_support(1, state.pool(state.episode.classes[state.episode.support_labels[1]]).sample_id[0])
    state.select_query(2)
    state.methods = ["saliency", "gradcam"]
    state.contrast = "runner_up"
    path = state.save(tmp_path / "state.json")
    data = json.loads(path.read_text())
    assert data["model_fingerprint"] == state.fingerprint
    assert data["episode"]["episode_id"] == state.episode.episode_id
    other = WorkbenchState()
    other.restore(path, images=synthetic_images, model=state.model)
    assert other.episode == state.episode
    assert other.query_index == 2 and other.methods == ["saliency", "gradcam"] and other.contrast == "runner_up"
    np.testing.assert_allclose(other.result.logits, state.result.logits, rtol=1e-5)


def test_restore_refuses_a_file_that_is_not_a_state(state, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(Exception, match="not a workbench state"):
        state.restore(bad)


def test_projection_pca_is_fixed_between_edits_and_tsne_runs(state):
    proj = Projection("pca").fit(np.random.default_rng(0).normal(size=(20, 6)))
    x = np.random.default_rng(1).normal(size=(4, 6))
    np.testing.assert_allclose(proj.transform(x), proj.transform(x))
    state.set_projection("tsne")
    assert state.error == "" and state.result.projection == "tsne"
    assert state.result.query_xy.shape == (state.episode.n_query, 2)
    with pytest.raises(Exception, match="unknown projection"):
        Projection("umap")


def test_evaluate_many_and_open_case(state):
    table = state.evaluate_many(6)
    assert table["episode"].nunique() == 6
    assert state.evaluate_many(6) is table  # cached
    row = table.iloc[7]
    state.open_case(int(row.episode), int(row.query_index))
    assert state.error == ""
    assert state.episode.query_ids[state.query_index] == row.sample_id


def test_edits_and_explanations_never_change_the_model(state):
    weights = state.fingerprint
    fitted = state.fitted
    protos = fitted.prototypes_.clone()
    state.explanations.attribution("saliency", 0)
    state.explanations.influence(0)
    state.evaluate_many(3)
    label = state.episode.support_labels[0]
    state.swap_support(0, state.pool(state.episode.classes[label]).sample_id[0])
    state.add_support(state.pool().sample_id[0], 1)
    state.confirm_query(0)
    assert state.error == ""
    # every edit swapped in a new fitted episode; the first one and the model are as they were
    assert state.fitted is not fitted and torch.equal(fitted.prototypes_, protos)
    assert state.model.fingerprint() == weights
    assert not [k for k in vars(state.model) if k.endswith("_") and not k.startswith("_")]


def test_a_transductive_model_is_explained_frozen_with_its_queries(synthetic_images):
    from fsl_xai.models import make_backbone, make_model

    torch.manual_seed(0)
    model = make_model("transductive", make_backbone("conv4", 1, 32, width=8)).eval()
    s = WorkbenchState(n_way=3, n_shot=3, n_query=3).load("synthetic", images=synthetic_images, model=model)
    assert s.error == ""
    frozen = s.explanations.fitted()
    assert frozen is not s.fitted and "refined_prototypes" in frozen.extras_
    q = s.embeddings(s.episode.query_indices(s.images))
    # frozen with this episode's queries: one query alone scores as it does among all of them
    with torch.no_grad():
        torch.testing.assert_close(frozen.logits_from_embeddings(q[:1]), frozen.logits_from_embeddings(q)[:1])
        np.testing.assert_allclose(frozen.logits_from_embeddings(q).numpy(), s.result.logits, rtol=1e-5, atol=1e-5)
    assert s.explanations.attribution("saliency", 0).normalized.shape == (1, 32, 32)
