"""Support-set explanations: exact leave-one-out influence, support-pixel attribution, similarity
maps and nearest support patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_xai.errors import DataError, EpisodeError, ModelError
from fsl_xai.explain import (
    SupportInfluence,
    leave_one_out_logits,
    nearest_support,
    similarity_map,
    support_attribution,
    support_influence,
)

from ._helpers import episode_for, fitted, make_model, shapes_imageset


def brute_force_margins(model, support, labels, query, target, contrast=None):
    """Fit the model from scratch without each support image and score the query: the margin
    against ``contrast``, or against the best other class when None."""
    out = []
    for i in range(len(support)):
        keep = torch.arange(len(support)) != i
        if (labels[keep] == labels[i]).sum() == 0:
            out.append(np.nan)
            continue
        with torch.no_grad():
            logits = model.fit(support[keep], labels[keep])(query)[0]
        other = logits[contrast] if contrast is not None else torch.cat([logits[:target], logits[target + 1:]]).max()
        out.append(float(logits[target] - other))
    return np.array(out)


def state_of(fitted):
    """Everything a fitted episode holds, as copies (to check that nothing was changed)."""
    tensors = {f"model.{k}": v.clone() for k, v in fitted.model.state_dict().items()}
    tensors |= {k: getattr(fitted, k).clone() for k in ("prototypes_", "support_embeddings_", "support_labels_")}
    return tensors


def assert_unchanged(fitted, before):
    after = state_of(fitted)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", ["protonet", "protonet-cosine", "simpleshot", "matching"])
def test_leave_one_out_influence_equals_a_brute_force_refit(kind):
    name, kwargs = {"protonet": ("protonet", {}), "protonet-cosine": ("protonet", {"distance": "cosine"}),
                    "simpleshot": ("simpleshot", {}), "matching": ("matching", {})}[kind]
    images = shapes_imageset(n_per_class=6)
    episode = episode_for(images, n_shot=3, n_query=1)
    s, sl, q, _ = episode.tensors(images)
    model = make_model("conv4", 1, 32, model=name, **kwargs)
    fit = model.fit(s, sl)
    before = state_of(fit)
    result = support_influence(fit, query_image=q[0], sample_ids=episode.support_ids, class_names=episode.classes)
    assert isinstance(result, SupportInfluence)
    table, t, c = result.table, result.target, result.contrast
    with torch.no_grad():
        logits = fit(q[:1])
    assert t == int(logits.argmax()) and c == int(logits[0].topk(2).indices[1])
    assert result.margin_full == pytest.approx(float(logits[0, t] - logits[0, c]), rel=1e-5, abs=1e-6)
    assert (table["margin_full"] == result.margin_full).all()
    expected = brute_force_margins(model, s, sl, q[:1], t)
    by_index = table.set_index("support_index").sort_index()
    np.testing.assert_allclose(by_index["margin_without"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    full = float(logits[0, t] - logits[0, c])
    np.testing.assert_allclose(by_index["influence"].to_numpy(), full - expected, rtol=1e-4,
                               atol=1e-6 * max(1.0, abs(full)))
    # ranked by |influence|, signed, with ids and class names
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    mag = np.abs(table["influence"].to_numpy())
    assert (np.diff(mag) <= 1e-12).all()
    assert list(by_index["sample_id"]) == list(episode.support_ids)
    assert set(table["class"]) == set(episode.classes)
    # a fixed pair: the same, against that class in every refit
    other = 3 - t - c  # the third class
    fixed = support_influence(fit, query_image=q[0], contrast=other).table.set_index("support_index").sort_index()
    np.testing.assert_allclose(fixed["margin_without"].to_numpy(), brute_force_margins(model, s, sl, q[:1], t, other),
                               rtol=1e-4, atol=1e-6)
    assert (fixed["contrast_without"] == other).all()
    assert_unchanged(fit, before)


def test_only_image_of_a_class_is_reported_undefined():
    images = shapes_imageset(n_per_class=6)
    episode = episode_for(images, n_shot=2, n_query=1)
    s, sl, q, _ = episode.tensors(images)
    # drop one image of class 2 so that it has a single support image
    keep = torch.tensor([i for i in range(len(sl)) if not (sl[i] == 2 and i == int(torch.nonzero(sl == 2)[0]))])
    model = make_model("conv4", 1, 32).fit(s[keep], sl[keep])
    table = support_influence(model, query_image=q[0]).table
    single = table[table["label"] == 2]
    assert len(single) == 1 and np.isnan(single["influence"].iloc[0])
    assert "only support image of its class" in single["note"].iloc[0]
    assert table["rank"].iloc[-1] == len(table) and np.isnan(table["influence"].iloc[-1])  # undefined rows last
    assert np.isfinite(table.loc[table["label"] != 2, "influence"]).all()


def test_influence_flags_a_mislabelled_support_image():
    """A support image given the wrong label drags that class's prototype towards the query's class:
    for queries of its true class it must have the most negative influence... or flip the decision."""
    images = shapes_imageset(n_per_class=8)
    episode = episode_for(images, n_shot=4, n_query=3)
    s, sl, q, ql = episode.tensors(images)
    wrong = int(torch.nonzero(sl == 0)[0])
    sl_bad = sl.clone()
    sl_bad[wrong] = 1  # a class-0 image labelled as class 1
    model = make_model("conv4", 1, 32).fit(s, sl_bad)
    for j in torch.nonzero(ql == 0).flatten().tolist():
        table = support_influence(model, query_image=q[j], target=0, contrast=1).table
        row = table[table["support_index"] == wrong].iloc[0]
        assert row["influence"] < 0  # it pulls class 1 towards class-0 queries
        assert row["influence"] == table["influence"].min()


def test_leave_one_out_logits_for_many_queries():
    model, q, _, _ = fitted("conv4", 1, n_shot=3)
    with torch.no_grad():
        qe = model.embed(q)
    loo = leave_one_out_logits(model, qe)
    assert loo.shape == (len(model.support_labels_), len(q), 3)
    single = support_influence(model, query_embedding=qe[4])
    t, c = single.target, single.contrast
    by_index = single.table.set_index("support_index").sort_index()
    np.testing.assert_allclose((loo[:, 4, t] - loo[:, 4, c]).numpy(), by_index["margin_without"].to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("backbone,channels", [("conv4", 1), ("resnet12", 3)])
def test_support_pixel_attribution(backbone, channels):
    model, q, episode, images = fitted(backbone, channels)
    s, sl, _, _ = episode.tensors(images)
    before = state_of(model)
    sal = support_attribution(model, s, q[0], method="saliency")
    assert sal.attributions.shape == tuple(s.shape) and sal.maps.shape == (len(s), 32, 32)
    assert np.isfinite(sal.attributions).all() and np.abs(sal.maps).max() > 0
    # the same gradient by hand, through model.episode_logits (prototypes recomputed from the pixels)
    x = s.clone().requires_grad_(True)
    grad = torch.autograd.grad(model.model.episode_logits(x, sl, q[:1])[0, sal.target], x)[0]
    np.testing.assert_allclose(sal.attributions, grad.numpy(), rtol=1e-4, atol=1e-6 * grad.abs().max().item())
    # only the images of the target class move its prototype; the others get no gradient
    other = np.array(sal.support_labels) != sal.target
    assert np.abs(sal.attributions[other]).max() == 0
    # IG completeness over the joint path (all support images from black to themselves)
    ig = support_attribution(model, s, q[0], method="integrated_gradients", contrast="runner_up", n_steps=32)
    with torch.no_grad():
        at_base = model.model.episode_logits(torch.zeros_like(s), sl, q[:1])[0]
    delta = ig.explained - float(at_base[ig.target] - at_base[ig.contrast])
    np.testing.assert_allclose(ig.attributions.sum(), delta, rtol=0.03, atol=1e-3 * abs(delta))
    again = support_attribution(model, s, q[0], method="integrated_gradients", contrast="runner_up", n_steps=32)
    np.testing.assert_array_equal(ig.attributions, again.attributions)
    assert_unchanged(model, before)
    # the support images must be the ones the episode was fitted with
    with pytest.raises(DataError, match="fitted with"):
        support_attribution(model, s.flip(0), q[0], method="saliency")
    with pytest.raises(DataError, match="fitted with"):
        support_attribution(model, s[:-1], q[0], method="saliency")


def test_similarity_map_conv4_is_positionwise_and_sums_to_the_logit():
    model, q, _, _ = fitted("conv4", 1, size=64)
    sim = similarity_map(model, q[0], measure="neg_sqdist")
    assert sim.positionwise and sim.maps.shape == (3, 64, 64) and sim.low_res.shape == (3, 4, 4)
    with torch.no_grad():
        logits = model(q[:1])[0].numpy()
    # minus squared distance, summed over positions, is the ProtoNet logit itself
    np.testing.assert_allclose(sim.low_res.reshape(3, -1).sum(1), logits, rtol=1e-4)
    cos = similarity_map(model, q[0], cls=1)
    assert cos.classes == (1,) and cos.maps.shape == (1, 64, 64)
    assert cos.low_res.min() >= -1 - 1e-6 and cos.low_res.max() <= 1 + 1e-6
    y, x = cos.peaks[0]
    iy, ix = np.unravel_index(cos.low_res[0].argmax(), (4, 4))
    assert (y // 16, x // 16) == (iy, ix)


def test_similarity_map_pooled_backbone():
    model, q, _, _ = fitted("resnet12", 3)
    sim = similarity_map(model, q[0])
    assert not sim.positionwise and sim.maps.shape == (3, 32, 32) and np.isfinite(sim.maps).all()
    with torch.no_grad():
        fmap = model.backbone.feature_map(q[:1])[0]
    p = model.prototypes_[2]
    expected = torch.nn.functional.cosine_similarity(fmap, p[:, None, None], dim=0)
    np.testing.assert_allclose(sim.low_res[2], expected.numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(EpisodeError, match=r"0\.\.2"):
        similarity_map(model, q[0], cls=5)


def test_nearest_support_finds_itself_and_matching_patches():
    images = shapes_imageset(n_per_class=6)
    episode = episode_for(images, n_shot=3, n_query=1)
    s, sl, _, _ = episode.tensors(images)
    for backbone in ("conv4", "resnet12"):
        model = make_model(backbone, 1, 32).fit(s, sl)
        table = nearest_support(model, s[4], k=4, support_images=s, sample_ids=episode.support_ids,
                                class_names=episode.classes)
        assert len(table) == 4 and list(table["rank"]) == [1, 2, 3, 4]
        assert table["support_index"].iloc[0] == 4 and abs(table["distance"].iloc[0]) < 1e-4
        assert table["sample_id"].iloc[0] == episode.support_ids[4]
        assert (np.diff(table["distance"]) >= 0).all()
        assert table["patch_similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)
        assert table["query_box"].iloc[0] == table["support_box"].iloc[0]
        y0, x0, y1, x1 = table["support_box"].iloc[1]
        assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32
    # a pooled backbone without the support images: ranks, but no patches
    table = nearest_support(model, s[4], k=2)
    assert table["query_box"].isna().all() and np.isnan(table["patch_similarity"]).all()
    with pytest.raises(ModelError, match=r"model\.fit\("):
        nearest_support(make_model("conv4", 1, 32), s[0])
    with pytest.raises(ModelError, match=r"model\.fit\("):
        similarity_map(make_model("conv4", 1, 32), s[0])
    with pytest.raises(ModelError, match=r"model\.fit\("):
        support_influence(make_model("conv4", 1, 32), query_image=s[0])
