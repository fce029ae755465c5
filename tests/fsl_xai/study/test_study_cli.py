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
