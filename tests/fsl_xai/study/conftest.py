import pytest

from fsl_xai.study import ResponseStore, parse_design

DESIGN = {
    "study_id": "t",
    "dataset": {"name": "synthetic"},
    "model": {"default": "synthetic"},
    "episode": {"n_way": 2, "n_shot": 1},
    "cases": ["c1", "c2", "c3", "c4"],
    "conditions": ["no_ai", "prediction"],
    "questions": [{"id": "diagnosis", "type": "choice", "options": ["a", "b"]},
                  {"id": "confidence", "type": "likert", "scale": 5}],
    "assignment": {"design": "within", "seed": 3},
}


@pytest.fixture
def design():
    return parse_design(DESIGN)


def _make_study(path, design, n_raters=2, cases=None):
    """A store with items for every (case, condition) and n_raters raters; returns (store, tokens)."""
    store = ResponseStore(path)
    cases = cases or list(design.cases)
    store.add_items([{"item_id": f"{c}|{k}", "case_id": c, "condition": k, "shown": {"case": c},
                      "provenance": {"model": "m"}} for c in cases for k in design.condition_names])
    tokens = []
    for r in range(n_raters):
        _, token = store.add_rater([f"{c}|{k}" for c, k in design.assign(cases, r)])
        tokens.append(token)
    return store, tokens


@pytest.fixture
def make_study():
    """Factory: make_study(path, design, n_raters=2, cases=None) -> (store, tokens); stores
    are closed after the test."""
    made = []

    def factory(*args, **kwargs):
        store, tokens = _make_study(*args, **kwargs)
        made.append(store)
        return store, tokens

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def design_dict():
    return dict(DESIGN)
