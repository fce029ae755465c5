"""Export a study's answers with pseudonymous rater ids, the study file and the provenance of
every item, so that each answer can be linked to exactly what the rater saw.

The export is for the analyst: next to each case's neutral label (what raters saw, e.g. ``C07``)
it gives the case's sample id (``case_id``), which raters never see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_write
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


def _diagnosis_question(store: ResponseStore) -> str:
    """The id of the frozen design's first choice question ("diagnosis" when there is none)."""
    raw = store.meta("design")
    try:
        questions = json.loads(raw).get("questions", []) if raw else []
        return next(str(q["id"]) for q in questions if isinstance(q, dict) and q.get("type") == "choice")
    except (ValueError, AttributeError, KeyError, StopIteration):
        return "diagnosis"


def export_study(store: ResponseStore, out_dir: str | Path, study_file: str | Path | None = None,
                 formats: tuple[str, ...] = ("csv", "parquet"), diagnosis: str | None = None,
                 revisions: bool = True) -> dict[str, Path]:
    """Write answers.{csv,parquet}, items.{csv,parquet} (condition and provenance per item) and
    a copy of the study file into ``out_dir``; for a study read sequentially also
    revisions.{csv,parquet}, the revisions of first answers after the AI's output per condition
    (:func:`fsl_xai.study.revisions.revision_summary`).

    Both tables carry ``case_label`` (what the rater saw) and ``case_id`` (the sample id, for
    the analyst). Raters appear only by pseudonym (R001, ...); tokens never leave the store (only
    their hashes are in it). ``diagnosis`` names the diagnosis question of the revisions table
    (default: the frozen design's first choice question, else ``diagnosis``); ``revisions=False``
    leaves that table out.
    """
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored_items = store.all_items()
    label_of = {item["item_id"]: item["shown"].get("case_label") for item in stored_items}
    answers = pd.DataFrame(store.all_answers(),
                           columns=["answer_id", "rater", "role", "item_id", "case_id", "condition", "question",
                                    "value", "response_ms", "answer_key", "submitted_at", "phase"])
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
    tables = [("answers", answers), ("items", items)]
    diagnosis = diagnosis or _diagnosis_question(store)
    if revisions and ((answers["phase"] == "first") & (answers["question"] == diagnosis)).any():
        from .revisions import revision_summary, revisions_from_export

        tables.append(("revisions", revision_summary(revisions_from_export(answers, items, diagnosis))))
    written: dict[str, Path] = {}
    # each file whole or not at all: written aside and renamed into place
    for name, frame in tables:
        if "csv" in formats:
            written[f"{name}.csv"] = out / f"{name}.csv"
            with atomic_write(written[f"{name}.csv"]) as handle:
                frame.to_csv(handle, index=False)
        if "parquet" in formats:
            written[f"{name}.parquet"] = out / f"{name}.parquet"
            with atomic_write(written[f"{name}.parquet"]) as handle:
                frame.to_parquet(handle, index=False)
    if study_file is not None:
        target = out / Path(study_file).name
        with atomic_write(target) as handle:
            handle.write(Path(study_file).read_bytes())
        written["study"] = target
    return written


def to_imrmc(readings: Any, path: str | Path, positive: str | None = None,
             description: str = "fsl-xai trust study") -> Path:
    """Write a fully crossed study's readings in the iMRMC input format (FDA/DIDSR iMRMC).

    The file has a free-text description, the counts ``N0`` (cases without the positive class),
    ``N1``, ``NR`` (readers) and ``NM`` (modalities, i.e. conditions), a ``BEGIN DATA:`` line, one
    truth row per case (``-1,caseID,truth,0|1``) and one row ``readerID,caseID,modalityID,score``
    per reading. The score is the confidence signed by the diagnosis (+ for ``positive``, - for
    any other class), the score whose empirical AUC :func:`fsl_xai.study.mrmc.mrmc_analysis`
    analyses.

    Args:
        readings: one row per (rater, case_id, condition) with true_class, diagnosis and
            confidence (:func:`fsl_xai.study.mrmc.readings_from_export` builds it from an export).
        path: the file to write (``.imrmc`` by convention).
        positive: the class that is "signal present"; may be None only with two true classes
            (then the last in sorted order).
        description: the first line of the file.

    Raises:
        AnalysisError: the design is not fully crossed, a confidence is missing, an id holds a
            comma or white space, or ``positive`` is not given with more than two classes.
    """
    import numpy as np

    from .analysis import AnalysisError
    from .mrmc import crossed_arrays, numeric_ratings, signed_scores

    conds, readers, cases, truth, values = crossed_arrays(readings, None, ("diagnosis", "confidence"))
    classes = sorted({str(t) for t in truth})
    if positive is None:
        if len(classes) != 2:
            raise AnalysisError(f"iMRMC needs a binary truth: name the positive class (one of {classes})")
        positive = classes[-1]
    if positive not in classes:
        raise AnalysisError(f"positive class {positive!r} is not a true class of any case; choose one of {classes}")
    for kind, ids in (("reader", readers), ("case", cases), ("condition", conds)):
        bad = [i for i in ids if not i or any(ch in i for ch in ", \t\r\n")]
        if bad:
            raise AnalysisError(f"{kind} id {bad[0]!r} holds a comma or white space, which iMRMC cannot read; "
                                "rename it")
    if "truth" in conds or "-1" in readers:
        raise AnalysisError("a condition named 'truth' or a reader named '-1' clashes with iMRMC's truth rows; "
                            "rename it")
    confidence = numeric_ratings(values["confidence"])
    if np.isnan(confidence).any():
        raise AnalysisError("every reading needs a numeric confidence for the iMRMC score")
    scores = signed_scores(values["diagnosis"], confidence, positive)
    is_pos = [str(t) == positive for t in truth]
    lines = [description.replace("\n", " "), f"positive class: {positive}",
             f"N0:{is_pos.count(False)}", f"N1:{is_pos.count(True)}", f"NR:{len(readers)}", f"NM:{len(conds)}",
             "BEGIN DATA:"]
    lines += [f"-1,{case},truth,{int(p)}" for case, p in zip(cases, is_pos, strict=True)]
    lines += [f"{reader},{case},{cond},{scores[i, j, k]:g}" for i, cond in enumerate(conds)
              for j, reader in enumerate(readers) for k, case in enumerate(cases)]
    out = Path(path)
    with atomic_write(out) as handle:
        handle.write(("\n".join(lines) + "\n").encode())
    return out
