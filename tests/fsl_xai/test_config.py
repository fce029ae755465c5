"""The data-directory setting is a path list: several folders joined by os.pathsep, searched in order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fsl_xai import config
from fsl_xai.data.registry import get_info, load_dataset, resolve_path
from fsl_xai.errors import DatasetNotFoundError


def test_data_dirs_splits_on_pathsep_in_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv(config.DATA_DIR_ENV, f"{a}{os.pathsep}{os.pathsep}{b}{os.pathsep}{a}")
    assert config.data_dirs() == [a, b]  # empty entries dropped, repeats kept once
    assert config.data_dir() == a
    assert config.data_dirs([str(b), f"{a}{os.pathsep}{b}"]) == [b, a]
    monkeypatch.delenv(config.DATA_DIR_ENV)
    assert config.data_dirs() == [] and config.data_dir() is None


def _breast_copy(shared_file, folder: Path) -> Path:
    """The official BreastMNIST file, copied into ``folder`` (under the registry's relative path)."""
    target = folder / "medmnist_official" / "breastmnist.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(shared_file("medmnist_official/breastmnist.npz").read_bytes())
    return target


def test_own_folder_first_keeps_the_shared_sets_visible(data_dir, shared_file, tmp_path, monkeypatch):
    own = tmp_path / "own"
    mine = _breast_copy(shared_file, own)
    monkeypatch.setenv(config.DATA_DIR_ENV, f"{own}{os.pathsep}{data_dir}")
    # found in the first folder ...
    assert get_info("breastmnist").path == mine
    assert resolve_path("breastmnist", download=False) == mine
    # ... while a set only in the second folder is still found
    pbc = get_info("pbc-blood")
    assert pbc.present and pbc.path is not None and pbc.path.is_relative_to(data_dir)
    assert len(load_dataset("mednist", split="val", download=False)) == 300


def test_data_dir_argument_may_be_a_list_too(data_dir, shared_file, tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_DIR_ENV)
    empty, own = tmp_path / "empty", tmp_path / "own"
    empty.mkdir()
    mine = _breast_copy(shared_file, own)
    assert resolve_path("breastmnist", data_dir=f"{empty}{os.pathsep}{own}", download=False) == mine
    images = load_dataset("breastmnist", split="val", data_dir=[empty, own], download=False)
    assert images.class_names == ("malignant", "normal, benign") and len(images) == 78
    assert np.isin(images.labels, (0, 1)).all()


def test_not_found_names_every_folder_searched(tmp_path, monkeypatch):
    first, second, cache = tmp_path / "first", tmp_path / "second", tmp_path / "cache"
    first.mkdir(), second.mkdir()
    monkeypatch.setenv(config.DATA_DIR_ENV, f"{first}{os.pathsep}{second}")
    with pytest.raises(DatasetNotFoundError) as err:
        resolve_path("pbc-blood", cache_dir=cache)  # no download URL
    text = str(err.value)
    for folder in (first, second, cache):
        assert str(folder) in text
    assert "pbc_bloodlike_28.npz" in text and os.pathsep in text
    with pytest.raises(DatasetNotFoundError) as err:
        resolve_path("breastmnist", cache_dir=cache, download=False)
    assert str(first) in str(err.value) and str(second) in str(err.value)
