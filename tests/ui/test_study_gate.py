"""The rater app as raters get it: through the gate of the real `fsl-xai study serve`, in headless
Chromium. The page loads, its kernel websocket passes the gate, an answer is confirmed and stored;
closing the page shuts its kernel down through the gate (Voila's beacon, vouched for by the kernel's
cookie); a page without a valid token is refused by the gate and starts no kernel. The rater's token
reaches the kernel by the gate's hand-off, never through Voila (not in a kernel's environment). With
Voila's preheat pool, the page takes a kernel started before it was asked for, which gets its token
only then, and Voila's unauthenticated request-info websocket tells nobody the token."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with ipykernel, which ships no stubs
import websocket  # websocket-client, installed with jupyter_server
from playwright.sync_api import expect

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.freeze import add_raters, freeze_study
from tests.fsl_xai.study.test_gate import kernels_of, served

KERNEL_MS = 120_000


def _study(tmp_path: Path):
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
    return db, token, classes


def _environments(pids) -> str:
    out = []
    for pid in pids:
        try:
            out.append(json.dumps(psutil.Process(pid).environ()))
        except psutil.Error:
            continue
    return "\n".join(out)


def test_a_rater_answers_through_the_gate(page, page_errors, tmp_path: Path):
    db, token, classes = _study(tmp_path)
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
        assert token not in _environments(kernels_of(proc)), "the token reached the kernel through Voila"
        page_errors.assert_none(ignore=[r"status of 403 \(Forbidden\) \(http://127\.0\.0\.1:\d+/\?token=not-a-token\)"])
        # closing the page sends Voila's shutdown beacon through the gate: the kernel goes at once
        page.close(run_before_unload=True)
        deadline = time.monotonic() + 30
        while kernels_of(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not kernels_of(proc), "the closed page's kernel is still running"


def _kernel_id_of(pid: int) -> str:
    found = re.search(r"kernel-([0-9a-f-]{36})\.json", " ".join(psutil.Process(pid).cmdline()))
    assert found is not None
    return found.group(1)


def test_a_preheated_kernel_gets_its_rater_only_through_the_gate(page, page_errors, tmp_path: Path):
    db, token, classes = _study(tmp_path)
    with served(db.parent, tmp_path, "--max-kernels", "3", "--preheat", "1") as (proc, port):
        deadline = time.monotonic() + KERNEL_MS / 1000
        while not kernels_of(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        (pooled,) = kernels_of(proc)  # started before any page was asked for
        pooled_id = _kernel_id_of(pooled)

        page.goto(f"http://127.0.0.1:{port}/?token={token}", wait_until="commit", timeout=KERNEL_MS)
        expect(page.get_by_text("Case 1 of 2")).to_be_visible(timeout=KERNEL_MS)
        config = json.loads(page.locator("#jupyter-config-data").text_content())
        assert config["kernelId"] == pooled_id, "the page did not get the preheated kernel"
        page.locator(".fsl-q-diagnosis button", has_text=re.compile(f"^{classes[0]}$")).click()
        page.get_by_role("button", name="Submit answer").click()
        expect(page.get_by_text("Answer saved.")).to_be_visible(timeout=KERNEL_MS)
        with ResponseStore(db, read_only=True) as store:
            assert len(store.current_answers(token)) == 1

        # Voila keeps the page's request for the preheated kernel, for anyone who asks by kernel id
        # (its /voila/query websocket checks nothing); the gate sent it on without the token
        (voila,) = [p for p in psutil.Process(proc.pid).children() if "voila" in " ".join(p.cmdline())]
        internal = int(next(a for a in voila.cmdline() if a.startswith("--port=")).split("=")[1])
        ws = websocket.create_connection(f"ws://127.0.0.1:{internal}/voila/query/{pooled_id}", timeout=30)
        try:
            told = ws.recv()
        finally:
            ws.close()
        assert "QUERY_STRING" in told and token not in told, told
        assert token not in _environments(kernels_of(proc))
        page_errors.assert_none()
