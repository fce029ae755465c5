"""Honest labels in the workbench: the validation score is the one of the data on screen (with n, its
interval and what it was measured on), "not seen in training" only when the checkpoint says so, and
class names come from the data. Real data and the cached default models."""

from __future__ import annotations

import html

import pytest

from fsl_xai.data.registry import load_dataset
from fsl_xai.training import default_model
from widgets.queries import QueryGallery
from widgets.session import classes_note
from widgets.state import WorkbenchState
from widgets.trust_text import header_lines


@pytest.fixture(scope="module")
def blood_model():
    return default_model("pbc-blood-64", progress=False)


def _text(state: WorkbenchState) -> list[str]:
    return [html.unescape(line) for line in header_lines(state)]


def test_the_header_shows_the_validation_score_of_the_data_on_screen(blood_model):
    model, info = blood_model
    blood = WorkbenchState(n_way=3, n_shot=5, n_query=5)
    blood.load("pbc-blood-64", progress=False, images=load_dataset("pbc-blood-64", "test", progress=False),
               model=model, model_info=info)
    v = blood.trust.validation
    assert v is not None and v.where == "pbc-blood-64 val split"
    way, _, query = v.shape
    assert v.n_queries == v.n_episodes * way * query and v.accuracy.low <= v.accuracy.estimate <= v.accuracy.high
    line = _text(blood)[0]
    assert line.startswith("validation accuracy") and f"(n={v.n_queries}, 95% CI" in line
    assert "measured on pbc-blood-64 val split" in line and "lymphocyte" in line

    # the same blood-cell model on other data: the score is measured on that data, not copied from the checkpoint
    other = WorkbenchState(n_way=2, n_shot=5, n_query=5)
    other.load("breastmnist", progress=False, images=load_dataset("breastmnist", "test", progress=False),
               model=model, model_info=info)
    assert other.error == ""
    line = _text(other)[0]
    assert "measured on breastmnist val split" in line and "pbc-blood" not in line
    assert other.trust.validation.n_queries > 0 and other.trust.validation != v
    # class names from the data, and they were not seen in training
    assert other.episode_classes == ["malignant", "normal, benign"]
    assert "not trained on: malignant, normal, benign" in classes_note(info, other.episode_classes)
    gallery = QueryGallery(other)
    assert set(gallery.true_class.options) == {"(any)", "malignant", "normal, benign"}


def test_classes_the_model_was_trained_on_are_not_called_unseen():
    model, info = default_model("synthetic", progress=False)
    state = WorkbenchState(n_way=4, n_shot=5, n_query=5)
    state.load("synthetic", progress=False, model=model, model_info=info)
    assert set(state.episode_classes) <= set(info.classes)
    note = classes_note(state.model_info, state.episode_classes)
    assert "all seen by the model in training" in note and "not trained on" not in note


def test_a_model_without_its_training_data_gets_a_guard_from_the_data_on_screen_and_says_so(state):
    assert state.trust.guard is not None and state.trust.guard_text.startswith("the data on screen")
    assert any("standing in for the model's training data" in line for line in _text(state))


def test_without_a_guard_the_page_says_why_and_claims_no_flag_counts(synthetic_images):
    from fsl_xai.testing import tiny_model

    state = WorkbenchState(n_way=3, n_shot=3, n_query=3)
    # the model says nothing of its training data, and the train split is the one on screen
    state.load("synthetic", split="train", images=synthetic_images, model=tiny_model(channels=1, size=32, width=8))
    assert state.error == "" and state.trust.guard is None and state.result.guard is None
    assert "no domain guard for this model" in state.trust.guard_note
    gallery = QueryGallery(state)
    assert "no domain guard for this model" in html.unescape(gallery.summary.value)
    assert "flagged" not in gallery.summary.value.split("<br>")[0]
    assert "ood_flag" not in state.query_table().columns
