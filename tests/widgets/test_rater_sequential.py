"""The rater app with sequential reading, conformal prediction sets and the domain guard's warning,
on studies frozen from the synthetic set with a real (untrained) model, a real conformal
calibration and a real guard."""

import dataclasses
import json

import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.data.registry import load_dataset
from fsl_xai.embeddings import embed_all
from fsl_xai.guard import DomainGuard
from fsl_xai.study import ResponseStore
from fsl_xai.study.advice import GUARD_WARNING
from fsl_xai.study.design import load_design
from fsl_xai.study.freeze import add_raters, freeze_study
from widgets.rater_app import RaterApp

from .screen_check import python_widget_states, widget_state_problems

QUESTIONS = [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert", "scale": 5},
             {"id": "trust", "type": "likert", "scale": 5, "text": "I trust the model's advice", "after_ai": True}]
SETS = {"name": "sets", "show": ["prediction_set"]}  # the set instead of the top-1 advice
BOTH = {"name": "both", "show": ["prediction", "prediction_set"]}  # the set besides it
PANELS = {"no_ai": set(), "prediction": {"prediction"}, "sets": {"prediction_set"},
          "both": {"prediction", "prediction_set"}}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    d = tmp_path_factory.mktemp("sequential")
    model = F.make_model("protonet", F.make_backbone("conv4", 1, 64))
    save_checkpoint(d / "model.pt", model)
    guard = DomainGuard.fit(embed_all(model, load_dataset("synthetic", split="train", progress=False)),
                            embed_all(model, load_dataset("synthetic", split="val", progress=False)))
    # a guard that flags every case (threshold 0) and one that flags none: both branches, for sure
    dataclasses.replace(guard, threshold=0.0).save(d / "flag_all.json")
    dataclasses.replace(guard, threshold=1e9).save(d / "flag_none.json")
    base = {"dataset": {"name": "synthetic"}, "model": {"checkpoint": "model.pt"},
            "episode": {"n_way": 2, "n_shot": 2, "seed": 1}, "questions": QUESTIONS,
            "conformal": {"alpha": 0.2, "episodes": 30}}
    specs = {
        "sequential": base | {"study_id": "seq", "reading": "sequential", "cases": {"n": 3, "seed": 0},
                              "conditions": ["no_ai", "prediction", SETS], "guard": {"file": "flag_all.json"}},
        "independent": base | {"study_id": "ind", "cases": {"n": 3, "seed": 0},
                               "conditions": ["prediction", SETS, BOTH], "guard": {"file": "flag_none.json"}},
    }
    out = {}
    for name, spec in specs.items():
        (d / f"{name}.json").write_text(json.dumps(spec))
        db = freeze_study(d / f"{name}.json", d / name, progress=False)
        out[name] = (db, load_design(d / name / f"{name}.json"), add_raters(db, 3))
    sample_ids = load_dataset("synthetic", split="test", progress=False).sample_ids.tolist()
    return out, sample_ids


def _panels(app) -> set[str]:
    return {c.removeprefix("fsl-panel-") for s in python_widget_states(app).values()
            for c in s.get("_dom_classes") or () if c.startswith("fsl-panel-")}


def _text(app) -> str:
    return json.dumps([s.get("value") for s in python_widget_states(app).values() if isinstance(s.get("value"), str)])


def _answer(app, trust="4"):
    app.inputs["diagnosis"].value = app.item["shown"]["classes"][0]
    app.inputs["confidence"].value = "3"
    if "trust" in app.inputs:
        app.inputs["trust"].value = trust
    app.submit_button.click()


def test_frozen_items_hold_sets_and_warnings_in_their_conditions_only(studies):
    (by_name, _) = studies
    for name, flagged in (("sequential", True), ("independent", False)):
        db, _, _ = by_name[name]
        with ResponseStore(db) as store:
            assert store.reading == ("sequential" if name == "sequential" else "independent")
            for item in store.all_items():
                shown, prov, cond = item["shown"], item["provenance"], item["condition"]
                assert ("prediction_set" in shown) == (cond in ("sets", "both"))
                assert ("prediction" in shown) == (cond in ("prediction", "both"))
                assert ("guard_warning" in shown) == (flagged and cond != "no_ai")
                assert prov["guard"]["flagged"] is flagged
                assert prov["guard"]["flagged"] == (prov["guard"]["score"] > prov["guard"]["threshold"])
                assert ("guard" in prov["shown_panels"]) == ("guard_warning" in shown)
                if "prediction_set" in shown:
                    ps = shown["prediction_set"]
                    assert ps["classes"][0] == prov["model_prediction"] and ps["alpha"] == 0.2
                    assert set(ps["classes"]) <= set(shown["classes"]) and ps["text"]
                    assert prov["prediction_set"] == ps["classes"] and prov["conformal"]["split"] == "val"


def test_sequential_reading_shows_no_ai_before_the_first_answer_and_all_of_it_after(studies):
    (by_name, sample_ids) = studies
    db, design, raters = by_name["sequential"]
    seen = set()
    with ResponseStore(db) as store:
        app = RaterApp(store, design, raters[0][1])
        while not app.session.done:
            item = app.item
            cond = item["condition"]
            seen.add(cond)
            assert item["step"] == "first"
            # before the first answer: no panel, nothing of the AI's output, no trust question
            assert _panels(app) == set() and len(app.advice_area.children) == 0
            text = _text(app)
            for leak in ("Model suggests", "answer set", GUARD_WARNING, "probability"):
                assert leak not in text
            assert set(app.inputs) == {"diagnosis", "confidence"}
            assert app.submit_button.description == "Confirm my own answer"
            problems = widget_state_problems(python_widget_states(app), sample_ids, item["shown"]["classes"], set())
            assert not problems, "\n".join(problems)
            _answer(app)
            if cond == "no_ai":  # one reading only: on to the next case
                assert app.session.done or app.item["item_id"] != item["item_id"]
                continue
            # after it: the same case with the condition's panels, the warning and the first answer
            assert app.item["item_id"] == item["item_id"] and app.item["step"] == "revised"
            assert "Your own answer is saved" in app.status.value
            assert _panels(app) == PANELS[cond] | {"guard", "first_answer"}
            text = _text(app)
            assert GUARD_WARNING in text
            assert ("Model suggests" in text) == (cond == "prediction")
            assert ("answer set" in text) == (cond == "sets")
            assert set(app.inputs) == {"diagnosis", "confidence", "trust"}
            assert app.inputs["diagnosis"].value == item["shown"]["classes"][0]  # the first answer, to revise
            problems = widget_state_problems(python_widget_states(app), sample_ids, item["shown"]["classes"],
                                             PANELS[cond] | {"guard", "first_answer"})
            assert not problems, "\n".join(problems)
            app.inputs["diagnosis"].value = item["shown"]["classes"][1]
            app.inputs["trust"].value = "2"
            app.submit_button.click()
            assert "Answer saved" in app.status.value
        phases = store.answers_by_phase(raters[0][1])
    assert seen == {"no_ai", "prediction", "sets"}
    for item_id, by_phase in phases.items():
        if item_id.endswith("|no_ai"):
            assert set(by_phase) == {"first"}
        else:
            assert set(by_phase) == {"first", "revised"}
            assert by_phase["first"]["diagnosis"] != by_phase["revised"]["diagnosis"]


def test_a_reload_after_the_first_answer_shows_the_ai(studies):
    (by_name, _) = studies
    db, design, raters = by_name["sequential"]
    token = raters[1][1]
    with ResponseStore(db) as store:
        app = RaterApp(store, design, token)
        while app.item["condition"] == "no_ai":
            _answer(app)
        item_id = app.item["item_id"]
        _answer(app)
        reloaded = RaterApp(store, design, token)
        assert reloaded.item["item_id"] == item_id and reloaded.item["step"] == "revised"
        assert "guard" in _panels(reloaded) and "first_answer" in _panels(reloaded)
        # a second tab still on the first screen is told its answer was not saved, and shows the AI
        stale = RaterApp(store, design, raters[2][1])
        stale_twin = RaterApp(store, design, raters[2][1])
        while stale.item["condition"] == "no_ai":
            _answer(stale)
            stale_twin = RaterApp(store, design, raters[2][1])
        _answer(stale)
        _answer(stale_twin)
        assert "fsl-notice" in stale_twin.status.value and "final" in stale_twin.status.value
        assert stale_twin.item["step"] == "revised" and "guard" in _panels(stale_twin)


def test_independent_reading_shows_the_set_at_once_and_no_warning_when_nothing_is_flagged(studies):
    (by_name, _) = studies
    db, design, raters = by_name["independent"]
    with ResponseStore(db) as store:
        app = RaterApp(store, design, raters[0][1])
        seen = set()
        while not app.session.done:
            cond = app.item["condition"]
            seen.add(cond)
            assert app.item["step"] == "single" and _panels(app) == PANELS[cond]
            assert ("answer set" in _text(app)) == (cond in ("sets", "both")) and GUARD_WARNING not in _text(app)
            assert ("Model suggests" in _text(app)) == (cond in ("prediction", "both"))
            _answer(app)
    assert seen == {"prediction", "sets", "both"}
