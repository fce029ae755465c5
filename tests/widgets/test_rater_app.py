"""The rater app driven without a browser: set widget values, click, check the store."""

import json

import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.design import CONDITION_PANELS, load_design
from fsl_xai.study.freeze import add_raters, freeze_study
from widgets.rater_app import InstructorDashboard, RaterApp, class_summary

from .screen_check import identifying_strings, python_widget_states, widget_state_problems


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
        # the instructor's screen (often projected to the class) names cases by label, not sample id
        assert per_case["case_label"].str.fullmatch(r"C\d{2}").all()
        assert per_case["case_label"].iloc[0] in dash.table.value
        assert not [c for c in per_case["case_id"] if c in dash.table.value]


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


def _state_text(app) -> str:
    return json.dumps([{k: v for k, v in state.items() if isinstance(v, (str, list, dict, int, float, type(None)))}
                       for state in python_widget_states(app).values()], default=str)


def test_two_tabs_of_one_rater_never_replace_a_confirmed_answer(study):
    """Two pages of the same rater on the same case: the second submit is refused, says so inline,
    and that page moves on to the next unanswered case; the first answer stays."""
    db, design, raters = study["study"]
    (_, token), = add_raters(db, 1)
    with ResponseStore(db) as store:
        tab_a, tab_b = RaterApp(store, design, token), RaterApp(store, design, token)
        first = tab_a.item["item_id"]
        assert tab_b.item["item_id"] == first and tab_a.item["shown_key"] != tab_b.item["shown_key"]
        classes = tab_a.item["shown"]["classes"]
        _answer(tab_a, classes[0], "2")
        assert "Answer saved" in tab_a.status.value and "Case 2 of 2" in tab_a.header.value
        _answer(tab_b, classes[1], "5")
        assert "fsl-notice" in tab_b.status.value and "already answered" in tab_b.status.value
        assert "Traceback" not in tab_b.status.value
        assert "Case 2 of 2" in tab_b.header.value and tab_b.item["item_id"] == tab_a.item["item_id"] != first
        assert not tab_b.submit_button.disabled
        assert store.current_answers(token)[first] == {"diagnosis": classes[0], "confidence": 2}
        # the other way round on the second case: B answers first, A is refused and is done
        _answer(tab_b, classes[1], "4")
        _answer(tab_a, classes[0], "1")
        assert "already answered" in tab_a.status.value and "All 2 cases are answered" in tab_a.header.value
        assert store.current_answers(token)[tab_b.item["item_id"]] == {"diagnosis": classes[1], "confidence": 4}
        assert len(store.my_answers(token)) == 4  # 2 cases x 2 questions, nothing replaced
        # the screen's key never reaches the page
        for tab in (tab_a, tab_b):
            assert tab.item["shown_key"].split("#", 1)[1] not in _state_text(tab)


@pytest.fixture(scope="module")
def blood_study(tmp_path_factory, shared_file):
    """A study on real file-named images (``monocyte/MO_898317.jpg``) in every condition, one
    case per condition for the first rater."""
    shared_file("pbc_blood/pbc_bloodlike_64_200perclass.npz")
    d = tmp_path_factory.mktemp("blood")
    save_checkpoint(d / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 3, 64)))
    conditions = list(CONDITION_PANELS)
    study = {
        "study_id": "blood", "dataset": {"name": "pbc-blood-64", "split": "test"},
        "model": {"checkpoint": str(d / "model.pt")},
        "episode": {"n_way": 3, "n_shot": 2, "seed": 0, "classes": ["lymphocyte", "monocyte", "neutrophil"]},
        "cases": {"n": len(conditions), "seed": 0}, "conditions": conditions, "method": "saliency",
        "questions": [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert", "scale": 5},
                      {"id": "comment", "type": "text", "required": False}],
    }
    (d / "blood.json").write_text(json.dumps(study))
    db = freeze_study(d / "blood.json", d / "frozen", progress=False)
    return db, load_design(d / "frozen" / "blood.json"), add_raters(db, 1)


def test_no_widget_of_any_condition_identifies_the_case(blood_study):
    from fsl_xai.data.registry import load_dataset

    db, design, ((_, token),) = blood_study
    sample_ids = load_dataset("pbc-blood-64", split="test", progress=False).sample_ids.tolist()
    assert any(s.startswith("monocyte/") for s in sample_ids)  # the ids name the class and the file
    seen = set()
    with ResponseStore(db) as store:
        app = RaterApp(store, design, token)
        while app.session is not None and not app.session.done:
            item, panels = app.item, set(CONDITION_PANELS[app.item["condition"]])
            seen.add(item["condition"])
            classes = item["shown"]["classes"]
            problems = widget_state_problems(python_widget_states(app), sample_ids, classes, panels)
            assert not problems, "\n".join(problems)
            text = _state_text(app)
            assert ("Model suggests" in text) == ("prediction" in panels)
            assert item["shown"]["case_label"] in app.header.value
            assert not [s for s in identifying_strings(sample_ids) if s in item["shown_key"]]
            options = app.inputs["diagnosis"]
            assert list(options.options) == classes and options.value is None and not options.tooltips
            _answer(app, classes[0])
    assert seen == set(CONDITION_PANELS)


def test_a_submit_updates_the_screen_in_place_instead_of_creating_widgets(tmp_path, monkeypatch):
    """Each widget model the kernel creates is one more the page must build before it can show
    the next case: after a screen of each condition, a submit creates none, and the first screen of
    a condition only builds its panels (a few widgets), never a whole new screen (~30 before)."""
    import ipywidgets as W

    save_checkpoint(tmp_path / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    conditions = list(CONDITION_PANELS)
    spec = {"study_id": "inplace", "dataset": {"name": "synthetic"}, "model": {"checkpoint": "model.pt"},
            "episode": {"n_way": 2, "n_shot": 2, "seed": 1}, "cases": {"n": 2 * len(conditions), "seed": 0},
            "conditions": conditions, "method": "saliency",
            "questions": [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert", "scale": 5},
                          {"id": "comment", "type": "text", "required": False}]}
    (tmp_path / "inplace.json").write_text(json.dumps(spec))
    db = freeze_study(tmp_path / "inplace.json", tmp_path / "frozen", progress=False)
    (_, token), = add_raters(db, 1)
    opened = []
    real_open = W.Widget.open
    monkeypatch.setattr(W.Widget, "open", lambda self: (opened.append(type(self).__name__), real_open(self))[1])
    with ResponseStore(db) as store:
        app = RaterApp(store, load_design(tmp_path / "frozen" / "inplace.json"), token)
        assert len(opened) > 20  # the counter sees the first screen being built
        seen, created = set(), []
        while not app.session.done:
            seen.add(app.item["condition"])
            before = len(opened)
            _answer(app, app.item["shown"]["classes"][0])
            assert "Answer saved" in app.status.value
            nxt = None if app.session.done else app.item["condition"]
            if nxt is not None:  # the answer widgets were reset, not replaced: the next case starts blank
                assert [app.inputs[q].value for q in ("diagnosis", "confidence", "comment")] == [None, None, ""]
            created.append((nxt, nxt in seen or nxt is None, opened[before:]))
        assert all(not new for _, repeat, new in created if repeat), created
        assert all(len(new) <= 12 for _, _, new in created), created
        assert sum(len(new) for _, _, new in created) <= 25, created
    assert seen == set(conditions)


def test_behind_the_gate_the_token_comes_by_hand_off_not_the_url(study, tmp_path, monkeypatch):
    """Behind the gate the kernel takes its token from the file the gate writes for its kernel id
    (read once and deleted), never from the URL; without that file it gets no token."""
    import threading

    import widgets.rater_app as rater_app
    from fsl_xai.study.serve import HANDOFF_ENV

    assert rater_app.HANDOFF_ENV == HANDOFF_ENV  # the variable serve sets is the one the app reads
    db, _, ((_, token_a), (_, token_b)) = study["study"]
    handoff = tmp_path / "handoff"
    handoff.mkdir()
    kernel_id = "0123abcd-0000-4000-8000-00000000abcd"
    monkeypatch.setenv("FSL_XAI_STUDY_DB", str(db))
    monkeypatch.setenv("FSL_XAI_STUDY_FILE", str(db.parent / "study.json"))
    monkeypatch.setenv(HANDOFF_ENV, str(handoff))
    monkeypatch.setenv("VOILA_KERNEL_ID", kernel_id)
    monkeypatch.setenv("QUERY_STRING", f"token={token_b}")  # a token in the URL counts for nothing here
    monkeypatch.setattr(rater_app, "HANDOFF_WAIT_S", 30.0)
    # the gate writes the token while the kernel already waits (as a preheated kernel does)
    writer = threading.Timer(0.3, lambda: (handoff / kernel_id).write_text(token_a))
    writer.start()
    app = rater_app.app_from_environment()
    writer.join()
    assert isinstance(app, RaterApp) and app.session is not None
    assert app.session.token == token_a
    assert not list(handoff.iterdir()), "the token file was left behind"
    # nothing handed over (the gate never bound this kernel): no token, so the refusal
    monkeypatch.setattr(rater_app, "HANDOFF_WAIT_S", 0.2)
    assert rater_app.token_from_environment() is None
    assert "Access denied" in rater_app.app_from_environment().children[0].value


def test_a_waiting_kernel_sleeps_until_the_gate_wakes_it(study, tmp_path, monkeypatch):
    """A kernel waiting for its token (a preheated one may wait for hours) does not poll: it looks
    at the token file once, sleeps on its FIFO, and the gate's hand-over (token file, then a
    wake-up) ends the wait at once; nothing is left in the hand-off folder."""
    import threading
    import time
    from pathlib import Path

    import widgets.rater_app as rater_app
    from fsl_xai.study.gate import Gate, GateSettings
    from fsl_xai.study.session import handoff_wake_path

    db, _, ((_, token), _) = study["study"]
    handoff = tmp_path / "handoff"
    handoff.mkdir(mode=0o700)
    kernel_id = "0123abcd-0000-4000-8000-00000000beef"
    monkeypatch.setenv(rater_app.HANDOFF_ENV, str(handoff))
    monkeypatch.setenv("VOILA_KERNEL_ID", kernel_id)
    monkeypatch.setenv("VOILA_PREHEAT", "True")  # waits with no deadline, as a preheated kernel does
    monkeypatch.setattr(rater_app, "HANDOFF_WAKE_CHECK_S", 60.0)  # only the wake-up can end the wait in time
    looks: list[str] = []
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (looks.append(self.name), real_read(self, *a, **k))[1])
    gate = Gate(db, 1, GateSettings(), handoff=handoff)

    def hand_over() -> None:
        deadline = time.monotonic() + 30
        while not handoff_wake_path(handoff, kernel_id).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the kernel is asleep on its FIFO by now
        gate.hand_over(kernel_id, token)

    writer = threading.Thread(target=hand_over)
    writer.start()
    start = time.monotonic()
    got = rater_app.token_from_environment()
    waited = time.monotonic() - start
    writer.join()
    gate.close()
    assert got == token
    assert waited < 10, f"the wake-up did not end the wait ({waited:.1f} s)"
    assert looks.count(kernel_id) == 2, looks  # once before sleeping, once when woken: no polling
    assert not list(handoff.iterdir()), "the token file or the FIFO was left behind"
    # the gate forgetting a kernel that never picked its token up removes both
    gate.hand_over(kernel_id, token)
    gate.forget(kernel_id)
    assert not list(handoff.iterdir())
