"""The rater app as raters get it: through the gate of the real `fsl-xai study serve`, in headless
Chromium. The page loads, its kernel websocket passes the gate, an answer is confirmed and stored;
closing the page shuts its kernel down through the gate (Voila's beacon, vouched for by the kernel's
cookie); a page without a valid token is refused by the gate and starts no kernel."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from playwright.sync_api import expect

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.freeze import add_raters, freeze_study
from tests.fsl_xai.study.test_gate import kernels_of, served

KERNEL_MS = 120_000


def test_a_rater_answers_through_the_gate(page, page_errors, tmp_path: Path):
    save_checkpoint(tmp_path / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    study = {"study_id": "gate-browser", "dataset": {"name": "synthetic"},
             "model": {"checkpoint": str(tmp_path / "model.pt")},
             "episode": {"n_way": 2, "n_shot": 2, "seed": 0}, "cases": {"n": 2, "seed": 0},
             "conditions": ["no_ai"], "questions": [{"id": "diagnosis", "type": "choice", "text": "Diagnosis"}]}
    (tmp_path / "study.json").write_text(json.dumps(study))
    db = freeze_study(tmp_path / "study.json", tmp_path / "frozen", progress=False)
    (_, token), = add_raters(db, 1)
    with ResponseStore(db) as store:
        classes = store.item(store.assigned_items(token)[0])["shown"]["classes"]
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    with served(db.parent, tmp_path, "--max-kernels", "3") as (proc, port):
        base = f"http://127.0.0.1:{port}/"
        page.goto(f"{base}?token=not-a-token", wait_until="commit", timeout=KERNEL_MS)
        expect(page.get_by_text("Access denied").first).to_be_visible(timeout=KERNEL_MS)
        assert not kernels_of(proc)

        page.goto(f"{base}?token={token}", wait_until="commit", timeout=KERNEL_MS)
        expect(page.get_by_text("Case 1 of 2")).to_be_visible(timeout=KERNEL_MS)
        page.locator(".fsl-q-diagnosis button", has_text=re.compile(f"^{classes[0]}$")).click()
        page.get_by_role("button", name="Submit answer").click()
        expect(page.get_by_text("Case 2 of 2")).to_be_visible(timeout=KERNEL_MS)
        expect(page.get_by_text("Answer saved.")).to_be_visible(timeout=KERNEL_MS)
        with ResponseStore(db, read_only=True) as store:
            assert len(store.current_answers(token)) == 1
        assert sockets and all(re.fullmatch(rf"ws://127\.0\.0\.1:{port}/api/kernels/[0-9a-f-]{{36}}/channels\?.*", u)
                               for u in sockets), sockets
        assert len(kernels_of(proc)) == 1
        page_errors.assert_none(ignore=[r"status of 403 \(Forbidden\) \(http://127\.0\.0\.1:\d+/\?token=not-a-token\)"])
        # closing the page sends Voila's shutdown beacon through the gate: the kernel goes at once
        page.close(run_before_unload=True)
        deadline = time.monotonic() + 30
        while kernels_of(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not kernels_of(proc), "the closed page's kernel is still running"
