import json

import pandas as pd
import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.design import load_design
from fsl_xai.study.export import export_study
from fsl_xai.study.freeze import add_raters, case_labels, freeze_study
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
    from fsl_xai.data.registry import load_dataset

    _, db, fingerprint = frozen
    sample_ids = load_dataset("synthetic", split="test", progress=False).sample_ids.tolist()
    label_of: dict[str, str] = {}
    with ResponseStore(db) as store:
        assert store.n_items() == 4 * 5
        for item in store.all_items():
            shown, cond = item["shown"], item["condition"]
            assert "image_png" in shown and shown["true_class"] in shown["classes"]
            # a neutral label, the same in every condition of a case; the sample id stays out of
            # what is shown and out of the item id (it is the item's case_id, for the analyst)
            label = shown["case_label"]
            assert label_of.setdefault(item["case_id"], label) == label
            assert item["item_id"] == f"{label}|{cond}" and item["case_id"] in sample_ids
            text = json.dumps(shown)
            assert not [s for s in sample_ids if s in text or s in item["item_id"]]
            if "nearest_support" in shown:
                assert all(set(tile) == {"class", "image_png"} for tile in shown["nearest_support"])
                assert set(item["provenance"]["nearest_support_ids"]) <= set(sample_ids)
            assert item["provenance"]["sample_id"] == item["case_id"]
            assert item["provenance"]["case_label"] == label
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
        assert sorted(label_of.values()) == ["C01", "C02", "C03", "C04"]
        assert json.loads(store.meta("case_labels")) == [label_of[c] for c in json.loads(store.meta("case_ids"))]


def test_case_labels_are_a_random_permutation_not_derived_from_the_cases():
    labels = case_labels(24)
    assert sorted(labels) == [f"C{k:02d}" for k in range(1, 25)]
    draws = {tuple(case_labels(24)) for _ in range(5)}
    assert len(draws) == 5  # drawn afresh: 5 equal draws of 24! orders would be chance 1e-93
    assert sorted(case_labels(120))[-1] == "C120" and case_labels(1) == ["C01"]


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
    assert {"item_id", "case_label", "case_id", "condition", "provenance"} <= set(items.columns)
    assert written["study"].exists()
    # the export maps each label to its sample id for the analyst, the same in both tables
    label_to_case = dict(zip(items["case_label"], items["case_id"], strict=True))
    assert len(label_to_case) == 4 and len(set(label_to_case.values())) == 4
    assert (answers["case_label"].map(label_to_case) == answers["case_id"]).all()
    assert all(json.loads(p)["sample_id"] == c for p, c in zip(items["provenance"], items["case_id"], strict=True))
    # the tables hold what was shown without its pixels, nested ones included
    assert "image_png" not in written["items.csv"].read_text()


def _cheap_study(frozen, folder, name="cheap.json", n_cases=2, conditions=("no_ai", "prediction")):
    """A study file that freezes in about a second (no explanations)."""
    d, _, _ = frozen
    study = {"study_id": name, "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(d / "model.pt")},
             "episode": {"n_way": 2, "n_shot": 2, "seed": 1}, "cases": {"n": n_cases, "seed": 0},
             "conditions": list(conditions), "method": "saliency",
             "questions": [{"id": "diagnosis", "type": "choice"}]}
    path = folder / name
    path.write_text(json.dumps(study))
    return path


def _answer_all(db, design, token):
    with ResponseStore(db) as store:
        s = RaterSession(store, token, design)
        while not s.done:
            item = s.current()
            s.submit({"diagnosis": item["shown"]["classes"][0]})


def test_existing_target_is_an_error_unless_force(frozen, tmp_path):
    from fsl_xai.study import StudyExistsError

    study = _cheap_study(frozen, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyExistsError, match="already exists; choose a new folder with --out, or pass --force"):
        freeze_study(study, out, progress=False)
    assert list(out.iterdir()) == []
    db = freeze_study(study, out, progress=False, force=True)  # an empty folder is replaced
    with pytest.raises(StudyExistsError, match="already holds a frozen study"):
        freeze_study(study, out, progress=False)
    other = _cheap_study(frozen, tmp_path, "other.json", n_cases=3, conditions=("no_ai",))
    freeze_study(other, out, progress=False, force=True)  # no answers yet: replaced
    with ResponseStore(db) as store:
        assert store.n_items() == 3 and store.meta("study_id") == "other.json"
    assert sorted(p.name for p in out.iterdir()) == ["other.json", "study.sqlite"]
    # once it has answers, --force refuses: answers are never thrown away
    (_, token), = add_raters(db, 1)
    _answer_all(db, load_design(out / "other.json"), token)
    with pytest.raises(StudyExistsError, match="holds 3 answers; --force never replaces a study with answers"):
        freeze_study(study, out, progress=False, force=True)
    with ResponseStore(db) as store:
        assert store.n_answers() == 3
    # nor does it delete a folder that is not a frozen study
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("x")
    with pytest.raises(StudyExistsError, match="holds files that are not a frozen study's"):
        freeze_study(study, foreign, progress=False, force=True)
    assert (foreign / "thesis.docx").exists()
    # no build folders left beside the targets
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_killed_freeze_leaves_nothing_half_made(frozen, tmp_path):
    """SIGKILL a real `fsl-xai study freeze` once it has written items into its build folder: the
    target does not exist, and the next freeze succeeds and removes the dead build folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    slow = _cheap_study(frozen, tmp_path, "slow.json", n_cases=3, conditions=("no_ai", "heatmap_badges"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fsl_xai.cli", "study", "freeze", str(slow), "--out", str(out),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline and killed_at is None:
            for build in tmp_path.glob(".out.freezing-*/study.sqlite"):
                try:
                    with ResponseStore(build, read_only=True) as partial:
                        n = partial.n_items()
                except Exception:  # noqa: BLE001 - not yet a store: keep polling
                    n = 0
                if n:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = n
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert killed_at is not None, f"the freeze ended (code {proc.returncode}) before it was killed: {err}"
    assert 0 < killed_at < 6  # midway: some of the 3 cases x 2 conditions were written
    assert not out.exists()
    leftovers = list(tmp_path.glob(".out.freezing-*"))
    assert leftovers and not os.path.exists(out)
    db = freeze_study(_cheap_study(frozen, tmp_path), out, progress=False)
    with ResponseStore(db) as store:
        assert store.n_items() == 4
    assert not list(tmp_path.glob(".out.*"))  # the dead freeze's folder is gone


def test_export_works_from_a_read_only_folder(frozen, tmp_path, read_only, capsys):
    from fsl_xai.cli import main
    from fsl_xai.study import StudyStoreError

    db = freeze_study(_cheap_study(frozen, tmp_path), tmp_path / "study", progress=False)
    (_, token), = add_raters(db, 1)
    _answer_all(db, load_design(db.parent / "cheap.json"), token)
    with read_only(db.parent):
        assert main(["study", "export", str(db.parent), "--out", str(tmp_path / "x")]) == 0
        with pytest.raises(StudyStoreError, match="cannot be written: the file or its folder is read-only"):
            ResponseStore(db)
        for argv in (["add-raters", str(db.parent), "--n", "1"], ["serve", str(db.parent), "--port", "1"]):
            capsys.readouterr()
            assert main(["study", *argv]) == 2  # serve refuses before starting anything
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "read-only" in err and "Traceback" not in err
        with ResponseStore(db, read_only=True) as store, pytest.raises(StudyStoreError, match="opened read-only"):
            store.set_meta("x", "y")
    answers = pd.read_csv(tmp_path / "x" / "answers.csv")
    assert len(answers) == 2 and set(answers["question"]) == {"diagnosis"}  # 2 cases, one condition each


def test_export_from_a_read_only_folder_reads_what_a_killed_server_left(frozen, tmp_path, read_only):
    """A server killed mid-study leaves answers in study.sqlite-wal; read-only export must see them."""
    import subprocess
    import sys

    db = freeze_study(_cheap_study(frozen, tmp_path), tmp_path / "study", progress=False)
    (_, token), = add_raters(db, 1)
    code = ("import os, sys\nfrom fsl_xai.study import ResponseStore\n"
            "s = ResponseStore(sys.argv[1])\n"
            "item = s.assigned_items(sys.argv[2])[0]\n"
            "s.submit(sys.argv[2], item, {'diagnosis': 'killed'}, answer_key=item + '#k')\n"
            "os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code, str(db), token], check=False)
    assert (db.parent / "study.sqlite-wal").stat().st_size > 0  # the answer is only in the WAL
    with read_only(db.parent), ResponseStore(db, read_only=True) as store:
        assert [r["value"] for r in store.all_answers()] == ["killed"]
        written = export_study(store, tmp_path / "x", formats=("csv",))
    assert pd.read_csv(written["answers.csv"])["value"].tolist() == ["killed"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_store_is_one_clear_line(frozen, tmp_path, capsys, damage):
    from fsl_xai.cli import main
    from fsl_xai.study import StudyStoreError

    db = freeze_study(_cheap_study(frozen, tmp_path), tmp_path / "study", progress=False)
    data = db.read_bytes()
    db.write_bytes(b"not a database at all " * 200 if damage == "garbage" else data[:len(data) // 3])
    for read_only_open in (False, True):
        with pytest.raises(StudyStoreError, match="not a readable study store|damaged"):
            with ResponseStore(db, read_only=read_only_open) as store:
                store.all_items()
    for argv in (["export", str(db.parent), "--out", str(tmp_path / "x")], ["add-raters", str(db.parent)],
                 ["serve", str(db.parent), "--port", "1"]):
        capsys.readouterr()
        assert main(["study", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fsl-xai study: error:") and err.count("\n") == 1 and "Traceback" not in err
        assert "restore it from a backup, or freeze the study again" in err


def test_a_method_the_network_cannot_explain_is_refused_before_anything_is_frozen(frozen, tmp_path):
    """Guided Backprop on ResNet-12 (LeakyReLU) would show the plain gradient: the freeze says why."""
    d, _, _ = frozen
    model = F.make_model("protonet", F.make_backbone("resnet12", 1, 64))
    save_checkpoint(tmp_path / "resnet.pt", model)
    study = json.loads((d / "study.json").read_text())
    study.update(model={"checkpoint": str(tmp_path / "resnet.pt")}, method="guided_backprop")
    (tmp_path / "study.json").write_text(json.dumps(study))
    with pytest.raises(Exception, match=r"method: .*nn\.ReLU") as caught:
        freeze_study(tmp_path / "study.json", tmp_path / "out", progress=False)
    assert type(caught.value).__name__ == "StudyDesignError"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
