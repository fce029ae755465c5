import json

import pandas as pd
import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.design import load_design
from fsl_xai.study.export import export_study
from fsl_xai.study.freeze import add_raters, freeze_study
from fsl_xai.study.session import RaterSession


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    model = F.make_model("protonet", F.make_backbone("conv4", 1, 64))
    save_checkpoint(d / "model.pt", model)
    study = {
        "study_id": "s", "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(d / "model.pt")},
        "episode": {"n_way": 2, "n_shot": 2, "seed": 3}, "cases": {"n": 4, "seed": 0},
        "conditions": ["no_ai", "prediction", "heatmap", "prototypes", "heatmap_badges"], "method": "saliency",
        "questions": [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert"}],
        "mode": "teaching",
    }
    (d / "study.json").write_text(json.dumps(study))
    db = freeze_study(d / "study.json", d / "frozen", progress=False)
    return d, db, model.fingerprint()


def test_items_store_exactly_what_each_condition_shows(frozen):
    _, db, fingerprint = frozen
    with ResponseStore(db) as store:
        assert store.n_items() == 4 * 5
        for item in store.all_items():
            shown, cond = item["shown"], item["condition"]
            assert "image_png" in shown and shown["true_class"] in shown["classes"]
            assert ("prediction" in shown) == (cond != "no_ai")
            assert ("heatmap_png" in shown) == (cond in ("heatmap", "heatmap_badges"))
            assert ("nearest_support" in shown) == (cond == "prototypes")
            assert ("badges" in shown) == (cond == "heatmap_badges")
            if "badges" in shown:
                deletion = shown["badges"]["deletion area (lower is better)"]
                assert shown["badges"]["randomisation check"] in ("passed", "failed", "undefined")
                assert deletion == "undefined" or 0 <= deletion <= 1
            prov = item["provenance"]
            assert prov["model_fingerprint"] == fingerprint
            assert prov["method"] == "saliency" and prov["episode"]["episode_id"]
            assert prov["shown_panels"] == {"no_ai": [], "prediction": ["prediction"],
                                            "heatmap": ["prediction", "heatmap"],
                                            "prototypes": ["prediction", "prototypes"],
                                            "heatmap_badges": ["prediction", "heatmap", "badges"]}[cond]


def test_freezing_twice_is_refused(frozen):
    d, _, _ = frozen
    with pytest.raises(FileExistsError, match="already holds a frozen study"):
        freeze_study(d / "study.json", d / "frozen", progress=False)


def test_raters_get_counterbalanced_items_and_export_is_pseudonymous(frozen, tmp_path):
    d, db, _ = frozen
    raters = add_raters(db, 4)
    assert [p for p, _ in raters][:1] == ["R001"] or raters[0][0].startswith("R")
    design = load_design(d / "frozen" / "study.json")
    with ResponseStore(db) as store:
        for _, token in raters[:2]:
            s = RaterSession(store, token, design)
            while not s.done:
                item = s.current()
                s.submit({"diagnosis": item["shown"]["classes"][0], "confidence": 4})
        written = export_study(store, tmp_path / "export", study_file=d / "frozen" / "study.json")
    answers = pd.read_parquet(written["answers.parquet"])
    assert len(answers) == 2 * 4 * 2  # 2 raters x 4 cases x 2 questions
    assert set(answers["rater"]) <= {p for p, _ in raters}
    csv_text = written["answers.csv"].read_text() + written["items.csv"].read_text()
    for _, token in raters:
        assert token not in csv_text
    items = pd.read_csv(written["items.csv"])
    assert {"item_id", "condition", "provenance"} <= set(items.columns)
    assert written["study"].exists()
