"""Reading a study store: frozen items, one rater's answers (as stored, latest per question, by
phase, which items are complete) and every answer for export. Each function takes an open
:class:`~fsl_xai.study.store_connection.StoreConnection`; ``ResponseStore`` checks the rater's
token before it asks for a rater's rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from .store_connection import StoreConnection
from .store_errors import StudyStoreError


def item_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """An items row as a dict, its shown content and provenance decoded."""
    return {"item_id": row["item_id"], "case_id": row["case_id"], "condition": row["condition"],
            "shown": json.loads(row["shown_json"]), "provenance": json.loads(row["provenance_json"])}


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    return dict(row) | {"value": None if row["value"] is None else json.loads(row["value"])}


def item(db: StoreConnection, item_id: str) -> dict[str, Any]:
    rows = db.rows("SELECT * FROM items WHERE item_id = ?", (item_id,))
    if not rows:
        raise StudyStoreError(f"unknown study item {item_id!r}")
    return item_from_row(rows[0])


def all_items(db: StoreConnection) -> list[dict[str, Any]]:
    return [item_from_row(row) for row in db.rows("SELECT * FROM items ORDER BY item_id")]


def assigned_item_ids(db: StoreConnection, rater_id: int) -> list[str]:
    rows = db.rows("SELECT item_id FROM assignments WHERE rater_id = ? ORDER BY position", (rater_id,))
    return [r[0] for r in rows]


def rater_answers(db: StoreConnection, rater_id: int) -> list[dict[str, Any]]:
    """Every answer row of one rater (all versions and phases, oldest first), values decoded."""
    rows = db.rows("SELECT answer_id, item_id, question, value, response_ms, answer_key, submitted_at, "
                   f"{db.phase_column} AS phase FROM answers WHERE rater_id = ? ORDER BY answer_id", (rater_id,))
    return [_decoded(r) for r in rows]


def latest_by_item(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """item -> question -> the latest value, from answer rows oldest first."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(row["item_id"], {})[row["question"]] = row["value"]
    return out


def latest_by_phase(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """item -> phase -> question -> the latest value, from answer rows oldest first."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["item_id"], {}).setdefault(row["phase"], {})[row["question"]] = row["value"]
    return out


def completed_item_ids(db: StoreConnection, rater_id: int, sequential: bool,
                       aided_conditions: Collection[str]) -> set[str]:
    """One rater's items whose last phase is answered (any answer under independent reading; the
    revised answer in an aided condition, else the first, under sequential reading)."""
    rows = db.rows(f"SELECT DISTINCT a.item_id, i.condition, {db.phase_column} AS phase FROM answers a "
                   "JOIN items i USING (item_id) WHERE a.rater_id = ?", (rater_id,))
    return {r["item_id"] for r in rows
            if not sequential or r["phase"] == ("revised" if r["condition"] in aided_conditions else "first")}


def first_incomplete(item_ids: Sequence[str], done: Collection[str]) -> int:
    """The position of the first item not in ``done`` (len(item_ids) when all are)."""
    for i, item_id in enumerate(item_ids):
        if item_id not in done:
            return i
    return len(item_ids)


def all_answers(db: StoreConnection) -> list[dict[str, Any]]:
    """Every answer with the rater's pseudonym and role and the item's case and condition."""
    rows = db.rows(
        "SELECT a.answer_id, r.pseudonym AS rater, r.role, a.item_id, i.case_id, i.condition, a.question, "
        f"a.value, a.response_ms, a.answer_key, a.submitted_at, {db.phase_column} AS phase FROM answers a "
        "JOIN raters r USING (rater_id) JOIN items i USING (item_id) ORDER BY a.answer_id")
    return [_decoded(r) for r in rows]
