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
      - {id: confidence, type: likert, scale: 5, text: "How confident are you?"}
      - {id: trust, type: likert, scale: 5, text: "I trust the model's advice"}
      - {id: comment, type: text, required: false}
    allow_back: false
    measure_time: true
    method: gradcam
    mode: study                                # or teaching

Conditions are names of what is shown; each name maps to a set of panels (``CONDITION_PANELS``),
or a condition can be given as ``{name: ..., show: [prediction, heatmap, badges]}``.

Every field is checked (``parse_design``) and an error names the field and the fix; files are read
by :func:`fsl_xai.study.schema.read_study_file` (size-capped, no YAML aliases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .schema import (
    StudyDesignError,
    check_choice,
    check_flag,
    check_list,
    check_mapping,
    check_names,
    check_text,
    check_whole,
    read_study_file,
)

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


TOP_FIELDS = {"study_id": True, "dataset": True, "model": True, "episode": True, "cases": True, "conditions": True,
              "questions": True, "assignment": False, "allow_back": False, "measure_time": False, "method": False,
              "mode": False, "title": False, "description": False}
SPLITS = ("train", "val", "test", "all")  # as load_dataset takes them


def _episode(data: Any) -> dict[str, Any]:
    episode = dict(check_mapping(data, "episode", {"n_way": True, "n_shot": True, "seed": False, "classes": False},
                                 "{n_way: 3, n_shot: 5, seed: 0}"))
    for key in ("n_way", "n_shot"):
        check_whole(episode[key], f"episode.{key}", 1, example=f"{key}: 3")
    if "seed" in episode:
        check_whole(episode["seed"], "episode.seed", 0, example="seed: 0")
    if "classes" in episode:
        classes = check_names(episode["classes"], "episode.classes", "[lymphocyte, monocyte, platelet]")
        if len(classes) != episode["n_way"]:
            raise StudyDesignError(f"episode.classes names {len(classes)} classes but episode.n_way is "
                                   f"{episode['n_way']}; make them agree")
    return episode


def _cases(data: Any) -> dict[str, Any] | tuple[str, ...]:
    if isinstance(data, list):
        if not data:
            raise StudyDesignError("cases: the list is empty; give sample ids or {n: N, seed: S}")
        for i, c in enumerate(data):
            if isinstance(c, bool) or not isinstance(c, (str, int)):
                raise StudyDesignError(f"cases[{i}] must be a sample id (text), got {c!r}; "
                                       "list sample ids, or give {n: N, seed: S}")
        ids = tuple(str(c) for c in data)
        repeated = sorted({c for c in ids if ids.count(c) > 1})
        if repeated:
            raise StudyDesignError(f"cases: sample ids are repeated: {repeated[:5]}; list each case once")
        return ids
    cases = check_mapping(data, "cases", {"n": True, "seed": False, "index": False},
                          "{n: 12, seed: 1} (or a list of sample ids)")
    check_whole(cases["n"], "cases.n", 1, example="n: 12")
    if "seed" in cases:
        check_whole(cases["seed"], "cases.seed", 0, example="seed: 1")
    if "index" in cases:
        check_whole(cases["index"], "cases.index", 0, example="index: 0")
    return dict(cases)


def _conditions(data: Any) -> tuple[Condition, ...]:
    conditions = []
    for i, c in enumerate(check_list(data, "conditions", "[no_ai, prediction, heatmap]")):
        where = f"conditions[{i}]"
        if isinstance(c, str):
            if c not in CONDITION_PANELS:
                raise StudyDesignError(f"{where}: unknown condition {c!r}; use one of {sorted(CONDITION_PANELS)} "
                                       "or {name: ..., show: [...]}")
            conditions.append(Condition(c, CONDITION_PANELS[c]))
            continue
        check_mapping(c, where, {"name": True, "show": True}, "{name: my_condition, show: [prediction, heatmap]}")
        name = check_text(c["name"], f"{where}.name", "name: my_condition")
        show = check_list(c["show"], f"{where}.show", "[prediction, heatmap]", allow_empty=True)
        bad = [p for p in show if p not in PANELS]
        if bad:
            raise StudyDesignError(f"condition {name!r}: unknown panel(s) {bad}; panels: {list(PANELS)}")
        conditions.append(Condition(name, tuple(show)))
    if len({c.name for c in conditions}) != len(conditions):
        raise StudyDesignError("conditions: names are repeated; give each condition once")
    return tuple(conditions)


def _question(q: Any, i: int) -> Question:
    where = f"questions[{i}]"
    check_mapping(q, where, {"id": True, "type": True, "text": False, "scale": False, "options": False,
                             "required": False}, "{id: confidence, type: likert, scale: 5}")
    qid = check_text(q["id"], f"{where}.id", "id: diagnosis")
    where = f"{where} {qid!r}"
    qtype = q["type"]
    if qtype not in QUESTION_TYPES:
        raise StudyDesignError(f"question {qid!r}: unknown type {qtype!r}; use one of {list(QUESTION_TYPES)}")
    text = check_text(q["text"], f"{where}.text", '"How confident are you?"') if "text" in q else ""
    scale = 5
    if "scale" in q:
        if qtype != "likert":
            raise StudyDesignError(f"{where}.scale: only a likert question has a scale; remove it or set type: likert")
        scale = q["scale"]
        if isinstance(scale, int) and not isinstance(scale, bool) and not 2 <= scale <= 11:
            raise StudyDesignError(f"question {qid!r}: a Likert scale needs 2 to 11 points, got {scale}")
        check_whole(scale, f"{where}.scale", 2, 11, example="scale: 5")
    options: tuple[str, ...] = ()
    if "options" in q:
        if qtype != "choice":
            raise StudyDesignError(f"{where}.options: only a choice question has options; remove them or set "
                                   "type: choice")
        options = check_names(q["options"], f"{where}.options", "[benign, malignant]")
        if len(options) < 2:
            raise StudyDesignError(f"{where}.options: give at least two answers, e.g. [benign, malignant]")
    required = check_flag(q["required"], f"{where}.required") if "required" in q else qtype != "text"
    return Question(qid, qtype, text, scale, options, required)


def parse_design(data: Any) -> StudyDesign:
    """Validate a study dict; StudyDesignError names the first problem and how to fix it."""
    data = check_mapping(data, "a study file (a YAML or JSON object)", TOP_FIELDS,
                         "the example in fsl_xai.study.design (study_id: my-study, ...)")
    study_id = check_text(data["study_id"], "study_id", "study_id: blood-cells-2026")
    for name in ("title", "description"):
        if name in data:
            check_text(data[name], name, f"{name}: Blood cell review")
    dataset = check_mapping(data["dataset"], "dataset", {"name": True, "split": False},
                            "{name: pbc-blood-64, split: test}")
    check_text(dataset["name"], "dataset.name", "name: pbc-blood-64")
    if "split" in dataset:
        check_choice(dataset["split"], "dataset.split", SPLITS)
    model = check_mapping(data["model"], "model", {"default": False, "checkpoint": False, "model": False},
                          "{default: pbc-blood-64} or {checkpoint: path/to/model.pt}")
    sources = [k for k in ("default", "checkpoint") if k in model]
    if len(sources) != 1:
        raise StudyDesignError("model: give {default: DATASET} or {checkpoint: PATH}, exactly one of them")
    check_text(model[sources[0]], f"model.{sources[0]}", f"{sources[0]}: pbc-blood-64")
    if "model" in model:
        check_text(model["model"], "model.model", "model: protonet")
    episode = _episode(data["episode"])
    cases = _cases(data["cases"])
    conditions = _conditions(data["conditions"])
    questions = tuple(_question(q, i) for i, q in enumerate(
        check_list(data["questions"], "questions", "[{id: diagnosis, type: choice}]")))
    if len({q.id for q in questions}) != len(questions):
        raise StudyDesignError("questions: ids are repeated; give each question its own id")
    # an empty `assignment:` line reads as None: the defaults
    given = data.get("assignment")
    assignment = check_mapping({} if given is None else given, "assignment", {"design": False, "seed": False},
                               "{design: within, seed: 7}")
    design = check_choice(assignment.get("design", "within"), "assignment.design", ("within", "between"))
    seed = check_whole(assignment.get("seed", 0), "assignment.seed", 0, example="seed: 7")
    return StudyDesign(
        study_id=study_id, dataset=dict(dataset), model=dict(model), episode=episode, cases=cases,
        conditions=conditions, questions=questions, design=design, assignment_seed=seed,
        allow_back=check_flag(data.get("allow_back", False), "allow_back"),
        measure_time=check_flag(data.get("measure_time", True), "measure_time"),
        method=check_text(data.get("method", "gradcam"), "method", "method: gradcam"),
        mode=check_choice(data.get("mode", "study"), "mode", ("study", "teaching")), raw=data,
    )


def load_design(path: str | Path) -> StudyDesign:
    """Read and validate a YAML or JSON study file (at most MAX_STUDY_FILE_BYTES, no YAML aliases)."""
    return parse_design(read_study_file(path))
