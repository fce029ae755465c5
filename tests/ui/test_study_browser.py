"""The Voila rater app in real headless Chromium.

- Two raters complete a small frozen study at the same time; every answer is in the store once,
  linked to what was shown.
- Nothing on a rater's screen gives a case away, in any condition: the whole DOM (text, every
  attribute, comments, scripts) and every widget state the page received over the kernel's
  websocket are read on every screen, and hold no sample id, file name or stem of any image, and
  no class name outside the answer options and the panels the case's condition shows.
"""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from fsl_xai.study import ResponseStore
from fsl_xai.study.design import CONDITION_PANELS
from fsl_xai.study.freeze import add_raters, freeze_study
from tests.widgets.screen_check import class_mentions, identifiers_in, identifying_strings, widget_state_problems

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


# ---------------------------------------------------------------------------- no giveaway on screen
# The DOM as text: every text node, comment and attribute (name=value) of the document, and the
# same for a copy without the parts allowed to name a class (answer options, shown panels).
DOM_TEXT_JS = """
(allowed) => {
  const collect = (root) => {
    const parts = [];
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT
                                                   | NodeFilter.SHOW_COMMENT);
    for (let node = walker.currentNode; node; node = walker.nextNode()) {
      if (node.nodeType === Node.ELEMENT_NODE) {
        for (const a of node.attributes) parts.push(`${a.name}=${a.value}`);
        if ('value' in node && typeof node.value === 'string') parts.push(`value=${node.value}`);
      } else {
        parts.push(node.nodeValue);
      }
    }
    return parts.join('\\n');
  };
  const clone = document.documentElement.cloneNode(true);
  for (const selector of allowed) clone.querySelectorAll(selector).forEach((e) => e.remove());
  const panels = new Set();
  document.querySelectorAll('[class*="fsl-panel-"]').forEach((e) => e.classList.forEach((c) => {
    if (c.startsWith('fsl-panel-')) panels.add(c.slice('fsl-panel-'.length));
  }));
  const options = [...document.querySelectorAll('.fsl-q-diagnosis button')].map((b) => ({
    text: b.innerText.trim(), cls: b.className, title: b.title, style: b.getAttribute('style') || '',
  }));
  return {title: document.title, whole: collect(document.documentElement), outside: collect(clone),
          panels: [...panels], options};
}
"""


def _ws_messages(payload: str | bytes) -> list[dict[str, Any]]:
    """Jupyter messages in one websocket frame: JSON text, the v1 binary protocol
    (v1.kernel.websocket.jupyter.org) or the legacy binary layout; [] when it is none of them."""
    if isinstance(payload, str):
        try:
            return [json.loads(payload)]
        except ValueError:
            return []
    data = bytes(payload)
    if len(data) >= 16:  # v1: uint64 count, count offsets, then channel, header, parent, metadata, content, buffers
        n = int.from_bytes(data[:8], "little")
        if 2 <= n < 1000 and len(data) >= 8 * (n + 1):
            offsets = [int.from_bytes(data[8 * (i + 1):8 * (i + 2)], "little") for i in range(n)]
            if offsets[0] == 8 * (n + 1) and offsets == sorted(offsets) and offsets[-1] == len(data) and n >= 6:
                parts = [data[offsets[i]:offsets[i + 1]] for i in range(n - 1)]
                header, parent, metadata, content = (json.loads(x) for x in parts[1:5])
                return [{"channel": parts[0].decode(), "header": header, "parent_header": parent,
                         "metadata": metadata, "content": content, "buffers": parts[5:]}]
    if len(data) >= 8:  # legacy: uint32 count, offsets (big-endian), the JSON message, then buffers
        n = struct.unpack("!I", data[:4])[0]
        if 1 <= n < 1000 and len(data) >= 4 * (n + 1):
            offsets = list(struct.unpack(f"!{n}I", data[4:4 * (n + 1)])) + [len(data)]
            try:
                msg = json.loads(data[offsets[0]:offsets[1]])
            except ValueError:
                return []
            msg["buffers"] = [data[offsets[i]:offsets[i + 1]] for i in range(1, n)]
            return [msg]
    return []


def _put(target: dict[str, Any], path: list[Any], value: bytes) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[int(key)]
    if isinstance(target, dict):
        target[path[-1]] = value
    else:
        target[int(path[-1])] = value


class KernelTraffic:
    """Every websocket frame between the page and its kernel, with the widget states it carried."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.touched: list[str] = []  # model ids, once per state or update received, in order
        self.requests: set[str] = set()  # shell requests the page sent
        self.idle: set[str] = set()  # requests the kernel finished (status idle)
        self.undecoded = 0

    def attach(self, ws) -> None:
        ws.on("framereceived", self._frame)
        ws.on("framesent", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        self.raw.append(payload.encode() if isinstance(payload, str) else bytes(payload))
        messages = _ws_messages(payload)
        if not messages:
            self.undecoded += 1
        for msg in messages:
            self._message(msg)

    def _update(self, model_id: str, state: dict[str, Any]) -> None:
        self.touched.append(model_id)
        self.states.setdefault(model_id, {}).update(state)

    def _message(self, msg: dict[str, Any]) -> None:
        kind, content = msg.get("header", {}).get("msg_type"), msg.get("content", {})
        channel = msg.get("channel")
        if channel == "shell" and kind and (kind.endswith("_request") or kind == "comm_msg"):
            self.requests.add(msg["header"]["msg_id"])  # shell: sent by the page (replies end in _reply)
        if kind == "status" and content.get("execution_state") == "idle":
            self.idle.add(msg.get("parent_header", {}).get("msg_id", ""))
        if kind not in ("comm_open", "comm_msg") or channel not in ("iopub", "shell"):
            return
        data = content.get("data", {})
        buffers = msg.get("buffers", [])
        if kind == "comm_open" or data.get("method") in ("update", "echo_update"):
            state = dict(data.get("state", {}))
            for path, buffer in zip(data.get("buffer_paths", []), buffers, strict=False):
                _put(state, list(path), buffer)
            self._update(content["comm_id"], state)
        elif data.get("method") == "update_states":
            states = {k: dict(v.get("state", v)) for k, v in data.get("states", {}).items()}
            for path, buffer in zip(data.get("buffer_paths", []), buffers, strict=False):
                model_id, *rest = path
                _put(states[model_id], rest[1:] if rest and rest[0] == "state" else rest, buffer)
            for model_id, state in states.items():
                self._update(model_id, state)

    def wait_settled(self, page, timeout_s: float = KERNEL_MS / 1000) -> None:
        """Wait until the kernel finished every request the page sent (its widget updates are in)."""
        deadline = time.monotonic() + timeout_s
        while not (self.requests and self.requests <= self.idle):
            if time.monotonic() > deadline:
                raise AssertionError(f"the kernel did not finish {len(self.requests - self.idle)} request(s) of the "
                                     f"page within {timeout_s:.0f} s")
            page.wait_for_timeout(100)
        page.wait_for_timeout(200)  # let the page draw what arrived


@pytest.fixture
def blood_study(tmp_path: Path, shared_file):
    """A study on images whose sample ids name their class and file (``monocyte/MO_898317.jpg``),
    in every condition the design knows: the single rater's 6 cases are one per condition."""
    import fsl_xai as F
    from fsl_xai.checkpoints import save_checkpoint
    from fsl_xai.data.registry import load_dataset

    shared_file("pbc_blood/pbc_bloodlike_64_200perclass.npz")
    save_checkpoint(tmp_path / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 3, 64)))
    conditions = list(CONDITION_PANELS)
    study = {
        "study_id": "blood-browser", "dataset": {"name": "pbc-blood-64", "split": "test"},
        "model": {"checkpoint": str(tmp_path / "model.pt")},
        "episode": {"n_way": 3, "n_shot": 2, "seed": 0, "classes": ["lymphocyte", "monocyte", "neutrophil"]},
        "cases": {"n": len(conditions), "seed": 0}, "conditions": conditions, "method": "gradcam",
        "questions": [{"id": "diagnosis", "type": "choice", "text": "Diagnosis"},
                      {"id": "confidence", "type": "likert", "scale": 5, "text": "Confidence"},
                      {"id": "comment", "type": "text", "required": False}],
        "assignment": {"design": "within", "seed": 2},
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    db = freeze_study(tmp_path / "study.json", tmp_path / "frozen", progress=False)
    (_, token), = add_raters(db, 1)
    sample_ids = load_dataset("pbc-blood-64", split="test", progress=False).sample_ids.tolist()
    return db, token, sample_ids


def _screen_problems(dom: dict[str, Any], forbidden: set[str], classes: list[str], panels: set[str]) -> list[str]:
    problems = [f"the page holds the sample id or file name {s!r}" for s in identifiers_in(dom["whole"], forbidden)]
    problems += [f"the page names the class {c!r} outside the answer options and the shown panels {sorted(panels)}"
                 for c in class_mentions(dom["outside"] + "\n" + dom["title"], classes)]
    if not set(dom["panels"]) <= panels:
        problems.append(f"panels {sorted(set(dom['panels']) - panels)} are on a screen whose condition shows "
                        f"{sorted(panels)}")
    if "prediction" not in panels and re.search(r"Model suggests|probability", dom["whole"]):
        problems.append("the model's advice is on a screen whose condition does not show it")
    options = dom["options"]
    if [o["text"] for o in options] != classes:
        problems.append(f"the answer options are {[o['text'] for o in options]}, not the classes {classes}")
    if len({(o["cls"], o["title"], o["style"]) for o in options}) != 1:
        problems.append(f"the answer options are not shown alike: {options}")
    return problems


def test_no_screen_of_any_condition_gives_the_case_away(servers, page, page_errors, blood_study, monkeypatch):
    db, token, sample_ids = blood_study
    monkeypatch.setenv("FSL_XAI_STUDY_DB", str(db))
    monkeypatch.setenv("FSL_XAI_STUDY_FILE", str(db.parent / "study.json"))
    with ResponseStore(db) as store:
        screens = [store.item(item_id) for item_id in store.assigned_items(token)]
    assert {item["condition"] for item in screens} == set(CONDITION_PANELS)
    forbidden = identifying_strings(sample_ids)
    assert "MO_898317.jpg" in forbidden or any(s.startswith("monocyte/") for s in forbidden)
    traffic = KernelTraffic()
    page.on("websocket", traffic.attach)
    app = servers.voila(ROOT / "notebooks" / "study_rater.ipynb")
    _open(page, f"{app.url}?token={token}")
    problems: list[str] = []
    seen_updates = 0
    for k, item in enumerate(screens):
        total = len(screens)
        expect(page.get_by_text(f"Case {k + 1} of {total}")).to_be_visible(timeout=KERNEL_MS)
        expect(page.locator(".fsl-q-confidence button").first).to_be_visible(timeout=KERNEL_MS)
        traffic.wait_settled(page)
        panels, classes = set(CONDITION_PANELS[item["condition"]]), item["shown"]["classes"]
        allowed = [".fsl-q-diagnosis", *(f".fsl-panel-{p}" for p in sorted(panels))]
        dom = page.evaluate(DOM_TEXT_JS, allowed)
        where = f"screen {k + 1} ({item['condition']})"
        assert item["shown"]["case_label"] in dom["whole"], f"{where}: the case's label is not shown"
        problems += [f"{where}: {p}" for p in _screen_problems(dom, forbidden, classes, panels)]
        # the widgets this screen created or changed, as the page holds them now, against its condition
        new = {m: traffic.states[m] for m in dict.fromkeys(traffic.touched[seen_updates:])}
        seen_updates = len(traffic.touched)
        assert new, f"{where}: no widget state was seen on the page's websocket"
        problems += [f"{where}: {p}" for p in widget_state_problems(new, sample_ids, classes, panels)]
        page.locator(".fsl-q-diagnosis button", has_text=re.compile(f"^{classes[k % len(classes)]}$")).click()
        page.locator(".fsl-q-confidence button", has_text=re.compile(r"^3$")).click()
        page.get_by_role("button", name="Submit answer").click()
    expect(page.get_by_text(f"All {len(screens)} cases are answered")).to_be_visible(timeout=KERNEL_MS)
    traffic.wait_settled(page)
    # every state as the page holds it at the end, and every byte that crossed the websocket
    problems += widget_state_problems(traffic.states, sample_ids, screens[0]["shown"]["classes"],
                                      [p for panels in CONDITION_PANELS.values() for p in panels])
    for frame in traffic.raw:
        problems += [f"websocket frame holds {s!r}" for s in identifiers_in(frame, forbidden)]
    problems += [f"the page's HTML holds {s!r}" for s in identifiers_in(page.content(), forbidden)]
    assert not problems, "a rater's screen gives cases away:\n" + "\n".join(dict.fromkeys(problems))
    assert traffic.undecoded == 0 and len(traffic.states) > 20
    with ResponseStore(db) as store:
        assert len(store.current_answers(token)) == len(screens)
    page_errors.assert_none()
