"""Data for the benchmark scripts: the registry's short names, from FSL_XAI_DATA_DIR or the cache."""

from __future__ import annotations

from fsl_xai.data import ImageSet
from fsl_xai.data.registry import load_dataset


def load(name: str, split: str = "test") -> ImageSet:
    return load_dataset(name, split=split, progress=False)
