"""TCAV: concept activation vectors, scores, significance, and the spurious-marker check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_xai.data.synthetic import make_synthetic, marker_box
from fsl_xai.errors import DataError, ModelError
from fsl_xai.explain import resolve_layer
from fsl_xai.explain.concepts import (
    _logistic_direction,
    concept_activation_vector,
    draw_patch,
    layer_activations,
    layer_gradients,
    tcav,
)
from fsl_xai.models import make_backbone, make_model
from fsl_xai.testing import tiny_model
from fsl_xai.training import pretrain

SIZE = 32


def _site_a(biased: bool, seed: int):
    """The synthetic set's site A, 3 classes; with ``biased`` every class-0 image carries the marker."""
    return make_synthetic(n_per_class=60, size=SIZE, n_classes=3, seed=seed, spurious_marker=biased,
                          marker_site="A", marker_class=0, split="all").where(site="A")


def _trained_protonet(images, seed: int):
    """A Conv-4 ProtoNet pre-trained for a few seconds on these images, fitted on them as support."""
    backbone = make_backbone("conv4", in_channels=1, image_size=SIZE, width=16)
    pretrain(backbone, images, epochs=8, batch_size=16, lr=3e-3, seed=seed, progress=False)
    model = make_model("protonet", backbone).eval()
    return model.fit(torch.from_numpy(images.images), torch.from_numpy(images.labels))


@pytest.fixture(scope="module")
def marker_study():
    """Two models from the same site: one trained (and supported) on images where class 0 always
    shows the marker, one on the same images without it; clean queries and concept examples."""
    seed = 0
    biased, clean = _site_a(True, seed), _site_a(False, seed)
    split = clean.metadata["split"].to_numpy()
    train = np.flatnonzero(split == "train")
    assert biased.metadata["marker"].to_numpy()[train].sum() == (biased.labels[train] == 0).sum() > 0
    models = {"biased": _trained_protonet(biased.subset(train), seed),
              "clean": _trained_protonet(clean.subset(train), seed)}
    test, val = clean.subset(np.flatnonzero(split == "test")), clean.subset(np.flatnonzero(split == "val"))
    concept = draw_patch(val.images[:20], *marker_box(SIZE), 0.96)   # the marker drawn on ordinary images
    return {"models": models, "queries": test.images, "labels": test.labels, "concept": concept,
            "random": val.images[20:], "class_names": clean.class_names}


def test_tcav_shows_that_only_the_biased_model_uses_the_marker(marker_study):
    tables = {}
    for name, model in marker_study["models"].items():
        tables[name] = tcav(model, {"marker": marker_study["concept"]}, marker_study["queries"],
                            marker_study["random"], query_labels=marker_study["labels"], n_repeats=20, seed=0,
                            class_names=marker_study["class_names"])
    biased = tables["biased"].set_index("class")
    clean = tables["clean"].set_index("class")
    assert list(tables["biased"].columns[:4]) == ["concept", "class", "class_name", "n_queries"]
    assert biased.loc[0, "class_name"] == "round" and biased.loc[0, "n_queries"] == (marker_study["labels"] == 0).sum()
    # the biased model: the marker pushes every class-0 query towards class 0, far beyond random directions
    assert biased.loc[0, "significant"] and biased.loc[0, "direction"] == "+"
    assert biased.loc[0, "tcav_score"] > 0.9 and biased.loc[0, "p_adjusted"] < 0.01
    # the clean model: no evidence for class 0
    assert not clean.loc[0, "significant"] and clean.loc[0, "p_adjusted"] > 0.1
    # the marker is linearly visible in both models' activations: the difference is in the use
    assert biased.loc[0, "cav_accuracy"] > 0.8 and clean.loc[0, "cav_accuracy"] > 0.7
    assert len(biased.loc[0, "scores"]) == len(biased.loc[0, "random_scores"]) == 20


def test_tcav_is_deterministic_and_seed_dependent(marker_study):
    model = marker_study["models"]["clean"]
    args = (model, marker_study["concept"], marker_study["queries"][:30], marker_study["random"])
    a = tcav(*args, query_labels=marker_study["labels"][:30], n_repeats=4, seed=3)
    b = tcav(*args, query_labels=marker_study["labels"][:30], n_repeats=4, seed=3)
    c = tcav(*args, query_labels=marker_study["labels"][:30], n_repeats=4, seed=4)
    assert a.equals(b)
    assert a["random_scores"].tolist() != c["random_scores"].tolist()
    assert set(a["concept"]) == {"concept"} and len(a) == 3
    # predicted labels when none are given; one class only when asked
    only = tcav(*args, n_repeats=3, classes=[1], layer="blocks.2")
    assert list(only["class"]) == [1] and only["layer"].iloc[0] == "backbone.blocks.2"


def test_logistic_cav_matches_scikit_learn_and_points_to_the_concept():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 120)) * 2 + 3
    y = np.r_[np.ones(20), np.zeros(20)]
    X[y == 1, :3] += 1.5
    w, b = _logistic_direction(X, y, 1.0)
    mu = X.mean(0)
    scale = np.sqrt(((X - mu) ** 2).sum(1).mean())
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit((X - mu) / scale, y)
    np.testing.assert_allclose(w, ref.coef_[0] / scale, rtol=1e-4, atol=1e-8)
    cav, acc = concept_activation_vector(X[y == 1], X[y == 0], seed=0)
    assert np.linalg.norm(cav) == pytest.approx(1.0) and cav[:3].min() > 0 and acc > 0.7
    mean_cav, _ = concept_activation_vector(X[y == 1], X[y == 0], method="mean")
    assert float(mean_cav @ cav) > 0.3


def test_layer_activations_and_gradients_match_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    model = tiny_model(channels=1, size=16, seed=0).fit(torch.rand(6, 1, 16, 16, generator=g),
                                                        torch.tensor([0, 0, 1, 1, 2, 2]))
    x = torch.rand(5, 1, 16, 16, generator=g)
    name, module = resolve_layer(model, "blocks.3")
    assert name == "backbone.blocks.3" and resolve_layer(model)[0] == "backbone.blocks.3"
    assert resolve_layer(model.model, "backbone.blocks.3") == (name, module) == resolve_layer(model, module)
    acts = layer_activations(model, x, "blocks.3")
    with torch.no_grad():
        torch.testing.assert_close(acts, model.embed(x))  # Conv-4 embeds by flattening the last block
    grads = layer_gradients(model, x, [0, 2], "blocks.3")
    # logit k = -|e - p_k|^2, so its gradient with respect to the embedding is 2 (p_k - e)
    torch.testing.assert_close(grads[1], 2 * (model.prototypes_[2] - acts), rtol=1e-4, atol=1e-5)


def test_tcav_bad_input_is_a_clear_error():
    unfitted = tiny_model(channels=1, size=16, seed=0)
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ModelError, match=r"model\.fit\("):
        tcav(unfitted, x[:3], x, x)
    model = unfitted.fit(x[:4], torch.tensor([0, 0, 1, 1]))
    with pytest.raises(DataError, match="random pool"):
        tcav(model, x[:3], x, x[:4])
    with pytest.raises(ModelError, match="unknown layer"):
        tcav(model, x[:3], x, torch.rand(10, 1, 16, 16), layer="blocks.9")
    with pytest.raises(DataError, match="n_repeats"):
        tcav(model, x[:3], x, torch.rand(10, 1, 16, 16), n_repeats=1)
    with pytest.raises(ModelError, match="not in this episode"):
        tcav(model, x[:3], x, torch.rand(10, 1, 16, 16), classes=[5])
    with pytest.raises(DataError, match="at least 2 example"):
        tcav(model, x[:1], x, torch.rand(10, 1, 16, 16))
