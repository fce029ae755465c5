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
    reading: independent                       # or sequential: unaided first, then with the AI

Conditions are names of what is shown; each name maps to a set of panels (``CONDITION_PANELS``),
or a condition can be given as ``{name: ..., show: [prediction, heatmap, badges]}``.

Optional parts:

- ``reading: sequential``: the standard design of AI reader studies. In a condition that shows
  the AI, the rater first answers unaided (no AI panel at all), confirms (that first answer is
  final), then sees the AI's output and may revise; both answers are stored. A question with
  ``after_ai: true`` (e.g. trust in the advice) is asked only on screens that show the AI.
- ``conformal: {alpha: 0.1}``: the panel ``prediction_set`` shows the model's conformal
  prediction set ("lymphocyte or monocyte"), calibrated at freeze time on held-in episodes
  (``split: val`` by default; ``episodes``, ``n_query``, ``seed``), e.g. a condition
  ``{name: sets, show: [prediction_set]}`` instead of, or ``[prediction, prediction_set]``
  besides, the top-1 advice.
- ``guard: {file: guard.json}``: a domain guard saved by ``fsl-xai guard --save-guard``; a case
  it flags carries a warning panel in every condition that shows the AI.

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
    check_fraction,
    check_list,
    check_mapping,
    check_names,
    check_text,
    check_whole,
    read_study_file,
)

PANELS = ("prediction", "heatmap", "prototypes", "badges", "prediction_set")
CONDITION_PANELS: dict[str, tuple[str, ...]] = {
    "no_ai": (),
    "prediction": ("prediction",),
    "heatmap": ("prediction", "heatmap"),
    "prototypes": ("prediction", "prototypes"),
    "heatmap_badges": ("prediction", "heatmap", "badges"),
    "prototypes_badges": ("prediction", "prototypes", "badges"),
}
QUESTION_TYPES = ("choice", "likert", "text")
READINGS = ("independent", "sequential")
#: the steps of a screen: one answer (independent reading), or first (unaided) then revised
STEPS = ("single", "first", "revised")


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
    after_ai: bool = False  # asked only on screens that show the AI's output


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
    reading: str = "independent"
    conformal: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def sequential(self) -> bool:
        """Whether raters answer unaided first, then with the AI's output (``reading: sequential``)."""
        return self.reading == "sequential"

    def shows_ai(self, condition: str) -> bool:
        """Whether the condition shows any of the model's output."""
        return bool(self.condition(condition).show)

    @property
    def aided_conditions(self) -> list[str]:
        """The conditions that show the AI's output (two steps each under sequential reading)."""
        return [c.name for c in self.conditions if c.show]

    def steps(self, condition: str) -> tuple[str, ...]:
        """The screens of a case in this condition: ("single",) for independent reading; under
        sequential reading ("first", "revised") where the AI is shown, else ("first",)."""
        if not self.sequential:
            return ("single",)
        return ("first", "revised") if self.shows_ai(condition) else ("first",)

    def questions_for(self, shows_ai: bool) -> tuple[Question, ...]:
        """The questions of a screen that shows the AI's output (or not)."""
        return tuple(q for q in self.questions if shows_ai or not q.after_ai)

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
              "mode": False, "title": False, "description": False, "reading": False, "conformal": False,
              "guard": False}
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
                             "required": False, "after_ai": False}, "{id: confidence, type: likert, scale: 5}")
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
    after_ai = check_flag(q["after_ai"], f"{where}.after_ai") if "after_ai" in q else False
    return Question(qid, qtype, text, scale, options, required, after_ai)


def _conformal(data: Any) -> dict[str, Any]:
    conformal = dict(check_mapping(data, "conformal", {"alpha": True, "split": False, "episodes": False,
                                                       "n_query": False, "seed": False},
                                   "{alpha: 0.1} or {alpha: 0.1, split: val, episodes: 200}"))
    conformal["alpha"] = check_fraction(conformal["alpha"], "conformal.alpha", "alpha: 0.1 (90% coverage)")
    if "split" in conformal:
        check_choice(conformal["split"], "conformal.split", ("train", "val", "test"))
    for key, low, example in (("episodes", 1, "episodes: 200"), ("n_query", 1, "n_query: 5"),
                              ("seed", 0, "seed: 1")):
        if key in conformal:
            check_whole(conformal[key], f"conformal.{key}", low, example=example)
    return conformal


def _guard(data: Any) -> dict[str, Any]:
    guard = dict(check_mapping(data, "guard", {"file": True}, "{file: guard.json}"))
    check_text(guard["file"], "guard.file", "file: guard.json (written by fsl-xai guard --save-guard)")
    return guard


def _check_reading(reading: str, mode: str, conditions: tuple[Condition, ...],
                   questions: tuple[Question, ...]) -> None:
    if reading != "sequential":
        return
    if mode == "teaching":
        raise StudyDesignError("reading: sequential is for studies; teaching mode reveals the answer after each "
                               "case instead: set mode: study, or remove reading")
    if not any(c.show for c in conditions):
        raise StudyDesignError("reading: sequential needs a condition that shows the AI (e.g. prediction) for "
                               "the second reading; add one, or set reading: independent")
    if all(q.after_ai for q in questions):
        raise StudyDesignError("reading: sequential asks the unaided questions first, but every question has "
                               "after_ai: true; ask the diagnosis without after_ai")


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
    mode = check_choice(data.get("mode", "study"), "mode", ("study", "teaching"))
    reading = check_choice(data.get("reading", "independent"), "reading", READINGS)
    _check_reading(reading, mode, conditions, questions)
    conformal = _conformal(data["conformal"]) if "conformal" in data else None
    with_sets = [c.name for c in conditions if "prediction_set" in c.show]
    if with_sets and conformal is None:
        raise StudyDesignError(f"condition {with_sets[0]!r} shows prediction_set, which needs the sets' miss rate: "
                               "add conformal: {alpha: 0.1} (sets that hold the true class 90% of the time)")
    guard = _guard(data["guard"]) if "guard" in data else None
    return StudyDesign(
        study_id=study_id, dataset=dict(dataset), model=dict(model), episode=episode, cases=cases,
        conditions=conditions, questions=questions, design=design, assignment_seed=seed,
        allow_back=check_flag(data.get("allow_back", False), "allow_back"),
        measure_time=check_flag(data.get("measure_time", True), "measure_time"),
        method=check_text(data.get("method", "gradcam"), "method", "method: gradcam"),
        mode=mode, reading=reading, conformal=conformal, guard=guard, raw=data,
    )


def load_design(path: str | Path) -> StudyDesign:
    """Read and validate a YAML or JSON study file (at most MAX_STUDY_FILE_BYTES, no YAML aliases)."""
    return parse_design(read_study_file(path))
