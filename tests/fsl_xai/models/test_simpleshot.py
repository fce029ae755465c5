"""SimpleShot on tiny hand-made embeddings (identity backbone), values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fsl_xai.errors import ModelError
from fsl_xai.models import SimpleShot, make_model


def model(**kwargs) -> SimpleShot:
    return make_model("simpleshot", torch.nn.Identity(), **kwargs)


def test_centred_normalised_nearest_centroid():
    m = model().fit_base(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))  # base mean (1, 1)
    torch.testing.assert_close(m.base_mean_, torch.tensor([1.0, 1.0]))
    # centred: (2, 0) and (0, 2); normalised: (1, 0) and (0, 1)
    m = m.fit_embeddings(torch.tensor([[3.0, 1.0], [1.0, 3.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(m.prototypes_, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # query (4, 2) -> centred (3, 1) -> unit (3, 1)/sqrt(10); squared distance to a unit
    # prototype = 2 - 2 cos: cos = 3/sqrt(10) and 1/sqrt(10)
    logits = m.logits_from_embeddings(torch.tensor([[4.0, 2.0]]))
    expected = -torch.tensor([[2 - 6 / math.sqrt(10), 2 - 2 / math.sqrt(10)]])
    torch.testing.assert_close(logits, expected)


def test_prototype_is_mean_of_transformed_support():
    m = model().fit_base(torch.tensor([[1.0, 1.0]]))
    # (1, 3) -> (0, 2) -> (0, 1); (5, 1) -> (4, 0) -> (1, 0): the mean is (0.5, 0.5), not unit length
    m = m.fit_embeddings(torch.tensor([[1.0, 3.0], [5.0, 1.0], [1.0, -1.0]]), torch.tensor([0, 0, 1]))
    torch.testing.assert_close(m.prototypes_, torch.tensor([[0.5, 0.5], [0.0, -1.0]]))


def test_without_base_mean_centring_is_skipped():
    m = model()
    assert not m.has_base_mean
    m = m.fit_embeddings(torch.tensor([[3.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 1]))
    torch.testing.assert_close(m.prototypes_, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # with centring on (1, 1) the same support gives other prototypes
    c = model().fit_base(torch.tensor([[1.0, 1.0]]))
    c = c.fit_embeddings(torch.tensor([[3.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 1]))
    assert not torch.allclose(c.prototypes_, m.prototypes_)


def test_centring_matters_for_the_decision():
    # all embeddings share a large common offset; without centring every direction looks alike
    offset = torch.tensor([10.0, 10.0])
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) + offset
    query = torch.tensor([[0.8, 0.0]]) + offset
    plain = model(center=False).fit_embeddings(support, torch.tensor([0, 1]))
    centred = model().fit_base(offset[None]).fit_embeddings(support, torch.tensor([0, 1]))
    assert centred.logits_from_embeddings(query).argmax().item() == 0
    gap_plain = plain.logits_from_embeddings(query).diff().abs().item()
    gap_centred = centred.logits_from_embeddings(query).diff().abs().item()
    assert gap_centred > 10 * gap_plain


def test_base_mean_is_saved_in_state_dict():
    m = model().fit_base(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    state = m.state_dict()
    assert torch.equal(state["base_mean_"], torch.tensor([2.0, 3.0]))
    other = model()
    other.load_state_dict(state)
    assert other.has_base_mean and torch.equal(other.base_mean_, torch.tensor([2.0, 3.0]))
    assert other.fingerprint() == m.fingerprint()
    assert model().fingerprint() != m.fingerprint()


def test_add_to_class_uses_transformed_embedding():
    m = model().fit_base(torch.tensor([[1.0, 1.0]]))
    m = m.fit_embeddings(torch.tensor([[3.0, 1.0], [1.0, 3.0]]), torch.tensor([0, 1]))
    m = m.add_to_class(torch.tensor([1.0, 5.0]), 0)  # -> (0, 4) -> (0, 1)
    torch.testing.assert_close(m.prototypes_[0], torch.tensor([0.5, 0.5]))
    assert m.support_embeddings_[-1].tolist() == [1.0, 5.0]  # stored raw, as the support set
    assert m.class_counts_.tolist() == [2, 1]


def test_fit_base_errors():
    with pytest.raises(ModelError, match="embed_all"):
        model().fit_base(torch.zeros(0, 2))
    with pytest.raises(ModelError, match="NaN"):
        model().fit_base(torch.tensor([[float("nan"), 1.0]]))
    m = model().fit_base(torch.zeros(2, 3))
    with pytest.raises(ModelError, match="fit_base again"):
        m = m.fit_embeddings(torch.zeros(2, 2), torch.tensor([0, 1]))
