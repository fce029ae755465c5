"""Sequential reading in the Voila rater app, in real headless Chromium: on images whose sample
ids name their class and file, a case in a condition that shows the AI first appears alone (no
panel, no advice, no warning, no prediction set anywhere in the DOM or on the websocket), and only
after the rater confirms the first answer does the same case come back with its condition's
panels, the domain guard's warning and the first answer to revise."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from fsl_xai.study import ResponseStore
from fsl_xai.study.advice import GUARD_WARNING
from fsl_xai.study.freeze import add_raters, freeze_study
from tests.ui.test_study_browser import DOM_TEXT_JS, KERNEL_MS, KernelTraffic, _open, _screen_problems
from tests.widgets.screen_check import identifiers_in, identifying_strings

ROOT = Path(__file__).resolve().parents[2]
SETS = {"name": "sets", "show": ["prediction_set"]}
PANELS = {"no_ai": set(), "prediction": {"prediction"}, "heatmap": {"prediction", "heatmap"},
          "sets": {"prediction_set"}}
AI_TEXT = re.compile(r"Model suggests|probability|answer set|Where the model looked|" + re.escape(GUARD_WARNING))


@pytest.fixture
def sequential_study(tmp_path: Path, shared_file):
    import fsl_xai as F
    from fsl_xai.checkpoints import save_checkpoint
    from fsl_xai.data.registry import load_dataset
    from fsl_xai.embeddings import embed_all
    from fsl_xai.guard import DomainGuard

    shared_file("pbc_blood/pbc_bloodlike_64_200perclass.npz")
    model = F.make_model("protonet", F.make_backbone("conv4", 3, 64))
    save_checkpoint(tmp_path / "model.pt", model)
    val = embed_all(model, load_dataset("pbc-blood-64", split="val", progress=False))
    # a guard that flags every case (threshold 0), so the warning's place is checked on every screen
    guard = DomainGuard.fit(val[:100], val[100:])
    dataclasses.replace(guard, threshold=0.0).save(tmp_path / "guard.json")
    study = {
        "study_id": "seq-browser", "dataset": {"name": "pbc-blood-64", "split": "test"},
        "model": {"checkpoint": str(tmp_path / "model.pt")}, "reading": "sequential",
        "episode": {"n_way": 3, "n_shot": 2, "seed": 0, "classes": ["lymphocyte", "monocyte", "neutrophil"]},
        "cases": {"n": 4, "seed": 0}, "conditions": ["no_ai", "prediction", "heatmap", SETS], "method": "saliency",
        "conformal": {"alpha": 0.2, "episodes": 30}, "guard": {"file": "guard.json"},
        "questions": [{"id": "diagnosis", "type": "choice", "text": "Diagnosis"},
                      {"id": "confidence", "type": "likert", "scale": 5, "text": "Confidence"},
                      {"id": "trust", "type": "likert", "scale": 5, "text": "Trust in the advice", "after_ai": True}],
        "assignment": {"design": "within", "seed": 2},
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    db = freeze_study(tmp_path / "study.json", tmp_path / "frozen", progress=False)
    (_, token), = add_raters(db, 1)
    sample_ids = load_dataset("pbc-blood-64", split="test", progress=False).sample_ids.tolist()
    return db, token, sample_ids


def _click(page, question: str, label: str) -> None:
    page.locator(f".fsl-q-{question} button", has_text=re.compile(f"^{re.escape(label)}$")).click()


def test_the_ai_appears_only_after_the_first_answer(servers, page, page_errors, sequential_study, monkeypatch):
    db, token, sample_ids = sequential_study
    monkeypatch.setenv("FSL_XAI_STUDY_DB", str(db))
    monkeypatch.setenv("FSL_XAI_STUDY_FILE", str(db.parent / "study.json"))
    with ResponseStore(db) as store:
        screens = [store.item(item_id) for item_id in store.assigned_items(token)]
    assert {item["condition"] for item in screens} == set(PANELS)
    forbidden = identifying_strings(sample_ids)
    traffic = KernelTraffic()
    page.on("websocket", traffic.attach)
    app = servers.voila(ROOT / "notebooks" / "study_rater.ipynb")
    _open(page, f"{app.url}?token={token}")
    problems: list[str] = []
    total = len(screens)
    for k, item in enumerate(screens):
        cond, classes = item["condition"], item["shown"]["classes"]
        where = f"case {k + 1} ({cond})"
        expect(page.get_by_text(f"Case {k + 1} of {total}")).to_be_visible(timeout=KERNEL_MS)
        expect(page.get_by_role("button", name="Confirm my own answer")).to_be_visible(timeout=KERNEL_MS)
        traffic.wait_settled(page)
        dom = page.evaluate(DOM_TEXT_JS, [".fsl-q-diagnosis"])
        problems += [f"{where}, first screen: {p}" for p in _screen_problems(dom, forbidden, classes, set())]
        if AI_TEXT.search(dom["whole"]):
            problems.append(f"{where}, first screen: the AI's output is on the page before the first answer")
        if page.locator(".fsl-q-trust").count():
            problems.append(f"{where}, first screen: the trust question is asked before the AI is shown")
        _click(page, "diagnosis", classes[0])
        _click(page, "confidence", "3")
        page.get_by_role("button", name="Confirm my own answer").click()
        if cond == "no_ai":
            continue
        expect(page.get_by_text("Now with the AI's output")).to_be_visible(timeout=KERNEL_MS)
        traffic.wait_settled(page)
        panels = PANELS[cond] | {"guard", "first_answer"}
        allowed = [".fsl-q-diagnosis", *(f".fsl-panel-{p}" for p in sorted(panels))]
        dom = page.evaluate(DOM_TEXT_JS, allowed)
        # the rater's own first answer is selected, to keep or change; every other option alike
        active = [o["text"] for o in dom["options"] if "mod-active" in o["cls"].split()]
        if active != [classes[0]]:
            problems.append(f"{where}, revised screen: selected {active}, not the first answer {classes[0]!r}")
        for o in dom["options"]:
            o["cls"] = " ".join(c for c in o["cls"].split() if c != "mod-active")
        problems += [f"{where}, revised screen: {p}" for p in _screen_problems(dom, forbidden, classes, panels)]
        if set(dom["panels"]) != panels:
            problems.append(f"{where}, revised screen: panels {sorted(dom['panels'])}, expected {sorted(panels)}")
        if GUARD_WARNING not in dom["whole"]:
            problems.append(f"{where}, revised screen: the guard's warning is missing")
        if ("answer set" in dom["whole"]) != (cond == "sets"):
            problems.append(f"{where}, revised screen: the prediction set is (not) shown in the wrong condition")
        _click(page, "diagnosis", classes[1])
        _click(page, "trust", "2")
        page.get_by_role("button", name="Submit final answer").click()
    expect(page.get_by_text(f"All {total} cases are answered")).to_be_visible(timeout=KERNEL_MS)
    traffic.wait_settled(page)
    for frame in traffic.raw:
        problems += [f"websocket frame holds {s!r}" for s in identifiers_in(frame, forbidden)]
    assert not problems, "\n".join(dict.fromkeys(problems))
    with ResponseStore(db) as store:
        phases = store.answers_by_phase(token)
    for item in screens:
        expected = {"first"} if item["condition"] == "no_ai" else {"first", "revised"}
        assert set(phases[item["item_id"]]) == expected
    page_errors.assert_none()
