"""Fixtures of the bundle tests: a real (barely trained) Conv-4 ProtoNet on PBC blood cells at 64 px and
its bundle, made once per session through the ``fsl-xai`` command."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from fsl_xai.cli import main

PBC_CLASSES = ["lymphocyte", "monocyte", "platelet"]


@pytest.fixture(scope="session")
def pbc64_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-width Conv-4 ProtoNet trained for 3 episodes on the PBC base classes (64 px) by `fsl-xai train`."""
    out = tmp_path_factory.mktemp("pbc64") / "protonet.pt"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--dataset", "pbc-blood-64", "--model", "protonet", "--backbone", "conv4",
                     "--n-way", "3", "--n-shot", "1", "--n-query", "2", "--episodes", "3", "--seed", "0",
                     "--no-val", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def pbc64_bundle(pbc64_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(bundle folder, what `fsl-xai export-model` printed) for 5 shots of the 3 novel PBC classes."""
    out = tmp_path_factory.mktemp("bundles") / "pbc64-5shot"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export-model", "--checkpoint", str(pbc64_checkpoint), "--dataset", "pbc-blood-64",
                     "--n-shot", "5", "--seed", "3", "--episodes", "20", "--n-query", "5", "--no-progress",
                     "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()
