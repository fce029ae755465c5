"""One rater's walk through a study, as plain Python (the Voila app is a thin view over it).

The session keeps nothing that matters in memory: where the rater is comes from the store (the
first assigned item without an answer), so a rater who closes the browser, or whose server was
killed, resumes where they left off.
"""

from __future__ import annotations

import time
from typing import Any

from .design import StudyDesign
from .store import ResponseStore, StudyStoreError


class RaterSession:
    """Drive one rater through their assigned items.

    Args:
        store: the study's response store.
        token: the rater's token (checked on every call).
        design: the study design (questions, allow_back, mode).
        clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, store: ResponseStore, token: str, design: StudyDesign, clock=time.monotonic):
        self.store, self.token, self.design, self.clock = store, token, design, clock
        self.rater = store.authenticate(token)
        self.items = store.assigned_items(token)
        self.position = store.next_position(token)
        self._shown_at: float | None = None

    @property
    def done(self) -> bool:
        return self.position >= len(self.items)

    @property
    def progress(self) -> tuple[int, int]:
        """(items answered, items assigned)."""
        return len(self.store.current_answers(self.token)), len(self.items)

    def current(self) -> dict[str, Any]:
        """The item to show now (what is shown, its condition and panels); starts its timer."""
        if self.done:
            raise StudyStoreError("all items are answered; the study is complete for this rater")
        item = self.store.item(self.items[self.position])
        item["panels"] = list(self.design.condition(item["condition"]).show)
        item["position"] = self.position
        item["previous_answers"] = self.store.current_answers(self.token).get(item["item_id"], {})
        self._shown_at = self.clock()
        return item

    def validate(self, answers: dict[str, Any]) -> dict[str, Any]:
        """Check answers against the questions; raises StudyStoreError naming the problem."""
        clean = {}
        for q in self.design.questions:
            value = answers.get(q.id)
            if value in (None, ""):
                if q.required:
                    raise StudyStoreError(f"please answer {q.text or q.id!r} before going on")
                continue
            if q.type == "likert" and not (isinstance(value, int) and 1 <= value <= q.scale):
                raise StudyStoreError(f"{q.id!r} must be a whole number from 1 to {q.scale}")
            if q.type == "choice" and q.options and value not in q.options:
                raise StudyStoreError(f"{q.id!r} must be one of {list(q.options)}")
            clean[q.id] = value
        unknown = set(answers) - {q.id for q in self.design.questions}
        if unknown:
            raise StudyStoreError(f"unknown question(s) {sorted(unknown)}")
        return clean

    def submit(self, answers: dict[str, Any]) -> list[int]:
        """Store the answers to the current item (committed before this returns), then move on.

        The submission key is the item plus how many times this rater already answered it, so a
        retry of the same submission is stored once, and a deliberate change after going back is
        a new row.
        """
        if self.done:
            raise StudyStoreError("all items are answered; nothing to submit")
        clean = self.validate(answers)
        item_id = self.items[self.position]
        revision = len({r["answer_key"] for r in self.store.my_answers(self.token) if r["item_id"] == item_id})
        elapsed = None
        if self.design.measure_time and self._shown_at is not None:
            elapsed = (self.clock() - self._shown_at) * 1000.0
        ids = self.store.submit(self.token, item_id, clean, answer_key=f"{item_id}#{revision}", response_ms=elapsed)
        self._shown_at = None
        self.position = self._next_unanswered(self.position + 1)
        return ids

    def _next_unanswered(self, start: int) -> int:
        answered = set(self.store.current_answers(self.token))
        for i in range(start, len(self.items)):
            if self.items[i] not in answered:
                return i
        for i in range(0, start):
            if self.items[i] not in answered:
                return i
        return len(self.items)

    def back(self) -> None:
        """Go to the previous item (only when the study allows it)."""
        if not self.design.allow_back:
            raise StudyStoreError("this study does not allow going back to earlier cases")
        if self.position == 0:
            raise StudyStoreError("this is the first case")
        self.position -= 1
