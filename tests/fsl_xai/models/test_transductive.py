"""Transductive prototype refinement (soft k-means over the queries)."""

from __future__ import annotations

import math

import numpy as np
import torch

from fsl_xai.models import make_model

SUPPORT = torch.tensor([[0.0], [10.0]])
LABELS = torch.tensor([0, 1])


def test_one_iteration_by_hand():
    m = make_model("transductive", torch.nn.Identity(), iterations=1, temperature=10.0)
    m = m.fit_embeddings(SUPPORT, LABELS)
    logits = m.logits_from_embeddings(torch.tensor([[2.0]]))
    # squared distances 4 and 64; assignments softmax(-d / 10)
    a0, a1 = math.exp(-0.4), math.exp(-6.4)
    m0, m1 = a0 / (a0 + a1), a1 / (a0 + a1)
    p0 = (0.0 + m0 * 2.0) / (1 + m0)
    p1 = (10.0 + m1 * 2.0) / (1 + m1)
    torch.testing.assert_close(logits, torch.tensor([[-(2 - p0) ** 2, -(2 - p1) ** 2]]))
    # the stored prototypes stay the support means
    torch.testing.assert_close(m.prototypes_, SUPPORT)


def _numpy_soft_kmeans(support, labels, query, iterations, temperature, weight):
    n_way = labels.max() + 1
    counts = np.bincount(labels, minlength=n_way)[:, None].astype(float)
    sums = np.stack([support[labels == c].sum(0) for c in range(n_way)])
    protos = sums / counts
    for _ in range(iterations):
        d = ((query[:, None, :] - protos[None]) ** 2).sum(-1)
        a = np.exp(-d / temperature - (-d / temperature).max(1, keepdims=True))
        a = weight * a / a.sum(1, keepdims=True)
        protos = (sums + a.T @ query) / (counts + a.sum(0)[:, None])
    return -((query[:, None, :] - protos[None]) ** 2).sum(-1)


def test_several_iterations_match_a_numpy_soft_kmeans():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(6, 3))
    labels = np.array([0, 0, 1, 1, 2, 2])
    query = rng.normal(size=(9, 3))
    m = make_model("transductive", torch.nn.Identity(), iterations=4, temperature=2.0, query_weight=0.5)
    m = m.fit_embeddings(torch.tensor(support, dtype=torch.float64), torch.tensor(labels))
    got = m.logits_from_embeddings(torch.tensor(query, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, _numpy_soft_kmeans(support, labels, query, 4, 2.0, 0.5), rtol=1e-10)


def test_zero_iterations_is_protonet():
    q = torch.tensor([[2.0], [7.0]])
    t = make_model("transductive", torch.nn.Identity(), iterations=0).fit_embeddings(SUPPORT, LABELS)
    p = make_model("protonet", torch.nn.Identity()).fit_embeddings(SUPPORT, LABELS)
    torch.testing.assert_close(t.logits_from_embeddings(q), p.logits_from_embeddings(q))


def test_queries_in_one_batch_change_each_other():
    m = make_model("transductive", torch.nn.Identity(), temperature=10.0).fit_embeddings(SUPPORT, LABELS)
    alone = m.logits_from_embeddings(torch.tensor([[4.0]]))
    # many queries near 3 pull prototype 0 towards them, so the query at 4 gets closer to it
    together = m.logits_from_embeddings(torch.tensor([[4.0], [3.0], [3.0], [3.0]]))[:1]
    assert together[0, 0] > alone[0, 0]


def test_with_queries_freezes_the_refinement():
    m = make_model("transductive", torch.nn.Identity(), temperature=10.0).fit_embeddings(SUPPORT, LABELS)
    batch = torch.tensor([[4.0], [3.0], [3.0], [3.0]])
    together = m.logits_from_embeddings(batch)
    frozen = m.with_query_embeddings(batch)
    assert frozen.queries_frozen() and not m.queries_frozen()
    # now a single query is scored against the prototypes refined with the whole batch
    torch.testing.assert_close(frozen.logits_from_embeddings(batch[:1]), together[:1])
    # the episode it came from still refines with whatever batch it is given
    assert "refined_prototypes" not in m.extras_
    assert not torch.allclose(m.logits_from_embeddings(batch[:1]), together[:1])
    # a grown support set drops the frozen refinement
    grown = frozen.add_to_class(torch.tensor([3.5]), 0)
    assert "refined_prototypes" not in grown.extras_
    assert m.model.refines_with_queries()
    plain = make_model("transductive", torch.nn.Identity(), iterations=0).fit_embeddings(SUPPORT, LABELS)
    assert plain.with_query_embeddings(batch) is plain and not plain.model.refines_with_queries()
    assert plain.queries_frozen()


def test_refinement_helps_on_shifted_queries():
    # queries of both classes are shifted by about +3 to +5 from the support: refinement follows them
    gen = torch.Generator().manual_seed(0)
    support = torch.tensor([[0.0], [0.2], [10.0], [10.2]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.cat([3 + 3.5 * torch.rand(10, 1, generator=gen), 13 + 3 * torch.rand(10, 1, generator=gen)])
    truth = torch.arange(2).repeat_interleave(10)
    proto = make_model("protonet", torch.nn.Identity()).fit_embeddings(support, labels)
    trans = make_model("transductive", torch.nn.Identity(), iterations=5, temperature=5.0)
    trans = trans.fit_embeddings(support, labels)
    acc_proto = (proto.logits_from_embeddings(query).argmax(1) == truth).float().mean()
    acc_trans = (trans.logits_from_embeddings(query).argmax(1) == truth).float().mean()
    assert acc_trans > acc_proto
