"""One rater's walk through a study, as plain Python (the Voila app is a thin view over it).

The session keeps nothing that matters in memory: where the rater is comes from the store (the
first assigned item without an answer), so a rater who closes the browser, or whose server was
killed, resumes where they left off.

Answers are keyed to what was shown: each time ``current()`` shows an item it issues a one-off
key (``shown_key``: the item, i.e. case and condition, and a random token), and ``submit`` sends
the answers under the key of the screen they were given on. A retry of the same screen is stored
once; the same rater answering the same case in two tabs sends two keys, and the store either
keeps both as distinct attempts (``allow_back: true``) or refuses the second with
:class:`~fsl_xai.study.store.AlreadyAnswered` (the default), never replacing a confirmed answer.

Sequential reading (``reading: sequential``): a case in a condition that shows the AI takes two
screens, its ``step``: ``first``, the case alone (no panel of the AI, and nothing of its output
in what ``current()`` returns), then, once that answer is stored (it is final), ``revised``: the
AI's panels with the first answer filled in, which the rater may change. The step comes from the
store (a case with a stored first answer is at its revised step), so a reload resumes there.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .design import Question, StudyDesign
from .store import AlreadyAnswered, ResponseStore, StudyStoreError

# screens of this session that can still be submitted (a page shows one; going back adds a few)
SHOWN_KEYS_KEPT = 16
#: what a screen without the AI may show of a frozen item (true_class: teaching mode's reveal only)
UNAIDED_KEYS = ("case_label", "image_png", "classes", "true_class")


def handoff_wake_path(folder: str | os.PathLike, kernel_id: str) -> Path:
    """Behind the gate: the FIFO where a kernel waiting for its rater's token (the file
    ``folder/<kernel_id>``) sleeps until the gate, having written that file, wakes it. A waiting
    kernel then costs no CPU (a preheated kernel may wait for hours; polling the file every 50 ms
    cost each one 3 CPU ms a second). The gate writes the token file first, so a kernel that polls
    instead (no FIFO support) finds it all the same."""
    return Path(folder) / f".{kernel_id}.wake"


@dataclass(frozen=True)
class _Shown:
    position: int
    item_id: str
    shown_at: float
    step: str
    condition: str


class RaterSession:
    """Drive one rater through their assigned items.

    Args:
        store: the study's response store.
        token: the rater's token (checked on every call).
        design: the study design (questions, allow_back, mode).
        clock: a monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, store: ResponseStore, token: str, design: StudyDesign,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.token, self.design, self.clock = store, token, design, clock
        self.rater = store.authenticate(token)
        self.items = store.assigned_items(token)
        self.position = store.next_position(token)
        self._shown: OrderedDict[str, _Shown] = OrderedDict()
        self._last_key: str | None = None

    @property
    def done(self) -> bool:
        return self.position >= len(self.items)

    @property
    def progress(self) -> tuple[int, int]:
        """(items answered, items assigned)."""
        return len(self.store.completed_items(self.token)), len(self.items)

    def step(self, position: int | None = None) -> str:
        """The step of the item at ``position`` (default: the current one): ``single``
        (independent reading), ``first`` (unaided) or ``revised`` (with the AI's output)."""
        position = self.position if position is None else position
        return self._step(self.items[position], self.store.item(self.items[position])["condition"])

    def _step(self, item_id: str, condition: str, phases: dict[str, dict[str, Any]] | None = None) -> str:
        """The step of ``item_id`` (in ``condition``); ``phases``: the rater's answers to it by
        phase, when already read."""
        steps = self.design.steps(condition)
        if len(steps) == 1:
            return steps[0]
        done = self.store.answers_by_phase(self.token).get(item_id, {}) if phases is None else phases
        return "revised" if "first" in done else "first"

    def questions(self, step: str, condition: str) -> tuple[Question, ...]:
        """The questions asked on a screen of this step and condition."""
        return self.design.questions_for(step != "first" and self.design.shows_ai(condition))

    def current(self) -> dict[str, Any]:
        """The item to show now with the ``shown_key`` to submit its answers under; starts its timer.

        Returns:
            ``item_id``, ``condition``, ``step``, ``shown`` (what the screen may show, as frozen;
            at a ``first`` step only the case itself), ``panels`` (the condition's panels; none at
            a ``first`` step), ``questions`` (ids of the questions asked), ``position``,
            ``previous_answers`` (to fill in: at a ``revised`` step the first answer),
            ``first_answers`` (at a ``revised`` step) and ``shown_key``. The item's sample id
            (``case_id``) and provenance stay in the store: a rater's screen is built from this and
            must not identify the case (its label is ``shown["case_label"]``).
        """
        if self.done:
            raise StudyStoreError("all items are answered; the study is complete for this rater")
        stored = self.store.item(self.items[self.position])
        item = {key: stored[key] for key in ("item_id", "condition", "shown")}
        phases = self.store.answers_by_phase(self.token).get(item["item_id"], {})
        step = self._step(item["item_id"], item["condition"], phases)
        item["step"] = step
        item["panels"] = list(self.design.condition(item["condition"]).show)
        item["questions"] = [q.id for q in self.questions(step, item["condition"])]
        item["position"] = self.position
        if step == "first":
            # nothing of the AI's output before the first answer: not on screen, not in the kernel's item
            item["shown"] = {k: v for k, v in item["shown"].items() if k in UNAIDED_KEYS}
            item["panels"] = []
            item["previous_answers"] = phases.get("first", {})
        elif step == "revised":
            item["first_answers"] = phases.get("first", {})
            item["previous_answers"] = phases.get("first", {}) | phases.get("revised", {})
        else:
            item["previous_answers"] = phases.get("single", {})
        key = f"{item['item_id']}#{step}#{secrets.token_urlsafe(12)}"
        self._shown[key] = _Shown(self.position, item["item_id"], self.clock(), step, item["condition"])
        while len(self._shown) > SHOWN_KEYS_KEPT:
            self._shown.popitem(last=False)
        self._last_key = key
        item["shown_key"] = key
        return item

    def validate(self, answers: dict[str, Any], questions: tuple[Question, ...] | None = None) -> dict[str, Any]:
        """Check answers against the questions (default: all of the design's); raises
        StudyStoreError naming the problem."""
        clean = {}
        questions = self.design.questions if questions is None else questions
        for q in questions:
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
        unknown = {k for k, v in answers.items() if v not in (None, "")} - {q.id for q in questions}
        if unknown:
            raise StudyStoreError(f"unknown question(s) {sorted(unknown)}")
        return clean

    def submit(self, answers: dict[str, Any], shown_key: str | None = None) -> list[int]:
        """Store the answers to a shown item (committed before this returns), then move on.

        Args:
            answers: question id -> value.
            shown_key: the ``shown_key`` of the screen the answers were given on (from
                ``current()``); by default the item this session showed last.

        Returns:
            The stored answer ids; a retry of the same screen returns the same ids.

        Raises:
            AlreadyAnswered: the rater already answered this screen's step elsewhere (a first
                answer is always final; otherwise the study does not allow changing answers);
                nothing was stored and the session has moved on to what is left to answer.
            StudyStoreError: no item was shown, the screen is out of date, or an answer is invalid.
        """
        key = shown_key if shown_key is not None else self._last_key
        if key is None:
            raise StudyStoreError("no case is shown yet; show one (current()) before submitting")
        shown = self._shown.get(key)
        if shown is None:
            raise StudyStoreError("this page is out of date; reload it to answer the current case")
        clean = self.validate(answers, self.questions(shown.step, shown.condition))
        elapsed = None
        if self.design.measure_time:
            elapsed = (self.clock() - shown.shown_at) * 1000.0
        try:
            ids = self.store.submit(self.token, shown.item_id, clean, answer_key=key, response_ms=elapsed,
                                    phase=shown.step)
        except AlreadyAnswered:
            self.position = self._next_unanswered(shown.position)
            raise
        # a first answer leaves the case at its revised step; anything else moves on
        self.position = self._next_unanswered(shown.position)
        return ids

    def _next_unanswered(self, start: int) -> int:
        """The first incomplete item from ``start`` on, wrapping round (len(items) when done)."""
        answered = self.store.completed_items(self.token)
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
