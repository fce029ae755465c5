"""Two raters complete a small frozen study at the same time in the Voila rater app, in real
headless Chromium; every answer is in the store once, linked to what was shown."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from fsl_xai.study import ResponseStore
from fsl_xai.study.freeze import add_raters, freeze_study

ROOT = Path(__file__).resolve().parents[2]
KERNEL_MS = 120_000


def _open(page, url: str) -> None:
    # Voila streams the page while the kernel runs the notebook: wait for the widgets, not "load"
    page.goto(url, wait_until="commit", timeout=KERNEL_MS)


@pytest.fixture
def frozen_study(tmp_path: Path):
    import fsl_xai as F
    from fsl_xai.checkpoints import save_checkpoint

    model = F.make_model("protonet", F.make_backbone("conv4", 1, 64))
    save_checkpoint(tmp_path / "model.pt", model)
    study = {
        "study_id": "browser-study", "dataset": {"name": "synthetic"},
        "model": {"checkpoint": str(tmp_path / "model.pt")},
        "episode": {"n_way": 2, "n_shot": 3, "seed": 0}, "cases": {"n": 3, "seed": 0},
        "conditions": ["no_ai", "heatmap"], "method": "gradcam",
        "questions": [{"id": "diagnosis", "type": "choice", "text": "Diagnosis"},
                      {"id": "confidence", "type": "likert", "scale": 5, "text": "Confidence"}],
        "assignment": {"design": "within", "seed": 1},
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    db = freeze_study(tmp_path / "study.json", tmp_path / "frozen", progress=False)
    raters = add_raters(db, 2)
    return db, raters


def _answer_current(page, classes: list[str], n_done: int, total: int) -> None:
    expect(page.get_by_text(f"Case {n_done + 1} of {total}")).to_be_visible(timeout=KERNEL_MS)
    page.locator(".fsl-q-diagnosis button", has_text=re.compile(f"^{classes[n_done % len(classes)]}$")).click()
    page.locator(".fsl-q-confidence button", has_text=re.compile(r"^3$")).click()
    page.get_by_role("button", name="Submit answer").click()
    if n_done + 1 < total:
        expect(page.get_by_text(f"Case {n_done + 2} of {total}")).to_be_visible(timeout=KERNEL_MS)
    else:
        expect(page.get_by_text("All 3 cases are answered")).to_be_visible(timeout=KERNEL_MS)


def test_two_raters_complete_a_study_at_once(servers, browser, page, page_errors, frozen_study, monkeypatch):
    db, ((name_a, token_a), (name_b, token_b)) = frozen_study
    monkeypatch.setenv("FSL_XAI_STUDY_DB", str(db))
    monkeypatch.setenv("FSL_XAI_STUDY_FILE", str(db.parent / "study.json"))
    app = servers.voila(ROOT / "notebooks" / "study_rater.ipynb")
    with ResponseStore(db) as store:
        classes = store.item(store.assigned_items(token_a)[0])["shown"]["classes"]

    # rater B on a second page in its own browser context, open at the same time as A
    context_b = browser.new_context(viewport={"width": 1280, "height": 900})
    page_b = context_b.new_page()
    errors_b: list[str] = []
    page_b.on("pageerror", lambda exc: errors_b.append(str(exc)))
    try:
        _open(page, f"{app.url}?token={token_a}")
        _open(page_b, f"{app.url}?token={token_b}")
        expect(page.get_by_text("Case 1 of 3")).to_be_visible(timeout=KERNEL_MS)
        page.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "study_rater_first_case.png"), full_page=True)
        for i in range(3):  # interleaved: both kernels are live at once
            _answer_current(page, classes, i, 3)
            if i == 1:
                # B closes the page after one answer and comes back: resumes at case 2
                _open(page_b, f"{app.url}?token={token_b}")
            _answer_current(page_b, classes, i, 3)
        # a page without a valid token gets nothing
        _open(page_b, f"{app.url}?token=not-a-real-token")
        expect(page_b.get_by_text("Access denied")).to_be_visible(timeout=KERNEL_MS)
    finally:
        context_b.close()

    with ResponseStore(db) as store:
        rows = store.all_answers()
        for name, token in ((name_a, token_a), (name_b, token_b)):
            mine = [r for r in rows if r["rater"] == name and r["question"] == "diagnosis"]
            assert sorted(r["item_id"] for r in mine) == sorted(store.assigned_items(token))
            for r in mine:  # linked to exactly what was shown
                item = store.item(r["item_id"])
                assert item["condition"] == r["condition"]
                assert item["provenance"]["model_fingerprint"]
                assert ("heatmap_png" in item["shown"]) == (r["condition"] == "heatmap")
    assert len({(r["rater"], r["item_id"], r["question"]) for r in rows}) == len(rows) == 12
    assert not errors_b
    page_errors.assert_none()
