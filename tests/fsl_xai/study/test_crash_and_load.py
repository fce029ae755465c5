"""The store under real process crashes (SIGKILL) and concurrent rater processes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fsl_xai.study import ResponseStore

WORKER = [sys.executable, "-m", "tests.fsl_xai.study._worker"]
ROOT = Path(__file__).resolve().parents[3]


def _start(db, design_file, token, seed):
    return subprocess.Popen([*WORKER, str(db), str(design_file), token, str(seed)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})


def test_sigkill_during_answering_loses_and_duplicates_nothing(tmp_path, design, make_study, design_dict):
    cases = [f"c{i}" for i in range(400)]  # enough that 25 kills come before the end
    store, (token,) = make_study(tmp_path / "s.db", design, n_raters=1, cases=cases)
    design_file = tmp_path / "design.json"
    design_file.write_text(json.dumps(design_dict))
    n_items = len(store.assigned_items(token))
    confirmed: list[str] = []
    rng = random.Random(0)
    kills = 0
    resumed_at = []
    while kills < 25:
        proc = _start(tmp_path / "s.db", design_file, token, kills)
        line = proc.stdout.readline()
        assert line.startswith("RESUMED"), line + proc.stderr.read()
        resumed_at.append(int(line.split()[1]))
        # let it answer a random few items, then kill it at a random moment
        target = rng.randint(1, 3)
        got = 0
        deadline = time.monotonic() + 30
        while got < target and time.monotonic() < deadline:
            out = proc.stdout.readline()
            if not out or out.startswith("DONE"):
                break
            if out.startswith("CONFIRMED"):
                confirmed.append(out.split()[1])
                got += 1
        time.sleep(rng.random() * 0.01)
        proc.send_signal(signal.SIGKILL)
        # whatever was confirmed before the kill was printed after its commit
        rest = proc.communicate()[0]
        confirmed += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("CONFIRMED")]
        kills += 1
        with ResponseStore(tmp_path / "s.db") as check:
            if len(check.current_answers(token)) == n_items:
                break
    assert kills >= 20, "the study was finished before 20 kills; give the worker more items"
    with ResponseStore(tmp_path / "s.db") as final:
        answers = final.my_answers(token)
    stored_items = [r["item_id"] for r in answers if r["question"] == "diagnosis"]
    # no confirmed answer lost
    assert set(confirmed) <= set(stored_items)
    # none duplicated: one diagnosis row per item
    assert len(stored_items) == len(set(stored_items))
    # every restart resumed at the first unanswered item: positions never go back
    assert resumed_at == sorted(resumed_at)


def test_twenty_rater_processes_fifty_answers_each(tmp_path, design, make_study, design_dict):
    cases = [f"c{i}" for i in range(50)]  # within design: each rater answers every case once
    store, tokens = make_study(tmp_path / "s.db", design, n_raters=20, cases=cases)
    design_file = tmp_path / "design.json"
    design_file.write_text(json.dumps(design_dict))
    procs = [_start(tmp_path / "s.db", design_file, t, i) for i, t in enumerate(tokens)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip().endswith("DONE")
    rows = [r for r in store.all_answers() if r["question"] == "diagnosis"]
    assert len(rows) == 20 * 50
    assert len({(r["rater"], r["item_id"]) for r in rows}) == 1000
