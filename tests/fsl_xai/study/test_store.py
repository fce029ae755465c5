import sqlite3
import threading

import pytest

from fsl_xai.study import AccessDenied, ResponseStore, StudyStoreError
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
