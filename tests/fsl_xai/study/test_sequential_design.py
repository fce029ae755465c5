"""Study-file fields of sequential reading, prediction sets and the guard: valid forms and the
messages that name the field and the fix."""

import pytest

from fsl_xai.study import StudyDesignError, parse_design

SETS = {"name": "sets", "show": ["prediction_set"]}


def test_the_new_fields_parse(design_dict):
    design = parse_design(design_dict | {
        "reading": "sequential", "conformal": {"alpha": 0.1, "split": "val", "episodes": 100, "n_query": 3},
        "guard": {"file": "guard.json"}, "conditions": ["no_ai", "prediction", SETS],
        "questions": [*design_dict["questions"], {"id": "trust", "type": "likert", "after_ai": True}]})
    assert design.sequential and design.aided_conditions == ["prediction", "sets"]
    assert design.steps("no_ai") == ("first",) and design.steps("sets") == ("first", "revised")
    assert design.conformal["alpha"] == 0.1 and design.guard == {"file": "guard.json"}
    assert [q.id for q in design.questions_for(False)] == ["diagnosis", "confidence"]
    assert [q.id for q in design.questions_for(True)] == ["diagnosis", "confidence", "trust"]
    plain = parse_design(design_dict)
    assert plain.reading == "independent" and plain.steps("prediction") == ("single",)


@pytest.mark.parametrize("change, message", [
    ({"reading": "seq"}, r"reading must be 'independent' or 'sequential', got 'seq'"),
    ({"reading": True}, r"reading must be .* got True \(true/false\)"),
    ({"reading": "sequential", "mode": "teaching"}, "reading: sequential is for studies.*set mode: study"),
    ({"reading": "sequential", "conditions": ["no_ai"]}, "needs a condition that shows the AI.*reading: independent"),
    ({"reading": "sequential", "questions": [{"id": "trust", "type": "likert", "after_ai": True}]},
     "every question has after_ai"),
    ({"conditions": ["no_ai", SETS]}, r"condition 'sets' shows prediction_set.*add conformal: \{alpha: 0.1\}"),
    ({"conformal": {"alpha": 1.5}}, r"conformal.alpha must be a number strictly between 0 and 1, got 1.5"),
    ({"conformal": {"alpha": "0.1"}}, r"conformal.alpha must be .* \(text\)"),
    ({"conformal": {}}, "conformal: missing field 'alpha'"),
    ({"conformal": {"alpha": 0.1, "split": "holdout"}}, "conformal.split must be 'train', 'val' or 'test'"),
    ({"conformal": {"alpha": 0.1, "episodes": 0}}, "conformal.episodes must be a positive integer"),
    ({"conformal": {"alpha": 0.1, "level": 3}}, r"conformal: unknown field\(s\) \['level'\]"),
    ({"guard": "guard.json"}, r"guard must be a mapping such as \{file: guard.json\}"),
    ({"guard": {"file": ""}}, "guard.file must be a non-empty text"),
    ({"questions": [{"id": "q", "type": "likert", "after_ai": "yes"}]}, r"questions\[0\] 'q'.after_ai must be true"),
])
def test_bad_fields_name_the_field_and_the_fix(design_dict, change, message):
    with pytest.raises(StudyDesignError, match=message):
        parse_design(design_dict | change)
