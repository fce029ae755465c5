"""A crash-safe, append-only SQLite store for trust-study answers.

Why SQLite in WAL mode: readers never block the writer, each answer is committed in its own
transaction before the app confirms it, and a killed server loses nothing that was confirmed.
Answers are append-only (triggers refuse UPDATE and DELETE): a changed answer is a new row, and
the latest row per (rater, item, question) is the current answer.

Each submission carries an ``answer_key`` that names what the screen showed: the item (case and
condition) and a one-off token the rater session issued when it showed it. Sending the same key
again (a retry whose confirmation was lost) returns the stored ids instead of adding rows; two
screens of the same item (two tabs) have two keys. When the study does not allow going back
(``allow_back`` false, the default), the store itself refuses a second attempt at an item, with
:class:`AlreadyAnswered` from ``submit`` and, underneath, a trigger that refuses the row, so no
confirmed answer is ever replaced.

Sequential reading (``reading: sequential``, kept in the store's meta with the conditions that
show the AI): each answer carries its ``phase``. In a condition that shows the AI the rater gives a
``first`` (unaided) answer, then a ``revised`` one after seeing the AI's output; elsewhere only the
``first``. The store enforces the order: a first answer is final once stored (whatever
``allow_back`` says), a revised answer needs the first, and an independent study's answers are
``single``. An item is complete when its last phase is answered.

Raters are reached by a random token; only its SHA-256 is stored. Every call that reads or writes
answers takes the token and checks it, so a rater can only see and add their own answers.

This module is the store's one entry point (``ResponseStore``, its errors and constants); the work
is in ``store_connection`` (the file: schema, opening checks, transactions), ``store_answers``
(recording an answer) and ``store_queries`` (reads and export).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import store_queries as queries
from .store_answers import ANSWER_KEY_MAX_CHARS, PHASES, encode_answers, record_answers
from .store_connection import SCHEMA_VERSION, StoreConnection
from .store_errors import AccessDenied, AlreadyAnswered, StudyStoreError, store_error

__all__ = ["ANSWER_KEY_MAX_CHARS", "PHASES", "SCHEMA_VERSION", "AccessDenied", "AlreadyAnswered", "Rater",
           "ResponseStore", "StudyStoreError", "store_error"]


@dataclass(frozen=True)
class Rater:
    rater_id: int
    pseudonym: str
    role: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ResponseStore:
    """One study's answers in one SQLite file. Open one per thread or process.

    Args:
        path: the store's file (created, with its folder, unless ``read_only``).
        timeout: seconds to wait for another process's write lock.
        read_only: open without writing anything (export and analysis); works on a read-only
            folder. Every write then raises StudyStoreError.

    Raises:
        StudyStoreError: the file is missing (read-only), not a study store, damaged, or cannot be
            written (read-write).
    """

    def __init__(self, path: str | Path, timeout: float = 30.0, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._db = StoreConnection(self.path, timeout, read_only)
        self._conn = self._db.conn  # the open sqlite3 connection (tests reach it to play an older store)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        return self._db.rows("PRAGMA journal_mode")[0][0]

    # ------------------------------------------------------------------ study content
    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._db.rows("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def allow_back(self) -> bool:
        """Whether a rater may answer an item again (a new attempt); False unless set."""
        return self.meta("allow_back", "0") == "1"

    def set_allow_back(self, allowed: bool) -> None:
        """Let raters change answers (True) or refuse every second attempt at an item (False)."""
        self.set_meta("allow_back", "1" if allowed else "0")

    @property
    def reading(self) -> str:
        """``"sequential"`` or ``"independent"`` (the default, and what older stores hold)."""
        return self._reading_rules()[0]

    def aided_conditions(self) -> set[str]:
        """The conditions whose items have a revised answer after the first under sequential reading."""
        return self._reading_rules()[1]

    def _reading_rules(self) -> tuple[str, set[str]]:
        """(reading, aided conditions), read together: one query on every answer and every screen."""
        rows: dict[str, str] = {key: value for key, value in self._db.rows(
            "SELECT key, value FROM meta WHERE key IN ('reading', 'aided_conditions')")}
        return rows.get("reading") or "independent", set(json.loads(rows.get("aided_conditions") or "[]"))

    def set_reading(self, reading: str, aided_conditions: Sequence[str] = ()) -> None:
        """Keep the study's reading (``independent`` or ``sequential``) and, for sequential reading,
        the conditions that show the AI (their items take a first and a revised answer)."""
        if reading not in ("independent", "sequential"):
            raise StudyStoreError(f"reading must be 'independent' or 'sequential', got {reading!r}")
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('reading', ?)", (reading,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('aided_conditions', ?)",
                       (json.dumps(sorted(aided_conditions)),))

    def phases(self, condition: str) -> tuple[str, ...]:
        """The answer phases an item of this condition takes, in order."""
        reading, aided = self._reading_rules()
        if reading != "sequential":
            return ("single",)
        return ("first", "revised") if condition in aided else ("first",)

    def add_items(self, items: list[dict[str, Any]]) -> None:
        """Store frozen items: dicts with item_id, case_id, condition, shown (what the rater sees,
        JSON-able) and provenance (model fingerprint, episode, method, parameters)."""
        with self._db.transaction() as db:
            for item in items:
                db.execute(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                    (item["item_id"], str(item["case_id"]), item["condition"],
                     json.dumps(item["shown"], sort_keys=True), json.dumps(item["provenance"], sort_keys=True)),
                )

    def item(self, item_id: str) -> dict[str, Any]:
        return queries.item(self._db, item_id)

    def all_items(self) -> list[dict[str, Any]]:
        """Every frozen item (as ``item()`` gives it), ordered by item id (organiser/export use)."""
        return queries.all_items(self._db)

    def n_items(self) -> int:
        return self._db.rows("SELECT COUNT(*) FROM items")[0][0]

    def n_raters(self) -> int:
        """Raters registered so far, revoked ones included (rater numbers continue after them)."""
        return self._db.rows("SELECT COUNT(*) FROM raters")[0][0]

    def n_answers(self) -> int:
        """Answer rows stored so far (every attempt of every rater)."""
        return self._db.rows("SELECT COUNT(*) FROM answers")[0][0]

    # ------------------------------------------------------------------ raters and tokens
    def add_rater(self, item_ids: list[str], role: str = "rater", pseudonym: str | None = None) -> tuple[Rater, str]:
        """Register a rater with their ordered items; returns (rater, token). The token is shown
        once: only its hash is stored."""
        token = secrets.token_urlsafe(24)
        with self._db.transaction() as db:
            n = db.execute("SELECT COUNT(*) FROM raters").fetchone()[0]
            name = pseudonym or f"R{n + 1:03d}"
            cur = db.execute("INSERT INTO raters (pseudonym, token_hash, role, created_at) VALUES (?, ?, ?, ?)",
                             (name, _hash_token(token), role, time.time()))
            rater_id = cur.lastrowid
            if rater_id is None:  # sqlite3 sets it after every INSERT; None would be a driver change
                raise StudyStoreError("the database did not return the new rater's id; the rater was not added")
            for position, item_id in enumerate(item_ids):
                db.execute("INSERT INTO assignments VALUES (?, ?, ?)", (rater_id, position, item_id))
        return Rater(rater_id, name, role), token

    def revoke(self, pseudonym: str) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE raters SET revoked_at = ? WHERE pseudonym = ?", (time.time(), pseudonym))

    def authenticate(self, token: str | None) -> Rater:
        """The rater behind a token; AccessDenied for an unknown or revoked one."""
        if not token or not isinstance(token, str):
            raise AccessDenied("a rater token is required; open the link you were given")
        rows = self._db.rows("SELECT rater_id, pseudonym, role, revoked_at, token_hash FROM raters "
                             "WHERE token_hash = ?", (_hash_token(token),))
        if not rows or not hmac.compare_digest(rows[0]["token_hash"], _hash_token(token)):
            raise AccessDenied("unknown token: check the link, or ask the study organiser for a new one")
        row = rows[0]
        if row["revoked_at"] is not None:
            raise AccessDenied("this token was revoked; ask the study organiser for a new one")
        return Rater(row["rater_id"], row["pseudonym"], row["role"])

    # ------------------------------------------------------------------ answering
    def assigned_items(self, token: str) -> list[str]:
        return queries.assigned_item_ids(self._db, self.authenticate(token).rater_id)

    def submit(self, token: str, item_id: str, answers: dict[str, Any], answer_key: str,
               response_ms: float | None = None, phase: str = "single") -> list[int]:
        """Record a rater's answers to one item in one transaction; returns the answer ids (in the
        order of the sorted question ids).

        Args:
            token: the rater's token.
            item_id: the item the answers are to.
            answers: question id -> value (JSON-able).
            answer_key: names this submission by what the screen showed (the rater session makes
                ``"<item_id>#<step>#<token it issued when it showed the item>"``). The same key
                again is a retry: the stored ids come back and nothing is added.
            response_ms: time from showing the item to submitting, if measured.
            phase: ``"single"`` (independent reading), or under sequential reading ``"first"``
                (unaided) and then, in a condition that shows the AI, ``"revised"``.

        Raises:
            AlreadyAnswered: a first answer to this item is stored already (it is final), or the
                study does not allow changing answers and this rater already answered this phase
                of the item under another key (another tab, or an earlier screen); or this key
                was stored with other answers. Nothing was stored.
            AccessDenied: unknown or revoked token, or the item is not the rater's.
            StudyStoreError: the phase does not fit the study's reading or the item's condition,
                or a revised answer comes before the first.
        """
        rater = self.authenticate(token)
        encoded = encode_answers(answers, answer_key)
        with self._db.transaction() as db:
            return record_answers(db, self, rater.rater_id, item_id, encoded, answer_key, response_ms, phase)

    def my_answers(self, token: str) -> list[dict[str, Any]]:
        """Every answer row of the token's rater (all versions and phases, oldest first)."""
        return queries.rater_answers(self._db, self.authenticate(token).rater_id)

    def current_answers(self, token: str) -> dict[str, dict[str, Any]]:
        """The latest answer per item and question for the token's rater (under sequential
        reading: the revised answer where there is one, i.e. the final answer)."""
        return queries.latest_by_item(self.my_answers(token))

    def answers_by_phase(self, token: str) -> dict[str, dict[str, dict[str, Any]]]:
        """item -> phase -> question -> latest value, for the token's rater."""
        return queries.latest_by_phase(self.my_answers(token))

    def completed_items(self, token: str) -> set[str]:
        """The token's items whose last phase is answered (an answered item under independent reading)."""
        rater = self.authenticate(token)
        reading, aided = self._reading_rules()
        return queries.completed_item_ids(self._db, rater.rater_id, reading == "sequential", aided)

    def next_position(self, token: str) -> int:
        """The position of the first assigned item not yet complete (len(items) when done)."""
        return queries.first_incomplete(self.assigned_items(token), self.completed_items(token))

    # ------------------------------------------------------------------ organiser side
    def all_answers(self) -> list[dict[str, Any]]:
        """Every answer with the rater's pseudonym (organiser/export use; never raw tokens)."""
        return queries.all_answers(self._db)
