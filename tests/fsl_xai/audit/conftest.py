"""Fixtures of the audit tests: a seeded Conv-4 checkpoint for the built-in synthetic lesion set
(64x64 grey, lesion masks, two sites) and the in-process reference audits."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsl_xai.audit import run_audit
from fsl_xai.checkpoints import CheckpointInfo, save_checkpoint
from fsl_xai.testing import tiny_model

from .common import quality_spec, small_spec


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow seeded Conv-4 ProtoNet for 64x64 grey images (no trained classes: every class is novel)."""
    model = tiny_model(channels=1, size=64, width=8, seed=3)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, CheckpointInfo.for_model(model))


@pytest.fixture(scope="session")
def reference(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The in-process audit of ``small_spec`` (the reference path)."""
    out = tmp_path_factory.mktemp("reference")
    run_audit(small_spec(checkpoint), out, workers=0, progress=False)
    return out


@pytest.fixture(scope="session")
def reference_quality(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The in-process audit of ``quality_spec``."""
    out = tmp_path_factory.mktemp("reference-quality")
    run_audit(quality_spec(checkpoint), out, workers=0, progress=False)
    return out
