"""Helpers of the audit tests: a small audit spec and a comparison of two audit folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fsl_xai.audit import AuditSpec, read_maps


def small_spec(checkpoint: Path, **changes) -> AuditSpec:
    """6 episodes of 4-way 1-shot with 3 queries per class (72 queries), two methods, by site."""
    settings = {"checkpoint": str(checkpoint), "dataset": "synthetic", "n_shot": 1, "n_query": 3, "episodes": 6,
                "methods": ("saliency", "gradcam"), "by": ("site",), "chunk_episodes": 2, "seed": 1}
    settings.update(changes)
    return AuditSpec(**settings)


def quality_spec(checkpoint: Path) -> AuditSpec:
    """``small_spec`` with quality checks, on 4 episodes (48 queries) and Grad-CAM alone."""
    return small_spec(checkpoint, quality=True, episodes=4, methods=("gradcam",))


def assert_same_audit(a: Path, b: Path, methods: tuple[str, ...] = ("saliency", "gradcam")) -> None:
    """Two audit folders hold the same results: tables equal, maps equal bit for bit."""
    pd.testing.assert_frame_equal(pd.read_parquet(a / "queries.parquet"), pd.read_parquet(b / "queries.parquet"))
    assert json.loads((a / "accuracy.json").read_text()) == json.loads((b / "accuracy.json").read_text())
    for name in ("subgroups.parquet", "quality.parquet"):
        assert (a / name).exists() == (b / name).exists(), name
        if (a / name).exists():
            pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
    for method in methods:
        rows_a, maps_a = read_maps(a, method)
        rows_b, maps_b = read_maps(b, method)
        np.testing.assert_array_equal(rows_a, rows_b)
        assert maps_a.dtype == maps_b.dtype == np.float16
        np.testing.assert_array_equal(maps_a, maps_b)
