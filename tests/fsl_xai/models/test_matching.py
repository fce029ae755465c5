"""Matching Networks on tiny hand-made embeddings (identity backbone)."""

from __future__ import annotations

import math

import torch

from fsl_xai.models import make_model

SUPPORT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
LABELS = torch.tensor([0, 1, 1])


def test_attention_by_hand():
    m = make_model("matching", torch.nn.Identity(), temperature=1.0).fit_embeddings(SUPPORT, LABELS)
    logits = m.logits_from_embeddings(torch.tensor([[2.0, 0.0]]))
    # cosine similarities 1, 0, 1/sqrt(2); attention = softmax; class 1 sums two attentions
    e = [math.exp(1.0), math.exp(0.0), math.exp(1 / math.sqrt(2))]
    p0, p1 = e[0] / sum(e), (e[1] + e[2]) / sum(e)
    torch.testing.assert_close(logits, torch.tensor([[math.log(p0), math.log(p1)]]))
    # probabilities sum to one; distances are the negative log-likelihoods
    torch.testing.assert_close(logits.exp().sum(1), torch.tensor([1.0]))


def test_temperature_sharpens_attention():
    query = torch.tensor([[1.0, 0.1]])
    soft = make_model("matching", torch.nn.Identity(), temperature=1.0).fit_embeddings(SUPPORT, LABELS)
    sharp = make_model("matching", torch.nn.Identity(), temperature=0.05).fit_embeddings(SUPPORT, LABELS)
    p_soft = soft.logits_from_embeddings(query).exp()[0, 0]
    p_sharp = sharp.logits_from_embeddings(query).exp()[0, 0]
    # with a soft attention, the two class-1 images outvote the closer class-0 image
    assert p_soft < 0.5 < p_sharp
    expected = 1 / (1 + math.exp((0 - 0.99503719) / 0.05) + math.exp((0.77395730 - 0.99503719) / 0.05))
    torch.testing.assert_close(p_sharp, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_scores_use_every_support_embedding_not_the_mean():
    # class 1 has two opposite support images: their mean is (0, 0.5), but attention sees each one
    support = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [1.0, 1.0]])
    m = make_model("matching", torch.nn.Identity(), temperature=0.1).fit_embeddings(support, LABELS)
    torch.testing.assert_close(m.prototypes_, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    logits = m.logits_from_embeddings(torch.tensor([[1.0, 0.9]]))
    assert logits.argmax().item() == 1  # nearest single image (1, 1) is class 1


def test_add_to_class_adds_an_attention_target():
    m = make_model("matching", torch.nn.Identity(), temperature=0.5).fit_embeddings(SUPPORT, LABELS)
    query = torch.tensor([[0.0, -1.0]])
    before = m.logits_from_embeddings(query)
    m = m.add_to_class(torch.tensor([0.0, -2.0]), 0)
    after = m.logits_from_embeddings(query)
    assert after[0, 0] > before[0, 0]
    ref = make_model("matching", torch.nn.Identity(), temperature=0.5).fit_embeddings(
        torch.cat([SUPPORT, torch.tensor([[0.0, -2.0]])]), torch.tensor([0, 1, 1, 0]))
    torch.testing.assert_close(after, ref.logits_from_embeddings(query))
