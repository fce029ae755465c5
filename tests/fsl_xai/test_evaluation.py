"""Many-episode evaluation from cached embeddings, on the real PBC and HAM10000 test splits."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fsl_xai.data.npz import read_npz
from fsl_xai.episodes import EpisodeSampler
from fsl_xai.errors import DataError, EpisodeError, ModelError
from fsl_xai.evaluation import clear_embedding_cache, embed_all, evaluate
from fsl_xai.models import MODELS, make_backbone, make_model

FIXED = ["episode", "episode_id", "query_index", "sample_id", "true_label", "pred_label", "true_class",
         "pred_class", "correct", "margin", "true_margin"]
MODEL_OPTIONS = {"finetune": {"steps": 20}}


@pytest.fixture(scope="module")
def pbc(shared_file):
    return read_npz(shared_file("pbc_blood/pbc_bloodlike_28.npz"), split="test")


@pytest.fixture(scope="module")
def ham(shared_file):
    return read_npz(shared_file("ham10000_subset/ham_subset_28.npz"), split="test")


def build(name: str = "protonet", channels: int = 3, seed: int = 0, base=None):
    """An untrained, seeded Conv-4 (narrow, BatchNorm in eval mode) inside a registered model."""
    torch.manual_seed(seed)
    backbone = make_backbone("conv4", in_channels=channels, image_size=28, width=16)
    model = make_model(name, backbone, **MODEL_OPTIONS.get(name, {})).eval()
    if name == "simpleshot" and base is not None:
        model.fit_base(embed_all(model, base, progress=False))
    return model


def test_pbc_test_split_is_the_expected_real_data(pbc):
    assert len(pbc) == 3417 and pbc.n_classes == 8 and pbc.images.shape[1:] == (3, 28, 28)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_evaluation_equals_naive_per_episode_evaluation(pbc, name):
    model = build(name, base=pbc.subset(np.arange(0, len(pbc), 7)))
    result = evaluate(model, pbc, n_way=3, n_shot=5, n_query=4, episodes=3, seed=11, progress=False)
    table = result.predictions
    sampler = EpisodeSampler(pbc, 3, 5, 4, seed=11)
    naive = build(name, base=pbc.subset(np.arange(0, len(pbc), 7)))
    for i in range(3):
        episode = sampler.sample(i)
        support, support_labels, query, query_labels = episode.tensors(pbc)
        with torch.no_grad():
            logits = naive.fit(support, support_labels)(query)
        rows = table[table.episode == i]
        assert rows.sample_id.tolist() == list(episode.query_ids)
        assert rows.true_label.tolist() == query_labels.tolist()
        dists = rows[[f"dist_{c}" for c in episode.classes]].to_numpy()
        np.testing.assert_allclose(dists, -logits.double().numpy(), rtol=1e-4, atol=1e-4)
        assert rows.pred_label.tolist() == logits.argmax(1).tolist()
        assert set(rows.episode_id) == {episode.episode_id}


def test_table_columns_and_invariants(pbc):
    result = evaluate(build(), pbc, n_way=3, n_shot=5, n_query=15, episodes=20, seed=0, progress=False)
    t = result.predictions
    dist_cols = [f"dist_{c}" for c in pbc.class_names]
    assert list(t.columns) == FIXED + dist_cols + ["filenames", "split"]
    assert len(t) == 20 * 45 == result.n_queries
    assert t.episode.tolist() == np.repeat(np.arange(20), 45).tolist()
    assert t.query_index.tolist() == np.tile(np.arange(45), 20).tolist()
    assert t.correct.dtype == bool and (t.correct == (t.pred_label == t.true_label)).all()
    # the stored class names agree with the images' own labels
    truth = np.asarray(pbc.class_names)[pbc.labels[pbc.indices_of(t.sample_id)]]
    assert (t.true_class.to_numpy() == truth).all()
    # exactly the episode's classes have a distance; the predicted class has the smallest
    dists = t[dist_cols].to_numpy()
    assert (np.isfinite(dists).sum(1) == 3).all()
    pred_col = [dist_cols.index(f"dist_{c}") for c in t.pred_class]
    np.testing.assert_allclose(dists[np.arange(len(t)), pred_col], np.nanmin(dists, 1))
    true_col = [dist_cols.index(f"dist_{c}") for c in t.true_class]
    logits = -dists
    true_logit = logits[np.arange(len(t)), true_col]
    masked = logits.copy()
    masked[np.arange(len(t)), true_col] = np.nan
    np.testing.assert_allclose(t.true_margin, true_logit - np.nanmax(masked, 1))
    srt = np.sort(np.where(np.isfinite(logits), logits, -np.inf), 1)
    np.testing.assert_allclose(t.margin, srt[:, -1] - srt[:, -2])
    assert (t.margin >= 0).all()
    assert ((t.true_margin < 0) == ~t.correct).all()
    # episode ids are the sampler's
    sampler = EpisodeSampler(pbc, 3, 5, 15, seed=0)
    ids = t.groupby("episode").episode_id.first()
    assert ids.tolist() == [sampler.sample(i).episode_id for i in range(20)]
    assert result.episode(7).episode_id == ids[7]
    # the metadata columns are the images' own rows
    by_id = pbc.metadata.set_index("sample_id")
    assert (t.filenames.to_numpy() == by_id.loc[t.sample_id, "filenames"].to_numpy()).all()


def test_accuracy_and_ci_formula(pbc):
    result = evaluate(build(), pbc, n_way=3, n_shot=1, n_query=5, episodes=30, seed=2, progress=False)
    per = result.per_episode
    assert per.shape == (30,)
    np.testing.assert_allclose(per, result.predictions.groupby("episode").correct.mean().to_numpy())
    assert result.accuracy == pytest.approx(per.mean())
    half = 1.96 * per.std(ddof=1) / math.sqrt(30)
    assert half > 0
    assert result.half_width == pytest.approx(half)
    assert result.ci95 == pytest.approx((per.mean() - half, per.mean() + half))
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {k: d[k] for k in ("episodes", "n_way", "n_shot", "n_query", "model", "dataset")} == {
        "episodes": 30, "n_way": 3, "n_shot": 1, "n_query": 5, "model": "protonet", "dataset": pbc.name}
    assert d["ci95"] == pytest.approx(list(result.ci95))
    assert "95% CI" in result.summary() and "n = 450" in result.summary()


def test_accuracy_interval_is_the_normal_interval_over_episodes(pbc):
    """The hand-computed values of the interval live in tests/fsl_xai/test_intervals.py; here the
    result's interval is that function applied to the per-episode accuracies."""
    result = evaluate(build(), pbc, 3, 1, 2, episodes=6, progress=False)
    acc = result.per_episode
    half = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc))
    assert result.accuracy == pytest.approx(acc.mean())
    assert result.ci95 == pytest.approx((acc.mean() - half, acc.mean() + half))
    assert result.half_width == pytest.approx(half)


def test_deterministic_and_seed_dependent(pbc):
    model = build()
    a = evaluate(model, pbc, 3, 5, 5, episodes=10, seed=5, progress=False)
    b = evaluate(build(), pbc, 3, 5, 5, episodes=10, seed=5, progress=False)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.per_episode, b.per_episode)
    c = evaluate(model, pbc, 3, 5, 5, episodes=10, seed=6, progress=False)
    assert not a.predictions.sample_id.equals(c.predictions.sample_id)


def test_classes_restrict_episodes(pbc):
    result = evaluate(build(), pbc, 2, 1, 3, episodes=5, seed=0, classes=["basophil", "ig", "platelet"],
                      progress=False)
    assert set(result.predictions.true_class) <= {"basophil", "ig", "platelet"}
    assert result.to_dict()["classes"] == ["basophil", "ig", "platelet"]
    assert result.predictions["dist_eosinophil"].isna().all()


def test_ham10000_metadata_joined(ham):
    result = evaluate(build(), ham, n_way=3, n_shot=1, n_query=5, episodes=4, seed=0, progress=False)
    t = result.predictions
    for column in ("sex", "age", "localization", "site", "image_id", "lesion_id", "dx_type"):
        assert column in t.columns
    assert list(t.columns).count("sample_id") == 1
    meta = ham.metadata.set_index("sample_id").loc[t.sample_id]
    for column in ("sex", "site", "localization"):
        assert (t[column].to_numpy() == meta[column].to_numpy()).all()
    np.testing.assert_array_equal(t.age.to_numpy(), meta.age.to_numpy())
    assert set(t.sex) <= {"male", "female", "unknown"}
    assert set(t.site) <= {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}


def test_errors_are_clear(pbc):
    model = build()
    with pytest.raises(EpisodeError, match="n_shot \\+ n_query"):
        evaluate(model, pbc, 3, 5, 400, episodes=2, progress=False)
    with pytest.raises(EpisodeError, match="only 8 classes"):
        evaluate(model, pbc, 9, 1, 1, episodes=2, progress=False)
    with pytest.raises(DataError, match="episodes"):
        evaluate(model, pbc, 3, 1, 1, episodes=0, progress=False)
    with pytest.raises(ModelError, match="channel"):
        evaluate(build(channels=1), pbc, 3, 1, 1, episodes=2, progress=False)
    with pytest.raises(DataError, match="batch_size"):
        embed_all(model, pbc, batch_size=0)


def test_evaluate_leaves_the_model_and_a_fitted_episode_unchanged(pbc):
    model = build("transductive")
    sup = torch.from_numpy(pbc.images[:4])
    fitted = model.fit(sup, torch.tensor([0, 0, 1, 1])).with_queries(torch.from_numpy(pbc.images[4:8]))
    before = {k: v.clone() for k, v in (("prototypes", fitted.prototypes_), ("support", fitted.support_embeddings_),
                                         ("refined", fitted.extras_["refined_prototypes"]))}
    weights = model.fingerprint()
    model.train()
    evaluate(model, pbc, 3, 1, 2, episodes=3, progress=False)
    assert torch.equal(before["prototypes"], fitted.prototypes_)
    assert torch.equal(before["support"], fitted.support_embeddings_)
    assert torch.equal(before["refined"], fitted.extras_["refined_prototypes"])
    assert not [k for k in vars(model) if k.endswith("_") and not k.startswith("_")]
    assert model.training  # the mode is restored too
    model.eval()
    assert model.fingerprint() == weights


def test_progress_bar(pbc, capsys):
    evaluate(build(), pbc, 3, 1, 2, episodes=3, progress=True)
    assert "evaluating protonet" in capsys.readouterr().err


class _Counter:
    def __init__(self, model):
        self.images = 0
        model.backbone.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.images += len(inputs[0])


def test_embed_all_embeds_once_and_tracks_weights(pbc):
    pbc = pbc.subset(np.arange(0, len(pbc), 5))  # every fifth image: all classes, less time
    model = build(seed=123)  # weights no other test uses: nothing cached yet
    model.train()
    count = _Counter(model)
    first = embed_all(model, pbc, batch_size=200)
    assert count.images == len(pbc) and first.shape == (len(pbc), model.backbone.out_dim)
    assert model.training
    with torch.no_grad():
        direct = model.eval().embed(torch.from_numpy(pbc.images[:10]))
    torch.testing.assert_close(first[:10], direct, atol=1e-5, rtol=1e-5)
    count.images = len(pbc)  # not counting the direct check
    first[:] = 0  # a copy: the cache is unchanged
    second = embed_all(model, pbc)
    assert count.images == len(pbc) and torch.isfinite(second).all() and second.abs().sum() > 0
    evaluate(model, pbc, 3, 5, 5, episodes=5, progress=False)
    assert count.images == len(pbc)  # evaluation reused the cache
    with torch.no_grad():
        model.backbone.blocks[0][0].weight.mul_(1.5)
    third = embed_all(model, pbc)
    assert count.images == 2 * len(pbc) and not torch.allclose(third, second)


def test_embed_all_disk_cache(pbc, cache_dir):
    small = pbc.subset(np.arange(200))
    model = build(seed=7)
    first = embed_all(model, small, cache=False, disk_cache=True)
    files = list((cache_dir / "embeddings").glob("*.pt"))
    assert len(files) == 1
    count = _Counter(model)
    again = embed_all(model, small, cache=False, disk_cache=True)
    assert count.images == 0
    torch.testing.assert_close(again, first)
    # a corrupt cache file is recomputed and replaced
    files[0].write_bytes(b"not a tensor")
    fixed = embed_all(model, small, cache=False, disk_cache=True)
    assert count.images == 200
    torch.testing.assert_close(fixed, first)


def test_simpleshot_base_mean_is_the_mean_base_embedding(pbc):
    base = pbc.subset(np.arange(300))
    a = build("simpleshot", base=base)
    torch.testing.assert_close(a.base_mean_, embed_all(build("simpleshot"), base, progress=False).mean(0))
    b = build("simpleshot", base=torch.from_numpy(base.images))  # a (N, C, H, W) tensor, as training passes
    torch.testing.assert_close(b.base_mean_, a.base_mean_)
    with pytest.raises(ModelError, match=r"embeddings \(n_base, D\).*embed_all"):
        build("simpleshot").fit_base(torch.from_numpy(base.images))
    r_centred = evaluate(a, pbc, 3, 5, 5, episodes=5, progress=False)
    r_plain = evaluate(build("simpleshot"), pbc, 3, 5, 5, episodes=5, progress=False)
    assert not np.allclose(r_centred.predictions.margin, r_plain.predictions.margin)


def test_clear_embedding_cache():
    model = build(seed=8)
    images = torch.rand(6, 3, 28, 28)
    embed_all(model, images)
    count = _Counter(model)
    embed_all(model, images)
    assert count.images == 0
    clear_embedding_cache()
    embed_all(model, images)
    assert count.images == 6


def test_one_episode_has_no_interval(pbc):
    result = evaluate(build(), pbc, 3, 1, 2, episodes=1, progress=False)
    assert math.isnan(result.half_width)
    d = result.to_dict()
    assert d["ci95"] == [None, None] and d["half_width"] is None
    json.dumps(d, allow_nan=False)


def test_guard_columns_score_each_query_against_its_own_episode(pbc):
    from fsl_xai.guard import fit_guard

    model = build()
    guard = fit_guard(model, pbc.subset(np.arange(0, 2000)), pbc.subset(np.arange(2000, 2400)))
    result = evaluate(model, pbc, 3, 2, 4, episodes=6, seed=3, progress=False, guard=guard)
    t = result.predictions
    plain = evaluate(model, pbc, 3, 2, 4, episodes=6, seed=3, progress=False).predictions
    assert list(t.columns) == [*plain.columns, "ood_score", "ood_flag"]
    pd.testing.assert_frame_equal(t[plain.columns], plain)  # the guard changes nothing else
    assert t.ood_flag.dtype == bool and (t.ood_flag == (t.ood_score > guard.threshold)).all()
    emb = embed_all(model, pbc, progress=False)
    sampler = EpisodeSampler(pbc, 3, 2, 4, seed=3)
    for i in range(6):
        episode = sampler.sample(i)
        support = emb[torch.from_numpy(episode.support_indices(pbc))]
        query = emb[torch.from_numpy(episode.query_indices(pbc))]
        np.testing.assert_allclose(t.ood_score[t.episode == i], guard.score(query, support), rtol=1e-6)
    with pytest.raises(ModelError, match="another model"):
        evaluate(build(seed=1), pbc, 3, 2, 4, episodes=2, progress=False, guard=guard)
