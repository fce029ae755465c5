"""The support-set randomisation check: perturbed support sets built without touching the fitted
episode, and a trained model's maps told apart from a map that ignores the support set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_xai.errors import DataError
from fsl_xai.explain.quality import (
    SUPPORT_VARIANTS,
    perturbed_support,
    shuffled_labels,
    support_check,
    support_check_summary,
)
from fsl_xai.intervals import mean_interval

from ._helpers import edge_detector, episode_for, fitted, make_model, query_intensity, shapes_imageset, zero_maps


def state_of(episode):
    return (episode.fingerprint(), episode.prototypes_.clone(), episode.support_labels_.clone(),
            episode.support_embeddings_.clone())


def same_state(episode, state):
    fp, protos, labels, emb = state
    return (episode.fingerprint() == fp and torch.equal(episode.prototypes_, protos)
            and torch.equal(episode.support_labels_, labels) and torch.equal(episode.support_embeddings_, emb))


def test_shuffled_labels_keep_the_counts_and_move_a_typical_share():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    for seed in range(5):
        shuffled = shuffled_labels(labels, seed)
        assert torch.equal(torch.bincount(shuffled), torch.bincount(labels))
        assert (shuffled != labels).float().mean() >= 1 - 1 / 3 - 1e-9
        assert torch.equal(shuffled_labels(labels, seed), shuffled)  # seeded
    # one image per class of two classes: the only other permutation is the swap
    assert shuffled_labels(torch.tensor([0, 1]), 0).tolist() == [1, 0]
    with pytest.raises(DataError, match="two classes"):
        shuffled_labels(torch.tensor([0, 0]))


def test_perturbed_support_refits_without_changing_the_fitted_episode():
    f, q, _, _ = fitted(n_shot=3)
    before = state_of(f)
    shuffled = perturbed_support(f, "shuffled_labels", seed=0)
    assert shuffled is not f and shuffled.model is f.model
    expected = f.model.fit_embeddings(f.support_embeddings_, shuffled_labels(f.support_labels_, 0))
    torch.testing.assert_close(shuffled.prototypes_, expected.prototypes_, rtol=0, atol=0)
    # without other images, class k gets the images of class k + 1: its prototype is that class's
    nxt = perturbed_support(f, "other_images")
    torch.testing.assert_close(nxt.prototypes_, f.prototypes_[[1, 2, 0]])
    assert torch.equal(nxt.support_labels_, f.support_labels_)
    # images of a class outside the episode: the prototypes are means of their embeddings
    images = shapes_imageset(n_classes=4, n_per_class=12)
    others = torch.from_numpy(images.images[images.labels == 3])
    foreign = perturbed_support(f, "other_images", others, seed=1)
    with torch.no_grad():
        emb = f.embed(others)
    drawn = torch.randperm(len(others), generator=torch.Generator().manual_seed(1))[:len(f.support_labels_)]
    torch.testing.assert_close(foreign.prototypes_,
                               f.model.compute_prototypes(emb[drawn], f.support_labels_), rtol=1e-5, atol=1e-6)
    # fewer other images than support images: drawn with replacement, still one per support image
    few = perturbed_support(f, "other_images", others[:2], seed=0)
    assert len(few.support_labels_) == len(f.support_labels_)
    assert same_state(f, before)
    with pytest.raises(DataError, match="unknown support perturbation"):
        perturbed_support(f, "noise")


def test_support_check_passes_trained_maps_and_flags_support_blind_maps(trained):
    model = trained["model"]
    q = trained["queries"][:12]
    before = state_of(model)
    sal = support_check(model, q, "saliency", seed=0)
    assert sal.variants == SUPPORT_VARIANTS and sal.spearman_abs.shape == sal.spearman_signed.shape == (2, 12)
    assert sal.passed and sal.statuses == ("passed", "passed") and sal.threshold == 0.9
    # measured 0.38-0.43 on the test machine: well below the threshold on any CPU
    for variant in SUPPORT_VARIANTS:
        interval = mean_interval(sal.spearman(variant), method="t")
        assert interval.n == 12 and interval.high < 0.8, (variant, interval)
    ig = support_check(model, q, "integrated_gradients", contrasts="runner_up", seed=0, n_steps=8)
    assert ig.passed and np.nanmean(ig.spearman_abs) < 0.8
    for blind in (query_intensity, edge_detector):
        res = support_check(model, q, blind, seed=0)
        np.testing.assert_allclose(res.spearman_abs, 1.0)
        assert res.status == "failed" and res.statuses == ("failed", "failed") and not res.passed
    # images of a class the model never saw in this episode (vertical bars) in place of the support set
    bars = torch.from_numpy(shapes_imageset(n_classes=4, n_per_class=20, size=32).select_classes(["shape3"]).images)
    foreign = support_check(model, q, "saliency", other_images=bars, variants=["other_images"], seed=0)
    assert foreign.other_images and foreign.passed and np.nanmean(foreign.spearman_abs) < 0.8
    assert support_check(model, q, query_intensity, other_images=bars, variants=["other_images"]).status == "failed"
    frame = sal.to_frame()
    assert list(frame["variant"]) == list(SUPPORT_VARIANTS) and (frame["n"] == 12).all()
    assert ((frame["spearman_abs_ci_low"] <= frame["spearman_abs"]) &
            (frame["spearman_abs"] <= frame["spearman_abs_ci_high"])).all()
    again = support_check(model, q, "saliency", seed=0)
    np.testing.assert_array_equal(again.spearman_abs, sal.spearman_abs)  # bit-identical when repeated
    assert same_state(model, before)


def test_support_check_on_flat_maps_is_undefined_and_one_variant_can_be_asked_for(trained):
    model = trained["model"]
    q = trained["queries"][:3]
    res = support_check(model, q, zero_maps)
    assert np.isnan(res.spearman_abs).all() and res.status == "undefined" and not res.passed
    only = support_check(model, q, "saliency", variants=["other_images"])
    assert only.variants == ("other_images",) and only.spearman_abs.shape == (1, 3)
    with pytest.raises(KeyError, match="shuffled_labels"):
        only.spearman("shuffled_labels")
    with pytest.raises(DataError, match="variants"):
        support_check(model, q, "saliency", variants=["colour"])


def test_summary_resamples_whole_episodes():
    images = shapes_imageset(n_per_class=8)
    model = make_model()
    results, blind = [], []
    for seed in range(4):
        s, sl, q, _ = episode_for(images, n_shot=2, n_query=2, seed=seed).tensors(images)
        episode = model.fit(s, sl)
        results.append(support_check(episode, q, "saliency", seed=seed))
        blind.append(support_check(episode, q, query_intensity, seed=seed))
    summary = support_check_summary(results, n_boot=500)
    assert list(summary["variant"]) == list(SUPPORT_VARIANTS)
    assert (summary["episodes"] == 4).all() and (summary["n"] == 24).all() and (summary["n_undefined"] == 0).all()
    assert summary["few_episodes"].all()  # 4 < MIN_EPISODES: flagged
    for i, row in summary.iterrows():
        pooled = np.nanmean(np.concatenate([r.spearman_abs[i] for r in results]))
        assert row["spearman_abs"] == pytest.approx(pooled)
        assert row["ci_low"] <= row["spearman_abs"] <= row["ci_high"]
        assert row["ci_method"].startswith("cluster_bootstrap")
        assert row["status"] == ("passed" if pooled < 0.9 else "failed")
    flagged = support_check_summary(blind, n_boot=200)
    assert (flagged["status"] == "failed").all() and flagged["spearman_abs"].to_numpy() == pytest.approx(1.0)
    with pytest.raises(DataError, match="at least one episode"):
        support_check_summary([])
    other = support_check(model.fit(s, sl), q, "saliency", threshold=0.5)
    with pytest.raises(DataError, match="one method with one threshold"):
        support_check_summary([results[0], other])
