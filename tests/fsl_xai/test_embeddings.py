"""The one embedding cache: rows on demand, shared by embed_all and the workbench, extended tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fsl_xai.data.imageset import ImageSet
from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.embeddings import (
    clear_embedding_cache,
    embed_all,
    embedding_fingerprint,
    embedding_table,
    images_for_model,
)
from fsl_xai.errors import DataError, ModelError
from fsl_xai.testing import tiny_model


@pytest.fixture
def images():
    return make_synthetic(n_per_class=6, size=28, n_classes=3, seed=1, split="test")


@pytest.fixture
def model():
    return tiny_model(channels=1, size=28, width=8, seed=2)


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_embedding_cache()
    yield
    clear_embedding_cache()


def test_rows_embed_only_what_is_missing_and_equal_a_direct_forward(images, model):
    table = embedding_table(model, images)
    assert table.n_embedded == 0 and not table.complete
    rows = table.rows([3, 1, 3])
    assert table.n_embedded == 2 and table.is_embedded([1, 3]).all() and not table.is_embedded([0]).any()
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(images.images[[3, 1, 3]]))
    torch.testing.assert_close(rows, direct, rtol=1e-5, atol=1e-5)
    # rows already there are not embedded again: a forward pass would count them
    calls = []
    handle = model.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    table.rows([1, 3])
    assert calls == []
    table.rows([0, 1])
    assert calls == [1]
    handle.remove()


def test_embed_all_and_the_table_share_one_store(images, model):
    table = embedding_table(model, images)
    first = table.rows([0, 5])
    assert embedding_table(model, images) is table
    everything = embed_all(model, images)
    assert table.complete and everything.shape == (len(images), first.shape[1])
    torch.testing.assert_close(everything[[0, 5]], first)
    everything[0] = 99.0  # a copy: changing it leaves the cache
    assert not torch.equal(embed_all(model, images)[0], everything[0])


def test_changed_weights_get_a_new_table(images, model):
    table = embedding_table(model, images)
    key = embedding_fingerprint(model)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    assert embedding_fingerprint(model) != key
    assert embedding_table(model, images) is not table


def test_extended_table_keeps_the_rows_already_embedded(images, model):
    table = embedding_table(model, images)
    table.rows([0, 2])
    extra = images.metadata.iloc[[0]].assign(sample_id="imported-0")
    bigger = ImageSet(np.concatenate([images.images, images.images[:1]]), np.concatenate([images.labels, [0]]),
                      images.class_names, pd.concat([images.metadata, extra], ignore_index=True), images.name)
    extended = table.extended(bigger)
    assert len(extended) == len(images) + 1 and extended.is_embedded([0, 2]).all()
    assert extended.n_embedded == 2
    torch.testing.assert_close(extended.rows([0, 2]), table.rows([0, 2]))
    with pytest.raises(DataError, match="fewer than"):
        table.extended(images.subset(np.arange(3)))


def test_clear_and_errors(images, model):
    table = embedding_table(model, images)
    clear_embedding_cache()
    assert embedding_table(model, images) is not table
    with pytest.raises(DataError, match="image positions"):
        table.rows([len(images)])
    with pytest.raises(DataError, match="batch_size"):
        embedding_table(model, images, batch_size=0)
    with pytest.raises(ModelError, match=r"\(N, C, H, W\)"):
        embed_all(model, np.zeros((3, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="expected embeddings"):
        table.fill(torch.zeros(2, 3))


def test_images_for_model_converts_only_when_needed(images, model):
    assert images_for_model(images, model) is images
    rgb = tiny_model(channels=3, size=32, width=8)
    converted = images_for_model(images, rgb)
    assert converted.images.shape[1:] == (3, 32, 32) and len(converted) == len(images)
