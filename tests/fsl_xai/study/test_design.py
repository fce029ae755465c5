import json

import pytest

from fsl_xai.study import StudyDesignError, load_design, parse_design


def test_yaml_and_json_files_give_the_same_design(tmp_path, design_dict):
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(design_dict))
    (tmp_path / "s.json").write_text(json.dumps(design_dict))
    assert load_design(tmp_path / "s.yaml") == load_design(tmp_path / "s.json")


@pytest.mark.parametrize("change, message", [
    ({"conditions": ["no_ai", "telepathy"]}, "unknown condition 'telepathy'"),
    ({"conditions": [{"name": "x", "show": ["prediction", "hologram"]}]}, "unknown panel"),
    ({"questions": [{"id": "q", "type": "slider"}]}, "unknown type 'slider'"),
    ({"questions": [{"id": "q", "type": "likert", "scale": 40}]}, "2 to 11 points"),
    ({"cases": []}, "cases: the list is empty"),
    ({"cases": {"n": 0}}, "positive integer"),
    ({"assignment": {"design": "crossover"}}, "'within' or 'between'"),
    ({"episode": {"n_way": 0, "n_shot": 1}}, "n_way must be a positive integer"),
    ({"model": {}}, "model: give"),
    ({"colour": "blue"}, "unknown field"),
])
def test_invalid_designs_name_the_problem(design_dict, change, message):
    with pytest.raises(StudyDesignError, match=message):
        parse_design(design_dict | change)


def test_missing_field_and_bad_syntax(tmp_path, design_dict):
    d = dict(design_dict)
    del d["questions"]
    with pytest.raises(StudyDesignError, match="missing field 'questions'"):
        parse_design(d)
    (tmp_path / "bad.yaml").write_text("study_id: [unclosed")
    with pytest.raises(StudyDesignError, match="not valid YAML"):
        load_design(tmp_path / "bad.yaml")
    with pytest.raises(StudyDesignError, match="not found"):
        load_design(tmp_path / "none.yaml")


def test_within_assignment_is_a_latin_square(design_dict):
    design = parse_design(design_dict | {"conditions": ["no_ai", "prediction", "heatmap"]})
    cases = [f"c{i}" for i in range(6)]
    seen = {}
    for rater in range(3):
        pairs = design.assign(cases, rater)
        assert sorted(c for c, _ in pairs) == sorted(cases)  # every case once
        for case, cond in pairs:
            seen.setdefault(case, set()).add(cond)
    # across a block of three raters each case is seen in every condition
    assert all(conds == {"no_ai", "prediction", "heatmap"} for conds in seen.values())
    assert design.assign(cases, 1) == design.assign(cases, 1)  # seeded order
    assert design.assign(cases, 1) != design.assign(cases, 4)


def test_between_assignment_gives_one_condition_per_rater(design_dict):
    design = parse_design(design_dict | {"assignment": {"design": "between", "seed": 1}})
    for rater in range(4):
        assert len({cond for _, cond in design.assign(["a", "b", "c"], rater)}) == 1


def _question(design_dict, **change):
    """The design with its second question (confidence) replaced by ``{id, type: likert} | change``."""
    questions = [dict(q) for q in design_dict["questions"]]
    questions[1] = {"id": "confidence", "type": "likert"} | change
    return design_dict | {"questions": questions}


@pytest.mark.parametrize("change, message", [
    # each names the field, what was wrong and how to write it
    ({"questions": "q"}, r"questions must be a list such as .*got the text 'q'"),
    ({"assignment": ["within"]},
     r"assignment must be a mapping such as \{design: within, seed: 7\}, got \[\"within\"\]"),
    ({"assignment": {"design": "within", "seed": "abc"}},
     r"assignment.seed must be a whole number.*got 'abc' \(text\)"),
    ({"assignment": {"seed": 1.5}}, r"assignment.seed must be a whole number"),
    ({"episode": {"n_way": 2, "n_shot": 1, "seed": "abc"}}, r"episode.seed must be a whole number.*'abc'"),
    ({"episode": {"n_way": True, "n_shot": 1}}, r"episode.n_way must be a positive integer.*true/false"),
    ({"cases": {"n": 3, "seed": "x"}}, r"cases.seed must be a whole number"),
    ({"cases": [["c1"]]}, r"cases\[0\] must be a sample id"),
    ({"allow_back": "no"}, r"allow_back must be true or false, got 'no'"),
    ({"measure_time": 1}, r"measure_time must be true or false"),
    ({"mode": "exam"}, r"mode must be 'study' or 'teaching', got 'exam'"),
    ({"study_id": 2026}, r"study_id must be a non-empty text, got 2026"),
    ({"dataset": {"name": "x", "split": "tset"}}, r"dataset.split must be 'train', 'val', 'test' or 'all'"),
    ({"dataset": {"name": "x", "colour": 1}}, r"dataset: unknown field\(s\) \['colour'\]"),
    ({"model": {"default": "a", "checkpoint": "b"}}, r"exactly one"),
    ({"conditions": [{"name": "x"}]}, r"conditions\[0\]: missing field 'show'"),
    ({"episode": {"n_way": 2, "n_shot": 1, "classes": ["a"]}}, r"episode.classes names 1 classes"),
])
def test_fields_of_every_kind_are_checked(design_dict, change, message):
    with pytest.raises(StudyDesignError, match=message):
        parse_design(design_dict | change)


@pytest.mark.parametrize("change, message", [
    ({"scale": "five"}, r"questions\[1\] 'confidence'.scale must be a whole number from 2 to 11, got 'five' "
                        r"\(text\); write e.g. scale: 5"),
    ({"scale": 5.0}, r"scale must be a whole number from 2 to 11"),
    ({"type": "choice", "scale": 5}, r"only a likert question has a scale"),
    ({"type": "choice", "options": "benign"}, r"options must be a list such as \[benign, malignant\], got the text "
                                              r"'benign'"),
    ({"type": "choice", "options": ["benign"]}, r"at least two answers"),
    ({"type": "choice", "options": ["a", "a"]}, r"given more than once"),
    ({"required": "yes"}, r"required must be true or false"),
    ({"text": ["x"]}, r"text must be a non-empty text"),
    ({"hint": "x"}, r"questions\[1\]: unknown field\(s\) \['hint'\]"),
])
def test_question_fields_are_checked(design_dict, change, message):
    with pytest.raises(StudyDesignError, match=message):
        parse_design(_question(design_dict, **change))


def test_options_text_is_not_split_into_letters(design_dict):
    ok = parse_design(_question(design_dict, type="choice", options=["benign", "malignant"]))
    assert ok.questions[1].options == ("benign", "malignant")
    assert parse_design(design_dict | {"assignment": None}).design == "within"  # an empty `assignment:` line


def test_the_docstring_example_is_a_valid_study_file(tmp_path):
    import textwrap

    from fsl_xai.study import design as design_module

    doc = design_module.__doc__
    assert doc is not None
    example = textwrap.dedent(doc.split("::", 1)[1].split("\n\n")[1])
    (tmp_path / "example.yaml").write_text(example)
    parsed = load_design(tmp_path / "example.yaml")
    assert parsed.study_id == "blood-cells-2026" and [q.id for q in parsed.questions] == [
        "diagnosis", "confidence", "trust", "comment"]
    assert parsed.questions[1].text == "How confident are you?" and parsed.questions[2].text.endswith("advice")
    assert parsed.condition_names == ["no_ai", "prediction", "heatmap", "prototypes"] and not parsed.allow_back


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of nine aliases would expand to 9**9 (387 million) items: refused at the first
    alias, before anything is expanded."""
    import tracemalloc

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nstudy_id: *a9\n")
    tracemalloc.start()
    try:
        with pytest.raises(StudyDesignError, match=r"line 2: YAML aliases \(\*a0\) are not allowed"):
            load_design(tmp_path / "bomb.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # bounded: nothing was expanded


def test_file_size_encoding_and_repeated_keys_are_checked(tmp_path, design_dict):
    from fsl_xai.study.schema import MAX_STUDY_FILE_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("study_id: x\n# " + "y" * MAX_STUDY_FILE_BYTES + "\n")
    with pytest.raises(StudyDesignError, match="too large for a study file"):
        load_design(big)
    (tmp_path / "latin1.yaml").write_bytes("study_id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(StudyDesignError, match="not UTF-8 text"):
        load_design(tmp_path / "latin1.yaml")
    (tmp_path / "twice.yaml").write_text("study_id: a\nstudy_id: b\n")
    with pytest.raises(StudyDesignError, match="line 2: the field 'study_id' is given twice"):
        load_design(tmp_path / "twice.yaml")
    (tmp_path / "twice.json").write_text('{"study_id": "a", "study_id": "b"}')
    with pytest.raises(StudyDesignError, match="'study_id' is given twice"):
        load_design(tmp_path / "twice.json")
    (tmp_path / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(StudyDesignError, match="nested too deeply|not valid YAML"):
        load_design(tmp_path / "deep.yaml")
    with pytest.raises(StudyDesignError, match="is a folder"):
        load_design(tmp_path)
