"""Fixtures shared by the whole test suite.

- Every test starts from seeded random state (torch, numpy, random) and a fixed thread count.
- ``data_dir``: the shared data folder from ``FSL_XAI_DATA_DIR``. When it is not set or missing,
  tests that use it are skipped, except when ``FSL_XAI_REQUIRE_DATA=1`` (the Makefile and CI set it
  when ``../shared/data`` exists), where they fail instead.
- ``shared_file("pbc_blood/pbc_bloodlike_28.npz")``: the path of one shared file, same rules.
- ``cache_dir``: a fresh, empty cache folder; ``FSL_XAI_CACHE_DIR`` points at it during the test.

Tests that use ``data_dir`` or ``shared_file`` are marked ``data`` automatically; nbval's notebook
cells are marked ``notebooks``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch

from fsl_xai.config import data_dirs

DATA_ENV = "FSL_XAI_DATA_DIR"
REQUIRE_ENV = "FSL_XAI_REQUIRE_DATA"
SEED = 0

# One torch thread in tests, whatever OMP_NUM_THREADS says: float reductions are ordered by the
# thread count, so seeded trainings inside tests (e.g. the localisation checks) give the same
# numbers on every machine only at a fixed count. Notebooks and servers use their own setting.
torch.set_num_threads(1)


def seed_everything(seed: int = SEED) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    seed_everything(SEED)


def _missing_data(reason: str) -> NoReturn:
    """Fail when the shared data is required, else skip."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this is an error, not a skip)", pytrace=False)
    pytest.skip(f"{reason}; set {DATA_ENV} to the shared data folder to run this test")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: the first folder of ``FSL_XAI_DATA_DIR`` (a list joined by os.pathsep)."""
    value = os.environ.get(DATA_ENV)
    if not value:
        _missing_data(f"{DATA_ENV} is not set")
    folders = data_dirs(value)
    if not folders or not folders[0].is_dir():
        _missing_data(f"{DATA_ENV}={value}: its first entry is not a folder")
    return folders[0]


@pytest.fixture(scope="session")
def shared_file(data_dir: Path) -> Callable[[str], Path]:
    """A function: relative path inside the data folder -> its Path (fails/skips when missing)."""

    def get(relative: str) -> Path:
        path = data_dir / relative
        if not path.is_file():
            _missing_data(f"shared file {relative} is not in {data_dir}")
        return path

    return get


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder, also set as ``FSL_XAI_CACHE_DIR`` for the test."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FSL_XAI_CACHE_DIR", str(path))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebooks)
