"""Sequential reading in the store and the rater session: unaided first (final once stored), then
the AI's output and a revised answer; both stored, the order enforced by the store."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fsl_xai.study import AlreadyAnswered, ResponseStore, StudyStoreError, parse_design
from fsl_xai.study.session import RaterSession

from .conftest import DESIGN

TAB_WORKER = [sys.executable, "-m", "tests.fsl_xai.study._tab_worker"]
ROOT = Path(__file__).resolve().parents[3]
SEQUENTIAL = DESIGN | {
    "reading": "sequential",
    "questions": [*DESIGN["questions"], {"id": "trust", "type": "likert", "scale": 5, "after_ai": True}],
}


def _shown_item(c: str, k: str) -> dict:
    shown = {"case_label": c, "classes": ["a", "b"], "image_png": "", "true_class": "a"}
    if k != "no_ai":
        shown |= {"prediction": {"class": "b", "probability": 0.9}, "guard_warning": "unlike"}
    return shown


@pytest.fixture
def seq_study(tmp_path):
    """A sequential study store whose AI items hold advice, as a freeze makes them."""
    design = parse_design(SEQUENTIAL)
    store = ResponseStore(tmp_path / "s.db")
    store.set_allow_back(design.allow_back)
    store.set_reading(design.reading, design.aided_conditions)
    cases = list(design.cases)
    store.add_items([{"item_id": f"{c}|{k}", "case_id": c, "condition": k, "shown": _shown_item(c, k),
                      "provenance": {}} for c in cases for k in design.condition_names])
    tokens = [store.add_rater([f"{c}|{k}" for c, k in design.assign(cases, r)])[1] for r in range(2)]
    yield store, design, tokens
    store.close()


def _to_first_aided(session: RaterSession) -> dict:
    """Answer unaided-only cases until the current case is in an AI condition; returns it."""
    while True:
        item = session.current()
        if item["condition"] != "no_ai":
            return item
        assert item["step"] == "first" and item["panels"] == []
        session.submit({"diagnosis": "a", "confidence": 2})


def test_first_screen_shows_nothing_of_the_ai_then_the_revised_screen_does(seq_study):
    store, design, (token, _) = seq_study
    s = RaterSession(store, token, design)
    item = _to_first_aided(s)
    assert item["step"] == "first" and item["panels"] == []
    # not only hidden: the AI's output is not in what the view gets
    assert set(item["shown"]) <= {"case_label", "image_png", "classes", "true_class"}
    assert item["questions"] == ["diagnosis", "confidence"]  # trust (after_ai) comes with the AI
    with pytest.raises(StudyStoreError, match="trust"):
        s.submit({"diagnosis": "a", "confidence": 4, "trust": 3})
    s.submit({"diagnosis": "a", "confidence": 4})
    # the same case again, now with the AI's output and the first answer filled in
    again = s.current()
    assert again["item_id"] == item["item_id"] and again["step"] == "revised"
    assert again["panels"] == ["prediction"] and again["shown"]["prediction"]["class"] == "b"
    assert again["first_answers"] == {"diagnosis": "a", "confidence": 4}
    assert again["previous_answers"] == {"diagnosis": "a", "confidence": 4}
    assert again["questions"] == ["diagnosis", "confidence", "trust"]
    assert again["shown_key"].split("#")[1] == "revised" and item["shown_key"].split("#")[1] == "first"
    with pytest.raises(StudyStoreError, match="trust"):
        s.submit({"diagnosis": "b", "confidence": 3})  # trust is required now
    s.submit({"diagnosis": "b", "confidence": 3, "trust": 5})
    phases = store.answers_by_phase(token)[item["item_id"]]
    assert phases == {"first": {"diagnosis": "a", "confidence": 4},
                      "revised": {"diagnosis": "b", "confidence": 3, "trust": 5}}
    assert item["item_id"] in store.completed_items(token)
    assert s.done or s.current()["item_id"] != item["item_id"]


def test_the_store_keeps_a_first_answer_final_and_the_order(seq_study):
    store, design, (token, _) = seq_study
    store.set_allow_back(True)  # even a study that lets raters change answers keeps the first one
    items = store.assigned_items(token)
    aided = next(i for i in items if not i.endswith("|no_ai"))
    with pytest.raises(StudyStoreError, match="on your own first"):
        store.submit(token, aided, {"diagnosis": "b"}, answer_key="r1", phase="revised")
    with pytest.raises(StudyStoreError, match="phase 'single' does not fit"):
        store.submit(token, aided, {"diagnosis": "b"}, answer_key="s1")
    unaided = next(i for i in items if i.endswith("|no_ai"))
    with pytest.raises(StudyStoreError, match="phase 'revised' does not fit"):
        store.submit(token, unaided, {"diagnosis": "b"}, answer_key="u1", phase="revised")
    first = store.submit(token, aided, {"diagnosis": "a"}, answer_key="f1", phase="first")
    assert store.submit(token, aided, {"diagnosis": "a"}, answer_key="f1", phase="first") == first  # a retry
    with pytest.raises(AlreadyAnswered, match="final"):
        store.submit(token, aided, {"diagnosis": "b"}, answer_key="f2", phase="first")
    with pytest.raises(AlreadyAnswered):
        store.submit(token, aided, {"diagnosis": "b"}, answer_key="f1", phase="revised")  # the key is taken
    store.submit(token, aided, {"diagnosis": "b"}, answer_key="r1", phase="revised")
    store.submit(token, aided, {"diagnosis": "a"}, answer_key="r2", phase="revised")  # allow_back: a new attempt
    # the trigger refuses a second first answer even when the check in submit is bypassed
    rater_id = store.authenticate(token).rater_id
    with pytest.raises(sqlite3.IntegrityError, match="already answered"):
        store._conn.execute("INSERT INTO answers (rater_id, item_id, question, value, answer_key, submitted_at, "
                            "phase) VALUES (?, ?, 'diagnosis', '\"b\"', 'raw', 0, 'first')", (rater_id, aided))
    rows = [(r["phase"], r["value"]) for r in store.my_answers(token)]
    assert rows == [("first", "a"), ("revised", "b"), ("revised", "a")]
    assert store.current_answers(token)[aided] == {"diagnosis": "a"}


def test_without_allow_back_a_revised_answer_is_also_once(seq_study):
    store, _, (token, _) = seq_study
    aided = next(i for i in store.assigned_items(token) if not i.endswith("|no_ai"))
    store.submit(token, aided, {"diagnosis": "a"}, answer_key="f", phase="first")
    store.submit(token, aided, {"diagnosis": "b"}, answer_key="r", phase="revised")
    with pytest.raises(AlreadyAnswered, match="does not allow changing"):
        store.submit(token, aided, {"diagnosis": "a"}, answer_key="r2", phase="revised")


def test_an_independent_study_takes_single_answers_only(tmp_path, design, make_study):
    store, (token, _) = make_study(tmp_path / "s.db", design)
    item = store.assigned_items(token)[0]
    with pytest.raises(StudyStoreError, match="phase 'first' does not fit"):
        store.submit(token, item, {"diagnosis": "a"}, answer_key="k", phase="first")
    store.submit(token, item, {"diagnosis": "a"}, answer_key="k")
    assert [r["phase"] for r in store.my_answers(token)] == ["single"]


def test_a_reload_resumes_at_the_right_step(seq_study):
    store, design, (token, _) = seq_study
    s = RaterSession(store, token, design)
    item = _to_first_aided(s)
    position = s.position
    s.submit({"diagnosis": "b", "confidence": 1})
    reloaded = RaterSession(store, token, design)  # a closed browser or a restarted server
    assert reloaded.position == position
    again = reloaded.current()
    assert again["item_id"] == item["item_id"] and again["step"] == "revised"
    assert again["first_answers"] == {"diagnosis": "b", "confidence": 1}
    reloaded.submit({"diagnosis": "b", "confidence": 1, "trust": 2})
    assert RaterSession(store, token, design).position != position
    done, total = reloaded.progress
    assert total == len(design.cases) and done == position + 1


def test_two_tabs_answering_a_first_step_at_once_leave_one_first_answer(seq_study):
    """Tab B still shows the first step after tab A confirmed it: B is refused (the first answer is
    final) and moves to the revised step of the same case; nothing of B's is stored."""
    store, design, (token, _) = seq_study
    tab_a, tab_b = RaterSession(store, token, design), RaterSession(store, token, design)
    item = _to_first_aided(tab_a)
    b_item = tab_b.current()
    assert b_item["item_id"] == item["item_id"] and b_item["step"] == "first"
    tab_a.submit({"diagnosis": "a", "confidence": 2})
    with pytest.raises(AlreadyAnswered):
        tab_b.submit({"diagnosis": "b", "confidence": 5})
    assert tab_b.current()["step"] == "revised" and tab_b.current()["item_id"] == item["item_id"]
    assert store.answers_by_phase(token)[item["item_id"]] == {"first": {"diagnosis": "a", "confidence": 2}}


def test_an_old_store_gets_the_phase_column(tmp_path, design, make_study):
    """A store of schema version 2 (no phase column, the old trigger) opens and its answers are single."""
    path = tmp_path / "old.db"
    store, (token, _) = make_study(path, design)
    store.submit(token, store.assigned_items(token)[0], {"diagnosis": "a"}, answer_key="k")
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER answers_once_per_phase; DROP TRIGGER answers_revised_after_first; "
                       "DROP INDEX answers_by_rater; ALTER TABLE answers DROP COLUMN phase;")
    conn.close()
    with ResponseStore(path, read_only=True) as old:
        assert [r["phase"] for r in old.all_answers()] == ["single"]
    with ResponseStore(path) as reopened:
        assert [r["phase"] for r in reopened.my_answers(token)] == ["single"]
        with pytest.raises(AlreadyAnswered):
            reopened.submit(token, reopened.assigned_items(token)[0], {"diagnosis": "b"}, answer_key="k2")


def test_two_processes_forty_screens_sequential_reading_drop_nothing(tmp_path):
    """Two tabs of one rater in two processes submit every screen (first and revised steps) at the
    same moment, at least 40 times: each screen is confirmed exactly once, the other tab is told,
    and every confirmed answer is stored under its screen's key, none twice."""
    spec = DESIGN | {"reading": "sequential", "cases": [f"c{i}" for i in range(28)]}
    design = parse_design(spec)
    store = ResponseStore(tmp_path / "s.db")
    store.set_reading(design.reading, design.aided_conditions)
    store.add_items([{"item_id": f"{c}|{k}", "case_id": c, "condition": k, "shown": {"case_label": c},
                      "provenance": {}} for c in design.cases for k in design.condition_names])
    _, token = store.add_rater([f"{c}|{k}" for c, k in design.assign(list(design.cases), 0)])
    design_file = tmp_path / "design.json"
    design_file.write_text(json.dumps(spec))
    tabs = {value: subprocess.Popen([*TAB_WORKER, str(tmp_path / "s.db"), str(design_file), token, value], cwd=ROOT,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=os.environ | {"PYTHONUNBUFFERED": "1"})
            for value in ("a", "b")}
    confirmed, refused, trials = [], [], 0
    try:
        while True:
            shown = {}
            for value, proc in tabs.items():
                line = proc.stdout.readline()
                assert line.startswith(("SHOWN", "DONE")), line + proc.stderr.read()
                shown[value] = line.split()[1:3] if line.startswith("SHOWN") else None
            if shown["a"] is None:
                assert shown["b"] is None
                break
            (item_a, key_a), (item_b, key_b) = shown["a"], shown["b"]
            assert item_a == item_b and key_a.split("#")[1] == key_b.split("#")[1], shown
            order = list(tabs.values()) if trials % 2 else list(tabs.values())[::-1]
            for proc in order:
                proc.stdin.write("GO\n")
            for proc in order:
                proc.stdin.flush()
            for value, proc in tabs.items():
                line = proc.stdout.readline().split()
                if line[0] == "CONFIRMED":
                    confirmed.append((line[1], line[2], value))
                else:
                    assert line[0] == "ALREADY", line
                    refused.append((line[1], value))
            trials += 1
        for proc in tabs.values():
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        for proc in tabs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
    n_aided = sum(1 for c, k in design.assign(list(design.cases), 0) if k != "no_ai")
    assert trials == len(design.cases) + n_aided >= 40
    rows = [r for r in store.my_answers(token) if r["question"] == "diagnosis"]
    stored = {(r["item_id"], r["answer_key"], r["value"]) for r in rows}
    assert {(item, key, value) for item, key, value in confirmed} <= stored  # 0 confirmed answers lost
    assert len(rows) == len(stored) == len(confirmed) == len(refused) == trials  # 0 duplicated
    phases = [(r["item_id"], r["phase"]) for r in rows]
    assert len(set(phases)) == len(phases)  # one first and at most one revised answer per case
    assert sum(p == "revised" for _, p in phases) == n_aided
    assert len(store.completed_items(token)) == len(design.cases)
    store.close()
