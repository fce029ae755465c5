"""A rater process for the crash and load tests: answers through RaterSession, the same code
path as the rater app, and prints one CONFIRMED line per answer after the store committed it."""

import json
import sys

from fsl_xai.study.design import parse_design
from fsl_xai.study.session import RaterSession
from fsl_xai.study.store import ResponseStore


def main() -> None:
    db, design_file, token, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    design = parse_design(json.loads(open(design_file).read()))
    store = ResponseStore(db)
    session = RaterSession(store, token, design)
    print(f"RESUMED {session.position}", flush=True)
    i = 0
    while not session.done:
        item = session.current()
        ids = session.submit({"diagnosis": "a" if (i + seed) % 2 else "b", "confidence": 1 + (i % 5)})
        print(f"CONFIRMED {item['item_id']} {ids[0]}", flush=True)
        i += 1
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
