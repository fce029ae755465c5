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
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FslXaiError

SCHEMA_VERSION = 3
ANSWER_KEY_MAX_CHARS = 300
#: an answer's phase: independent reading, or sequential reading's unaided and revised answers
PHASES = ("single", "first", "revised")

_TABLES = """
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
    phase TEXT NOT NULL DEFAULT 'single',
    UNIQUE (rater_id, answer_key, question)
);
CREATE INDEX IF NOT EXISTS answers_by_rater ON answers(rater_id, item_id);
"""
# after _TABLES and the phase column of stores made before it (schema version 2)
_TRIGGERS = """CREATE TRIGGER IF NOT EXISTS answers_no_update BEFORE UPDATE ON answers
BEGIN SELECT RAISE(ABORT, 'answers are append-only: submit a new answer instead'); END;
CREATE TRIGGER IF NOT EXISTS answers_no_delete BEFORE DELETE ON answers
BEGIN SELECT RAISE(ABORT, 'answers are append-only and cannot be deleted'); END;
DROP TRIGGER IF EXISTS answers_once_without_back;
CREATE TRIGGER IF NOT EXISTS answers_once_per_phase BEFORE INSERT ON answers
WHEN (NEW.phase = 'first' OR COALESCE((SELECT value FROM meta WHERE key = 'allow_back'), '0') = '0')
 AND EXISTS (SELECT 1 FROM answers WHERE rater_id = NEW.rater_id AND item_id = NEW.item_id
             AND phase = NEW.phase AND answer_key <> NEW.answer_key)
BEGIN SELECT RAISE(ABORT, 'already answered: this study does not allow changing this answer'); END;
CREATE TRIGGER IF NOT EXISTS answers_revised_after_first BEFORE INSERT ON answers
WHEN NEW.phase = 'revised'
 AND NOT EXISTS (SELECT 1 FROM answers WHERE rater_id = NEW.rater_id AND item_id = NEW.item_id AND phase = 'first')
BEGIN SELECT RAISE(ABORT, 'a revised answer needs the confirmed first (unaided) answer'); END;
-- stores frozen before allow_back was kept in meta: take it from the frozen design
INSERT OR IGNORE INTO meta SELECT 'allow_back', CASE WHEN json_extract(value, '$.allow_back') = 1 THEN '1' ELSE '0' END
FROM meta WHERE key = 'design' AND json_valid(value);
"""


class AccessDenied(FslXaiError, PermissionError):
    """The token is unknown or revoked, or asks for another rater's data."""


class StudyStoreError(FslXaiError, ValueError):
    """A request to the store is malformed (unknown item, not assigned, ...), or the store's file
    cannot be read or written."""


class AlreadyAnswered(StudyStoreError):
    """The rater already answered this item (in another tab or window, say) and the study does not
    allow changing answers; nothing was stored. The UI shows the message and moves on."""


def store_error(path: Path, exc: sqlite3.Error) -> StudyStoreError:
    """A one-line StudyStoreError that says what is wrong with the store's file and how to fix it."""
    text = str(exc)
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return StudyStoreError(
            f"{path} cannot be written: the file or its folder is read-only ({text}); make both writable "
            "(exporting works on a read-only folder: fsl-xai study export)")
    if "not a database" in text or "malformed" in text or "disk image" in text or "corrupt" in text:
        return StudyStoreError(
            f"{path} is not a readable study store ({text}); it may be damaged or not a study file: restore it "
            "from a backup, or freeze the study again into a new folder")
    if "locked" in text or "busy" in text:
        return StudyStoreError(f"{path} is busy: another process held it locked for too long ({text}); try again")
    return StudyStoreError(f"{path}: the study store failed ({type(exc).__name__}: {text})")


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
        try:
            self._conn = self._open_read_only() if read_only else self._open_read_write(timeout)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None
        # a store of schema version 2 opened read-only has no phase column: all its answers are single
        columns = {row[1] for row in self._rows("PRAGMA table_info(answers)")}
        self._phase = "phase" if "phase" in columns else "'single'"

    def _open_read_write(self, timeout: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyStoreError(f"cannot create the folder {self.path.parent} for the study store "
                                  f"({exc.strerror}); choose a writable place") from None
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction takes
        # the lock up front instead of failing half-way with "database is locked".
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed answer survives a power cut as well as a killed process
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StudyStoreError(f"{self.path} not found; give the folder of a frozen study")
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
        try:
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            if "unable to open" not in str(exc):
                raise
            # A WAL store in a read-only folder cannot make its -shm file. When no -wal file holds
            # answers not yet merged into the main file, that file is the whole store and can be
            # read as immutable; otherwise reading it alone would silently miss answers.
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StudyStoreError(
                    f"{self.path} has answers in {wal.name} that are not yet merged into it, and its folder is "
                    "read-only, so they cannot be read safely; copy the whole folder to a writable place and "
                    "export from the copy") from None
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('meta', 'items', 'answers')"
                            ).fetchone()[0] < 3:
                raise StudyStoreError(f"{self.path} holds no study (no items or answers tables); give the "
                                      "folder of a frozen study")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        # executescript commits on its own; the statements are all IF NOT EXISTS / OR IGNORE, so
        # concurrent openers are safe.
        for attempt in range(50):
            try:
                conn.executescript(_TABLES)
                if "phase" not in {row[1] for row in conn.execute("PRAGMA table_info(answers)")}:
                    try:  # a store of schema version 2: its answers are all of independent reading
                        conn.execute("ALTER TABLE answers ADD COLUMN phase TEXT NOT NULL DEFAULT 'single'")
                    except sqlite3.OperationalError as exc:
                        if "duplicate column" not in str(exc):  # another opener added it just now
                            raise
                conn.executescript(_TRIGGERS)
                # a real write: a read-only file or folder fails here, at open, not at a rater's submit
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            except sqlite3.OperationalError as exc:  # pragma: no cover - only under heavy contention
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StudyStoreError(f"{self.path} was opened read-only; open it without read_only=True to change it")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None
        try:
            yield self._conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                # a constraint or trigger refused the change (submit checks first; this is the backstop)
                kind = AlreadyAnswered if "already answered" in str(exc) else StudyStoreError
                raise kind(f"the study store refused the change: {exc}") from None
            if isinstance(exc, sqlite3.Error):
                raise store_error(self.path, exc) from None
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise store_error(self.path, exc) from None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read; a damaged file becomes a one-line StudyStoreError."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        return self._rows("PRAGMA journal_mode")[0][0]

    # ------------------------------------------------------------------ study content
    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
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
        return self.meta("reading", "independent") or "independent"

    def aided_conditions(self) -> set[str]:
        """The conditions whose items have a revised answer after the first under sequential reading."""
        return set(json.loads(self.meta("aided_conditions") or "[]"))

    def set_reading(self, reading: str, aided_conditions: Sequence[str] = ()) -> None:
        """Keep the study's reading (``independent`` or ``sequential``) and, for sequential reading,
        the conditions that show the AI (their items take a first and a revised answer)."""
        if reading not in ("independent", "sequential"):
            raise StudyStoreError(f"reading must be 'independent' or 'sequential', got {reading!r}")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('reading', ?)", (reading,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('aided_conditions', ?)",
                       (json.dumps(sorted(aided_conditions)),))

    def phases(self, condition: str) -> tuple[str, ...]:
        """The answer phases an item of this condition takes, in order."""
        if self.reading != "sequential":
            return ("single",)
        return ("first", "revised") if condition in self.aided_conditions() else ("first",)

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
        rows = self._rows("SELECT * FROM items WHERE item_id = ?", (item_id,))
        if not rows:
            raise StudyStoreError(f"unknown study item {item_id!r}")
        return _item_from_row(rows[0])

    def all_items(self) -> list[dict[str, Any]]:
        """Every frozen item (as ``item()`` gives it), ordered by item id (organiser/export use)."""
        return [_item_from_row(row) for row in self._rows("SELECT * FROM items ORDER BY item_id")]

    def n_items(self) -> int:
        return self._rows("SELECT COUNT(*) FROM items")[0][0]

    def n_raters(self) -> int:
        """Raters registered so far, revoked ones included (rater numbers continue after them)."""
        return self._rows("SELECT COUNT(*) FROM raters")[0][0]

    def n_answers(self) -> int:
        """Answer rows stored so far (every attempt of every rater)."""
        return self._rows("SELECT COUNT(*) FROM answers")[0][0]

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
        rows = self._rows("SELECT rater_id, pseudonym, role, revoked_at, token_hash FROM raters WHERE token_hash = ?",
                          (_hash_token(token),))
        if not rows or not hmac.compare_digest(rows[0]["token_hash"], _hash_token(token)):
            raise AccessDenied("unknown token: check the link, or ask the study organiser for a new one")
        row = rows[0]
        if row["revoked_at"] is not None:
            raise AccessDenied("this token was revoked; ask the study organiser for a new one")
        return Rater(row["rater_id"], row["pseudonym"], row["role"])

    # ------------------------------------------------------------------ answering
    def assigned_items(self, token: str) -> list[str]:
        rater = self.authenticate(token)
        rows = self._rows("SELECT item_id FROM assignments WHERE rater_id = ? ORDER BY position", (rater.rater_id,))
        return [r[0] for r in rows]

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
        if not answers:
            raise StudyStoreError("no answers given; answer at least one question")
        if not isinstance(answer_key, str) or not answer_key or len(answer_key) > ANSWER_KEY_MAX_CHARS:
            raise StudyStoreError(f"answer_key must be a non-empty text of at most {ANSWER_KEY_MAX_CHARS} "
                                  "characters naming the screen that was answered")
        encoded = {q: None if v is None else json.dumps(v) for q, v in sorted(answers.items())}
        with self._transaction() as db:
            assigned = db.execute("SELECT i.condition FROM assignments a JOIN items i USING (item_id) "
                                  "WHERE a.rater_id = ? AND a.item_id = ?", (rater.rater_id, item_id)).fetchone()
            if assigned is None:
                raise AccessDenied(f"item {item_id!r} is not assigned to this rater")
            allowed = self.phases(assigned["condition"])
            if phase not in allowed:
                raise StudyStoreError(f"phase {phase!r} does not fit this item: its answers are {list(allowed)} "
                                      f"({self.reading} reading)")
            stored = db.execute("SELECT answer_id, item_id, question, value, phase FROM answers "
                                "WHERE rater_id = ? AND answer_key = ? ORDER BY question",
                                (rater.rater_id, answer_key)).fetchall()
            if stored:
                same = all(r["item_id"] == item_id and r["phase"] == phase for r in stored) and \
                    {r["question"]: r["value"] for r in stored} == encoded
                if not same:
                    raise AlreadyAnswered("this screen's answer was already saved, with other values; reload the "
                                          "page to see the saved answer")
                return [r["answer_id"] for r in stored]
            done = {r[0] for r in db.execute("SELECT DISTINCT phase FROM answers WHERE rater_id = ? AND item_id = ?",
                                             (rater.rater_id, item_id))}
            if phase == "revised" and "first" not in done:
                raise StudyStoreError("answer this case on your own first; the AI's output comes after your first "
                                      "answer is saved")
            if phase == "first" and "first" in done:
                raise AlreadyAnswered("your own first answer to this case is already saved (perhaps in another tab "
                                      "or window) and is final, so this answer was not saved; go on from where the "
                                      "case is now")
            allow_back = db.execute("SELECT value FROM meta WHERE key = 'allow_back'").fetchone()
            if phase in done and not (allow_back and allow_back[0] == "1"):
                raise AlreadyAnswered("this case was already answered (perhaps in another tab or window) and this "
                                      "study does not allow changing answers, so this answer was not saved; go on "
                                      "with the next case")
            ids = []
            now = time.time()
            for question, value in encoded.items():
                cur = db.execute(
                    "INSERT INTO answers (rater_id, item_id, question, value, response_ms, answer_key, submitted_at, "
                    "phase) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (rater.rater_id, item_id, question, value, response_ms, answer_key, now, phase),
                )
                if cur.lastrowid is None:  # sqlite3 sets it after every INSERT
                    raise StudyStoreError("the database did not return the new answer's id; nothing was stored")
                ids.append(cur.lastrowid)
        return ids

    def my_answers(self, token: str) -> list[dict[str, Any]]:
        """Every answer row of the token's rater (all versions and phases, oldest first)."""
        rater = self.authenticate(token)
        rows = self._rows("SELECT answer_id, item_id, question, value, response_ms, answer_key, submitted_at, "
                          f"{self._phase} AS phase FROM answers WHERE rater_id = ? ORDER BY answer_id",
                          (rater.rater_id,))
        return [dict(r) | {"value": None if r["value"] is None else json.loads(r["value"])} for r in rows]

    def current_answers(self, token: str) -> dict[str, dict[str, Any]]:
        """The latest answer per item and question for the token's rater (under sequential
        reading: the revised answer where there is one, i.e. the final answer)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.my_answers(token):
            out.setdefault(row["item_id"], {})[row["question"]] = row["value"]
        return out

    def answers_by_phase(self, token: str) -> dict[str, dict[str, dict[str, Any]]]:
        """item -> phase -> question -> latest value, for the token's rater."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for row in self.my_answers(token):
            out.setdefault(row["item_id"], {}).setdefault(row["phase"], {})[row["question"]] = row["value"]
        return out

    def completed_items(self, token: str) -> set[str]:
        """The token's items whose last phase is answered (an answered item under independent reading)."""
        rater = self.authenticate(token)
        rows = self._rows(f"SELECT DISTINCT a.item_id, i.condition, {self._phase} AS phase FROM answers a "
                          "JOIN items i USING (item_id) WHERE a.rater_id = ?", (rater.rater_id,))
        aided = self.aided_conditions()
        sequential = self.reading == "sequential"
        return {r["item_id"] for r in rows
                if not sequential or r["phase"] == ("revised" if r["condition"] in aided else "first")}

    def next_position(self, token: str) -> int:
        """The position of the first assigned item not yet complete (len(items) when done)."""
        items = self.assigned_items(token)
        done = self.completed_items(token)
        for i, item_id in enumerate(items):
            if item_id not in done:
                return i
        return len(items)

    # ------------------------------------------------------------------ organiser side
    def all_answers(self) -> list[dict[str, Any]]:
        """Every answer with the rater's pseudonym (organiser/export use; never raw tokens)."""
        rows = self._rows(
            "SELECT a.answer_id, r.pseudonym AS rater, r.role, a.item_id, i.case_id, i.condition, a.question, "
            f"a.value, a.response_ms, a.answer_key, a.submitted_at, {self._phase} AS phase FROM answers a "
            "JOIN raters r USING (rater_id) JOIN items i USING (item_id) ORDER BY a.answer_id")
        return [dict(r) | {"value": None if r["value"] is None else json.loads(r["value"])} for r in rows]
