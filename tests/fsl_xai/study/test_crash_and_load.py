"""The store under real process crashes (SIGKILL) and concurrent rater processes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsl_xai.study import ResponseStore, parse_design

WORKER = [sys.executable, "-m", "tests.fsl_xai.study._worker"]
TAB_WORKER = [sys.executable, "-m", "tests.fsl_xai.study._tab_worker"]
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


@pytest.mark.parametrize("allow_back", [False, True])
def test_two_tabs_of_one_rater_submitting_at_once_lose_nothing(tmp_path, make_study, design_dict, allow_back):
    """The same rater in two processes (two tabs), the same case, both submitting at the same
    moment, 40 times: every confirmed answer is stored, none twice. Without allow_back exactly one
    tab is confirmed per case and the other is told so; with it both are kept as two attempts."""
    n_trials = 40
    spec = design_dict | {"allow_back": allow_back}
    design = parse_design(spec)
    store, (token,) = make_study(tmp_path / "s.db", design, n_raters=1, cases=[f"c{i}" for i in range(n_trials)])
    design_file = tmp_path / "design.json"
    design_file.write_text(json.dumps(spec))
    tabs = {value: subprocess.Popen([*TAB_WORKER, str(tmp_path / "s.db"), str(design_file), token, value], cwd=ROOT,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=os.environ | {"PYTHONUNBUFFERED": "1"})
            for value in ("a", "b")}
    confirmed: list[tuple[str, str, str, list[int]]] = []  # (item, key, value, ids)
    refused: list[tuple[str, str]] = []
    try:
        for trial in range(n_trials):
            shown = {}
            for value, proc in tabs.items():
                line = proc.stdout.readline()
                assert line.startswith("SHOWN"), line + proc.stderr.read()
                shown[value] = line.split()[1]
            assert shown["a"] == shown["b"], f"trial {trial}: the tabs show different cases {shown}"
            # release both at once (the order alternates so neither tab is always first)
            order = list(tabs.values()) if trial % 2 else list(tabs.values())[::-1]
            for proc in order:
                proc.stdin.write("GO\n")
            for proc in order:
                proc.stdin.flush()
            for value, proc in tabs.items():
                line = proc.stdout.readline().split()
                if line[0] == "CONFIRMED":
                    confirmed.append((line[1], line[2], value, [int(i) for i in line[3].split(",")]))
                else:
                    assert line[0] == "ALREADY", line
                    refused.append((line[1], value))
        for proc in tabs.values():
            done = proc.stdout.readline()  # through the same buffer as the lines before it
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0 and done.strip() == "DONE", done + proc.stderr.read()
    finally:
        for proc in tabs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
    rows = [r for r in store.my_answers(token) if r["question"] == "diagnosis"]
    stored = {(r["item_id"], r["answer_key"], r["value"]) for r in rows}
    # 0 confirmed answers lost: each is stored under its screen's key with its value and ids
    assert {(item, key, value) for item, key, value, _ in confirmed} <= stored
    all_ids = {r["answer_id"] for r in store.my_answers(token)}
    assert all(set(ids) <= all_ids for *_, ids in confirmed)
    # 0 duplicated: one row per confirmed screen and question, nothing that was not confirmed
    assert len(rows) == len(stored) == len(confirmed)
    if allow_back:
        assert not refused and len(confirmed) == 2 * n_trials
    else:
        assert len(confirmed) == len(refused) == n_trials
        assert sorted(item for item, *_ in confirmed) == sorted(item for item, _ in refused)
        # the stored answer is the confirmed tab's, never the refused one's
        assert all((item, value) not in {(i, v) for i, _, v, _ in confirmed} for item, value in refused)
