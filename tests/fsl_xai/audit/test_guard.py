"""With a domain guard, the query table gets ood_score and ood_flag and the accuracy counts the flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fsl_xai.audit import run_audit
from fsl_xai.checkpoints import load_checkpoint
from fsl_xai.data.registry import load_dataset
from fsl_xai.guard import fit_guard

from .common import small_spec


def test_guard_columns(checkpoint: Path, tmp_path: Path) -> None:
    model, _ = load_checkpoint(checkpoint)
    guard = fit_guard(model, load_dataset("synthetic", split="train", progress=False),
                      load_dataset("synthetic", split="val", progress=False))
    guard.save(tmp_path / "guard.json")
    out = tmp_path / "audit"
    run_audit(small_spec(checkpoint, episodes=2, methods=("saliency",), guard=str(tmp_path / "guard.json")), out,
              progress=False)
    queries = pd.read_parquet(out / "queries.parquet")
    assert {"ood_score", "ood_flag"} <= set(queries.columns)
    assert (queries["ood_flag"] == (queries["ood_score"] > guard.threshold)).all()
    accuracy = json.loads((out / "accuracy.json").read_text())["accuracy"]
    assert accuracy["n_flagged"] == int(queries["ood_flag"].sum())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["guard"] == {"threshold": guard.threshold, "source": "guard.json"}
    assert "--guard" in manifest["reproduce"]
