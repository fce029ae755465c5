"""Export a study's answers with pseudonymous rater ids, the study file and the provenance of
every item, so that each answer can be linked to exactly what the rater saw.

The export is for the analyst: next to each case's neutral label (what raters saw, e.g. ``C07``)
it gives the case's sample id (``case_id``), which raters never see.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .store import ResponseStore

# image data stays in the store: the tables hold what was shown, not the pixels
IMAGE_KEYS = ("image_png", "heatmap_png", "support_png")


def _without_images(value: Any) -> Any:
    """``value`` with every image entry (IMAGE_KEYS) removed from the dicts in it, at any depth."""
    if isinstance(value, dict):
        return {k: _without_images(v) for k, v in value.items() if k not in IMAGE_KEYS}
    if isinstance(value, list):
        return [_without_images(v) for v in value]
    return value


def export_study(store: ResponseStore, out_dir: str | Path, study_file: str | Path | None = None,
                 formats: tuple[str, ...] = ("csv", "parquet")) -> dict[str, Path]:
    """Write answers.{csv,parquet}, items.{csv,parquet} (condition and provenance per item) and
    a copy of the study file into ``out_dir``.

    Both tables carry ``case_label`` (what the rater saw) and ``case_id`` (the sample id, for
    the analyst). Raters appear only by pseudonym (R001, ...); tokens never leave the store (only
    their hashes are in it).
    """
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored_items = store.all_items()
    label_of = {item["item_id"]: item["shown"].get("case_label") for item in stored_items}
    answers = pd.DataFrame(store.all_answers(),
                           columns=["answer_id", "rater", "role", "item_id", "case_id", "condition", "question",
                                    "value", "response_ms", "answer_key", "submitted_at"])
    answers.insert(list(answers.columns).index("case_id"), "case_label", answers["item_id"].map(label_of))
    answers["value"] = answers["value"].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    items = pd.DataFrame([
        {"item_id": item["item_id"], "case_label": item["shown"].get("case_label"), "case_id": item["case_id"],
         "condition": item["condition"],
         **{f"shown_{k}": (json.dumps(_without_images(v)) if isinstance(v, (dict, list)) else v)
            for k, v in item["shown"].items() if k not in IMAGE_KEYS and k != "case_label"},
         # as stored: the same JSON text (sorted keys) that the store holds
         "provenance": json.dumps(item["provenance"], sort_keys=True)}
        for item in stored_items
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
