"""Audit folders for the report tests, written by the real audit (``fsl_xai.audit.run_audit``, in-process).

- ``audit_dir``: the built-in synthetic lesion set (test split), a narrow Conv-4 ProtoNet, a domain
  guard fitted on the train split and calibrated on the val split, two attribution methods with
  their quality checks, and subgroups by acquisition site.
- ``hostile_audit``: a MedMNIST-format .npz file written here whose class names and site values
  are HTML (``<script>``, quotes, ampersands), audited through ``data_file`` (the manifest keeps
  only the file's base name), for the escaping tests.

The model is randomly initialised (``fsl_xai.testing.tiny_model``): the report tests are about
what the report shows of the audit's tables, not about accuracy, so no test depends on trained
weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsl_xai.audit import AuditSpec, run_audit
from fsl_xai.checkpoints import CheckpointInfo, save_checkpoint
from fsl_xai.data import load_dataset, make_synthetic
from fsl_xai.guard import fit_guard
from fsl_xai.report import write_report
from fsl_xai.testing import tiny_model

METHODS = ("gradcam", "saliency")
HOSTILE_CLASSES = ("<script>alert(1)</script>", 'a"b\'c&amp;', "</td></tr><b>bold</b>", "plain")
HOSTILE_SITES = ('<img src="https://evil.example/x.png">', "site&B")


@dataclass(frozen=True)
class Built:
    """An audit folder and the report written from it."""

    folder: Path
    report: Path
    problems: list

    @property
    def html(self) -> str:
        return self.report.read_text(encoding="utf-8")

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.folder / f"{name}.parquet")

    def json(self, name: str) -> dict:
        return json.loads((self.folder / name).read_text(encoding="utf-8"))


def _checkpoint(path: Path, channels: int, size: int) -> Path:
    model = tiny_model(channels=channels, size=size, width=8, seed=0)
    save_checkpoint(path, model, CheckpointInfo.for_model(model, dataset="none (randomly initialised)"))
    return path


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("report-audit")
    ckpt = _checkpoint(root / "tiny.pt", channels=1, size=64)
    from fsl_xai.checkpoints import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    guard = fit_guard(model, load_dataset("synthetic", split="train"), load_dataset("synthetic", split="val"),
                      quantile=0.8)
    guard_file = guard.save(root / "guard.json")
    spec = AuditSpec(checkpoint=str(ckpt), dataset="synthetic", split="test", n_way=4, n_shot=2, n_query=2,
                     episodes=4, seed=0, methods=METHODS, quality=True, by=("site",), guard=str(guard_file),
                     chunk_episodes=2)
    folder = root / "audit"
    run_audit(spec, folder, workers=0, progress=False)
    report = root / "report.html"
    problems = write_report(folder, report)
    return Built(folder, report, problems)


@pytest.fixture(scope="session")
def hostile_file(tmp_path_factory) -> Path:
    """A MedMNIST-format .npz (test split only) with HTML in its class names and site values."""
    images = make_synthetic(n_per_class=12, size=32, n_classes=4, split="test")
    path = tmp_path_factory.mktemp("hostile-data") / "hostile.npz"
    sites = np.where(images.metadata["site"].to_numpy() == "A", HOSTILE_SITES[0], HOSTILE_SITES[1])
    np.savez(path, test_images=np.round(images.images[:, 0] * 255).astype(np.uint8),
             test_labels=images.labels.reshape(-1, 1), class_names=np.asarray(HOSTILE_CLASSES),
             test_site=sites.astype(str))
    return path


@pytest.fixture(scope="session")
def hostile_audit(tmp_path_factory, hostile_file) -> Built:
    root = tmp_path_factory.mktemp("report-hostile")
    ckpt = _checkpoint(root / "tiny32.pt", channels=1, size=32)
    spec = AuditSpec(checkpoint=str(ckpt), data_file=str(hostile_file), split="test", n_way=4, n_shot=2, n_query=2,
                     episodes=3, seed=0, methods=("saliency",), by=("site",), chunk_episodes=3)
    folder = root / "audit"
    run_audit(spec, folder, workers=0, progress=False)
    report = root / "report.html"
    problems = write_report(folder, report, data_file=hostile_file)
    return Built(folder, report, problems)
