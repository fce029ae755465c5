"""Export a study's answers with pseudonymous rater ids, the study file and the provenance of
every item, so that each answer can be linked to exactly what the rater saw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .store import ResponseStore


def export_study(store: ResponseStore, out_dir: str | Path, study_file: str | Path | None = None,
                 formats: tuple[str, ...] = ("csv", "parquet")) -> dict[str, Path]:
    """Write answers.{csv,parquet}, items.{csv,parquet} (condition and provenance per item) and
    a copy of the study file into ``out_dir``. Raters appear only by pseudonym (R001, ...);
    tokens never leave the store (only their hashes are in it)."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    answers = pd.DataFrame(store.all_answers(),
                           columns=["answer_id", "rater", "role", "item_id", "case_id", "condition", "question",
                                    "value", "response_ms", "answer_key", "submitted_at"])
    answers["value"] = answers["value"].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    items = pd.DataFrame([
        {"item_id": item["item_id"], "case_id": item["case_id"], "condition": item["condition"],
         **{f"shown_{k}": (json.dumps(v) if isinstance(v, (dict, list)) else v)
            for k, v in item["shown"].items() if k not in ("image_png", "heatmap_png", "support_png")},
         # as stored: the same JSON text (sorted keys) that the store holds
         "provenance": json.dumps(item["provenance"], sort_keys=True)}
        for item in store.all_items()
    ])
    written: dict[str, Path] = {}
    for name, frame in (("answers", answers), ("items", items)):
        if "csv" in formats:
            written[f"{name}.csv"] = out / f"{name}.csv"
            frame.to_csv(written[f"{name}.csv"], index=False)
        if "parquet" in formats:
            written[f"{name}.parquet"] = out / f"{name}.parquet"
            frame.to_parquet(written[f"{name}.parquet"], index=False)
    if study_file is not None:
        target = out / Path(study_file).name
        shutil.copyfile(study_file, target)
        written["study"] = target
    return written
