"""The study store's SQLite file: its tables and triggers, opening it (read-write or read-only)
with the checks that make a bad file fail at open rather than at a rater's submit, and the two ways
to use it (a write transaction, a read), each turning SQLite failures into one-line
:class:`StudyStoreError` messages.

Why SQLite in WAL mode: readers never block the writer, each answer is committed in its own
transaction before the app confirms it, and a killed server loses nothing that was confirmed. The
triggers make answers append-only and refuse, underneath the store's own checks, a second attempt
at an item the study does not let a rater change, and a revised answer before the first.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .store_errors import AlreadyAnswered, StudyStoreError, store_error

SCHEMA_VERSION = 3

TABLES = """
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
# after TABLES and the phase column of stores made before it (schema version 2)
TRIGGERS = """CREATE TRIGGER IF NOT EXISTS answers_no_update BEFORE UPDATE ON answers
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


def init_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and triggers (and add the phase column to a store of schema version 2),
    then record the schema version: a real write, so a read-only file or folder fails here."""
    # executescript commits on its own; the statements are all IF NOT EXISTS / OR IGNORE, so
    # concurrent openers are safe.
    for attempt in range(50):
        try:
            conn.executescript(TABLES)
            if "phase" not in {row[1] for row in conn.execute("PRAGMA table_info(answers)")}:
                try:  # a store of schema version 2: its answers are all of independent reading
                    conn.execute("ALTER TABLE answers ADD COLUMN phase TEXT NOT NULL DEFAULT 'single'")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another opener added it just now
                        raise
            conn.executescript(TRIGGERS)
            # a real write: a read-only file or folder fails here, at open, not at a rater's submit
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        except sqlite3.OperationalError as exc:  # pragma: no cover - only under heavy contention
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.05)


def open_read_write(path: Path, timeout: float) -> sqlite3.Connection:
    """Open (creating it and its folder) the store at ``path`` for writing, in WAL mode with full
    sync, and bring its schema up to date."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyStoreError(f"cannot create the folder {path.parent} for the study store "
                              f"({exc.strerror}); choose a writable place") from None
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction takes
    # the lock up front instead of failing half-way with "database is locked".
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed answer survives a power cut as well as a killed process
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        init_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open an existing store without writing anything, also in a read-only folder (as immutable
    when no unmerged ``-wal`` file would be missed)."""
    if not path.is_file():
        raise StudyStoreError(f"{path} not found; give the folder of a frozen study")
    uri = path.resolve().as_uri()
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
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StudyStoreError(
                f"{path} has answers in {wal.name} that are not yet merged into it, and its folder is "
                "read-only, so they cannot be read safely; copy the whole folder to a writable place and "
                "export from the copy") from None
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('meta', 'items', 'answers')"
                        ).fetchone()[0] < 3:
            raise StudyStoreError(f"{path} holds no study (no items or answers tables); give the "
                                  "folder of a frozen study")
    except BaseException:
        conn.close()
        raise
    return conn


class StoreConnection:
    """One open store file: write transactions and reads, with SQLite failures as StudyStoreError.

    Args:
        path: the store's file (created, with its folder, unless ``read_only``).
        timeout: seconds to wait for another process's write lock.
        read_only: open without writing anything; every transaction then raises StudyStoreError.

    Raises:
        StudyStoreError: the file is missing (read-only), not a study store, damaged, or cannot be
            written (read-write).
    """

    def __init__(self, path: Path, timeout: float = 30.0, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        try:
            self.conn = open_read_only(path) if read_only else open_read_write(path, timeout)
        except sqlite3.Error as exc:
            raise store_error(path, exc) from None
        # a store of schema version 2 opened read-only has no phase column: all its answers are single
        columns = {row[1] for row in self.rows("PRAGMA table_info(answers)")}
        #: the SQL expression of an answer's phase, for SELECT lists
        self.phase_column = "phase" if "phase" in columns else "'single'"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), committed when the block ends and rolled back on
        any error; a constraint or trigger that refuses the change becomes AlreadyAnswered or
        StudyStoreError."""
        if self.read_only:
            raise StudyStoreError(f"{self.path} was opened read-only; open it without read_only=True to change it")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None
        try:
            yield self.conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                # a constraint or trigger refused the change (submit checks first; this is the backstop)
                kind = AlreadyAnswered if "already answered" in str(exc) else StudyStoreError
                raise kind(f"the study store refused the change: {exc}") from None
            if isinstance(exc, sqlite3.Error):
                raise store_error(self.path, exc) from None
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise store_error(self.path, exc) from None

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read; a damaged file becomes a one-line StudyStoreError."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None

    def close(self) -> None:
        self.conn.close()
