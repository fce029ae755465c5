"""Study files: what raters see, in which order and condition, and what they are asked.

A study file is YAML or JSON::

    study_id: blood-cells-2026
    dataset: {name: pbc-blood-64, split: test}
    model: {default: pbc-blood-64}            # or {checkpoint: path/to/model.pt}
    episode: {n_way: 3, n_shot: 5, seed: 0}   # the support set the model decides with
    cases: {n: 12, seed: 1}                   # or a list of sample ids
    conditions: [no_ai, prediction, heatmap, prototypes]
    assignment: {design: within, seed: 7}     # or between
    questions:
      - {id: diagnosis, type: choice}
      - {id: confidence, type: likert, scale: 5, text: How confident are you?}
      - {id: trust, type: likert, scale: 5, text: I trust the model's advice}
      - {id: comment, type: text, required: false}
    allow_back: false
    measure_time: true
    method: gradcam
    mode: study                                # or teaching

Conditions are names of what is shown; each name maps to a set of panels (``CONDITION_PANELS``),
or a condition can be given as ``{name: ..., show: [prediction, heatmap, badges]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FslXaiError

PANELS = ("prediction", "heatmap", "prototypes", "badges")
CONDITION_PANELS: dict[str, tuple[str, ...]] = {
    "no_ai": (),
    "prediction": ("prediction",),
    "heatmap": ("prediction", "heatmap"),
    "prototypes": ("prediction", "prototypes"),
    "heatmap_badges": ("prediction", "heatmap", "badges"),
    "prototypes_badges": ("prediction", "prototypes", "badges"),
}
QUESTION_TYPES = ("choice", "likert", "text")


class StudyDesignError(FslXaiError, ValueError):
    """A study file is invalid; the message names the field and how to fix it."""


@dataclass(frozen=True)
class Condition:
    name: str
    show: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    id: str
    type: str
    text: str = ""
    scale: int = 5
    options: tuple[str, ...] = ()
    required: bool = True


@dataclass(frozen=True)
class StudyDesign:
    study_id: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    episode: dict[str, Any]
    cases: dict[str, Any] | tuple[str, ...]
    conditions: tuple[Condition, ...]
    questions: tuple[Question, ...]
    design: str = "within"
    assignment_seed: int = 0
    allow_back: bool = False
    measure_time: bool = True
    method: str = "gradcam"
    mode: str = "study"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    def condition(self, name: str) -> Condition:
        for c in self.conditions:
            if c.name == name:
                return c
        raise StudyDesignError(f"unknown condition {name!r}; the study has {self.condition_names}")

    def assign(self, case_ids: list[str], rater_index: int) -> list[tuple[str, str]]:
        """The ordered (case_id, condition) pairs for the rater with this index.

        within: every rater sees every case once; the condition of case i is rotated by rater
        (a Latin square), so across each block of len(conditions) raters every case is seen in
        every condition. between: one condition per rater, rotated. The order is shuffled per
        rater from the assignment seed.
        """
        k = len(self.conditions)
        if self.design == "within":
            pairs = [(c, self.conditions[(i + rater_index) % k].name) for i, c in enumerate(case_ids)]
        else:
            cond = self.conditions[rater_index % k].name
            pairs = [(c, cond) for c in case_ids]
        order = np.random.default_rng([self.assignment_seed, rater_index]).permutation(len(pairs))
        return [pairs[i] for i in order]


def _require(data: dict, key: str, kind: type | tuple, where: str = "study file") -> Any:
    if key not in data:
        raise StudyDesignError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise StudyDesignError(f"{where}: field {key!r} must be a {names}, got {type(value).__name__}")
    return value


def parse_design(data: dict[str, Any]) -> StudyDesign:
    """Validate a study dict; StudyDesignError names the first problem and how to fix it."""
    if not isinstance(data, dict):
        raise StudyDesignError("a study file must be a mapping of fields (YAML or JSON object)")
    known = {"study_id", "dataset", "model", "episode", "cases", "conditions", "assignment", "questions",
             "allow_back", "measure_time", "method", "mode", "title", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise StudyDesignError(f"unknown field(s) {unknown}; known fields: {sorted(known)}")
    study_id = _require(data, "study_id", str)
    dataset = _require(data, "dataset", dict)
    _require(dataset, "name", str, "dataset")
    model = _require(data, "model", dict)
    if not ({"default", "checkpoint"} & set(model)):
        raise StudyDesignError("model: give {default: DATASET} or {checkpoint: PATH}")
    episode = dict(_require(data, "episode", dict))
    for key in ("n_way", "n_shot"):
        if not isinstance(episode.get(key), int) or episode[key] < 1:
            raise StudyDesignError(f"episode: {key} must be a positive integer")
    cases = _require(data, "cases", (dict, list))
    if isinstance(cases, list):
        if not cases:
            raise StudyDesignError("cases: the list is empty; give sample ids or {n: N, seed: S}")
        cases = tuple(str(c) for c in cases)
        if len(set(cases)) != len(cases):
            raise StudyDesignError("cases: sample ids are repeated")
    elif not isinstance(cases.get("n"), int) or cases["n"] < 1:
        raise StudyDesignError("cases: {n: N} needs a positive integer N")

    conditions = []
    for c in _require(data, "conditions", list):
        if isinstance(c, str):
            if c not in CONDITION_PANELS:
                raise StudyDesignError(f"unknown condition {c!r}; use one of {sorted(CONDITION_PANELS)} "
                                       "or {name: ..., show: [...]}")
            conditions.append(Condition(c, CONDITION_PANELS[c]))
        elif isinstance(c, dict):
            name = _require(c, "name", str, "condition")
            show = tuple(_require(c, "show", list, f"condition {name!r}"))
            bad = [p for p in show if p not in PANELS]
            if bad:
                raise StudyDesignError(f"condition {name!r}: unknown panel(s) {bad}; panels: {list(PANELS)}")
            conditions.append(Condition(name, show))
        else:
            raise StudyDesignError("each condition must be a name or {name: ..., show: [...]}")
    if not conditions:
        raise StudyDesignError("conditions: give at least one condition")
    if len({c.name for c in conditions}) != len(conditions):
        raise StudyDesignError("conditions: names are repeated")

    questions = []
    for q in _require(data, "questions", list):
        if not isinstance(q, dict):
            raise StudyDesignError("each question must be a mapping with id and type")
        qid, qtype = _require(q, "id", str, "question"), _require(q, "type", str, "question")
        if qtype not in QUESTION_TYPES:
            raise StudyDesignError(f"question {qid!r}: unknown type {qtype!r}; use one of {list(QUESTION_TYPES)}")
        scale = int(q.get("scale", 5))
        if qtype == "likert" and not 2 <= scale <= 11:
            raise StudyDesignError(f"question {qid!r}: a Likert scale needs 2 to 11 points, got {scale}")
        questions.append(Question(qid, qtype, str(q.get("text", "")), scale, tuple(q.get("options", ())),
                                  bool(q.get("required", qtype != "text"))))
    if not questions:
        raise StudyDesignError("questions: give at least one question")
    if len({q.id for q in questions}) != len(questions):
        raise StudyDesignError("questions: ids are repeated")

    assignment = data.get("assignment", {}) or {}
    design = assignment.get("design", "within")
    if design not in ("within", "between"):
        raise StudyDesignError(f"assignment.design must be 'within' or 'between', got {design!r}")
    mode = data.get("mode", "study")
    if mode not in ("study", "teaching"):
        raise StudyDesignError(f"mode must be 'study' or 'teaching', got {mode!r}")
    return StudyDesign(
        study_id=study_id, dataset=dataset, model=model, episode=episode, cases=cases,
        conditions=tuple(conditions), questions=tuple(questions), design=design,
        assignment_seed=int(assignment.get("seed", 0)), allow_back=bool(data.get("allow_back", False)),
        measure_time=bool(data.get("measure_time", True)), method=str(data.get("method", "gradcam")),
        mode=mode, raw=data,
    )


def load_design(path: str | Path) -> StudyDesign:
    """Read and validate a YAML or JSON study file."""
    path = Path(path)
    if not path.exists():
        raise StudyDesignError(f"study file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers raise many types; all mean "not valid syntax"
        raise StudyDesignError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return parse_design(data)
