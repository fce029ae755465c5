"""Shared helpers of the benchmark scripts: load a shared dataset by short name."""

from __future__ import annotations

import os
from pathlib import Path

from fsl_xai.data import ImageSet, read_npz

# Only used when fsl_xai.data.registry is not importable (e.g. while it is being written).
_FILES = {
    "pbc-blood": "pbc_blood/pbc_bloodlike_28.npz",
    "pbc-blood-64": "pbc_blood/pbc_bloodlike_64_200perclass.npz",
    "mednist": "mednist/mednist_64_500perclass.npz",
    "ham10000": "ham10000_subset/ham_subset_28.npz",
    "ham10000-64": "ham10000_subset/ham_subset_64.npz",
    "breastmnist": "medmnist_official/breastmnist.npz",
    "retinamnist": "medmnist_official/retinamnist.npz",
}


def load(name: str, split: str = "test") -> ImageSet:
    try:
        from fsl_xai.data.registry import load_dataset
    except ImportError:
        root = Path(os.environ.get("FSL_XAI_DATA_DIR", "../shared/data"))
        return read_npz(root / _FILES[name], split=split, name=name)
    return load_dataset(name, split=split, progress=False)
