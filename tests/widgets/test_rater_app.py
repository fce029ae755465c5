"""The rater app driven without a browser: set widget values, click, check the store."""

import json

import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.design import load_design
from fsl_xai.study.freeze import add_raters, freeze_study
from widgets.rater_app import InstructorDashboard, RaterApp, class_summary


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("rater")
    save_checkpoint(d / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    base = {
        "study_id": "r", "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(d / "model.pt")},
        "episode": {"n_way": 2, "n_shot": 2, "seed": 1}, "cases": {"n": 2, "seed": 0},
        "conditions": ["heatmap"], "method": "saliency",
        "questions": [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert", "scale": 5},
                      {"id": "comment", "type": "text", "required": False}],
    }
    out = {}
    for mode in ("study", "teaching"):
        (d / f"{mode}.json").write_text(json.dumps(base | {"mode": mode, "study_id": mode}))
        db = freeze_study(d / f"{mode}.json", d / mode, progress=False)
        out[mode] = (db, load_design(d / mode / f"{mode}.json"), add_raters(db, 2))
    return out


def _answer(app, diagnosis, confidence="3"):
    app.inputs["diagnosis"].value = diagnosis
    app.inputs["confidence"].value = confidence
    app.submit_button.click()


def test_study_mode_confirms_after_commit_and_shows_errors_inline(study):
    db, design, raters = study["study"]
    with ResponseStore(db) as store:
        app = RaterApp(store, design, raters[0][1])
        assert "Case 1 of 2" in app.header.value
        assert any("Model suggests" in getattr(w, "value", "") for w in app.advice_area.children)
        app.inputs["diagnosis"].value = app.item["shown"]["classes"][0]
        app.submit_button.click()  # confidence missing
        assert "please answer" in app.status.value and "Case 1 of 2" in app.header.value
        assert store.my_answers(raters[0][1]) == []
        _answer(app, app.item["shown"]["classes"][0])
        assert "Answer saved" in app.status.value and "Case 2 of 2" in app.header.value
        assert len(store.my_answers(raters[0][1])) == 2
        # a new app (page reload) resumes at case 2
        again = RaterApp(store, design, raters[0][1])
        assert "Case 2 of 2" in again.header.value
        _answer(again, again.item["shown"]["classes"][1], "5")
        assert "All 2 cases are answered" in again.header.value


def test_bad_token_gets_nothing(study):
    db, design, _ = study["study"]
    with ResponseStore(db) as store:
        app = RaterApp(store, design, "forged")
        assert "Access denied" in app.children[0].value
        assert app.session is None


def test_teaching_mode_reveals_after_answer_and_instructor_sees_summary(study):
    db, design, raters = study["teaching"]
    with ResponseStore(db) as store:
        app = RaterApp(store, design, raters[0][1])
        assert app.advice_area.children == ()  or len(app.advice_area.children) == 0  # nothing before answering
        truth = app.item["shown"]["true_class"]
        _answer(app, truth)
        text = app.advice_area.children[0].value
        assert "Your answer is correct" in text and truth in text
        assert app.next_button.layout.display == ""
        app.next_button.click()
        assert "Case 2 of 2" in app.header.value
        counts, per_case = class_summary(store)
        assert per_case["n"].sum() == 1 and per_case["n_correct"].sum() == 1
        dash = InstructorDashboard(store)
        assert "1/1" in dash.table.value and "95% CI" in dash.table.value


def test_instructor_token_opens_the_class_summary(study, monkeypatch):
    from fsl_xai.study.freeze import add_raters
    from widgets.rater_app import app_from_environment

    db, design, _ = study["teaching"]
    (_, token), = add_raters(db, 1, role="instructor")
    monkeypatch.setenv("FSL_XAI_STUDY_DB", str(db))
    monkeypatch.setenv("FSL_XAI_STUDY_FILE", str(db.parent / "teaching.json"))
    monkeypatch.setenv("QUERY_STRING", f"token={token}")
    app = app_from_environment()
    assert isinstance(app, InstructorDashboard)
    monkeypatch.setenv("QUERY_STRING", "token=nope")
    assert "Access denied" in app_from_environment().children[0].value
