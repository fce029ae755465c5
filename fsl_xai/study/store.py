"""A crash-safe, append-only SQLite store for trust-study answers.

Why SQLite in WAL mode: readers never block the writer, each answer is committed in its own
transaction before the app confirms it, and a killed server loses nothing that was confirmed.
Answers are append-only (triggers refuse UPDATE and DELETE): a changed answer is a new row, and
the latest row per (rater, item, question) is the current answer. A client-chosen ``answer_key``
makes a retried submit idempotent, so a rater whose confirmation was lost can send it again
without creating a duplicate.

Raters are reached by a random token; only its SHA-256 is stored. Every call that reads or writes
answers takes the token and checks it, so a rater can only see and add their own answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FslXaiError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    rater_id INTEGER PRIMARY KEY AUTOINCREMENT,
    pseudonym TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL DEFAULT 'rater',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    condition TEXT NOT NULL,
    shown_json TEXT NOT NULL,
    provenance_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    rater_id INTEGER NOT NULL REFERENCES raters(rater_id),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL REFERENCES items(item_id),
    PRIMARY KEY (rater_id, position)
);
CREATE TABLE IF NOT EXISTS answers (
    answer_id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater_id INTEGER NOT NULL REFERENCES raters(rater_id),
    item_id TEXT NOT NULL REFERENCES items(item_id),
    question TEXT NOT NULL,
    value TEXT,
    response_ms REAL,
    answer_key TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    UNIQUE (rater_id, answer_key, question)
);
CREATE INDEX IF NOT EXISTS answers_by_rater ON answers(rater_id, item_id);
CREATE TRIGGER IF NOT EXISTS answers_no_update BEFORE UPDATE ON answers
BEGIN SELECT RAISE(ABORT, 'answers are append-only: submit a new answer instead'); END;
CREATE TRIGGER IF NOT EXISTS answers_no_delete BEFORE DELETE ON answers
BEGIN SELECT RAISE(ABORT, 'answers are append-only and cannot be deleted'); END;
"""


class AccessDenied(FslXaiError, PermissionError):
    """The token is unknown or revoked, or asks for another rater's data."""


class StudyStoreError(FslXaiError, ValueError):
    """A request to the store is malformed (unknown item, not assigned, ...)."""


@dataclass(frozen=True)
class Rater:
    rater_id: int
    pseudonym: str
    role: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _item_from_row(row: sqlite3.Row) -> dict[str, Any]:
    return {"item_id": row["item_id"], "case_id": row["case_id"], "condition": row["condition"],
            "shown": json.loads(row["shown_json"]), "provenance": json.loads(row["provenance_json"])}


class ResponseStore:
    """One study's answers in one SQLite file. Open one per thread or process."""

    def __init__(self, path: str | Path, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction takes
        # the lock up front instead of failing half-way with "database is locked".
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed answer survives a power cut as well as a killed process
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._init_schema()

    def _init_schema(self) -> None:
        # executescript commits on its own; the statements are all IF NOT EXISTS, so concurrent
        # openers are safe.
        for attempt in range(50):
            try:
                self._conn.executescript(_SCHEMA)
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            except sqlite3.OperationalError as exc:  # pragma: no cover - only under heavy contention
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        return self._conn.execute("PRAGMA journal_mode").fetchone()[0]

    # ------------------------------------------------------------------ study content
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def add_items(self, items: list[dict[str, Any]]) -> None:
        """Store frozen items: dicts with item_id, case_id, condition, shown (what the rater sees,
        JSON-able) and provenance (model fingerprint, episode, method, parameters)."""
        with self._transaction() as db:
            for item in items:
                db.execute(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                    (item["item_id"], str(item["case_id"]), item["condition"],
                     json.dumps(item["shown"], sort_keys=True), json.dumps(item["provenance"], sort_keys=True)),
                )

    def item(self, item_id: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            raise StudyStoreError(f"unknown study item {item_id!r}")
        return _item_from_row(row)

    def all_items(self) -> list[dict[str, Any]]:
        """Every frozen item (as ``item()`` gives it), ordered by item id (organiser/export use)."""
        return [_item_from_row(row) for row in self._conn.execute("SELECT * FROM items ORDER BY item_id")]

    def n_items(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def n_raters(self) -> int:
        """Raters registered so far, revoked ones included (rater numbers continue after them)."""
        return self._conn.execute("SELECT COUNT(*) FROM raters").fetchone()[0]

    # ------------------------------------------------------------------ raters and tokens
    def add_rater(self, item_ids: list[str], role: str = "rater", pseudonym: str | None = None) -> tuple[Rater, str]:
        """Register a rater with their ordered items; returns (rater, token). The token is shown
        once: only its hash is stored."""
        token = secrets.token_urlsafe(24)
        with self._transaction() as db:
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
        with self._transaction() as db:
            db.execute("UPDATE raters SET revoked_at = ? WHERE pseudonym = ?", (time.time(), pseudonym))

    def authenticate(self, token: str | None) -> Rater:
        """The rater behind a token; AccessDenied for an unknown or revoked one."""
        if not token or not isinstance(token, str):
            raise AccessDenied("a rater token is required; open the link you were given")
        row = self._conn.execute("SELECT rater_id, pseudonym, role, revoked_at, token_hash FROM raters "
                                 "WHERE token_hash = ?", (_hash_token(token),)).fetchone()
        if row is None or not hmac.compare_digest(row["token_hash"], _hash_token(token)):
            raise AccessDenied("unknown token: check the link, or ask the study organiser for a new one")
        if row["revoked_at"] is not None:
            raise AccessDenied("this token was revoked; ask the study organiser for a new one")
        return Rater(row["rater_id"], row["pseudonym"], row["role"])

    # ------------------------------------------------------------------ answering
    def assigned_items(self, token: str) -> list[str]:
        rater = self.authenticate(token)
        rows = self._conn.execute("SELECT item_id FROM assignments WHERE rater_id = ? ORDER BY position",
                                  (rater.rater_id,)).fetchall()
        return [r[0] for r in rows]

    def submit(self, token: str, item_id: str, answers: dict[str, Any], answer_key: str,
               response_ms: float | None = None) -> list[int]:
        """Record a rater's answers to one item in one transaction; returns the answer ids.

        ``answer_key`` identifies this submission (the app makes one per screen shown); sending
        the same key again returns the stored ids instead of adding rows.
        """
        rater = self.authenticate(token)
        if not answers:
            raise StudyStoreError("no answers given; answer at least one question")
        with self._transaction() as db:
            assigned = db.execute("SELECT 1 FROM assignments WHERE rater_id = ? AND item_id = ?",
                                  (rater.rater_id, item_id)).fetchone()
            if assigned is None:
                raise AccessDenied(f"item {item_id!r} is not assigned to this rater")
            ids = []
            now = time.time()
            for question, value in sorted(answers.items()):
                existing = db.execute("SELECT answer_id FROM answers WHERE rater_id = ? AND answer_key = ? "
                                      "AND question = ?", (rater.rater_id, answer_key, question)).fetchone()
                if existing is not None:
                    ids.append(existing[0])
                    continue
                cur = db.execute(
                    "INSERT INTO answers (rater_id, item_id, question, value, response_ms, answer_key, submitted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rater.rater_id, item_id, question, None if value is None else json.dumps(value),
                     response_ms, answer_key, now),
                )
                ids.append(cur.lastrowid)
        return ids

    def my_answers(self, token: str) -> list[dict[str, Any]]:
        """Every answer row of the token's rater (all versions, oldest first)."""
        rater = self.authenticate(token)
        rows = self._conn.execute("SELECT answer_id, item_id, question, value, response_ms, answer_key, submitted_at "
                                  "FROM answers WHERE rater_id = ? ORDER BY answer_id", (rater.rater_id,)).fetchall()
        return [dict(r) | {"value": None if r["value"] is None else json.loads(r["value"])} for r in rows]

    def current_answers(self, token: str) -> dict[str, dict[str, Any]]:
        """The latest answer per item and question for the token's rater."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.my_answers(token):
            out.setdefault(row["item_id"], {})[row["question"]] = row["value"]
        return out

    def next_position(self, token: str) -> int:
        """The position of the first assigned item without any answer (len(items) when done)."""
        items = self.assigned_items(token)
        done = set(self.current_answers(token))
        for i, item_id in enumerate(items):
            if item_id not in done:
                return i
        return len(items)

    # ------------------------------------------------------------------ organiser side
    def all_answers(self) -> list[dict[str, Any]]:
        """Every answer with the rater's pseudonym (organiser/export use; never raw tokens)."""
        rows = self._conn.execute(
            "SELECT a.answer_id, r.pseudonym AS rater, r.role, a.item_id, i.case_id, i.condition, a.question, "
            "a.value, a.response_ms, a.answer_key, a.submitted_at FROM answers a "
            "JOIN raters r USING (rater_id) JOIN items i USING (item_id) ORDER BY a.answer_id").fetchall()
        return [dict(r) | {"value": None if r["value"] is None else json.loads(r["value"])} for r in rows]
