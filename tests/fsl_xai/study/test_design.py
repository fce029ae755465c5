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
