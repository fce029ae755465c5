"""The protocol-level rater of benchmarks/bench_rater_app.py (benchmarks/_ws_rater.py) against the
real `fsl-xai study serve`: two raters answer both cases of a frozen study at once through the gate
(page, a static file, the kernel websocket in the v1 protocol, the widget states, answer and Submit
clicks), each click is confirmed, every answer is stored exactly once, and leaving the page shuts its
kernel down. A token the study does not know is refused with the gate's reason, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore
from fsl_xai.study.freeze import add_raters, freeze_study
from tests.fsl_xai.study.test_gate import kernels_of, served

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "benchmarks" / "_ws_rater.py"
N_CASES = 2
QUESTIONS = [{"id": "diagnosis", "type": "choice", "text": "Diagnosis"},
             {"id": "confidence", "type": "likert", "scale": 5, "text": "Confidence"}]


@pytest.fixture(scope="module")
def two_rater_study(tmp_path_factory):
    """A frozen two-case study (two conditions, both questions of the benchmark's study) with two
    raters: (its store, tokens)."""
    d = tmp_path_factory.mktemp("ws-rater")
    save_checkpoint(d / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    study = {"study_id": "ws-rater", "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(d / "model.pt")},
             "episode": {"n_way": 2, "n_shot": 2, "seed": 0}, "cases": {"n": N_CASES, "seed": 0},
             "conditions": ["no_ai", "prediction"], "questions": QUESTIONS,
             "assignment": {"design": "within", "seed": 1}}
    (d / "study.json").write_text(json.dumps(study))
    db = freeze_study(d / "study.json", d / "frozen", progress=False)
    return db, [token for _, token in add_raters(db, 2)]


def _client(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT), str(port), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_two_protocol_raters_answer_every_case_once(two_rater_study, tmp_path):
    db, tokens = two_rater_study
    with served(db.parent, tmp_path, "--max-kernels", "4") as (proc, port):
        run = _client(port, *tokens, "--static", "/voila/static/voila.js", "--think", "0", "0.05")
        assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr[-4000:]}"
        raters = json.loads(run.stdout)["raters"]
        assert len(raters) == 2 and len({r["kernel_id"] for r in raters}) == 2
        for r in raters:
            assert len(r["clicks_ms"]) == N_CASES and all(0 < ms < 60_000 for ms in r["clicks_ms"]), r
            assert 0 < r["first_byte_s"] <= r["ready_s"] and r["static_requests"] == 1, r
        # leaving the page sent Voila's shutdown through the gate: no kernel stays behind
        deadline = time.monotonic() + 30
        while kernels_of(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not kernels_of(proc), "a protocol-level rater's kernel is still running"

    with ResponseStore(db, read_only=True) as store:
        rows = store.all_answers()
        assigned = {token: set(store.assigned_items(token)) for token in tokens}
        mine = [store.current_answers(token) for token in tokens]
    keys = [(r["rater"], r["item_id"], r["question"]) for r in rows]
    assert len(rows) == 2 * N_CASES * len(QUESTIONS) and len(set(keys)) == len(keys), rows
    for token, answers in zip(tokens, mine, strict=True):
        assert set(answers) == assigned[token]  # every assigned case, and nothing else
        for item in answers.values():
            assert 1 <= item["confidence"] <= 5 and isinstance(item["diagnosis"], str) and item["diagnosis"]


def test_a_token_the_study_does_not_know_is_refused(two_rater_study, tmp_path):
    db, _ = two_rater_study
    with served(db.parent, tmp_path, "--max-kernels", "2") as (proc, port):
        run = _client(port, "not-a-token")
        assert not kernels_of(proc)
    assert run.returncode == 1, run.stdout
    assert "answered 403" in run.stderr and "Access denied" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
