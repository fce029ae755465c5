"""Load on the study store: 20 rater processes answer 50 cases each at the same time through
RaterSession (the rater app's code path). Prints the time per answer and checks that all 1,000
answers are stored exactly once.

    python benchmarks/bench_study_store.py [--raters 20] [--answers 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fsl_xai.study.design import parse_design
from fsl_xai.study.session import RaterSession
from fsl_xai.study.store import ResponseStore

DESIGN = {
    "study_id": "load", "dataset": {"name": "synthetic"}, "model": {"default": "synthetic"},
    "episode": {"n_way": 2, "n_shot": 1}, "cases": {"n": 1},
    "conditions": ["no_ai", "heatmap"],
    "questions": [{"id": "diagnosis", "type": "choice", "options": ["a", "b"]},
                  {"id": "confidence", "type": "likert", "scale": 5}],
}


def _rater(args) -> list[float]:
    db, token = args
    design = parse_design(DESIGN)
    times = []
    with ResponseStore(db) as store:
        session = RaterSession(store, token, design)
        while not session.done:
            session.current()
            t = time.perf_counter()
            session.submit({"diagnosis": "a", "confidence": 3})
            times.append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--answers", type=int, default=50)
    args = parser.parse_args()
    design = parse_design(DESIGN)
    cases = [f"case{i:03d}" for i in range(args.answers)]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "study.sqlite"
        with ResponseStore(db) as store:
            store.add_items([{"item_id": f"{c}|{k}", "case_id": c, "condition": k, "shown": {}, "provenance": {}}
                             for c in cases for k in design.condition_names])
            tokens = [store.add_rater([f"{c}|{k}" for c, k in design.assign(cases, r)])[1] for r in range(args.raters)]
        start = time.perf_counter()
        with mp.get_context("spawn").Pool(args.raters) as pool:
            per_rater = pool.map(_rater, [(str(db), t) for t in tokens])
        wall = time.perf_counter() - start
        with ResponseStore(db) as store:
            rows = [r for r in store.all_answers() if r["question"] == "diagnosis"]
    times = sorted(t for ts in per_rater for t in ts)
    expected = args.raters * args.answers
    unique = len({(r["rater"], r["item_id"]) for r in rows})
    p95 = times[int(0.95 * (len(times) - 1))]
    print("| measure | value |\n|---|---|")
    print(f"| raters x answers | {args.raters} x {args.answers} |")
    print(f"| answers stored / unique / expected | {len(rows)} / {unique} / {expected} |")
    print(f"| time per answer, median | {statistics.median(times) * 1000:.1f} ms |")
    print(f"| time per answer, 95th percentile | {p95 * 1000:.1f} ms |")
    print(f"| wall time, all raters | {wall:.1f} s ({expected / wall:.0f} answers/s) |")
    ok = len(rows) == unique == expected
    print("all answers stored exactly once" if ok else "MISMATCH: answers lost or duplicated")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
