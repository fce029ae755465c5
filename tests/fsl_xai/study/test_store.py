import sqlite3
import threading

import pytest

from fsl_xai.study import AccessDenied, AlreadyAnswered, ResponseStore, StudyStoreError
from fsl_xai.study.session import RaterSession


def test_wal_and_append_only(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    assert store.journal_mode == "wal"
    item = store.assigned_items(tok)[0]
    store.submit(tok, item, {"diagnosis": "a"}, answer_key="k")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._conn.execute("UPDATE answers SET value = '\"b\"'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._conn.execute("DELETE FROM answers")
    assert [r["value"] for r in store.my_answers(tok)] == ["a"]


def test_same_key_is_stored_once_and_changes_are_new_rows(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    store.set_allow_back(True)  # a study that lets raters change answers
    item = store.assigned_items(tok)[0]
    first = store.submit(tok, item, {"diagnosis": "a", "confidence": 2}, answer_key="k1")
    again = store.submit(tok, item, {"diagnosis": "a", "confidence": 2}, answer_key="k1")
    assert first == again
    store.submit(tok, item, {"diagnosis": "b"}, answer_key="k2")
    rows = store.my_answers(tok)
    assert len(rows) == 3
    assert store.current_answers(tok)[item] == {"diagnosis": "b", "confidence": 2}


def test_tokens_isolate_raters(tmp_path, design, make_study):
    store, (tok_a, tok_b) = make_study(tmp_path / "s.db", design)
    item_a = store.assigned_items(tok_a)[0]
    store.submit(tok_a, item_a, {"diagnosis": "a"}, answer_key="k")
    assert store.my_answers(tok_b) == []
    # B cannot write to an item that is not assigned to B
    store2, (tok_c,) = make_study(tmp_path / "t.db", design, n_raters=1, cases=["c1"])
    with pytest.raises(AccessDenied):
        store2.submit(tok_c, "c2|no_ai", {"diagnosis": "a"}, answer_key="k")
    for bad in (None, "", "not-a-token", tok_a + "x"):
        with pytest.raises(AccessDenied):
            store.my_answers(bad)
    pseudonym = store.authenticate(tok_b).pseudonym
    store.revoke(pseudonym)
    with pytest.raises(AccessDenied, match="revoked"):
        store.assigned_items(tok_b)
    # tokens are never stored in clear text
    dump = "\n".join(store._conn.iterdump())
    assert tok_a not in dump and tok_b not in dump


def test_unknown_item_and_empty_answers(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    with pytest.raises(StudyStoreError, match="unknown study item"):
        store.item("nope")
    with pytest.raises(StudyStoreError, match="no answers"):
        store.submit(tok, store.assigned_items(tok)[0], {}, answer_key="k")


def test_session_resumes_where_rater_left(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    ticks = iter(range(0, 1000, 2))
    s = RaterSession(store, tok, design, clock=lambda: float(next(ticks)))
    first = s.current()
    assert first["panels"] in ([], ["prediction"])
    s.submit({"diagnosis": "a", "confidence": 3})
    s.current()
    s.submit({"diagnosis": "b", "confidence": 4})
    # a new session (browser closed, server restarted) starts at the third item
    with ResponseStore(tmp_path / "s.db") as reopened:
        s2 = RaterSession(reopened, tok, design)
        assert s2.position == 2
        assert s2.progress == (2, len(store.assigned_items(tok)))
    rows = store.my_answers(tok)
    assert all(r["response_ms"] == 2000.0 for r in rows)


def test_session_validates_answers(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    s = RaterSession(store, tok, design)
    s.current()
    with pytest.raises(StudyStoreError, match="please answer"):
        s.submit({"confidence": 3})
    with pytest.raises(StudyStoreError, match="1 to 5"):
        s.submit({"diagnosis": "a", "confidence": 9})
    with pytest.raises(StudyStoreError, match="one of"):
        s.submit({"diagnosis": "zzz", "confidence": 1})
    with pytest.raises(StudyStoreError, match="does not allow going back"):
        s.back()
    assert store.my_answers(tok) == []


def test_concurrent_raters_threads(tmp_path, design, make_study):
    """Many raters at once through the session code path: every answer stored exactly once."""
    cases = [f"c{i}" for i in range(25)]
    store, tokens = make_study(tmp_path / "s.db", design, n_raters=8, cases=cases)
    errors = []

    def run(token):
        try:
            with ResponseStore(tmp_path / "s.db") as own:
                s = RaterSession(own, token, design)
                while not s.done:
                    s.current()
                    s.submit({"diagnosis": "a", "confidence": 2})
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = store.all_answers()
    assert len(rows) == 8 * 25 * 2
    assert len({(r["rater"], r["item_id"], r["question"]) for r in rows}) == len(rows)


def test_all_items_and_rater_count(tmp_path, design, make_study):
    store, _ = make_study(tmp_path / "s.db", design)
    items = store.all_items()
    assert [i["item_id"] for i in items] == sorted(f"{c}|{k}" for c in design.cases for k in design.condition_names)
    assert items[0] == store.item(items[0]["item_id"]) and items[0]["provenance"] == {"model": "m"}
    assert store.n_raters() == 2
    store.revoke(store.authenticate(store.add_rater([items[0]["item_id"]])[1]).pseudonym)
    assert store.n_raters() == 3  # revoked raters still count: rater numbers continue after them


def test_without_allow_back_the_store_refuses_a_second_attempt(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    assert not store.allow_back  # the design's default
    item = store.assigned_items(tok)[0]
    first = store.submit(tok, item, {"diagnosis": "a", "confidence": 2}, answer_key=f"{item}#one")
    # a retry of the same screen is stored once
    assert store.submit(tok, item, {"diagnosis": "a", "confidence": 2}, answer_key=f"{item}#one") == first
    # another screen of the same item (a second tab): refused, nothing replaced
    with pytest.raises(AlreadyAnswered, match="already answered"):
        store.submit(tok, item, {"diagnosis": "b", "confidence": 5}, answer_key=f"{item}#two")
    # the same screen sent again with other values is not a retry: refused too
    with pytest.raises(AlreadyAnswered, match="other values"):
        store.submit(tok, item, {"diagnosis": "b", "confidence": 2}, answer_key=f"{item}#one")
    # enforced by the database itself, not only by submit(): a raw insert is refused by a trigger
    rater_id = store.authenticate(tok).rater_id
    with pytest.raises(sqlite3.IntegrityError, match="already answered"):
        store._conn.execute("INSERT INTO answers (rater_id, item_id, question, value, answer_key, submitted_at) "
                            "VALUES (?, ?, 'diagnosis', '\"b\"', 'raw', 0)", (rater_id, item))
    assert [(r["question"], r["value"]) for r in store.my_answers(tok)] == [("confidence", 2), ("diagnosis", "a")]


def test_two_sessions_of_one_rater_never_replace_an_answer(tmp_path, design, make_study):
    """Two tabs of the same rater show the same case; the second submit is refused and that tab
    moves on, with the first answer kept."""
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    tab_a, tab_b = RaterSession(store, tok, design), RaterSession(store, tok, design)
    shown_a, shown_b = tab_a.current(), tab_b.current()
    assert shown_a["item_id"] == shown_b["item_id"] and shown_a["shown_key"] != shown_b["shown_key"]
    ids = tab_a.submit({"diagnosis": "a", "confidence": 1})
    with pytest.raises(AlreadyAnswered):
        tab_b.submit({"diagnosis": "b", "confidence": 5})
    assert tab_b.position == tab_a.position == 1
    rows = store.my_answers(tok)
    assert [r["answer_id"] for r in rows] == sorted(ids)
    assert {r["value"] for r in rows} == {"a", 1} and {r["answer_key"] for r in rows} == {shown_a["shown_key"]}
    # a screen is answered under its own key: an old screen's key still names its own item
    later = tab_a.current()
    with pytest.raises(AlreadyAnswered):
        tab_a.submit({"diagnosis": "b", "confidence": 2}, shown_key=shown_a["shown_key"])
    tab_a.submit({"diagnosis": "b", "confidence": 2}, shown_key=later["shown_key"])
    assert store.current_answers(tok)[later["item_id"]] == {"diagnosis": "b", "confidence": 2}


def test_with_allow_back_two_tabs_store_two_attempts(tmp_path, design_dict, make_study):
    from fsl_xai.study import parse_design

    design = parse_design(design_dict | {"allow_back": True})
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    assert store.allow_back
    tab_a, tab_b = RaterSession(store, tok, design), RaterSession(store, tok, design)
    shown_a, shown_b = tab_a.current(), tab_b.current()
    tab_a.submit({"diagnosis": "a", "confidence": 1})
    tab_b.submit({"diagnosis": "b", "confidence": 5})
    rows = [r for r in store.my_answers(tok) if r["question"] == "diagnosis"]
    assert [(r["answer_key"], r["value"]) for r in rows] == [(shown_a["shown_key"], "a"), (shown_b["shown_key"], "b")]
    # going back and changing an answer is a new attempt, and the latest is the current answer
    tab_a.back()
    again = tab_a.current()
    assert again["item_id"] == shown_a["item_id"] and again["previous_answers"] == {"diagnosis": "b", "confidence": 5}
    tab_a.submit({"diagnosis": "a", "confidence": 3})
    assert store.current_answers(tok)[shown_a["item_id"]] == {"diagnosis": "a", "confidence": 3}
    assert len(store.my_answers(tok)) == 6


def test_submit_needs_a_shown_screen(tmp_path, design, make_study):
    store, (tok, _) = make_study(tmp_path / "s.db", design)
    s = RaterSession(store, tok, design)
    with pytest.raises(StudyStoreError, match="no case is shown"):
        s.submit({"diagnosis": "a", "confidence": 1})
    s.current()
    with pytest.raises(StudyStoreError, match="out of date"):
        s.submit({"diagnosis": "a", "confidence": 1}, shown_key="c1|no_ai#forged")
    with pytest.raises(StudyStoreError, match="answer_key"):
        store.submit(tok, store.assigned_items(tok)[0], {"diagnosis": "a"}, answer_key="")
    assert store.my_answers(tok) == []


def test_a_store_frozen_before_allow_back_was_kept_takes_it_from_its_design(tmp_path):
    import json

    for allowed in (True, False):
        path = tmp_path / f"old-{allowed}.db"
        with ResponseStore(path) as old:
            old._conn.execute("DELETE FROM meta WHERE key = 'allow_back'")  # as an older version left it
            old.set_meta("design", json.dumps({"study_id": "x", "allow_back": allowed}))
            assert old.meta("allow_back") is None
        with ResponseStore(path) as reopened:
            assert reopened.allow_back is allowed
