"""Every model the bundle carries is scored by the predictor's numpy rule exactly as fsl-xai scores it;
models it cannot carry are refused with a message that names what is supported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_xai.data.registry import load_dataset
from fsl_xai.deploy import SUPPORTED, scoring_rule
from fsl_xai.deploy.bundle import draw_support
from fsl_xai.deploy.predict import Bundle
from fsl_xai.errors import ModelError
from fsl_xai.testing import tiny_model

CASES = [
    ("protonet", {}, "squared_euclidean"),
    ("protonet", {"distance": "cosine"}, "cosine"),
    ("simpleshot", {}, "squared_euclidean"),
    ("simpleshot", {"normalize": False}, "squared_euclidean"),
    ("finetune", {"steps": 20}, "linear"),
    ("finetune", {"head": "cosine", "steps": 20}, "cosine"),
    ("matching", {}, "matching"),
    ("transductive", {"iterations": 0}, "squared_euclidean"),
]


@pytest.fixture(scope="module")
def synthetic():
    """The built-in synthetic lesion set: train (SimpleShot's base mean) and test (support and queries)."""
    return load_dataset("synthetic", split="train", progress=False), load_dataset("synthetic", split="test",
                                                                                  progress=False)


def _predictor_scores(rule: dict, arrays: dict[str, np.ndarray], embeddings: torch.Tensor) -> np.ndarray:
    """The bundle predictor's rule, run on given embeddings (no ONNX file needed for the rule)."""
    bundle = Bundle.__new__(Bundle)
    bundle.rule = rule
    bundle.arrays = {k: v.astype(np.float64) for k, v in arrays.items()}
    return bundle.scores(embeddings.double().numpy())


@pytest.mark.parametrize(("name", "options", "rule_name"), CASES)
def test_predictor_rule_scores_as_the_model_does(synthetic, name, options, rule_name):
    train, test = synthetic
    model = tiny_model(channels=1, size=64, width=8, model=name, **options)
    if name == "simpleshot" and options.get("normalize", True):
        with torch.no_grad():
            model.fit_base(model.embed(torch.from_numpy(train.images[:60])))
    names, support, labels = draw_support(test, list(test.class_names), n_shot=3, seed=1)
    fitted = model.fit(torch.from_numpy(test.images[support]), torch.from_numpy(labels))
    rule, arrays = scoring_rule(fitted)
    assert rule["name"] == rule_name and rule["description"]
    assert ("center" in arrays) == (name == "simpleshot" and model.has_base_mean)
    with torch.no_grad():
        emb = model.embed(torch.from_numpy(test.images))
        expected = fitted.logits_from_embeddings(emb).double().numpy()
    got = _predictor_scores(rule, arrays, emb)
    assert got.shape == (len(test), len(names))
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99  # ties aside, the same classes


def test_refining_transductive_model_is_refused_naming_what_is_supported(synthetic):
    _, test = synthetic
    model = tiny_model(channels=1, size=64, width=8, model="transductive", iterations=3)
    names, support, labels = draw_support(test, list(test.class_names), n_shot=2, seed=0)
    fitted = model.fit(torch.from_numpy(test.images[support]), torch.from_numpy(labels))
    with pytest.raises(ModelError, match="refines its prototypes with the queries") as caught:
        scoring_rule(fitted)
    assert SUPPORTED in str(caught.value)
