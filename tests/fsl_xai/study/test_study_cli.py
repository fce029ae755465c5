import json

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.cli import main


def test_freeze_add_raters_export_through_the_command(tmp_path, capsys):
    save_checkpoint(tmp_path / "m.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    study = {"study_id": "cli", "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(tmp_path / "m.pt")},
             "episode": {"n_way": 2, "n_shot": 1}, "cases": {"n": 2}, "conditions": ["no_ai"],
             "questions": [{"id": "diagnosis", "type": "choice"}]}
    (tmp_path / "s.json").write_text(json.dumps(study))
    assert main(["study", "freeze", str(tmp_path / "s.json"), "--out", str(tmp_path / "f"), "--quiet"]) == 0
    assert main(["study", "add-raters", str(tmp_path / "f"), "--n", "2"]) == 0
    out = capsys.readouterr().out
    links = [line for line in out.splitlines() if "?token=" in line]
    assert len(links) == 2 and links[0].startswith("R001\thttp://127.0.0.1:8866/?token=")
    assert main(["study", "export", str(tmp_path / "f"), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "answers.parquet").exists() and (tmp_path / "x" / "s.json").exists()


def test_bad_study_file_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({"study_id": "x"}))
    assert main(["study", "freeze", str(tmp_path / "s.json"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "missing field" in err and "Traceback" not in err


STUDY = {"study_id": "bad", "dataset": {"name": "synthetic"}, "model": {"default": "synthetic"},
         "episode": {"n_way": 2, "n_shot": 1}, "cases": {"n": 2}, "conditions": ["no_ai"],
         "questions": [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert"}]}
ALIAS_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                       + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]) + "\n"


def _one_line_error(capsys, argv, *expected):
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("fsl-xai study: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + captured.out
    for text in expected:
        assert text in err, err
    return err


def test_bad_inputs_are_one_line_errors_with_the_fix(tmp_path, capsys):
    import yaml

    def freeze(name, content, *extra):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return ["study", "freeze", str(path), "--out", str(tmp_path / "out"), *extra]

    confidence = {"id": "confidence", "type": "likert"}
    cases = [
        (STUDY | {"questions": [STUDY["questions"][0], confidence | {"scale": "five"}]},
         ["questions[1] 'confidence'.scale", "whole number from 2 to 11", "scale: 5"]),
        (STUDY | {"assignment": ["within"]}, ["assignment must be a mapping", "{design: within, seed: 7}"]),
        (STUDY | {"assignment": {"design": "within", "seed": "abc"}}, ["assignment.seed", "'abc'", "seed: 7"]),
        (STUDY | {"questions": [{"id": "diagnosis", "type": "choice", "options": "benign"}]},
         ["questions[0] 'diagnosis'.options", "got the text 'benign'", "[benign, malignant]"]),
        (ALIAS_BOMB + yaml.safe_dump(STUDY), ["YAML aliases (*a0) are not allowed", "write the value out in full"]),
    ]
    for i, (content, expected) in enumerate(cases):
        _one_line_error(capsys, freeze(f"s{i}.yaml", content), *expected)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    _one_line_error(capsys, freeze("ok.yaml", STUDY), "already exists", "--force")
    # add-raters: a count that is not 1 or more, and a folder without a study
    (tmp_path / "out" / "study.sqlite").write_bytes(b"")
    for n in ("-3", "0"):
        _one_line_error(capsys, ["study", "add-raters", str(tmp_path / "out"), "--n", n],
                        f"got {n}", "whole number from 1 to")
    _one_line_error(capsys, ["study", "export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
                    "not found", "fsl-xai study freeze")
