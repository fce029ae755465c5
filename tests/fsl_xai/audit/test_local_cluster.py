"""The audit on a real LocalCluster of 2 worker processes gives the in-process results, and listens
on 127.0.0.1 only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from fsl_xai.audit import FORMAT, QUALITY_COLUMNS, read_maps, run_audit

from .common import assert_same_audit, quality_spec


def _listening_addresses() -> set[str]:
    """The addresses this process and its children listen on."""
    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a process that ended meanwhile
            continue
    return found


def test_local_cluster_matches_in_process(checkpoint: Path, reference_quality: Path, tmp_path: Path) -> None:
    listening: set[str] = set()
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        listening.update(_listening_addresses())

    result = run_audit(quality_spec(checkpoint), tmp_path, workers=2, progress=progress)
    assert (result.computed, result.skipped, result.n_chunks) == (2, 0, 2)
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    assert listening == {"127.0.0.1"}, f"the cluster listened on {listening}"
    assert_same_audit(reference_quality, tmp_path, methods=("gradcam",))


def test_folder_format(reference_quality: Path) -> None:
    """The folder holds what the format promises, and no sample id."""
    manifest = json.loads((reference_quality / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["complete"] is True
    assert manifest["protocol"] == {"n_way": 4, "n_shot": 1, "n_query": 3, "episodes": 4, "seed": 1}
    assert manifest["chunks"] == {"size": 2, "n": 2} and manifest["methods"] == ["gradcam"]
    assert manifest["checkpoint"]["file"] == "model.pt" and len(manifest["checkpoint"]["sha256"]) == 64
    assert manifest["reproduce"].startswith("fsl-xai audit --checkpoint ") and "--quality" in manifest["reproduce"]
    queries = pd.read_parquet(reference_quality / "queries.parquet")
    assert len(queries) == 4 * 12
    assert list(queries.columns) == ["row", "episode", "query", "image_index", "true", "pred", "correct", "margin",
                                     "confidence", "site"]
    assert (queries["row"].to_numpy() == np.arange(48)).all()
    assert (queries["correct"] == (queries["true"] == queries["pred"])).all()
    assert queries["confidence"].between(0.25, 1).all()  # the top of 4 probabilities
    text = "".join(p.read_text() for p in reference_quality.glob("*.json"))
    assert "synthetic-test-" not in text and "sample_id" not in queries.columns
    assert not any(queries[c].astype(str).str.startswith("synthetic-test-").any() for c in queries.columns)
    accuracy = json.loads((reference_quality / "accuracy.json").read_text())
    overall = accuracy["accuracy"]
    assert overall["n"] == 48 and overall["n_episodes"] == 4 and overall["low"] <= overall["value"] <= overall["high"]
    assert overall["value"] == queries["correct"].mean()
    assert {c["class"] for c in accuracy["per_class"]} == set(queries["true"])
    subgroups = pd.read_parquet(reference_quality / "subgroups.parquet")
    assert set(subgroups["group"]) == {"A", "B"} and (subgroups["column"] == "site").all()
    assert subgroups["n"].sum() == 48
    np.testing.assert_allclose(subgroups["gap"], subgroups["error_rate"] - (1 - queries["correct"].mean()))
    quality = pd.read_parquet(reference_quality / "quality.parquet")
    assert list(quality.columns) == QUALITY_COLUMNS
    assert set(quality["status"]) <= {"passed", "failed", "undefined"}
    # every query of every method has each check once; the synthetic set has masks: localisation checks too
    assert {"randomization", "deletion", "insertion", "pointing_game"} <= set(quality["check"])
    assert (quality.groupby(["method", "check"]).size() == 48).all()
    rows, maps = read_maps(reference_quality, "gradcam")
    assert (rows == np.arange(48)).all() and maps.shape == (48, 64, 64) and maps.dtype == np.float16
    assert np.isfinite(maps.astype(np.float32)).all() and np.abs(maps).max() > 0
