"""One browser tab of a rater for the two-tab test: shows the current case through RaterSession
(the rater app's code path), waits for GO on stdin so that both tabs submit at the same moment,
and reports CONFIRMED (committed) or ALREADY (refused, nothing stored)."""

import json
import sys

from fsl_xai.study.design import parse_design
from fsl_xai.study.session import RaterSession
from fsl_xai.study.store import AlreadyAnswered, ResponseStore


def main() -> None:
    db, design_file, token, diagnosis = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    design = parse_design(json.loads(open(design_file).read()))
    with ResponseStore(db) as store:
        session = RaterSession(store, token, design)
        trial = 0
        while not session.done:
            item = session.current()
            print(f"SHOWN {item['item_id']} {item['shown_key']}", flush=True)
            if sys.stdin.readline().strip() != "GO":
                break
            try:
                ids = session.submit({"diagnosis": diagnosis, "confidence": 1 + trial % 5})
            except AlreadyAnswered:
                print(f"ALREADY {item['item_id']}", flush=True)
            else:
                print(f"CONFIRMED {item['item_id']} {item['shown_key']} {','.join(map(str, ids))}", flush=True)
            trial += 1
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
