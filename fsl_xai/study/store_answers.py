"""Recording a rater's answers: the checks and the one transaction behind ``ResponseStore.submit``.

Each submission carries an ``answer_key`` that names what the screen showed; the same key again is
a retry and returns the stored ids. A first answer is final once stored, a revised answer needs the
first, and without ``allow_back`` a second attempt at a phase of an item is refused with
:class:`AlreadyAnswered` (the store's triggers refuse the rows as well, as a backstop).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, Protocol

from .store_errors import AccessDenied, AlreadyAnswered, StudyStoreError

ANSWER_KEY_MAX_CHARS = 300
#: an answer's phase: independent reading, or sequential reading's unaided and revised answers
PHASES = ("single", "first", "revised")


class ReadingRules(Protocol):
    """What recording needs to know of the study's reading (a ResponseStore gives it)."""

    @property
    def reading(self) -> str: ...

    def phases(self, condition: str) -> tuple[str, ...]: ...


def encode_answers(answers: Mapping[str, Any], answer_key: str) -> dict[str, str | None]:
    """Check a submission's answers and key; the answers as stored (question -> JSON text or None,
    sorted by question).

    Raises:
        StudyStoreError: no answers, or a key that is not a text of 1 to ANSWER_KEY_MAX_CHARS characters.
    """
    if not answers:
        raise StudyStoreError("no answers given; answer at least one question")
    if not isinstance(answer_key, str) or not answer_key or len(answer_key) > ANSWER_KEY_MAX_CHARS:
        raise StudyStoreError(f"answer_key must be a non-empty text of at most {ANSWER_KEY_MAX_CHARS} "
                              "characters naming the screen that was answered")
    return {q: None if v is None else json.dumps(v) for q, v in sorted(answers.items())}


def _allows_back(db: sqlite3.Connection) -> bool:
    row = db.execute("SELECT value FROM meta WHERE key = 'allow_back'").fetchone()
    return bool(row and row[0] == "1")


def record_answers(db: sqlite3.Connection, rules: ReadingRules, rater_id: int, item_id: str,
                   encoded: Mapping[str, str | None], answer_key: str, response_ms: float | None,
                   phase: str) -> list[int]:
    """Inside an open write transaction ``db``: store one rater's encoded answers to one item, or
    return the ids stored under the same key before (a retry). Raises as ``ResponseStore.submit``
    says; the caller's transaction then rolls back, so nothing is stored."""
    assigned = db.execute("SELECT i.condition FROM assignments a JOIN items i USING (item_id) "
                          "WHERE a.rater_id = ? AND a.item_id = ?", (rater_id, item_id)).fetchone()
    if assigned is None:
        raise AccessDenied(f"item {item_id!r} is not assigned to this rater")
    allowed = rules.phases(assigned["condition"])
    if phase not in allowed:
        raise StudyStoreError(f"phase {phase!r} does not fit this item: its answers are {list(allowed)} "
                              f"({rules.reading} reading)")
    stored = db.execute("SELECT answer_id, item_id, question, value, phase FROM answers "
                        "WHERE rater_id = ? AND answer_key = ? ORDER BY question",
                        (rater_id, answer_key)).fetchall()
    if stored:
        same = all(r["item_id"] == item_id and r["phase"] == phase for r in stored) and \
            {r["question"]: r["value"] for r in stored} == encoded
        if not same:
            raise AlreadyAnswered("this screen's answer was already saved, with other values; reload the "
                                  "page to see the saved answer")
        return [r["answer_id"] for r in stored]
    done = {r[0] for r in db.execute("SELECT DISTINCT phase FROM answers WHERE rater_id = ? AND item_id = ?",
                                     (rater_id, item_id))}
    if phase == "revised" and "first" not in done:
        raise StudyStoreError("answer this case on your own first; the AI's output comes after your first "
                              "answer is saved")
    if phase == "first" and "first" in done:
        raise AlreadyAnswered("your own first answer to this case is already saved (perhaps in another tab "
                              "or window) and is final, so this answer was not saved; go on from where the "
                              "case is now")
    if phase in done and not _allows_back(db):
        raise AlreadyAnswered("this case was already answered (perhaps in another tab or window) and this "
                              "study does not allow changing answers, so this answer was not saved; go on "
                              "with the next case")
    ids = []
    now = time.time()
    for question, value in encoded.items():
        cur = db.execute(
            "INSERT INTO answers (rater_id, item_id, question, value, response_ms, answer_key, submitted_at, "
            "phase) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rater_id, item_id, question, value, response_ms, answer_key, now, phase),
        )
        if cur.lastrowid is None:  # sqlite3 sets it after every INSERT
            raise StudyStoreError("the database did not return the new answer's id; nothing was stored")
        ids.append(cur.lastrowid)
    return ids
